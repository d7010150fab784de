//! Conversions between stored records and protobuf messages, and the validation of values
//! that arrive in requests. Validation errors name the field and say what is expected.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use ipnet::IpNet;

use crate::clock::UnixTime;
use crate::error::{Error, Result};
use crate::model::{KeyKind, KeyRecord, KeyState, Owner, OwnerState};
use crate::plan::{PlanConfig, RateScope};
use crate::proto;

/// Longest name, display name or external id accepted.
const MAX_NAME_LEN: usize = 200;
/// Most metadata entries per record.
const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key / value.
const MAX_METADATA_KEY_LEN: usize = 128;
const MAX_METADATA_VALUE_LEN: usize = 1024;
/// Most scopes or CIDRs per key.
const MAX_LIST_LEN: usize = 64;
/// Longest scope.
const MAX_SCOPE_LEN: usize = 128;

/// A protobuf timestamp for `t`.
pub fn timestamp(t: UnixTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t,
        nanos: 0,
    }
}

fn opt_timestamp(t: Option<UnixTime>) -> Option<prost_types::Timestamp> {
    t.map(timestamp)
}

/// The whole seconds of a request timestamp, checked to be a real instant.
pub fn from_timestamp(field: &str, t: &prost_types::Timestamp) -> Result<UnixTime> {
    if !(0..1_000_000_000).contains(&t.nanos) || t.seconds < 0 {
        return Err(Error::InvalidArgument(format!(
            "{field} is not a valid timestamp after 1970"
        )));
    }
    Ok(t.seconds)
}

/// A request duration as a std duration, refusing negative values.
pub fn from_duration(field: &str, d: &prost_types::Duration) -> Result<Duration> {
    if d.seconds < 0 || d.nanos < 0 {
        return Err(Error::InvalidArgument(format!(
            "{field} must not be negative"
        )));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// A required identifier from a request.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    Ok(value)
}

/// A required human-readable name: not blank, at most 200 characters, no control characters.
pub fn name(field: &str, value: &str) -> Result<String> {
    let value = required(field, value)?;
    if value.chars().count() > MAX_NAME_LEN || value.chars().any(char::is_control) {
        return Err(Error::InvalidArgument(format!(
            "{field} must be at most {MAX_NAME_LEN} characters with no control characters"
        )));
    }
    Ok(value.to_owned())
}

/// Metadata with bounded size and non-empty keys.
pub fn metadata(map: &HashMap<String, String>) -> Result<BTreeMap<String, String>> {
    if map.len() > MAX_METADATA_ENTRIES {
        return Err(Error::InvalidArgument(format!(
            "metadata has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
            map.len()
        )));
    }
    for (k, v) in map {
        if k.trim().is_empty() || k.len() > MAX_METADATA_KEY_LEN {
            return Err(Error::InvalidArgument(format!(
                "metadata key {k:?} must be 1 to {MAX_METADATA_KEY_LEN} bytes"
            )));
        }
        if v.len() > MAX_METADATA_VALUE_LEN {
            return Err(Error::InvalidArgument(format!(
                "metadata value for {k:?} is longer than {MAX_METADATA_VALUE_LEN} bytes"
            )));
        }
    }
    Ok(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

/// Scopes: letters, digits and `_ . : / -`, starting with a letter or digit; duplicates
/// dropped, order kept.
pub fn scopes(values: &[String]) -> Result<Vec<String>> {
    if values.len() > MAX_LIST_LEN {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_LIST_LEN} scopes are allowed"
        )));
    }
    let mut out: Vec<String> = Vec::with_capacity(values.len());
    for scope in values {
        let valid = scope.len() <= MAX_SCOPE_LEN
            && scope.starts_with(|c: char| c.is_ascii_alphanumeric())
            && scope
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:/-".contains(c));
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "scope {scope:?} is not valid: use letters, digits and _ . : / - (e.g. read, billing:write), at most {MAX_SCOPE_LEN} characters"
            )));
        }
        if !out.contains(scope) {
            out.push(scope.clone());
        }
    }
    Ok(out)
}

