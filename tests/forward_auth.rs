//! `/forward-auth` on the data plane, called as the proxies call it (over HTTP/1.1 and
//! h2c, with their headers): the answer a proxy carries out, whose word about the client's
//! address counts, what is refused as malformed, and what a store fault looks like.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use common::faulty::faulty;
use common::forward_auth::{FENCED_CLIENT, Keys, error_code, json, send, start};
use common::http::{HttpResponse, http_request, http_request_from};
use common::{admin, create_owner};
use keygate::proto;
use keygate::store::embedded::EmbeddedStore;

/// The headers Traefik and Caddy send about the original request.
fn traefik(method: &'static str, uri: &'static str) -> [(&'static str, &'static str); 2] {
    [("x-forwarded-method", method), ("x-forwarded-uri", uri)]
}

/// Asks `/forward-auth` on `data_plane` about GET `uri` with `headers` (a proxy's and the
/// client's).
async fn ask(data_plane: SocketAddr, uri: &'static str, headers: &[(&str, &str)]) -> HttpResponse {
    ask_at(data_plane, "/forward-auth", uri, headers).await
}

/// [`ask`] at `target`, `/forward-auth` with a query.
async fn ask_at(
    data_plane: SocketAddr,
    target: &str,
    uri: &'static str,
    headers: &[(&str, &str)],
) -> HttpResponse {
    let mut all = traefik("GET", uri).to_vec();
    all.extend_from_slice(headers);
    http_request(data_plane, "GET", target, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_request_gets_200_with_the_headers_for_the_upstream_and_the_client() {
    let (keygate, keys) = start("", None).await;
    let data_plane = keygate.server.data_plane_addr();
    let allowed = ask(
        data_plane,
        "/v1/sites?page=2",
        &[("x-api-key", &keys.reader)],
    )
    .await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    assert_eq!(allowed.body, "");
    assert_eq!(
        allowed.header("x-keygate-key-id"),
        Some(keys.reader_id.as_str())
    );
    assert_eq!(allowed.header("x-keygate-plan"), Some("pro"));
    assert_eq!(allowed.header("x-keygate-scopes"), Some("read"));
    assert!(
        (allowed.header("x-keygate-owner-id")).is_some_and(|o| o.starts_with("own_")),
        "{allowed:?}"
    );
    assert_eq!(allowed.header("x-ratelimit-limit"), Some("10"));
    assert_eq!(allowed.header("x-ratelimit-remaining"), Some("9"));
    // Envoy's http_service removes these from the request before the upstream.
    assert_eq!(
        allowed.header("x-envoy-auth-headers-to-remove"),
        Some("authorization, x-api-key, api-key, api-secret")
    );

    // nginx's headers and every credential location.
    let nginx = [("x-original-method", "POST"), ("x-original-uri", "/v1/x")];
    let bearer = format!("Bearer {}", keys.reader);
    for credential in [
        ("authorization", bearer.as_str()),
        ("x-api-key", &keys.reader),
    ] {
        let allowed = http_request(
            data_plane,
            "GET",
            "/forward-auth",
            &[nginx[0], nginx[1], credential],
        )
        .await;
        assert_eq!(allowed.status, 200, "{credential:?}: {}", allowed.body);
    }

    // Envoy's form, over h2c: the original path after the prefix, the method as is.
    let request = http::Request::post("/forward-auth/v1/things?page=2")
        .header("x-api-key", &keys.reader)
        .body(tonic::body::Body::default())
        .unwrap();
    let response = send(keygate.data_plane().await, request).await;
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["x-keygate-key-id"],
        keys.reader_id.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_carry_the_status_json_body_and_headers_check_gives_envoy() {
    let (keygate, keys) = start("", None).await;
    let data_plane = keygate.server.data_plane_addr();
    let id = [("x-request-id", "req-42")];

    let missing = ask(data_plane, "/v1/x", &id).await;
    assert_eq!(
        (missing.status, error_code(&missing).as_str()),
        (401, "MISSING_CREDENTIALS")
    );
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(
        missing.header("www-authenticate"),
        Some("Bearer realm=\"keygate\"")
    );
    assert_eq!(missing.header("x-error-id"), Some("req-42"));
    assert_eq!(json(&missing)["error"]["request_id"], "req-42");
    assert!(missing.header("x-error").is_some_and(|m| !m.is_empty()));

    let invalid = ask(data_plane, "/v1/x", &[("x-api-key", "kg_live_not-a-key")]).await;
    assert_eq!(
        (invalid.status, error_code(&invalid).as_str()),
        (401, "INVALID_API_KEY")
    );
    let free = ask(data_plane, "/v1/x", &[("x-api-key", &keys.free)]).await;
    assert_eq!(
        (free.status, error_code(&free).as_str()),
        (403, "PLAN_FORBIDDEN")
    );
    // The route rule on /admin/ applies to the original URI, in any spelling.
    for uri in ["/admin/users", "//v1/../%61dmin/users?x=1"] {
        let scope = ask(data_plane, uri, &[("x-api-key", &keys.reader)]).await;
        assert_eq!(
            (scope.status, error_code(&scope).as_str()),
            (403, "INSUFFICIENT_SCOPE"),
            "{uri}"
        );
    }
    let administrator = ask(
        data_plane,
        "/admin/users",
        &[("x-api-key", &keys.administrator)],
    )
    .await;
    assert_eq!(administrator.status, 200);

    // The query says what Check's context extensions say.
    let scopes = ask_at(
        data_plane,
        "/forward-auth?scopes=billing",
        "/v1/x",
        &[("x-api-key", &keys.administrator)],
    )
    .await;
    assert_eq!(
        (scopes.status, error_code(&scopes).as_str()),
        (403, "INSUFFICIENT_SCOPE")
    );
    let sources = ask_at(
        data_plane,
        "/forward-auth?credentials=bearer",
        "/v1/x",
        &[("x-api-key", &keys.reader)],
    )
    .await;
    assert_eq!(
        (sources.status, error_code(&sources).as_str()),
        (401, "MISSING_CREDENTIALS")
    );

    // The pro plan allows 10 a second per key; keygate's clock stands still in tests.
    for _ in 0..10 {
        assert_eq!(
            ask(data_plane, "/v1/x", &[("x-api-key", &keys.reader)])
                .await
                .status,
            200
        );
    }
    let limited = ask(data_plane, "/v1/x", &[("x-api-key", &keys.reader)]).await;
    assert_eq!(
        (limited.status, error_code(&limited).as_str()),
        (429, "RATE_LIMITED")
    );
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));

    // For nginx, which passes only 401 and 403 on and never a body: the real status and
    // body in headers.
    let echoed = ask_at(
        data_plane,
        "/forward-auth?denial=headers",
        "/v1/x",
        &[("x-api-key", &keys.reader)],
    )
    .await;
    assert_eq!(echoed.status, 403);
    assert_eq!(echoed.header("x-keygate-status"), Some("429"));
    assert_eq!(echoed.header("x-keygate-body"), Some(echoed.body.as_str()));
    assert_eq!(error_code(&echoed), "RATE_LIMITED");
    assert_eq!(echoed.header("retry-after"), Some("1"));
    let unauthenticated = ask_at(data_plane, "/forward-auth?denial=headers", "/v1/x", &[]).await;
    assert_eq!(unauthenticated.status, 401);
    assert_eq!(unauthenticated.header("x-keygate-status"), Some("401"));
    assert!(unauthenticated.header("www-authenticate").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_does_not_say_plainly_what_it_asks_is_refused_400() {
    let (keygate, keys) = start("", None).await;
    let data_plane = keygate.server.data_plane_addr();
    let key = ("x-api-key", keys.reader.as_str());
    let [method, uri] = traefik("GET", "/v1/x");
    /// The target, the headers, and what the refusal says.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 4] = [
        ("/forward-auth", vec![key], "X-Forwarded-Uri"),
        (
            "/forward-auth",
            vec![
                key,
                method,
                ("x-forwarded-uri", "/public/"),
                ("x-original-uri", "/admin/users"),
            ],
            "disagree",
        ),
        (
            "/forward-auth?scope=admin",
            vec![key, method, uri],
            "scopes",
        ),
        (
            "/forward-auth?denial=body",
            vec![key, method, uri],
            "denial=headers",
        ),
    ];
    for (target, headers, said) in cases {
        let refused = http_request(data_plane, "GET", target, &headers).await;
        assert_eq!(
            refused.status, 400,
            "{target} {headers:?}: {}",
            refused.body
        );
        let body = json(&refused);
        assert_eq!(body["error"]["status"], "INVALID_ARGUMENT");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(said), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_is_believed_only_from_a_trusted_proxy_and_read_from_the_right() {
    let (keygate, keys) = start("", None).await;
    let data_plane = keygate.server.data_plane_addr();
    let Keys {
        remote,
        fenced,
        reader,
        ..
    } = &keys;
    // `remote` may be used from 203.0.113.0/24 only, `fenced` from 127.0.0.7 only. The
    // proxies are trusted on 127.0.0.1; 127.0.0.2 and 127.0.0.8 are clients.
    /// The client's address, its X-Forwarded-For values and X-Real-IP, the key, the status.
    type Case<'a> = (&'a str, &'a [&'a str], Option<&'a str>, &'a str, u16);
    let table: [Case; 17] = [
        // An untrusted peer's headers are its own claims: its address is judged.
        ("127.0.0.2", &["203.0.113.9"], None, remote, 403),
        ("127.0.0.2", &[], Some("203.0.113.9"), remote, 403),
        ("127.0.0.8", &[FENCED_CLIENT], None, fenced, 403),
        (FENCED_CLIENT, &["203.0.113.9"], None, fenced, 200),
        // A trusted proxy names the client.
        ("127.0.0.1", &["203.0.113.9"], None, remote, 200),
        ("127.0.0.1", &[], Some("203.0.113.9"), remote, 200),
        // Multi-hop: read from the right, trusted hops skipped; what the client itself put
        // to the left of the address its first proxy saw is not believed.
        (
            "127.0.0.1",
            &["203.0.113.9, 198.51.100.4"],
            None,
            remote,
            403,
        ),
        (
            "127.0.0.1",
            &["198.51.100.4, 203.0.113.9"],
            None,
            remote,
            200,
        ),
        (
            "127.0.0.1",
            &["198.51.100.4, 203.0.113.9, 127.0.0.1"],
            None,
            remote,
            200,
        ),
        (
            "127.0.0.1",
            &["203.0.113.9", "127.0.0.1"],
            None,
            remote,
            200,
        ),
        ("127.0.0.1", &["203.0.113.9:51234"], None, remote, 200),
        // Garbage where a trusted proxy writes, or no word at all: the client is unknown,
        // and a fenced key refused.
        ("127.0.0.1", &["203.0.113.9, unknown"], None, remote, 403),
        ("127.0.0.1", &["garbage"], None, remote, 403),
        ("127.0.0.1", &[], Some("garbage"), remote, 403),
        ("127.0.0.1", &[], None, remote, 403),
        ("127.0.0.1", &[""], None, remote, 403),
        // A key without networks does not care.
        ("127.0.0.1", &["garbage"], None, reader, 200),
    ];
    for (source, forwarded_for, real_ip, key, status) in table {
        let mut headers = vec![
            ("x-forwarded-method", "GET"),
            ("x-forwarded-uri", "/v1/x"),
            ("x-api-key", key),
        ];
        headers.extend(forwarded_for.iter().map(|v| ("x-forwarded-for", *v)));
        headers.extend(real_ip.map(|v| ("x-real-ip", v)));
        let source: IpAddr = source.parse().unwrap();
        let answer =
            http_request_from(Some(source), data_plane, "GET", "/forward-auth", &headers).await;
        assert_eq!(
            answer.status, status,
            "from {source} with {forwarded_for:?} / {real_ip:?}: {}",
            answer.body
        );
        if status == 403 {
            assert_eq!(error_code(&answer), "IP_NOT_ALLOWED");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_fault_is_a_503_the_proxy_cannot_take_for_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(faulty(Arc::new(
        EmbeddedStore::open(&dir.path().join("k.redb")).unwrap(),
    )));
    let (keygate, _keys) = start("", Some(store.clone())).await;
    let mut manage = keygate.client().await;
    let owner = create_owner(&mut manage, "cold", "pro").await.id;
    let cold = manage
        .create_key(admin(proto::CreateKeyRequest {
            owner_id: owner,
            name: "never verified".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .secret;
    store.hook().fail(true);
    let fault = ask(
        keygate.server.data_plane_addr(),
        "/v1/x",
        &[("x-api-key", &cold)],
    )
    .await;
    assert_eq!(fault.status, 503, "{}", fault.body);
    assert_eq!(json(&fault)["error"]["status"], "UNAVAILABLE");
    assert_eq!(fault.header("x-keygate-key-id"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_are_counted_like_check_s_under_their_own_api() {
    let (keygate, keys) = start("", None).await;
    let data_plane = keygate.server.data_plane_addr();
    ask(data_plane, "/v1/x", &[("x-api-key", &keys.reader)]).await;
    ask(data_plane, "/v1/x", &[]).await;
    let page = http_request(keygate.server.metrics_addr(), "GET", "/metrics", &[]).await;
    for series in [
        r#"keygate_decisions_total{api="forward_auth",code="OK"} 1"#,
        r#"keygate_decisions_total{api="forward_auth",code="MISSING_CREDENTIALS"} 1"#,
        r#"keygate_decision_duration_seconds_count{api="forward_auth"} 2"#,
    ] {
        assert!(
            page.body.contains(series),
            "{series} not in:\n{}",
            page.body
        );
    }
}
