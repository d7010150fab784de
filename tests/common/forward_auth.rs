//! What the forward-auth tests share: keygate trusting the proxies on 127.0.0.1 and asking
//! the `admin` scope under `/admin/`, keys to call it with, and the proxies that ask it
//! (nginx and Caddy, each running its shipped example with only its ports replaced).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use keygate::proto;
use keygate::store::Store;
use tonic::transport::Channel;

use super::http::{HttpResponse, http_request};
use super::proxy::{self, ProxyProcess, example, free_loopback_addr, with_addresses};
use super::tools::system_tool;
use super::upstream::{HttpUpstream, UPSTREAM_BODY};
use super::{ADMIN_TOKEN, Options, TestServer, admin, create_owner, start_with};

/// keygate's forward-auth settings in the tests: the proxies connect from 127.0.0.1 (a
/// client can be made to come from elsewhere in 127.0.0.0/8), and `/admin/` needs `admin`.
pub const CONFIG: &str = r#"
[forward_auth]
trusted_proxies = ["127.0.0.1/32"]

[[routes]]
path_prefix = "/admin/"
scopes = ["admin"]
"#;

/// The address the fenced key is bound to: a loopback address other than the proxies'.
pub const FENCED_CLIENT: &str = "127.0.0.7";

/// Keys of every kind a test needs, on the `pro` plan (10 requests a second per key)
/// unless said otherwise.
pub struct Keys {
    /// Scope `read`.
    pub reader: String,
    /// The reader's key id.
    pub reader_id: String,
    /// Scopes `read` and `admin`.
    pub administrator: String,
    /// A key whose owner's plan has no API access.
    pub free: String,
    /// A key usable only from [`FENCED_CLIENT`].
    pub fenced: String,
    /// A key usable only from 203.0.113.0/24, an address no test client has.
    pub remote: String,
}

/// keygate with [`CONFIG`] (and `extra` TOML), over `store` when given, and the keys.
pub async fn start(extra: &str, store: Option<Arc<dyn Store>>) -> (TestServer, Keys) {
    let config = format!("{CONFIG}\n{extra}");
    let keygate = start_with(Options {
        admin_token: Some(ADMIN_TOKEN),
        extra_config: &config,
        store,
        ..Options::default()
    })
    .await;
    let keys = issue_keys(&mut keygate.client().await).await;
    (keygate, keys)
}

