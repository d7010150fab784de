//! Migrating keys by hash, end to end: another system's SHA-256 digests of its keys (made
//! here with `sha256sum` and `openssl`, as that system would have), imported with the
//! `keygate` CLI into the real binary, the keys then used through a real Envoy, and each
//! record upgraded to argon2id by its first use, across a restart.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::ADMIN_TOKEN;
use common::envoy::EnvoyProcess;
use common::http::http_request;
use common::process::{KeygateProcess, keygate_bin};
use common::upstream::{GrpcUpstream, HttpUpstream, UPSTREAM_BODY};
use keygate::key::format::Alphabet;

const PEPPER: &str = "digest migration test pepper 0123";

/// The old system's key prefix, and the length of its keys: the prefix and 32 base62
/// characters (about 190 random bits).
const PREFIX: &str = "sk_live_";
const LENGTH: usize = 40;

fn server(dir: &std::path::Path) -> KeygateProcess {
    KeygateProcess::start(
        dir,
        &[
            ("KEYGATE_PEPPER", PEPPER),
            ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
}

/// Runs `program args` with `input` on standard input.
fn run(program: &str, args: &[&str], input: &[u8]) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{program} failed: {output:?}");
    output
}

/// The digest the old system kept of `key`, as `sha256sum` prints it.
fn sha256_hex(key: &str) -> String {
    let printed = String::from_utf8(run("sha256sum", &[], key.as_bytes()).stdout).unwrap();
    printed.split_whitespace().next().unwrap().to_owned()
}

/// The digest the old system kept of `key`, as `openssl dgst -binary | base64` prints it.
fn sha256_base64(key: &str) -> String {
    let binary = run("openssl", &["dgst", "-sha256", "-binary"], key.as_bytes()).stdout;
    assert_eq!(binary.len(), 32);
    let printed = String::from_utf8(run("base64", &[], &binary).stdout).unwrap();
    printed.trim().to_owned()
}

/// Runs the CLI against `server` as the admin.
fn cli(server: &KeygateProcess, args: &[&str]) -> Output {
    Command::new(keygate_bin())
        .args(args)
        .env_clear()
        .env("KEYGATE_ADDR", server.url())
        .env("KEYGATE_TOKEN", ADMIN_TOKEN)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[track_caller]
fn json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A key of the old system, its digest as it kept it, and the encoding it used.
struct Legacy {
    key: String,
    digest: String,
    encoding: &'static str,
}

fn legacy(encoding: &'static str) -> Legacy {
    let key = format!(
        "{PREFIX}{}",
        Alphabet::Base62.random(LENGTH - PREFIX.len()).as_str()
    );
    let digest = match encoding {
        "hex" => sha256_hex(&key),
        _ => sha256_base64(&key),
    };
    Legacy {
        key,
        digest,
        encoding,
    }
}

/// `keys import --sha256 ...` for `legacy`, as `owner`'s key with scope `read`.
fn import(server: &KeygateProcess, owner: &str, legacy: &Legacy, extra: &[&str]) -> Output {
    let length = LENGTH.to_string();
    let mut args = vec![
        "keys",
        "import",
        "--owner",
        owner,
        "--name",
        "migrated",
        "--scope",
        "read",
        "--sha256",
        &legacy.digest,
        "--digest-encoding",
        legacy.encoding,
        "--prefix",
        PREFIX,
        "--length",
        &length,
        "--json",
    ];
    args.extend_from_slice(extra);
    cli(server, &args)
}

fn hash_of(server: &KeygateProcess, id: &str) -> String {
    let key = json(&cli(server, &["keys", "get", id, "--json"]));
    key["hash"].as_str().unwrap().to_owned()
}

/// Envoy in front of `keygate`'s data plane and two upstreams.
struct Edge {
    envoy: EnvoyProcess,
    _http: HttpUpstream,
    _grpc: GrpcUpstream,
}

impl Edge {
    async fn start(keygate: &KeygateProcess) -> Edge {
        let http = HttpUpstream::start().await;
        let grpc = GrpcUpstream::start().await;
        let (data_plane, http_addr, grpc_addr) = (keygate.data_plane_addr, http.addr, grpc.addr);
        let envoy = tokio::task::spawn_blocking(move || {
            EnvoyProcess::start(data_plane, http_addr, grpc_addr)
        })
        .await
        .unwrap();
        Edge {
            envoy,
            _http: http,
            _grpc: grpc,
        }
    }

    /// The status Envoy answers `GET /v1/sites` with, sent with `key` as a bearer token.
    async fn status(&self, key: &str) -> u16 {
        let bearer = format!("Bearer {key}");
        let response = http_request(
            self.envoy.listen_addr,
            "GET",
            "/v1/sites",
            &[("authorization", &bearer)],
        )
        .await;
        if response.status == 200 {
            assert_eq!(response.body, UPSTREAM_BODY);
        }
        response.status
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_imported_by_sha256_digest_work_through_envoy_and_are_upgraded_on_first_use() {
    let dir = common::data_dir();
    let keygate = server(dir.path());
    let owner = json(&cli(
        &keygate,
        &[
            "owners",
            "create",
            "--external-id",
            "migrated-customer",
            "--name",
            "Migrated Customer",
            "--plan",
            "pro",
            "--json",
        ],
    ))["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The old system's export: two digests in hex, two in base64; the last key is never used.
    let legacies = [
        legacy("hex"),
        legacy("base64"),
        legacy("hex"),
        legacy("base64"),
    ];
    let mut ids = Vec::new();
    for legacy in &legacies {
        let output = import(&keygate, &owner, legacy, &[]);
        let printed = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(!printed.contains(&legacy.digest), "{printed}");
        let key = json(&output);
        assert_eq!(key["hash"], "sha256-pending");
        assert_eq!(key["kind"], "imported");
        assert_eq!(key["prefix"], PREFIX);
        ids.push(key["id"].as_str().unwrap().to_owned());
    }
    // The same digest, whatever its encoding, is one key.
    let twin = Legacy {
        key: legacies[0].key.clone(),
        digest: sha256_base64(&legacies[0].key),
        encoding: "base64",
    };
    let again = import(&keygate, &owner, &twin, &[]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already"),
        "{again:?}"
    );

    // A short key's digest is refused unless the admin accepts the risk.
    let short = "pin_48213907";
    let weak = Legacy {
        key: short.into(),
        digest: sha256_hex(short),
        encoding: "hex",
    };
    let length = short.len().to_string();
    let shape = [
        "--prefix",
        "pin_",
        "--length",
        &length,
        "--alphabet-size",
        "10",
    ];
    let mut args = vec![
        "keys",
        "import",
        "--owner",
        &owner,
        "--name",
        "pin",
        "--scope",
        "read",
        "--sha256",
        &weak.digest,
        "--digest-encoding",
        "hex",
        "--json",
    ];
    args.extend_from_slice(&shape);
    let refused = cli(&keygate, &args);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(message.contains("brute-forced offline"), "{message}");
    assert!(message.contains("allow_low_entropy"), "{message}");
    assert!(!message.contains(&weak.digest), "{message}");
    args.push("--allow-low-entropy");
    let pin_id = json(&cli(&keygate, &args))["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let edge = Edge::start(&keygate).await;
    for legacy in &legacies[..3] {
        assert_eq!(edge.status(&legacy.key).await, 200, "{}", edge.envoy.log());
    }
    assert_eq!(edge.status(short).await, 200);
    let stranger = format!("{PREFIX}{}", Alphabet::Base62.random(32).as_str());
    assert_eq!(edge.status(&stranger).await, 401);
    let mut typo = legacies[0].key.clone();
    typo.pop();
    typo.push('!');
    assert_eq!(edge.status(&typo).await, 401);

    // First use replaced each digest with an argon2id hash; the unused key still waits.
    for id in ids[..3].iter().chain([&pin_id]) {
        assert_eq!(hash_of(&keygate, id), "argon2id", "key {id}");
    }
    assert_eq!(hash_of(&keygate, &ids[3]), "sha256-pending");
    let listed = json(&cli(
        &keygate,
        &["keys", "list", "--owner", &owner, "--json"],
    ));
    let pending: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["hash"] == "sha256-pending")
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(pending, [ids[3].as_str()]);
    // The keys go on working, now from the cache.
    assert_eq!(edge.status(&legacies[1].key).await, 200);

    // After a restart the upgraded keys are verified by their argon2id hashes, and the
    // key never used before is upgraded by its first use now.
    keygate.terminate();
    let mut keygate = keygate;
    assert!(
        keygate
            .wait_exit(std::time::Duration::from_secs(20))
            .success()
    );
    let first_log = keygate.log();
    drop(edge);
    let keygate = server(dir.path());
    let edge = Edge::start(&keygate).await;
    for legacy in &legacies {
        // Envoy's log says how a refusal came about (its access log has the duration and
        // the response flags), keygate's what it did.
        let status = edge.status(&legacy.key).await;
        assert_eq!(
            status,
            200,
            "keygate:\n{}\nEnvoy:\n{}",
            keygate.log(),
            edge.envoy.log()
        );
    }
    assert_eq!(edge.status(&stranger).await, 401);
    assert_eq!(hash_of(&keygate, &ids[3]), "argon2id");

    let logs = format!("{first_log}\n{}", keygate.log());
    assert!(logs.contains("now has an argon2id hash"), "{logs}");
    for legacy in &legacies {
        assert!(!logs.contains(&legacy.key), "a key was logged");
        assert!(!logs.contains(&legacy.digest), "a digest was logged");
    }
}
