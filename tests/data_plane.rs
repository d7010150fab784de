//! The data plane over the wire: Envoy's ext_authz Check and keygate's Authorize, against an
//! in-process server with a manual clock. Envoy itself is in `tests/envoy.rs`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::authorize::{authorize, try_authorize};
use common::check::{REQUEST_ID, check_request, decision_code, metadata_str};
use common::faulty::faulty;
use common::{ADMIN_TOKEN, Options, T0, TestServer, admin, create_owner, start_with};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use keygate::proto;
use keygate::store::embedded::EmbeddedStore;
use prost_types::{Duration, FieldMask};

/// Route rules for seed 002's read-only vs full access, and a gRPC service.
const ROUTES: &str = r#"
[[plans]]
name = "unmetered"

[[routes]]
methods = ["GET", "HEAD"]
path_prefix = "/v1/"
scopes = ["read"]

[[routes]]
path_prefix = "/v1/"
scopes = ["write"]

[[routes]]
path_prefix = "/billing.v1.Invoices/"
scopes = ["billing"]

# The tests call Authorize from loopback as a gateway would: its client_address is believed.
[authorize.trusted_callers]
networks = ["127.0.0.0/8"]
"#;

/// A server with an owner on the "unmetered" plan (no rate windows, so the clock can stand still), one on "free", and clients for everything.
struct Fixture {
    server: TestServer,
    manage: proto::key_manager_client::KeyManagerClient<tonic::transport::Channel>,
    check: AuthorizationClient<tonic::transport::Channel>,
    data_plane: tonic::transport::Channel,
    owner: String,
    free_owner: String,
}

impl Fixture {
    async fn new() -> Fixture {
        Self::with(Options::default()).await
    }

    async fn with(options: Options<'_>) -> Fixture {
        let server = start_with(Options {
            admin_token: Some(ADMIN_TOKEN),
            extra_config: if options.extra_config.is_empty() {
                ROUTES
            } else {
                options.extra_config
            },
            ..options
        })
        .await;
        let mut manage = server.client().await;
        let channel = server.data_plane().await;
        let owner_id = create_owner(&mut manage, "acme", "unmetered").await.id;
        let free_owner = create_owner(&mut manage, "hobbyist", "free").await.id;
        Fixture {
            manage,
            check: AuthorizationClient::new(channel.clone()),
            data_plane: channel,
            server,
            owner: owner_id,
            free_owner,
        }
    }

    async fn key(&mut self, request: proto::CreateKeyRequest) -> (String, proto::Key) {
        let created = self
            .manage
            .create_key(admin(proto::CreateKeyRequest {
                owner_id: if request.owner_id.is_empty() {
                    self.owner.clone()
                } else {
                    request.owner_id.clone()
                },
                name: "test key".into(),
                ..request
            }))
            .await
            .unwrap()
            .into_inner();
        (created.secret, created.key.unwrap())
    }

    async fn reader(&mut self) -> (String, proto::Key) {
        self.key(proto::CreateKeyRequest {
            scopes: vec!["read".into()],
            ..Default::default()
        })
        .await
    }

    async fn check(&mut self, request: CheckRequest) -> CheckResponse {
        self.check.check(request).await.unwrap().into_inner()
    }

    async fn code_of(&mut self, request: CheckRequest) -> String {
        decision_code(&self.check(request).await)
    }

    fn stats(&self) -> (u64, u64) {
        let app = self.server.server.app();
        (
            app.authorizer.keys().hasher().verifications(),
            app.authorizer.keys().stats().misses.load(Ordering::Relaxed),
        )
    }
}

/// A Check request as Envoy sends it: lower-case headers, path with query, a peer address.
fn request(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    check_request("203.0.113.9", method, path, headers, &[])
}

fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// The denial's HTTP status, headers and JSON body.
fn denial(response: &CheckResponse) -> (i32, HashMap<String, String>, serde_json::Value) {
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => (
            denied.status.as_ref().unwrap().code,
            denied
                .headers
                .iter()
                .map(|h| {
                    let h = h.header.as_ref().unwrap();
                    (h.key.clone(), h.value.clone())
                })
                .collect(),
            serde_json::from_str(&denied.body).unwrap(),
        ),
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test]
async fn a_valid_key_is_allowed_with_identity_headers_and_credentials_removed() {
    let mut f = Fixture::new().await;
    let (secret, key) = f
        .key(proto::CreateKeyRequest {
            scopes: vec!["read".into(), "write".into()],
            ..Default::default()
        })
        .await;
    let response = f
        .check(request(
            "GET",
            "/v1/sites?page=2",
            &[
                ("authorization", &bearer(&secret)),
                ("x-keygate-key-id", "forged"),
                ("x-keygate-owner-id", "forged"),
            ],
        ))
        .await;
    assert_eq!(response.status.as_ref().unwrap().code, 0);
    assert_eq!(decision_code(&response), "OK");
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected an OK response: {response:?}");
    };
    let set: HashMap<_, _> = ok
        .headers
        .iter()
        .map(|h| {
            let header = h.header.as_ref().unwrap();
            // Overwrite, so whatever the client sent under these names is replaced.
            assert_eq!(h.append_action, 2, "{} must overwrite", header.key);
            (header.key.as_str(), header.value.as_str())
        })
        .collect();
    assert_eq!(set["x-keygate-key-id"], key.id);
    assert_eq!(set["x-keygate-owner-id"], f.owner);
    assert_eq!(set["x-keygate-plan"], "unmetered");
    assert_eq!(set["x-keygate-scopes"], "read,write");
    for credential_header in ["authorization", "x-api-key", "api-key", "api-secret"] {
        assert!(
            ok.headers_to_remove.iter().any(|h| h == credential_header),
            "{credential_header}"
        );
    }
    for (field, expected) in [
        ("key_id", key.id.as_str()),
        ("owner_id", f.owner.as_str()),
        ("plan", "unmetered"),
    ] {
        assert_eq!(metadata_str(&response, field), expected, "{field}");
    }
    assert!(
        !format!("{response:?}").contains(&secret[15..]),
        "the secret never comes back"
    );
}

#[tokio::test]
async fn every_credential_location_works() {
    let mut f = Fixture::new().await;
    let (secret, _) = f.reader().await;
    assert_eq!(
        f.code_of(request("GET", "/v1/x", &[("x-api-key", &secret)]))
            .await,
        "OK"
    );
    let pair = f
        .manage
        .create_key(admin(proto::CreateKeyRequest {
            owner_id: f.owner.clone(),
            name: "pair".into(),
            scopes: vec!["read".into()],
            pair: true,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let headers = [
        ("api-key", pair.api_key.as_str()),
        ("api-secret", pair.api_secret.as_str()),
    ];
    assert_eq!(f.code_of(request("GET", "/v1/x", &headers)).await, "OK");
    let wrong = [("api-key", pair.api_key.as_str()), ("api-secret", "nope")];
    assert_eq!(
        f.code_of(request("GET", "/v1/x", &wrong)).await,
        "INVALID_API_KEY"
    );
    // A route may accept only some sources.
    let only_pair = check_request(
        "203.0.113.9",
        "GET",
        "/v1/x",
        &[("x-api-key", &secret)],
        &[("keygate.credentials", "pair")],
    );
    assert_eq!(f.code_of(only_pair).await, "MISSING_CREDENTIALS");
}

#[tokio::test]
async fn denials_carry_status_json_body_and_error_headers() {
    let mut f = Fixture::new().await;
    let missing = f.check(request("GET", "/v1/x", &[])).await;
    assert_eq!(
        missing.status.as_ref().unwrap().code,
        tonic::Code::Unauthenticated as i32
    );
    let (status, headers, body) = denial(&missing);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "MISSING_CREDENTIALS");
    assert_eq!(body["error"]["request_id"], "req-42");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-error-id"], "req-42");
    assert!(!headers["x-error"].is_empty());
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"keygate\"");

    let garbage = f
        .check(request(
            "GET",
            "/v1/x",
            &[("authorization", "Bearer twa_not-a-keygate-key")],
        ))
        .await;
    let (status, headers, body) = denial(&garbage);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("INVALID_API_KEY"))
    );
    assert!(headers["www-authenticate"].contains("invalid_token"));

    let (secret, _) = f
        .key(proto::CreateKeyRequest {
            owner_id: f.free_owner.clone(),
            ..Default::default()
        })
        .await;
    let forbidden = f
        .check(request(
            "GET",
            "/v1/x",
            &[("authorization", &bearer(&secret))],
        ))
        .await;
    assert_eq!(
        forbidden.status.as_ref().unwrap().code,
        tonic::Code::PermissionDenied as i32
    );
    let (status, headers, body) = denial(&forbidden);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("PLAN_FORBIDDEN"))
    );
    assert!(!headers.contains_key("www-authenticate"));
}

