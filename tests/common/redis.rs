//! A real `redis-server` (Debian package, installed by `scripts/install-test-tools`) on a
//! free loopback port, without persistence, killed when dropped. Self-contained, so the
//! benches include it too.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running redis-server.
pub struct RedisServer {
    child: Option<Child>,
    /// Its address.
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    durable: bool,
}

impl RedisServer {
    /// Starts redis-server on a free port, without persistence.
    pub fn start() -> RedisServer {
        Self::start_with(false)
    }

    /// Starts redis-server on a free port with AOF on and fsynced at every write, as keygate
    /// expects in production: what it acknowledged survives a restart.
    #[allow(dead_code)] // not every includer needs persistence
    pub fn start_durable() -> RedisServer {
        Self::start_with(true)
    }

    fn start_with(durable: bool) -> RedisServer {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("no free loopback port");
        let dir = tempfile::tempdir().unwrap();
        let mut server = RedisServer {
            child: None,
            addr,
            dir,
            durable,
        };
        server.restart();
        server
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
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.addr.port().to_string()])
            .args(["--save", "", "--protected-mode", "no"])
            .args(if self.durable {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "everysec"]
            })
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-server ({e}): run scripts/install-test-tools (it installs Debian's redis-server)")
            });
        self.child = Some(child);
        self.wait_until_ready();
    }

    /// Polls PING until the server answers, for at most ten seconds.
    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        loop {
            if let Ok(mut connection) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut connection).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on {} did not start",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(20));
        }
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
