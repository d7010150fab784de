//! Rate limits through Check and Authorize: in process with a manual clock, and shared
//! through a real redis-server by two keygate servers.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use common::authorize::authorize;
use common::redis::RedisServer;
use common::{ADMIN_TOKEN, Options, TestServer, start_with};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use keygate::proto;
use std::sync::Arc;

use keygate::calendar::{Calendar, Period};
use keygate::clock::{Clock, ManualClock, SystemClock};
use keygate::model::{Credits, Refill};
use keygate::plan::{Quota, RateScope, RateWindow};
use keygate::ratelimit::local::{HeldMeters, LocalLimiter};
use keygate::ratelimit::redis::{RedisLimiter, RedisLimiterStats};
use keygate::ratelimit::{Checks, DecidedBy, Limits, RateLimiter, RateOutcome, Subject};
use keygate::redis::RedisConfig;
use keygate::store::Store;
use keygate::store::embedded::EmbeddedStore;
use std::time::{Duration, Instant};

/// Plans for these tests: 5 a second per key and 8 a minute per owner; 10 an hour per key;
/// 3 a calendar month per key.
const PLANS: &str = r#"
[[plans]]
name = "metered"
rate_windows = [{ limit = 5, period = "1s" }, { limit = 8, period = "1m", per = "owner" }]

[[plans]]
name = "hourly"
rate_windows = [{ limit = 10, period = "1h" }]

[[plans]]
name = "monthly"
quotas = [{ limit = 3, period = "month" }]

[[routes]]
path_prefix = "/export"
cost = 3
"#;

async fn server(extra: &str) -> TestServer {
    start_with(Options {
        admin_token: Some(ADMIN_TOKEN),
        extra_config: extra,
        ..Options::default()
    })
    .await
}

/// Creates an owner on `plan` with `keys` keys; returns their secrets.
async fn keys(server: &TestServer, plan: &str, keys: usize) -> Vec<String> {
    let mut manage = server.client().await;
    let owner = common::create_owner(&mut manage, &format!("owner-{plan}"), plan)
        .await
        .id;
    let mut secrets = Vec::new();
    for _ in 0..keys {
        secrets.push(common::issue_key(&mut manage, &owner, "k").await.secret);
    }
    secrets
}

fn check_request(key: &str, path: &str, extensions: &[(&str, &str)]) -> CheckRequest {
    common::check::check_request(
        "203.0.113.9",
        "GET",
        path,
        &[("x-api-key", key)],
        extensions,
    )
}

/// (allowed, headers for the client) of a Check answer.
fn outcome(response: &CheckResponse) -> (bool, HashMap<String, String>) {
    let (allowed, headers) = match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => (true, &ok.response_headers_to_add),
        Some(HttpResponse::DeniedResponse(denied)) => (false, &denied.headers),
        other => panic!("unexpected answer {other:?}"),
    };
    let headers = headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    (allowed, headers)
}

async fn check(server: &TestServer, key: &str, path: &str) -> (bool, HashMap<String, String>) {
    let data_plane = server.data_plane().await;
    outcome(&common::check::check(&data_plane, check_request(key, path, &[])).await)
}

#[tokio::test]
async fn windows_limit_each_key_and_the_owner_with_headers_for_the_client() {
    let server = server(PLANS).await;
    let keys = keys(&server, "metered", 2).await;
    let mut client = AuthorizationClient::new(server.data_plane().await);
    let mut call = async |key: &str| {
        outcome(
            &client
                .check(check_request(key, "/v1/x", &[]))
                .await
                .unwrap()
                .into_inner(),
        )
    };

    // 5 a second for the first key.
    for expected_remaining in ["4", "3", "2", "1", "0"] {
        let (allowed, headers) = call(&keys[0]).await;
        assert!(allowed);
        assert_eq!(headers["x-ratelimit-limit"], "5");
        assert_eq!(headers["x-ratelimit-remaining"], expected_remaining);
        assert!(!headers.contains_key("retry-after"));
    }
    let (allowed, headers) = call(&keys[0]).await;
    assert!(!allowed);
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    // All five were admitted at this instant: the next fits when they leave the window,
    // one second on, and that is also when every one of them is gone.
    assert_eq!(headers["retry-after"], "1");
    let reset: i64 = headers["x-ratelimit-reset"].parse().unwrap();
    assert_eq!(
        reset,
        common::T0 + 1,
        "epoch seconds at which every counted request has left the window"
    );

    // The owner's window (8 a minute) is shared: the second key gets the 3 left.
    for _ in 0..3 {
        assert!(call(&keys[1]).await.0);
    }
    let (allowed, headers) = call(&keys[1]).await;
    assert!(!allowed, "the owner's minute is used up");
    assert_eq!(headers["x-ratelimit-limit"], "8");
    // Two seconds on, the per-second window has room again but the minute does not.
    server.clock.advance(2);
    assert!(!call(&keys[0]).await.0);
    // The eight were admitted at 0:00 and stay in every window that holds that instant:
    // refused up to 0:59.999, and room again at 1:00.
    server.clock.advance(57);
    server.clock.advance_millis(999);
    assert!(!call(&keys[0]).await.0);
    server.clock.advance_millis(1);
    assert!(call(&keys[0]).await.0);
}

