//! Rate-limiter throughput and memory: decisions/s of the local limiter and of the Redis
//! limiter against a real redis-server on loopback, and the memory one counted subject
//! costs locally. Bounded: a fixed number of decisions per measurement.
//!
//! `cargo bench --bench ratelimit` (needs `redis-server`; `scripts/install-test-tools`
//! installs it).

use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/memory.rs"]
mod memory;
#[path = "common/windows.rs"]
mod windows;

use keygate::clock::SystemClock;
use keygate::plan::{RateScope, RateWindow};
use keygate::ratelimit::local::{HeldMeters, LocalLimiter};
use keygate::ratelimit::redis::RedisLimiter;
use keygate::ratelimit::{Checks, DecidedBy, Subject};
use keygate::redis::RedisConfig;

#[path = "../tests/common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;
use windows::wide_windows;

const DECISIONS: usize = 200_000;
const REDIS_DECISIONS: usize = 50_000;
const SUBJECTS: usize = 200_000;

fn local(windows: &[RateWindow]) {
    let limiter = Arc::new(LocalLimiter::new(10_000_000, Duration::from_secs(7200)));
    let keys: Vec<String> = (0..1000).map(|i| format!("key{i:04}")).collect();
    let started = Instant::now();
    for i in 0..DECISIONS {
        let subject = Subject {
            owner_id: "own_bench",
            key_id: &keys[i % keys.len()],
        };
        let now = started.elapsed().as_millis() as i64;
        std::hint::black_box(limiter.check(
            subject,
            &Checks::windows(windows),
            HeldMeters::default(),
            1,
            now,
            1,
            DecidedBy::Local,
        ));
    }
    let one_thread = DECISIONS as f64 / started.elapsed().as_secs_f64();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (limiter, keys) = (limiter.clone(), &keys);
            scope.spawn(move || {
                for i in 0..DECISIONS / threads {
                    let subject = Subject {
                        owner_id: "own_bench",
                        key_id: &keys[(i * 7 + t) % keys.len()],
                    };
                    let now = started.elapsed().as_millis() as i64;
                    std::hint::black_box(limiter.check(
                        subject,
                        &Checks::windows(windows),
                        HeldMeters::default(),
                        1,
                        now,
                        1,
                        DecidedBy::Local,
                    ));
                }
            });
        }
    });
    let all_threads = DECISIONS as f64 / started.elapsed().as_secs_f64();
    println!(
        "ratelimit: local limiter, 2 windows: {one_thread:.0} decisions/s on one thread, {all_threads:.0} on {threads} threads"
    );

    // Memory: one per-key window for many keys, holding one group each, then holding a full
    // log (about a hundred groups: the most a window keeps, whatever its limit).
    // The full logs first: memory freed by one measurement would hide the next one's.
    for (subjects, charges, label) in [
        (FULL_SUBJECTS, FULL_LOG_GROUPS, "a full log"),
        (SUBJECTS, 1, "one group"),
    ] {
        let limiter = LocalLimiter::new(10_000_000, Duration::from_secs(7200));
        let before = memory::resident();
        let ids: Vec<String> = (0..subjects).map(|i| format!("k{i:011}")).collect();
        let ids_bytes = memory::resident() - before;
        for id in &ids {
            for _ in 0..charges {
                limiter.check(
                    Subject {
                        owner_id: "own_0123456789abcdef",
                        key_id: id,
                    },
                    &Checks::windows(&full_log_window()),
                    HeldMeters::default(),
                    FULL_LOG_COST,
                    1_000,
                    1,
                    DecidedBy::Local,
                );
            }
        }
        let per_subject = (memory::resident() - before - ids_bytes) as f64 / subjects as f64;
        println!(
            "ratelimit: local state per subject and window holding {label}: {per_subject:.0} bytes resident ({subjects} subjects)"
        );
    }
}

/// A window whose groups hold [`FULL_LOG_COST`] units, so every charge closes one.
fn full_log_window() -> [RateWindow; 1] {
    [RateWindow {
        limit: 1_000_000,
        period: Duration::from_secs(3600),
        per: RateScope::Key,
    }]
}

/// The group size of [`full_log_window`] (`limit / 100 + 1`).
const FULL_LOG_COST: u64 = 10_001;

/// Charges that fill [`full_log_window`]: 99 groups (the 100th would pass the limit).
const FULL_LOG_GROUPS: usize = 99;

/// Subjects whose full logs are measured.
const FULL_SUBJECTS: usize = 20_000;

async fn redis(windows: &[RateWindow], url: String) {
    let config = RedisConfig {
        url,
        timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    };
    let limiter = Arc::new(RedisLimiter::new(
        config.client().unwrap(),
        &config,
        1,
        LocalLimiter::new(1000, Duration::from_secs(60)),
    ));
    let subject = Subject {
        owner_id: "own_bench",
        key_id: "key",
    };
    limiter
        .check(subject, &Checks::windows(windows), 1, &SystemClock)
        .await;
    let sequential = 5_000;
    let started = Instant::now();
    for _ in 0..sequential {
        limiter
            .check(subject, &Checks::windows(windows), 1, &SystemClock)
            .await;
    }
    let one = sequential as f64 / started.elapsed().as_secs_f64();
    let concurrency = 32;
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (limiter, windows) = (limiter.clone(), windows.to_vec());
            tokio::spawn(async move {
                let key = format!("key{t}");
                for _ in 0..REDIS_DECISIONS / concurrency {
                    limiter
                        .check(
                            Subject {
                                owner_id: "own_bench",
                                key_id: &key,
                            },
                            &Checks::windows(&windows),
                            1,
                            &SystemClock,
                        )
                        .await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let many = REDIS_DECISIONS as f64 / started.elapsed().as_secs_f64();
    let stats = limiter.stats();
    assert_eq!(
        stats.fallbacks.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "Redis must answer every decision"
    );
    println!(
        "ratelimit: Redis limiter, 2 windows, one script call each: {one:.0} decisions/s one at a time, {many:.0} with {concurrency} in flight"
    );

    // Memory in Redis: a full log, as Redis counts it.
    let window = full_log_window();
    let full = Subject {
        owner_id: "own_bench",
        key_id: "full",
    };
    for _ in 0..FULL_LOG_GROUPS {
        limiter
            .check(full, &Checks::windows(&window), FULL_LOG_COST, &SystemClock)
            .await;
    }
    let mut connection = config.client().unwrap().get().await.unwrap();
    let bytes: u64 = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(keygate::ratelimit::window_key(full, &window[0]))
        .query_async(&mut connection)
        .await
        .unwrap();
    println!("ratelimit: Redis memory of one window holding a full log: {bytes} bytes");
}

fn main() {
    let windows = wide_windows();
    local(&windows);
    let server = RedisServer::start();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(redis(&windows, server.url()));
}
