//! Envoy's ext_authz filter in `http_service` mode asking keygate's forward-auth: the
//! shipped `examples/envoy/http-service.yaml` with only its ports replaced, with the pinned
//! Envoy of the test tools. What clients get back, and what the API receives.

mod common;

use common::TestServer;
use common::envoy::{EnvoyProcess, http_service_config, validate};
use common::forward_auth::{Keys, assert_allowed, assert_denied, error_code, start};
use common::http::{HttpResponse, http_request};
use common::upstream::HttpUpstream;

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
    let ok = assert_allowed(s.envoy.listen_addr, &s.api, &s.keys).await;
    assert_eq!(ok.header("x-envoy-auth-headers-to-remove"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_clients_get_keygate_s_status_json_body_and_headers() {
    let s = stack().await;
    let missing = assert_denied(s.envoy.listen_addr, &s.api, &s.keys).await;
    let error_id = missing.header("x-error-id").unwrap_or_default();
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
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_are_judged_as_envoy_normalized_them_and_addresses_as_envoy_saw_them() {
    let s = stack().await;
    let reader = ("x-api-key", s.keys.reader.as_str());
    let scope = s.request("GET", "//v1/../%61dmin/users", &[reader]).await;
    assert_eq!(
        (scope.status, error_code(&scope).as_str()),
        (403, "INSUFFICIENT_SCOPE")
    );
    // The client's own address claims are left of the one Envoy appends.
    let remote = ("x-api-key", s.keys.remote.as_str());
    let claimed = s
        .request(
            "GET",
            "/v1/x",
            &[remote, ("x-forwarded-for", "203.0.113.9")],
        )
        .await;
    assert_eq!(
        (claimed.status, error_code(&claimed).as_str()),
        (403, "IP_NOT_ALLOWED")
    );
    assert!(s.api.requests().is_empty());
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
    let Stack {
        keygate,
        envoy,
        api,
        keys,
    } = stack().await;
    keygate.server.shutdown().await.unwrap();
    let key = ("x-api-key", keys.reader.as_str());
    let refused = http_request(envoy.listen_addr, "GET", "/v1/x", &[key]).await;
    assert_eq!(refused.status, 503, "{}", envoy.log());
    assert!(api.requests().is_empty(), "nothing reached the API");
}
