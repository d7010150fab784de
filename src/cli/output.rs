//! How the client prints answers: aligned tables for people, JSON for programs.
//!
//! JSON objects use the proto field names; enums are their short lower-case names
//! (`active`, `pending_activation`, `pair`, `owner`, ...) and timestamps RFC 3339 strings
//! or `null`. Durations are written the way `--grace` accepts them (`1h`, `30m`).

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::proto;

/// The line printed on standard error after a secret was shown.
pub const SECRET_WARNING: &str = "warning: this secret is shown only once; store it now.";

/// Latest second humantime can format: 9999-12-31T23:59:59Z.
const MAX_FORMATTED_SECONDS: i64 = 253_402_300_799;

/// `ts` as an RFC 3339 string in UTC, whole seconds; `None` when absent or outside
/// 1970..=9999.
pub fn timestamp(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let ts = ts?;
    if !(0..=MAX_FORMATTED_SECONDS).contains(&ts.seconds) {
        return None;
    }
    let time = SystemTime::try_from(*ts).ok()?;
    if time.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() > MAX_FORMATTED_SECONDS as u64 {
        return None;
    }
    Some(humantime::format_rfc3339_seconds(time).to_string())
}

fn timestamp_json(ts: Option<&prost_types::Timestamp>) -> Value {
    timestamp(ts).map_or(Value::Null, Value::String)
}

/// `d` written like `1h` or `1m 30s`; `None` when negative or malformed.
pub fn duration(d: Option<&prost_types::Duration>) -> Option<String> {
    let d = Duration::try_from(*d?).ok()?;
    Some(humantime::format_duration(d).to_string())
}

/// The short name of an enum value: its proto name without `prefix`, lower case.
/// Values this client does not know are written `unknown_<number>`.
fn enum_name(name: Option<&str>, prefix: &str, value: i32) -> String {
    match name.and_then(|name| name.strip_prefix(prefix)) {
        Some(short) => short.to_ascii_lowercase(),
        None => format!("unknown_{value}"),
    }
}

/// Short name of an owner state: `active`, `disabled`, `unspecified`.
pub fn owner_state_name(value: i32) -> String {
    let name = proto::OwnerState::try_from(value)
        .ok()
        .map(|s| s.as_str_name());
    enum_name(name, "OWNER_STATE_", value)
}

/// Short name of a key state: `active`, `pending_activation`, `disabled`, `revoked`.
pub fn key_state_name(value: i32) -> String {
    let name = proto::KeyState::try_from(value)
        .ok()
        .map(|s| s.as_str_name());
    enum_name(name, "KEY_STATE_", value)
}

/// Short name of a key kind: `single`, `pair`, `imported`.
pub fn key_kind_name(value: i32) -> String {
    let name = proto::KeyKind::try_from(value)
        .ok()
        .map(|s| s.as_str_name());
    enum_name(name, "KEY_KIND_", value)
}

/// Short name of a rate scope: `key`, `owner`.
pub fn rate_scope_name(value: i32) -> String {
    let name = proto::RateScope::try_from(value)
        .ok()
        .map(|s| s.as_str_name());
    enum_name(name, "RATE_SCOPE_", value)
}

/// An owner as JSON.
pub fn owner_json(owner: &proto::Owner) -> Value {
    json!({
        "id": owner.id,
        "external_id": owner.external_id,
        "display_name": owner.display_name,
        "state": owner_state_name(owner.state),
        "plan": owner.plan,
        "metadata": owner.metadata,
        "create_time": timestamp_json(owner.create_time.as_ref()),
        "update_time": timestamp_json(owner.update_time.as_ref()),
    })
}

