//! keygate with a million keys, in process, through the real composition root
//! ([`keygate::app::App`]) over the embedded store, in two figures:
//!
//! 1. **Resident memory per warm key**: `VmRSS` grows by how much while 1,000,000 keys are
//!    verified once each (so the verified-key cache holds all of them), measured from the
//!    store already populated and every record already read once (so redb's own cache is
//!    in its steady state, not growing with the warm keys). Then the same keys through a
//!    whole Check, which also caches their owners (five keys per owner) and notes each
//!    key's use until the next usage flush. Also what the store itself costs per key: its
//!    file, and its resident cache after reading every record.
//! 2. **CreateKey, GetKey and a cold Check at 1,000 and at 1,000,000 keys**, through the
//!    management plane and the authorizer with the default argon2 cost (19 MiB, 2 passes);
//!    a cold Check is the first verification of a key in the process. A second cold Check
//!    figure verifies cheap hashes, so what is left is the store's and the cache's part.
//!    GetKey is timed twice: reading records redb's cache does not hold yet (as after a
//!    restart), then the same records again (as a busy server's cache holds them).
//!    Each figure is the median of its samples over alternating rounds, 1,000 keys then
//!    1,000,000, so that a busy moment on a shared machine falls on both.
//!
//! `cargo bench --bench key_scale` (release build). Each phase (filling a store, one round
//! of operations, the memory figure) runs in a child process, this program again: a phase
//! never inherits another's freed memory, which would hide growth, and each round opens its
//! store afresh. The stores are filled in batches of keys hashed with a cheap argon2 cost
//! (the PHC string carries it, so verifying them costs exactly that), a durable
//! transaction per batch, as a bulk load would. Keys whose cost is measured (CreateKey,
//! cold Check) use the default cost.
//!
//! Bounded: fixed counts, every child has a time limit (the whole run takes about three
//! minutes on two cores), and memory peaks at about 2 GiB, printed (the million warm keys,
//! their secrets, and redb's cache, 1 GiB at most). The stores live in a temporary
//! directory (about 1.2 GB), removed at the end.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/records.rs"]
mod records;
use records::record;

#[path = "common/memory.rs"]
mod memory;
use memory::{peak, resident};

use keygate::app::{App, Backends};
use keygate::authz::decision::DecisionCode;
use keygate::authz::engine::AuthzRequest;
use keygate::authz::extract::Credential;
use keygate::clock::{Clock, SystemClock};
use keygate::config::Config;
use keygate::key::format::{Alphabet, Profiles, default_profile};
use keygate::key::hash::{Argon2Config, Pepper, SecretHasher};
use keygate::manage::{Caller, NewKey};
use keygate::model::values::{Metadata, Name, Scopes};
use keygate::model::{Owner, OwnerState};
use keygate::plan::PlanConfig;
use keygate::secrets::Secrets;
use keygate::store::Store;
use keygate::store::embedded::EmbeddedStore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Keys in the small store and in the large one.
const SMALL: usize = 1_000;
const LARGE: usize = 1_000_000;
/// Keys per owner, so that owners are many, as accounts are.
const KEYS_PER_OWNER: usize = 5;
/// The plan every owner is on: capped, so CreateKey counts the owner's keys as it would.
const PLAN_CAP: u32 = 25;
/// Keys stored per transaction while filling a store.
const BATCH: usize = 10_000;
/// Keys with the default argon2 cost in each store, for the cold Check figure.
const COSTLY_KEYS: usize = 30;
/// Alternating rounds of operations, and samples per round.
const ROUNDS: usize = 3;
const CREATES: usize = 30;
const GETS: usize = 2_000;
const CHEAP_COLD_CHECKS: usize = 300;
/// Concurrent verifications while warming keys.
const WARMERS: usize = 16;
/// `cache.capacity` for the memory figure: room for every key (a power of two, as moka
/// sizes its frequency sketch to one).
const CAPACITY: u64 = 1 << 20;
/// The pepper every phase shares: the records' secret checks are made under it.
const PEPPER: [u8; 32] = [0x5c; 32];

/// The cost the stores are filled with: the least argon2 allows.
fn cheap() -> Argon2Config {
    Argon2Config {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
        max_concurrent: 2,
        ..Argon2Config::default()
    }
}

/// A small, seeded generator for picking samples (splitmix64): the same picks every run.
struct Picker(u64);

