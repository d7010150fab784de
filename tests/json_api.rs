//! The JSON management API and HTTP Authorize through the real binary and curl: every route's
//! happy path and each refusal (no token, another owner's key, bad input, not found) as
//! tables; secrets only in the create and rotate answers; the OpenAPI document validated by
//! a standard validator and matched against the routes served; HTTP/1.1 and h2c.

mod common;

use std::process::Command;

use common::ADMIN_TOKEN;
use common::json_api::{call, request_for, send};
use common::process::KeygateProcess;
use common::tools::{system_tool, venv_tool};
use keygate::http::transcode::management_routes;
use serde_json::{Value, json};

struct Fixture {
    server: KeygateProcess,
    _dir: tempfile::TempDir,
    alice: String,
    bob: String,
    /// A key of Alice's holding `keygate:keys`.
    manager: String,
    /// One of Bob's keys.
    bobs_key: String,
}

impl Fixture {
    fn start() -> Fixture {
        let dir = common::data_dir();
        let server = KeygateProcess::start(
            dir.path(),
            &[
                ("KEYGATE_PEPPER", "json api test pepper 0123"),
                ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ],
        );
        let addr = server.management_addr;
        let owner = |name: &str| {
            let made = call(
                addr,
                ADMIN_TOKEN,
                "CreateOwner",
                json!({"externalId": name, "displayName": name}),
            )
            .unwrap();
            made["id"].as_str().unwrap().to_owned()
        };
        let (alice, bob) = (owner("alice"), owner("bob"));
        let manager = call(
            addr,
            ADMIN_TOKEN,
            "CreateKey",
            json!({"owner_id": alice, "name": "manager", "scopes": ["keygate:keys", "read"]}),
        )
        .unwrap()["secret"]
            .as_str()
            .unwrap()
            .to_owned();
        let bobs_key = call(
            addr,
            ADMIN_TOKEN,
            "CreateKey",
            json!({"ownerId": bob, "name": "bob's"}),
        )
        .unwrap()["key"]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        Fixture {
            server,
            _dir: dir,
            alice,
            bob,
            manager,
            bobs_key,
        }
    }

    fn call(&self, token: &str, rpc: &str, message: Value) -> Result<Value, (String, String)> {
        call(self.server.management_addr, token, rpc, message)
    }

    /// A new key of Alice's, made by the admin: (id, answer).
    fn alices_key(&self, extra: Value) -> (String, Value) {
        let mut message = json!({"ownerId": self.alice, "name": "k", "scopes": ["read"]});
        for (field, value) in extra.as_object().unwrap() {
            message[field] = value.clone();
        }
        let made = self.call(ADMIN_TOKEN, "CreateKey", message).unwrap();
        (made["key"]["id"].as_str().unwrap().to_owned(), made)
    }
}

/// Asserts `result` is a refusal with gRPC code `code`.
fn assert_code(result: Result<Value, (String, String)>, code: &str, row: &str) -> String {
    match result {
        Err((got, message)) => {
            assert_eq!(got, code, "{row}: {message}");
            assert!(!message.is_empty(), "{row}: a refusal says why");
            message
        }
        Ok(answer) => panic!("{row}: expected {code}, got {answer}"),
    }
}

