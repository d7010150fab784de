//! The cold path in figures, in process, through the real verified-key cache, embedded
//! store and argon2 workers (default cost: 19 MiB, 2 passes):
//!
//! 1. argon2 jobs run per 1,000 distinct wrong secrets for a known key id;
//! 2. cold-key latency (p50 / p99), one never-seen key after another, alone and during a
//!    flood of distinct wrong secrets for a known id from 32 concurrent tasks;
//! 3. warm-key latency (p50 / p99) from 4 tasks, alone and during a storm of 1,000
//!    never-seen valid keys verified from 32 tasks: what a cold storm costs the keys
//!    already warm;
//! 4. resident memory per warm key: the growth of `/proc/self/statm` while the cache fills
//!    with verified keys (records already read once, so the store's own cache is warm),
//!    and the warm keys one GiB holds.
//!
//! `cargo bench --bench cold_path` (release build). Bounded: a fixed number of keys per
//! figure, no loop without an end.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "common/memory.rs"]
mod memory;
use memory::resident;

#[path = "common/records.rs"]
mod records;
use records::record;

use keygate::authz::keys::{CacheConfig, KeyCache};
use keygate::key::format::{Profiles, default_profile};
use keygate::key::hash::{Argon2Config, Pepper, SecretHasher};
use keygate::model::{Owner, OwnerState};
use keygate::store::Store;
use keygate::store::embedded::EmbeddedStore;

/// Never-seen keys timed per latency figure.
const COLD_KEYS: usize = 100;
/// Warm keys put in the cache for the memory figure.
const WARM_KEYS: usize = 50_000;
/// Tasks sending wrong secrets during the flood, or cold keys during the storm.
const FLOODERS: usize = 32;
/// Never-seen keys in the cold storm.
const STORM_KEYS: usize = 1_000;
/// Tasks sending warm-key verifications, one a millisecond each, and the most each sends.
const WARM_TASKS: usize = 4;
const WARM_TICKS: usize = 60_000;

