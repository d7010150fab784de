//! Usage history through the real binary: after a known sequence of allowed and denied
//! requests, GetKeyUsage (JSON and the CLI) shows exactly those counts, per key and per
//! owner, on today's date in the configured time zone; they are written in batches, and on
//! shutdown, so a restart loses none.

mod common;

use std::process::Command;
use std::time::Duration;

use common::ADMIN_TOKEN;
use common::json_api::{call, send};
use common::process::{KeygateProcess, keygate_bin};
use keygate::calendar::Calendar;
use serde_json::{Value, json};

/// A plan whose single window admits exactly 5 requests per key in the test's hour, and a
/// flush interval long enough that only the shutdown writes.
/// The time zone days are counted in: UTC+14, so that "today" there differs from UTC's
/// for most of the day.
const ZONE: &str = "Pacific/Kiritimati";

const CONFIG: &str = r#"
[usage]
flush_interval = "1h"

[[plans]]
name = "metered"
rate_windows = [{ limit = 5, period = "1h" }]
"#;

fn start(dir: &std::path::Path) -> KeygateProcess {
    KeygateProcess::start_with_config(
        dir,
        &format!("time_zone = \"{ZONE}\"\n{}{CONFIG}", common::TEST_CONFIG),
        &[
            ("KEYGATE_PEPPER", "usage history pepper 012345"),
            ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
}

#[test]
fn usage_counts_are_exact_per_key_and_owner_and_survive_a_restart() {
    let dir = common::data_dir();
    let mut server = start(dir.path());
    let admin = |rpc: &str, message: Value| {
        call(server.management_addr, ADMIN_TOKEN, rpc, message)
            .unwrap_or_else(|refusal| panic!("{rpc}: {refusal:?}"))
    };
    let owner = admin(
        "CreateOwner",
        json!({"externalId": "acme", "displayName": "Acme", "plan": "metered"}),
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = |name: &str| {
        let made = admin(
            "CreateKey",
            json!({"ownerId": owner, "name": name, "scopes": ["read"]}),
        );
        (
            made["key"]["id"].as_str().unwrap().to_owned(),
            made["secret"].as_str().unwrap().to_owned(),
        )
    };
    let ((a, a_secret), (b, b_secret)) = (key("a"), key("b"));
    let authorize = |secret: &str, scopes: &[&str]| {
        let body =
            json!({"key": secret, "method": "GET", "path": "/v1/x", "requiredScopes": scopes});
        let (status, answer) = send(
            server.data_plane_addr,
            "",
            "POST",
            "/v1/authorize",
            Some(&body),
        );
        assert_eq!(status, 200, "{answer}");
        answer["code"].as_str().unwrap().to_owned()
    };
    let mut codes = Vec::new();
    for _ in 0..7 {
        codes.push(authorize(&a_secret, &[]));
    }
    for _ in 0..3 {
        codes.push(authorize(&a_secret, &["admin"]));
    }
    for _ in 0..2 {
        codes.push(authorize(&b_secret, &[]));
    }
    admin("RevokeKey", json!({"id": b}));
    codes.push(authorize(&b_secret, &[]));
    codes.push(authorize("kg_live_notakeyatall", &[]));
    let count = |code: &str| codes.iter().filter(|c| *c == code).count();
    assert_eq!(count("DECISION_CODE_OK"), 7, "{codes:?}");
    assert_eq!(count("DECISION_CODE_RATE_LIMITED"), 2, "{codes:?}");
    assert_eq!(count("DECISION_CODE_INSUFFICIENT_SCOPE"), 3, "{codes:?}");
    assert_eq!(count("DECISION_CODE_INVALID_API_KEY"), 2, "{codes:?}");

    // Nothing is written before the flush interval; the shutdown writes everything.
    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    let server = start(dir.path());
    let today = Calendar::new(ZONE)
        .unwrap()
        .day(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
        )
        .to_string();
    let usage = |message: Value| {
        let answer = call(server.management_addr, ADMIN_TOKEN, "GetKeyUsage", message).unwrap();
        assert_eq!(answer["timeZone"], ZONE);
        let days = answer["days"].as_array().unwrap().clone();
        let (last, before) = days.split_last().unwrap();
        assert_eq!(
            last["date"],
            today.as_str(),
            "the range ends today in the zone"
        );
        for day in before {
            assert_eq!(
                (
                    day["allowed"].as_str(),
                    day["denied"].as_object().map(|d| d.len())
                ),
                (Some("0"), Some(0)),
                "{day}"
            );
        }
        (last["allowed"].clone(), last["denied"].clone())
    };
    // uint64 counts are strings in the proto3 JSON mapping.
    assert_eq!(
        usage(json!({"keyId": a})),
        (
            json!("5"),
            json!({"RATE_LIMITED": "2", "INSUFFICIENT_SCOPE": "3"})
        )
    );
    assert_eq!(
        usage(json!({"keyId": b})),
        (json!("2"), json!({"INVALID_API_KEY": "1"}))
    );
    assert_eq!(
        usage(json!({"ownerId": owner})),
        (
            json!("7"),
            json!({"RATE_LIMITED": "2", "INSUFFICIENT_SCOPE": "3", "INVALID_API_KEY": "1"})
        )
    );
    let (_, key_a) = send(
        server.management_addr,
        ADMIN_TOKEN,
        "GET",
        &format!("/v1/keys/{a}"),
        None,
    );
    assert_eq!(
        key_a["usageCount"], "5",
        "usage_count counts allowed requests only"
    );

    // The CLI: a table with a chart, and JSON.
    let cli = |args: &[&str]| {
        let output = Command::new(keygate_bin())
            .args(["keys", "usage"])
            .args(args)
            .args(["--addr", &server.url()])
            .env_clear()
            .env("KEYGATE_TOKEN", ADMIN_TOKEN)
            .output()
            .expect("cannot run the keygate CLI");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let table = cli(&[&a, "--days", "7"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + 7 + 1, "{table}");
    assert!(lines[0].starts_with("DATE"), "{table}");
    let last_day: Vec<&str> = lines[7].split_whitespace().collect();
    assert_eq!(last_day[..3], [today.as_str(), "5", "5"], "{table}");
    assert!(
        lines[7].contains("INSUFFICIENT_SCOPE 3, RATE_LIMITED 2"),
        "{table}"
    );
    let bar = last_day.last().unwrap();
    assert_eq!(bar.len(), 40, "the busiest day fills the chart: {table}");
    assert_eq!(bar.matches('#').count(), 20, "half allowed: {table}");
    assert_eq!(
        lines[8],
        "total: 5 allowed, 5 denied (days in Pacific/Kiritimati)"
    );
    let json: Value = serde_json::from_str(&cli(&["--owner", &owner, "--json"])).unwrap();
    let days = json["days"].as_array().unwrap();
    assert_eq!(days.len(), 30);
    assert_eq!(days[29]["allowed"], 7);
    assert_eq!(days[29]["denied"]["INVALID_API_KEY"], 1);
}