impl Picker {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }

    /// `count` distinct indexes below `n` (all of them if `count >= n`), in random order.
    fn distinct(&mut self, count: usize, n: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            all.swap(i, self.below(i + 1));
        }
        all.truncate(count);
        all
    }
}

/// The files of one store: the database, its owners' ids, and the secrets of its keys
/// (cheaply hashed ones, and those with the default cost), one a line.
struct Files {
    dir: PathBuf,
}

impl Files {
    fn db(&self) -> PathBuf {
        self.dir.join("keygate.redb")
    }
    fn owners(&self) -> PathBuf {
        self.dir.join("owners.txt")
    }
    fn cheap(&self) -> PathBuf {
        self.dir.join("cheap.txt")
    }
    fn costly(&self) -> PathBuf {
        self.dir.join("costly.txt")
    }
}

fn lines(path: &Path) -> Vec<String> {
    let file = std::fs::File::open(path).unwrap();
    std::io::BufReader::new(file)
        .lines()
        .map(Result::unwrap)
        .collect()
}

fn append(path: &Path, lines: impl IntoIterator<Item = String>) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    let mut out = std::io::BufWriter::new(file);
    for line in lines {
        writeln!(out, "{line}").unwrap();
    }
    out.flush().unwrap();
}

/// Hashes `secrets` with `hasher`, many at a time.
async fn hash_all(hasher: &SecretHasher, secrets: &[String]) -> Vec<String> {
    let chunk = secrets.len().div_ceil(32).max(1);
    let mut tasks = tokio::task::JoinSet::new();
    for (i, part) in secrets.chunks(chunk).enumerate() {
        let (hasher, part) = (hasher.clone(), part.to_vec());
        tasks.spawn(async move {
            let mut hashes = Vec::with_capacity(part.len());
            for secret in &part {
                hashes.push(hasher.hash(secret).await.unwrap());
            }
            (i, hashes)
        });
    }
    let mut parts = tasks.join_all().await;
    parts.sort_by_key(|(i, _)| *i);
    parts.into_iter().flat_map(|(_, hashes)| hashes).collect()
}

/// Fills a new store with `keys` cheaply hashed keys, `KEYS_PER_OWNER` per owner, and
/// `COSTLY_KEYS` keys with the default cost spread over those owners.
async fn fill(files: &Files, keys: usize) {
    let store = EmbeddedStore::open(&files.db()).unwrap();
    let hasher = SecretHasher::new(&cheap()).unwrap();
    let now = SystemClock.now();
    let profile = default_profile();
    let pepper = Pepper::new(PEPPER.to_vec()).unwrap();
    let mut owner_ids = Vec::new();
    for start in (0..keys).step_by(BATCH) {
        let end = (start + BATCH).min(keys);
        let mut owners = Vec::new();
        for i in (start..end).filter(|i| i % KEYS_PER_OWNER == 0) {
            owners.push(Owner {
                id: format!("own_{}", &*Alphabet::Base62.random(16)),
                external_id: format!("account-{i}"),
                display_name: format!("Account {i}"),
                state: OwnerState::Active,
                plan: "team".into(),
                metadata: BTreeMap::new(),
                created_at: now,
                updated_at: now,
            });
        }
        owner_ids.extend(owners.iter().map(|o| o.id.clone()));
        let ids: Vec<String> = (start..end).map(|_| profile.new_key_id()).collect();
        let secrets: Vec<String> = ids
            .iter()
            .map(|id| profile.issue(id).text().to_owned())
            .collect();
        let hashes = hash_all(&hasher, &secrets).await;
        let records = (start..end)
            .zip(ids)
            .zip(secrets.iter().zip(hashes))
            .map(|((i, id), (secret, hash))| {
                let check = pepper.secret_check(secret);
                record(id, &owner_ids[i / KEYS_PER_OWNER], check, hash, now)
            })
            .collect();
        store.insert_all(owners, records).await.unwrap();
        append(&files.cheap(), secrets);
    }
    append(&files.owners(), owner_ids.iter().cloned());
    let costly = SecretHasher::new(&Argon2Config::default()).unwrap();
    let ids: Vec<String> = (0..COSTLY_KEYS).map(|_| profile.new_key_id()).collect();
    let secrets: Vec<String> = ids
        .iter()
        .map(|id| profile.issue(id).text().to_owned())
        .collect();
    let hashes = hash_all(&costly, &secrets).await;
    let records = ids
        .into_iter()
        .zip(secrets.iter().zip(hashes))
        .enumerate()
        .map(|(i, (id, (secret, hash)))| {
            let owner = &owner_ids[i * owner_ids.len() / COSTLY_KEYS];
            record(id, owner, pepper.secret_check(secret), hash, now)
        })
        .collect();
    store.insert_all(vec![], records).await.unwrap();
    append(&files.costly(), secrets);
}

