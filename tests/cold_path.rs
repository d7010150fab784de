//! The cold path under attack, with the real binary and the real argon2 cost (19 MiB per
//! hash): a burst of never-seen keys, then a flood of distinct wrong secrets for a known key
//! id from clients that give up after 50 ms. Resident memory and the thread count stay
//! bounded, and a never-seen valid key checked during the flood is decided in time.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::check::{check_request, decision_code};
use common::http::http_request;
use common::process::KeygateProcess;
use common::{ADMIN_TOKEN, TEST_CONFIG, admin, create_owner};
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::proto;
use tonic::transport::Channel;

/// Never-seen keys checked at once.
const BURST: usize = 300;
/// How long the wrong-secret flood lasts.
const FLOOD: Duration = Duration::from_secs(5);
/// Clients sending wrong secrets at once.
const FLOODERS: usize = 32;
/// How long a flooding client waits for an answer.
const FLOOD_DEADLINE: Duration = Duration::from_millis(50);
/// How long a never-seen valid key may take to be decided during the flood.
const DECIDED_WITHIN: Duration = Duration::from_millis(250);
/// Never-seen valid keys checked during the flood, one after another.
const PROBES: usize = 12;
/// How much resident memory may grow over its value at start.
const MEMORY_HEADROOM_KB: u64 = 100 * 1000;
/// How many threads may be added to those at start (argon2 workers are there from start).
const THREAD_HEADROOM: u64 = 40;

/// The test configuration with argon2's default cost on two workers, and an unmetered plan
/// so that rate limits never decide.
fn config() -> String {
    let cheap = "[argon2]\nmemory_kib = 64\niterations = 1\nparallelism = 1\n";
    assert!(
        TEST_CONFIG.contains(cheap),
        "the test configuration changed"
    );
    let config = TEST_CONFIG.replace(cheap, "[argon2]\nmax_concurrent = 2\n");
    format!("{config}\n[[plans]]\nname = \"unmetered\"\n")
}

/// Resident memory (KB) and thread count of process `pid`.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("cannot read the server's /proc status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc status"))
    };
    (field("VmRSS:"), field("Threads:"))
}

/// Samples the server's memory and threads every 10 ms until stopped, keeping the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak_rss: Arc<AtomicU64>,
    peak_threads: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let peak_rss = Arc::new(AtomicU64::new(0));
        let peak_threads = Arc::new(AtomicU64::new(0));
        let (s, r, t) = (stop.clone(), peak_rss.clone(), peak_threads.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let (rss, threads) = usage(pid);
                r.fetch_max(rss, Ordering::Relaxed);
                t.fetch_max(threads, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Sampler {
            stop,
            peak_rss,
            peak_threads,
            thread: Some(thread),
        }
    }

    /// Stops sampling and returns the peak resident memory (KB) and thread count.
    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        (
            self.peak_rss.load(Ordering::Relaxed),
            self.peak_threads.load(Ordering::Relaxed),
        )
    }
}

