//! A bounded load loop against a real keygate process: Check calls for one warm key over
//! loopback, from several concurrent HTTP/2 connections, as Envoy would send them. Prints
//! p50 / p99 / p99.9 latency and throughput, five times: with no rate limit on the key's
//! plan; under overload (an open loop offering twice the throughput the first scenario
//! reached, each call with Envoy's deadline: the calls past the server's limits are refused
//! at once, and the p99 of the admitted ones shows what overload costs them); with the
//! local limiter; with the Redis limiter (a redis-server on loopback); and with no rate
//! limit but every request traced (spans made and batched for an OTLP endpoint that refuses
//! them, so the cost measured is keygate's own). The `TLS vs plaintext` scenario runs with no
//! rate limit twice back to back, plaintext then TLS on the data plane (a certificate made
//! with `openssl`), so the two compare on the same machine in the same run.
//!
//! Each run also prints the server's CPU time per Check (user + system, from
//! `/proc/<pid>/stat`), the figure that compares builds on a shared, noisy machine.
//!
//! `cargo bench --bench check_load` (release build). Bounded: `REQUESTS` calls per run, and
//! never longer than `TIME_LIMIT`. `KEYGATE_BENCH_BINARY` runs another keygate build instead
//! of this one (to compare two builds in alternating rounds); `KEYGATE_BENCH_ONLY` runs only
//! the scenario of that name (the overload scenario then offers
//! `KEYGATE_BENCH_OVERLOAD_RATE` calls per second, 40,000 unless set);
//! `KEYGATE_BENCH_SERVER_CPUS` pins the server to those CPUs;
//! `KEYGATE_BENCH_SERVER_CPU_SHARE` (e.g. `0.25`) gives it that share of one CPU; the
//! server is given the bench's own `KEYGATE_ADMISSION__*` variables, to try other limits.

use std::error::Error as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::proto::{self, key_manager_client::KeyManagerClient};

#[path = "../tests/common/check.rs"]
mod check;
#[allow(dead_code)] // the bench uses the CA and server certificates only
#[path = "../tests/common/pki.rs"]
mod pki;
#[path = "../tests/common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

const REQUESTS: usize = 60_000;
const CONNECTIONS: usize = 8;
const IN_FLIGHT_PER_CONNECTION: usize = 4;
/// How long the overload scenario offers its load.
const OVERLOAD_TIME: Duration = Duration::from_secs(5);
/// The offered load in the overload scenario, as a multiple of the throughput measured
/// without it.
const OVERLOAD_FACTOR: f64 = 2.0;
/// The deadline of each call in the overload scenario: Envoy's ext_authz timeout.
const CALL_DEADLINE: Duration = Duration::from_millis(200);
const TIME_LIMIT: Duration = Duration::from_secs(60);
/// The scenario that compares TLS with plaintext on the data plane.
const TLS_SCENARIO: &str = "TLS vs plaintext";

fn check_request(key: &str) -> CheckRequest {
    let bearer = format!("Bearer {key}");
    let headers = [
        (":authority", "api.example.com"),
        ("user-agent", "load/1.0"),
        ("authorization", bearer.as_str()),
    ];
    check::check_request("203.0.113.9", "GET", "/v1/sites?page=2", &headers, &[])
}

/// A plan with two windows too wide to deny anything, so every Check runs the limiter.
const METERED: &str = r#"
default_plan = "metered"
[[plans]]
name = "metered"
rate_windows = [{ limit = 1000000, period = "1s" }, { limit = 1000000000, period = "1h", per = "owner" }]
"#;

