//! The data plane under overload: past its limit of calls in flight, past its wait before a
//! call starts, or past its time per call, keygate answers UNAVAILABLE at once instead of queueing, health checks still pass,
//! and the refusals are counted. Forward-auth calls take the same places and get the same
//! limits, refused with an HTTP 503.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::check::{check, check_request, decision_code};
use common::faulty::{FaultyStore, faulty};
use common::http::http_request;
use common::{Options, create_owner, issue_key, start_with};
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use keygate::store::embedded::EmbeddedStore;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn request(key: &str) -> CheckRequest {
    let bearer = format!("Bearer {key}");
    check_request(
        "203.0.113.9",
        "GET",
        "/v1/items",
        &[("authorization", &bearer)],
        &[],
    )
}

/// The refusals counted under `reason`, from `/metrics`.
async fn refusals(server: &common::TestServer, reason: &str) -> u64 {
    let page = http_request(server.server.metrics_addr(), "GET", "/metrics", &[]).await;
    let series = format!("keygate_data_plane_overload_refusals_total{{reason=\"{reason}\"}} ");
    page.body
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map_or(0, |value| value.trim().parse().unwrap())
}

/// A server configured with `admission` over a store the test can hold, and a key it has
/// never verified.
struct Held {
    server: common::TestServer,
    store: Arc<FaultyStore>,
    key: String,
    data_plane: Channel,
    _dir: tempfile::TempDir,
}

async fn held(admission: &str) -> Held {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(faulty(Arc::new(
        EmbeddedStore::open(&dir.path().join("k.redb")).unwrap(),
    )));
    let server = start_with(Options {
        admin_token: Some(common::ADMIN_TOKEN),
        store: Some(store.clone()),
        extra_config: admission,
        ..Options::default()
    })
    .await;
    let mut manage = server.client().await;
    let owner = create_owner(&mut manage, "acme", "pro").await.id;
    let key = issue_key(&mut manage, &owner, "cold").await.secret;
    let data_plane = server.data_plane().await;
    Held {
        server,
        store,
        key,
        data_plane,
        _dir: dir,
    }
}

/// A Check with `key`, never verified, holding a place in flight until the store (made to
/// hang here) is released; its answer once it is.
async fn stall_a_check(
    store: &FaultyStore,
    data_plane: &Channel,
    key: &str,
) -> tokio::task::JoinHandle<envoy_types::pb::envoy::service::auth::v3::CheckResponse> {
    store.hook().hold(true);
    let stalled = tokio::spawn({
        let data_plane = data_plane.clone();
        let request = request(key);
        async move { check(&data_plane, request).await }
    });
    store.hook().until_waiting(1).await;
    stalled
}

#[tokio::test]
async fn past_the_limit_of_calls_in_flight_a_check_is_refused_at_once_and_health_still_answers() {
    let Held {
        server,
        store,
        key,
        data_plane,
        _dir,
    } = held("[admission]\nmax_in_flight = 1\ntimeout = \"1h\"\n").await;

    // The first Check needs the store, which now hangs: it holds the only slot.
    let stalled = stall_a_check(&store, &data_plane, &key).await;

    // Without admission the call would wait for the store; a generous ceiling fails it.
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        common::check::try_check(&data_plane, request(&key)),
    )
    .await
    .expect("a call past the limit is answered at once, not queued")
    .expect_err("a call past the limit must be refused");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("limit"), "{refused:?}");
    let health = HealthClient::new(data_plane.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health checks are always admitted");
    assert_eq!(health.into_inner().status, 1, "SERVING");
    assert_eq!(refusals(&server, "in_flight").await, 1);

    // Released, the stalled call is decided, and the slot is free again.
    store.hook().hold(false);
    assert_eq!(decision_code(&stalled.await.unwrap()), "OK");
    assert_eq!(
        decision_code(&check(&data_plane, request(&key)).await),
        "OK"
    );
}

