//! The `keygate` command line, end to end: the real binary as server and as client.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use common::ADMIN_TOKEN;
use common::kubernetes::keygate_release_links;
use common::process::{KeygateProcess, keygate_bin};

const PEPPER: &str = "cli test pepper 0123456789";

fn server(dir: &std::path::Path) -> KeygateProcess {
    KeygateProcess::start(
        dir,
        &[
            ("KEYGATE_PEPPER", PEPPER),
            ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
}

/// Runs the CLI against `server` with the admin token, feeding `stdin`.
fn cli(server: &KeygateProcess, args: &[&str], stdin: &str) -> Output {
    cli_as(server, Some(ADMIN_TOKEN), args, stdin)
}

fn cli_as(server: &KeygateProcess, token: Option<&str>, args: &[&str], stdin: &str) -> Output {
    let mut command = Command::new(keygate_bin());
    command
        .args(args)
        .env_clear()
        .env("KEYGATE_ADDR", server.url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("KEYGATE_TOKEN", token);
    }
    let mut child = command.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[track_caller]
fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "failed: {}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

#[test]
fn the_five_minute_tour() {
    let dir = common::data_dir();
    // A data directory that does not exist yet is created on start.
    let server = server(&dir.path().join("new").join("data"));

    let owner = json(&cli(
        &server,
        &[
            "owners",
            "create",
            "--external-id",
            "acme",
            "--name",
            "Acme",
            "--json",
        ],
        "",
    ));
    let owner_id = owner["id"].as_str().unwrap().to_owned();
    assert_eq!(owner["plan"], "pro");

    let created = cli(
        &server,
        &[
            "keys",
            "create",
            "--owner",
            &owner_id,
            "--name",
            "CI",
            "--scope",
            "read",
            "--expires-in-days",
            "30",
        ],
        "",
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let out = stdout(&created);
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("secret: "))
        .expect("the secret is printed")
        .trim()
        .to_owned();
    assert!(secret.starts_with("kg_live_"));
    assert_eq!(
        out.matches(&secret).count(),
        1,
        "the secret is printed exactly once"
    );
    assert!(stderr(&created).contains("shown only once"));

    let listed = json(&cli(
        &server,
        &["keys", "list", "--owner", &owner_id, "--json"],
        "",
    ));
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    let key_id = keys[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(keys[0]["state"], "active");
    assert!(
        !listed.to_string().contains(&secret[20..]),
        "list never shows a secret"
    );
    let table = stdout(&cli(&server, &["keys", "list", "--owner", &owner_id], ""));
    assert!(
        table.contains(&key_id) && table.contains("CI") && table.contains("active"),
        "{table}"
    );

    let revoked = json(&cli(&server, &["keys", "revoke", &key_id, "--json"], ""));
    assert_eq!(revoked["state"], "revoked");
    assert!(revoked["revoke_time"].is_string());
    let fetched = json(&cli(&server, &["keys", "get", &key_id, "--json"], ""));
    assert_eq!(fetched["state"], "revoked");
}

#[test]
fn every_key_command_round_trips() {
    let dir = common::data_dir();
    let server = server(dir.path());
    let owner = json(&cli(
        &server,
        &[
            "owners",
            "create",
            "--external-id",
            "o",
            "--name",
            "O",
            "--json",
        ],
        "",
    ));
    let owner_id = owner["id"].as_str().unwrap();

    let pair = json(&cli(
        &server,
        &[
            "keys", "create", "--owner", owner_id, "--name", "pair", "--pair", "--json",
        ],
        "",
    ));
    assert!(pair["api_key"].as_str().unwrap().starts_with("kg_live_"));
    assert!(!pair["api_secret"].as_str().unwrap().is_empty());
    assert!(pair.get("secret").is_none());

    let pending = json(&cli(
        &server,
        &[
            "keys",
            "create",
            "--owner",
            owner_id,
            "--name",
            "mailed",
            "--require-activation",
            "--json",
        ],
        "",
    ));
    let pending_id = pending["key"]["id"].as_str().unwrap();
    let code = pending["activation_code"].as_str().unwrap();
    assert_eq!(pending["key"]["state"], "pending_activation");
    let active = json(&cli(
        &server,
        &["keys", "activate", pending_id, "--code", code, "--json"],
        "",
    ));
    assert_eq!(active["state"], "active");

    let updated = json(&cli(
        &server,
        &[
            "keys",
            "update",
            pending_id,
            "--name",
            "renamed",
            "--cidr",
            "10.0.0.0/8",
            "--disable",
            "--json",
        ],
        "",
    ));
    assert_eq!(updated["name"], "renamed");
    assert_eq!(updated["state"], "disabled");
    assert_eq!(updated["allowed_cidrs"][0], "10.0.0.0/8");

    let rotated = json(&cli(
        &server,
        &["keys", "rotate", pending_id, "--grace", "1h", "--json"],
        "",
    ));
    assert!(rotated["secret"].as_str().unwrap().contains(pending_id));
    assert!(rotated["key"]["previous_secret_expire_time"].is_string());

    let imported = json(&cli(
        &server,
        &[
            "keys", "import", "--owner", owner_id, "--name", "legacy", "--scope", "read", "--json",
        ],
        "ctw_3f8da4f058e8992f91c42ccfd00b31e3\n",
    ));
    assert_eq!(imported["kind"], "imported");
    assert!(
        !imported
            .to_string()
            .contains("3f8da4f058e8992f91c42ccfd00b31e3")
    );

    let owner_updated = json(&cli(
        &server,
        &[
            "owners", "update", owner_id, "--plan", "free", "--state", "disabled", "--json",
        ],
        "",
    ));
    assert_eq!(owner_updated["plan"], "free");
    assert_eq!(owner_updated["state"], "disabled");
    let plans = json(&cli(&server, &["plans", "list", "--json"], ""));
    assert_eq!(plans["default_plan"], "pro");

    let deleted = cli(&server, &["keys", "delete", pending_id], "");
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    let gone = cli(&server, &["keys", "get", pending_id], "");
    assert_eq!(gone.status.code(), Some(1));
    assert!(stderr(&gone).contains("not found"), "{}", stderr(&gone));
}

#[test]
fn plans_are_created_changed_and_deleted_and_the_configuration_never_overwrites_them() {
    let dir = common::data_dir();
    let mut server = server(dir.path());
    let team = json(&cli(
        &server,
        &[
            "plans",
            "create",
            "team",
            "--max-active-keys",
            "3",
            "--window",
            "10/1s",
            "--window",
            "2000/1h per owner",
            "--json",
        ],
        "",
    ));
    assert_eq!(team["api_access"], true);
    assert_eq!(team["rate_windows"][1]["period"], "1h");
    assert_eq!(team["rate_windows"][1]["scope"], "owner");
    let shown = cli(&server, &["plans", "get", "team"], "");
    assert!(
        stdout(&shown).contains("team  yes         3         10/1s per key, 2000/1h per owner"),
        "{}",
        stdout(&shown)
    );
    let closed = json(&cli(
        &server,
        &["plans", "update", "team", "--api-access", "false", "--json"],
        "",
    ));
    assert_eq!(closed["api_access"], false);
    assert_eq!(
        closed["rate_windows"], team["rate_windows"],
        "left as they were"
    );

    // Mistakes on the command line are refused before connecting, by the server's rules.
    for (args, mentions) in [
        (&["plans", "update", "team"][..], "nothing to update"),
        (
            &["plans", "create", "x", "--window", "0/1s"][..],
            "rate_windows[0].limit",
        ),
        (
            &["plans", "create", "x", "--window", "10/1fortnight"][..],
            "--window",
        ),
    ] {
        let refused = cli(&server, args, "");
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&refused)
        );
        assert!(stderr(&refused).contains(mentions), "{}", stderr(&refused));
    }

    let owner = json(&cli(
        &server,
        &[
            "owners",
            "create",
            "--external-id",
            "acme",
            "--name",
            "Acme",
            "--plan",
            "team",
            "--json",
        ],
        "",
    ));
    let owner_id = owner["id"].as_str().unwrap();
    let in_use = cli(&server, &["plans", "delete", "team"], "");
    assert_eq!(in_use.status.code(), Some(1));
    assert!(
        stderr(&in_use).contains("FailedPrecondition")
            && stderr(&in_use).contains("used by 1 owner and 0 keys"),
        "{}",
        stderr(&in_use)
    );
    let moved = cli(
        &server,
        &["owners", "update", owner_id, "--plan", "pro"],
        "",
    );
    assert!(moved.status.success(), "{}", stderr(&moved));
    let deleted = json(&cli(&server, &["plans", "delete", "team", "--json"], ""));
    assert_eq!(
        deleted,
        serde_json::json!({"name": "team", "deleted": true})
    );
    let listed = json(&cli(&server, &["plans", "list", "--json"], ""));
    let names: Vec<&str> = listed["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["free", "pro"]);

    // A configured plan changed through the API stays as changed across a restart with the
    // same configuration, and the server says so.
    let raised = cli(
        &server,
        &["plans", "update", "free", "--max-active-keys", "9"],
        "",
    );
    assert!(raised.status.success(), "{}", stderr(&raised));
    server.terminate();
    server.wait_exit(std::time::Duration::from_secs(10));
    let restarted = self::server(dir.path());
    let free = json(&cli(&restarted, &["plans", "get", "free", "--json"], ""));
    assert_eq!(free["max_active_keys"], 9);
    assert!(
        restarted
            .log()
            .contains("the configured plan differs from the stored one; keeping the stored plan"),
        "{}",
        restarted.log()
    );
}

#[test]
fn errors_exit_non_zero_with_the_servers_message() {
    let dir = common::data_dir();
    let server = server(dir.path());

    let anonymous = cli_as(&server, None, &["plans", "list"], "");
    assert_eq!(anonymous.status.code(), Some(1));
    assert!(
        stderr(&anonymous).contains("Unauthenticated"),
        "{}",
        stderr(&anonymous)
    );

    let unknown_owner = cli(
        &server,
        &["keys", "create", "--owner", "own_nobody", "--name", "x"],
        "",
    );
    assert_eq!(unknown_owner.status.code(), Some(1));
    assert!(stderr(&unknown_owner).contains("own_nobody"));
    assert!(stdout(&unknown_owner).is_empty());

    let usage = cli(&server, &["keys", "create", "--name", "no owner"], "");
    assert_eq!(usage.status.code(), Some(2));
    let empty_import = cli(
        &server,
        &["keys", "import", "--owner", "o", "--name", "x"],
        "",
    );
    assert_eq!(empty_import.status.code(), Some(2));

    let unreachable = Command::new(keygate_bin())
        .args(["plans", "list", "--addr", "http://127.0.0.1:1"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(stderr(&unreachable).contains("cannot reach keygate"));
}

/// Flags, environment, and what the error must mention.
type BadStart<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn a_bad_configuration_fails_before_serving_with_a_usage_code() {
    let dir = common::data_dir();
    let cases: &[BadStart] = &[
        (&["--management-addr", "nowhere"], &[], "listen.management"),
        (&[], &[("KEYGATE_ARGON2__ITERATIONS", "0")], "argon2"),
        (&["--set", "default_plan=gold"], &[], "default_plan"),
        (
            &["--management-addr", "0.0.0.0:0"],
            &[],
            "KEYGATE_ADMIN_TOKEN",
        ),
        (
            &[
                "--set",
                r#"profiles=[{"name":"ctw","alphabet":"hex","body_length":32}]"#,
                "--set",
                "default_profile=ctw",
            ],
            &[],
            "bits",
        ),
    ];
    for (args, env, mentions) in cases {
        let output = Command::new(keygate_bin())
            .arg("serve")
            .arg("--data-dir")
            .arg(dir.path())
            .args(*args)
            .env_clear()
            .env("KEYGATE_PEPPER", PEPPER)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(mentions),
            "{args:?} should mention {mentions}: {err}"
        );
        assert!(
            !err.contains("listening"),
            "no port may open on a bad config: {err}"
        );
    }
}

#[test]
fn kubernetes_service_links_never_stop_keygate_and_typos_still_do() {
    let links = keygate_release_links();
    let mut env: Vec<(&str, &str)> = links
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend([
        ("KEYGATE_PEPPER", PEPPER),
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
    ]);
    assert!(
        env.contains(&("KEYGATE_SERVICE_HOST", "10.96.0.10")),
        "{env:?}"
    );
    assert!(
        env.contains(&("KEYGATE_PORT", "tcp://10.96.0.10:9191")),
        "{env:?}"
    );

    // `serve` reports its three listeners (or the start panics with its log) and answers.
    let dir = common::data_dir();
    let served = KeygateProcess::start(dir.path(), &env);
    let plans = cli(&served, &["plans", "list", "--json"], "");
    assert!(plans.status.success(), "{}", stderr(&plans));
    drop(served);

    let checked = keygate(&["config", "check"], &env);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let effective: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(&checked.stdout).expect("the effective configuration");
    assert_eq!(effective["listen"]["data_plane"], "0.0.0.0:9191");

    // Among them, a misspelt field, at the top or nested, and a misspelt flag still fail.
    let data_dir = dir.path().to_str().unwrap();
    for (typo, args, mentions) in [
        (
            ("KEYGATE_DATA_DIRR", data_dir),
            &[][..],
            "KEYGATE_DATA_DIRR",
        ),
        (
            ("KEYGATE_LISTEN__MANAGMENT", "127.0.0.1:0"),
            &[][..],
            "KEYGATE_LISTEN__MANAGMENT",
        ),
        (
            ("KEYGATE_DATA_DIR", data_dir),
            &["--set", "listen.managment=127.0.0.1:0"][..],
            "listen.managment",
        ),
    ] {
        let mut env = env.clone();
        env.push(typo);
        for command in [&["config", "check"][..], &["serve"][..]] {
            let args: Vec<&str> = command.iter().chain(args).copied().collect();
            let failed = keygate(&args, &env);
            let err = stderr(&failed);
            assert_eq!(failed.status.code(), Some(2), "{typo:?} {args:?}: {err}");
            assert!(err.contains(mentions), "{typo:?} {args:?}: {err}");
            assert!(!err.contains("listening"), "{err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_export_and_import_move_an_embedded_store_to_redis() {
    use keygate::proto::{self, key_manager_client::KeyManagerClient};

    let redis = tokio::task::spawn_blocking(common::redis::RedisServer::start)
        .await
        .unwrap();
    let redis_url = redis.url();
    let dir = common::data_dir();
    let (old_dir, new_dir, file) = (
        dir.path().join("old"),
        dir.path().join("new"),
        dir.path().join("export.jsonl"),
    );
    let env = [
        ("KEYGATE_PEPPER", PEPPER),
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
    ];
    let redis_env = [
        ("KEYGATE_PEPPER", PEPPER),
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("KEYGATE_STORE", "redis"),
        ("KEYGATE_REDIS__URL", redis_url.as_str()),
    ];
    let old = KeygateProcess::start(&old_dir, &env);
    let mut client = KeyManagerClient::connect(old.url()).await.unwrap();
    let owner = common::create_owner(&mut client, "acme", "").await;
    let issued = common::issue_manager_key(&mut client, &owner.id, "manager").await;
    let legacy = "legacy-key-0123456789";
    common::import_manager_key(&mut client, &owner.id, "legacy", legacy).await;
    let revoked = client
        .create_key(common::admin(proto::CreateKeyRequest {
            owner_id: owner.id.clone(),
            name: "old".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .key
        .unwrap();
    let revoked = client
        .revoke_key(common::admin(proto::RevokeKeyRequest { id: revoked.id }))
        .await
        .unwrap()
        .into_inner();
    old.kill_hard();

    let admin = |args: &[&str], data_dir: &std::path::Path, env: &[(&str, &str)]| {
        Command::new(keygate_bin())
            .arg("admin")
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let exported = admin(
        &["export", "--output", file.to_str().unwrap()],
        &old_dir,
        &[],
    );
    assert!(exported.status.success(), "{}", stderr(&exported));
    assert!(
        stderr(&exported).contains("exported 2 plans, 1 owners and 3 keys"),
        "{}",
        stderr(&exported)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert_eq!(text.lines().count(), 6);
    assert!(
        !text.contains(&issued.secret[20..]) && !text.contains(legacy),
        "no secret in an export"
    );
    assert!(text.lines().next().unwrap().contains("\"kind\":\"plan\""));
    assert!(text.lines().nth(2).unwrap().contains("\"kind\":\"owner\""));

    let imported = admin(
        &["import", "--input", file.to_str().unwrap()],
        &new_dir,
        &redis_env,
    );
    assert!(imported.status.success(), "{}", stderr(&imported));
    assert!(stderr(&imported).contains("imported 2 plans, 1 owners and 3 keys"));
    // The plans are there as exported; the owner is refused as already there.
    let again = admin(
        &["import", "--input", file.to_str().unwrap()],
        &new_dir,
        &redis_env,
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("line 3") && stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );

    // keygate on the Redis store serves the same records, and the same secrets (given the
    // same pepper); it warns that this test Redis runs without AOF.
    let new = KeygateProcess::start(&new_dir, &redis_env);
    assert!(new.log().contains("without AOF"), "{}", new.log());
    let mut client = KeyManagerClient::connect(new.url()).await.unwrap();
    let fetched = client
        .get_key(common::admin(proto::GetKeyRequest {
            id: revoked.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, revoked);
    for secret in [issued.secret.as_str(), legacy] {
        common::get_owner_as(&mut client, secret, &owner.id)
            .await
            .unwrap();
    }
}

#[test]
fn the_redis_store_requires_a_shared_pepper() {
    let dir = common::data_dir();
    let output = Command::new(keygate_bin())
        .args(["serve", "--set", "store=redis", "--data-dir"])
        .arg(dir.path())
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("KEYGATE_PEPPER"),
        "{}",
        stderr(&output)
    );
    assert!(
        !dir.path().join("pepper").exists(),
        "no replica-local pepper is generated"
    );
}

fn keygate(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(keygate_bin())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

#[test]
fn version_names_the_release_and_the_git_revision() {
    let output = keygate(&["--version"], &[]);
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    let expected = format!("keygate {} (revision ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected), "{text}");
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git is needed to build from a checkout");
    let revision = String::from_utf8_lossy(&git.stdout).trim().to_owned();
    assert!(
        git.status.success() && text.contains(&format!("(revision {revision})")),
        "{text} vs {revision}"
    );
}

#[test]
fn config_check_prints_the_effective_configuration_with_secrets_masked() {
    let dir = common::data_dir();
    let file = dir.path().join("keygate.yaml");
    std::fs::write(
        &file,
        "store: redis\nredis:\n  url: redis://app:hunter2-redis-password@redis:6379/0\nshutdown:\n  drain_grace: 12s\ndecision_log: denied\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let checked = keygate(
        &[
            "config",
            "check",
            "--config",
            path,
            "--set",
            "listen.metrics=127.0.0.1:9300",
        ],
        &[("KEYGATE_PEPPER", PEPPER)],
    );
    assert!(checked.status.success(), "{}", stderr(&checked));
    assert!(stderr(&checked).contains("configuration is valid"));
    let stdout = String::from_utf8_lossy(&checked.stdout).into_owned();
    assert!(!stdout.contains("hunter2"), "{stdout}");
    let effective: serde_yaml_ng::Value = serde_yaml_ng::from_str(&stdout).unwrap();
    assert_eq!(effective["redis"]["url"], "redis://app:****@redis:6379/0");
    assert_eq!(effective["shutdown"]["drain_grace"], "12s");
    assert_eq!(effective["listen"]["metrics"], "127.0.0.1:9300");
    assert_eq!(effective["decision_log"], "denied");
    assert_eq!(
        effective["listen"]["data_plane"], "0.0.0.0:9191",
        "defaults shown"
    );

    let unshared = keygate(&["config", "check", "--config", path], &[]);
    assert_eq!(unshared.status.code(), Some(2));
    assert!(
        stderr(&unshared).contains("KEYGATE_PEPPER"),
        "{}",
        stderr(&unshared)
    );

    let typo = keygate(
        &["config", "check", "--set", "shutdown.drain_grace=soon"],
        &[],
    );
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        stderr(&typo).contains("shutdown.drain_grace"),
        "{}",
        stderr(&typo)
    );
    assert!(typo.stdout.is_empty());
}

/// `keygate serve` with `env` over `data_dir`, expected to stop before serving: its exit
/// code and what it logged.
fn refused_start(data_dir: &std::path::Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(keygate_bin())
        .args(["serve", "--management-addr", "127.0.0.1:0"])
        .args([
            "--data-plane-addr",
            "127.0.0.1:0",
            "--set",
            "listen.metrics=127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let err = stderr(&output);
    assert!(!err.contains("listening"), "no port may open: {err}");
    (output.status.code(), err)
}

#[test]
fn a_blank_or_short_admin_token_stops_the_start() {
    let dir = common::data_dir();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "  \n").unwrap();
    let short = "s3cret-but-only-31-bytes-long!!";
    assert_eq!(short.len(), 31);
    for (variable, value, problem) in [
        ("KEYGATE_ADMIN_TOKEN", short, "too short"),
        ("KEYGATE_ADMIN_TOKEN", "      ", "only whitespace"),
        (
            "KEYGATE_ADMIN_TOKEN_FILE",
            token_file.to_str().unwrap(),
            "only whitespace",
        ),
    ] {
        let data = common::data_dir();
        let (code, err) = refused_start(
            data.path(),
            &[("KEYGATE_PEPPER", PEPPER), (variable, value)],
        );
        assert_eq!(code, Some(2), "{variable}: {err}");
        assert!(
            err.contains("KEYGATE_ADMIN_TOKEN")
                && err.contains(problem)
                && err.contains("32 bytes"),
            "{variable}: {err}"
        );
        assert!(!err.contains(short), "the token is never echoed: {err}");
    }
}

#[cfg(unix)]
#[test]
fn data_directories_and_peppers_open_to_others_stop_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path, mode| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    let env = [("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)];

    let open_dir = common::data_dir();
    for shared in [0o755, 0o750, 0o707] {
        mode(open_dir.path(), shared);
        let (code, err) = refused_start(open_dir.path(), &env);
        assert_eq!(code, Some(2), "{err}");
        let chmod = format!("run `chmod 700 {}`", open_dir.path().display());
        assert!(err.contains("data_dir") && err.contains(&chmod), "{err}");
    }
    assert!(
        !open_dir.path().join("pepper").exists(),
        "nothing is written there"
    );

    let data = common::data_dir();
    let pepper = data.path().join("pepper");
    std::fs::write(&pepper, "a pepper of enough bytes, 0123456789").unwrap();
    mode(&pepper, 0o644);
    let (code, err) = refused_start(data.path(), &env);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&format!("run `chmod 600 {}`", pepper.display())),
        "{err}"
    );
    assert!(
        !err.contains("a pepper of enough bytes"),
        "never echoed: {err}"
    );
}

#[cfg(unix)]
#[test]
fn a_new_data_directory_and_its_files_are_private_to_keygate() {
    use std::os::unix::fs::PermissionsExt;
    let parent = common::data_dir();
    let data = parent.path().join("data");
    let served = KeygateProcess::start(&data, &[("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
    let mode =
        |path: std::path::PathBuf| std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(data.clone()), 0o700);
    assert_eq!(mode(data.join("keygate.redb")), 0o600);
    assert_eq!(mode(data.join("pepper")), 0o600);
    drop(served);
    // And the server starts again over what it created.
    KeygateProcess::start(&data, &[("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)]);
}
