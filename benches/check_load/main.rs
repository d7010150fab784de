//! Check under load, against a real keygate process and, for comparison in the same run, a
//! no-op ext_authz server on the same stack (tonic, envoy-types, tokio) that answers every
//! Check OK with one header. Scenarios, each a fresh server:
//!
//! * `no-op ext_authz`: the baseline, the cost of the gRPC hop alone;
//! * `no rate limit`: keygate, one warm key, no rate windows;
//! * `overload, no rate limit`: an open loop offering twice the throughput the previous
//!   scenario reached in this round, as Envoy forwards it: each call with Envoy's 200 ms
//!   deadline, at most 1,024 outstanding (Envoy's default breaker; calls due past it are
//!   shed by the generator), over 16 connections. The calls past the server's limits are
//!   refused at once, and the p99 of the allowed ones shows what overload costs them. It
//!   runs only when named or with `KEYGATE_BENCH_SERVER_CPU_SHARE` (one generator core
//!   cannot overload a server on a core of its own);
//! * `local limiter` / `Redis limiter`: two rate windows too wide to deny anything, counted
//!   in process / in a redis-server on loopback;
//! * `no rate limit, every request traced`: spans made and batched for an OTLP endpoint
//!   that refuses them, so the cost measured is keygate's own;
//! * `TLS, no rate limit`: keygate with TLS on the data plane (a certificate made with
//!   openssl at the start), called over TLS: compare with `no rate limit`;
//! * `Envoy + no-op ext_authz` / `Envoy + keygate`: Envoy (one worker) in front, its
//!   ext_authz filter calling the server and a direct response after it, loaded over
//!   HTTP/1.1 by `wrk`;
//! * `nginx, no auth` / `nginx + keygate forward-auth`: nginx (one process) running the
//!   shipped `examples/nginx/nginx.conf`, its `auth_request` off or asking keygate's
//!   forward-auth, and a `return 200` of its own as the API, loaded by `wrk` over HTTP/1.1
//!   (latencies from `wrk`, CPU per request of keygate and of nginx).
//!
//! The direct scenarios use a closed loop of 4 HTTP/2 connections x 16 calls in flight,
//! from `h2load`, the same Check (with a key of the same length) to every server.
//! Each run prints throughput, p50/p99 and the server's CPU time per call (user + system,
//! from `/proc/<pid>/stat`), and the proxy's when one is in front; at the end a table gives
//! the median of each over the rounds and the ratio to the no-op baseline measured in the
//! same round. On a shared machine absolute figures move by a quarter between runs: the
//! ratios are the result.
//!
//! `scripts/bench` runs it as intended (release build, server and Envoy pinned to CPU 0,
//! the load generator to CPU 1, three rounds). Environment:
//! `KEYGATE_BENCH_ROUNDS` (default 1); `KEYGATE_BENCH_ONLY` (scenario names separated
//! by `;`); `KEYGATE_BENCH_BINARY` (another keygate build, to compare two builds);
//! `KEYGATE_BENCH_SERVER_CPUS` (pins servers and Envoy with `taskset`);
//! `KEYGATE_BENCH_SERVER_CPU_SHARE` (e.g. `0.25`: that share of one CPU, through a cgroup,
//! so that the generator can overload the server); `KEYGATE_BENCH_OVERLOAD_RATE` (calls per
//! second when the overload scenario runs without the one before it, 40,000 unless set);
//! `KEYGATE_BENCH_PAIRED` (Envoy scenarios only: each round runs them all at the same time,
//! each server behind its own Envoy and `wrk`, all on the same CPUs, so that the machine's
//! other work in those seconds slows each alike; steadier ratios than alternating rounds,
//! from a busier core); and the bench's own `KEYGATE_ADMISSION__*` variables are passed to
//! keygate. Bounded: 60,000 calls or a minute per closed-loop run, 5 s per open-loop or
//! `wrk` run.

mod load;
mod servers;

/// The allocator keygate's binary uses, so the no-op server (this binary) runs on the same
/// stack, allocator included.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::Command;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;

use load::{CALL_DEADLINE, IN_FLIGHT_PER_CONNECTION, Load, MAX_OUTSTANDING, Outcome, percentile};
use servers::{Envoy, Running, children_cpu_time, cpu_time};