#[tokio::test]
async fn a_call_that_outlasts_the_time_limit_is_answered_unavailable() {
    let Held {
        server,
        store,
        key,
        data_plane,
        _dir,
    } = held("[admission]\ntimeout = \"50ms\"\n").await;

    store.hook().hold(true);
    let late = tokio::time::timeout(
        Duration::from_secs(10),
        common::check::try_check(&data_plane, request(&key)),
    )
    .await
    .expect("the time limit answers the call")
    .expect_err("a call the store holds past the limit must fail");
    assert_eq!(late.code(), tonic::Code::Unavailable, "{late:?}");
    assert!(late.message().contains("within"), "{late:?}");
    assert_eq!(refusals(&server, "timeout").await, 1);

    store.hook().hold(false);
    assert_eq!(
        decision_code(&check(&data_plane, request(&key)).await),
        "OK"
    );
}

#[tokio::test]
async fn a_call_that_waited_past_max_wait_before_it_could_start_is_refused_and_health_still_answers()
 {
    // Every call waits longer than a nanosecond between HTTP/2 handing it over and its
    // first poll: each one is past `max_wait`.
    let Held {
        server,
        key,
        data_plane,
        _dir,
        ..
    } = held("[admission]\nmax_wait = \"1ns\"\n").await;

    for _ in 0..3 {
        let refused = common::check::try_check(&data_plane, request(&key))
            .await
            .expect_err("a call that waited past max_wait must be refused");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert!(refused.message().contains("overloaded"), "{refused:?}");
    }
    let health = HealthClient::new(data_plane.clone())
        .check(HealthCheckRequest::default())
        .await
        .expect("health checks are always admitted");
    assert_eq!(health.into_inner().status, 1, "SERVING");
    assert_eq!(refusals(&server, "wait").await, 3);
}

/// Forward-auth asked about GET /v1/items with `key` on the server's data plane.
async fn forward_auth(server: &common::TestServer, key: &str) -> common::http::HttpResponse {
    let headers = [
        ("x-forwarded-method", "GET"),
        ("x-forwarded-uri", "/v1/items"),
        ("x-api-key", key),
    ];
    http_request(
        server.server.data_plane_addr(),
        "GET",
        "/forward-auth",
        &headers,
    )
    .await
}

#[tokio::test]
async fn forward_auth_takes_the_same_places_as_check_and_is_refused_with_a_503() {
    let Held {
        server,
        store,
        key,
        data_plane,
        _dir,
    } = held("[admission]\nmax_in_flight = 1\ntimeout = \"1h\"\n").await;

    // A Check holds the only place: forward-auth is refused at once, in HTTP, and counted.
    let stalled = stall_a_check(&store, &data_plane, &key).await;
    let refused = tokio::time::timeout(Duration::from_secs(10), forward_auth(&server, &key))
        .await
        .expect("a call past the limit is answered at once, not queued");
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.header("content-type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&refused.body).unwrap();
    assert_eq!(body["error"]["status"], "UNAVAILABLE");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("limit"),
        "{body}"
    );
    assert_eq!(refusals(&server, "in_flight").await, 1);

    // Released, the place is free again.
    store.hook().hold(false);
    assert_eq!(decision_code(&stalled.await.unwrap()), "OK");
    assert_eq!(forward_auth(&server, &key).await.status, 200);
}

#[tokio::test]
async fn a_forward_auth_call_that_outlasts_the_time_limit_is_answered_503() {
    let Held {
        server, store, key, ..
    } = held("[admission]\ntimeout = \"50ms\"\n").await;

    store.hook().hold(true);
    let late = tokio::time::timeout(Duration::from_secs(10), forward_auth(&server, &key))
        .await
        .expect("the time limit answers the call");
    assert_eq!(late.status, 503, "{}", late.body);
    assert!(late.body.contains("within"), "{}", late.body);
    assert_eq!(refusals(&server, "timeout").await, 1);

    store.hook().hold(false);
    assert_eq!(forward_auth(&server, &key).await.status, 200);
}
