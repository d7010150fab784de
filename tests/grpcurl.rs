//! An independent gRPC client, grpcurl, drives the real server through reflection alone:
//! no proto files, no generated code.

mod common;

use std::process::Command;

use common::ADMIN_TOKEN;
use common::process::KeygateProcess;
use common::tools::venv_tool;

/// Runs grpcurl with `args` and returns (success, stdout, stderr).
fn grpcurl(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(venv_tool("grpcurl"))
        .arg("-plaintext")
        .args(args)
        .output()
        .expect("cannot run grpcurl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn call(server: &KeygateProcess, method: &str, body: &str) -> (bool, String, String) {
    let auth = format!("authorization: Bearer {ADMIN_TOKEN}");
    let addr = server.management_addr.to_string();
    grpcurl(&["-H", &auth, "-d", body, &addr, method])
}

#[test]
fn grpcurl_discovers_and_calls_the_api_through_reflection() {
    let dir = common::data_dir();
    let server = KeygateProcess::start(
        dir.path(),
        &[
            ("KEYGATE_PEPPER", "grpcurl test pepper 0123"),
            ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    let addr = server.management_addr.to_string();

    let (ok, services, err) = grpcurl(&[&addr, "list"]);
    assert!(ok, "{err}");
    for service in [
        "keygate.v1.KeyManager",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.lines().any(|l| l == service),
            "{service} missing from:\n{services}"
        );
    }
    let (ok, described, err) = grpcurl(&[&addr, "describe", "keygate.v1.CreateKeyRequest"]);
    assert!(
        ok && described.contains("expire_in_days"),
        "{err}{described}"
    );

    let (ok, health, err) = grpcurl(&[
        "-d",
        r#"{"service":"keygate.v1.KeyManager"}"#,
        &addr,
        "grpc.health.v1.Health/Check",
    ]);
    assert!(ok && health.contains("SERVING"), "{err}{health}");

    let (ok, owner, err) = call(
        &server,
        "keygate.v1.KeyManager/CreateOwner",
        r#"{"external_id":"acme","display_name":"Acme"}"#,
    );
    assert!(ok, "{err}");
    let owner: serde_json::Value = serde_json::from_str(&owner).unwrap();
    let owner_id = owner["id"].as_str().unwrap();

    let body = format!(
        r#"{{"owner_id":"{owner_id}","name":"from grpcurl","scopes":["read"],"expire_in_days":7}}"#
    );
    let (ok, created, err) = call(&server, "keygate.v1.KeyManager/CreateKey", &body);
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&created).unwrap();
    assert!(created["secret"].as_str().unwrap().starts_with("kg_live_"));
    assert_eq!(created["key"]["state"], "KEY_STATE_ACTIVE");

    let (ok, listed, err) = call(
        &server,
        "keygate.v1.KeyManager/ListKeys",
        &format!(r#"{{"owner_id":"{owner_id}"}}"#),
    );
    assert!(ok, "{err}");
    assert!(listed.contains("from grpcurl"));

    let (ok, _, err) = call(&server, "keygate.v1.KeyManager/GetKey", r#"{"id":"nope"}"#);
    assert!(!ok);
    assert!(err.contains("NotFound") && err.contains("nope"), "{err}");
    let (ok, _, err) = call(
        &server,
        "keygate.v1.KeyManager/CreateKey",
        &format!(r#"{{"owner_id":"{owner_id}","name":"x","allowed_cidrs":["300.0.0.0/8"]}}"#),
    );
    assert!(!ok);
    assert!(
        err.contains("InvalidArgument") && err.contains("300.0.0.0/8"),
        "{err}"
    );
}

/// The services grpcurl lists on `addr`, sorted.
fn listed(addr: &str) -> Vec<String> {
    let (ok, services, err) = grpcurl(&[addr, "list"]);
    assert!(ok, "{err}");
    let mut services: Vec<String> = services.lines().map(str::to_owned).collect();
    services.sort();
    services
}

#[test]
fn each_listener_lists_exactly_the_services_it_serves() {
    let dir = common::data_dir();
    let server = KeygateProcess::start(
        dir.path(),
        &[
            ("KEYGATE_PEPPER", "grpcurl test pepper 0123"),
            ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    );
    let management = server.management_addr.to_string();
    let data_plane = server.data_plane_addr.to_string();

    assert_eq!(
        listed(&management),
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "keygate.v1.KeyManager",
        ]
    );
    assert_eq!(
        listed(&data_plane),
        [
            "envoy.service.auth.v3.Authorization",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "keygate.v1.Authorizer",
        ]
    );

    // Envoy's service is described from its own descriptors, down to the messages it uses.
    let (ok, described, err) = grpcurl(&[
        &data_plane,
        "describe",
        "envoy.service.auth.v3.Authorization.Check",
    ]);
    assert!(ok, "{err}");
    assert!(
        described.contains("rpc Check ( .envoy.service.auth.v3.CheckRequest ) returns ( .envoy.service.auth.v3.CheckResponse )"),
        "{described}"
    );
    let (ok, described, err) = grpcurl(&[
        &data_plane,
        "describe",
        "envoy.service.auth.v3.AttributeContext.HttpRequest",
    ]);
    assert!(ok && described.contains("headers"), "{err}{described}");
    let (ok, described, err) = grpcurl(&[&data_plane, "describe", "keygate.v1.Authorizer"]);
    assert!(ok && described.contains("Authorize"), "{err}{described}");

    // Through reflection alone, grpcurl calls Check and gets keygate's decision.
    let (ok, answer, err) = grpcurl(&[
        "-d",
        r#"{"attributes":{"request":{"http":{"method":"GET","path":"/v1/sites","headers":{"x-api-key":"kg_live_unknown"}}}}}"#,
        &data_plane,
        "envoy.service.auth.v3.Authorization/Check",
    ]);
    assert!(ok, "{err}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert!(
        answer["status"]["code"].as_i64().unwrap_or(0) != 0,
        "{answer}"
    );
    assert!(answer.get("deniedResponse").is_some(), "{answer}");
}
