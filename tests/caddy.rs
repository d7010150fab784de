//! Caddy's `forward_auth` in front of an API, keygate's forward-auth deciding: the shipped
//! `examples/caddy/Caddyfile` with only its ports replaced (Debian package `caddy`). What
//! clients get back, and what the API receives.

mod common;

use common::TestServer;
use common::forward_auth::{Keys, assert_allowed, assert_denied, start, start_caddy};
use common::http::http_request;
use common::proxy::ProxyProcess;
use common::upstream::HttpUpstream;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_requests_reach_the_api_with_identity_and_without_the_key() {
    let s = stack().await;
    assert_allowed(s.caddy.listen_addr, &s.api, &s.keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_clients_get_keygate_s_answer() {
    let s = stack().await;
    assert_denied(s.caddy.listen_addr, &s.api, &s.keys).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keygate_stopped_caddy_fails_closed() {
    let Stack {
        keygate,
        caddy,
        api,
        keys,
    } = stack().await;
    keygate.server.shutdown().await.unwrap();
    let key = ("x-api-key", keys.reader.as_str());
    let refused = http_request(caddy.listen_addr, "GET", "/v1/x", &[key]).await;
    assert_eq!(refused.status, 502, "{}", caddy.log());
    assert!(api.requests().is_empty(), "nothing reached the API");
}