/// Starts the release keygate binary with `config` and returns it with its (management,
/// data plane) URLs.
fn start_keygate(
    dir: &std::path::Path,
    config: &str,
    env: &[(&str, &str)],
) -> (std::process::Child, String, String) {
    let config_path = dir.join("keygate.toml");
    std::fs::write(&config_path, config).unwrap();
    let binary = std::env::var_os("KEYGATE_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_keygate")),
        PathBuf::from,
    );
    // `KEYGATE_BENCH_SERVER_CPUS` pins the server (e.g. "0", with the bench itself under
    // `taskset -c 1`), so that server and load generator do not share a core.
    let mut command = match std::env::var("KEYGATE_BENCH_SERVER_CPUS") {
        Ok(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.arg("-c").arg(cpus).arg(binary);
            taskset
        }
        Err(_) => Command::new(binary),
    };
    let mut child = command
        .args([
            "serve",
            "--management-addr",
            "127.0.0.1:0",
            "--data-plane-addr",
            "127.0.0.1:0",
            "--set",
            "listen.metrics=127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        .arg(dir)
        .env_clear()
        .env("KEYGATE_ADMIN_TOKEN", "bench-admin-token-0123456789")
        .env("KEYGATE_LOG", "error,keygate::server=info")
        .envs(env.iter().copied())
        .envs(std::env::vars().filter(|(name, _)| name.starts_with("KEYGATE_ADMISSION__")))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cannot start keygate");
    if let Ok(share) = std::env::var("KEYGATE_BENCH_SERVER_CPU_SHARE") {
        limit_cpu(
            child.id(),
            share.parse().expect("a share of one CPU, e.g. 0.25"),
        );
    }
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut address = |what: &str| loop {
        let line = lines.next().expect("keygate exited").unwrap();
        if line.contains(what) {
            return format!("http://{}", line.split("addr=").nth(1).unwrap().trim());
        }
    };
    let management = address("management API listening");
    let data_plane = address("data plane listening");
    std::thread::spawn(move || lines.for_each(drop));
    (child, management, data_plane)
}

/// Puts process `pid` in a cgroup (v1 `cpu` controller) allowed `share` of one CPU in every
/// 10 ms, as a Kubernetes CPU limit would: a server slower than the load generator, so that
/// the generator can overload it. Needs a writable `/sys/fs/cgroup/cpu`.
fn limit_cpu(pid: u32, share: f64) {
    let group = PathBuf::from(format!("/sys/fs/cgroup/cpu/keygate-bench-{pid}"));
    let write = |file: &str, value: String| {
        std::fs::write(group.join(file), value)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", group.join(file).display()))
    };
    std::fs::create_dir(&group).expect("cannot create a cpu cgroup (cgroup v1, writable)");
    write("cpu.cfs_period_us", "10000".into());
    write("cpu.cfs_quota_us", format!("{}", (10_000.0 * share) as u64));
    write("cgroup.procs", pid.to_string());
}

/// CPU time (user + system) process `pid` has used so far. `/proc/<pid>/stat` counts it
/// in clock ticks, which Linux exposes to user space at 100 per second.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn main() {
    let redis = RedisServer::start();
    let redis_config = format!(
        "{METERED}\n[ratelimit]\nbackend = \"redis\"\n[redis]\nurl = \"{}\"\ntimeout = \"100ms\"\n",
        redis.url()
    );
    // A loopback port nothing listens on: the exporter's sends fail at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let endpoint = format!("http://{closed}");
    let traced = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_TRACES_SAMPLER", "always_on"),
    ];
    let mut capacity = None;
    for (name, config, env) in [
        ("no rate limit", String::new(), &[][..]),
        ("overload, no rate limit", String::new(), &[][..]),
        ("local limiter", METERED.to_owned(), &[][..]),
        ("Redis limiter", redis_config, &[][..]),
        (
            "no rate limit, every request traced",
            String::new(),
            &traced[..],
        ),
        (TLS_SCENARIO, String::new(), &[][..]),
    ] {
        let only = std::env::var("KEYGATE_BENCH_ONLY").ok();
        if only.is_some_and(|only| only != name) {
            continue;
        }
        if name == TLS_SCENARIO {
            let pki_dir = tempfile::tempdir().unwrap();
            let ca = pki::Ca::new(pki_dir.path(), "ca");
            // TLS on the data plane; the bench's setup calls stay plaintext.
            let tls = format!(
                "{}[tls.management]\nenabled = false\n",
                pki::tls_config(&ca.server("server"), None)
            );
            run("plaintext, no rate limit", &config, env, Load::Closed, None);
            run(
                "TLS, no rate limit",
                &tls,
                env,
                Load::Closed,
                Some(&ca.cert),
            );
            continue;
        }
        if name.starts_with("overload") {
            let rate = capacity.map_or_else(
                || {
                    std::env::var("KEYGATE_BENCH_OVERLOAD_RATE").map_or(40_000.0, |rate| {
                        rate.parse().expect("a number of calls per second")
                    })
                },
                |capacity| capacity * OVERLOAD_FACTOR,
            );
            run(name, &config, env, Load::Open { rate }, None);
        } else {
            let throughput = run(name, &config, env, Load::Closed, None);
            capacity.get_or_insert(throughput);
        }
    }
    drop(redis);
}