#[path = "../../tests/common/check.rs"]
mod check;
#[path = "../../tests/common/pki.rs"]
mod pki;
#[path = "../../tests/common/proxy.rs"]
mod proxy;
#[path = "../../tests/common/redis.rs"]
mod redis_server;
#[path = "../../tests/common/tools.rs"]
mod tools;
use redis_server::RedisServer;

/// HTTP/2 connections of the direct closed-loop scenarios.
const CONNECTIONS: usize = 4;
/// HTTP/2 connections of the open loop: enough that `MAX_OUTSTANDING` calls fit within
/// keygate's default of 100 streams per connection, as Envoy opens connections until they
/// do.
const OPEN_LOOP_CONNECTIONS: usize = 16;
/// The offered load in the overload scenario, as a multiple of the throughput measured
/// without it.
const OVERLOAD_FACTOR: f64 = 2.0;
/// Connections `wrk` keeps open to Envoy.
const WRK_CONNECTIONS: usize = 64;
/// How long each `wrk` run lasts.
const WRK_TIME: &str = "5s";

/// A Check request as Envoy sends it for `GET /v1/sites?page=2` with `key`.
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

/// The server a scenario loads.
enum Target {
    /// The no-op ext_authz server.
    Noop,
    /// keygate with this configuration and environment; its data plane is called over
    /// TLS trusting `tls_ca` when set.
    Keygate {
        config: String,
        env: Vec<(&'static str, String)>,
        tls_ca: Option<std::path::PathBuf>,
    },
}

/// How the load reaches the server.
enum Front {
    /// Check calls straight from the generator.
    Direct(LoadKind),
    /// HTTP requests through Envoy, from `wrk`.
    Envoy(EnvoyLoad),
    /// HTTP requests through nginx, from `wrk`, asking forward-auth when `auth`.
    Nginx { auth: bool },
}

/// How `wrk` loads Envoy, and Envoy keygate.
#[derive(Clone, Copy)]
struct EnvoyLoad {
    /// Connections `wrk` keeps open to Envoy, each with one request in flight.
    connections: usize,
    /// Envoy's bound on Check calls in flight (its circuit breaker; 1,024 is Envoy's
    /// default).
    max_requests: u32,
    /// Whether the load is past what the server can decide: Envoy's refusals are counted
    /// rather than an error, and latencies are those of the allowed requests.
    overload: bool,
}

impl EnvoyLoad {
    /// Envoy in front of a server with room to spare.
    const NORMAL: EnvoyLoad = EnvoyLoad {
        connections: WRK_CONNECTIONS,
        max_requests: 1024,
        overload: false,
    };

    /// 512 connections against a server with a share of a CPU, with `max_requests`.
    fn overload(max_requests: u32) -> EnvoyLoad {
        EnvoyLoad {
            connections: 512,
            max_requests,
            overload: true,
        }
    }
}

/// The direct load of a scenario.
#[derive(Clone, Copy)]
enum LoadKind {
    Closed,
    /// An open loop at `OVERLOAD_FACTOR` times the last closed-loop throughput.
    Overload,
}

impl Scenario {
    /// Whether the scenario offers more than the server can decide.
    fn overload(&self) -> bool {
        match self.front {
            Front::Direct(kind) => matches!(kind, LoadKind::Overload),
            Front::Envoy(load) => load.overload,
            Front::Nginx { .. } => false,
        }
    }
}

struct Scenario {
    name: &'static str,
    target: Target,
    front: Front,
    /// The scenario its ratios are taken against.
    baseline: &'static str,
}

/// What one run measured.
#[derive(Clone, Copy)]
struct Measured {
    throughput: f64,
    p50: Duration,
    p99: Duration,
    /// Server CPU per request, in microseconds (keygate or the no-op server; Envoy's is
    /// not counted).
    cpu_us: f64,
    /// The proxy's (Envoy's or nginx's) CPU per request, in microseconds, when one is in
    /// front.
    proxy_cpu_us: Option<f64>,
}

impl Measured {
    /// The figures of a run that took `elapsed` and `cpu` of the server's time for
    /// `requests` requests, of which those allowed took `allowed` (sorted).
    fn of(allowed: &[Duration], elapsed: Duration, cpu: Duration, requests: usize) -> Measured {
        Measured {
            throughput: allowed.len() as f64 / elapsed.as_secs_f64(),
            p50: percentile(allowed, 0.50),
            p99: percentile(allowed, 0.99),
            cpu_us: micros_each(cpu, requests as f64),
            proxy_cpu_us: None,
        }
    }

