//! The management authority rule, through the real binary and independent clients (grpcurl,
//! curl on the JSON routes, and keygate's CLI): an API key holding `keygate:keys` may only
//! touch and make keys no stronger than itself — every RPC against every dimension, allowed
//! and refused, over gRPC and over JSON — while the admin may do all of it.

mod common;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use common::ADMIN_TOKEN;
use common::process::{KeygateProcess, keygate_bin};
use common::tools::venv_tool;
use serde_json::{Value, json};

/// The owner's plan, room for every key the tests make, and a plan with no limits at all,
/// which a self-service key must not be able to choose.
const PLANS: &str = "
[[plans]]
name = \"roomy\"
max_active_keys = 1000
rate_windows = [{ limit = 5, period = \"10s\" }]

[[plans]]
name = \"unlimited\"
";

/// A refused call: the gRPC code's name and the message.
#[derive(Debug)]
struct Refusal {
    code: String,
    message: String,
}

/// How the fixture calls the management API.
#[derive(Debug, Clone, Copy)]
enum Transport {
    /// gRPC, with grpcurl.
    Grpc,
    /// The JSON routes, with curl.
    Json,
}

struct Fixture {
    transport: Transport,
    server: KeygateProcess,
    _dir: tempfile::TempDir,
    owner_id: String,
    /// The calling key: `keygate:keys` and `read`, expiring in a day, fenced to loopback.
    caller: String,
    /// When the calling key expires (Unix seconds).
    caller_expiry: u64,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_secs(unix)).to_string()
}

impl Fixture {
    fn start(transport: Transport) -> Fixture {
        let dir = common::data_dir();
        let config = format!("{}{PLANS}", common::TEST_CONFIG);
        let server = KeygateProcess::start_with_config(
            dir.path(),
            &config,
            &[
                ("KEYGATE_PEPPER", "authority test pepper 0123"),
                ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ],
        );
        let mut fixture = Fixture {
            transport,
            server,
            _dir: dir,
            owner_id: String::new(),
            caller: String::new(),
            caller_expiry: now() + 86_400,
        };
        let owner = fixture
            .call(
                ADMIN_TOKEN,
                "CreateOwner",
                json!({"external_id": "acme", "display_name": "Acme", "plan": "roomy"}),
            )
            .unwrap();
        fixture.owner_id = owner["id"].as_str().unwrap().to_owned();
        let caller = fixture
            .call(
                ADMIN_TOKEN,
                "CreateKey",
                json!({
                    "owner_id": fixture.owner_id,
                    "name": "self-service",
                    "scopes": ["keygate:keys", "read"],
                    "expire_time": rfc3339(fixture.caller_expiry),
                    "allowed_cidrs": ["127.0.0.0/8"],
                }),
            )
            .unwrap();
        fixture.caller = caller["secret"].as_str().unwrap().to_owned();
        fixture
    }

    /// Calls `keygate.v1.KeyManager/<method>` as the holder of `token`, over the
    /// fixture's transport.
    fn call(&self, token: &str, method: &str, body: Value) -> Result<Value, Refusal> {
        match self.transport {
            Transport::Grpc => self.call_grpc(token, method, body),
            Transport::Json => {
                common::json_api::call(self.server.management_addr, token, method, body)
                    .map_err(|(code, message)| Refusal { code, message })
            }
        }
    }

    /// Calls `keygate.v1.KeyManager/<method>` with grpcurl.
    fn call_grpc(&self, token: &str, method: &str, body: Value) -> Result<Value, Refusal> {
        let output = Command::new(venv_tool("grpcurl"))
            .arg("-plaintext")
            .arg("-H")
            .arg(format!("authorization: Bearer {token}"))
            .arg("-d")
            .arg(body.to_string())
            .arg(self.server.management_addr.to_string())
            .arg(format!("keygate.v1.KeyManager/{method}"))
            .output()
            .expect("cannot run grpcurl");
        if output.status.success() {
            let text = String::from_utf8_lossy(&output.stdout);
            return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let field = |name: &str| {
            stderr
                .lines()
                .find_map(|line| line.trim().strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("grpcurl failed without a status: {stderr}"))
        };
        Err(Refusal {
            code: field("Code:"),
            message: field("Message:"),
        })
    }

    /// A key's fields within the calling key's authority: `read`, expiring an hour before
    /// the caller, fenced to 127.0.0.1.
    fn within(&self) -> Value {
        json!({
            "owner_id": self.owner_id,
            "name": "sibling",
            "scopes": ["read"],
            "expire_time": rfc3339(self.caller_expiry - 3_600),
            "allowed_cidrs": ["127.0.0.1/32"],
        })
    }

    /// Each way a key can be stronger than the calling key: the dimension named in the
    /// refusal and the fields that make it so.
    fn stronger(&self) -> Vec<(&'static str, Value)> {
        let with = |patch: Value| {
            let mut key = self.within();
            for (field, value) in patch.as_object().unwrap() {
                if value.is_null() {
                    key.as_object_mut().unwrap().remove(field);
                } else {
                    key[field] = value.clone();
                }
            }
            key
        };
        vec![
            ("scopes", with(json!({"scopes": ["read", "admin"]}))),
            ("plan", with(json!({"plan": "unlimited"}))),
            ("expiry", with(json!({"expire_time": null}))),
            (
                "expiry",
                with(json!({"expire_time": rfc3339(self.caller_expiry + 3_600)})),
            ),
            ("networks", with(json!({"allowed_cidrs": []}))),
            ("networks", with(json!({"allowed_cidrs": ["10.0.0.0/8"]}))),
        ]
    }

    /// A key the admin creates with `fields`; returns (id, secret, activation code).
    fn admin_creates(&self, fields: &Value) -> (String, String, String) {
        let created = self.call(ADMIN_TOKEN, "CreateKey", fields.clone()).unwrap();
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        (
            text(&created["key"]["id"]),
            text(&created["secret"]),
            // grpcurl prints the proto3 JSON (lowerCamelCase) names.
            text(&created["activationCode"]),
        )
    }
}

/// Asserts that `result` is PERMISSION_DENIED naming `dimension` first.
fn assert_refused(result: Result<Value, Refusal>, dimension: &str, row: &str) {
    match result {
        Err(Refusal { code, message }) => {
            assert_eq!(code, "PermissionDenied", "{row}: {message}");
            assert!(
                message.starts_with(&format!("{dimension}:")),
                "{row}: expected a refusal on {dimension}, got: {message}"
            );
        }
        Ok(answer) => panic!("{row}: expected a refusal on {dimension}, got {answer}"),
    }
}

/// A random base62 text of `len` characters.
fn random_text(len: usize) -> String {
    keygate::key::format::Alphabet::Base62
        .random(len)
        .to_string()
}

#[test]
fn a_self_service_key_creates_and_imports_only_keys_no_stronger_than_itself_over_grpc() {
    a_self_service_key_creates_and_imports_only_keys_no_stronger_than_itself(Transport::Grpc);
}

#[test]
fn a_self_service_key_creates_and_imports_only_keys_no_stronger_than_itself_over_json() {
    a_self_service_key_creates_and_imports_only_keys_no_stronger_than_itself(Transport::Json);
}

fn a_self_service_key_creates_and_imports_only_keys_no_stronger_than_itself(transport: Transport) {
    let f = Fixture::start(transport);

    f.call(&f.caller, "CreateKey", f.within())
        .expect("a key within the caller's authority");
    let mut choose_plan = f.within();
    choose_plan["plan"] = json!("roomy");
    assert_refused(
        f.call(&f.caller, "CreateKey", choose_plan),
        "plan",
        "CreateKey naming the owner's own plan",
    );
    let mut with_credits = f.within();
    with_credits["credits"] = json!({"remaining": 10});
    assert_refused(
        f.call(&f.caller, "CreateKey", with_credits.clone()),
        "credits",
        "CreateKey granting credits",
    );
    f.call(ADMIN_TOKEN, "CreateKey", with_credits)
        .expect("the admin grants credits");
    for (dimension, key) in f.stronger() {
        assert_refused(
            f.call(&f.caller, "CreateKey", key.clone()),
            dimension,
            &format!("CreateKey {key}"),
        );
        f.call(ADMIN_TOKEN, "CreateKey", key)
            .expect("the admin may create any key");
    }

    let import = |fields: &Value, secret: &str| {
        let mut body = fields.clone();
        body["secret"] = json!(secret);
        body
    };
    f.call(
        &f.caller,
        "ImportKey",
        import(&f.within(), &random_text(40)),
    )
    .expect("a strong key within the caller's authority");
    for (dimension, key) in f.stronger() {
        assert_refused(
            f.call(&f.caller, "ImportKey", import(&key, &random_text(40))),
            dimension,
            &format!("ImportKey {key}"),
        );
    }
    for weak in ["z", "password123", &"a".repeat(64), "0123456789abcdef"] {
        assert_refused(
            f.call(&f.caller, "ImportKey", import(&f.within(), weak)),
            "secret",
            &format!("ImportKey of the weak secret {weak:?}"),
        );
    }

    // The admin may import a weak legacy key; every listing flags it as imported.
    let legacy = f
        .call(
            ADMIN_TOKEN,
            "ImportKey",
            import(&f.within(), "legacy-key-1"),
        )
        .expect("the admin may import a weak legacy key");
    assert_eq!(legacy["kind"], "KEY_KIND_IMPORTED", "{legacy}");
    let listed = f
        .call(
            &f.caller,
            "ListKeys",
            json!({"owner_id": f.owner_id, "page_size": 100}),
        )
        .unwrap();
    let entry = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == legacy["id"])
        .expect("the imported key is listed");
    assert_eq!(entry["kind"], "KEY_KIND_IMPORTED", "{entry}");
}

#[test]
fn a_self_service_key_touches_only_siblings_no_stronger_than_itself_over_grpc() {
    a_self_service_key_touches_only_siblings_no_stronger_than_itself(Transport::Grpc);
}

#[test]
fn a_self_service_key_touches_only_siblings_no_stronger_than_itself_over_json() {
    a_self_service_key_touches_only_siblings_no_stronger_than_itself(Transport::Json);
}

fn a_self_service_key_touches_only_siblings_no_stronger_than_itself(transport: Transport) {
    let f = Fixture::start(transport);
    let by_id = |id: &str| json!({"id": id});
    let rename = |id: &str| json!({"key": {"id": id, "name": "renamed"}, "update_mask": {"paths": ["name"]}});
    let rotate = |id: &str| json!({"id": id, "grace": "3600s"});
    let activate = |id: &str| json!({"id": id, "activation_code": "not-the-code"});
    type Body<'a> = &'a dyn Fn(&str) -> Value;
    let rpcs: [(&str, Body); 5] = [
        ("UpdateKey", &rename),
        ("RotateKey", &rotate),
        ("RevokeKey", &by_id),
        ("DeleteKey", &by_id),
        ("ActivateKey", &activate),
    ];

    for (dimension, key) in f.stronger() {
        for (rpc, body) in rpcs {
            let mut fields = key.clone();
            if rpc == "ActivateKey" {
                fields["require_activation"] = json!(true);
            }
            let (id, _, _) = f.admin_creates(&fields);
            let refused = f.call(&f.caller, rpc, body(&id));
            if let Err(Refusal { message, .. }) = &refused {
                assert!(
                    !message.contains("kg_live_"),
                    "{rpc}: a refusal carries no secret"
                );
            }
            assert_refused(refused, dimension, &format!("{rpc} on a sibling {key}"));
        }
    }

    // The same RPCs on a sibling within the caller's authority, and on the caller itself.
    for (rpc, body) in rpcs.into_iter().filter(|(rpc, _)| *rpc != "ActivateKey") {
        let (id, _, _) = f.admin_creates(&f.within());
        let answer = f
            .call(&f.caller, rpc, body(&id))
            .unwrap_or_else(|refusal| panic!("{rpc} on a weaker sibling: {refusal:?}"));
        if rpc == "RotateKey" {
            assert!(answer["secret"].as_str().is_some_and(|s| !s.is_empty()));
        }
    }
    let mut pending = f.within();
    pending["require_activation"] = json!(true);
    let (id, _, code) = f.admin_creates(&pending);
    f.call(
        &f.caller,
        "ActivateKey",
        json!({"id": id, "activation_code": code}),
    )
    .expect("a weaker pending sibling is activated with its code");
}

#[test]
fn a_self_service_key_cannot_update_a_key_into_one_stronger_than_itself_over_grpc() {
    a_self_service_key_cannot_update_a_key_into_one_stronger_than_itself(Transport::Grpc);
}

#[test]
fn a_self_service_key_cannot_update_a_key_into_one_stronger_than_itself_over_json() {
    a_self_service_key_cannot_update_a_key_into_one_stronger_than_itself(Transport::Json);
}

fn a_self_service_key_cannot_update_a_key_into_one_stronger_than_itself(transport: Transport) {
    let f = Fixture::start(transport);
    let update = |id: &str, key: Value, mask: &str| {
        let mut key = key;
        key["id"] = json!(id);
        json!({"key": key, "update_mask": {"paths": [mask]}})
    };
    let rows: [(&str, Value, &str); 7] = [
        ("scopes", json!({"scopes": ["read", "admin"]}), "scopes"),
        // Credits are what a customer paid for: only the admin grants or lifts them.
        (
            "credits",
            json!({"credits": {"remaining": 1_000_000}}),
            "credits",
        ),
        ("credits", json!({}), "credits"),
        ("expiry", json!({}), "expire_time"),
        (
            "expiry",
            json!({"expire_time": rfc3339(f.caller_expiry + 60)}),
            "expire_time",
        ),
        ("networks", json!({"allowed_cidrs": []}), "allowed_cidrs"),
        (
            "networks",
            json!({"allowed_cidrs": ["127.0.0.0/8", "192.168.0.0/16"]}),
            "allowed_cidrs",
        ),
    ];
    let (id, _, _) = f.admin_creates(&f.within());
    for (dimension, key, mask) in rows {
        assert_refused(
            f.call(&f.caller, "UpdateKey", update(&id, key.clone(), mask)),
            dimension,
            &format!("UpdateKey {mask} to {key}"),
        );
    }
    // Tightening is always allowed.
    f.call(
        &f.caller,
        "UpdateKey",
        update(
            &id,
            json!({"expire_time": rfc3339(f.caller_expiry - 7_200)}),
            "expire_time",
        ),
    )
    .expect("an earlier expiry");

    // Disabled by the calling key: it may enable it again. Disabled by the admin: not.
    let toggle = |id: &str, disabled: bool| json!({"key": {"id": id}, "update_mask": {"paths": ["disabled"]}, "disabled": disabled});
    f.call(&f.caller, "UpdateKey", toggle(&id, true)).unwrap();
    f.call(&f.caller, "UpdateKey", toggle(&id, false))
        .expect("a key the calling key disabled");
    f.call(ADMIN_TOKEN, "UpdateKey", toggle(&id, true)).unwrap();
    assert_refused(
        f.call(&f.caller, "UpdateKey", toggle(&id, false)),
        "state",
        "UpdateKey enabling a key the admin disabled",
    );
    f.call(ADMIN_TOKEN, "UpdateKey", toggle(&id, false))
        .expect("the admin enables it");

    let mut pending = f.within();
    pending["require_activation"] = json!(true);
    let (pending_id, _, _) = f.admin_creates(&pending);
    assert_refused(
        f.call(&f.caller, "UpdateKey", toggle(&pending_id, false)),
        "activation",
        "UpdateKey enabling a key pending activation",
    );
}

#[test]
fn the_cli_keeps_the_same_rule_for_create_and_rotate() {
    let f = Fixture::start(Transport::Grpc);
    let cli = |args: &[&str]| {
        Command::new(keygate_bin())
            .args(args)
            .args(["--addr", &f.server.url(), "--json"])
            .env_clear()
            .env("KEYGATE_TOKEN", &f.caller)
            .output()
            .expect("cannot run the keygate CLI")
    };
    let expiry = rfc3339(f.caller_expiry - 60);
    let create = |extra: &[&str]| {
        let mut args = vec![
            "keys",
            "create",
            "--owner",
            &f.owner_id,
            "--name",
            "cli",
            "--scope",
            "read",
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let within = create(&["--expires-at", &expiry, "--cidr", "127.0.0.1/32"]);
    assert!(
        within.status.success(),
        "{}",
        String::from_utf8_lossy(&within.stderr)
    );
    let rows: [(&str, Vec<&str>); 4] = [
        (
            "scopes",
            vec![
                "--expires-at",
                &expiry,
                "--cidr",
                "127.0.0.1/32",
                "--scope",
                "admin",
            ],
        ),
        (
            "plan",
            vec![
                "--expires-at",
                &expiry,
                "--cidr",
                "127.0.0.1/32",
                "--plan",
                "unlimited",
            ],
        ),
        ("expiry", vec!["--cidr", "127.0.0.1/32"]),
        ("networks", vec!["--expires-at", &expiry]),
    ];
    for (dimension, extra) in rows {
        let refused = create(&extra);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{dimension}: {stderr}");
        assert!(
            stderr.contains(&format!("{dimension}:")) && stderr.contains("no stronger"),
            "{dimension}: {stderr}"
        );
        assert!(refused.stdout.is_empty(), "no key is printed");
    }

    let mut admin_key = f.within();
    admin_key["scopes"] = json!(["read", "admin"]);
    let (strong, _, _) = f.admin_creates(&admin_key);
    let refused = cli(&["keys", "rotate", &strong, "--grace", "1h"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("scopes:"),
        "{stderr}"
    );
    assert!(refused.stdout.is_empty(), "no secret is printed");
    let (weaker, _, _) = f.admin_creates(&f.within());
    let rotated = cli(&["keys", "rotate", &weaker]);
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
}
