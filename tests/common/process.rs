//! The real `keygate` binary as a child process: started on free loopback ports, its
//! addresses read from its own log (human or JSON lines), its output kept for assertions,
//! killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Path of the keygate binary Cargo built for these tests.
pub fn keygate_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_keygate"))
}

/// A running `keygate serve`.
pub struct KeygateProcess {
    child: Child,
    /// The management API's address.
    pub management_addr: SocketAddr,
    /// The data plane's address.
    pub data_plane_addr: SocketAddr,
    /// The metrics listener's address.
    pub metrics_addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
    _config: tempfile::NamedTempFile,
}

/// The most a server may take to report its listener before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl KeygateProcess {
    /// Starts `keygate serve` with its data in `data_dir`, the test configuration, and
    /// `env` added to a clean environment.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> KeygateProcess {
        Self::start_with_config(data_dir, super::TEST_CONFIG, env)
    }

    /// [`KeygateProcess::start`] with the configuration file `config_text`.
    pub fn start_with_config(
        data_dir: &Path,
        config_text: &str,
        env: &[(&str, &str)],
    ) -> KeygateProcess {
        let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(config.path(), config_text).unwrap();
        let mut command = Command::new(keygate_bin());
        command
            .args(["serve", "--config"])
            .arg(config.path())
            .arg("--data-dir")
            .arg(data_dir)
            .env_clear()
            .env("KEYGATE_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("cannot start the keygate binary");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, addresses) = mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for listener in ["management API", "data plane", "metrics"] {
                    if line.contains(&format!("{listener} listening")) {
                        let _ = found.send((listener, logged_addr(&line)));
                    }
                }
                kept.lock().unwrap().push(line);
            }
        });
        let mut listening = std::collections::HashMap::new();
        while listening.len() < 3 {
            match addresses.recv_timeout(START_TIMEOUT) {
                Ok((listener, Some(addr))) => {
                    listening.insert(listener, addr);
                }
                other => {
                    let _ = child.kill();
                    panic!(
                        "keygate did not report its addresses ({other:?}); log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            }
        }
        KeygateProcess {
            child,
            management_addr: listening["management API"],
            data_plane_addr: listening["data plane"],
            metrics_addr: listening["metrics"],
            log,
            _config: config,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://<management address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.management_addr)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(sent.success(), "kill -TERM failed");
    }

    /// Waits at most `limit` for the process to exit by itself, and returns how it ended.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "keygate did not exit within {limit:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub fn kill_hard(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for KeygateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `addr` field of a log line, in the human (`addr=127.0.0.1:9`) or JSON
/// (`"addr":"127.0.0.1:9"`) format.
pub fn logged_addr(line: &str) -> Option<SocketAddr> {
    let start = line
        .find("addr=")
        .map(|i| i + "addr=".len())
        .or_else(|| line.find("\"addr\":\"").map(|i| i + "\"addr\":\"".len()))?;
    let text: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    text.parse().ok()
}
