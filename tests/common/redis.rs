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
                ["--appendonly", "yes", "--appendfsync", "no"]
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

    fn wait_until_ready(&self) {
        wait_for_ping(&self.url());
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
            let addr = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("no free loopback port");
            let node_dir = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
                .args([
                    "--cluster-enabled",
                    "yes",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .args(["--protected-mode", "no"])
                .arg("--dir")
                .arg(&node_dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("cannot run redis-server: run scripts/install-test-tools");
            nodes.push(child);
            addrs.push(addr);
        }
        let cluster = RedisCluster {
            nodes,
            addrs,
            _dir: dir,
        };
        for addr in &cluster.addrs {
            wait_for_ping(&format!("redis://{addr}"));
        }
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

/// Polls PING on `url` until it answers, for at most ten seconds.
fn wait_for_ping(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let client = redis::Client::open(url).unwrap();
    loop {
        if let Ok(mut connection) = client.get_connection()
            && redis::cmd("PING").query::<String>(&mut connection).is_ok()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server at {url} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