/// A key as JSON. A `Key` never carries a secret.
pub fn key_json(key: &proto::Key) -> Value {
    json!({
        "id": key.id,
        "owner_id": key.owner_id,
        "name": key.name,
        "profile": key.profile,
        "prefix": key.prefix,
        "kind": key_kind_name(key.kind),
        "hash": key.hash,
        "scopes": key.scopes,
        "plan": key.plan,
        "allowed_cidrs": key.allowed_cidrs,
        "metadata": key.metadata,
        "state": key_state_name(key.state),
        "create_time": timestamp_json(key.create_time.as_ref()),
        "update_time": timestamp_json(key.update_time.as_ref()),
        "expire_time": timestamp_json(key.expire_time.as_ref()),
        "revoke_time": timestamp_json(key.revoke_time.as_ref()),
        "last_used_time": timestamp_json(key.last_used_time.as_ref()),
        "usage_count": key.usage_count,
        "previous_secret_expire_time": timestamp_json(key.previous_secret_expire_time.as_ref()),
        "public_key": key.public_key,
        "credits": key.credits.as_ref().map(|c| json!({
            "remaining": c.remaining,
            "refill": c.refill.as_ref().map(refill_text),
            "grant_time": timestamp_json(c.grant_time.as_ref()),
        })),
    })
}

/// A cycle as `PERIOD[@ANCHOR]`, as `--quota` and `--refill` take it: `month@15`
/// ([`crate::calendar::Cycle`] writes it); `?` for one the server could not have sent.
fn cycle_text(period: i32, anchor_day: u32, anchor_weekday: &str) -> String {
    crate::service::convert::cycle("cycle", period, anchor_day, anchor_weekday)
        .map_or_else(|_| "?".to_owned(), |cycle| cycle.to_string())
}

/// A refill as `--refill` takes it: `100/1h` or `1000/month@1`.
fn refill_text(refill: &proto::CreditRefill) -> String {
    let every = match &refill.interval {
        Some(interval) => duration(Some(interval)).unwrap_or_else(|| "?".to_owned()),
        None => cycle_text(refill.period, refill.anchor_day, &refill.anchor_weekday),
    };
    format!("{}/{every}", refill.amount)
}

/// A key's credits for a table: what is left, and the refill.
fn credits_text(credits: Option<&proto::Credits>) -> String {
    match credits {
        None => "unlimited".to_owned(),
        Some(c) => match &c.refill {
            None => c.remaining.to_string(),
            Some(refill) => format!("{} (+{})", c.remaining, refill_text(refill)),
        },
    }
}

