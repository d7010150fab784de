//! Several keygate replicas on one Redis: a key created on one works on all, and a change
//! made on one (a key, an owner, a plan) is in force on the others from their very next
//! request: the write returns only once every live replica confirmed, or reports the ones
//! that did not.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::check::{check, check_request, decision_code};
use common::envoy::EnvoyProcess;
use common::http::http_request;
use common::redis::RedisServer;
use common::upstream::{GrpcUpstream, HttpUpstream};
use common::{ADMIN_TOKEN, Options, TestServer, admin, create_owner, issue_key, start_with};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use keygate::invalidation::Invalidation;
use keygate::proto;
use keygate::redis::RedisConfig;
use keygate::redis::keyspace::LIVE_REPLICAS;
use keygate::service::key_manager::UNACKNOWLEDGED_REPLICAS;
use keygate::store::Store;
use keygate::store::redis::RedisStore;
use tokio_stream::StreamExt;

/// A Redis store on `redis` whose calls give up after `timeout`.
async fn redis_store(redis: &RedisServer, timeout: Duration) -> Arc<dyn Store> {
    let config = RedisConfig {
        url: redis.url(),
        timeout,
        ..RedisConfig::default()
    };
    Arc::new(RedisStore::connect(&config).await.unwrap())
}

async fn replica(redis: &RedisServer, store: Arc<dyn Store>) -> TestServer {
    // A plan without rate windows: keygate's clock stands still in tests.
    let tables = format!(
        "[redis]\nurl = \"{}\"\n[[plans]]\nname = \"unmetered\"\n",
        redis.url()
    );
    replica_with(&tables, store).await
}

/// A replica in Redis mode over `store`, with `tables` (the `[redis]` table and more)
/// appended to the test configuration.
async fn replica_with(tables: &str, store: Arc<dyn Store>) -> TestServer {
    start_with(Options {
        admin_token: Some(ADMIN_TOKEN),
        extra_config: tables,
        store: Some(store),
        // `store` is a top-level field: it must come before any table.
        prepend_config: "store = \"redis\"",
        ..Options::default()
    })
    .await
}