/// How a scenario offers its calls.
enum Load {
    /// `CONNECTIONS` x `IN_FLIGHT_PER_CONNECTION` callers, each sending its next call when
    /// the last is answered.
    Closed,
    /// Calls sent at `rate` per second whatever the answers, each with `CALL_DEADLINE`.
    Open { rate: f64 },
}

/// Runs one scenario and returns its throughput of allowed Checks per second. With
/// `tls_ca`, the data plane is called over TLS trusting that CA.
fn run(
    name: &str,
    config: &str,
    env: &[(&str, &str)],
    load: Load,
    tls_ca: Option<&std::path::Path>,
) -> f64 {
    println!("check_load: --- {name} ---");
    let dir = tempfile::tempdir().unwrap();
    let (mut keygate, management, data_plane) = start_keygate(dir.path(), config, env);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let throughput = runtime.block_on(async {
        let key = create_key(management).await;
        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            let channel = match tls_ca {
                Some(ca) => {
                    let addr = data_plane.trim_start_matches("http://").parse().unwrap();
                    pki::tls_channel(addr, ca, None).await.unwrap()
                }
                None => tonic::transport::Endpoint::from_shared(data_plane.clone())
                    .unwrap()
                    .connect()
                    .await
                    .unwrap(),
            };
            clients.push(AuthorizationClient::new(channel));
        }
        // Warm the key (the one argon2 verification) before measuring.
        let warm = clients[0].check(check_request(&key)).await.unwrap().into_inner();
        assert_eq!(warm.status.unwrap().code, 0, "the key must be allowed");

        let cpu_before = cpu_time(keygate.id());
        let started = Instant::now();
        let outcome = match load {
            Load::Closed => closed_loop(&clients, &key).await,
            Load::Open { rate } => open_loop(&clients, &key, rate).await,
        };
        let elapsed = started.elapsed();
        let cpu = cpu_time(keygate.id()) - cpu_before;
        let Outcome { mut latencies, refused, late, dropped, sent } = outcome;
        latencies.sort();
        println!(
            "check_load: {} Checks of a warm key allowed over {CONNECTIONS} HTTP/2 connections in {elapsed:.2?}; {refused} refused UNAVAILABLE, {late} past the {CALL_DEADLINE:?} deadline, {dropped} lost with their connection",
            latencies.len(),
        );
        if let Load::Open { rate } = load {
            println!(
                "check_load: offered {:.0} calls/s (asked for {rate:.0})",
                sent as f64 / elapsed.as_secs_f64()
            );
        }
        let throughput = latencies.len() as f64 / elapsed.as_secs_f64();
        println!(
            "check_load: p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}  throughput {throughput:.0} requests/s",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
            latencies[latencies.len() - 1],
        );
        println!(
            "check_load: server CPU per call {:.1} µs",
            cpu.as_secs_f64() * 1e6 / sent as f64
        );

        // One connection, one request at a time: latency without queueing.
        let mut single = Vec::new();
        for _ in 0..5_000 {
            let sent = Instant::now();
            clients[0].check(check_request(&key)).await.unwrap();
            single.push(sent.elapsed());
        }
        single.sort();
        println!(
            "check_load: sequential on one connection: p50 {:?}  p99 {:?}  p99.9 {:?}",
            percentile(&single, 0.50),
            percentile(&single, 0.99),
            percentile(&single, 0.999)
        );
        throughput
    });
    let _ = keygate.kill();
    let _ = keygate.wait();
    throughput
}

