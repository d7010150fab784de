//! The load loops: closed (callers that wait for each answer) and open (calls sent at a
//! rate whatever the answers), and what they saw.

use std::error::Error as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use envoy_types::pb::google::rpc;
use keygate::service::check_wire::CHECK_PATH;
use prost::Message as _;
use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType};
use tonic::transport::Channel;

use crate::{check_request, pki};

/// Calls per closed-loop run.
const REQUESTS: usize = 60_000;
/// Closed-loop callers per connection.
pub const IN_FLIGHT_PER_CONNECTION: usize = 16;
/// The longest a closed-loop run may take.
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// How long an open-loop run offers its load.
const OPEN_LOOP_TIME: Duration = Duration::from_secs(5);
/// The deadline of each open-loop call: Envoy's ext_authz timeout.
pub const CALL_DEADLINE: Duration = Duration::from_millis(200);
/// The most open-loop calls outstanding at once, as Envoy's default circuit breaker
/// (`max_requests`) allows toward one cluster; a call due beyond it is shed by the
/// generator, as Envoy would fail it, and never reaches the server.
pub const MAX_OUTSTANDING: usize = 1024;

/// How a scenario offers its calls.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// `IN_FLIGHT_PER_CONNECTION` callers per connection, each sending its next call when
    /// the last is answered.
    Closed,
    /// Calls sent at `rate` per second whatever the answers, each with `CALL_DEADLINE`.
    Open { rate: f64 },
}

/// Where the generator connects: the server's data plane, over TLS trusting `tls_ca` when
/// set.
pub struct Dial {
    /// The data plane's address.
    pub addr: SocketAddr,
    /// The CA the server's certificate is issued by, when it serves TLS.
    pub tls_ca: Option<PathBuf>,
}

impl Dial {
    /// A tonic channel to the server.
    pub async fn channel(&self) -> Channel {
        match &self.tls_ca {
            Some(ca) => pki::tls_channel(self.addr, ca, None).await.unwrap(),
            None => tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
                .unwrap(),
        }
    }
}

/// Runs `load` over `connections` connections to `dial` with `key`.
pub async fn offer(load: Load, dial: &Dial, connections: usize, key: &str) -> Outcome {
    let request = check_request(key).encode_to_vec();
    match load {
        Load::Closed => closed_loop(dial, connections, &request),
        Load::Open { rate } => {
            let mut clients = Vec::new();
            for _ in 0..connections {
                clients.push(Checker::new(dial.channel().await));
            }
            open_loop(&clients, Encoded(request.into()), rate).await
        }
    }
}

/// The open loop's Check client, costing the generator as little as tonic allows: the request is encoded once, and of each answer
/// only the status is decoded (Envoy reads the whole answer; keygate's is larger than the
/// no-op server's one header, and decoding it in full made the generator's core the limit).
#[derive(Clone)]
struct Checker(tonic::client::Grpc<Channel>);

impl Checker {
    fn new(channel: Channel) -> Self {
        Checker(tonic::client::Grpc::new(channel))
    }

    /// The status code of the answer to `request`.
    async fn check(&mut self, request: tonic::Request<Encoded>) -> Result<i32, tonic::Status> {
        self.0
            .ready()
            .await
            .map_err(|e| tonic::Status::unknown(format!("not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(CHECK_PATH);
        let codec = tonic_prost::ProstCodec::<Encoded, CheckStatus>::default();
        let answer = self.0.unary(request, path, codec).await?;
        Ok(answer.into_inner().status.map_or(-1, |s| s.code))
    }
}

/// A message already encoded, written as it is.
#[derive(Clone, Debug, Default)]
struct Encoded(Bytes);

impl prost::Message for Encoded {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0 = Bytes::new();
    }
}

/// A CheckResponse read for its status alone: the other fields are skipped unread.
#[derive(Clone, PartialEq, prost::Message)]
struct CheckStatus {
    #[prost(message, optional, tag = "1")]
    status: Option<rpc::Status>,
}

/// What a load loop saw.
#[derive(Default)]
pub struct Outcome {
    /// The latency of every allowed Check.
    pub latencies: Vec<Duration>,
    /// Calls answered UNAVAILABLE (keygate's overload answer).
    pub refused: usize,
    /// Calls not answered within `CALL_DEADLINE`.
    pub late: usize,
    /// Calls lost with their connection.
    pub dropped: usize,
    /// Open-loop calls not sent because `MAX_OUTSTANDING` were outstanding.
    pub shed: usize,
    /// Calls sent.
    pub sent: usize,
}

impl Outcome {
    /// Counts one call's answer; anything but allowed, overloaded or late is a bug.
    fn record(&mut self, latency: Duration, answer: Result<Result<i32, tonic::Status>, ()>) {
        match answer {
            Ok(Ok(code)) => {
                assert_eq!(code, 0, "the key must be allowed");
                self.latencies.push(latency);
            }
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => self.refused += 1,
            // The server's deadline answer, or the client's own (tonic's says Cancelled).
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) =>
            {
                self.late += 1
            }
            // The connection dropped under the call (the server's h2 guard against clients
            // that reset many streams closes the connection; tonic reconnects).
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::Unknown | tonic::Code::ResourceExhausted
                ) && status.source().is_some() =>
            {
                self.dropped += 1
            }
            Ok(Err(status)) => panic!("Check failed: {status:?}"),
            Err(()) => self.late += 1,
        }
    }
}

