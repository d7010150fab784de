//! The policy: a pure function of the key, its owner, its plan, the request and the time.
//! No I/O, so every rule is tested directly.

use std::net::IpAddr;

use super::decision::DecisionCode;
use super::keys::{MatchedSecret, VerifiedKey};
use crate::clock::UnixTime;
use crate::model::{KeyState, Owner, OwnerState};
use crate::plan::PlanConfig;

/// The name of the plan in force for `key`: its own, else its owner's.
pub fn effective_plan<'a>(key: &'a VerifiedKey, owner: Option<&'a Owner>) -> Option<&'a str> {
    key.plan().or(owner.map(|o| o.plan.as_str()))
}

/// What the policy needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The client's address, as the proxy saw it.
    pub client_ip: Option<IpAddr>,
    /// Scopes the route requires.
    pub required_scopes: &'a [String],
}

/// Decides whether the key `key`, proved by its `matched` secret, may make this request.
/// Checks run from the most to the least fundamental, so a revoked key is reported as
/// invalid even if it also lacks a scope.
pub fn evaluate(
    key: &VerifiedKey,
    matched: MatchedSecret,
    owner: Option<&Owner>,
    plan: Option<&PlanConfig>,
    request: &RequestFacts<'_>,
    now: UnixTime,
) -> DecisionCode {
    if key.state == KeyState::Revoked {
        return DecisionCode::InvalidApiKey;
    }
    if key.expires_at.is_some_and(|t| t <= now) {
        return DecisionCode::ExpiredApiKey;
    }
    if matched == MatchedSecret::Previous && key.previous_expires_at.is_none_or(|t| t <= now) {
        return DecisionCode::ExpiredApiKey;
    }
    if matches!(key.state, KeyState::Disabled | KeyState::PendingActivation) {
        return DecisionCode::KeyDisabled;
    }
    if owner.is_none_or(|o| o.state != OwnerState::Active) {
        return DecisionCode::OwnerDisabled;
    }
    if plan.is_none_or(|p| !p.api_access) {
        return DecisionCode::PlanForbidden;
    }
    if request
        .required_scopes
        .iter()
        .any(|needed| !key.has_scope(needed))
    {
        return DecisionCode::InsufficientScope;
    }
    let networks = key.allowed_cidrs();
    if !networks.is_empty()
        && !request
            .client_ip
            .is_some_and(|ip| networks.iter().any(|net| net.contains(&ip)))
    {
        return DecisionCode::IpNotAllowed;
    }
    DecisionCode::Ok
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::testing::key_record;
    use crate::model::{KeyRecord, PreviousSecret};

    const NOW: UnixTime = 1_000_000;

    fn key() -> KeyRecord {
        KeyRecord {
            name: "n".into(),
            scopes: vec!["read".into()],
            ..key_record("k", "o")
        }
    }

    fn owner() -> Owner {
        Owner {
            id: "o".into(),
            external_id: "e".into(),
            display_name: "d".into(),
            state: OwnerState::Active,
            plan: "pro".into(),
            metadata: BTreeMap::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn plan(api_access: bool) -> PlanConfig {
        PlanConfig {
            name: "pro".into(),
            api_access,
            max_active_keys: 0,
            rate_windows: vec![],
            quotas: vec![],
        }
    }

    fn decide(
        key: &KeyRecord,
        matched: MatchedSecret,
        owner: Option<&Owner>,
        api: bool,
        scopes: &[&str],
        ip: Option<&str>,
    ) -> DecisionCode {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        let facts = RequestFacts {
            client_ip: ip.map(|i| i.parse().unwrap()),
            required_scopes: &scopes,
        };
        let plan = plan(api);
        evaluate(
            &VerifiedKey::of(key),
            matched,
            owner,
            Some(&plan),
            &facts,
            NOW,
        )
    }

    fn simple(key: &KeyRecord) -> DecisionCode {
        decide(key, MatchedSecret::Current, Some(&owner()), true, &[], None)
    }

    #[test]
    fn an_active_key_of_an_active_owner_passes() {
        assert_eq!(simple(&key()), DecisionCode::Ok);
    }

    #[test]
    fn key_states_and_expiry() {
        let revoked = KeyRecord {
            state: KeyState::Revoked,
            ..key()
        };
        assert_eq!(simple(&revoked), DecisionCode::InvalidApiKey);
        let expired = KeyRecord {
            expires_at: Some(NOW),
            ..key()
        };
        assert_eq!(simple(&expired), DecisionCode::ExpiredApiKey);
        let not_yet = KeyRecord {
            expires_at: Some(NOW + 1),
            ..key()
        };
        assert_eq!(simple(&not_yet), DecisionCode::Ok);
        let disabled = KeyRecord {
            state: KeyState::Disabled,
            ..key()
        };
        assert_eq!(simple(&disabled), DecisionCode::KeyDisabled);
        let pending = KeyRecord {
            state: KeyState::PendingActivation,
            ..key()
        };
        assert_eq!(simple(&pending), DecisionCode::KeyDisabled);
        let revoked_and_expired = KeyRecord {
            expires_at: Some(0),
            ..revoked
        };
        assert_eq!(simple(&revoked_and_expired), DecisionCode::InvalidApiKey);
    }

    #[test]
    fn a_rotated_secret_works_only_during_its_grace_period() {
        let rotated = KeyRecord {
            previous_secret: Some(PreviousSecret {
                hash: String::new(),
                check: None,
                expires_at: NOW + 10,
            }),
            ..key()
        };
        let owner = owner();
        assert_eq!(
            decide(
                &rotated,
                MatchedSecret::Previous,
                Some(&owner),
                true,
                &[],
                None
            ),
            DecisionCode::Ok
        );
        let ended = KeyRecord {
            previous_secret: Some(PreviousSecret {
                hash: String::new(),
                check: None,
                expires_at: NOW,
            }),
            ..key()
        };
        assert_eq!(
            decide(
                &ended,
                MatchedSecret::Previous,
                Some(&owner),
                true,
                &[],
                None
            ),
            DecisionCode::ExpiredApiKey
        );
        assert_eq!(
            decide(
                &key(),
                MatchedSecret::Previous,
                Some(&owner),
                true,
                &[],
                None
            ),
            DecisionCode::ExpiredApiKey
        );
    }

    #[test]
    fn owner_and_plan() {
        let disabled = Owner {
            state: OwnerState::Disabled,
            ..owner()
        };
        assert_eq!(
            decide(
                &key(),
                MatchedSecret::Current,
                Some(&disabled),
                true,
                &[],
                None
            ),
            DecisionCode::OwnerDisabled
        );
        assert_eq!(
            decide(&key(), MatchedSecret::Current, None, true, &[], None),
            DecisionCode::OwnerDisabled
        );
        assert_eq!(
            decide(
                &key(),
                MatchedSecret::Current,
                Some(&owner()),
                false,
                &[],
                None
            ),
            DecisionCode::PlanForbidden
        );
        let facts = RequestFacts {
            client_ip: None,
            required_scopes: &[],
        };
        assert_eq!(
            evaluate(
                &VerifiedKey::of(&key()),
                MatchedSecret::Current,
                Some(&owner()),
                None,
                &facts,
                NOW
            ),
            DecisionCode::PlanForbidden
        );
    }

    #[test]
    fn scopes_and_networks() {
        let owner = owner();
        let o = Some(&owner);
        assert_eq!(
            decide(&key(), MatchedSecret::Current, o, true, &["read"], None),
            DecisionCode::Ok
        );
        assert_eq!(
            decide(
                &key(),
                MatchedSecret::Current,
                o,
                true,
                &["read", "write"],
                None
            ),
            DecisionCode::InsufficientScope
        );
        let fenced = KeyRecord {
            allowed_cidrs: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            ..key()
        };
        assert_eq!(
            decide(
                &fenced,
                MatchedSecret::Current,
                o,
                true,
                &[],
                Some("10.1.2.3")
            ),
            DecisionCode::Ok
        );
        assert_eq!(
            decide(
                &fenced,
                MatchedSecret::Current,
                o,
                true,
                &[],
                Some("2001:db8::7")
            ),
            DecisionCode::Ok
        );
        assert_eq!(
            decide(
                &fenced,
                MatchedSecret::Current,
                o,
                true,
                &[],
                Some("192.0.2.1")
            ),
            DecisionCode::IpNotAllowed
        );
        assert_eq!(
            decide(&fenced, MatchedSecret::Current, o, true, &[], None),
            DecisionCode::IpNotAllowed
        );
        assert_eq!(
            decide(&key(), MatchedSecret::Current, o, true, &[], None),
            DecisionCode::Ok
        );
    }
}