#[tokio::test]
async fn rate_limited_requests_get_429_with_the_json_body() {
    let server = server(PLANS).await;
    let key = &keys(&server, "hourly", 1).await[0];
    let mut client = AuthorizationClient::new(server.data_plane().await);
    for _ in 0..10 {
        client.check(check_request(key, "/v1", &[])).await.unwrap();
    }
    let denied = client
        .check(check_request(key, "/v1", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        denied.status.as_ref().unwrap().code,
        tonic::Code::ResourceExhausted as i32
    );
    let Some(HttpResponse::DeniedResponse(body)) = &denied.http_response else {
        panic!()
    };
    assert_eq!(body.status.as_ref().unwrap().code, 429);
    let json: serde_json::Value = serde_json::from_str(&body.body).unwrap();
    assert_eq!(json["error"]["code"], "RATE_LIMITED");
    let (_, headers) = outcome(&denied);
    // Ten admitted at this instant: the next fits when they leave the window, an hour on.
    assert_eq!(headers["retry-after"], "3600");
}

/// The code and JSON body of a denied Check answer.
fn denial_code(response: &CheckResponse) -> (u32, String) {
    let Some(HttpResponse::DeniedResponse(body)) = &response.http_response else {
        panic!("not denied: {response:?}")
    };
    let json: serde_json::Value = serde_json::from_str(&body.body).unwrap();
    let status = body.status.as_ref().unwrap().code as u32;
    (status, json["error"]["code"].as_str().unwrap().to_owned())
}

/// Through Check: a plan's monthly quota admits its limit, then answers 429
/// `QUOTA_EXCEEDED` with the quota headers; credits the admin grants through UpdateKey are
/// spent by each request, read back live through GetKey, and refused with
/// `CREDITS_EXHAUSTED` once spent, while a managing key cannot grant any.
#[tokio::test]
async fn quotas_and_credits_refuse_with_their_own_codes_through_check() {
    let server = server(PLANS).await;
    let key = &keys(&server, "monthly", 1).await[0];
    let mut client = AuthorizationClient::new(server.data_plane().await);
    for remaining in ["2", "1", "0"] {
        let answer = client.check(check_request(key, "/v1", &[])).await.unwrap();
        let (allowed, headers) = outcome(answer.get_ref());
        assert!(allowed);
        assert_eq!(headers["x-quota-limit"], "3");
        assert_eq!(headers["x-quota-remaining"], remaining);
    }
    let refused = client
        .check(check_request(key, "/v1", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denial_code(&refused), (429, "QUOTA_EXCEEDED".to_owned()));
    let (_, headers) = outcome(&refused);
    let reset: i64 = headers["x-quota-reset"].parse().unwrap();
    let retry: i64 = headers["retry-after"].parse().unwrap();
    // The reset is the next first of a month, at midnight UTC (by the server's clock), and
    // retry-after points at it.
    let (year, month, day) = keygate::calendar::Day(reset.div_euclid(86_400) as i32).date();
    assert_eq!(
        (reset.rem_euclid(86_400), day),
        (0, 1),
        "{year}-{month} {headers:?}"
    );
    assert!((1..=31 * 86_400).contains(&retry), "{headers:?}");

    let mut manage = server.client().await;
    let owner = common::create_owner(&mut manage, "credited", "hourly")
        .await
        .id;
    let issued = common::issue_key_with_scopes(&mut manage, &owner, "k", &["keygate:keys"]).await;
    let id = issued.key.as_ref().unwrap().id.clone();
    let grant = |remaining| common::grant_credits(&id, remaining);
    let refused = manage
        .update_key(common::bearer(&issued.secret, grant(1_000)))
        .await;
    let message = common::expect_code(refused, tonic::Code::PermissionDenied);
    assert!(message.contains("only the admin"), "{message}");
    let granted = manage
        .update_key(common::admin(grant(2)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(granted.credits.unwrap().remaining, 2);
    for left in ["1", "0"] {
        let answer = client
            .check(check_request(&issued.secret, "/v1", &[]))
            .await
            .unwrap();
        let (allowed, headers) = outcome(answer.get_ref());
        assert!(allowed);
        assert_eq!(headers["x-credits-remaining"], left);
    }
    let spent = client
        .check(check_request(&issued.secret, "/v1", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(denial_code(&spent), (429, "CREDITS_EXHAUSTED".to_owned()));
    assert!(!outcome(&spent).1.contains_key("retry-after"), "no refill");
    let read = manage
        .get_key(common::admin(proto::GetKeyRequest { id: id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read.credits.unwrap().remaining, 0, "the live balance");
}

/// ListKeys answers each key's live credit balance, in id order, for a page of more keys
/// than it reads balances for at once.
#[tokio::test]
async fn list_keys_answers_each_key_s_live_credit_balance_in_order() {
    let server = server(PLANS).await;
    let mut manage = server.client().await;
    let owner = common::create_owner(&mut manage, "many", "hourly").await.id;
    let mut client = AuthorizationClient::new(server.data_plane().await);
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..35u64 {
        let issued = common::issue_key(&mut manage, &owner, &format!("k{i}")).await;
        let id = issued.key.as_ref().unwrap().id.clone();
        manage
            .update_key(common::admin(common::grant_credits(&id, 10 + i)))
            .await
            .unwrap();
        let spent = i % 7;
        for _ in 0..spent {
            let answer = client
                .check(check_request(&issued.secret, "/v1", &[]))
                .await
                .unwrap();
            assert!(outcome(answer.get_ref()).0);
        }
        expected.insert(id, 10 + i - spent);
    }
    let listed = manage
        .list_keys(common::admin(proto::ListKeysRequest {
            owner_id: owner,
            page_size: 100,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let balances: Vec<(String, u64)> = listed
        .keys
        .iter()
        .map(|k| (k.id.clone(), k.credits.as_ref().unwrap().remaining))
        .collect();
    assert_eq!(balances, expected.into_iter().collect::<Vec<_>>());
}

#[tokio::test]
async fn cost_comes_from_routes_extensions_and_authorize() {
    let server = server(PLANS).await;
    let key = &keys(&server, "hourly", 1).await[0];
    let mut check = AuthorizationClient::new(server.data_plane().await);
    // /export costs 3 by route rule: 10 an hour buys three exports, not four.
    for expected in [true, true, true, false] {
        let response = check
            .check(check_request(key, "/export/all", &[]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(outcome(&response).0, expected);
    }
    // One request of cost 1 still fits; the context extension makes the next cost 2.
    let by_extension = check
        .check(check_request(key, "/v1", &[("keygate.cost", "2")]))
        .await
        .unwrap()
        .into_inner();
    assert!(!outcome(&by_extension).0, "9 used + 2 > 10");
    assert!(
        outcome(
            &check
                .check(check_request(key, "/v1", &[]))
                .await
                .unwrap()
                .into_inner()
        )
        .0
    );

    let request = proto::AuthorizeRequest {
        key: key.clone(),
        cost: 1,
        ..Default::default()
    };
    let answer = authorize(&server.data_plane().await, request).await;
    assert_eq!(answer.code, proto::DecisionCode::RateLimited as i32);
    assert_eq!(answer.http_status, 429);
    let state = answer.rate_limit.unwrap();
    let tightest = state.tightest.unwrap();
    assert_eq!((tightest.limit, tightest.remaining), (10, 0));
    assert_eq!(tightest.period.unwrap().seconds, 3600);
    assert!(state.retry_after.unwrap().seconds > 0);
}

fn redis_limiter_stats(server: &TestServer) -> &RedisLimiterStats {
    match server.server.app().authorizer.limiter() {
        RateLimiter::Redis(redis) => redis.stats(),
        RateLimiter::Local(_) => panic!("expected the Redis limiter"),
    }
}

fn redis_config(redis: &RedisServer) -> String {
    format!(
        r#"{PLANS}
[ratelimit]
backend = "redis"
replicas = 2

[redis]
url = "{}"
timeout = "200ms"
retry_after = "1s"
"#,
        redis.url()
    )
}

/// Two keygate servers (replicas) sharing one store and one Redis.
async fn replicas(redis: &RedisServer) -> (TestServer, TestServer) {
    let config = redis_config(redis);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&dir.path().join("shared.redb")).unwrap());
    let replica = async || {
        start_with(Options {
            admin_token: Some(ADMIN_TOKEN),
            extra_config: &config,
            store: Some(store.clone()),
            ..Options::default()
        })
        .await
    };
    let pair = (replica().await, replica().await);
    std::mem::forget(dir); // the store file outlives the servers; the OS cleans tmp
    pair
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_sharing_redis_enforce_one_limit() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let (a, b) = replicas(&redis).await;
    let key = keys(&a, "hourly", 1).await.remove(0);
    let mut admitted = 0;
    for i in 0..16 {
        let server = if i % 2 == 0 { &a } else { &b };
        if check(server, &key, "/v1").await.0 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "10 an hour in all, not 10 per replica");
    for server in [&a, &b] {
        let stats = redis_limiter_stats(server);
        assert_eq!(stats.decisions.load(Ordering::Relaxed), 8);
        assert_eq!(stats.fallbacks.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_survives_script_flush() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let (a, _b) = replicas(&redis).await;
    let key = keys(&a, "hourly", 1).await.remove(0);
    for _ in 0..4 {
        assert!(check(&a, &key, "/v1").await.0);
    }
    let flushed: String = redis.command(redis::cmd("SCRIPT").arg("FLUSH"));
    assert_eq!(flushed, "OK");
    let (allowed, headers) = check(&a, &key, "/v1").await;
    assert!(allowed);
    assert_eq!(
        headers["x-ratelimit-remaining"], "5",
        "the counters were kept and the script reloaded"
    );
    assert_eq!(redis_limiter_stats(&a).errors.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_dies_each_replica_enforces_its_share_then_returns_to_redis() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let (a, _b) = replicas(&redis).await;
    let key = keys(&a, "hourly", 1).await.remove(0);
    assert!(check(&a, &key, "/v1").await.0);
    assert_eq!(redis_limiter_stats(&a).decisions.load(Ordering::Relaxed), 1);

    redis.kill();
    // 10 an hour over 2 replicas: this one lets 5 through on its own.
    let admitted = {
        let mut n = 0;
        for _ in 0..8 {
            n += usize::from(check(&a, &key, "/v1").await.0);
        }
        n
    };
    assert_eq!(admitted, 5);
    let stats = redis_limiter_stats(&a);
    assert_eq!(stats.fallbacks.load(Ordering::Relaxed), 8);
    assert!(stats.errors.load(Ordering::Relaxed) >= 1);

    let redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    // The limiter tries Redis again once its back-off (1 s on keygate's clock) has passed,
    // and first tells it about the 5 its share admitted meanwhile (the restarted Redis has
    // forgotten everything else).
    a.clock.advance(2);
    let (allowed, headers) = check(&a, &key, "/v1").await;
    assert!(allowed);
    assert_eq!(
        headers["x-ratelimit-limit"], "10",
        "the whole limit again, from Redis"
    );
    assert_eq!(stats.decisions.load(Ordering::Relaxed), 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stats.replayed.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the outage's admissions were never charged to Redis"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(stats.replayed.load(Ordering::Relaxed), 1, "one window");
    let (allowed, headers) = check(&a, &key, "/v1").await;
    assert!(allowed);
    assert_eq!(
        headers["x-ratelimit-remaining"], "3",
        "10 − the 5 admitted during the outage − 2 since"
    );
    let mut more = 0;
    for _ in 0..5 {
        more += usize::from(check(&a, &key, "/v1").await.0);
    }
    assert_eq!(
        more, 3,
        "the outage's admissions still count in Redis's window"
    );
    drop(redis);
}

/// The Redis script and the in-process limiter are two implementations of one window log:
/// replayed at the same moments with the same costs, against a real redis-server, they make
/// the same decisions and tell the same remaining, reset and retry-after — several decisions
/// in one call, and through limit changes (which regroup the logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_script_decides_exactly_as_the_local_limiter() {
    use keygate::ratelimit::window_key;

    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let mut connection = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let script = redis::Script::new(keygate::redis::scripts::CHECK_AND_CHARGE);
    let local = LocalLimiter::new(1000, Duration::from_secs(3600));
    let subject = Subject {
        owner_id: "o",
        key_id: "k",
    };
    let window = |limit, secs, per| RateWindow {
        limit,
        period: Duration::from_secs(secs),
        per,
    };
    // (windows, moments): limits from exact logs to grouped ones, and changes between them.
    let phases = [
        vec![
            window(3, 1, RateScope::Key),
            window(20, 60, RateScope::Owner),
        ],
        vec![
            window(150, 1, RateScope::Key),
            window(20_000, 60, RateScope::Owner),
        ],
        vec![
            window(7, 1, RateScope::Key),
            window(900, 60, RateScope::Owner),
        ],
        vec![
            window(5_000, 2, RateScope::Key),
            window(1_000_000, 60, RateScope::Owner),
        ],
    ];
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut random = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below
    };
    let mut now: i64 = 1_700_000_000_000;
    let (mut decisions, mut admitted) = (0, 0);
    for windows in &phases {
        let limits = keygate::ratelimit::limits(windows, 1);
        for _ in 0..600 {
            now += random(60) as i64;
            // Up to four decisions at one moment, in one call.
            let costs: Vec<u64> = (0..1 + random(4))
                .map(|_| 1 + random(windows[0].limit.min(40)))
                .collect();
            let mut invocation = script.prepare_invoke();
            for w in windows {
                invocation.key(window_key(subject, w));
            }
            invocation.arg("check").arg(now).arg(windows.len());
            for (limit, period) in &limits {
                invocation.arg(limit).arg(period);
            }
            // No quotas, no credits.
            invocation.arg(0).arg(0);
            for cost in &costs {
                invocation.arg(cost);
            }
            let reply: Vec<u8> = invocation.invoke(&mut connection).unwrap();
            let reply = keygate::redis::scripts::unpack_numbers(&reply).unwrap();
            assert_eq!(reply[0], now);
            let told = reply[1..].chunks(1 + 3 * windows.len());
            assert_eq!(told.len(), costs.len());
            for (&cost, told) in costs.iter().zip(told) {
                let expected = local.check(
                    subject,
                    &Checks::windows(windows),
                    HeldMeters::default(),
                    cost,
                    now,
                    1,
                    DecidedBy::Local,
                );
                let at = format!("at {now} cost {cost} limits {limits:?}");
                assert_eq!(told[0] == 1, expected.allowed, "{at}");
                for (told, state) in told[1..].chunks(3).zip(&expected.windows) {
                    let (count, newest, wait) = (told[0] as u64, told[1], told[2]);
                    assert_eq!(state.remaining, state.limit.saturating_sub(count), "{at}");
                    let reset = if count == 0 {
                        now
                    } else {
                        newest + state.period_ms as i64
                    };
                    assert_eq!(state.reset_at, reset, "{at}");
                    assert_eq!(state.retry_after_ms, u64::try_from(wait).ok(), "{at}");
                }
                decisions += 1;
                admitted += usize::from(expected.allowed);
            }
        }
    }
    assert!(
        admitted > 0 && admitted < decisions,
        "{admitted} of {decisions}"
    );
}

/// How long the Redis limiters of these tests wait for Redis: long enough that a busy
/// machine never makes them fall back.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// A fresh redis-server, which is the guard, and a maker of Redis limiters on it: each is a
/// replica of `replicas`, with its own connection, waiting `timeout` for Redis.
async fn redis_limiters(
    replicas: u64,
    timeout: Duration,
) -> (impl Fn() -> RedisLimiter, RedisServer) {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let config = RedisConfig {
        url: redis.url(),
        timeout,
        ..RedisConfig::default()
    };
    let replica = move || {
        let fallback = LocalLimiter::new(100, Duration::from_secs(3600));
        RedisLimiter::new(config.client().unwrap(), &config, replicas, fallback)
    };
    (replica, redis)
}

/// A Redis limiter (one replica, waiting `timeout` for Redis) on its own fresh
/// redis-server, which is the guard.
async fn redis_limiter(timeout: Duration) -> (Arc<RedisLimiter>, RedisServer) {
    let (replica, redis) = redis_limiters(1, timeout).await;
    (Arc::new(replica()), redis)
}

/// `decisions` checks of one unit each for `subject` against `windows`, all in flight on
/// `limiter` at once: each outcome, with how long after the first was asked it came.
async fn all_at_once(
    limiter: &Arc<RedisLimiter>,
    subject: Subject<'static>,
    windows: &[RateWindow],
    decisions: usize,
) -> Vec<(RateOutcome, Duration)> {
    let asked = Instant::now();
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..decisions {
        let (limiter, windows) = (limiter.clone(), windows.to_vec());
        racing.spawn(async move {
            let outcome = limiter
                .check(subject, &Checks::windows(&windows), 1, &SystemClock)
                .await;
            (outcome, asked.elapsed())
        });
    }
    racing.join_all().await
}

/// One per-key window of `limit` an hour.
fn hourly(limit: u64) -> [RateWindow; 1] {
    [RateWindow {
        limit,
        period: Duration::from_secs(3600),
        per: RateScope::Key,
    }]
}

/// Decisions for one key in flight together go to Redis in shared calls, and are decided
/// exactly as one by one: of 300 at once against 120 an hour, exactly 120 pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_in_flight_together_share_calls_and_keep_the_limit() {
    let (limiter, _redis) = redis_limiter(REDIS_TIMEOUT).await;
    let subject = Subject {
        owner_id: "o",
        key_id: "hot",
    };
    let mut admitted = 0;
    for (outcome, _) in all_at_once(&limiter, subject, &hourly(120), 300).await {
        assert_eq!(outcome.decided_by, DecidedBy::Redis);
        admitted += usize::from(outcome.allowed);
    }
    assert_eq!(admitted, 120);
    let stats = limiter.stats();
    assert_eq!(stats.decisions.load(Ordering::Relaxed), 300);
    let calls = stats.calls.load(Ordering::Relaxed);
    // While two calls are in flight, every decision arriving waits for the next: ten or
    // more share a call on average, however the 300 arrive.
    assert!(
        calls <= 30,
        "{calls} calls for 300 decisions in flight together"
    );
}

/// When Redis stops answering, no decision waits past the limiter's timeout, counted from
/// when it was asked: the two calls in flight give up at their decisions' deadline, and the
/// decisions queued behind them, whose deadline has passed too, fall back to the local share
/// without a call of their own (and without a timeout each after it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_queued_behind_unanswered_calls_fall_back_by_their_own_deadline() {
    let timeout = Duration::from_millis(300);
    let (limiter, redis) = redis_limiter(timeout).await;
    let windows = hourly(1_000);
    let subject = Subject {
        owner_id: "o",
        key_id: "hung",
    };
    let first = limiter
        .check(subject, &Checks::windows(&windows), 1, &SystemClock)
        .await;
    assert_eq!(first.decided_by, DecidedBy::Redis, "Redis answers at first");
    let calls_before = limiter.stats().calls.load(Ordering::Relaxed);

    redis.freeze();
    let mut slowest = Duration::ZERO;
    for (outcome, waited) in all_at_once(&limiter, subject, &windows, 100).await {
        assert_eq!(outcome.decided_by, DecidedBy::Fallback);
        assert!(outcome.allowed, "the local share of 1,000 an hour has room");
        slowest = slowest.max(waited);
    }
    let calls = limiter.stats().calls.load(Ordering::Relaxed) - calls_before;
    assert!(
        calls <= 2,
        "{calls} calls to a hung Redis: queued decisions called again after their deadline"
    );
    // A generous ceiling: a decision queued behind the hung calls that waited a timeout of
    // its own after them would take about twice the timeout.
    assert!(
        slowest < timeout * 3 / 2 + Duration::from_millis(200),
        "a decision waited {slowest:?} with a timeout of {timeout:?}"
    );
}

/// A subject past its limit is refused from the refusal Redis gave, until the wait it told
/// has passed: 5 an hour, then 50 more attempts cost one more call, not fifty, and each
/// is told to come back when the first five leave the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_repeated_from_memory_until_their_wait_passes() {
    let (limiter, _redis) = redis_limiter(REDIS_TIMEOUT).await;
    let windows = hourly(5);
    let subject = Subject {
        owner_id: "o",
        key_id: "eager",
    };
    for _ in 0..5 {
        assert!(
            limiter
                .check(subject, &Checks::windows(&windows), 1, &SystemClock)
                .await
                .allowed
        );
    }
    for _ in 0..50 {
        let refused = limiter
            .check(subject, &Checks::windows(&windows), 1, &SystemClock)
            .await;
        assert!(!refused.allowed);
        assert_eq!(refused.decided_by, DecidedBy::Redis);
        let retry = refused.retry_after_secs().unwrap();
        assert!((3590..=3600).contains(&retry), "retry after {retry} s");
    }
    let stats = limiter.stats();
    assert_eq!(stats.calls.load(Ordering::Relaxed), 6);
    assert_eq!(stats.refused_from_memory.load(Ordering::Relaxed), 49);
    // Another subject is not affected.
    let other = Subject {
        owner_id: "o",
        key_id: "calm",
    };
    assert!(
        limiter
            .check(other, &Checks::windows(&windows), 1, &SystemClock)
            .await
            .allowed
    );
}

/// Two limiters on one redis-server, as two replicas: each with its own connection.
async fn two_redis_replicas() -> (Arc<RedisLimiter>, Arc<RedisLimiter>, RedisServer) {
    let (replica, redis) = redis_limiters(2, REDIS_TIMEOUT).await;
    (Arc::new(replica()), Arc::new(replica()), redis)
}

/// `decisions` requests of cost 1 at once for `subjects` (in turn), half through each of
/// `replicas`, each checked against `limits` as of `clock`; how many were admitted.
async fn admitted_at_once(
    replicas: [&Arc<RedisLimiter>; 2],
    subjects: &[Subject<'static>],
    limits: &Limits<'static>,
    clock: &ManualClock,
    decisions: usize,
) -> usize {
    let mut racing = tokio::task::JoinSet::new();
    for i in 0..decisions {
        let limiter = replicas[i % 2].clone();
        let (subject, limits, clock) = (subjects[i % subjects.len()], *limits, clock.clone());
        racing.spawn(async move {
            let checks = Checks::new(subject, &limits, &Calendar::default(), clock.now_millis());
            let outcome = limiter.check(subject, &checks, 1, &clock).await;
            assert_eq!(outcome.decided_by, DecidedBy::Redis);
            usize::from(outcome.allowed)
        });
    }
    let mut admitted = 0;
    while let Some(outcome) = racing.join_next().await {
        admitted += outcome.unwrap();
    }
    admitted
}

/// A daily quota shared by an owner's keys, on two replicas under concurrent load: exactly
/// the limit is admitted in each cycle, and the whole limit again once the next day begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_redis_admit_exactly_a_quota_per_cycle() {
    let (first, second, _redis) = two_redis_replicas().await;
    static QUOTAS: [Quota; 1] = [Quota {
        limit: 50,
        period: Period::Day,
        anchor: None,
        per: RateScope::Owner,
    }];
    let limits = Limits {
        quotas: &QUOTAS,
        ..Limits::default()
    };
    let subjects = ["k1", "k2", "k3"].map(|key_id| Subject {
        owner_id: "o",
        key_id,
    });
    // 2026-12-01T23:00:00Z.
    let clock = ManualClock::new(1_796_166_000);
    let admitted = admitted_at_once([&first, &second], &subjects, &limits, &clock, 300).await;
    assert_eq!(admitted, 50);
    clock.advance(3600);
    let admitted = admitted_at_once([&first, &second], &subjects, &limits, &clock, 300).await;
    assert_eq!(admitted, 50, "the next day's whole quota, and no more");
}

/// 100 requests at once against 10 credits admit exactly 10, in Redis (two replicas) and
/// in process on the embedded store, where the balance outlives the process; a refill
/// adds its amount when the (manual) clock reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_admit_exactly_what_is_left_on_redis_and_on_the_embedded_store() {
    static CREDITS: Credits = Credits {
        remaining: 10,
        refill: Some(Refill::Every {
            amount: 5,
            interval: Duration::from_secs(3600),
        }),
        granted_at: 1_796_166_000_000,
    };
    let limits = Limits {
        credits: Some(&CREDITS),
        ..Limits::default()
    };
    let subject = [Subject {
        owner_id: "o",
        key_id: "trial",
    }];

    let clock = ManualClock::new(1_796_166_000);
    let (first, second, _redis) = two_redis_replicas().await;
    let admitted = admitted_at_once([&first, &second], &subject, &limits, &clock, 100).await;
    assert_eq!(admitted, 10);
    clock.advance(3599);
    let admitted = admitted_at_once([&first, &second], &subject, &limits, &clock, 20).await;
    assert_eq!(admitted, 0, "before the refill");
    clock.advance(1);
    let admitted = admitted_at_once([&first, &second], &subject, &limits, &clock, 20).await;
    assert_eq!(admitted, 5, "one refill of 5");

    let clock = ManualClock::new(1_796_166_000);
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open(&dir.path().join("keygate.redb")).unwrap());
    let config = keygate::ratelimit::RateLimitConfig::default();
    let local = Arc::new(RateLimiter::local(&config, store.clone()));
    let mut racing = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (local, clock) = (local.clone(), clock.clone());
        racing.spawn(async move {
            let checks = Checks::new(
                subject[0],
                &limits,
                &Calendar::default(),
                clock.now_millis(),
            );
            let outcome = local.check(subject[0], &checks, 1, &clock).await.unwrap();
            usize::from(outcome.allowed)
        });
    }
    let mut admitted = 0;
    while let Some(outcome) = racing.join_next().await {
        admitted += outcome.unwrap();
    }
    assert_eq!(admitted, 10);
    // Written at the flush (every usage flush, and at shutdown): a new process on the same
    // store finds them spent.
    local.flush_meters().await;
    drop(local);
    let restarted = RateLimiter::local(&config, store);
    let left = restarted
        .credits_left(subject[0], &CREDITS, &Calendar::default(), &clock)
        .await
        .unwrap();
    assert_eq!(left, 0);
    clock.advance(3600);
    let left = restarted
        .credits_left(subject[0], &CREDITS, &Calendar::default(), &clock)
        .await
        .unwrap();
    assert_eq!(left, 5);
}

/// A monthly quota anchored on the 15th in Paris, decided in Redis with a manual clock:
/// the cycle that began in winter time ends at local midnight in summer time (22:00 UTC),
/// not an hour later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monthly_quota_in_paris_resets_at_local_midnight_across_dst_in_redis() {
    let (first, second, _redis) = two_redis_replicas().await;
    static QUOTAS: [Quota; 1] = [Quota {
        limit: 3,
        period: Period::Month,
        anchor: Some(keygate::calendar::Anchor::MonthDay(15)),
        per: RateScope::Key,
    }];
    let limits = Limits {
        quotas: &QUOTAS,
        ..Limits::default()
    };
    let paris = Calendar::new("Europe/Paris").unwrap();
    let subject = Subject {
        owner_id: "o",
        key_id: "monthly",
    };
    // 2026-04-14T21:59:59Z: 23:59:59 in Paris, the last second of the cycle that began on
    // 2026-03-15 at 00:00 CET.
    let clock = ManualClock::new(1_776_203_999);
    let decide = async |replica: &RedisLimiter| {
        let checks = Checks::new(subject, &limits, &paris, clock.now_millis());
        replica.check(subject, &checks, 1, &clock).await
    };
    for replica in [&first, &second, &first] {
        assert!(decide(replica).await.allowed);
    }
    let refused = decide(&second).await;
    assert!(!refused.allowed);
    assert_eq!(refused.retry_after_secs(), Some(1));
    let headers: HashMap<_, _> = refused
        .headers(&keygate::ratelimit::RateLimitConfig::default())
        .into_iter()
        .collect();
    assert_eq!(headers["x-quota-remaining"], "0");
    assert_eq!(headers["x-quota-reset"], "1776204000");
    clock.advance(1);
    for replica in [&second, &first, &second] {
        assert!(
            decide(replica).await.allowed,
            "a new cycle at local midnight"
        );
    }
    assert!(!decide(&first).await.allowed);
}
