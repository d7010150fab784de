//! The real `keygate` binary as a child process: started on a free loopback port, its
//! address read from its own log, its output kept for assertions, killed when dropped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    log: Arc<Mutex<Vec<String>>>,
    _config: tempfile::NamedTempFile,
}

/// The most a server may take to report its listener before the test gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

impl KeygateProcess {
    /// Starts `keygate serve` with its data in `data_dir`, the test configuration, and
    /// `env` added to a clean environment.
    pub fn start(data_dir: &Path, env: &[(&str, &str)]) -> KeygateProcess {
        let config = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::fs::write(config.path(), super::TEST_CONFIG).unwrap();
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
        let (found, address) = mpsc::channel();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("management API listening")
                    && let Some(addr) = line.split("addr=").nth(1)
                {
                    let _ = found.send(addr.trim().parse::<SocketAddr>());
                }
                kept.lock().unwrap().push(line);
            }
        });
        let management_addr = match address.recv_timeout(START_TIMEOUT) {
            Ok(Ok(addr)) => addr,
            other => {
                let _ = child.kill();
                panic!(
                    "keygate did not report its address ({other:?}); log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        KeygateProcess {
            child,
            management_addr,
            log,
            _config: config,
        }
    }

    /// `http://<management address>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.management_addr)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
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