/// Waits (bounded) until `count` replicas listen on the invalidation channel of the Redis
/// (or cluster node) at `url`.
fn wait_for_subscribers(url: &str, count: i64) {
    let client = ::redis::Client::open(url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply: (String, i64) = client
            .get_connection()
            .and_then(|mut c| {
                ::redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(keygate::redis::keyspace::INVALIDATIONS)
                    .query(&mut c)
            })
            .unwrap_or_default();
        if reply.1 >= count {
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not subscribe");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits (bounded) until `count` replicas are in the live set of the Redis at `url`.
fn wait_for_live(url: &str, count: usize) {
    let client = ::redis::Client::open(url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let live: usize = client
            .get_connection()
            .and_then(|mut c| ::redis::cmd("ZCARD").arg(LIVE_REPLICAS).query(&mut c))
            .unwrap_or_default();
        if live >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not register as live"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A redis-server, started off the async runtime.
async fn started_redis() -> RedisServer {
    tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap()
}

/// Waits (bounded) until `count` replicas subscribed and are live on `redis`.
async fn wait_for_replicas(redis: RedisServer, count: usize) -> RedisServer {
    tokio::task::spawn_blocking(move || {
        wait_for_subscribers(&redis.url(), count as i64);
        wait_for_live(&redis.url(), count);
        redis
    })
    .await
    .unwrap()
}

/// How many live replicas did not confirm, as a write's answer reports it.
fn unacknowledged<T>(answer: &tonic::Response<T>) -> &str {
    answer
        .metadata()
        .get(UNACKNOWLEDGED_REPLICAS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("missing")
}

/// The value of the unlabelled counter `name` on `server`'s metrics listener.
async fn counter(server: &TestServer, name: &str) -> f64 {
    let response = http_request(server.server.metrics_addr(), "GET", "/metrics", &[]).await;
    assert_eq!(response.status, 200);
    response
        .body
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {}", response.body))
        .trim()
        .parse()
        .unwrap()
}

/// Waits (bounded) until the data plane's readiness entry reports `serving`.
async fn wait_for_readiness(server: &TestServer, serving: bool) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let mut health = HealthClient::new(server.data_plane().await);
    let wanted = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(HealthCheckRequest {
                service: keygate::server::READINESS_SERVICE.into(),
            })
            .await
            .map(|r| r.into_inner().status());
        if status.as_ref().is_ok_and(|s| *s == wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "readiness stayed {status:?}, wanted {wanted:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Check of `GET /v1` with `key`.
fn get(key: &str) -> CheckRequest {
    check_request("203.0.113.9", "GET", "/v1", &[("x-api-key", key)], &[])
}

/// The decision `server` makes on `key`.
async fn decide(server: &TestServer, key: &str) -> String {
    decision_code(&check(&server.data_plane().await, get(key)).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_one_replica_take_effect_on_the_others() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = redis_store(&redis, Duration::from_secs(2)).await;
    let a = replica(&redis, store.clone()).await;
    let b = replica(&redis, store.clone()).await;
    let redis = tokio::task::spawn_blocking(move || {
        wait_for_subscribers(&redis.url(), 2);
        redis
    })
    .await
    .unwrap();

    let mut manage = a.client().await;
    let owner = create_owner(&mut manage, "acme", "").await;
    let created = issue_key(&mut manage, &owner.id, "shared").await;
    let key = created.secret;
    assert_eq!(decide(&b, &key).await, "OK", "created on A, works on B");
    assert_eq!(decide(&a, &key).await, "OK");

    let answer = manage
        .revoke_key(admin(proto::RevokeKeyRequest {
            id: created.key.unwrap().id,
        }))
        .await
        .unwrap();
    assert_eq!(unacknowledged(&answer), "0");
    assert_eq!(
        decide(&b, &key).await,
        "INVALID_API_KEY",
        "the very next request on B after RevokeKey returned"
    );

    let other = issue_key(&mut manage, &owner.id, "other").await.secret;
    assert_eq!(decide(&b, &other).await, "OK");
    manage
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: Some(proto::Owner {
                id: owner.id.clone(),
                state: proto::OwnerState::Disabled as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["state".into()],
            }),
        }))
        .await
        .unwrap();
    assert_eq!(
        decide(&b, &other).await,
        "OWNER_DISABLED",
        "the very next request on B after UpdateOwner returned"
    );
    drop(redis);
}

/// Two replicas sharing a Redis store and the Redis limiter, each behind its own Envoy in
/// front of the same upstreams.
struct LimitedPair {
    redis: RedisServer,
    a: TestServer,
    b: TestServer,
    http: HttpUpstream,
    /// Kept running for the Envoys.
    _grpc: GrpcUpstream,
    envoys: [EnvoyProcess; 2],
}

impl LimitedPair {
    /// Starts the pair with `more` appended to each replica's configuration.
    async fn start(more: &str) -> LimitedPair {
        let redis = started_redis().await;
        let store = redis_store(&redis, Duration::from_secs(2)).await;
        let tables = format!(
            "[redis]\nurl = \"{}\"\n[ratelimit]\nbackend = \"redis\"\n{more}",
            redis.url()
        );
        let a = replica_with(&tables, store.clone()).await;
        let b = replica_with(&tables, store).await;
        let redis = wait_for_replicas(redis, 2).await;
        let (http, grpc) = (HttpUpstream::start().await, GrpcUpstream::start().await);
        let upstreams = (http.addr, grpc.addr);
        let planes = [a.server.data_plane_addr(), b.server.data_plane_addr()];
        let envoys = tokio::task::spawn_blocking(move || {
            planes.map(|plane| EnvoyProcess::start(plane, upstreams.0, upstreams.1))
        })
        .await
        .unwrap();
        LimitedPair {
            redis,
            a,
            b,
            http,
            _grpc: grpc,
            envoys,
        }
    }
}

/// A plan change made through one replica: the status and `x-ratelimit-limit` of a request
/// through each replica's Envoy.
struct ThroughEnvoy {
    envoys: [EnvoyProcess; 2],
    key: String,
}

impl ThroughEnvoy {
    /// Sends `GET /v1/items` with the key through replica `replica`'s Envoy.
    async fn ask(&self, replica: usize) -> (u16, Option<String>) {
        let envoy = &self.envoys[replica];
        let answer = http_request(
            envoy.listen_addr,
            "GET",
            "/v1/items",
            &[("x-api-key", &self.key)],
        )
        .await;
        let limit = answer.header("x-ratelimit-limit").map(str::to_owned);
        (answer.status, limit)
    }

    /// The statuses of requests sent through the replicas in `order`, one at a time.
    async fn statuses(&self, order: &[usize]) -> Vec<u16> {
        let mut statuses = Vec::new();
        for &replica in order {
            statuses.push(self.ask(replica).await.0);
        }
        statuses
    }
}

/// UpdatePlan's request for plan `name` with one window of `limit` an hour per key.
fn hourly(name: &str, limit: u64) -> proto::UpdatePlanRequest {
    proto::UpdatePlanRequest {
        plan: Some(proto::Plan {
            name: name.into(),
            rate_windows: vec![proto::RateWindow {
                limit,
                period: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                scope: proto::RateScope::Key as i32,
            }],
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["rate_windows".into()],
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_made_and_changed_on_one_replica_limits_the_next_request_through_envoy_on_the_other()
{
    let LimitedPair {
        redis,
        a,
        b,
        http,
        envoys,
        _grpc,
    } = LimitedPair::start("[[plans]]\nname = \"unmetered\"\n").await;

    // Create and assign on A, without a restart: both replicas enforce the plan, and the
    // Redis limiter counts for both (a key's third request an hour is its last).
    let mut manage = a.client().await;
    let team = manage
        .create_plan(admin(proto::CreatePlanRequest {
            name: "team".into(),
            rate_windows: hourly("team", 3).plan.unwrap().rate_windows,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(team.api_access);
    let owner = create_owner(&mut manage, "acme", "team").await;
    let stack = ThroughEnvoy {
        envoys,
        key: issue_key(&mut manage, &owner.id, "k").await.secret,
    };
    assert_eq!(stack.ask(0).await, (200, Some("3".into())));
    assert_eq!(stack.statuses(&[1, 0, 1, 0]).await, [200, 200, 429, 429]);

    // Raised on A: B's very next request is decided by the new limit, though B was just
    // refused under the old one.
    let raised = manage.update_plan(admin(hourly("team", 5))).await.unwrap();
    assert_eq!(unacknowledged(&raised), "0");
    assert_eq!(stack.ask(1).await, (200, Some("5".into())));
    assert_eq!(stack.statuses(&[0, 1, 0]).await, [200, 429, 429]);

    // Closed on A: the next request on B is refused by the plan itself.
    manage
        .update_plan(admin(proto::UpdatePlanRequest {
            plan: Some(proto::Plan {
                name: "team".into(),
                api_access: false,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["api_access".into()],
            }),
        }))
        .await
        .unwrap();
    assert_eq!(stack.ask(1).await.0, 403);

    // Deleting it is refused while the owner is on it, on either replica; once the owner
    // moved, it is deleted, and B's next request follows the owner's new plan.
    let delete = || proto::DeletePlanRequest {
        name: "team".into(),
    };
    let in_use = b.client().await.delete_plan(admin(delete())).await;
    let in_use = in_use.expect_err("the plan is used");
    assert_eq!(in_use.code(), tonic::Code::FailedPrecondition);
    assert!(
        in_use.message().contains("used by 1 owner and 0 keys"),
        "{}",
        in_use.message()
    );
    manage
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: Some(proto::Owner {
                id: owner.id.clone(),
                plan: "unmetered".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["plan".into()],
            }),
        }))
        .await
        .unwrap();
    let deleted = manage.delete_plan(admin(delete())).await.unwrap();
    assert_eq!(unacknowledged(&deleted), "0");
    assert_eq!(stack.ask(1).await, (200, None), "unmetered");
    assert_eq!(
        http.requests().len(),
        6,
        "only the admitted requests reached the upstream"
    );
    drop(redis);
}

/// Sends `count` requests with `key` at once, alternately through the two Envoys; the
/// statuses, and the quota headers of one refusal.
async fn at_once(
    envoys: [std::net::SocketAddr; 2],
    key: &str,
    count: usize,
) -> (usize, usize, Vec<(String, String)>) {
    let mut racing = tokio::task::JoinSet::new();
    for i in 0..count {
        let (envoy, key) = (envoys[i % 2], key.to_owned());
        racing.spawn(async move {
            let answer = http_request(envoy, "GET", "/v1/items", &[("x-api-key", &key)]).await;
            let told = ["x-quota-remaining", "x-credits-remaining", "x-error"]
                .iter()
                .filter_map(|name| Some((name.to_string(), answer.header(name)?.to_owned())))
                .collect::<Vec<_>>();
            (answer.status, told)
        });
    }
    let (mut admitted, mut refused, mut told) = (0, 0, Vec::new());
    while let Some(answer) = racing.join_next().await {
        match answer.unwrap() {
            (200, _) => admitted += 1,
            (429, headers) => {
                refused += 1;
                told = headers;
            }
            (status, headers) => panic!("unexpected {status} {headers:?}"),
        }
    }
    (admitted, refused, told)
}

/// A plan with a monthly quota, made on one replica, and credits granted on the other: under
/// concurrent requests through both replicas' Envoys, exactly the quota and exactly the
/// credits are admitted, and the rest are refused with 429 and their own codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_credits_admit_exactly_their_limit_through_envoy_on_two_replicas() {
    let LimitedPair {
        redis,
        a,
        b,
        http,
        envoys,
        _grpc,
    } = LimitedPair::start("").await;
    let through = [envoys[0].listen_addr, envoys[1].listen_addr];

    let mut on_a = a.client().await;
    on_a.create_plan(admin(proto::CreatePlanRequest {
        name: "metered".into(),
        quotas: vec![proto::CalendarQuota {
            limit: 20,
            period: proto::CyclePeriod::Month as i32,
            anchor_day: 15,
            ..Default::default()
        }],
        ..Default::default()
    }))
    .await
    .unwrap();
    let owner = create_owner(&mut on_a, "metered-co", "metered").await;
    let metered = issue_key(&mut on_a, &owner.id, "m").await.secret;
    let (admitted, refused, told) = at_once(through, &metered, 60).await;
    assert_eq!((admitted, refused), (20, 40), "{told:?}");
    assert!(
        told.contains(&("x-quota-remaining".into(), "0".into())),
        "{told:?}"
    );

    // Credits granted on B, for a key on a plan without quotas.
    let other = create_owner(&mut on_a, "trial-co", "pro").await;
    let trial = issue_key(&mut on_a, &other.id, "t").await;
    let id = trial.key.unwrap().id;
    b.client()
        .await
        .update_key(admin(common::grant_credits(&id, 5)))
        .await
        .unwrap();
    let (admitted, refused, told) = at_once(through, &trial.secret, 30).await;
    assert_eq!((admitted, refused), (5, 25), "{told:?}");
    assert!(
        told.contains(&("x-credits-remaining".into(), "0".into())),
        "{told:?}"
    );
    assert_eq!(
        http.requests().len(),
        25,
        "only the admitted requests reached the upstream"
    );
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_replica_is_refused_by_the_other_on_the_very_next_request() {
    let redis = started_redis().await;
    let store = redis_store(&redis, Duration::from_secs(2)).await;
    let a = replica(&redis, store.clone()).await;
    let b = replica(&redis, store.clone()).await;
    let redis = wait_for_replicas(redis, 2).await;

    let mut manage = a.client().await;
    let owner = create_owner(&mut manage, "acme", "").await;
    const CYCLES: usize = 150;
    let mut refused = 0;
    for cycle in 0..CYCLES {
        let created = issue_key(&mut manage, &owner.id, &format!("cycle-{cycle}")).await;
        let key = created.secret;
        assert_eq!(decide(&a, &key).await, "OK", "warm on A, cycle {cycle}");
        assert_eq!(decide(&b, &key).await, "OK", "warm on B, cycle {cycle}");
        let answer = manage
            .revoke_key(admin(proto::RevokeKeyRequest {
                id: created.key.unwrap().id,
            }))
            .await
            .unwrap();
        assert_eq!(unacknowledged(&answer), "0", "cycle {cycle}");
        match decide(&b, &key).await.as_str() {
            "INVALID_API_KEY" => refused += 1,
            other => println!("cycle {cycle}: B answered {other} after RevokeKey returned"),
        }
    }
    assert_eq!(refused, CYCLES, "refused by B on the very next request");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_replica_that_does_not_confirm_is_reported_and_the_revocation_still_succeeds() {
    let redis = started_redis().await;
    let store = redis_store(&redis, Duration::from_secs(2)).await;
    let tables = format!(
        "[redis]\nurl = \"{}\"\n[invalidation]\nack_timeout = \"300ms\"\n[[plans]]\nname = \"unmetered\"\n",
        redis.url()
    );
    let a = replica_with(&tables, store.clone()).await;
    let b = replica_with(&tables, store.clone()).await;
    let redis = wait_for_replicas(redis, 2).await;
    // A replica that is registered as live (its heartbeat far in the future) but never
    // listens, as a hung process would.
    let client = ::redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("ZADD")
        .arg(LIVE_REPLICAS)
        .arg(i64::MAX / 2)
        .arg("silent-replica")
        .query_async::<i64>(&mut connection)
        .await
        .unwrap();

    let mut manage = a.client().await;
    let owner = create_owner(&mut manage, "acme", "").await;
    let created = issue_key(&mut manage, &owner.id, "shared").await;
    assert_eq!(decide(&b, &created.secret).await, "OK");
    assert_eq!(
        counter(&a, "keygate_invalidation_unacknowledged_replicas_total").await,
        0.0,
        "a new key is not waited on"
    );

    // What an earlier version, which knows no ack requests, hears on the channel.
    let mut earlier = client.get_async_pubsub().await.unwrap();
    earlier
        .subscribe(keygate::redis::keyspace::INVALIDATIONS)
        .await
        .unwrap();

    let key_id = created.key.clone().unwrap().id;
    let started = Instant::now();
    let answer = manage
        .revoke_key(admin(proto::RevokeKeyRequest { id: key_id.clone() }))
        .await
        .expect("the revocation is stored whether or not every replica confirms");
    let waited = started.elapsed();
    assert_eq!(answer.get_ref().state, proto::KeyState::Revoked as i32);
    assert_eq!(unacknowledged(&answer), "1", "the silent replica, not B");
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "waited {waited:?}: the bounded wait, then the answer"
    );
    assert_eq!(
        counter(&a, "keygate_invalidation_unacknowledged_replicas_total").await,
        1.0
    );
    assert_eq!(decide(&b, &created.secret).await, "INVALID_API_KEY");
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        let mut messages = earlier.on_message();
        loop {
            let text: String = messages.next().await.unwrap().get_payload().unwrap();
            if Invalidation::decode(&text) == Some(Invalidation::Key(key_id.clone())) {
                return;
            }
        }
    })
    .await;
    assert!(
        heard.is_ok(),
        "the plain change reaches earlier versions too"
    );

    // The silent replica leaves the live set: writes stop waiting for it.
    ::redis::cmd("ZREM")
        .arg(LIVE_REPLICAS)
        .arg("silent-replica")
        .query_async::<i64>(&mut connection)
        .await
        .unwrap();
    let answer = manage
        .delete_key(admin(proto::DeleteKeyRequest {
            id: created.key.unwrap().id,
        }))
        .await
        .unwrap();
    assert_eq!(unacknowledged(&answer), "0");
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_never_produces_a_wrong_decision() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start_durable)
        .await
        .unwrap();
    let store = redis_store(&redis, Duration::from_millis(200)).await;
    let server = replica(&redis, store).await;
    let mut manage = server.client().await;
    let owner = create_owner(&mut manage, "acme", "unmetered").await;
    let warm = issue_key(&mut manage, &owner.id, "warm").await.secret;
    let unseen = issue_key(&mut manage, &owner.id, "unseen").await.secret;
    let revoked = issue_key(&mut manage, &owner.id, "revoked").await;
    let revoked_secret = revoked.secret.clone();
    assert_eq!(decide(&server, &warm).await, "OK");
    assert_eq!(decide(&server, &revoked_secret).await, "OK");
    server
        .client()
        .await
        .revoke_key(admin(proto::RevokeKeyRequest {
            id: revoked.key.unwrap().id,
        }))
        .await
        .unwrap();
    assert_eq!(decide(&server, &revoked_secret).await, "INVALID_API_KEY");

    let mut client = AuthorizationClient::new(server.data_plane().await);
    let mut ask = async |key: &str| {
        client
            .check(get(key))
            .await
            .map(|answer| decision_code(&answer.into_inner()))
    };

    wait_for_readiness(&server, true).await;
    redis.kill();
    wait_for_readiness(&server, false).await;
    // A bounded stream of decisions while Redis is gone.
    for _ in 0..50 {
        assert_eq!(
            ask(&warm).await.unwrap(),
            "OK",
            "a warm valid key keeps working"
        );
        assert_eq!(
            ask(&revoked_secret).await.unwrap(),
            "INVALID_API_KEY",
            "a revoked key stays refused"
        );
        let status = ask(&unseen).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "an unseen key is UNAVAILABLE, not denied"
        );
    }
    let write = server
        .client()
        .await
        .revoke_key(admin(proto::RevokeKeyRequest { id: "any".into() }))
        .await
        .unwrap_err();
    assert_eq!(
        write.code(),
        tonic::Code::Unavailable,
        "management writes are refused, not lost"
    );

    let mut redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(10);
    loop {
        match ask(&unseen).await {
            Ok(code) => {
                assert_eq!(code, "OK");
                break;
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::Unavailable),
        }
        assert!(Instant::now() < deadline, "keygate did not recover");
    }
    println!(
        "replicas: full service {:?} after redis-server was back",
        back.elapsed()
    );
    assert_eq!(ask(&warm).await.unwrap(), "OK");
    assert_eq!(ask(&revoked_secret).await.unwrap(), "INVALID_API_KEY");
    redis.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_verified_by_one_replica_needs_no_argon2_on_another() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = redis_store(&redis, Duration::from_secs(2)).await;
    let a = replica(&redis, store.clone()).await;
    let b = replica(&redis, store).await;
    let mut manage = a.client().await;
    let owner = create_owner(&mut manage, "acme", "unmetered").await;
    let key = issue_key(&mut manage, &owner.id, "k").await;
    let verifications = |s: &TestServer| s.server.app().authorizer.keys().hasher().verifications();
    assert_eq!(decide(&a, &key.secret).await, "OK");
    assert_eq!(verifications(&a), 1);
    assert_eq!(decide(&b, &key.secret).await, "OK");
    assert_eq!(verifications(&b), 0, "B trusted A's verification");
    assert_eq!(
        b.server
            .app()
            .authorizer
            .keys()
            .stats()
            .l2_hits
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // After a rotation the shared entry no longer matches the stored hash: the old secret is
    // checked again, never trusted blindly, and refused by the record's secret check
    // without argon2.
    a.client()
        .await
        .rotate_key(admin(proto::RotateKeyRequest {
            id: key.key.unwrap().id,
            grace: None,
        }))
        .await
        .unwrap();
    let c = replica(&redis, redis_store(&redis, Duration::from_secs(2)).await).await;
    assert_eq!(decide(&c, &key.secret).await, "INVALID_API_KEY");
    assert_eq!(verifications(&c), 0);
    let refusals = &c.server.app().authorizer.keys().stats().check_refusals;
    assert_eq!(refusals.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_cluster_replicas_share_keys_revocations_and_limits() {
    let cluster = tokio::task::spawn_blocking(common::redis::RedisCluster::start)
        .await
        .unwrap();
    let nodes = cluster
        .urls()
        .iter()
        .map(|u| format!("\"{u}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "[redis]\ncluster_nodes = [{nodes}]\ntimeout = \"2s\"\n[ratelimit]\nbackend = \"redis\"\n\
         [[plans]]\nname = \"hourly\"\nrate_windows = [{{ limit = 10, period = \"1h\" }}]\n"
    );
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(&RedisConfig {
            cluster_nodes: cluster.urls(),
            timeout: Duration::from_secs(2),
            ..RedisConfig::default()
        })
        .await
        .unwrap(),
    );
    let (a, b) = (
        replica_with(&config, store.clone()).await,
        replica_with(&config, store).await,
    );
    // Published messages reach every node of a cluster; both replicas listen on the first.
    let first_node = cluster.urls()[0].clone();
    tokio::task::spawn_blocking(move || wait_for_subscribers(&first_node, 2))
        .await
        .unwrap();

    let mut manage = a.client().await;
    let owner = create_owner(&mut manage, "acme", "hourly").await;
    let created = issue_key(&mut manage, &owner.id, "k").await;
    let key = created.secret;
    // One limit of 10 an hour across both replicas, counted in the cluster.
    let mut admitted = 0;
    for i in 0..14 {
        let server = if i % 2 == 0 { &a } else { &b };
        admitted += usize::from(decide(server, &key).await == "OK");
    }
    assert_eq!(admitted, 10);

    manage
        .revoke_key(admin(proto::RevokeKeyRequest {
            id: created.key.unwrap().id,
        }))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while decide(&b, &key).await != "INVALID_API_KEY" {
        assert!(Instant::now() < deadline, "B still accepts the revoked key");
    }
    drop(cluster);
}