#[test]
fn every_route_answers_the_admin() {
    let f = Fixture::start();
    let addr = f.server.management_addr;
    let mut answers = Vec::new();
    let mut ok = |rpc: &str, message: Value| {
        let answer = f
            .call(ADMIN_TOKEN, rpc, message)
            .unwrap_or_else(|refusal| panic!("{rpc}: {refusal:?}"));
        answers.push((rpc.to_owned(), answer.clone()));
        answer
    };

    let carol = ok(
        "CreateOwner",
        json!({"external_id": "carol", "displayName": "Carol", "metadata": {"tier": "gold"}}),
    );
    let carol_id = carol["id"].as_str().unwrap().to_owned();
    assert_eq!(carol["metadata"]["tier"], "gold");
    assert_eq!(
        ok("GetOwner", json!({"id": carol_id}))["externalId"],
        "carol"
    );
    let owners = ok("ListOwners", json!({"pageSize": 2}));
    assert_eq!(owners["owners"].as_array().unwrap().len(), 2);
    assert!(owners["nextPageToken"].is_string(), "{owners}");
    let updated = ok(
        "UpdateOwner",
        json!({"owner": {"id": carol_id, "displayName": "Carol B."}, "updateMask": "display_name"}),
    );
    assert_eq!(updated["displayName"], "Carol B.");
    assert_eq!(ok("ListPlans", json!({}))["defaultPlan"], "pro");
    let team = ok(
        "CreatePlan",
        json!({"name": "team", "maxActiveKeys": 5, "rateWindows": [{"limit": "100", "period": "60s", "scope": "RATE_SCOPE_OWNER"}]}),
    );
    assert_eq!(team["apiAccess"], true, "API access unless refused: {team}");
    assert_eq!(team["rateWindows"][0]["period"], "60s");
    assert_eq!(ok("GetPlan", json!({"name": "team"}))["maxActiveKeys"], 5);
    let raised = ok(
        "UpdatePlan",
        json!({"plan": {"name": "team", "rateWindows": [{"limit": "200", "period": "60s"}]}, "updateMask": "rate_windows"}),
    );
    assert_eq!(raised["rateWindows"][0]["limit"], "200");
    assert_eq!(raised["rateWindows"][0]["scope"], "RATE_SCOPE_KEY");
    assert_eq!(raised["maxActiveKeys"], 5, "only the masked field changed");
    ok("DeletePlan", json!({"name": "team"}));

    let created = ok(
        "CreateKey",
        json!({"ownerId": carol_id, "name": "ci", "scopes": ["read"], "expireTime": "2099-01-01T00:00:00Z"}),
    );
    let id = created["key"]["id"].as_str().unwrap().to_owned();
    assert!(created["secret"].as_str().unwrap().starts_with("kg_live_"));
    assert_eq!(created["key"]["expireTime"], "2099-01-01T00:00:00Z");
    let got = ok("GetKey", json!({"id": id}));
    assert_eq!(got["name"], "ci");
    let listed = ok("ListKeys", json!({"owner_id": carol_id, "page_size": 10}));
    assert_eq!(listed["keys"][0]["id"], id.as_str());
    let renamed = ok(
        "UpdateKey",
        json!({"key": {"id": id, "name": "ci-2", "scopes": ["read", "write"]}, "update_mask": "name,scopes"}),
    );
    assert_eq!(renamed["name"], "ci-2");
    assert_eq!(renamed["scopes"], json!(["read", "write"]));
    let rotated = ok("RotateKey", json!({"id": id, "grace": "60s"}));
    assert!(rotated["secret"].as_str().unwrap().starts_with("kg_live_"));
    assert_ne!(rotated["secret"], created["secret"]);
    assert_eq!(
        ok("RevokeKey", json!({"id": id}))["state"],
        "KEY_STATE_REVOKED"
    );
    ok("DeleteKey", json!({"id": id}));
    let (pending, made) = f.alices_key(json!({"requireActivation": true}));
    let code = made["activationCode"].as_str().unwrap();
    assert_eq!(
        ok(
            "ActivateKey",
            json!({"id": pending, "activationCode": code})
        )["state"],
        "KEY_STATE_ACTIVE"
    );
    let imported = ok(
        "ImportKey",
        json!({"ownerId": carol_id, "name": "legacy", "secret": "sk_legacy_7Hq2mX9pL4vN8rT3wZ6yB1cD5fG0jK"}),
    );
    assert_eq!(imported["kind"], "KEY_KIND_IMPORTED");
    assert_eq!(imported["hash"], "argon2id");
    // SHA-256 of "sk_live_4eC39HqLyjWDarjtT1zdp7dc", in base64 without its padding. (The
    // route was counted above.)
    let by_digest = f
        .call(
            ADMIN_TOKEN,
            "ImportKey",
            json!({"ownerId": carol_id, "name": "by digest", "digest": {
            "sha256": "eKCEQfQxTwooM8/ljGLlVaFiJkIGmCzaOfaAT1BI9XA",
            "encoding": "DIGEST_ENCODING_BASE64", "prefix": "sk_live_", "length": 32}}),
        )
        .unwrap();
    assert_eq!(by_digest["hash"], "sha256-pending");
    assert_eq!(by_digest["prefix"], "sk_live_");
    let usage = ok("GetKeyUsage", json!({"keyId": pending}));
    assert_eq!(
        usage["days"].as_array().unwrap().len(),
        30,
        "the last 30 days by default"
    );
    assert_eq!(usage["timeZone"], "UTC");
    let usage = ok(
        "GetKeyUsage",
        json!({"ownerId": carol_id, "startDate": "2026-01-01", "endDate": "2026-01-07"}),
    );
    assert_eq!(usage["days"][0]["date"], "2026-01-01");
    assert_eq!(usage["days"].as_array().unwrap().len(), 7);
    assert_eq!(
        answers.len(),
        management_routes().len(),
        "every route is exercised"
    );

    // Secrets only where a key is made or rotated; never echoed anywhere else.
    for (rpc, answer) in &answers {
        let text = answer.to_string();
        let shows = text.contains("kg_live_") || text.contains("sk_legacy_");
        assert_eq!(
            shows,
            rpc == "CreateKey" || rpc == "RotateKey",
            "{rpc}: {text}"
        );
    }
    let (status, deleted) = send(addr, ADMIN_TOKEN, "GET", &format!("/v1/keys/{id}"), None);
    assert_eq!(status, 404, "{deleted}");
    let (status, gone) = send(addr, ADMIN_TOKEN, "GET", "/v1/plans/team", None);
    assert_eq!(status, 404, "{gone}");
}

