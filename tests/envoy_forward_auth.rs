//! Envoy's ext_authz filter in `http_service` mode asking keygate's forward-auth: the
//! shipped `examples/envoy/http-service.yaml` with only its ports replaced, with the pinned
//! Envoy of the test tools. What clients get back, and what the API receives.

mod common;

use common::TestServer;
use common::envoy::{EnvoyProcess, http_service_config, validate};
use common::forward_auth::{Keys, error_code, json, start};
use common::http::{HttpResponse, http_request};
use common::upstream::{HttpUpstream, UPSTREAM_BODY};

/// keygate, Envoy in front of an API, and keys to call it with.
struct Stack {
    keygate: TestServer,
    keys: Keys,
    envoy: EnvoyProcess,
    api: HttpUpstream,
}

async fn stack() -> Stack {
    let (keygate, keys) = start("", None).await;
    let api = HttpUpstream::start().await;
    let (data_plane, api_addr) = (keygate.server.data_plane_addr(), api.addr);
    let envoy =
        tokio::task::spawn_blocking(move || EnvoyProcess::start_http_service(data_plane, api_addr))
            .await
            .unwrap();
    Stack {
        keygate,
        keys,
        envoy,
        api,
    }
}

impl Stack {
    async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_request(self.envoy.listen_addr, method, path, headers).await
    }
}

#[test]
fn the_shipped_example_config_is_valid() {
    validate(&http_service_config()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_requests_reach_the_api_with_identity_and_without_the_key() {
    let s = stack().await;
    let bearer = format!("Bearer {}", s.keys.reader);
    let ok = s
        .request(
            "POST",
            "/v1/sites?page=2",
            &[
                ("authorization", &bearer),
                ("x-api-key", "a second credential, never forwarded"),
                ("x-keygate-key-id", "forged"),
                ("x-keygate-plan", "enterprise"),
            ],
        )
        .await;
    assert_eq!(
        (ok.status, ok.body.as_str()),
        (200, UPSTREAM_BODY),
        "{}",
        s.envoy.log()
    );
    assert_eq!(ok.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("9"));
    assert_eq!(ok.header("x-envoy-auth-headers-to-remove"), None);

    let received = s.api.requests();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(
        (upstream.method.as_str(), upstream.path.as_str()),
        ("POST", "/v1/sites?page=2")
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
    assert_eq!(
        upstream
            .headers
            .iter()
            .filter(|(k, _)| k == "x-keygate-key-id")
            .count(),
        1
    );
    // Removed by Envoy, as keygate's x-envoy-auth-headers-to-remove says.
    assert_eq!(upstream.header("authorization"), None);
    assert_eq!(upstream.header("x-api-key"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_clients_get_keygate_s_status_json_body_and_headers() {
    let s = stack().await;
    let missing = s.request("GET", "/v1/x", &[]).await;
    assert_eq!(missing.status, 401, "{}", s.envoy.log());
    assert_eq!(error_code(&missing), "MISSING_CREDENTIALS");
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"keygate\"")
    );
    let error_id = missing.header("x-error-id").expect("x-error-id");
    assert_eq!(json(&missing)["error"]["request_id"], error_id);
    assert_eq!(
        (error_id.len(), error_id.matches('-').count()),
        (36, 4),
        "{error_id} is the x-request-id Envoy generated"
    );
    let log = s.envoy.access_log(1);
    assert!(
        log.iter().any(|entry| entry["request_id"] == error_id),
        "{error_id} is not in the access log: {log:?}"
    );

    let invalid = s
        .request("GET", "/v1/x", &[("x-api-key", "kg_live_nope")])
        .await;
    assert_eq!(
        (invalid.status, error_code(&invalid).as_str()),
        (401, "INVALID_API_KEY")
    );
    let free = s
        .request("GET", "/v1/x", &[("x-api-key", &s.keys.free)])
        .await;
    assert_eq!(
        (free.status, error_code(&free).as_str()),
        (403, "PLAN_FORBIDDEN")
    );
    // keygate's route rule sees the path Envoy normalized, as the upstream would.
    for path in ["/admin/users", "//v1/../%61dmin/users"] {
        let scope = s
            .request("GET", path, &[("x-api-key", &s.keys.reader)])
            .await;
        assert_eq!(
            (scope.status, error_code(&scope).as_str()),
            (403, "INSUFFICIENT_SCOPE"),
            "{path}"
        );
    }
    // The client's own address claims are left of the one Envoy appends.
    let claimed = s
        .request(
            "GET",
            "/v1/x",
            &[
                ("x-api-key", &s.keys.remote),
                ("x-forwarded-for", "203.0.113.9"),
            ],
        )
        .await;
    assert_eq!(
        (claimed.status, error_code(&claimed).as_str()),
        (403, "IP_NOT_ALLOWED")
    );
    assert!(
        s.api.requests().is_empty(),
        "no denied request reached the API"
    );

    for _ in 0..10 {
        let ok = s
            .request(
                "GET",
                "/admin/users",
                &[("x-api-key", &s.keys.administrator)],
            )
            .await;
        assert_eq!(ok.status, 200);
    }
    let limited = s
        .request(
            "GET",
            "/admin/users",
            &[("x-api-key", &s.keys.administrator)],
        )
        .await;
    assert_eq!(
        (limited.status, error_code(&limited).as_str()),
        (429, "RATE_LIMITED")
    );
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(s.api.requests().len(), 10, "the 429 never reached the API");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_routes_are_not_asked_and_take_no_forged_identity() {
    let s = stack().await;
    let public = s
        .request(
            "GET",
            "/public/status",
            &[("x-keygate-key-id", "key_forged")],
        )
        .await;
    assert_eq!(public.status, 200, "{}", s.envoy.log());
    assert_eq!(s.api.requests()[0].header("x-keygate-key-id"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keygate_stopped_envoy_fails_closed_with_503() {
    let s = stack().await;
    let key = ("x-api-key", s.keys.reader.as_str());
    assert_eq!(s.request("GET", "/v1/x", &[key]).await.status, 200);
    let Stack {
        keygate,
        envoy,
        api,
        keys,
    } = s;
    keygate.server.shutdown().await.unwrap();
    let key = ("x-api-key", keys.reader.as_str());
    let refused = http_request(envoy.listen_addr, "GET", "/v1/x", &[key]).await;
    assert_eq!(refused.status, 503, "{}", envoy.log());
    assert_eq!(api.requests().len(), 1, "nothing more reached the API");
}