/// A plan's calendar quotas, e.g. `10000/month@15 per key`; `-` when none.
pub fn quotas_text(quotas: &[proto::CalendarQuota]) -> String {
    if quotas.is_empty() {
        return "-".to_owned();
    }
    quotas
        .iter()
        .map(|q| {
            let cycle = cycle_text(q.period, q.anchor_day, &q.anchor_weekday);
            format!("{}/{cycle} per {}", q.limit, rate_scope_name(q.scope))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A rate window as JSON: `{"limit": 10, "period": "1s", "scope": "key"}`.
pub fn rate_window_json(window: &proto::RateWindow) -> Value {
    json!({
        "limit": window.limit,
        "period": duration(window.period.as_ref()),
        "scope": rate_scope_name(window.scope),
    })
}

/// A plan as JSON.
pub fn plan_json(plan: &proto::Plan) -> Value {
    json!({
        "name": plan.name,
        "api_access": plan.api_access,
        "max_active_keys": plan.max_active_keys,
        "rate_windows": plan.rate_windows.iter().map(rate_window_json).collect::<Vec<_>>(),
        "quotas": plan.quotas.iter().map(|q| json!({
            "limit": q.limit,
            "cycle": cycle_text(q.period, q.anchor_day, &q.anchor_weekday),
            "scope": rate_scope_name(q.scope),
        })).collect::<Vec<_>>(),
    })
}

/// A ListOwners answer as JSON: `{"owners": [...], "next_page_token": "..."}`.
pub fn owners_list_json(answer: &proto::ListOwnersResponse) -> Value {
    json!({
        "owners": answer.owners.iter().map(owner_json).collect::<Vec<_>>(),
        "next_page_token": answer.next_page_token,
    })
}

/// A ListKeys answer as JSON: `{"keys": [...], "next_page_token": "..."}`.
pub fn keys_list_json(answer: &proto::ListKeysResponse) -> Value {
    json!({
        "keys": answer.keys.iter().map(key_json).collect::<Vec<_>>(),
        "next_page_token": answer.next_page_token,
    })
}

/// A ListPlans answer as JSON: `{"plans": [...], "default_plan": "..."}`.
pub fn plans_list_json(answer: &proto::ListPlansResponse) -> Value {
    json!({
        "plans": answer.plans.iter().map(plan_json).collect::<Vec<_>>(),
        "default_plan": answer.default_plan,
    })
}

/// A CreateKey or RotateKey answer as JSON, secrets included (empty ones left out). This
/// and [`secret_lines`] are the only places a secret is ever rendered.
pub fn created_key_json(answer: &proto::CreateKeyResponse) -> Value {
    let mut object = serde_json::Map::new();
    object.insert(
        "key".to_owned(),
        answer.key.as_ref().map_or(Value::Null, key_json),
    );
    for (name, value) in [
        ("secret", &answer.secret),
        ("api_key", &answer.api_key),
        ("api_secret", &answer.api_secret),
        ("activation_code", &answer.activation_code),
    ] {
        if !value.is_empty() {
            object.insert(name.to_owned(), Value::String(value.clone()));
        }
    }
    Value::Object(object)
}

/// The human lines showing a CreateKey or RotateKey answer's secrets:
/// `secret: ...`, or `api-key: ...` and `api-secret: ...`, and `activation-code: ...`.
pub fn secret_lines(answer: &proto::CreateKeyResponse) -> Vec<String> {
    [
        ("secret", &answer.secret),
        ("api-key", &answer.api_key),
        ("api-secret", &answer.api_secret),
        ("activation-code", &answer.activation_code),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(label, value)| format!("{label}: {value}"))
    .collect()
}

/// Whether the answer holds anything secret (the public `api_key` alone is not).
pub fn has_secret(answer: &proto::CreateKeyResponse) -> bool {
    !(answer.secret.is_empty() && answer.api_secret.is_empty() && answer.activation_code.is_empty())
}

/// Control characters in server-supplied text would reach the terminal as is; they are
/// shown escaped instead.
fn cell(text: &str) -> String {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        text.to_owned()
    }
}

/// `text`, or `-` when empty.
fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        cell(text)
    }
}

/// An aligned table: a header row, then one line per row, columns two spaces apart. The
/// last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, value) in widths.iter_mut().zip(row) {
            *width = (*width).max(value.chars().count());
        }
    }
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut lines = Vec::with_capacity(rows.len() + 1);
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, value) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(value);
            } else {
                let pad = widths
                    .get(i)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(value.chars().count());
                line.push_str(value);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        lines.push(line.trim_end().to_owned());
    }
    lines.join("\n")
}

/// Keys as a table: id, name, owner, state, scopes, expires, last used, how the secret is
/// held, credits.
pub fn keys_table(keys: &[proto::Key]) -> String {
    if keys.is_empty() {
        return "no keys".to_owned();
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                or_dash(&key.id),
                or_dash(&key.name),
                or_dash(&key.owner_id),
                key_state_name(key.state),
                or_dash(&key.scopes.join(",")),
                timestamp(key.expire_time.as_ref()).unwrap_or_else(|| "never".to_owned()),
                timestamp(key.last_used_time.as_ref()).unwrap_or_else(|| "never".to_owned()),
                or_dash(&key.hash),
                credits_text(key.credits.as_ref()),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "NAME",
            "OWNER",
            "STATE",
            "SCOPES",
            "EXPIRES",
            "LAST USED",
            "HASH",
            "CREDITS",
        ],
        &rows,
    )
}