#[test]
fn every_route_refuses_a_caller_without_a_token() {
    let f = Fixture::start();
    for route in management_routes() {
        for token in ["", "not-a-token", &"x".repeat(40)] {
            let message = match route.id_field.split_once('.') {
                _ if route.id_field.is_empty() => json!({}),
                None => json!({route.id_field: f.bobs_key}),
                Some((outer, inner)) => json!({outer: {inner: f.bobs_key}}),
            };
            let (path, _) = request_for(&route, &message);
            let body = route.body.then(|| json!({}));
            let (status, answer) = send(
                f.server.management_addr,
                token,
                route.method.as_str(),
                &path,
                body.as_ref(),
            );
            let row = format!("{} {path} with token {token:?}", route.method);
            assert_eq!(status, 401, "{row}: {answer}");
            assert_eq!(answer["error"]["status"], "UNAUTHENTICATED", "{row}");
        }
    }
}

#[test]
fn a_managing_key_reaches_only_its_own_owner() {
    let f = Fixture::start();
    let m = f.manager.as_str();
    let bobs = f.bobs_key.as_str();
    let rows: Vec<(&str, Value, &str)> = vec![
        (
            "CreateOwner",
            json!({"externalId": "mallory", "displayName": "M"}),
            "PermissionDenied",
        ),
        ("ListOwners", json!({}), "PermissionDenied"),
        ("GetOwner", json!({"id": f.bob}), "NotFound"),
        (
            "CreatePlan",
            json!({"name": "unlimited"}),
            "PermissionDenied",
        ),
        (
            "UpdatePlan",
            json!({"plan": {"name": "pro", "maxActiveKeys": 0}, "updateMask": "maxActiveKeys"}),
            "PermissionDenied",
        ),
        ("DeletePlan", json!({"name": "free"}), "PermissionDenied"),
        (
            "UpdateOwner",
            json!({"owner": {"id": f.alice, "displayName": "x"}, "updateMask": "displayName"}),
            "PermissionDenied",
        ),
        (
            "CreateKey",
            json!({"ownerId": f.bob, "name": "for bob"}),
            "NotFound",
        ),
        ("ListKeys", json!({"ownerId": f.bob}), "NotFound"),
        ("GetKey", json!({"id": bobs}), "NotFound"),
        (
            "UpdateKey",
            json!({"key": {"id": bobs, "name": "x"}, "updateMask": "name"}),
            "NotFound",
        ),
        ("DeleteKey", json!({"id": bobs}), "NotFound"),
        (
            "ActivateKey",
            json!({"id": bobs, "activationCode": "123456"}),
            "NotFound",
        ),
        ("RotateKey", json!({"id": bobs}), "NotFound"),
        ("RevokeKey", json!({"id": bobs}), "NotFound"),
        (
            "ImportKey",
            json!({"ownerId": f.bob, "name": "x", "secret": "sk_4f9Kq2Lm8Np3Rs7Tv1Wx5Yz0Ab6Cd"}),
            "NotFound",
        ),
        ("GetKeyUsage", json!({"keyId": bobs}), "NotFound"),
        ("GetKeyUsage", json!({"ownerId": f.bob}), "NotFound"),
    ];
    let covered: Vec<&str> = rows.iter().map(|(rpc, _, _)| *rpc).collect();
    for route in management_routes() {
        assert!(
            covered.contains(&route.rpc) || ["ListPlans", "GetPlan"].contains(&route.rpc),
            "{} has no row",
            route.rpc
        );
    }
    for (rpc, message, code) in rows {
        assert_code(
            f.call(m, rpc, message.clone()),
            code,
            &format!("{rpc} {message}"),
        );
    }
    f.call(m, "ListPlans", json!({}))
        .expect("any managing key lists plans");
    let pro = f
        .call(m, "GetPlan", json!({"name": "pro"}))
        .expect("and reads them");
    assert_eq!(pro["maxActiveKeys"], 10, "unchanged: {pro}");
    let own = f
        .call(m, "CreateKey", json!({"name": "mine", "scopes": ["read"]}))
        .unwrap();
    assert_eq!(
        own["key"]["ownerId"],
        f.alice.as_str(),
        "made for its own owner"
    );
    let (status, bob) = send(
        f.server.management_addr,
        ADMIN_TOKEN,
        "GET",
        &format!("/v1/keys/{bobs}"),
        None,
    );
    assert_eq!(
        (status, bob["state"].as_str()),
        (200, Some("KEY_STATE_ACTIVE")),
        "untouched"
    );
}