    /// These figures, after printing them.
    fn printed(self) -> Measured {
        let m = self;
        println!(
            "check_load: throughput {:.0} requests/s  p50 {:?}  p99 {:?}  server CPU per request {:.1} µs",
            m.throughput, m.p50, m.p99, m.cpu_us
        );
        if let Some(proxy) = m.proxy_cpu_us {
            println!("check_load: proxy CPU per request {proxy:.1} µs");
        }
        m
    }
}

fn main() {
    if std::env::var_os(servers::NOOP_MODE).is_some() {
        return servers::serve_noop();
    }
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
    let traced = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{closed}")),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_owned()),
        ("OTEL_TRACES_SAMPLER", "always_on".to_owned()),
    ];
    let keygate = |config: &str, env: &[(&'static str, String)]| Target::Keygate {
        config: config.to_owned(),
        env: env.to_vec(),
        tls_ca: None,
    };
    let pki_dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new(pki_dir.path(), "ca");
    // TLS on the data plane; the bench's setup calls stay plaintext.
    let tls = Target::Keygate {
        config: format!(
            "{}[tls.management]\nenabled = false\n",
            pki::tls_config(&ca.server("server"), None)
        ),
        env: Vec::new(),
        tls_ca: Some(ca.cert.clone()),
    };
    let scenarios = [
        Scenario {
            name: "no-op ext_authz",
            target: Target::Noop,
            front: Front::Direct(LoadKind::Closed),
            baseline: "no-op ext_authz",
        },
        Scenario {
            name: "no rate limit",
            target: keygate("", &[]),
            front: Front::Direct(LoadKind::Closed),
            baseline: "no-op ext_authz",
        },
        Scenario {
            name: "overload, no rate limit",
            target: keygate("", &[]),
            front: Front::Direct(LoadKind::Overload),
            baseline: "no-op ext_authz",
        },
        Scenario {
            name: "local limiter",
            target: keygate(METERED, &[]),
            front: Front::Direct(LoadKind::Closed),
            baseline: "no-op ext_authz",
        },
        Scenario {
            name: "Redis limiter",
            target: keygate(&redis_config, &[]),
            front: Front::Direct(LoadKind::Closed),
            baseline: "no-op ext_authz",
        },
        Scenario {
            name: "no rate limit, every request traced",
            target: keygate("", &traced),
            front: Front::Direct(LoadKind::Closed),
            baseline: "no-op ext_authz",
        },
        Scenario {
            name: "TLS, no rate limit",
            target: tls,
            front: Front::Direct(LoadKind::Closed),
            baseline: "no rate limit",
        },
        Scenario {
            name: "Envoy + no-op ext_authz",
            target: Target::Noop,
            front: Front::Envoy(EnvoyLoad::NORMAL),
            baseline: "Envoy + no-op ext_authz",
        },
        Scenario {
            name: "Envoy + keygate",
            target: keygate("", &[]),
            front: Front::Envoy(EnvoyLoad::NORMAL),
            baseline: "Envoy + no-op ext_authz",
        },
        Scenario {
            name: "nginx, no auth",
            target: keygate("", &[]),
            front: Front::Nginx { auth: false },
            baseline: "nginx, no auth",
        },
        Scenario {
            name: "nginx + keygate forward-auth",
            target: keygate("", &[]),
            front: Front::Nginx { auth: true },
            baseline: "nginx, no auth",
        },
        Scenario {
            name: "Envoy + keygate, light load",
            target: keygate("", &[]),
            front: Front::Envoy(EnvoyLoad {
                connections: 8,
                max_requests: 1024,
                overload: false,
            }),
            baseline: "Envoy + keygate, light load",
        },
        Scenario {
            name: "Envoy + keygate, overload, Envoy's default breaker",
            target: keygate("", &[]),
            front: Front::Envoy(EnvoyLoad::overload(1024)),
            baseline: "Envoy + keygate, light load",
        },
        Scenario {
            name: "Envoy + keygate, overload, breaker at 32",
            target: keygate("", &[]),
            front: Front::Envoy(EnvoyLoad::overload(32)),
            baseline: "Envoy + keygate, light load",
        },
    ];
    let only: Option<Vec<String>> = std::env::var("KEYGATE_BENCH_ONLY")
        .ok()
        .map(|names| names.split(';').map(|n| n.trim().to_owned()).collect());
    // Overload needs a server slower than the generator: with both on a core of their own,
    // one generator core cannot offer twice what the server decides, and the run would
    // measure the generator's collapse. It runs when named, or with a CPU share.
    let limited = std::env::var_os("KEYGATE_BENCH_SERVER_CPU_SHARE").is_some();
    let chosen: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| match &only {
            Some(only) => only.iter().any(|n| n == s.name),
            None => limited || !s.overload(),
        })
        .collect();
    assert!(!chosen.is_empty(), "KEYGATE_BENCH_ONLY names no scenario");
    let rounds: usize = std::env::var("KEYGATE_BENCH_ROUNDS")
        .map_or(1, |n| n.parse().expect("KEYGATE_BENCH_ROUNDS: a number"));