struct Bench {
    cache: Arc<KeyCache>,
    store: Arc<dyn Store>,
    pepper: Pepper,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn new(argon2: &Argon2Config) -> Bench {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("keygate.redb")).unwrap());
        store
            .create_owner(&Owner {
                id: "o1".into(),
                external_id: "e1".into(),
                display_name: "bench".into(),
                state: OwnerState::Active,
                plan: "default".into(),
                metadata: BTreeMap::new(),
                created_at: 0,
                updated_at: 0,
            })
            .await
            .unwrap();
        let pepper = Pepper::new(vec![3; 32]).unwrap();
        let profiles = Arc::new(Profiles::new(vec![default_profile()], "kg_live").unwrap());
        let cache = KeyCache::new(
            &CacheConfig {
                capacity: WARM_KEYS as u64 * 2,
                ..CacheConfig::default()
            },
            store.clone(),
            SecretHasher::new(argon2).unwrap(),
            pepper.clone(),
            profiles,
            None,
        );
        Bench {
            cache: Arc::new(cache),
            store,
            pepper,
            _dir: dir,
        }
    }

    /// Stores `n` keys whose secrets are hashed with a cheap `hasher` (the cost is in the
    /// PHC string, so verification pays exactly that), and returns their secrets and ids.
    async fn keys(&self, n: usize, hasher: &SecretHasher) -> Vec<(String, String)> {
        let mut keys = Vec::with_capacity(n);
        for _ in 0..n {
            let id = default_profile().new_key_id();
            let secret = default_profile().issue(&id).text().to_owned();
            let record = record(
                id.clone(),
                "o1",
                self.pepper.secret_check(&secret),
                hasher.hash(&secret).await.unwrap(),
                1_767_225_600,
            );
            self.store.insert_key(&record, None).await.unwrap();
            keys.push((secret, id));
        }
        keys
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Times verifying each of `keys` once, one after another.
async fn cold_latencies(cache: &KeyCache, keys: &[(String, String)]) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(keys.len());
    for (secret, _) in keys {
        let started = Instant::now();
        let lookup = cache.verify(secret, Instant::now(), None).await.unwrap();
        times.push(started.elapsed());
        assert!(lookup.key.is_some());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

/// Times verifications of the warm `secret` from each of `WARM_TASKS` tasks, each sending
/// one a millisecond (as steady traffic would), for `WARM_TICKS` milliseconds or until
/// `done` turns true, whichever comes first.
async fn warm_latencies(
    cache: &Arc<KeyCache>,
    secret: &str,
    done: &Arc<AtomicBool>,
) -> (Duration, Duration, usize) {
    let tasks: Vec<_> = (0..WARM_TASKS)
        .map(|_| {
            let (cache, secret, done) = (cache.clone(), secret.to_owned(), done.clone());
            tokio::spawn(async move {
                let mut ticks = tokio::time::interval(Duration::from_millis(1));
                let mut times = Vec::with_capacity(WARM_TICKS);
                while times.len() < WARM_TICKS && !done.load(Ordering::Relaxed) {
                    ticks.tick().await;
                    let started = Instant::now();
                    let lookup = cache.verify(&secret, Instant::now(), None).await.unwrap();
                    times.push(started.elapsed());
                    assert!(lookup.key.is_some());
                }
                times
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        times.extend(task.await.unwrap());
    }
    times.sort();
    (
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.len(),
    )
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let real = Argon2Config {
            wait: Duration::from_secs(5),
            ..Argon2Config::default()
        };
        let bench = Bench::new(&real).await;
        let hasher = SecretHasher::new(&real).unwrap();
        let keys = bench.keys(2 * COLD_KEYS + 1, &hasher).await;
        let (known, calm, stormy) = (&keys[0], &keys[1..=COLD_KEYS], &keys[COLD_KEYS + 1..]);
        let argon2 = || bench.cache.hasher().verifications();

        // 1. Wrong secrets for a known id.
        let before = argon2();
        for _ in 0..1000 {
            let wrong = default_profile().issue(&known.1);
            assert!(bench.cache.verify(wrong.text(), Instant::now(), None).await.unwrap().key.is_none());
        }
        println!(
            "argon2 jobs per 1,000 distinct wrong secrets for a known id: {}",
            argon2() - before
        );

        // 2. Cold keys alone, then during a flood.
        let (p50, p99) = cold_latencies(&bench.cache, calm).await;
        println!("cold key, no flood: p50 {p50:.1?}, p99 {p99:.1?} ({COLD_KEYS} keys)");
        let stop = Arc::new(AtomicBool::new(false));
        let flooded = Arc::new(AtomicU64::new(0));
        let before = argon2();
        let flooders: Vec<_> = (0..FLOODERS)
            .map(|_| {
                let (cache, stop, flooded) = (bench.cache.clone(), stop.clone(), flooded.clone());
                let id = known.1.clone();
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let wrong = default_profile().issue(&id);
                        let _ = cache.verify(wrong.text(), Instant::now(), None).await;
                        flooded.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let (p50, p99) = cold_latencies(&bench.cache, stormy).await;
        stop.store(true, Ordering::Relaxed);
        for flooder in flooders {
            flooder.await.unwrap();
        }
        println!(
            "cold key, during a flood of {} wrong secrets: p50 {p50:.1?}, p99 {p99:.1?}; argon2 jobs: {} for {COLD_KEYS} cold keys",
            flooded.load(Ordering::Relaxed),
            argon2() - before
        );

        // 3. Warm keys alone, then during a storm of never-seen valid keys.
        let warm = &keys[1].0;
        let storm_keys = Arc::new(bench.keys(STORM_KEYS, &hasher).await);
        let calm_done = Arc::new(AtomicBool::new(false));
        let timer = {
            let calm_done = calm_done.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(5)).await;
                calm_done.store(true, Ordering::Relaxed);
            })
        };
        let (p50, p99, n) = warm_latencies(&bench.cache, warm, &calm_done).await;
        timer.await.unwrap();
        println!("warm key, no storm: p50 {p50:.1?}, p99 {p99:.1?} ({n} checks over 5 s)");
        let storm_done = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let stormers: Vec<_> = (0..FLOODERS)
            .map(|_| {
                let (cache, keys, next) = (bench.cache.clone(), storm_keys.clone(), next.clone());
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                        let Some((secret, _)) = keys.get(i) else { break };
                        let _ = cache.verify(secret, Instant::now(), None).await;
                    }
                })
            })
            .collect();
        let storm = {
            let storm_done = storm_done.clone();
            tokio::spawn(async move {
                for stormer in stormers {
                    stormer.await.unwrap();
                }
                storm_done.store(true, Ordering::Relaxed);
            })
        };
        let (p50, p99, n) = warm_latencies(&bench.cache, warm, &storm_done).await;
        storm.await.unwrap();
        println!(
            "warm key, during a storm of {STORM_KEYS} never-seen keys ({:.1?}): p50 {p50:.1?}, p99 {p99:.1?} ({n} checks)",
            started.elapsed()
        );

        // 4. Memory per warm key, with cheap hashes so that filling is quick.
        let cheap = Argon2Config {
            memory_kib: 64,
            iterations: 1,
            ..real
        };
        let bench = Bench::new(&cheap).await;
        let keys = bench.keys(WARM_KEYS, &SecretHasher::new(&cheap).unwrap()).await;
        for (_, id) in &keys {
            bench.store.get_key(id).await.unwrap();
        }
        let before = resident();
        for (secret, _) in &keys {
            assert!(bench.cache.verify(secret, Instant::now(), None).await.unwrap().key.is_some());
        }
        let per_key = (resident() - before) / WARM_KEYS as u64;
        println!(
            "resident memory per warm key: {per_key} bytes; warm keys per GiB: {}",
            (1u64 << 30) / per_key.max(1)
        );
    });
}