#[test]
fn bad_input_and_unknown_records_are_refused_with_the_right_status() {
    let f = Fixture::start();
    let (id, _) = f.alices_key(json!({}));
    let (status_400, status_404) = ("InvalidArgument", "NotFound");
    let rows: Vec<(&str, Value, &str)> = vec![
        (
            "CreateOwner",
            json!({"externalId": " ", "displayName": "x"}),
            status_400,
        ),
        (
            "CreateOwner",
            json!({"externalId": "dave", "displayName": "D", "plan": "platinum"}),
            status_400,
        ),
        (
            "CreateOwner",
            json!({"externalId": "alice", "displayName": "again"}),
            "AlreadyExists",
        ),
        ("ListOwners", json!({"pageSize": 5000}), status_400),
        ("ListOwners", json!({"pageToken": "garbage"}), status_400),
        ("GetOwner", json!({"id": "own_nobody"}), status_404),
        (
            "UpdateOwner",
            json!({"owner": {"id": f.alice, "displayName": "x"}}),
            status_400,
        ),
        (
            "UpdateOwner",
            json!({"owner": {"id": "own_nobody", "displayName": "x"}, "updateMask": "displayName"}),
            status_404,
        ),
        ("ListPlans", json!({"colour": "red"}), status_400),
        (
            "CreatePlan",
            json!({"name": "x", "rateWindows": [{"limit": "0", "period": "1s"}]}),
            status_400,
        ),
        (
            "CreatePlan",
            json!({"name": "x", "rateWindows": [{"limit": "5"}]}),
            status_400,
        ),
        ("CreatePlan", json!({"name": "pro"}), "AlreadyExists"),
        ("GetPlan", json!({"name": "gold"}), status_404),
        (
            "UpdatePlan",
            json!({"plan": {"name": "pro", "rateWindows": [{"limit": "5", "period": "3000000s"}]}, "updateMask": "rateWindows"}),
            status_400,
        ),
        (
            "UpdatePlan",
            json!({"plan": {"name": "pro"}, "updateMask": "name"}),
            status_400,
        ),
        (
            "UpdatePlan",
            json!({"plan": {"name": "gold", "apiAccess": false}, "updateMask": "apiAccess"}),
            status_404,
        ),
        ("DeletePlan", json!({"name": "pro"}), "FailedPrecondition"),
        ("DeletePlan", json!({"name": "gold"}), status_404),
        ("CreateKey", json!({"ownerId": 5}), status_400),
        (
            "CreateKey",
            json!({"ownerId": f.alice, "name": "x", "scopes": "read"}),
            status_400,
        ),
        (
            "CreateKey",
            json!({"ownerId": f.alice, "name": "x", "allowedCidrs": ["300.0.0.0/8"]}),
            status_400,
        ),
        (
            "CreateKey",
            json!({"ownerId": "own_nobody", "name": "x"}),
            status_404,
        ),
        (
            "ListKeys",
            json!({"ownerId": f.alice, "pageSize": "ten"}),
            status_400,
        ),
        ("ListKeys", json!({"ownerId": "own_nobody"}), status_404),
        ("GetKey", json!({"id": "nope"}), status_404),
        (
            "UpdateKey",
            json!({"key": {"id": id, "name": "x"}, "updateMask": "colour"}),
            status_400,
        ),
        (
            "UpdateKey",
            json!({"key": {"id": "nope", "name": "x"}, "updateMask": "name"}),
            status_404,
        ),
        ("DeleteKey", json!({"id": "nope"}), status_404),
        (
            "ActivateKey",
            json!({"id": id, "activationCode": "000000"}),
            "FailedPrecondition",
        ),
        (
            "ActivateKey",
            json!({"id": "nope", "activationCode": "000000"}),
            status_404,
        ),
        (
            "RotateKey",
            json!({"id": id, "grace": "forever"}),
            status_400,
        ),
        ("RotateKey", json!({"id": "nope"}), status_404),
        ("RevokeKey", json!({"id": "nope"}), status_404),
        (
            "ImportKey",
            json!({"ownerId": f.alice, "name": "x"}),
            status_400,
        ),
        (
            "ImportKey",
            json!({"ownerId": "own_nobody", "name": "x", "secret": "sk_4f9Kq2Lm8Np3Rs7Tv1Wx5Yz0Ab6Cd"}),
            status_404,
        ),
        (
            "ImportKey",
            json!({"ownerId": f.alice, "name": "x", "digest": {"sha256": "ab", "encoding": "DIGEST_ENCODING_HEX", "length": 40}}),
            status_400,
        ),
        (
            "ImportKey",
            json!({"ownerId": f.alice, "name": "x", "digest": {"sha256": "78a08441f4314f0a2833cfe58c62e555a162264206982cda39f6804f5048f570", "encoding": "DIGEST_ENCODING_HEX", "length": 12}}),
            status_400,
        ),
        (
            "GetKeyUsage",
            json!({"keyId": id, "startDate": "2026-02-30"}),
            status_400,
        ),
        (
            "GetKeyUsage",
            json!({"keyId": id, "startDate": "2026-03-01", "endDate": "2026-02-01"}),
            status_400,
        ),
        (
            "GetKeyUsage",
            json!({"keyId": id, "startDate": "2020-01-01", "endDate": "2026-01-01"}),
            status_400,
        ),
        (
            "GetKeyUsage",
            json!({"keyId": id, "ownerId": f.alice}),
            status_400,
        ),
        ("GetKeyUsage", json!({"keyId": "nope"}), status_404),
        ("GetKeyUsage", json!({"ownerId": "own_nobody"}), status_404),
    ];
    for route in management_routes() {
        assert!(
            rows.iter().any(|(rpc, _, _)| *rpc == route.rpc),
            "{} has no row",
            route.rpc
        );
    }
    for (rpc, message, code) in rows {
        assert_code(
            f.call(ADMIN_TOKEN, rpc, message.clone()),
            code,
            &format!("{rpc} {message}"),
        );
    }
    let (status, _) = send(
        f.server.management_addr,
        ADMIN_TOKEN,
        "GET",
        &format!("/v1/keys/{id}"),
        None,
    );
    assert_eq!(status, 200, "the refusals changed nothing");
}