/// One Check with `CALL_DEADLINE` sent as `grpc-timeout` and kept by the caller too.
async fn timed_check(
    mut client: Checker,
    request: Encoded,
) -> (Duration, Result<Result<i32, tonic::Status>, ()>) {
    let sent = Instant::now();
    let mut request = tonic::Request::new(request);
    request.set_timeout(CALL_DEADLINE);
    let answer = tokio::time::timeout(CALL_DEADLINE, client.check(request))
        .await
        .map_err(drop);
    (sent.elapsed(), answer)
}

/// `REQUESTS` calls (or `TIME_LIMIT`) from `h2load`, `IN_FLIGHT_PER_CONNECTION` in flight
/// on each of `connections` connections. h2load writes what one pass of its event loop
/// produced at once, as Envoy does, and costs less per call than a server answering it, so
/// the server is what a run measures (a tonic client on the generator's one core spent more
/// per call than the no-op server). It checks the HTTP status alone: the caller makes sure
/// the key was allowed before and after.
fn closed_loop(dial: &Dial, connections: usize, request: &[u8]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let (body, log) = (dir.path().join("check.grpc"), dir.path().join("calls.tsv"));
    let mut message = Vec::with_capacity(5 + request.len());
    message.push(0);
    message.extend_from_slice(&(request.len() as u32).to_be_bytes());
    message.extend_from_slice(request);
    std::fs::write(&body, message).unwrap();
    let scheme = if dial.tls_ca.is_some() {
        "https"
    } else {
        "http"
    };
    let mut h2load = std::process::Command::new(crate::tools::system_tool("h2load"))
        .args([
            &format!("-n{REQUESTS}"),
            &format!("-c{connections}"),
            &format!("-m{IN_FLIGHT_PER_CONNECTION}"),
            "-t1",
            "-Hcontent-type: application/grpc",
            "-Hte: trailers",
        ])
        .arg("-d")
        .arg(&body)
        .arg("--log-file")
        .arg(&log)
        .arg(format!("{scheme}://{}{CHECK_PATH}", dial.addr))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIME_LIMIT;
    while h2load.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            h2load.kill().unwrap();
            panic!("h2load did not finish within {TIME_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut outcome = Outcome::default();
    for row in std::fs::read_to_string(&log).unwrap().lines() {
        let columns: Vec<&str> = row.split('\t').collect();
        let latency = Duration::from_micros(columns[2].parse().unwrap());
        outcome.sent += 1;
        match columns[1] {
            "200" => outcome.latencies.push(latency),
            "-1" => outcome.dropped += 1,
            status => panic!("Check answered HTTP {status}"),
        }
    }
    outcome
}

/// Calls due at `rate` per second for `OPEN_LOOP_TIME`, whatever the answers, as Envoy
/// forwards them: at most `MAX_OUTSTANDING` at once (the rest shed), each given up when not
/// answered within `CALL_DEADLINE`.
async fn open_loop(clients: &[Checker], request: Encoded, rate: f64) -> Outcome {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut calls = tokio::task::JoinSet::new();
    let mut outcome = Outcome::default();
    while started.elapsed() < OPEN_LOOP_TIME {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as usize;
        while outcome.sent + outcome.shed < due {
            if calls.len() >= MAX_OUTSTANDING {
                outcome.shed += 1;
                continue;
            }
            let client = clients[outcome.sent % clients.len()].clone();
            calls.spawn(timed_check(client, request.clone()));
            outcome.sent += 1;
        }
        while let Some(done) = calls.try_join_next() {
            let (latency, answer) = done.unwrap();
            outcome.record(latency, answer);
        }
    }
    while let Some(done) = calls.join_next().await {
        let (latency, answer) = done.unwrap();
        outcome.record(latency, answer);
    }
    outcome
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}