/// An admin area whose upstream serves any case, a read-only API and a gRPC service.
const ADMIN_ROUTES: &str = r#"
[[plans]]
name = "unmetered"

[[routes]]
path_prefix = "/admin/"
case_sensitive = false
scopes = ["admin"]

[[routes]]
path_prefix = "/v1/"
scopes = ["read"]

[[routes]]
path_prefix = "/billing.v1.Invoices/"
scopes = ["billing"]
"#;

/// Ways to write `/admin/x` that some server serves as `/admin/x`, `/x` aside: each needs
/// the scope of the rule on `/admin/`.
const ADMIN_SPELLINGS: &[&str] = &[
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
    "/../../admin/x",
    "/admin/x/..",
    "/admin%2fx",
    "/admin%5Cx",
    "/v1/..%2Fadmin/x",
    "/v1/..%5cadmin/x",
    "/v1\\..\\admin/x",
    "/admin//../x",
    "//V1/./..//%41dmin/./x?next=/v1/",
];

#[tokio::test]
async fn no_spelling_of_a_path_gets_past_its_route_rule() {
    let mut f = Fixture::with(Options {
        extra_config: ADMIN_ROUTES,
        ..Options::default()
    })
    .await;
    let (reader, _) = f.reader().await;
    let (administrator, _) = f
        .key(proto::CreateKeyRequest {
            scopes: vec!["read".into(), "admin".into()],
            ..Default::default()
        })
        .await;
    for spelling in ADMIN_SPELLINGS {
        for method in ["GET", "POST"] {
            assert_eq!(
                f.code_of(request(method, spelling, &[("x-api-key", &reader)]))
                    .await,
                "INSUFFICIENT_SCOPE",
                "{method} {spelling:?} without the admin scope"
            );
            assert_eq!(
                f.code_of(request(method, spelling, &[("x-api-key", &administrator)]))
                    .await,
                "OK",
                "{method} {spelling:?} with it"
            );
        }
        let typed = authorize(
            &f.data_plane,
            proto::AuthorizeRequest {
                key: reader.clone(),
                method: "GET".into(),
                path: spelling.to_string(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(
            typed.code,
            proto::DecisionCode::InsufficientScope as i32,
            "Authorize {spelling:?}"
        );
    }

    // A path keygate cannot read (a broken escape, a control character) needs every
    // rule's scopes.
    let (everything, _) = f
        .key(proto::CreateKeyRequest {
            scopes: vec!["read".into(), "admin".into(), "billing".into()],
            ..Default::default()
        })
        .await;
    for unreadable in ["/%61dmin%zz/x", "/adm%00in/x", "/v1/%", "/v1/\tx"] {
        for (key, expected) in [
            (&reader, "INSUFFICIENT_SCOPE"),
            (&administrator, "INSUFFICIENT_SCOPE"),
            (&everything, "OK"),
        ] {
            assert_eq!(
                f.code_of(request("GET", unreadable, &[("x-api-key", key)]))
                    .await,
                expected,
                "{unreadable:?}"
            );
        }
    }

    // What the reader may call still works, however it is spelled; the query never matches.
    for path in [
        "/v1/sites",
        "/v1/sites?next=/admin/x",
        "//v1/./sites",
        "/v1/%73ites",
        "/admin2/x",
        "/administrators",
    ] {
        assert_eq!(
            f.code_of(request("GET", path, &[("x-api-key", &reader)]))
                .await,
            "OK",
            "{path}"
        );
    }
    // gRPC paths keep their rule, by service; a case-sensitive rule ignores other cases.
    let grpc = |path: &str| request("POST", path, &[("x-api-key", &administrator)]);
    assert_eq!(
        f.code_of(grpc("/billing.v1.Invoices/Create")).await,
        "INSUFFICIENT_SCOPE"
    );
    assert_eq!(f.code_of(grpc("/Billing.v1.Invoices/Create")).await, "OK");
}

#[tokio::test]
async fn the_error_id_is_the_requests_x_request_id() {
    let mut f = Fixture::new().await;
    // Envoy sends its internal stream id as well; the client and the access log know the
    // request by its x-request-id.
    let with_stream_id = |mut check: CheckRequest, stream_id: &str| {
        let attributes = check.attributes.as_mut().unwrap();
        let http = attributes.request.as_mut().unwrap().http.as_mut().unwrap();
        http.id = stream_id.into();
        check
    };
    let both = f
        .check(with_stream_id(request("GET", "/v1/x", &[]), "1234567"))
        .await;
    let (_, headers, body) = denial(&both);
    assert_eq!(headers["x-error-id"], REQUEST_ID);
    assert_eq!(body["error"]["request_id"], REQUEST_ID);

    // Without the header, Envoy's id is the best there is; without either, a new one.
    let without_header = |stream_id: &str| {
        let mut check = with_stream_id(request("GET", "/v1/x", &[]), stream_id);
        let attributes = check.attributes.as_mut().unwrap();
        let http = attributes.request.as_mut().unwrap().http.as_mut().unwrap();
        http.headers.remove("x-request-id");
        check
    };
    let (_, headers, body) = denial(&f.check(without_header("1234567")).await);
    assert_eq!(headers["x-error-id"], "1234567");
    assert_eq!(body["error"]["request_id"], "1234567");
    let (_, headers, body) = denial(&f.check(without_header("")).await);
    let made_up = &headers["x-error-id"];
    assert_eq!(made_up.len(), 32, "{made_up}");
    assert_eq!(body["error"]["request_id"], made_up.as_str());
}

#[tokio::test]
async fn every_decision_code() {
    let mut f = Fixture::new().await;
    let get = |secret: &str| {
        request(
            "GET",
            "/v1/sites",
            &[("authorization", &format!("Bearer {secret}"))],
        )
    };
    let (reader, reader_key) = f.reader().await;
    assert_eq!(f.code_of(get(&reader)).await, "OK");

    // Not a keygate key at all, a typo, a well-formed key nobody issued, a wrong secret.
    assert_eq!(f.code_of(get("twa_abcdef")).await, "INVALID_API_KEY");
    let mut typo = reader.clone().into_bytes();
    typo[20] = if typo[20] == b'a' { b'b' } else { b'a' };
    assert_eq!(
        f.code_of(get(&String::from_utf8(typo).unwrap())).await,
        "INVALID_API_KEY"
    );
    let profile = keygate::key::format::default_profile();
    assert_eq!(
        f.code_of(get(profile.issue("AAAAAAAAAAAA").text())).await,
        "INVALID_API_KEY"
    );
    assert_eq!(
        f.code_of(get(profile.issue(&reader_key.id).text())).await,
        "INVALID_API_KEY"
    );

    // Missing parts of the request.
    assert_eq!(
        f.code_of(request("GET", "/v1/sites", &[])).await,
        "MISSING_CREDENTIALS"
    );
    let mut no_http = get(&reader);
    no_http.attributes.as_mut().unwrap().request = None;
    assert_eq!(f.code_of(no_http).await, "MISSING_CREDENTIALS");
    let mut no_peer = get(&reader);
    no_peer.attributes.as_mut().unwrap().source = None;
    assert_eq!(f.code_of(no_peer).await, "MISSING_CREDENTIALS");
    assert_eq!(
        f.code_of(CheckRequest::default()).await,
        "MISSING_CREDENTIALS"
    );

    // Scopes from route rules: read for GET, write for the rest, per gRPC service.
    assert_eq!(
        f.code_of(request("DELETE", "/v1/sites/1", &[("x-api-key", &reader)]))
            .await,
        "INSUFFICIENT_SCOPE"
    );
    assert_eq!(
        f.code_of(request(
            "POST",
            "/billing.v1.Invoices/Create",
            &[("x-api-key", &reader)]
        ))
        .await,
        "INSUFFICIENT_SCOPE"
    );
    // ... and from the route's context extensions.
    let admin_route = check_request(
        "203.0.113.9",
        "GET",
        "/v1/admin",
        &[("x-api-key", &reader)],
        &[("keygate.scopes", "read, admin")],
    );
    assert_eq!(f.code_of(admin_route).await, "INSUFFICIENT_SCOPE");

    let (fenced, _) = f
        .key(proto::CreateKeyRequest {
            scopes: vec!["read".into()],
            allowed_cidrs: vec!["198.51.100.0/24".into()],
            ..Default::default()
        })
        .await;
    let inside = check_request(
        "198.51.100.20",
        "GET",
        "/v1/x",
        &[("x-api-key", &fenced)],
        &[],
    );
    assert_eq!(f.code_of(inside).await, "OK");
    assert_eq!(
        f.code_of(request("GET", "/v1/x", &[("x-api-key", &fenced)]))
            .await,
        "IP_NOT_ALLOWED"
    );

    let (pending, _) = f
        .key(proto::CreateKeyRequest {
            require_activation: true,
            ..Default::default()
        })
        .await;
    assert_eq!(f.code_of(get(&pending)).await, "KEY_DISABLED");

    let (free, _) = f
        .key(proto::CreateKeyRequest {
            owner_id: f.free_owner.clone(),
            ..Default::default()
        })
        .await;
    assert_eq!(f.code_of(get(&free)).await, "PLAN_FORBIDDEN");

    let (expiring, _) = f
        .key(proto::CreateKeyRequest {
            scopes: vec!["read".into()],
            expiry: Some(proto::create_key_request::Expiry::ExpireInDays(1)),
            ..Default::default()
        })
        .await;
    assert_eq!(f.code_of(get(&expiring)).await, "OK");
    f.server.clock.advance(86_400);
    assert_eq!(
        f.code_of(get(&expiring)).await,
        "EXPIRED_API_KEY",
        "expiry is judged at each request, even for a cached key"
    );

    f.manage
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: Some(proto::Owner {
                id: f.owner.clone(),
                state: proto::OwnerState::Disabled as i32,
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["state".into()],
            }),
        }))
        .await
        .unwrap();
    assert_eq!(
        f.code_of(get(&reader)).await,
        "OWNER_DISABLED",
        "disabling the owner takes effect at once"
    );
}