#[test]
fn malformed_requests_get_json_errors() {
    let f = Fixture::start();
    let addr = f.server.management_addr;
    let raw = |args: &[&str]| {
        let output = Command::new(system_tool("curl"))
            .args(["--silent", "--include", "--header", "expect:"])
            .args(["--header", &format!("authorization: Bearer {ADMIN_TOKEN}")])
            .args(args)
            .output()
            .expect("cannot run curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let url = |path: &str| format!("http://{addr}{path}");
    let huge = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        huge.path(),
        format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20)),
    )
    .unwrap();
    let huge = format!("@{}", huge.path().display());
    let cases: Vec<(Vec<String>, &str, &str)> = vec![
        (
            vec!["--data-binary".into(), "{not json".into(), url("/v1/keys")],
            "400",
            "not valid JSON",
        ),
        (
            vec!["--data-binary".into(), "[1, 2]".into(), url("/v1/keys")],
            "400",
            "must be a JSON object",
        ),
        (
            vec!["--data-binary".into(), "{}".into(), url("/v1/keys/abc")],
            "405",
            "GET, PATCH, DELETE",
        ),
        (
            vec![
                "--request".into(),
                "GET".into(),
                "--data-binary".into(),
                "{\"id\": 1}".into(),
                url("/v1/keys/abc"),
            ],
            "400",
            "takes no body",
        ),
        (vec![url("/v2/keys")], "404", "no route for GET /v2/keys"),
        (
            vec![
                "--header".into(),
                "origin: https://evil.example".into(),
                "--data-binary".into(),
                "{}".into(),
                url("/v1/owners"),
            ],
            "403",
            "web browsers",
        ),
        (vec![url("/v1/keys/a/b")], "404", "no route"),
        (
            vec!["--data-binary".into(), huge.clone(), url("/v1/keys")],
            "413",
            "over 1048576 bytes",
        ),
    ];
    for (args, status, text) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let answer = raw(&args);
        let row = format!("{:?}", &args[..args.len().min(3)]);
        let status_line = answer.lines().next().unwrap_or_default();
        assert!(status_line.contains(status), "{row}: {status_line}");
        assert!(
            answer.contains("content-type: application/json"),
            "{row}: {answer}"
        );
        assert!(answer.contains(text), "{row}: {answer}");
    }
    // h2c with prior knowledge answers the same as HTTP/1.1.
    let h2 = raw(&["--http2-prior-knowledge", &url("/v1/plans")]);
    assert!(h2.starts_with("HTTP/2 200"), "{h2}");
    assert!(h2.contains("\"defaultPlan\":\"pro\""), "{h2}");
}

