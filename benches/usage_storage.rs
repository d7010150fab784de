//! What the usage history costs to store per key per day: the embedded store's file growth
//! and Redis's memory, for a day with allowed requests and two denial codes (a busy key's
//! typical day). Bounded: a fixed number of keys and days.
//!
//! `cargo bench --bench usage_storage` (needs `redis-server`; `scripts/install-test-tools`
//! installs it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use keygate::calendar::Day;
use keygate::model::{DailyUsage, KeyRecord, Owner, OwnerState};
use keygate::redis::RedisConfig;
use keygate::store::embedded::EmbeddedStore;
use keygate::store::redis::RedisStore;
use keygate::store::{KeyDayUsage, Retention, Store};

#[path = "common/records.rs"]
mod records;
use records::record;

#[path = "../tests/common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

const KEYS: usize = 2_000;
const DAYS: i32 = 30;

/// Today in UTC: Redis expires each day as it leaves the kept history, so the days written
/// must be recent.
fn today() -> Day {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    Day((now.as_secs() / 86_400) as i32)
}

fn owner() -> Owner {
    Owner {
        id: "own_bench".into(),
        external_id: "bench".into(),
        display_name: "Bench".into(),
        state: OwnerState::Active,
        plan: String::new(),
        metadata: BTreeMap::new(),
        created_at: 0,
        updated_at: 0,
    }
}

fn key(n: usize) -> KeyRecord {
    record(
        format!("{n:012}"),
        "own_bench",
        String::new(),
        String::new(),
        0,
    )
}

/// A busy day: thousands allowed, two kinds of denial.
fn day_of(n: usize, day: i32) -> KeyDayUsage {
    KeyDayUsage {
        key_id: format!("{n:012}"),
        day: Day(today().0 - day),
        usage: DailyUsage {
            allowed: 12_345,
            denied: [
                ("RATE_LIMITED".to_owned(), 67),
                ("INSUFFICIENT_SCOPE".to_owned(), 8),
            ]
            .into_iter()
            .collect(),
        },
    }
}

async fn fill(store: &dyn Store) {
    store.create_owner(&owner()).await.unwrap();
    for n in 0..KEYS {
        store.insert_key(&key(n), None).await.unwrap();
    }
}

async fn record_history(store: &dyn Store) {
    let kept = Retention {
        today: today(),
        days: 90,
    };
    for day in 0..DAYS {
        let batch = (0..KEYS).map(|n| day_of(n, day)).collect();
        assert!(
            store
                .record_daily_usage(batch, kept)
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::main]
async fn main() {
    let entries = (KEYS * DAYS as usize) as f64;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.redb");
    let embedded = EmbeddedStore::open(&path).unwrap();
    fill(&embedded).await;
    let before = std::fs::metadata(&path).unwrap().len();
    record_history(&embedded).await;
    let after = std::fs::metadata(&path).unwrap().len();
    println!(
        "usage_storage: embedded: {:.0} bytes of file per key per day ({KEYS} keys x {DAYS} days)",
        (after - before) as f64 / entries
    );

    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let config = RedisConfig {
        url: server.url(),
        timeout: Duration::from_secs(5),
        ..RedisConfig::default()
    };
    let redis: Arc<dyn Store> = Arc::new(RedisStore::connect(&config).await.unwrap());
    fill(redis.as_ref()).await;
    let used = || -> u64 {
        let info: String = server.command(redis::cmd("INFO").arg("memory"));
        info.lines()
            .find_map(|line| line.strip_prefix("used_memory:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = used();
    record_history(redis.as_ref()).await;
    let after = used();
    println!(
        "usage_storage: Redis: {:.0} bytes of used_memory per key per day ({KEYS} keys x {DAYS} days)",
        (after - before) as f64 / entries
    );
}