    let paired = std::env::var_os("KEYGATE_BENCH_PAIRED").is_some();
    assert!(
        !paired || chosen.iter().all(|s| matches!(s.front, Front::Envoy(_))),
        "KEYGATE_BENCH_PAIRED runs Envoy scenarios only"
    );

    // results[round][scenario index]
    let mut results: Vec<Vec<Option<Measured>>> = Vec::new();
    for round in 1..=rounds {
        if paired {
            results.push(run_paired(round, &chosen));
            continue;
        }
        let mut measured = vec![None; chosen.len()];
        let mut capacity = None;
        for (i, scenario) in chosen.iter().enumerate() {
            println!("check_load: --- round {round}: {} ---", scenario.name);
            let result = run(scenario, capacity);
            if let Front::Direct(LoadKind::Closed) = scenario.front
                && matches!(scenario.target, Target::Keygate { .. })
            {
                capacity.get_or_insert(result.throughput);
            }
            measured[i] = Some(result);
        }
        results.push(measured);
    }
    summarize(&chosen, &results);
    drop(redis);
}

/// A scenario's server, a key it allows, and a directory for the run's files.
struct Started {
    server: Running,
    key: String,
    dir: tempfile::TempDir,
}

/// Starts the server of `scenario` and makes a key it allows.
fn start(scenario: &Scenario, runtime: &tokio::runtime::Runtime) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let server = match &scenario.target {
        Target::Noop => servers::noop(),
        Target::Keygate { config, env, .. } => {
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            servers::keygate(dir.path(), config, &env)
        }
    };
    let key = runtime.block_on(async {
        match &server.management {
            Some(management) => servers::create_key(management).await,
            // A key of the shape keygate issues, so both servers read the same requests.
            None => {
                let profile = keygate::key::format::default_profile();
                profile.issue(&profile.new_key_id()).text().to_owned()
            }
        }
    });
    Started { server, key, dir }
}

