//! nginx's `auth_request` in front of an API, keygate's forward-auth deciding: the shipped
//! `examples/nginx/nginx.conf` with only its ports replaced (Debian package `nginx`). What
//! clients get back, and what the API receives.

mod common;

use std::net::IpAddr;

use common::TestServer;
use common::forward_auth::{
    FENCED_CLIENT, Keys, assert_allowed, assert_denied, error_code, json, start, start_nginx,
};
use common::http::{HttpResponse, http_request_from};
use common::proxy::ProxyProcess;
use common::upstream::HttpUpstream;

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
    /// GET `path` through nginx with `headers`, from the loopback address `source`.
    async fn get_from(&self, source: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        let source: IpAddr = source.parse().unwrap();
        http_request_from(Some(source), self.nginx.listen_addr, "GET", path, headers).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_requests_reach_the_api_with_identity_and_without_the_key() {
    let s = stack().await;
    let ok = assert_allowed(s.nginx.listen_addr, &s.api, &s.keys).await;
    assert_eq!(ok.header("x-error"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_clients_get_keygate_s_status_json_body_and_headers() {
    let s = stack().await;
    let missing = assert_denied(s.nginx.listen_addr, &s.api, &s.keys).await;
    let error_id = missing.header("x-error-id").unwrap_or_default();
    assert_eq!(
        (
            error_id.len(),
            error_id.bytes().all(|b| b.is_ascii_hexdigit())
        ),
        (32, true),
        "{error_id} is nginx's $request_id"
    );
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
async fn with_keygate_stopped_nginx_fails_closed_with_503() {
    let Stack {
        keygate,
        nginx,
        api,
        keys,
    } = stack().await;
    keygate.server.shutdown().await.unwrap();
    let key = ("x-api-key", keys.reader.as_str());
    let refused = http_request_from(None, nginx.listen_addr, "GET", "/v1/x", &[key]).await;
    assert_eq!(refused.status, 503, "{}", nginx.log());
    assert_eq!(refused.header("content-type"), Some("application/json"));
    assert_eq!(json(&refused)["error"]["status"], "UNAVAILABLE");
    assert!(api.requests().is_empty(), "nothing reached the API");
}