#[test]
fn the_openapi_document_is_valid_and_matches_the_routes_served() {
    let f = Fixture::start();
    let addr = f.server.management_addr;
    let (status, document) = send(addr, "", "GET", "/openapi.json", None);
    assert_eq!(status, 200, "served without authentication");
    assert_eq!(document["openapi"], "3.1.0");

    let file = tempfile::Builder::new().suffix(".json").tempfile().unwrap();
    std::fs::write(file.path(), document.to_string()).unwrap();
    let validated = Command::new(venv_tool("openapi-spec-validator"))
        .arg(file.path())
        .output()
        .expect("cannot run openapi-spec-validator");
    assert!(
        validated.status.success(),
        "{}{}",
        String::from_utf8_lossy(&validated.stdout),
        String::from_utf8_lossy(&validated.stderr)
    );

    // Every documented operation is served: without a token it is refused as
    // unauthenticated, not as an unknown route or method.
    let mut documented = Vec::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for (method, _) in operations.as_object().unwrap() {
            let method = method.to_ascii_uppercase();
            let concrete = path.replace("{id}", "some-id");
            let body = (method == "POST" || method == "PATCH").then(|| json!({}));
            let (status, answer) = send(addr, "", &method, &concrete, body.as_ref());
            assert_eq!(
                status, 401,
                "{method} {path} is documented but answers {answer}"
            );
            documented.push((method, path.clone()));
        }
    }
    // Every served route is documented.
    let mut served: Vec<(String, String)> = management_routes()
        .iter()
        .map(|r| (r.method.to_string(), r.template.to_owned()))
        .collect();
    served.sort();
    documented.sort();
    assert_eq!(served, documented);
    let create = &document["paths"]["/v1/keys"]["post"];
    assert_eq!(
        create["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/keygate.v1.CreateKeyRequest"
    );
}

#[test]
fn authorize_over_json_decides_like_the_rpc() {
    let f = Fixture::start();
    let (id, made) = f.alices_key(json!({}));
    let secret = made["secret"].as_str().unwrap();
    let data_plane = f.server.data_plane_addr;
    let authorize = |body: Value| send(data_plane, "", "POST", "/v1/authorize", Some(&body));
    let (status, allowed) =
        authorize(json!({"key": secret, "method": "GET", "path": "/v1/things"}));
    assert_eq!(status, 200, "{allowed}");
    assert_eq!(allowed["allowed"], true, "{allowed}");
    assert_eq!(allowed["keyId"], id.as_str());
    assert_eq!(allowed["ownerId"], f.alice.as_str());
    assert_eq!(allowed["scopes"], json!(["read"]));

    f.call(ADMIN_TOKEN, "RevokeKey", json!({"id": id})).unwrap();
    let (status, refused) =
        authorize(json!({"key": secret, "method": "GET", "path": "/v1/things"}));
    assert_eq!(
        status, 200,
        "the call succeeded; the decision is a refusal: {refused}"
    );
    assert_eq!(refused["allowed"], false, "{refused}");
    assert_eq!(refused["httpStatus"], 401);
    assert!(
        !refused.to_string().contains(secret),
        "the key is not echoed"
    );

    let (status, bad) = authorize(json!({"key": 5}));
    assert_eq!(status, 400, "{bad}");
    let (status, missing) = send(data_plane, "", "GET", "/v1/keys", None);
    assert_eq!(
        status, 404,
        "the management routes are not on the data plane: {missing}"
    );
}
