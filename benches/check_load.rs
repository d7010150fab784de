//! A bounded load loop against a real keygate process: Check calls for one warm key over
//! loopback, from several concurrent HTTP/2 connections, as Envoy would send them. Prints
//! p50 / p99 / p99.9 latency and throughput, five times: with no rate limit on the key's
//! plan; the same with twice the default `admission.max_in_flight` calls in flight
//! (overload: the calls past the limit are refused at once, and the p99 of the admitted ones
//! shows what overload costs them); with the local limiter; with the Redis limiter (a
//! redis-server on loopback); and with no rate limit but every request traced (spans made
//! and batched for an OTLP endpoint that refuses them, so the cost measured is keygate's
//! own).
//!
//! Each run also prints the server's CPU time per Check (user + system, from
//! `/proc/<pid>/stat`), the figure that compares builds on a shared, noisy machine.
//!
//! `cargo bench --bench check_load` (release build). Bounded: `REQUESTS` calls per run, and
//! never longer than `TIME_LIMIT`. `KEYGATE_BENCH_BINARY` runs another keygate build instead
//! of this one (to compare two builds in alternating rounds); `KEYGATE_BENCH_ONLY` runs only
//! the scenario of that name.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::proto::{self, key_manager_client::KeyManagerClient};

#[path = "../tests/common/check.rs"]
mod check;
#[path = "../tests/common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

const REQUESTS: usize = 60_000;
const CONNECTIONS: usize = 8;
const IN_FLIGHT_PER_CONNECTION: usize = 4;
/// In flight per connection in the overload scenario: 8 x 256 = 2,048, twice the default
/// `admission.max_in_flight`.
const OVERLOAD_PER_CONNECTION: usize = 256;
const TIME_LIMIT: Duration = Duration::from_secs(60);

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
    let mut child = Command::new(binary)
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
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cannot start keygate");
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
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
    ] {
        let only = std::env::var("KEYGATE_BENCH_ONLY").ok();
        if only.is_none_or(|only| only == name) {
            run(name, &config, env);
        }
    }
    drop(redis);
}

fn run(name: &str, config: &str, env: &[(&str, &str)]) {
    let in_flight = if name.starts_with("overload") {
        OVERLOAD_PER_CONNECTION
    } else {
        IN_FLIGHT_PER_CONNECTION
    };
    println!("check_load: --- {name} ---");
    let dir = tempfile::tempdir().unwrap();
    let (mut keygate, management, data_plane) = start_keygate(dir.path(), config, env);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut manage = KeyManagerClient::connect(management).await.unwrap();
        let auth = |message| {
            let mut request = tonic::Request::new(message);
            request.metadata_mut().insert("authorization", "Bearer bench-admin-token-0123456789".parse().unwrap());
            request
        };
        let owner = manage
            .create_owner(auth(proto::CreateOwnerRequest { external_id: "bench".into(), display_name: "bench".into(), ..Default::default() }))
            .await
            .unwrap()
            .into_inner();
        let mut request = tonic::Request::new(proto::CreateKeyRequest { owner_id: owner.id, name: "bench".into(), ..Default::default() });
        request.metadata_mut().insert("authorization", "Bearer bench-admin-token-0123456789".parse().unwrap());
        let key = manage.create_key(request).await.unwrap().into_inner().secret;

        let mut clients = Vec::new();
        for _ in 0..CONNECTIONS {
            clients.push(AuthorizationClient::connect(data_plane.clone()).await.unwrap());
        }
        // Warm the key (the one argon2 verification) before measuring.
        let warm = clients[0].check(check_request(&key)).await.unwrap().into_inner();
        assert_eq!(warm.status.unwrap().code, 0, "the key must be allowed");

        let per_task = (REQUESTS / (CONNECTIONS * in_flight)).max(1);
        let deadline = Instant::now() + TIME_LIMIT;
        let cpu_before = cpu_time(keygate.id());
        let started = Instant::now();
        let mut tasks = Vec::new();
        for client in &clients {
            for _ in 0..in_flight {
                let mut client = client.clone();
                let request = check_request(&key);
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(per_task);
                    let mut refused = 0usize;
                    for _ in 0..per_task {
                        if Instant::now() > deadline {
                            break;
                        }
                        let sent = Instant::now();
                        match client.check(request.clone()).await {
                            Ok(answer) => {
                                latencies.push(sent.elapsed());
                                assert_eq!(answer.into_inner().status.unwrap().code, 0);
                            }
                            // Overload is answered UNAVAILABLE at once; anything else is a bug.
                            Err(status) if status.code() == tonic::Code::Unavailable => {
                                refused += 1;
                            }
                            Err(status) => panic!("Check failed: {status:?}"),
                        }
                    }
                    (latencies, refused)
                }));
            }
        }
        let mut latencies = Vec::new();
        let mut refused = 0;
        for task in tasks {
            let (answered, turned_away) = task.await.unwrap();
            latencies.extend(answered);
            refused += turned_away;
        }
        let elapsed = started.elapsed();
        let cpu = cpu_time(keygate.id()) - cpu_before;
        latencies.sort();
        println!(
            "check_load: {} Checks of a warm key over {CONNECTIONS} HTTP/2 connections x {in_flight} in flight, in {:.2?}; {refused} refused for overload",
            latencies.len(),
            elapsed
        );
        println!(
            "check_load: p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}  throughput {:.0} requests/s",
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
            latencies[latencies.len() - 1],
            latencies.len() as f64 / elapsed.as_secs_f64()
        );
        println!(
            "check_load: server CPU per Check {:.1} µs",
            cpu.as_secs_f64() * 1e6 / latencies.len() as f64
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
    });
    let _ = keygate.kill();
    let _ = keygate.wait();
}
