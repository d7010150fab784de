//! TLS and mutual TLS on the gRPC listeners, with certificates made by `openssl`: what is
//! refused, what is accepted, who is admin by certificate, certificate rotation, whose
//! `client_address` Authorize believes, route rules for some callers only (Check, Authorize
//! and forward-auth alike), and a Python grpcio client that shares no TLS or gRPC code with
//! keygate.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::authorize::try_authorize;
use common::check::{check, check_request, decision_code};
use common::forward_auth::send;
use common::pki::{Ca, Issued, tls_channel, tls_config};
use common::process::keygate_bin;
use common::tools::venv_tool;
use common::{ADMIN_TOKEN, Options, TestServer, admin, create_owner, issue_key, start_with};
use keygate::proto::key_manager_client::KeyManagerClient;
use keygate::proto::{self, AuthorizeRequest, DecisionCode, ListPlansRequest};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The longest a test waits for a condition before failing.
const CEILING: Duration = Duration::from_secs(20);

/// A server with an admin token and `config` appended to the test configuration.
async fn server(config: &str) -> TestServer {
    start_with(Options {
        admin_token: Some(ADMIN_TOKEN),
        extra_config: config,
        ..Options::default()
    })
    .await
}

/// Lists plans on `channel` with the admin token, or says why it failed.
async fn list_plans_as_admin(channel: Channel) -> Result<(), tonic::Status> {
    KeyManagerClient::new(channel)
        .list_plans(admin(ListPlansRequest::default()))
        .await
        .map(drop)
}

/// Connects over TLS and makes one management call; the error, if any, as text. With TLS
/// 1.3 a refused client certificate shows on the first call, not on connecting.
async fn manage_over_tls(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: Option<&Issued>,
) -> Result<(), String> {
    let channel = tls_channel(addr, ca, client)
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    list_plans_as_admin(channel)
        .await
        .map_err(|e| format!("call: {e:?}"))
}