/// Creates the owners and keys of [`Keys`].
pub async fn issue_keys(manage: &mut proto::key_manager_client::KeyManagerClient<Channel>) -> Keys {
    let pro = create_owner(manage, "acme", "pro").await.id;
    let free_owner = create_owner(manage, "hobbyist", "free").await.id;
    let mut key = async |owner_id: &str, scopes: &[&str], cidrs: &[&str]| {
        let created = manage
            .create_key(admin(proto::CreateKeyRequest {
                owner_id: owner_id.into(),
                name: "forward-auth".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                allowed_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        (created.secret, created.key.unwrap().id)
    };
    let (reader, reader_id) = key(&pro, &["read"], &[]).await;
    let (administrator, _) = key(&pro, &["read", "admin"], &[]).await;
    let (free, _) = key(&free_owner, &[], &[]).await;
    let (fenced, _) = key(&pro, &["read"], &[&format!("{FENCED_CLIENT}/32")]).await;
    let (remote, _) = key(&pro, &["read"], &["203.0.113.0/24"]).await;
    Keys {
        reader,
        reader_id,
        administrator,
        free,
        fenced,
        remote,
    }
}

/// The response's body as JSON.
pub fn json(response: &HttpResponse) -> serde_json::Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {} {:?}", response.status, response.body))
}

/// The `error.code` of a denial's JSON body.
pub fn error_code(response: &HttpResponse) -> String {
    json(response)["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {}", response.body))
        .to_owned()
}

/// Sends `request` (a forward-auth call, no gRPC content type) over `channel`, an HTTP/2
/// connection to the data plane (h2c or TLS), and returns the answer.
pub async fn send(
    mut channel: Channel,
    request: http::Request<tonic::body::Body>,
) -> http::Response<tonic::body::Body> {
    std::future::poll_fn(|cx| tower::Service::poll_ready(&mut channel, cx))
        .await
        .unwrap();
    tower::Service::call(&mut channel, request).await.unwrap()
}

/// What every proxy example must do with an allowed request: a POST with the reader's key as
/// a bearer token, a second credential and forged identity headers reaches the API once,
/// with keygate's identity and without any credential, and the client gets the API's answer
/// with its rate-limit state. Returns the client's response.
pub async fn assert_allowed(proxy: SocketAddr, api: &HttpUpstream, keys: &Keys) -> HttpResponse {
    let bearer = format!("Bearer {}", keys.reader);
    let headers = [
        ("authorization", bearer.as_str()),
        ("x-api-key", "a second credential, never forwarded"),
        ("x-keygate-key-id", "key_forged"),
        ("x-keygate-plan", "enterprise"),
        ("x-keygate-scopes", "admin"),
    ];
    let ok = http_request(proxy, "POST", "/v1/sites?page=2", &headers).await;
    assert_eq!(
        (ok.status, ok.body.as_str()),
        (200, UPSTREAM_BODY),
        "{ok:?}"
    );
    assert_eq!(ok.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(ok.header("x-ratelimit-remaining"), Some("9"));

    let received = api.requests();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(
        (upstream.method.as_str(), upstream.path.as_str()),
        ("POST", "/v1/sites?page=2")
    );
    assert_eq!(
        upstream.header("x-keygate-key-id"),
        Some(keys.reader_id.as_str())
    );
    assert_eq!(
        upstream.header("x-keygate-plan"),
        Some("pro"),
        "not forgeable"
    );
    assert_eq!(
        upstream.header("x-keygate-scopes"),
        Some("read"),
        "not forgeable"
    );
    assert!(
        (upstream.header("x-keygate-owner-id")).is_some_and(|o| o.starts_with("own_")),
        "{upstream:?}"
    );
    for name in ["x-keygate-key-id", "x-keygate-plan", "x-keygate-scopes"] {
        let count = upstream.headers.iter().filter(|(k, _)| k == name).count();
        assert_eq!(count, 1, "{name}");
    }
    for credential in ["authorization", "x-api-key"] {
        assert_eq!(
            upstream.header(credential),
            None,
            "{credential} reached the API"
        );
    }
    ok
}

/// What every proxy example must do with denied requests: the client gets keygate's status
/// (401, 403, 429), JSON body and headers, whatever path it claims in headers of its own,
/// and nothing reaches the API. Returns the answer to a request without a key.
pub async fn assert_denied(proxy: SocketAddr, api: &HttpUpstream, keys: &Keys) -> HttpResponse {
    let missing = http_request(proxy, "GET", "/v1/x", &[]).await;
    assert_eq!(missing.status, 401, "{missing:?}");
    assert_eq!(error_code(&missing), "MISSING_CREDENTIALS");
    assert_eq!(missing.header("content-type"), Some("application/json"));
    let challenges: Vec<&str> = (missing.headers.iter())
        .filter(|(name, _)| name == "www-authenticate")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(challenges, ["Bearer realm=\"keygate\""]);
    let error_id = missing.header("x-error-id").expect("x-error-id");
    assert_eq!(json(&missing)["error"]["request_id"], error_id);
    assert!(missing.header("x-error").is_some_and(|m| !m.is_empty()));
    assert_eq!(missing.header("x-keygate-status"), None);

    let invalid = http_request(
        proxy,
        "GET",
        "/v1/x",
        &[("authorization", "Bearer kg_live_nope")],
    )
    .await;
    assert_eq!(
        (invalid.status, error_code(&invalid).as_str()),
        (401, "INVALID_API_KEY")
    );
    assert!((invalid.header("www-authenticate")).is_some_and(|w| w.contains("invalid_token")));
    let free = http_request(proxy, "GET", "/v1/x", &[("x-api-key", &keys.free)]).await;
    assert_eq!(
        (free.status, error_code(&free).as_str()),
        (403, "PLAN_FORBIDDEN")
    );
    let reader = ("x-api-key", keys.reader.as_str());
    for claim in [
        None,
        Some(("x-original-uri", "/public/")),
        Some(("x-forwarded-uri", "/public/")),
        Some(("x-original-method", "OPTIONS")),
    ] {
        let headers: Vec<_> = [reader].into_iter().chain(claim).collect();
        let scope = http_request(proxy, "GET", "/admin/users", &headers).await;
        assert_eq!(
            (scope.status, error_code(&scope).as_str()),
            (403, "INSUFFICIENT_SCOPE"),
            "{claim:?}"
        );
    }
    assert!(
        api.requests().is_empty(),
        "no denied request reached the API"
    );

    // The pro plan allows 10 a second per key; keygate's clock stands still in tests.
    let administrator = ("x-api-key", keys.administrator.as_str());
    for remaining in (0..10).rev() {
        let ok = http_request(proxy, "GET", "/admin/users", &[administrator]).await;
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
    }
    let limited = http_request(proxy, "GET", "/admin/users", &[administrator]).await;
    assert_eq!(
        (limited.status, error_code(&limited).as_str()),
        (429, "RATE_LIMITED")
    );
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(api.requests().len(), 10, "the 429 never reached the API");
    missing
}

/// Starts nginx with `examples/nginx/nginx.conf`, asking `keygate` in front of `upstream`.
pub fn start_nginx(keygate: SocketAddr, upstream: SocketAddr) -> ProxyProcess {
    let listen = free_loopback_addr();
    let example = std::fs::read_to_string(example("nginx/nginx.conf")).unwrap();
    let config = with_addresses(
        &example,
        &[(8080, listen), (9191, keygate), (8081, upstream)],
    );
    proxy::start_nginx(Command::new(system_tool("nginx")), &config, listen)
}

/// Starts Caddy with `examples/caddy/Caddyfile`, asking `keygate` in front of `upstream`.
pub fn start_caddy(keygate: SocketAddr, upstream: SocketAddr) -> ProxyProcess {
    let listen = free_loopback_addr();
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(example("caddy/Caddyfile")).unwrap();
    let config = with_addresses(
        &example,
        &[(8080, listen), (9191, keygate), (8081, upstream)],
    );
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(system_tool("caddy"));
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        // Caddy keeps its state (autosaved config, certificates) under these.
        .env("XDG_CONFIG_HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("HOME", dir.path());
    ProxyProcess::start("caddy", command, listen).keeping(dir)
}