/// Owners as a table: id, external id, name, plan, state.
pub fn owners_table(owners: &[proto::Owner]) -> String {
    if owners.is_empty() {
        return "no owners".to_owned();
    }
    let rows: Vec<Vec<String>> = owners
        .iter()
        .map(|owner| {
            vec![
                or_dash(&owner.id),
                or_dash(&owner.external_id),
                or_dash(&owner.display_name),
                or_dash(&owner.plan),
                owner_state_name(owner.state),
            ]
        })
        .collect();
    table(&["ID", "EXTERNAL ID", "NAME", "PLAN", "STATE"], &rows)
}

/// A plan's rate windows, e.g. `10/1s per key, 2000/1h per owner`; `-` when none.
pub fn windows_text(windows: &[proto::RateWindow]) -> String {
    if windows.is_empty() {
        return "-".to_owned();
    }
    windows
        .iter()
        .map(|w| {
            format!(
                "{}/{} per {}",
                w.limit,
                duration(w.period.as_ref()).unwrap_or_else(|| "?".to_owned()),
                rate_scope_name(w.scope)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Plans as a table: name (the default marked), api access, max keys, windows, quotas.
pub fn plans_table(plans: &[proto::Plan], default_plan: &str) -> String {
    if plans.is_empty() {
        return "no plans".to_owned();
    }
    let rows: Vec<Vec<String>> = plans
        .iter()
        .map(|plan| {
            let mut name = or_dash(&plan.name);
            if !default_plan.is_empty() && plan.name == default_plan {
                name.push_str(" (default)");
            }
            vec![
                name,
                if plan.api_access { "yes" } else { "no" }.to_owned(),
                match plan.max_active_keys {
                    0 => "unlimited".to_owned(),
                    n => n.to_string(),
                },
                windows_text(&plan.rate_windows),
                quotas_text(&plan.quotas),
            ]
        })
        .collect();
    table(
        &["NAME", "API ACCESS", "MAX KEYS", "WINDOWS", "QUOTAS"],
        &rows,
    )
}

/// A usage report as JSON: the zone and each day's counts.
pub fn usage_json(answer: &proto::GetKeyUsageResponse) -> Value {
    json!({
        "time_zone": answer.time_zone,
        "days": answer.days.iter().map(|day| json!({
            "date": day.date,
            "allowed": day.allowed,
            "denied": day.denied,
        })).collect::<Vec<_>>(),
    })
}

/// The widest bar of the usage chart, in characters.
const CHART_WIDTH: u64 = 40;

/// A usage report as a table: per day, allowed and denied requests, the denial codes, and a
/// bar of the day's requests (`#` allowed, `x` denied) scaled to the busiest day.
pub fn usage_table(answer: &proto::GetKeyUsageResponse) -> String {
    let total = |day: &proto::DailyUsage| day.allowed + day.denied.values().sum::<u64>();
    let busiest = answer.days.iter().map(total).max().unwrap_or(0).max(1);
    let bar = |count: u64| -> usize {
        // Any request shows at least one mark.
        (count * CHART_WIDTH).div_ceil(busiest) as usize
    };
    let rows: Vec<Vec<String>> = answer
        .days
        .iter()
        .map(|day| {
            let denied: u64 = day.denied.values().sum();
            let mut codes: Vec<(&String, &u64)> = day.denied.iter().collect();
            codes.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            let codes: Vec<String> = codes.iter().map(|(c, n)| format!("{c} {n}")).collect();
            let allowed_marks = bar(day.allowed);
            let all_marks = bar(total(day)).max(allowed_marks);
            vec![
                day.date.clone(),
                day.allowed.to_string(),
                denied.to_string(),
                codes.join(", "),
                "#".repeat(allowed_marks) + &"x".repeat(all_marks - allowed_marks),
            ]
        })
        .collect();
    let allowed: u64 = answer.days.iter().map(|d| d.allowed).sum();
    let denied: u64 = answer
        .days
        .iter()
        .map(|d| d.denied.values().sum::<u64>())
        .sum();
    format!(
        "{}\ntotal: {allowed} allowed, {denied} denied (days in {})",
        table(&["DATE", "ALLOWED", "DENIED", "CODES", "REQUESTS"], &rows),
        answer.time_zone
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
        Some(prost_types::Timestamp { seconds, nanos: 0 })
    }

    fn sample_key() -> proto::Key {
        proto::Key {
            id: "3kTbq9XwL2mZ".into(),
            owner_id: "own_1".into(),
            name: "ci".into(),
            profile: "live".into(),
            prefix: "kg_live".into(),
            kind: proto::KeyKind::Pair as i32,
            scopes: vec!["read".into(), "write".into()],
            state: proto::KeyState::PendingActivation as i32,
            metadata: HashMap::from([("team".into(), "infra".into())]),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_789,
            }),
            expire_time: ts(1_893_456_000),
            public_key: "kg_live_pub".into(),
            hash: "argon2id".into(),
            ..Default::default()
        }
    }

    #[test]
    fn key_json_fields() {
        let value = key_json(&sample_key());
        assert_eq!(value["id"], "3kTbq9XwL2mZ");
        assert_eq!(value["owner_id"], "own_1");
        assert_eq!(value["kind"], "pair");
        assert_eq!(value["state"], "pending_activation");
        assert_eq!(value["scopes"], json!(["read", "write"]));
        assert_eq!(value["metadata"], json!({"team": "infra"}));
        assert_eq!(value["create_time"], "2023-11-14T22:13:20Z");
        assert_eq!(value["expire_time"], "2030-01-01T00:00:00Z");
        assert_eq!(value["last_used_time"], Value::Null);
        assert_eq!(value["revoke_time"], Value::Null);
        assert_eq!(value["public_key"], "kg_live_pub");
        assert_eq!(value["hash"], "argon2id");
        let object = value.as_object().unwrap();
        for secret in ["secret", "api_secret", "activation_code", "api_key"] {
            assert!(!object.contains_key(secret), "{secret} in a Key");
        }
        assert_eq!(value["usage_count"], 0);
        assert_eq!(value["credits"], Value::Null, "no credits: unlimited");
        assert_eq!(object.len(), 21);
    }

    #[test]
    fn owner_json_fields() {
        let owner = proto::Owner {
            id: "own_1".into(),
            external_id: "acct-9".into(),
            display_name: "Acme".into(),
            state: proto::OwnerState::Disabled as i32,
            plan: "pro".into(),
            metadata: HashMap::new(),
            create_time: ts(0),
            update_time: None,
        };
        assert_eq!(
            owner_json(&owner),
            json!({
                "id": "own_1",
                "external_id": "acct-9",
                "display_name": "Acme",
                "state": "disabled",
                "plan": "pro",
                "metadata": {},
                "create_time": "1970-01-01T00:00:00Z",
                "update_time": null,
            })
        );
    }

    #[test]
    fn enum_names() {
        assert_eq!(key_state_name(proto::KeyState::Active as i32), "active");
        assert_eq!(key_state_name(proto::KeyState::Revoked as i32), "revoked");
        assert_eq!(key_kind_name(proto::KeyKind::Single as i32), "single");
        assert_eq!(key_kind_name(proto::KeyKind::Imported as i32), "imported");
        assert_eq!(rate_scope_name(proto::RateScope::Key as i32), "key");
        assert_eq!(rate_scope_name(proto::RateScope::Owner as i32), "owner");
        assert_eq!(owner_state_name(proto::OwnerState::Active as i32), "active");
        assert_eq!(key_state_name(0), "unspecified");
        assert_eq!(key_state_name(42), "unknown_42");
    }

    #[test]
    fn odd_timestamps_do_not_panic() {
        assert_eq!(timestamp(ts(-1).as_ref()), None);
        assert_eq!(timestamp(ts(i64::MAX).as_ref()), None);
        assert_eq!(timestamp(ts(MAX_FORMATTED_SECONDS + 1).as_ref()), None);
        assert_eq!(
            timestamp(ts(MAX_FORMATTED_SECONDS).as_ref()).as_deref(),
            Some("9999-12-31T23:59:59Z")
        );
        let weird = prost_types::Timestamp {
            seconds: MAX_FORMATTED_SECONDS,
            nanos: 2_000_000_000,
        };
        assert_eq!(timestamp(Some(&weird)), None);
    }

    #[test]
    fn created_key_json_leaves_out_empty_secrets() {
        let answer = proto::CreateKeyResponse {
            key: Some(sample_key()),
            secret: "kg_live_SECRET".into(),
            ..Default::default()
        };
        let value = created_key_json(&answer);
        assert_eq!(value["secret"], "kg_live_SECRET");
        assert_eq!(value["key"]["id"], "3kTbq9XwL2mZ");
        let object = value.as_object().unwrap();
        assert!(!object.contains_key("api_secret") && !object.contains_key("activation_code"));
        assert_eq!(secret_lines(&answer), ["secret: kg_live_SECRET"]);

        let pair = proto::CreateKeyResponse {
            api_key: "pub".into(),
            api_secret: "priv".into(),
            activation_code: "123456".into(),
            ..Default::default()
        };
        assert_eq!(
            secret_lines(&pair),
            [
                "api-key: pub",
                "api-secret: priv",
                "activation-code: 123456"
            ]
        );
        assert!(has_secret(&pair));
        assert!(!has_secret(&proto::CreateKeyResponse::default()));
    }

    #[test]
    fn tables_are_aligned() {
        let text = keys_table(&[sample_key()]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("ID            NAME  OWNER  STATE"),
            "{text}"
        );
        let col = lines[0].find("STATE").unwrap();
        assert_eq!(
            &lines[1][col..col + "pending_activation".len()],
            "pending_activation"
        );
        assert!(
            lines[1].ends_with("never      argon2id  unlimited"),
            "{text}"
        );
        assert!(text.contains("read,write"));
        let mut limited = sample_key();
        limited.credits = Some(proto::Credits {
            remaining: 7,
            refill: Some(proto::CreditRefill {
                amount: 100,
                period: proto::CyclePeriod::Month as i32,
                anchor_day: 15,
                ..Default::default()
            }),
            grant_time: None,
        });
        let text = keys_table(&[limited.clone()]);
        assert!(text.ends_with("7 (+100/month@15)"), "{text}");
        assert_eq!(key_json(&limited)["credits"]["refill"], "100/month@15");
    }

    #[test]
    fn plan_windows() {
        let plan = proto::Plan {
            name: "free".into(),
            api_access: true,
            max_active_keys: 0,
            rate_windows: vec![
                proto::RateWindow {
                    limit: 10,
                    period: Some(prost_types::Duration {
                        seconds: 1,
                        nanos: 0,
                    }),
                    scope: proto::RateScope::Key as i32,
                },
                proto::RateWindow {
                    limit: 2000,
                    period: Some(prost_types::Duration {
                        seconds: 3600,
                        nanos: 0,
                    }),
                    scope: proto::RateScope::Owner as i32,
                },
            ],
            quotas: vec![],
        };
        assert_eq!(
            windows_text(&plan.rate_windows),
            "10/1s per key, 2000/1h per owner"
        );
        let text = plans_table(std::slice::from_ref(&plan), "free");
        assert!(
            text.contains("free (default)  yes         unlimited"),
            "{text}"
        );
        assert_eq!(plan_json(&plan)["rate_windows"][1]["period"], "1h");
    }

    #[test]
    fn control_characters_are_escaped() {
        let key = proto::Key {
            name: "evil\u{1b}[2J".into(),
            ..Default::default()
        };
        assert!(keys_table(&[key]).contains("evil\\u{1b}[2J"));
    }
}
