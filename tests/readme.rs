//! The README as a new user meets it: its first command serves, and its Install on
//! Kubernetes section's values example installs with the Helm chart, every value it names
//! being one of the chart's.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value as Json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use common::helm::{chart_dir, render, repo_path};
use common::process::{keygate_bin, logged_addr};

/// How long the first command may take to build (nothing, when the tests' build is fresh)
/// and report its data plane.
const FIRST_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// How long keygate may take to stop after SIGTERM, with no drain grace.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A child process killed when dropped, so a failed assertion leaves nothing running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The first command of the README (the first line of its first `sh` block), without its
/// comment, as words.
fn first_command(readme: &str) -> Vec<String> {
    let block = readme
        .split("```sh\n")
        .nth(1)
        .expect("the README has a sh block");
    let line = block.lines().next().unwrap_or_default();
    let command = line.split(" #").next().unwrap_or_default();
    command.split_whitespace().map(str::to_owned).collect()
}

/// The target directory the tests' keygate binary was built in (`<dir>/debug/keygate`),
/// where `cargo run` finds the same build up to date.
fn target_dir() -> PathBuf {
    let binary = keygate_bin();
    let profile_dir = binary.parent().expect("the binary's directory");
    profile_dir
        .parent()
        .map(Path::to_path_buf)
        .expect("the target directory")
}

/// Whether Cargo put the variable `name` in this test's environment, where a user's shell
/// has none: left in, it would make `cargo run` rerun the build scripts that watch it (ring's
/// watches `CARGO_PKG_NAME`) and rebuild much of the dependency tree.
fn set_for_tests_by_cargo(name: &str) -> bool {
    name.starts_with("CARGO_PKG_")
        || matches!(
            name,
            "CARGO"
                | "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_s_first_command_serves() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let words = first_command(&readme);
    assert_eq!(
        words,
        ["cargo", "run", "--release", "--", "serve"],
        "the first command changed; update this test with it"
    );
    // As written, but in the debug profile the tests have built already. Run from the
    // checkout in the environment of these tests (Cargo's own variables and all), with a
    // fresh data directory and loopback ports chosen by the system instead of the defaults,
    // through the configuration's own variables.
    let data_dir = common::data_dir();
    let mut command = Command::new(env!("CARGO"));
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(set_for_tests_by_cargo) {
            command.env_remove(name);
        }
    }
    command
        .args(words[1..].iter().filter(|word| *word != "--release"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target_dir())
        .env("KEYGATE_LOG", "info")
        .env("KEYGATE_DATA_DIR", data_dir.path())
        .env("KEYGATE_LISTEN__MANAGEMENT", "127.0.0.1:0")
        .env("KEYGATE_LISTEN__DATA_PLANE", "127.0.0.1:0")
        .env("KEYGATE_LISTEN__METRICS", "127.0.0.1:0")
        .env("KEYGATE_SHUTDOWN__DRAIN_GRACE", "0s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Running(command.spawn().expect("cannot run cargo"));
    let stderr = child.0.stderr.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let data_plane: SocketAddr = loop {
        match received.recv_timeout(FIRST_COMMAND_TIMEOUT) {
            Ok(line) => {
                let addr = line
                    .contains("data plane listening")
                    .then(|| logged_addr(&line))
                    .flatten();
                log.push(line);
                if let Some(addr) = addr {
                    break addr;
                }
            }
            Err(e) => panic!(
                "the first command did not serve ({e}); its output:\n{}",
                log.join("\n")
            ),
        }
    };

    let channel = tonic::transport::Channel::from_shared(format!("http://{data_plane}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_or_else(|e| panic!("{e}; output:\n{}", log.join("\n")))
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);

    // `cargo run` replaced itself with keygate: SIGTERM reaches keygate, which drains and
    // exits cleanly.
    let sent = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("cannot run kill");
    assert!(sent.success());
    // Its output ends when it exits.
    loop {
        match received.recv_timeout(STOP_TIMEOUT) {
            Ok(line) => log.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => panic!(
                "keygate did not stop within {STOP_TIMEOUT:?} of SIGTERM; output:\n{}",
                log.join("\n")
            ),
        }
    }
    let status = child.0.wait().unwrap();
    let log = log.join("\n");
    assert!(status.success(), "{status}; output:\n{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(
        log.contains("Running `") && log.contains("keygate serve`"),
        "Cargo ran keygate: {log}"
    );
}

#[test]
fn the_readme_install_section_matches_the_chart() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let start = readme
        .find("\n## Install on Kubernetes\n")
        .expect("the README has an Install on Kubernetes section");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];

    // Its values example installs as written.
    let example = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a values example");
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), example).unwrap();
    let rendering = render(&[file.path()], &[]);
    assert_eq!(rendering.keygate_config()["store"], "redis");

    // Every value it names (`a.b.c`, starting with one of the chart's values) exists.
    let values: Json =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    let named: Vec<&str> = section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.contains('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '*')
        })
        .filter(|s| values.get(s.split('.').next().unwrap()).is_some())
        .collect();
    assert!(named.len() >= 5, "{named:?}");
    for path in named {
        let mut node = &values;
        for part in path.split('.').take_while(|p| *p != "*") {
            node = node.get(part).unwrap_or_else(|| {
                panic!("the README names `{path}`, which the chart does not have")
            });
        }
    }
}