/// Runs the Envoy scenarios `chosen` once, all at the same time: each server behind an
/// Envoy of its own, loaded by a `wrk` of its own, so that whatever else the machine does
/// in those seconds slows every set-up alike.
fn run_paired(round: usize, chosen: &[&Scenario]) -> Vec<Option<Measured>> {
    let runtime = servers::runtime();
    let started: Vec<Started> = chosen.iter().map(|s| start(s, &runtime)).collect();
    let fronts: Vec<EnvoyFront> = chosen
        .iter()
        .zip(&started)
        .map(|(scenario, started)| {
            let Front::Envoy(load) = scenario.front else {
                unreachable!("paired scenarios are Envoy scenarios")
            };
            EnvoyFront::start(&started.server, &started.key, load, started.dir.path())
        })
        .collect();
    let measured: Vec<(Measured, String)> = std::thread::scope(|scope| {
        let runs: Vec<_> = (fronts.iter())
            .map(|front| scope.spawn(|| front.measure()))
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    (chosen.iter().zip(measured))
        .map(|(scenario, (measured, report))| {
            println!(
                "check_load: --- round {round}: {} (paired) ---",
                scenario.name
            );
            print!("{report}");
            Some(measured.printed())
        })
        .collect()
}

/// Runs one scenario once.
fn run(scenario: &Scenario, capacity: Option<f64>) -> Measured {
    let runtime = servers::runtime();
    let Started { server, key, dir } = start(scenario, &runtime);
    match scenario.front {
        Front::Direct(kind) => {
            let load = match kind {
                LoadKind::Closed => Load::Closed,
                LoadKind::Overload => Load::Open {
                    rate: capacity.map_or_else(
                        || {
                            std::env::var("KEYGATE_BENCH_OVERLOAD_RATE").map_or(40_000.0, |r| {
                                r.parse()
                                    .expect("KEYGATE_BENCH_OVERLOAD_RATE: calls per second")
                            })
                        },
                        |c| c * OVERLOAD_FACTOR,
                    ),
                },
            };
            let tls_ca = match &scenario.target {
                Target::Keygate { tls_ca, .. } => tls_ca.as_deref(),
                Target::Noop => None,
            };
            runtime.block_on(direct(&server, tls_ca, &key, load))
        }
        Front::Envoy(load) => {
            let front = EnvoyFront::start(&server, &key, load, dir.path());
            let (measured, report) = front.measure();
            print!("{report}");
            measured.printed()
        }
        Front::Nginx { auth } => through_nginx(&server, &key, auth),
    }
}

/// Check calls straight to `server`, over TLS trusting `tls_ca` when set.
async fn direct(
    server: &Running,
    tls_ca: Option<&std::path::Path>,
    key: &str,
    load: Load,
) -> Measured {
    let connections = match load {
        Load::Closed => CONNECTIONS,
        Load::Open { .. } => OPEN_LOOP_CONNECTIONS,
    };
    let dial = load::Dial {
        addr: server
            .data_plane
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
        tls_ca: tls_ca.map(std::path::Path::to_path_buf),
    };
    // Warm the key (the one argon2 verification) before measuring.
    let mut checker = AuthorizationClient::new(dial.channel().await);
    assert_allowed(&mut checker, key).await;

    let counted_before = server.counters();
    let cpu_before = cpu_time(server.pid());
    let generator_before = cpu_time(std::process::id()) + children_cpu_time();
    let started = Instant::now();
    let outcome = load::offer(load, &dial, connections, key).await;
    let elapsed = started.elapsed();
    let cpu = cpu_time(server.pid()) - cpu_before;
    let generator = cpu_time(std::process::id()) + children_cpu_time() - generator_before;
    if let (Load::Closed, Some(before), Some(after)) = (load, counted_before, server.counters()) {
        // h2load reads no answer; keygate's own count says every answered call was allowed.
        let allowed = after.allowed - before.allowed;
        assert_eq!(
            allowed,
            outcome.latencies.len() as u64,
            "every Check answered must have been allowed"
        );
        // Redis, not its local stand-in, must have decided them.
        let fallbacks = after.redis_fallbacks - before.redis_fallbacks;
        assert_eq!(
            fallbacks, 0,
            "Redis did not answer {fallbacks} rate-limit checks"
        );
        let calls = after.redis_calls - before.redis_calls;
        if calls > 0 {
            println!(
                "check_load: {calls} Redis limiter calls, {:.1} Checks per call",
                allowed as f64 / calls as f64
            );
        }
    }
    assert_allowed(&mut checker, key).await;
    let Outcome {
        mut latencies,
        refused,
        late,
        dropped,
        sent,
        shed,
    } = outcome;
    latencies.sort();
    let in_flight = match load {
        Load::Closed => format!("{CONNECTIONS} x {IN_FLIGHT_PER_CONNECTION} in flight"),
        Load::Open { rate } => format!(
            "an open loop of {:.0} calls/s (asked for {rate:.0}; {shed} shed at {MAX_OUTSTANDING} outstanding)",
            sent as f64 / elapsed.as_secs_f64()
        ),
    };
    println!(
        "check_load: {} Checks allowed over {in_flight} in {elapsed:.2?}; {refused} refused UNAVAILABLE, {late} past the {CALL_DEADLINE:?} deadline, {dropped} lost with their connection",
        latencies.len(),
    );
    let measured = Measured::of(&latencies, elapsed, cpu, sent).printed();
    // A generator near 100 % of its core limits the throughput as much as the server does.
    println!(
        "check_load: p99.9 {:?}  max {:?}  generator CPU per request {:.1} µs ({:.0} % of its time)",
        percentile(&latencies, 0.999),
        latencies[latencies.len() - 1],
        micros_each(generator, sent as f64),
        100.0 * generator.as_secs_f64() / elapsed.as_secs_f64()
    );
    measured
}

/// Asserts that `server` allows `key`.
async fn assert_allowed(server: &mut AuthorizationClient<tonic::transport::Channel>, key: &str) {
    let answer = server.check(check_request(key)).await.unwrap().into_inner();
    assert_eq!(answer.status.unwrap().code, 0, "the key must be allowed");
}

/// Envoy in front of a server, loaded by `wrk`: started and warmed up, ready to measure.
struct EnvoyFront<'a> {
    server: &'a Running,
    key: &'a str,
    load: EnvoyLoad,
    envoy: Envoy,
    url: String,
}

impl<'a> EnvoyFront<'a> {
    /// Starts Envoy in front of `server` (its files in `dir`) and sends it a second of
    /// `load` with `key`.
    fn start(server: &'a Running, key: &'a str, load: EnvoyLoad, dir: &std::path::Path) -> Self {
        let envoy = Envoy::start(
            &tools::venv_tool("envoy"),
            &server.data_plane,
            load.max_requests,
            dir,
        );
        let url = format!("http://{}/v1/sites?page=2", envoy.listen);
        wrk(load.connections, "1s", key, &url);
        EnvoyFront {
            server,
            key,
            load,
            envoy,
            url,
        }
    }

    /// HTTP requests through Envoy to the server, from `wrk`, and what to print of them.
    /// Latencies are Envoy's (its access log, in microseconds) for the allowed
    /// requests; under overload the requests Envoy refused (its circuit breaker or a failed
    /// Check: 403) are counted apart.
    fn measure(&self) -> (Measured, String) {
        let (envoy, load) = (&self.envoy, self.load);
        let logged = || std::fs::read_to_string(&envoy.access_log).unwrap_or_default();
        let skip = logged().lines().count();
        let cpu_before = cpu_time(self.server.pid());
        let envoy_before = cpu_time(envoy.pid());
        let started = Instant::now();
        wrk(load.connections, WRK_TIME, self.key, &self.url);
        let elapsed = started.elapsed();
        let cpu = cpu_time(self.server.pid()) - cpu_before;
        let envoy_cpu = cpu_time(envoy.pid()) - envoy_before;
        // Envoy writes its access log in the background: wait until every request is in it.
        let mut log = logged();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            let now = logged();
            if now.len() == log.len() {
                break;
            }
            log = now;
        }
        let (mut allowed, mut refused, mut other) = (Vec::new(), 0usize, 0usize);
        for line in log.lines().skip(skip) {
            let (status, micros) = line.split_once(' ').expect("status and duration");
            match status {
                "200" => allowed.push(Duration::from_micros(micros.trim().parse().unwrap())),
                "403" => refused += 1,
                // Requests in flight when wrk stopped: the client went away.
                "0" => {}
                _ => other += 1,
            }
        }
        let total = allowed.len() + refused + other;
        assert!(
            load.overload || (refused == 0 && other == 0),
            "Envoy answered {refused} requests 403 and {other} otherwise, not 200"
        );
        allowed.sort();
        let report = format!(
            "check_load: {} requests allowed, {refused} refused 403 by Envoy, {other} other, in {elapsed:.2?} ({} connections, breaker at {})\n",
            allowed.len(),
            load.connections,
            load.max_requests
        );
        let measured = Measured {
            proxy_cpu_us: Some(micros_each(envoy_cpu, total as f64)),
            ..Measured::of(&allowed, elapsed, cpu, total)
        };
        (measured, report)
    }
}

