//! RevokeKey latency (p50 / p99) with 1, 2 and 3 replicas in Redis mode, in process, over a
//! real redis-server on loopback. A revocation returns only once every other live replica
//! confirmed it dropped the key, so the figure grows with the replicas by one publish and
//! one confirmation round trip (the confirmations of several replicas arrive concurrently).
//!
//! Each revocation is of a fresh key, issued on the first replica and checked on every
//! replica first, so that each one holds it warm and really has something to drop.
//!
//! `cargo bench --bench revocation` (release build). Bounded: a fixed number of
//! revocations per figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::clock::SystemClock;
use keygate::config::Config;
use keygate::proto::{self, key_manager_client::KeyManagerClient};
use keygate::redis::RedisConfig;
use keygate::secrets::Secrets;
use keygate::server::RunningServer;
use keygate::store::Store;
use keygate::store::redis::RedisStore;
use tonic::transport::Channel;

#[path = "../tests/common/check.rs"]
#[allow(dead_code)]
mod check;
#[path = "../tests/common/redis.rs"]
mod redis_server;
use redis_server::RedisServer;

/// Revocations timed per figure.
const REVOCATIONS: usize = 300;
/// Revocations run first and not timed.
const WARMUP: usize = 20;
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789-abcdefghij";

/// A replica in Redis mode over `store`, with its files in `dir`.
async fn replica(redis_url: &str, store: Arc<dyn Store>, dir: &std::path::Path) -> RunningServer {
    let path = dir.join("keygate.toml");
    std::fs::write(
        &path,
        format!(
            r#"store = "redis"
[listen]
management = "127.0.0.1:0"
data_plane = "127.0.0.1:0"
metrics = "127.0.0.1:0"
[shutdown]
drain_grace = "0s"
[argon2]
memory_kib = 64
iterations = 1
parallelism = 1
[redis]
url = "{redis_url}"
"#
        ),
    )
    .unwrap();
    let config = Config::load(
        Some(&path),
        [],
        &[("data_dir".into(), dir.display().to_string())],
    )
    .unwrap();
    let env = [
        (
            "KEYGATE_PEPPER".to_string(),
            "bench pepper, 16+ bytes".to_string(),
        ),
        ("KEYGATE_ADMIN_TOKEN".to_string(), ADMIN_TOKEN.to_string()),
    ]
    .into_iter()
    .collect();
    let (secrets, _) = Secrets::load(&env, dir).unwrap();
    let backends = keygate::app::Backends::with_store(&config, store).unwrap();
    keygate::server::start(&config, secrets, backends, Arc::new(SystemClock))
        .await
        .unwrap()
}

fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

/// Waits (bounded) until `count` replicas are in the live set.
async fn wait_for_live(url: &str, count: usize) {
    let client = ::redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live: usize = ::redis::cmd("ZCARD")
            .arg(keygate::redis::keyspace::LIVE_REPLICAS)
            .query_async(&mut connection)
            .await
            .unwrap();
        if live == count {
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not register");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The `q` quantile of sorted `samples`.
fn quantile(samples: &[Duration], q: f64) -> Duration {
    samples[((samples.len() - 1) as f64 * q).round() as usize]
}

/// RevokeKey's latencies with `count` replicas on a fresh Redis.
async fn measure(count: usize) -> Vec<Duration> {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let config = RedisConfig {
        url: redis.url(),
        timeout: Duration::from_secs(2),
        ..RedisConfig::default()
    };
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&config).await.unwrap());
    let dirs: Vec<_> = (0..count).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut replicas = Vec::new();
    for dir in &dirs {
        replicas.push(replica(&redis.url(), store.clone(), dir.path()).await);
    }
    wait_for_live(&redis.url(), count).await;
    let mut manage = KeyManagerClient::connect(format!("http://{}", replicas[0].management_addr()))
        .await
        .unwrap();
    let mut data_planes: Vec<AuthorizationClient<Channel>> = Vec::new();
    for replica in &replicas {
        let channel = Channel::from_shared(format!("http://{}", replica.data_plane_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap();
        data_planes.push(AuthorizationClient::new(channel));
    }
    let owner = manage
        .create_owner(admin(proto::CreateOwnerRequest {
            external_id: "bench".into(),
            display_name: "bench".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut samples = Vec::with_capacity(REVOCATIONS);
    for round in 0..WARMUP + REVOCATIONS {
        let issued = manage
            .create_key(admin(proto::CreateKeyRequest {
                owner_id: owner.id.clone(),
                name: format!("k{round}"),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        for data_plane in &mut data_planes {
            let request = check::check_request(
                "203.0.113.9",
                "GET",
                "/v1",
                &[("x-api-key", &issued.secret)],
                &[],
            );
            let answer = data_plane.check(request).await.unwrap().into_inner();
            assert_eq!(check::decision_code(&answer), "OK");
        }
        let started = Instant::now();
        let answer = manage
            .revoke_key(admin(proto::RevokeKeyRequest {
                id: issued.key.unwrap().id,
            }))
            .await
            .unwrap();
        let elapsed = started.elapsed();
        assert_eq!(
            answer
                .metadata()
                .get(keygate::service::key_manager::UNACKNOWLEDGED_REPLICAS)
                .map(|v| v.to_str().unwrap()),
            Some("0"),
            "every replica confirmed"
        );
        if round >= WARMUP {
            samples.push(elapsed);
        }
    }
    for replica in replicas {
        let _ = replica.shutdown().await;
    }
    samples.sort();
    samples
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!("RevokeKey, Redis mode, {REVOCATIONS} revocations of warm keys per figure");
    for count in 1..=3 {
        let samples = runtime.block_on(measure(count));
        println!(
            "{count} replica(s): p50 {:?}, p99 {:?}, max {:?}",
            quantile(&samples, 0.5),
            quantile(&samples, 0.99),
            samples[samples.len() - 1]
        );
    }
}