/// CIDRs (`10.0.0.0/8`, `2001:db8::/32`) or single addresses, normalised to their network.
pub fn cidrs(values: &[String]) -> Result<Vec<IpNet>> {
    if values.len() > MAX_LIST_LEN {
        return Err(Error::InvalidArgument(format!(
            "at most {MAX_LIST_LEN} allowed CIDRs are allowed"
        )));
    }
    values
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|net| net.trunc())
                .map_err(|_| {
                    Error::InvalidArgument(format!(
                        "allowed_cidrs: {text:?} is not a CIDR like 203.0.113.0/24 or an IP address"
                    ))
                })
        })
        .collect()
}

/// Page size from a request: 0 means `default`, above `max` is refused.
pub fn page_size(requested: u32) -> Result<usize> {
    const DEFAULT: u32 = 100;
    const MAX: u32 = 1000;
    match requested {
        0 => Ok(DEFAULT as usize),
        n if n <= MAX => Ok(n as usize),
        n => Err(Error::InvalidArgument(format!(
            "page_size {n} is too large; at most {MAX}"
        ))),
    }
}

/// The opaque token that continues a listing after the record `last_id`.
pub fn page_token(last_id: &str) -> String {
    format!("p1.{}", crate::key::hash::hex(last_id.as_bytes()))
}

/// The record id a page token continues after, or `None` for the first page.
pub fn parse_page_token(token: &str) -> Result<Option<String>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || {
        Error::InvalidArgument(
            "page_token is not one this server returned; pass next_page_token from the previous answer, or nothing for the first page".into(),
        )
    };
    let hex = token.strip_prefix("p1.").ok_or_else(bad)?;
    if hex.len() % 2 != 0 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad()))
        .collect::<Result<Vec<u8>>>()?;
    String::from_utf8(bytes).map(Some).map_err(|_| bad())
}

/// The next page token for a page of `len` records out of a requested `size`.
pub fn next_page_token(page: &[impl AsRef<str>], size: usize) -> String {
    match page.last() {
        Some(last) if page.len() == size => page_token(last.as_ref()),
        _ => String::new(),
    }
}