/// Check's answer for `secret`, from a client that gives up after `deadline` (sent to the
/// server as `grpc-timeout`, and enforced here too).
async fn check_within(
    channel: &Channel,
    secret: &str,
    deadline: Duration,
) -> Result<CheckResponse, tonic::Code> {
    let mut request = tonic::Request::new(check_request(
        "203.0.113.9",
        "GET",
        "/v1/things",
        &[("x-api-key", secret)],
        &[],
    ));
    request.set_timeout(deadline);
    let mut client = AuthorizationClient::new(channel.clone());
    match tokio::time::timeout(deadline, client.check(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(status.code()),
        Err(_) => Err(tonic::Code::DeadlineExceeded),
    }
}

/// The value of counter `name` on the metrics listener.
async fn counter(metrics: SocketAddr, name: &str) -> u64 {
    let body = http_request(metrics, "GET", "/metrics", &[]).await.body;
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {name} in the metrics")) as u64
}

/// Issues `n` keys to `owner`, a few at a time, and returns their secrets and ids.
async fn issue(
    manage: &proto::key_manager_client::KeyManagerClient<Channel>,
    owner: &str,
    n: usize,
) -> Vec<(String, String)> {
    let mut issued = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut manage = manage.clone();
        let owner = owner.to_owned();
        pending.spawn(async move {
            let created = manage
                .create_key(admin(proto::CreateKeyRequest {
                    owner_id: owner,
                    name: format!("cold {i}"),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner();
            (created.secret, created.key.unwrap().id)
        });
        if pending.len() >= 8 {
            issued.push(pending.join_next().await.unwrap().unwrap());
        }
    }
    while let Some(done) = pending.join_next().await {
        issued.push(done.unwrap());
    }
    issued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_and_a_wrong_secret_flood_keep_memory_threads_and_latency_bounded() {
    let dir = common::data_dir();
    let server = KeygateProcess::start_with_config(
        dir.path(),
        &config(),
        &[
            ("KEYGATE_PEPPER", "cold path test pepper 0123456789"),
            ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    let pid = server.pid();
    let mut manage = proto::key_manager_client::KeyManagerClient::connect(server.url())
        .await
        .unwrap();
    let channels: Vec<Channel> = {
        let mut channels = Vec::new();
        for _ in 0..4 {
            let endpoint =
                Channel::from_shared(format!("http://{}", server.data_plane_addr)).unwrap();
            channels.push(endpoint.connect().await.unwrap());
        }
        channels
    };
    let (start_rss, start_threads) = usage(pid);
    let sampler = Sampler::start(pid);

    let owner = create_owner(&mut manage, "victim", "unmetered").await.id;
    let keys = issue(&manage, &owner, BURST + PROBES + 1).await;
    let (known_secret, known_id) = keys[0].clone();
    let probes = &keys[1..=PROBES];
    let burst = &keys[PROBES + 1..];
    assert_eq!(
        decision_code(
            &check_within(&channels[0], &known_secret, Duration::from_secs(5))
                .await
                .unwrap()
        ),
        "OK"
    );

    // Every never-seen key at once: each is decided or refused as UNAVAILABLE by its
    // deadline, none waits for a queue of seconds.
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for (i, (secret, _)) in burst.iter().enumerate() {
        let channel = channels[i % channels.len()].clone();
        let secret = secret.clone();
        calls.spawn(async move { check_within(&channel, &secret, DECIDED_WITHIN).await });
    }
    let (mut allowed, mut unavailable) = (0, 0);
    while let Some(answer) = calls.join_next().await {
        match answer.unwrap() {
            Ok(response) => {
                assert_eq!(decision_code(&response), "OK");
                allowed += 1;
            }
            Err(
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled,
            ) => unavailable += 1,
            Err(code) => panic!("a cold key was answered {code:?}"),
        }
    }
    assert!(allowed > 0, "the workers verified some of the burst");
    assert_eq!(allowed + unavailable, BURST);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the burst took {:?}",
        started.elapsed()
    );

    // The burst's queued verifications run on after their callers gave up: let the queue
    // drain, so only the workers' current jobs (one each at most) can end during the flood.
    let drained_by = Instant::now() + Duration::from_secs(10);
    while counter(server.metrics_addr, "keygate_argon2_queue_depth").await > 0 {
        assert!(
            Instant::now() < drained_by,
            "the argon2 queue never drained"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The flood: distinct wrong secrets for the known id from clients that give up after
    // 50 ms, while never-seen valid keys are checked one after another.
    let argon2_before = counter(server.metrics_addr, "keygate_argon2_verifications_total").await;
    let flood_end = Instant::now() + FLOOD;
    let sent = Arc::new(AtomicU64::new(0));
    let mut flooders = tokio::task::JoinSet::new();
    for i in 0..FLOODERS {
        let channel = channels[i % channels.len()].clone();
        let (id, sent) = (known_id.clone(), sent.clone());
        flooders.spawn(async move {
            while Instant::now() < flood_end {
                let wrong = keygate::key::format::default_profile().issue(&id);
                match check_within(&channel, wrong.text(), FLOOD_DEADLINE).await {
                    Ok(response) => assert_eq!(decision_code(&response), "INVALID_API_KEY"),
                    Err(
                        tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled,
                    ) => {}
                    Err(code) => panic!("a wrong secret was answered {code:?}"),
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let pause = FLOOD / (PROBES as u32 + 1);
    let mut slowest = Duration::ZERO;
    for (secret, _) in probes {
        tokio::time::sleep(pause).await;
        let asked = Instant::now();
        let answer = check_within(&channels[0], secret, DECIDED_WITHIN).await;
        let took = asked.elapsed();
        match answer {
            Ok(response) => assert_eq!(decision_code(&response), "OK"),
            Err(code) => panic!(
                "a never-seen valid key was not decided during the flood: {code:?} after {took:?}"
            ),
        }
        slowest = slowest.max(took);
    }
    while let Some(done) = flooders.join_next().await {
        done.unwrap();
    }
    let argon2_runs =
        counter(server.metrics_addr, "keygate_argon2_verifications_total").await - argon2_before;
    let (peak_rss, peak_threads) = sampler.finish();
    let wrong = sent.load(Ordering::Relaxed);

    eprintln!(
        "start {start_rss} KB / {start_threads} threads; peak {peak_rss} KB / {peak_threads} threads; \
         burst {allowed} allowed, {unavailable} unavailable; flood {wrong} wrong secrets, \
         {argon2_runs} argon2 runs (probes {PROBES}); slowest probe {slowest:?}"
    );
    assert!(wrong > 1000, "the flood sent only {wrong} requests");
    assert!(
        argon2_runs <= PROBES as u64 + 2,
        "wrong secrets ran argon2: {argon2_runs} runs for {PROBES} valid keys"
    );
    assert!(
        peak_rss < start_rss + MEMORY_HEADROOM_KB,
        "resident memory grew from {start_rss} KB to {peak_rss} KB"
    );
    assert!(
        peak_threads <= start_threads + THREAD_HEADROOM,
        "threads grew from {start_threads} to {peak_threads}"
    );
}