/// The code block of `language` in the README section titled `heading`.
fn section_block(readme: &str, heading: &str, language: &str) -> String {
    let start = readme
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("the README has a {heading:?} section"));
    let section = &readme[start + heading.len() + 2..];
    let end = ["\n## ", "\n### "]
        .iter()
        .filter_map(|heading| section.find(heading))
        .min()
        .unwrap_or(section.len());
    section[..end]
        .split(&format!("```{language}\n"))
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .unwrap_or_else(|| panic!("{heading} has a {language} example"))
        .to_owned()
}

#[test]
fn the_readme_json_api_examples_work_as_written() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let dir = common::data_dir();
    let server = common::process::KeygateProcess::start(
        dir.path(),
        &[
            ("KEYGATE_PEPPER", "readme json pepper 0123456"),
            ("KEYGATE_ADMIN_TOKEN", common::ADMIN_TOKEN),
        ],
    );
    let env = [
        ("KEYGATE_URL", server.url()),
        ("KEYGATE_ADMIN_TOKEN", common::ADMIN_TOKEN.to_owned()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
    ];
    let run = |program: PathBuf, flag: &str, script: String| {
        let output = Command::new(program)
            .args([flag, &script])
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v.as_str())))
            .output()
            .expect("cannot run the example");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{script}\n{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };

    let shell = section_block(&readme, "### Over HTTP (JSON)", "sh");
    common::tools::system_tool("jq");
    let printed = run(common::tools::system_tool("bash"), "-ec", shell);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 2, "{printed}");
    assert!(lines[0].ends_with(" ci KEY_STATE_ACTIVE"), "{printed}");
    assert_eq!(lines[1], "KEY_STATE_REVOKED");

    let python = section_block(&readme, "### Over HTTP (JSON)", "python");
    let printed = run(common::tools::venv_tool("python"), "-c", python);
    assert_eq!(printed, "['ci']\nKEY_STATE_REVOKED\n");

    // What the examples made is what the server holds.
    let (status, owners) = common::json_api::send(
        server.management_addr,
        common::ADMIN_TOKEN,
        "GET",
        "/v1/owners",
        None,
    );
    assert_eq!(status, 200);
    let names: Vec<&str> = owners["owners"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["externalId"].as_str())
        .collect();
    assert_eq!(names.len(), 2, "{owners}");
    assert!(
        names.contains(&"acme") && names.contains(&"globex"),
        "{owners}"
    );
}