/// keygate over `store` as `serve` builds it, with `argon2` and `capacity`, and, as `serve`
/// does at start, its configured plans in the store.
async fn app(files: &Files, store: &EmbeddedStore, argon2: Argon2Config, capacity: u64) -> App {
    let mut config = Config {
        data_dir: files.dir.clone(),
        argon2,
        plans: vec![PlanConfig {
            max_active_keys: PLAN_CAP,
            ..PlanConfig::unlimited("team")
        }],
        default_plan: "team".into(),
        ..Config::default()
    };
    config.cache.capacity = capacity;
    let secrets = Secrets {
        pepper: Pepper::new(PEPPER.to_vec()).unwrap(),
        admin_token: None,
    };
    let backends = Backends::with_store(&config, Arc::new(store.clone())).unwrap();
    let app = App::new(&config, secrets, backends, Arc::new(SystemClock)).unwrap();
    app.store_configured_plans().await.unwrap();
    app
}

/// A Check of `secret` as Envoy would send it, with Envoy's deadline.
fn check(secret: &str) -> AuthzRequest {
    AuthzRequest {
        request_id: "bench".into(),
        credential: Some(Credential {
            text: Zeroizing::new(secret.to_owned()),
        }),
        method: "GET".into(),
        path: "/v1/payments".into(),
        client_ip: Some([10, 0, 0, 1].into()),
        deadline: Some(Instant::now() + Duration::from_secs(5)),
        ..AuthzRequest::default()
    }
}

/// The key ids `secrets` embed.
fn key_ids(secrets: &[String]) -> Vec<String> {
    let profiles = Profiles::new(vec![default_profile()], "kg_live").unwrap();
    secrets
        .iter()
        .map(|s| profiles.parse(s).unwrap().id.to_owned())
        .collect()
}

/// One round's samples, in microseconds.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Round {
    create: Vec<f64>,
    get: Vec<f64>,
    get_again: Vec<f64>,
    cold_check: Vec<f64>,
    cold_check_cheap: Vec<f64>,
}

fn micros(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e6
}

/// One round of operations on the store in `files`, opened afresh; `seed` picks samples.
async fn operations(files: &Files, seed: u64) -> Round {
    let store = EmbeddedStore::open(&files.db()).unwrap();
    let real = app(files, &store, Argon2Config::default(), 100_000).await;
    let cheap = app(files, &store, cheap(), 100_000).await;
    let owners = lines(&files.owners());
    let keys = lines(&files.cheap());
    let ids = key_ids(&keys);
    let mut pick = Picker(seed);
    let mut round = Round::default();

    // CreateKey for owners picked at random, as an admin would call it.
    let team = ("team".to_owned(), "payments".to_owned());
    for i in pick.distinct(CREATES, owners.len()) {
        let new = NewKey {
            owner_id: Some(owners[i].clone()),
            name: Name::parse("name", "created").unwrap(),
            scopes: Scopes::parse("scopes", &["read".into(), "write".into()]).unwrap(),
            allowed_cidrs: Default::default(),
            metadata: Metadata::parse("metadata", [(&team.0, &team.1)]).unwrap(),
            expiry: None,
            plan: None,
            profile: None,
            pair: false,
            require_activation: false,
            credits: None,
        };
        let started = Instant::now();
        real.management
            .keys
            .create(&Caller::Admin, new)
            .await
            .unwrap();
        round.create.push(micros(started));
    }

    // GetKey of keys picked at random (after a few untimed ones), then of the same keys
    // again: the first read in this process of a record is the one redb's cache has not
    // seen, as after a restart; the second is one it holds, as a busy server's would.
    let picked: Vec<usize> = (0..GETS + 100).map(|_| pick.below(keys.len())).collect();
    for again in [false, true] {
        for (n, &i) in picked.iter().enumerate() {
            let started = Instant::now();
            let key = real
                .management
                .keys
                .get(&Caller::Admin, &ids[i])
                .await
                .unwrap();
            let took = micros(started);
            assert_eq!(key.id, ids[i]);
            match (again, n >= 100) {
                (false, true) => round.get.push(took),
                (true, true) => round.get_again.push(took),
                (_, false) => {}
            }
        }
    }

    // The first Check of keys with the default cost, then of cheaply hashed ones.
    for secret in lines(&files.costly()) {
        let started = Instant::now();
        let decision = real.authorizer.decide(&check(&secret)).await.unwrap();
        round.cold_check.push(micros(started));
        assert_eq!(decision.code, DecisionCode::Ok);
    }
    for i in pick.distinct(CHEAP_COLD_CHECKS, keys.len()) {
        let started = Instant::now();
        let decision = cheap.authorizer.decide(&check(&keys[i])).await.unwrap();
        round.cold_check_cheap.push(micros(started));
        assert_eq!(decision.code, DecisionCode::Ok);
    }
    let misses = |app: &App| {
        let stats = app.authorizer.keys().stats();
        stats.misses.load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(
        misses(&real),
        COSTLY_KEYS as u64,
        "every timed Check was cold"
    );
    assert_eq!(misses(&cheap), round.cold_check_cheap.len() as u64);
    round
}

/// The memory figures, in bytes.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Memory {
    keys: usize,
    file: u64,
    store_resident: u64,
    warm: u64,
    warm_with_owners: u64,
    peak: u64,
}