/// Runs `wrk` (one thread, `connections` connections) against `url` for `duration`, each
/// request with `key` as a bearer token, and returns its report.
fn wrk(connections: usize, duration: &str, key: &str, url: &str) -> String {
    let output = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            "-d",
            duration,
            "--latency",
        ])
        .args(["-H", &format!("authorization: Bearer {key}"), url])
        .output()
        .expect("wrk is not installed: apt-get install wrk (scripts/bench installs it)");
    assert!(output.status.success(), "wrk failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// HTTP requests through nginx, asking `server`'s forward-auth when `auth`, from `wrk`.
/// Latencies are `wrk`'s; the requests must all be answered 200.
fn through_nginx(server: &Running, key: &str, auth: bool) -> Measured {
    let nginx = servers::nginx(&server.data_plane, auth);
    let url = format!("http://{}/v1/sites?page=2", nginx.listen_addr);
    wrk(WRK_CONNECTIONS, "1s", key, &url);
    let cpu_before = cpu_time(server.pid());
    let nginx_before = cpu_time(nginx.pid());
    let report = wrk(WRK_CONNECTIONS, WRK_TIME, key, &url);
    let cpu = cpu_time(server.pid()) - cpu_before;
    let nginx_cpu = cpu_time(nginx.pid()) - nginx_before;
    assert!(
        !report.contains("Non-2xx"),
        "nginx answered requests other than 200:\n{report}\n{}",
        nginx.log()
    );
    let field = |label: &str| {
        (report.lines())
            .find_map(|line| line.trim().strip_prefix(label))
            .unwrap_or_else(|| panic!("no {label:?} in wrk's report:\n{report}"))
            .trim()
            .to_owned()
    };
    let requests: f64 = (report.lines())
        .find(|line| line.contains(" requests in "))
        .and_then(|line| line.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{report}"));
    let measured = Measured {
        throughput: field("Requests/sec:").parse().unwrap(),
        p50: wrk_duration(&field("50%")),
        p99: wrk_duration(&field("99%")),
        cpu_us: micros_each(cpu, requests),
        proxy_cpu_us: Some(micros_each(nginx_cpu, requests)),
    }
    .printed();
    println!(
        "check_load: nginx with {WRK_CONNECTIONS} connections, auth_request {}",
        if auth { "on" } else { "off" }
    );
    measured
}

/// A duration as `wrk` prints it: `812.00us`, `1.23ms`, `2.01s`.
fn wrk_duration(text: &str) -> Duration {
    let (number, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let value: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("not a wrk duration: {text}"));
    let seconds = match unit {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" => value,
        "m" => value * 60.0,
        _ => panic!("not a wrk duration: {text}"),
    };
    Duration::from_secs_f64(seconds)
}

/// `cpu` shared out over `requests`, in microseconds each.
fn micros_each(cpu: Duration, requests: f64) -> f64 {
    cpu.as_secs_f64() * 1e6 / requests
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Prints the median of each figure over the rounds and the median of the per-round
/// ratios to each scenario's baseline.
fn summarize(chosen: &[&Scenario], results: &[Vec<Option<Measured>>]) {
    println!(
        "check_load: | scenario | requests/s | vs baseline | p50 | p99 | p99 vs baseline | server CPU/request | proxy CPU/request |"
    );
    println!("check_load: | --- | --- | --- | --- | --- | --- | --- | --- |");
    let column = |i: usize, f: &dyn Fn(&Measured) -> f64| {
        median(
            results
                .iter()
                .filter_map(|r| r[i].as_ref().map(f))
                .collect(),
        )
    };
    for (i, scenario) in chosen.iter().enumerate() {
        let base = chosen.iter().position(|s| s.name == scenario.baseline);
        let ratio = |f: &dyn Fn(&Measured) -> f64| match base {
            Some(b) => format!(
                "{:.2}x",
                median(
                    results
                        .iter()
                        .map(|r| f(r[i].as_ref().unwrap()) / f(r[b].as_ref().unwrap()))
                        .collect()
                )
            ),
            None => "-".to_owned(),
        };
        let proxy = results
            .iter()
            .filter_map(|r| r[i].as_ref()?.proxy_cpu_us)
            .collect::<Vec<_>>();
        let proxy = if proxy.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.1} µs", median(proxy))
        };
        println!(
            "check_load: | {} | {:.0} | {} | {:.2} ms | {:.2} ms | {} | {:.1} µs | {proxy} |",
            scenario.name,
            column(i, &|m| m.throughput),
            ratio(&|m| m.throughput),
            column(i, &|m| m.p50.as_secs_f64() * 1e3),
            column(i, &|m| m.p99.as_secs_f64() * 1e3),
            ratio(&|m| m.p99.as_secs_f64()),
            column(i, &|m| m.cpu_us),
        );
    }
}
