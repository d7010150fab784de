//! nginx's `auth_request` in front of an API, keygate's forward-auth deciding: the shipped
//! `examples/nginx/nginx.conf` with only its ports replaced (Debian package `nginx`). What
//! clients get back, and what the API receives.

mod common;

use std::net::IpAddr;

use common::TestServer;
use common::forward_auth::{FENCED_CLIENT, Keys, error_code, json, start, start_nginx};
use common::http::{HttpResponse, http_request_from};
use common::proxy::ProxyProcess;
use common::upstream::{HttpUpstream, UPSTREAM_BODY};

/// keygate, nginx in front of an API, and keys to call it with.
struct Stack {
    keygate: TestServer,
    keys: Keys,
    nginx: ProxyProcess,
    api: HttpUpstream,
}

async fn stack() -> Stack {
    let (keygate, keys) = start("", None).await;
    let api = HttpUpstream::start().await;
    let (data_plane, api_addr) = (keygate.server.data_plane_addr(), api.addr);
    let nginx = tokio::task::spawn_blocking(move || start_nginx(data_plane, api_addr))
        .await
        .unwrap();
    Stack {
        keygate,
        keys,
        nginx,
        api,
    }
}

impl Stack {
    /// GET `path` through nginx with `headers`, from 127.0.0.1.
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.get_from("127.0.0.1", path, headers).await
    }

    /// GET `path` through nginx with `headers`, from the loopback address `source`.
    async fn get_from(&self, source: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let source: IpAddr = source.parse().unwrap();
        http_request_from(Some(source), self.nginx.listen_addr, "GET", path, headers).await
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
                ("x-keygate-plan", "enterprise"),
            ],
        )
        .await;
    assert_eq!(
        (ok.status, ok.body.as_str()),
        (200, UPSTREAM_BODY),
        "{}",
        s.nginx.log()
    );
    assert_eq!(ok.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("9"));
    assert!(ok.header("x-ratelimit-reset").is_some());
    assert_eq!(ok.header("x-error"), None);

    let received = s.api.requests();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(
        (upstream.method.as_str(), upstream.path.as_str()),
        ("GET", "/v1/sites?page=2")
    );
    assert_eq!(
        upstream.header("x-keygate-key-id"),
        Some(s.keys.reader_id.as_str())
    );
    assert_eq!(
        upstream.header("x-keygate-plan"),
        Some("pro"),
        "not forgeable"
    );
    assert_eq!(upstream.header("x-keygate-scopes"), Some("read"));
    assert!(
        (upstream.header("x-keygate-owner-id")).is_some_and(|o| o.starts_with("own_")),
        "{upstream:?}"
    );
    assert_eq!(
        upstream
            .headers
            .iter()
            .filter(|(k, _)| k == "x-keygate-key-id")
            .count(),
        1
    );
    assert_eq!(
        upstream.header("authorization"),
        None,
        "the key stays in nginx"
    );

    let ok = s.get("/v1/x", &[("x-api-key", &s.keys.reader)]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(s.api.requests()[1].header("x-api-key"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_clients_get_keygate_s_status_json_body_and_headers() {
    let s = stack().await;
    let missing = s.get("/v1/x", &[]).await;
    assert_eq!(missing.status, 401, "{}", s.nginx.log());
    assert_eq!(error_code(&missing), "MISSING_CREDENTIALS");
    assert_eq!(missing.header("content-type"), Some("application/json"));
    let challenges: Vec<_> = (missing.headers.iter())
        .filter(|(name, _)| name == "www-authenticate")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(challenges, ["Bearer realm=\"keygate\""]);
    let error_id = missing.header("x-error-id").expect("x-error-id");
    assert_eq!(json(&missing)["error"]["request_id"], error_id);
    assert_eq!(
        (
            error_id.len(),
            error_id.bytes().all(|b| b.is_ascii_hexdigit())
        ),
        (32, true),
        "{error_id} is nginx's $request_id"
    );
    assert!(missing.header("x-error").is_some_and(|m| !m.is_empty()));
    assert_eq!(
        missing.header("x-keygate-status"),
        None,
        "kept between nginx and keygate"
    );

    let invalid = s
        .get("/v1/x", &[("authorization", "Bearer kg_live_nope")])
        .await;
    assert_eq!(
        (invalid.status, error_code(&invalid).as_str()),
        (401, "INVALID_API_KEY")
    );
    assert!((invalid.header("www-authenticate")).is_some_and(|w| w.contains("invalid_token")));
    let free = s.get("/v1/x", &[("x-api-key", &s.keys.free)]).await;
    assert_eq!(
        (free.status, error_code(&free).as_str()),
        (403, "PLAN_FORBIDDEN")
    );
    let scope = s
        .get("/admin/users", &[("x-api-key", &s.keys.reader)])
        .await;
    assert_eq!(
        (scope.status, error_code(&scope).as_str()),
        (403, "INSUFFICIENT_SCOPE")
    );
    assert!(
        s.api.requests().is_empty(),
        "no denied request reached the API"
    );

    // The pro plan allows 10 a second per key; keygate's clock stands still in tests.
    for remaining in (0..10).rev() {
        let ok = s
            .get("/admin/users", &[("x-api-key", &s.keys.administrator)])
            .await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
    }
    let limited = s
        .get("/admin/users", &[("x-api-key", &s.keys.administrator)])
        .await;
    assert_eq!(
        (limited.status, error_code(&limited).as_str()),
        (429, "RATE_LIMITED")
    );
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(s.api.requests().len(), 10, "the 429 never reached the API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_fenced_to_a_network_see_the_address_nginx_saw() {
    let s = stack().await;
    let fenced = ("x-api-key", s.keys.fenced.as_str());
    let inside = s.get_from(FENCED_CLIENT, "/v1/x", &[fenced]).await;
    assert_eq!(inside.status, 200, "{}", inside.body);
    let outside = s.get_from("127.0.0.8", "/v1/x", &[fenced]).await;
    assert_eq!(
        (outside.status, error_code(&outside).as_str()),
        (403, "IP_NOT_ALLOWED")
    );
    // What a client says about itself is kept left of what nginx saw, and not believed.
    for claim in [
        ("x-forwarded-for", FENCED_CLIENT),
        ("x-real-ip", FENCED_CLIENT),
    ] {
        let claimed = s.get_from("127.0.0.8", "/v1/x", &[fenced, claim]).await;
        assert_eq!(claimed.status, 403, "{claim:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_the_path_keygate_judges() {
    let s = stack().await;
    let reader = ("x-api-key", s.keys.reader.as_str());
    for claim in [
        ("x-original-uri", "/public/"),
        ("x-forwarded-uri", "/public/"),
        ("x-original-method", "OPTIONS"),
    ] {
        let refused = s.get("/admin/users", &[reader, claim]).await;
        assert_eq!(
            (refused.status, error_code(&refused).as_str()),
            (403, "INSUFFICIENT_SCOPE"),
            "{claim:?}"
        );
    }
    assert!(s.api.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keygate_stopped_nginx_fails_closed_with_503() {
    let s = stack().await;
    let key = ("x-api-key", s.keys.reader.as_str());
    assert_eq!(s.get("/v1/x", &[key]).await.status, 200);
    let Stack {
        keygate,
        nginx,
        api,
        keys,
    } = s;
    keygate.server.shutdown().await.unwrap();
    let key = ("x-api-key", keys.reader.as_str());
    let refused = http_request_from(None, nginx.listen_addr, "GET", "/v1/x", &[key]).await;
    assert_eq!(refused.status, 503, "{}", nginx.log());
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert_eq!(json(&refused)["error"]["status"], "UNAVAILABLE");
    assert_eq!(api.requests().len(), 1, "nothing more reached the API");
}