/// `message` as the admin calls it.
fn as_admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        "Bearer bench-admin-token-0123456789".parse().unwrap(),
    );
    request
}

/// Creates an owner and a key through the management API and returns the key's secret.
async fn create_key(management: String) -> String {
    let mut manage = KeyManagerClient::connect(management).await.unwrap();
    let owner = manage
        .create_owner(as_admin(proto::CreateOwnerRequest {
            external_id: "bench".into(),
            display_name: "bench".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    manage
        .create_key(as_admin(proto::CreateKeyRequest {
            owner_id: owner.id,
            name: "bench".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .secret
}

/// What a load loop saw.
#[derive(Default)]
struct Outcome {
    /// The latency of every allowed Check.
    latencies: Vec<Duration>,
    /// Calls answered UNAVAILABLE (keygate's overload answer).
    refused: usize,
    /// Calls not answered within `CALL_DEADLINE`.
    late: usize,
    /// Calls lost with their connection.
    dropped: usize,
    /// Calls sent.
    sent: usize,
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

    fn merge(&mut self, other: Outcome) {
        self.latencies.extend(other.latencies);
        self.refused += other.refused;
        self.late += other.late;
        self.dropped += other.dropped;
        self.sent += other.sent;
    }
}

/// One Check with `deadline` sent as `grpc-timeout` and kept by the caller too.
async fn timed_check(
    mut client: AuthorizationClient<tonic::transport::Channel>,
    request: CheckRequest,
    deadline: Option<Duration>,
) -> (Duration, Result<Result<i32, tonic::Status>, ()>) {
    let sent = Instant::now();
    let mut request = tonic::Request::new(request);
    let call = async {
        match deadline {
            Some(deadline) => {
                request.set_timeout(deadline);
                tokio::time::timeout(deadline, client.check(request))
                    .await
                    .map_err(drop)
            }
            None => Ok(client.check(request).await),
        }
    };
    let answer = call.await;
    let code = answer.map(|answer| answer.map(|ok| ok.into_inner().status.unwrap().code));
    (sent.elapsed(), code)
}

/// `REQUESTS` calls (or `TIME_LIMIT`) from closed-loop callers.
async fn closed_loop(
    clients: &[AuthorizationClient<tonic::transport::Channel>],
    key: &str,
) -> Outcome {
    let per_task = REQUESTS / (CONNECTIONS * IN_FLIGHT_PER_CONNECTION);
    let deadline = Instant::now() + TIME_LIMIT;
    let mut tasks = Vec::new();
    for client in clients {
        for _ in 0..IN_FLIGHT_PER_CONNECTION {
            let (client, request) = (client.clone(), check_request(key));
            tasks.push(tokio::spawn(async move {
                let mut outcome = Outcome::default();
                while outcome.sent < per_task && Instant::now() < deadline {
                    let (latency, answer) =
                        timed_check(client.clone(), request.clone(), None).await;
                    outcome.sent += 1;
                    outcome.record(latency, answer);
                }
                outcome
            }));
        }
    }
    let mut outcome = Outcome::default();
    for task in tasks {
        outcome.merge(task.await.unwrap());
    }
    outcome
}

/// Calls sent at `rate` per second for `OVERLOAD_TIME`, whatever the answers; the ones not
/// answered within `CALL_DEADLINE` are given up, as Envoy would.
async fn open_loop(
    clients: &[AuthorizationClient<tonic::transport::Channel>],
    key: &str,
    rate: f64,
) -> Outcome {
    let request = check_request(key);
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut calls = tokio::task::JoinSet::new();
    let mut outcome = Outcome::default();
    while started.elapsed() < OVERLOAD_TIME {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as usize;
        while outcome.sent < due {
            let client = clients[outcome.sent % clients.len()].clone();
            calls.spawn(timed_check(client, request.clone(), Some(CALL_DEADLINE)));
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}