#[tokio::test]
async fn tls_is_served_on_both_listeners_and_plaintext_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = start_with(Options {
        admin_token: Some(ADMIN_TOKEN),
        extra_config: &tls_config(&ca.server("server"), None),
        health_listener: true,
        ..Options::default()
    })
    .await;
    let (management, data_plane) = (
        server.server.management_addr(),
        server.server.data_plane_addr(),
    );

    manage_over_tls(management, &ca.cert, None).await.unwrap();
    let channel = tls_channel(data_plane, &ca.cert, None).await.unwrap();
    let answer = try_authorize(&channel, AuthorizeRequest::default())
        .await
        .unwrap();
    assert_eq!(answer.code, DecisionCode::MissingCredentials as i32);

    for addr in [management, data_plane] {
        let plaintext = match Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(channel) => list_plans_as_admin(channel)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        assert!(plaintext.is_err(), "plaintext to {addr} was served");
    }

    // Probes that cannot speak TLS ask the plaintext health-only listener.
    let health_addr = server.server.health_addr().unwrap();
    let health = Channel::from_shared(format!("http://{health_addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = HealthClient::new(health)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_handshake_is_disconnected() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let config = tls_config(&ca.server("server"), None) + "handshake_timeout = \"200ms\"\n";
    let server = server(&config).await;
    let mut idle = tokio::net::TcpStream::connect(server.server.data_plane_addr())
        .await
        .unwrap();
    let read = tokio::time::timeout(CEILING, idle.read(&mut [0; 16]))
        .await
        .expect("the half-open connection is still open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn mutual_tls_accepts_only_certificates_from_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let stranger_ca = Ca::new(dir.path(), "stranger-ca");
    let server = server(&tls_config(&ca.server("server"), Some(&ca))).await;
    let addr = server.server.management_addr();

    let none = manage_over_tls(addr, &ca.cert, None).await;
    assert!(none.is_err(), "no client certificate was accepted");
    let foreign = stranger_ca.issue("intruder", "URI:spiffe://test/ops");
    let other = manage_over_tls(addr, &ca.cert, Some(&foreign)).await;
    assert!(other.is_err(), "a certificate from another CA was accepted");
    let signed = ca.issue("app", "URI:spiffe://test/app");
    manage_over_tls(addr, &ca.cert, Some(&signed))
        .await
        .unwrap();
}

#[tokio::test]
async fn an_admin_identity_manages_keys_without_a_token_and_another_identity_cannot() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let config = format!(
        "{}\n[management]\nadmin_identities = [\"spiffe://test/ops\"]\n",
        tls_config(&ca.server("server"), Some(&ca))
    );
    let server = server(&config).await;
    let addr = server.server.management_addr();
    let create = |client: Issued| async move {
        let channel = tls_channel(addr, &ca_path(&client), Some(&client))
            .await
            .unwrap();
        KeyManagerClient::new(channel)
            .create_owner(proto::CreateOwnerRequest {
                external_id: format!("by-{}", client.cert.display()),
                display_name: "Made by certificate".into(),
                ..Default::default()
            })
            .await
    };
    let ops = ca.issue("ops", "URI:spiffe://test/ops");
    create(ops).await.expect("the admin identity manages");
    let app = ca.issue("app", "URI:spiffe://test/app,DNS:app.test");
    let refused = create(app).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
}

/// The CA next to `issued` (every test CA here is `ca.crt` in the same directory).
fn ca_path(issued: &Issued) -> std::path::PathBuf {
    issued.cert.with_file_name("ca.crt")
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_while_open_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new(dir.path(), "old-ca"), Ca::new(dir.path(), "new-ca"));
    let (old, new) = (old_ca.server("old"), new_ca.server("new"));
    let serving = Issued {
        cert: dir.path().join("tls.crt"),
        key: dir.path().join("tls.key"),
    };
    std::fs::copy(&old.cert, &serving.cert).unwrap();
    std::fs::copy(&old.key, &serving.key).unwrap();
    let server = server(&tls_config(&serving, None)).await;
    let addr = server.server.management_addr();
    let open = tls_channel(addr, &old_ca.cert, None).await.unwrap();
    list_plans_as_admin(open.clone()).await.unwrap();

    // Swapped as Kubernetes updates a Secret volume: each file replaced whole.
    for (from, to) in [(&new.key, &serving.key), (&new.cert, &serving.cert)] {
        let staged = to.with_extension("new");
        std::fs::copy(from, &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }

    let started = Instant::now();
    while let Err(e) = manage_over_tls(addr, &new_ca.cert, None).await {
        assert!(
            started.elapsed() < CEILING,
            "the new certificate is never served: {e}"
        );
        tokio::task::yield_now().await;
    }
    assert!(
        manage_over_tls(addr, &old_ca.cert, None).await.is_err(),
        "a new connection still gets the old certificate"
    );
    list_plans_as_admin(open)
        .await
        .expect("the connection opened before the swap keeps working");
}

#[tokio::test]
async fn authorize_believes_client_address_only_from_trusted_callers() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    // mTLS on the data plane, plaintext management for the test's own setup calls.
    let mtls = server(&format!(
        "{}\n[tls.management]\nenabled = false\n[authorize.trusted_callers]\nidentities = [\"spiffe://test/gateway\"]\n",
        tls_config(&ca.server("server"), Some(&ca))
    ))
    .await;
    let by_network = server("[authorize.trusted_callers]\nnetworks = [\"127.0.0.0/8\"]\n").await;
    let untrusted = server("").await;

    let mut fenced = Vec::new();
    for server in [&mtls, &by_network, &untrusted] {
        let mut manage = server.client().await;
        let owner = create_owner(&mut manage, "acme", "pro").await;
        let key = manage
            .create_key(admin(proto::CreateKeyRequest {
                owner_id: owner.id,
                name: "fenced".into(),
                allowed_cidrs: vec!["10.0.0.0/8".into()],
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        fenced.push(key.secret);
    }
    let gateway = ca.issue("gateway", "URI:spiffe://test/gateway");
    let batch = ca.issue("batch", "URI:spiffe://test/batch");
    let over_mtls = |client: &Issued| {
        let client = client.clone();
        let (addr, ca) = (mtls.server.data_plane_addr(), ca.cert.clone());
        async move { tls_channel(addr, &ca, Some(&client)).await.unwrap() }
    };
    let table = [
        // (caller, server index, named client address, expected decision)
        ("gateway cert", 0, "10.1.2.3", DecisionCode::Ok),
        ("gateway cert", 0, "203.0.113.9", DecisionCode::IpNotAllowed),
        ("other cert", 0, "10.1.2.3", DecisionCode::IpNotAllowed),
        ("other cert", 0, "", DecisionCode::IpNotAllowed),
        ("trusted network", 1, "10.1.2.3", DecisionCode::Ok),
        (
            "untrusted network",
            2,
            "10.1.2.3",
            DecisionCode::IpNotAllowed,
        ),
    ];
    for (caller, index, named, expected) in table {
        let channel = match caller {
            "gateway cert" => over_mtls(&gateway).await,
            "other cert" => over_mtls(&batch).await,
            "trusted network" => by_network.data_plane().await,
            _ => untrusted.data_plane().await,
        };
        let answer = try_authorize(
            &channel,
            AuthorizeRequest {
                key: fenced[index].clone(),
                client_address: named.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            DecisionCode::try_from(answer.code).unwrap(),
            expected,
            "{caller} naming {named:?}"
        );
    }
}

#[tokio::test]
async fn a_route_rule_with_callers_applies_only_to_the_certificates_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = server(&format!(
        "{}\n[tls.management]\nenabled = false\n{}",
        tls_config(&ca.server("server"), Some(&ca)),
        r#"
[[routes]]
path_prefix = "/reports/"
callers = ["spiffe://test/batch", "gateway.test"]

[[routes]]
path_prefix = "/reports/"
scopes = ["reports"]
"#
    ))
    .await;
    let mut manage = server.client().await;
    let owner = create_owner(&mut manage, "acme", "pro").await;
    let key = issue_key(&mut manage, &owner.id, "no scopes").await.secret;
    // Forward-auth's own, so that no key makes more calls than its rate window allows.
    let forward_key = issue_key(&mut manage, &owner.id, "no scopes").await.secret;

    // Named by SAN URI, by SAN DNS name, by subject CN; and a caller named nowhere.
    let batch = ca.issue("batch", "URI:spiffe://test/batch");
    let gateway = ca.issue("gw", "URI:spiffe://test/gw,DNS:gateway.test");
    let by_cn = ca.issue("gateway.test", "URI:spiffe://test/other-gw");
    let web = ca.issue("web", "URI:spiffe://test/web,DNS:web.test");
    let table = [
        (&batch, "/reports/daily", DecisionCode::Ok),
        (&gateway, "/reports/daily", DecisionCode::Ok),
        (&by_cn, "/reports/daily", DecisionCode::Ok),
        (&web, "/reports/daily", DecisionCode::InsufficientScope),
        (&web, "/other", DecisionCode::Ok),
    ];
    for (caller, path, expected) in table {
        let channel = tls_channel(server.server.data_plane_addr(), &ca.cert, Some(caller))
            .await
            .unwrap();
        let request = check_request("203.0.113.9", "GET", path, &[("x-api-key", &key)], &[]);
        let answer = check(&channel, request).await;
        let name = caller.cert.display();
        // Check's metadata spells the code as the proto does, without the enum's prefix.
        let check_code = expected.as_str_name().strip_prefix("DECISION_CODE_");
        assert_eq!(
            Some(decision_code(&answer).as_str()),
            check_code,
            "Check {path} by {name}"
        );
        let answer = try_authorize(
            &channel,
            AuthorizeRequest {
                key: key.clone(),
                method: "GET".into(),
                path: path.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(
            DecisionCode::try_from(answer.code).unwrap(),
            expected,
            "Authorize {path} by {name}"
        );
        let request = http::Request::get("/forward-auth")
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", path)
            .header("x-api-key", &forward_key)
            .body(tonic::body::Body::default())
            .unwrap();
        let answer = send(channel, request).await;
        let status = if expected == DecisionCode::Ok {
            200
        } else {
            403
        };
        assert_eq!(answer.status(), status, "forward-auth {path} by {name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_manages_over_mutual_tls_with_its_certificate_flags() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let config = format!(
        "{}\n[management]\nadmin_identities = [\"spiffe://test/ops\"]\n",
        tls_config(&ca.server("server"), Some(&ca))
    );
    let server = server(&config).await;
    let addr = server.server.management_addr().to_string();
    let ops = ca.issue("ops", "URI:spiffe://test/ops");
    let path = |p: &Path| p.display().to_string();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(keygate_bin())
                .args(args)
                .env_clear()
                .output()
                .unwrap()
        })
    };
    let mut create: Vec<String> = [
        "owners",
        "create",
        "--external-id",
        "cli",
        "--name",
        "CLI",
        "--json",
    ]
    .map(String::from)
    .to_vec();
    create.extend(["--addr".into(), addr.clone()]);
    create.extend(["--ca-cert".into(), path(&ca.cert)]);

    let without_cert = run(create.clone()).await.unwrap();
    assert!(
        !without_cert.status.success(),
        "served without a client cert"
    );

    create.extend([
        "--cert".into(),
        path(&ops.cert),
        "--key".into(),
        path(&ops.key),
    ]);
    let created = run(create).await.unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let owner: serde_json::Value = serde_json::from_slice(&created.stdout).unwrap();
    assert_eq!(owner["external_id"], "cli");

    let plain = run([
        "plans",
        "list",
        "--addr",
        &format!("http://{addr}"),
        "--ca-cert",
        &path(&ca.cert),
    ]
    .map(String::from)
    .to_vec())
    .await
    .unwrap();
    assert_eq!(
        plain.status.code(),
        Some(2),
        "--ca-cert with http:// is a usage error"
    );
}

/// What `tests/clients/authorize.py` (Python, grpcio) printed for an Authorize call with
/// `key` to `addr`, trusting `ca`, presenting `client` if given.
async fn python_authorize(
    addr: std::net::SocketAddr,
    ca: &Path,
    key: &str,
    client: Option<&Issued>,
) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/authorize.py");
    let mut args = vec![
        script.display().to_string(),
        addr.to_string(),
        ca.display().to_string(),
        key.to_owned(),
    ];
    if let Some(client) = client {
        args.extend([
            client.cert.display().to_string(),
            client.key.display().to_string(),
        ]);
    }
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(venv_tool("python"))
            .args(args)
            .output()
            .expect("cannot run python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test]
async fn a_python_grpcio_client_authorizes_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = server(&format!(
        "{}\n[tls.management]\nenabled = false\n",
        tls_config(&ca.server("server"), Some(&ca))
    ))
    .await;
    let mut manage = server.client().await;
    let owner = create_owner(&mut manage, "acme", "pro").await;
    let key = issue_key(&mut manage, &owner.id, "python").await.secret;
    let addr = server.server.data_plane_addr();
    let client = ca.issue("python", "URI:spiffe://test/python");

    let allowed = python_authorize(addr, &ca.cert, &key, Some(&client)).await;
    assert_eq!(allowed["code"], DecisionCode::Ok as i32, "{allowed}");
    assert_eq!(allowed["allowed"], true, "{allowed}");
    assert_eq!(allowed["owner_id"], owner.id.as_str(), "{allowed}");
    let wrong = python_authorize(addr, &ca.cert, "kg_live_not-a-real-key", Some(&client)).await;
    assert_eq!(
        (wrong["code"].as_i64(), wrong["http_status"].as_i64()),
        (Some(DecisionCode::InvalidApiKey as i64), Some(401)),
        "{wrong}"
    );
    let stranger_ca = Ca::new(dir.path(), "stranger-ca");
    let distrusted = python_authorize(addr, &stranger_ca.cert, &key, Some(&client)).await;
    assert_eq!(
        distrusted["error"], "UNAVAILABLE",
        "keygate's certificate passed an unrelated CA: {distrusted}"
    );
    let anonymous = python_authorize(addr, &ca.cert, &key, None).await;
    assert_eq!(
        anonymous["error"], "UNAVAILABLE",
        "served without a client certificate: {anonymous}"
    );
}
