//! An OTLP trace receiver (`tests/otlp/receiver.py`, on OpenTelemetry's published protobuf
//! definitions) that writes every span it receives to a file, for asserting what keygate
//! exported.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::tools::venv_tool;

/// A running receiver.
pub struct OtlpReceiver {
    child: Child,
    /// OTLP/gRPC endpoint.
    pub grpc_addr: SocketAddr,
    /// OTLP/HTTP endpoint (`/v1/traces` below it).
    pub http_addr: SocketAddr,
    spans_file: tempfile::NamedTempFile,
}

impl OtlpReceiver {
    /// Starts a receiver on free loopback ports.
    pub fn start() -> OtlpReceiver {
        let spans_file = tempfile::NamedTempFile::new().unwrap();
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/otlp/receiver.py");
        let mut child = Command::new(venv_tool("python"))
            .arg(script)
            .arg(spans_file.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cannot start the OTLP receiver");
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let port = |name: &str| -> SocketAddr {
            let port = first
                .split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("the OTLP receiver did not start: {first:?}"));
            format!("127.0.0.1:{port}").parse().unwrap()
        };
        OtlpReceiver {
            grpc_addr: port("grpc"),
            http_addr: port("http"),
            child,
            spans_file,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Value> {
        std::fs::read_to_string(self.spans_file.path())
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Everything received so far, as the raw text written.
    pub fn raw(&self) -> String {
        std::fs::read_to_string(self.spans_file.path()).unwrap()
    }

    /// The first span `matches` accepts, waiting at most `limit` for it to arrive.
    pub fn wait_for(&self, limit: Duration, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(span) = self.spans().into_iter().find(&matches) {
                return span;
            }
            assert!(
                Instant::now() < deadline,
                "no such span within {limit:?}; received:\n{}",
                self.raw()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
