//! A real `redis-server` (Debian package, installed by `scripts/install-test-tools`) on a
//! free loopback port, without persistence, killed when dropped. Self-contained, so the
//! benches include it too.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    /// Its address.
    pub addr: SocketAddr,
    /// Its files and log, removed when dropped.
    #[allow(dead_code)] // read by `restart`, which not every includer calls
    dir: tempfile::TempDir,
    #[allow(dead_code)] // read by `restart`, which not every includer calls
    durable: bool,
}

impl RedisServer {
    /// Starts redis-server on a free port, without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts redis-server on a free port with AOF on: what it acknowledged survives a kill
    /// and a restart. Redis writes the AOF before it replies, so a killed process loses
    /// nothing; the fsync after every write that production wants guards against losing the
    /// machine, not the process, and is left to the OS here, because on a CI machine busy
    /// with other tests it can take longer than a test's store timeout.
    #[allow(dead_code)] // not every includer needs persistence
    pub fn start_durable() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> RedisServer {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("redis.log");
        let (child, port) = start_on_free_port(
            &log,
            |port| server_args(port, durable, dir.path()),
            serves_plain,
        );
        RedisServer {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
            durable,
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`RedisServer::kill`]).
    #[allow(dead_code)] // not every includer restarts Redis
    pub fn restart(&mut self) {
        let port = self.addr.port();
        let log = self.dir.path().join("redis.log");
        let mut child = spawn(&server_args(port, self.durable, self.dir.path()), &log);
        if let Err(why) = wait_until_serving(&mut child, port, &log, serves_plain) {
            panic!("{why}");
        }
        self.child = Some(child);
    }

    /// Stops the server (SIGSTOP) with its connections open: it answers nothing from then on,
    /// as a hung Redis would, until it is killed.
    #[allow(dead_code)] // not every includer hangs Redis
    pub fn freeze(&self) {
        let pid = self.child.as_ref().expect("redis-server is running").id();
        let status = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -STOP {pid}: {status}");
    }

    /// Runs one command and returns its reply.
    #[allow(dead_code)] // not every includer runs commands
    pub fn command<T: redis::FromRedisValue>(&self, cmd: &mut redis::Cmd) -> T {
        let mut connection = redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap();
        cmd.query(&mut connection).unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A local Redis Cluster of three masters (no replicas) on free loopback ports, created
/// with `redis-cli --cluster create`, killed when dropped.
#[allow(dead_code)] // not every includer needs a cluster
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// The nodes' addresses.
    pub addrs: Vec<SocketAddr>,
    _dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl RedisCluster {
    /// Starts three cluster-enabled servers, joins them and waits until the cluster is ok.
    pub fn start() -> RedisCluster {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        let mut addrs = Vec::new();
        for i in 0..3 {
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let (child, port) = start_on_free_port(
                &node_dir.join("redis.log"),
                |port| {
                    let mut args = server_args(port, false, &node_dir);
                    // The cluster bus has a port of its own, port + 10,000 unless set, which may
                    // be taken or past 65,535: a free one too. A failed attempt may leave its
                    // node file behind: each port has its own.
                    let bus = free_port().to_string();
                    let nodes_file = format!("nodes-{port}.conf");
                    args.extend(
                        ["--cluster-enabled", "yes", "--cluster-port", &bus]
                            .into_iter()
                            .chain(["--cluster-config-file", &nodes_file])
                            .map(String::from),
                    );
                    args
                },
                serves_plain,
            );
            nodes.push(child);
            addrs.push(SocketAddr::from(([127, 0, 0, 1], port)));
        }
        let cluster = RedisCluster {
            nodes,
            addrs,
            _dir: dir,
        };
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(cluster.addrs.iter().map(ToString::to_string))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("cannot run redis-cli: run scripts/install-test-tools");
        assert!(
            created.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in &cluster.addrs {
            let client = redis::Client::open(format!("redis://{addr}")).unwrap();
            loop {
                let info: String = client
                    .get_connection()
                    .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c))
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cluster
    }

    /// `redis://` URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.addrs.iter().map(|a| format!("redis://{a}")).collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
    }
}

/// The arguments of a standalone redis-server on `port`, keeping its files in `dir`,
/// without persistence unless `durable`.
fn server_args(port: u16, durable: bool, dir: &Path) -> Vec<String> {
    let (append_only, fsync) = if durable {
        ("yes", "no")
    } else {
        ("no", "everysec")
    };
    let (port, dir) = (port.to_string(), dir.display().to_string());
    [
        "--port",
        &port,
        "--dir",
        &dir,
        "--save",
        "",
        "--protected-mode",
        "no",
    ]
    .into_iter()
    .chain(["--appendonly", append_only, "--appendfsync", fsync])
    .map(String::from)
    .collect()
}

/// A loopback port free when asked. Another process may take it before redis-server
/// binds it; [`start_on_free_port`] then tries another.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("no free loopback port")
        .port()
}

/// How many ports [`start_on_free_port`] tries.
const PORT_ATTEMPTS: usize = 5;

/// Runs redis-server with the arguments `args` gives for a port, on a free port, logging to
/// `log`; when it cannot listen there, on another, up to [`PORT_ATTEMPTS`] times. Returns it
/// once `serves(port, pid)` says that it answers, with its port.
pub fn start_on_free_port(
    log: &Path,
    args: impl Fn(u16) -> Vec<String>,
    serves: impl Fn(u16, u32) -> bool,
) -> (Child, u16) {
    let mut failures = Vec::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = free_port();
        let mut child = spawn(&args(port), log);
        match wait_until_serving(&mut child, port, log, &serves) {
            Ok(()) => return (child, port),
            Err(why) => failures.push(why),
        }
    }
    panic!(
        "redis-server could not listen on a free port: {}",
        failures.join("; ")
    )
}

/// Spawns redis-server on loopback with `args`, logging to `log`.
fn spawn(args: &[String], log: &Path) -> Child {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1"])
        .args(args)
        .arg("--logfile")
        .arg(log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run redis-server ({e}): run scripts/install-test-tools (it installs Debian's redis-server)")
        })
}

/// Waits until `child` serves on `port` (`serves(port, pid)`). `Err` with the end of its
/// log if it exits first; kills it and panics if it does neither within ten seconds.
fn wait_until_serving(
    child: &mut Child,
    port: u16,
    log: &Path,
    serves: impl Fn(u16, u32) -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if serves(port, child.id()) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited ({status}): {}",
                log_end(log)
            ));
        }
        if Instant::now() >= deadline {
            // Not left running after the test.
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "redis-server on port {port} did not answer within ten seconds: {}",
                log_end(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the redis-server answering plain TCP on `port` is process `pid`, not another
/// test's that took the port.
fn serves_plain(port: u16, pid: u32) -> bool {
    redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .and_then(|client| client.get_connection())
        .and_then(|mut c| redis::cmd("INFO").arg("server").query::<String>(&mut c))
        .is_ok_and(|info| is_process(&info, pid))
}

/// Whether `info`, redis-server's answer to `INFO server`, is process `pid`'s.
pub fn is_process(info: &str, pid: u32) -> bool {
    let this_process = format!("process_id:{pid}");
    info.lines().any(|line| line.trim_end() == this_process)
}

/// The last lines of redis-server's log at `log`.
fn log_end(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join(" | ")
}
