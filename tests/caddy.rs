//! Caddy's `forward_auth` in front of an API, keygate's forward-auth deciding: the shipped
//! `examples/caddy/Caddyfile` with only its ports replaced (Debian package `caddy`). What
//! clients get back, and what the API receives.

mod common;

use common::TestServer;
use common::forward_auth::{Keys, error_code, start, start_caddy};
use common::http::{HttpResponse, http_request};
use common::proxy::ProxyProcess;
use common::upstream::{HttpUpstream, UPSTREAM_BODY};

/// keygate, Caddy in front of an API, and keys to call it with.
struct Stack {
    keygate: TestServer,
    keys: Keys,
    caddy: ProxyProcess,
    api: HttpUpstream,
}

async fn stack() -> Stack {
    let (keygate, keys) = start("", None).await;
    let api = HttpUpstream::start().await;
    let (data_plane, api_addr) = (keygate.server.data_plane_addr(), api.addr);
    let caddy = tokio::task::spawn_blocking(move || start_caddy(data_plane, api_addr))
        .await
        .unwrap();
    Stack {
        keygate,
        keys,
        caddy,
        api,
    }
}

impl Stack {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_request(self.caddy.listen_addr, "GET", path, headers).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_requests_reach_the_api_with_identity_and_without_the_key() {
    let s = stack().await;
    let bearer = format!("Bearer {}", s.keys.reader);
    let ok = s
        .get(
            "/v1/sites?page=2",
            &[
                ("authorization", &bearer),
                ("x-keygate-key-id", "forged"),
                ("x-keygate-scopes", "admin"),
            ],
        )
        .await;
    assert_eq!(
        (ok.status, ok.body.as_str()),
        (200, UPSTREAM_BODY),
        "{}",
        s.caddy.log()
    );
    assert_eq!(ok.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("9"));

    let received = s.api.requests();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(upstream.path, "/v1/sites?page=2");
    assert_eq!(
        upstream.header("x-keygate-key-id"),
        Some(s.keys.reader_id.as_str())
    );
    assert_eq!(
        upstream.header("x-keygate-scopes"),
        Some("read"),
        "not forgeable"
    );
    assert_eq!(upstream.header("x-keygate-plan"), Some("pro"));
    assert_eq!(
        upstream.header("authorization"),
        None,
        "the key stays in Caddy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_clients_get_keygate_s_answer() {
    let s = stack().await;
    let missing = s.get("/v1/x", &[]).await;
    assert_eq!(
        (missing.status, error_code(&missing).as_str()),
        (401, "MISSING_CREDENTIALS")
    );
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"keygate\"")
    );
    assert!(missing.header("x-error-id").is_some());
    let free = s.get("/v1/x", &[("x-api-key", &s.keys.free)]).await;
    assert_eq!(
        (free.status, error_code(&free).as_str()),
        (403, "PLAN_FORBIDDEN")
    );
    // The client's own X-Original-URI is not passed; Caddy's X-Forwarded-Uri is the truth.
    let scope = s
        .get(
            "/admin/users",
            &[
                ("x-api-key", &s.keys.reader),
                ("x-original-uri", "/public/"),
            ],
        )
        .await;
    assert_eq!(
        (scope.status, error_code(&scope).as_str()),
        (403, "INSUFFICIENT_SCOPE")
    );
    for _ in 0..10 {
        assert_eq!(
            s.get("/v1/x", &[("x-api-key", &s.keys.reader)])
                .await
                .status,
            200
        );
    }
    let limited = s.get("/v1/x", &[("x-api-key", &s.keys.reader)]).await;
    assert_eq!(
        (limited.status, error_code(&limited).as_str()),
        (429, "RATE_LIMITED")
    );
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        s.api.requests().len(),
        10,
        "no denied request reached the API"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keygate_stopped_caddy_fails_closed() {
    let s = stack().await;
    let Stack {
        keygate,
        caddy,
        api,
        keys,
    } = s;
    keygate.server.shutdown().await.unwrap();
    let key = ("x-api-key", keys.reader.as_str());
    let refused = http_request(caddy.listen_addr, "GET", "/v1/x", &[key]).await;
    assert_eq!(refused.status, 502, "{}", caddy.log());
    assert!(api.requests().is_empty(), "nothing reached the API");
}