/// Runs `work` on every secret in `secrets`, `WARMERS` at a time.
async fn for_each<F, Fut>(secrets: &Arc<Vec<String>>, work: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..WARMERS {
        let (secrets, next, work) = (secrets.clone(), next.clone(), work.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(secret) = secrets.get(i) else { break };
                work(secret.clone()).await;
            }
        });
    }
    tasks.join_all().await;
}

/// Resident memory per warm key, and what the store costs, on the store in `files`.
async fn memory(files: &Files) -> Memory {
    let secrets = Arc::new(lines(&files.cheap()));
    let ids = Arc::new(key_ids(&secrets));
    let file = std::fs::metadata(files.db()).unwrap().len();
    let before_store = resident();
    let store = EmbeddedStore::open(&files.db()).unwrap();
    let app = Arc::new(app(files, &store, cheap(), CAPACITY).await);
    // Every record read once: redb's cache is as full as it gets before any key is warm.
    let reader: Arc<dyn Store> = Arc::new(store.clone());
    for_each(&ids, move |id| {
        let reader = reader.clone();
        async move {
            assert!(reader.get_key(&id).await.unwrap().is_some());
        }
    })
    .await;
    let cold = resident();

    let verify = |app: Arc<App>| {
        move |secret: String| {
            let app = app.clone();
            async move {
                let lookup = app
                    .authorizer
                    .keys()
                    .verify(&secret, Instant::now(), None)
                    .await
                    .unwrap();
                assert!(lookup.key.is_some());
            }
        }
    };
    for_each(&secrets, verify(app.clone())).await;
    // A second pass finds every key warm: none was pushed out.
    let stats = || {
        let stats = app.authorizer.keys().stats();
        (
            stats.misses.load(std::sync::atomic::Ordering::Relaxed),
            stats.l1_hits.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let (misses, _) = stats();
    for_each(&secrets, verify(app.clone())).await;
    assert_eq!(stats().0, misses, "a warm key was verified again");
    assert_eq!(misses, secrets.len() as u64);
    let warm = resident();

    let app_for_checks = app.clone();
    for_each(&secrets, move |secret: String| {
        let app = app_for_checks.clone();
        async move {
            let decision = app.authorizer.decide(&check(&secret)).await.unwrap();
            assert_eq!(decision.code, DecisionCode::Ok);
        }
    })
    .await;
    assert_eq!(stats().0, misses, "a warm key was verified again");
    let checked = resident();

    let keys = secrets.len();
    Memory {
        keys,
        file: file / keys as u64,
        store_resident: cold.saturating_sub(before_store) / keys as u64,
        warm: warm.saturating_sub(cold) / keys as u64,
        warm_with_owners: checked.saturating_sub(cold) / keys as u64,
        peak: peak(),
    }
}

/// Runs this program as the child `phase` with `args`, for at most `limit`; returns what
/// it printed on its last line.
fn child(phase: &str, args: &[&str], limit: Duration) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .arg("--phase")
        .arg(phase)
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read while it runs, so that a full pipe never stops it.
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
        out
    });
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "phase {phase} failed: {status}");
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("phase {phase} took longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = reader.join().unwrap();
    out.lines().last().unwrap_or_default().to_owned()
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--phase") {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let files = Files {
            dir: PathBuf::from(&args[at + 2]),
        };
        let out = runtime.block_on(async {
            match args[at + 1].as_str() {
                "fill" => {
                    fill(&files, args[at + 3].parse().unwrap()).await;
                    String::new()
                }
                "operations" => {
                    let round = operations(&files, args[at + 3].parse().unwrap()).await;
                    serde_json::to_string(&round).unwrap()
                }
                "memory" => serde_json::to_string(&memory(&files).await).unwrap(),
                other => panic!("unknown phase {other}"),
            }
        });
        println!("{out}");
        return;
    }

    let root = tempfile::tempdir().unwrap();
    let stores: Vec<(usize, PathBuf)> = [SMALL, LARGE]
        .into_iter()
        .map(|keys| (keys, root.path().join(keys.to_string())))
        .collect();
    for (keys, dir) in &stores {
        std::fs::create_dir(dir).unwrap();
        let started = Instant::now();
        child(
            "fill",
            &[dir.to_str().unwrap(), &keys.to_string()],
            Duration::from_secs(600),
        );
        eprintln!(
            "filled a store with {keys} keys in {:.1?}",
            started.elapsed()
        );
    }

    let mut samples: Vec<Round> = stores.iter().map(|_| Round::default()).collect();
    for round in 0..ROUNDS {
        for ((keys, dir), all) in stores.iter().zip(&mut samples) {
            let out = child(
                "operations",
                &[dir.to_str().unwrap(), &(round as u64 + 1).to_string()],
                Duration::from_secs(180),
            );
            let one: Round = serde_json::from_str(&out).unwrap();
            eprintln!("round {} at {keys} keys done", round + 1);
            all.create.extend(one.create);
            all.get.extend(one.get);
            all.get_again.extend(one.get_again);
            all.cold_check.extend(one.cold_check);
            all.cold_check_cheap.extend(one.cold_check_cheap);
        }
    }

    let started = Instant::now();
    let out = child(
        "memory",
        &[stores[1].1.to_str().unwrap()],
        Duration::from_secs(600),
    );
    let memory: Memory = serde_json::from_str(&out).unwrap();
    eprintln!(
        "memory figures in {:.1?}, peak resident memory {} MiB",
        started.elapsed(),
        memory.peak >> 20
    );

    println!(
        "\nresident memory with {} keys (cache.capacity = {CAPACITY}):",
        memory.keys
    );
    println!("| what | bytes per key |");
    println!("| --- | --- |");
    println!(
        "| verified-key cache, per warm key (verified once) | {} |",
        memory.warm
    );
    println!(
        "| after a Check of each as well: its owner cached ({KEYS_PER_OWNER} keys per owner), its use noted until the next usage flush | {} |",
        memory.warm_with_owners
    );
    println!(
        "| store: resident once open and every record read (redb's cache, 1 GiB at most) | {} |",
        memory.store_resident
    );
    println!("| store: file on disk | {} |", memory.file);
    println!(
        "warm keys per GiB in the verified-key cache: {}",
        (1u64 << 30) / memory.warm.max(1)
    );

    println!("\nmedian latency, {ROUNDS} alternating rounds (1 k keys, then 1 M):");
    println!("| operation | 1 k keys | 1 M keys | 1 M / 1 k |");
    println!("| --- | --- | --- | --- |");
    let [small, large] = &mut samples[..] else {
        unreachable!()
    };
    let rows: [(&str, &mut Vec<f64>, &mut Vec<f64>); 5] = [
        ("CreateKey", &mut small.create, &mut large.create),
        (
            "GetKey, record not yet read by this process",
            &mut small.get,
            &mut large.get,
        ),
        (
            "GetKey, the same records again",
            &mut small.get_again,
            &mut large.get_again,
        ),
        (
            "cold Check (argon2 19 MiB)",
            &mut small.cold_check,
            &mut large.cold_check,
        ),
        (
            "cold Check (cheap hash: store and cache)",
            &mut small.cold_check_cheap,
            &mut large.cold_check_cheap,
        ),
    ];
    for (name, at_small, at_large) in rows {
        let (a, b) = (median(at_small), median(at_large));
        println!("| {name} | {} | {} | {:.2}x |", show(a), show(b), b / a);
    }
}

/// Microseconds as text, in ms above a millisecond.
fn show(micros: f64) -> String {
    if micros >= 1000.0 {
        format!("{:.1} ms", micros / 1000.0)
    } else {
        format!("{micros:.0} µs")
    }
}