impl AsRef<str> for Owner {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl AsRef<str> for KeyRecord {
    fn as_ref(&self) -> &str {
        &self.id
    }
}

impl From<&Owner> for proto::Owner {
    fn from(o: &Owner) -> Self {
        proto::Owner {
            id: o.id.clone(),
            external_id: o.external_id.clone(),
            display_name: o.display_name.clone(),
            state: match o.state {
                OwnerState::Active => proto::OwnerState::Active,
                OwnerState::Disabled => proto::OwnerState::Disabled,
            } as i32,
            plan: o.plan.clone(),
            metadata: o.metadata.clone().into_iter().collect(),
            create_time: Some(timestamp(o.created_at)),
            update_time: Some(timestamp(o.updated_at)),
        }
    }
}

/// An owner state from a request; unspecified is refused.
pub fn owner_state(value: i32) -> Result<OwnerState> {
    match proto::OwnerState::try_from(value) {
        Ok(proto::OwnerState::Active) => Ok(OwnerState::Active),
        Ok(proto::OwnerState::Disabled) => Ok(OwnerState::Disabled),
        _ => Err(Error::InvalidArgument(
            "owner.state must be OWNER_STATE_ACTIVE or OWNER_STATE_DISABLED".into(),
        )),
    }
}

/// A key state filter from a request; unspecified means any.
pub fn key_state_filter(value: i32) -> Result<Option<KeyState>> {
    match proto::KeyState::try_from(value) {
        Ok(proto::KeyState::Unspecified) => Ok(None),
        Ok(proto::KeyState::Active) => Ok(Some(KeyState::Active)),
        Ok(proto::KeyState::PendingActivation) => Ok(Some(KeyState::PendingActivation)),
        Ok(proto::KeyState::Disabled) => Ok(Some(KeyState::Disabled)),
        Ok(proto::KeyState::Revoked) => Ok(Some(KeyState::Revoked)),
        Err(_) => Err(Error::InvalidArgument(format!(
            "state {value} is not a known key state"
        ))),
    }
}

impl From<&KeyRecord> for proto::Key {
    fn from(k: &KeyRecord) -> Self {
        proto::Key {
            id: k.id.clone(),
            owner_id: k.owner_id.clone(),
            name: k.name.clone(),
            profile: k.profile.clone().unwrap_or_default(),
            prefix: k.prefix.clone().unwrap_or_default(),
            kind: match k.kind {
                KeyKind::Single => proto::KeyKind::Single,
                KeyKind::Pair => proto::KeyKind::Pair,
                KeyKind::Imported => proto::KeyKind::Imported,
            } as i32,
            scopes: k.scopes.clone(),
            plan: k.plan.clone().unwrap_or_default(),
            allowed_cidrs: k.allowed_cidrs.iter().map(ToString::to_string).collect(),
            metadata: k.metadata.clone().into_iter().collect(),
            state: match k.state {
                KeyState::Active => proto::KeyState::Active,
                KeyState::PendingActivation => proto::KeyState::PendingActivation,
                KeyState::Disabled => proto::KeyState::Disabled,
                KeyState::Revoked => proto::KeyState::Revoked,
            } as i32,
            create_time: Some(timestamp(k.created_at)),
            update_time: Some(timestamp(k.updated_at)),
            expire_time: opt_timestamp(k.expires_at),
            revoke_time: opt_timestamp(k.revoked_at),
            last_used_time: opt_timestamp(k.last_used_at),
            previous_secret_expire_time: opt_timestamp(
                k.previous_secret.as_ref().map(|p| p.expires_at),
            ),
            usage_count: k.usage_count,
            public_key: match (&k.kind, &k.prefix) {
                (KeyKind::Pair, Some(prefix)) => format!("{prefix}_{}", k.id),
                _ => String::new(),
            },
        }
    }
}

impl From<&PlanConfig> for proto::Plan {
    fn from(p: &PlanConfig) -> Self {
        proto::Plan {
            name: p.name.clone(),
            api_access: p.api_access,
            max_active_keys: p.max_active_keys,
            rate_windows: p
                .rate_windows
                .iter()
                .map(|w| proto::RateWindow {
                    limit: w.limit,
                    period: Some(prost_types::Duration {
                        seconds: w.period.as_secs() as i64,
                        nanos: w.period.subsec_nanos() as i32,
                    }),
                    scope: match w.per {
                        RateScope::Key => proto::RateScope::Key,
                        RateScope::Owner => proto::RateScope::Owner,
                    } as i32,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        let token = page_token("abcXYZ");
        assert_eq!(parse_page_token(&token).unwrap(), Some("abcXYZ".into()));
        assert_eq!(parse_page_token("").unwrap(), None);
        for bad in ["nope", "p1.zz", "p1.abc", "p1.ff"] {
            assert!(
                matches!(parse_page_token(bad), Err(Error::InvalidArgument(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn cidrs_accept_networks_and_addresses() {
        let parsed = cidrs(&[
            "10.1.2.3/8".into(),
            "2001:db8::1".into(),
            " 192.0.2.7 ".into(),
        ])
        .unwrap();
        let text: Vec<_> = parsed.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["10.0.0.0/8", "2001:db8::1/128", "192.0.2.7/32"]);
        let error = cidrs(&["10.0.0.300/8".into()]).unwrap_err();
        assert!(error.to_string().contains("10.0.0.300/8"), "{error}");
    }

    #[test]
    fn scopes_are_checked_and_deduplicated() {
        assert_eq!(
            scopes(&["read".into(), "billing:write".into(), "read".into()]).unwrap(),
            ["read", "billing:write"]
        );
        for bad in ["", " read", "wr ite", ":x", "a\u{e9}"] {
            assert!(scopes(&[bad.into()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_and_metadata_are_bounded() {
        assert_eq!(name("name", "  CI  ").unwrap(), "CI");
        assert!(name("name", "   ").is_err());
        assert!(name("name", &"x".repeat(201)).is_err());
        let too_many: HashMap<_, _> = (0..65).map(|i| (i.to_string(), String::new())).collect();
        assert!(metadata(&too_many).is_err());
        assert!(metadata(&HashMap::from([(String::new(), "v".into())])).is_err());
    }
}