#[tokio::test]
async fn management_changes_take_effect_on_the_very_next_request() {
    let mut f = Fixture::new().await;
    let get = |secret: &str| request("GET", "/v1/sites", &[("x-api-key", secret)]);
    let (secret, key) = f.reader().await;
    assert_eq!(f.code_of(get(&secret)).await, "OK");

    let disable = |disabled: bool| {
        admin(proto::UpdateKeyRequest {
            key: Some(proto::Key {
                id: key.id.clone(),
                ..Default::default()
            }),
            update_mask: Some(FieldMask {
                paths: vec!["disabled".into()],
            }),
            disabled,
        })
    };
    f.manage.update_key(disable(true)).await.unwrap();
    assert_eq!(f.code_of(get(&secret)).await, "KEY_DISABLED");
    f.manage.update_key(disable(false)).await.unwrap();
    assert_eq!(f.code_of(get(&secret)).await, "OK");

    let scopes = admin(proto::UpdateKeyRequest {
        key: Some(proto::Key {
            id: key.id.clone(),
            scopes: vec![],
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: vec!["scopes".into()],
        }),
        disabled: false,
    });
    f.manage.update_key(scopes).await.unwrap();
    assert_eq!(f.code_of(get(&secret)).await, "INSUFFICIENT_SCOPE");

    let rotated = f
        .manage
        .rotate_key(admin(proto::RotateKeyRequest {
            id: key.id.clone(),
            grace: Some(Duration {
                seconds: 300,
                nanos: 0,
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .secret;
    let anywhere = |secret: &str| request("GET", "/other", &[("x-api-key", secret)]);
    assert_eq!(
        f.code_of(anywhere(&secret)).await,
        "OK",
        "the old secret works during the grace period"
    );
    assert_eq!(f.code_of(anywhere(&rotated)).await, "OK");
    f.server.clock.advance(300);
    assert_eq!(
        f.code_of(anywhere(&secret)).await,
        "EXPIRED_API_KEY",
        "then it answers expired"
    );
    assert_eq!(f.code_of(anywhere(&rotated)).await, "OK");

    f.manage
        .revoke_key(admin(proto::RevokeKeyRequest { id: key.id.clone() }))
        .await
        .unwrap();
    assert_eq!(f.code_of(anywhere(&rotated)).await, "INVALID_API_KEY");

    let (other, other_key) = f.reader().await;
    assert_eq!(f.code_of(anywhere(&other)).await, "OK");
    f.manage
        .delete_key(admin(proto::DeleteKeyRequest { id: other_key.id }))
        .await
        .unwrap();
    assert_eq!(f.code_of(anywhere(&other)).await, "INVALID_API_KEY");
}

#[tokio::test]
async fn warm_keys_and_repeated_bad_keys_cost_no_argon2() {
    let mut f = Fixture::new().await;
    let (secret, key) = f.reader().await;
    let get = |secret: &str| request("GET", "/v1/sites", &[("x-api-key", secret)]);

    let (verifications, misses) = f.stats();
    assert_eq!(f.code_of(get(&secret)).await, "OK");
    assert_eq!(
        f.stats(),
        (verifications + 1, misses + 1),
        "the first request verifies once"
    );
    for _ in 0..50 {
        assert_eq!(f.code_of(get(&secret)).await, "OK");
    }
    assert_eq!(
        f.stats(),
        (verifications + 1, misses + 1),
        "a warm key never runs argon2 again"
    );

    // A flood of one wrong secret for a real key id: one store read, refused by the
    // record's secret check without argon2.
    let wrong = keygate::key::format::default_profile().issue(&key.id);
    let (verifications, misses) = f.stats();
    for _ in 0..50 {
        assert_eq!(f.code_of(get(wrong.text())).await, "INVALID_API_KEY");
    }
    assert_eq!(f.stats(), (verifications, misses + 1));

    // Garbage costs nothing at all.
    for _ in 0..50 {
        assert_eq!(
            f.code_of(get("twa_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"))
                .await,
            "INVALID_API_KEY"
        );
    }
    assert_eq!(f.stats(), (verifications, misses + 1));
}

#[tokio::test]
async fn concurrent_first_requests_for_a_key_run_argon2_once() {
    let mut f = Fixture::new().await;
    let (secret, _) = f.reader().await;
    let (verifications, _) = f.stats();
    let calls: Vec<_> = (0..32)
        .map(|_| {
            let mut client = f.check.clone();
            let check = request("GET", "/v1/sites", &[("x-api-key", &secret)]);
            tokio::spawn(
                async move { decision_code(&client.check(check).await.unwrap().into_inner()) },
            )
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), "OK");
    }
    assert_eq!(f.stats().0, verifications + 1);
}

#[tokio::test]
async fn a_store_fault_is_unavailable_for_unseen_keys_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(faulty(Arc::new(
        EmbeddedStore::open(&dir.path().join("s.redb")).unwrap(),
    )));
    let mut f = Fixture::with(Options {
        store: Some(store.clone()),
        ..Options::default()
    })
    .await;
    let (warm, _) = f.reader().await;
    let (unseen, _) = f.reader().await;
    let get = |secret: &str| request("GET", "/v1/sites", &[("x-api-key", secret)]);
    assert_eq!(f.code_of(get(&warm)).await, "OK");

    store.hook().fail(true);
    assert_eq!(
        f.code_of(get(&warm)).await,
        "OK",
        "a cached key is still decided"
    );
    let status = f.check.check(get(&unseen)).await.unwrap_err();
    assert_eq!(
        status.code(),
        tonic::Code::Unavailable,
        "never a denial: {status:?}"
    );
    let authorize = try_authorize(
        &f.data_plane,
        proto::AuthorizeRequest {
            key: unseen.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(authorize.code(), tonic::Code::Unavailable);
    let write = f
        .manage
        .revoke_key(admin(proto::RevokeKeyRequest { id: "x".into() }))
        .await
        .unwrap_err();
    assert_eq!(write.code(), tonic::Code::Unavailable);

    store.hook().fail(false);
    assert_eq!(
        f.code_of(get(&unseen)).await,
        "OK",
        "the fault was not cached"
    );
}

#[tokio::test]
async fn last_used_at_is_written_in_batches_and_on_shutdown() {
    let mut f = Fixture::new().await;
    let (secret, key) = f.reader().await;
    f.server.clock.advance(10);
    for _ in 0..5 {
        assert_eq!(
            f.code_of(request("GET", "/v1/x", &[("x-api-key", &secret)]))
                .await,
            "OK"
        );
    }
    let stored = f
        .server
        .server
        .app()
        .store
        .get_key(&key.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.last_used_at, None, "no store write per request");
    let app = f.server.server.app().clone();
    f.server.server.shutdown().await.unwrap();
    let stored = app.store.get_key(&key.id).await.unwrap().unwrap();
    assert_eq!(stored.last_used_at, Some(T0 + 10));
    assert_eq!(stored.usage_count, 5, "one write carried all five uses");
}

#[tokio::test]
async fn authorize_answers_the_same_decision_typed() {
    let mut f = Fixture::new().await;
    let (secret, key) = f
        .key(proto::CreateKeyRequest {
            scopes: vec!["read".into(), "roles:analyst".into()],
            metadata: HashMap::from([("group".into(), "soc".into())]),
            expiry: Some(proto::create_key_request::Expiry::ExpireInDays(30)),
            allowed_cidrs: vec!["10.0.0.0/8".into()],
            ..Default::default()
        })
        .await;
    let ok = authorize(
        &f.data_plane,
        proto::AuthorizeRequest {
            key: secret.clone(),
            method: "get".into(),
            path: "/v1/sites".into(),
            client_address: "10.2.3.4".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(ok.allowed);
    assert_eq!(ok.code, proto::DecisionCode::Ok as i32);
    assert_eq!(ok.http_status, 200);
    assert_eq!(
        (ok.key_id.as_str(), ok.owner_id.as_str(), ok.plan.as_str()),
        (key.id.as_str(), f.owner.as_str(), "unmetered")
    );
    assert_eq!(ok.scopes, ["read", "roles:analyst"]);
    assert_eq!(ok.metadata["group"], "soc");
    assert_eq!(ok.expire_time.unwrap().seconds, T0 + 30 * 86_400);

    let denied = authorize(
        &f.data_plane,
        proto::AuthorizeRequest {
            key: secret.clone(),
            method: "POST".into(),
            path: "/v1/sites".into(),
            client_address: "10.2.3.4".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(!denied.allowed);
    assert_eq!(denied.code, proto::DecisionCode::InsufficientScope as i32);
    assert_eq!(denied.http_status, 403);
    assert!(!denied.message.is_empty());
    assert_eq!(
        denied.key_id, key.id,
        "the key is identified even when denied"
    );

    let outside = authorize(
        &f.data_plane,
        proto::AuthorizeRequest {
            key: secret.clone(),
            required_scopes: vec!["read".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        outside.code,
        proto::DecisionCode::IpNotAllowed as i32,
        "no address, but the key is fenced"
    );

    let missing = authorize(&f.data_plane, proto::AuthorizeRequest::default()).await;
    assert_eq!(
        (missing.code, missing.http_status),
        (proto::DecisionCode::MissingCredentials as i32, 401)
    );

    for bad in [
        proto::AuthorizeRequest {
            key: secret.clone(),
            api_key: "x".into(),
            ..Default::default()
        },
        proto::AuthorizeRequest {
            api_key: "x".into(),
            ..Default::default()
        },
        proto::AuthorizeRequest {
            key: secret.clone(),
            client_address: "not-an-ip".into(),
            ..Default::default()
        },
    ] {
        let status = try_authorize(&f.data_plane, bad).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{}",
            status.message()
        );
        assert!(!status.message().contains(&secret[10..]));
    }
}

#[tokio::test]
async fn imported_keys_of_any_format_are_authorized_by_digest() {
    let mut f = Fixture::new().await;
    let legacy = "ctw_3f8da4f058e8992f91c42ccfd00b31e3";
    let get = |secret: &str| request("GET", "/v1/x", &[("x-api-key", secret)]);
    assert_eq!(f.code_of(get(legacy)).await, "INVALID_API_KEY");
    f.manage
        .import_key(admin(proto::ImportKeyRequest {
            owner_id: f.owner.clone(),
            name: "legacy".into(),
            secret: legacy.into(),
            scopes: vec!["read".into()],
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        f.code_of(get(legacy)).await,
        "OK",
        "importing lifts the earlier rejection at once"
    );
    assert_eq!(
        f.code_of(get("ctw_3f8da4f058e8992f91c42ccfd00b31e4")).await,
        "INVALID_API_KEY"
    );
}

#[tokio::test]
async fn products_keep_their_error_contract() {
    let config = format!(
        r#"{ROUTES}
[errors]
realm = "api"
body = {{ success = false, error = {{ code = "{{code}}", message = "{{message}}" }} }}

[errors.codes.EXPIRED_API_KEY]
code = "EXPIRED_TOKEN"
message = "The authentication token has expired."

[errors.codes.INVALID_API_KEY]
message = "Clé API invalide ou révoquée"
"#
    );
    let mut f = Fixture::with(Options {
        extra_config: &config,
        ..Options::default()
    })
    .await;
    let (_, _, body) = denial(
        &f.check(request("GET", "/v1/x", &[("x-api-key", "nope")]))
            .await,
    );
    assert_eq!(
        body,
        serde_json::json!({"success": false, "error": {"code": "INVALID_API_KEY", "message": "Clé API invalide ou révoquée"}})
    );
    let (secret, _) = f
        .key(proto::CreateKeyRequest {
            scopes: vec!["read".into()],
            expiry: Some(proto::create_key_request::Expiry::ExpireInDays(1)),
            ..Default::default()
        })
        .await;
    f.server.clock.advance(2 * 86_400);
    let expired = f
        .check(request("GET", "/v1/x", &[("x-api-key", &secret)]))
        .await;
    assert_eq!(
        decision_code(&expired),
        "EXPIRED_API_KEY",
        "metrics and logs keep keygate's code"
    );
    let (status, headers, body) = denial(&expired);
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "EXPIRED_TOKEN");
    assert_eq!(headers["x-error"], "The authentication token has expired.");
    assert!(headers["www-authenticate"].starts_with("Bearer realm=\"api\""));
}