/// The quota and credit examples: the configuration loads with its quotas, and the shell
/// example runs as written against a running keygate (the CLI on `PATH`), granting and
/// replacing credits.
#[test]
fn the_readme_quota_and_credit_examples_work_as_written() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let heading = "### Calendar quotas and credits";

    let dir = common::data_dir();
    let file = dir.path().join("quotas.toml");
    std::fs::write(&file, section_block(&readme, heading, "toml")).unwrap();
    let config = keygate::config::Config::load(Some(&file), [], &[]).unwrap();
    let plan = config.plans.iter().find(|p| p.name == "metered").unwrap();
    assert_eq!(plan.quotas.len(), 2);
    assert_eq!(config.time_zone.name(), "Europe/Paris");

    let server = common::process::KeygateProcess::start(
        dir.path(),
        &[
            ("KEYGATE_PEPPER", "readme quota pepper 0123456"),
            ("KEYGATE_ADMIN_TOKEN", common::ADMIN_TOKEN),
        ],
    );
    let script = section_block(&readme, heading, "sh");
    let stdout = run_cli_example(&script, &server, dir.path(), &[]);
    // The plan's table, the credits `jq` printed, then the key's table.
    let printed = &stdout[stdout.find("\n{").unwrap_or_else(|| panic!("{stdout}"))..];
    let granted: Json = serde_json::Deserializer::from_str(printed)
        .into_iter()
        .next()
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert!(stdout.contains("10000/month@15 per key"), "{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.ends_with("unlimited"), "{stdout}");
    assert_eq!(granted["remaining"], 1000, "{stdout}");
    assert_eq!(granted["refill"], "1000/month@1", "{stdout}");
}

#[test]
fn the_readme_migration_by_hash_example_works_as_written() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let script = section_block(&readme, "### Migrating keys by hash", "sh");
    let dir = common::data_dir();
    let server = common::process::KeygateProcess::start(
        dir.path(),
        &[
            ("KEYGATE_PEPPER", "readme migration pepper 0123"),
            ("KEYGATE_ADMIN_TOKEN", common::ADMIN_TOKEN),
        ],
    );
    let (status, owner) = common::json_api::send(
        server.management_addr,
        common::ADMIN_TOKEN,
        "POST",
        "/v1/owners",
        Some(&serde_json::json!({"externalId": "migrated", "displayName": "Migrated"})),
    );
    assert_eq!(status, 200, "{owner}");
    // The old system's export, made with sha256sum as that system would have.
    let work = tempfile::tempdir().unwrap();
    let mut export = String::new();
    for _ in 0..3 {
        let key = format!(
            "sk_live_{}",
            keygate::key::format::Alphabet::Base62.random(32).as_str()
        );
        let mut child = Command::new(common::tools::system_tool("sha256sum"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), key.as_bytes()).unwrap();
        let printed = child.wait_with_output().unwrap().stdout;
        let digest = String::from_utf8(printed).unwrap();
        export.push_str(digest.split_whitespace().next().unwrap());
        export.push('\n');
    }
    std::fs::write(work.path().join("digests.txt"), export).unwrap();

    let owner_id = owner["id"].as_str().unwrap();
    let printed = run_cli_example(&script, &server, work.path(), &[("OWNER", owner_id)]);
    // Three keys imported, then the same three listed as waiting for their first use.
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(lines.len(), 6, "{printed}");
    let (imported, pending) = lines.split_at(3);
    let mut imported = imported.to_vec();
    imported.sort_unstable();
    assert_eq!(imported, pending, "{printed}");
}

/// Runs a shell example of the README with `bash -e` in `dir`, as a user would after
/// pointing the CLI (on `PATH`, with `jq`) at `server` with the admin token, and `env`
/// set: what it printed. It must succeed.
fn run_cli_example(
    script: &str,
    server: &common::process::KeygateProcess,
    dir: &Path,
    env: &[(&str, &str)],
) -> String {
    common::tools::system_tool("jq");
    let binary_dir = keygate_bin().parent().unwrap().to_path_buf();
    let path = std::env::join_paths(std::iter::once(binary_dir).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .unwrap();
    let output = Command::new(common::tools::system_tool("bash"))
        .args(["-ec", script])
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("KEYGATE_ADDR", server.url())
        .env("KEYGATE_TOKEN", common::ADMIN_TOKEN)
        .envs(env.iter().copied())
        .output()
        .expect("cannot run the example");
    let printed = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script}\n{printed}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    printed
}
