//! A proxy (Envoy, nginx, Caddy) as a child process running one of the shipped example
//! configurations with only its ports replaced: started on a free loopback port, its output
//! kept for assertions, killed when dropped. Shared by the tests and the load bench.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most a proxy may take to accept connections before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The pause between two readiness checks.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Path of `examples/<path>`.
pub fn example(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(path)
}

/// A loopback address nothing listens on right now: bound to port 0, read, and released;
/// never one this process handed out before. Tests run in parallel, and the kernel may give
/// a released port again at once; Envoy binds its listeners with `SO_REUSEPORT`, so two
/// Envoys on one port would both start and share each other's connections.
pub fn free_loopback_addr() -> SocketAddr {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut handed_out = HANDED_OUT.lock().unwrap();
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return addr;
        }
    }
}

/// `config` with its one occurrence of `from` replaced by `to`; panics unless there is
/// exactly one.
pub fn replace_once(config: &str, from: &str, to: &str) -> String {
    assert_eq!(
        config.matches(from).count(),
        1,
        "the config must hold {from:?} once"
    );
    config.replacen(from, to, 1)
}

/// `config` with each `127.0.0.1:<port>` of `ports` (the example's port, where the test's
/// process listens) written once, and replaced by that address.
pub fn with_addresses(config: &str, ports: &[(u16, SocketAddr)]) -> String {
    let mut config = config.to_owned();
    for (port, addr) in ports {
        assert!(
            addr.ip().is_loopback() && addr.is_ipv4(),
            "the example config only reaches 127.0.0.1, not {addr}"
        );
        config = replace_once(&config, &format!("127.0.0.1:{port}"), &addr.to_string());
    }
    config
}

/// Starts nginx (`nginx`: its command, maybe behind `taskset`) with the configuration
/// `config`, listening on `listen`: in the foreground, one process running as the caller's
/// user, its pid file, temporary files and errors its own, so nothing is shared with
/// another test or a system nginx.
pub fn start_nginx(mut nginx: Command, config: &str, listen: SocketAddr) -> ProxyProcess {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    nginx
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&path)
        .args(["-e", "stderr", "-g"])
        .arg(format!(
            "daemon off; master_process off; pid {};",
            dir.path().join("nginx.pid").display()
        ));
    ProxyProcess::start("nginx", nginx, listen).keeping(dir)
}

/// A running proxy.
pub struct ProxyProcess {
    name: &'static str,
    child: Child,
    /// Where clients send requests, on 127.0.0.1.
    pub listen_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    /// Removed after the process is killed.
    files: Option<tempfile::TempDir>,
}

impl ProxyProcess {
    /// Runs `command` (the proxy called `name`), keeps its output and waits until
    /// `listen_addr` accepts connections; panics with the output if the proxy exits or the
    /// deadline passes first.
    pub fn start(name: &'static str, mut command: Command, listen_addr: SocketAddr) -> Self {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        keep_lines(child.stdout.take().unwrap(), &log);
        keep_lines(child.stderr.take().unwrap(), &log);
        let mut proxy = ProxyProcess {
            name,
            child,
            listen_addr,
            log,
            files: None,
        };
        proxy.wait_until_listening();
        proxy
    }

    fn wait_until_listening(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{} exited ({status}) while starting; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&self.listen_addr, POLL_INTERVAL).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {} within {START_TIMEOUT:?}; log:\n{}",
                self.name,
                self.listen_addr,
                self.log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The proxy, keeping `files` (its configuration, its state) until it is dropped.
    pub fn keeping(mut self, files: tempfile::TempDir) -> Self {
        self.files = Some(files);
        self
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the proxy printed so far, stdout and stderr interleaved.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The lines printed so far.
    #[allow(dead_code)] // not every includer reads the access log
    pub fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends each line read from `stream` to `log`, on a thread of its own.
fn keep_lines(stream: impl Read + Send + 'static, log: &Arc<Mutex<Vec<String>>>) {
    let log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            log.lock().unwrap().push(line);
        }
    });
}
