//! The records keygate keeps: owners and their API keys. Stores persist these as they are;
//! the gRPC layer converts them to and from protobuf messages.
//!
//! [`values`] holds the validated values records are built from ([`Name`], [`Scopes`],
//! [`Cidrs`], [`Metadata`]), shared by the server and the CLI.

pub mod values;

pub use values::{Cidrs, Metadata, Name, Scope, Scopes};

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::calendar::{Anchor, Period};
use crate::clock::{UnixMillis, UnixTime};

/// Whether an owner's keys may be used at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OwnerState {
    /// The account is in good standing.
    Active,
    /// The account is suspended; none of its keys are accepted.
    Disabled,
}

/// The account that API keys belong to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// Server-assigned id.
    pub id: String,
    /// The product's own id for the account; unique.
    pub external_id: String,
    /// Human-readable name.
    pub display_name: String,
    /// Account state.
    pub state: OwnerState,
    /// Name of a configured plan.
    pub plan: String,
    /// Free-form attributes the product attaches.
    pub metadata: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it last changed.
    pub updated_at: UnixTime,
}

/// Life-cycle state of a key, as set by operators. Expiry is not a state: it is computed from
/// `expires_at` at the time of each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyState {
    /// Usable.
    Active,
    /// Issued but waiting for ActivateKey.
    PendingActivation,
    /// Switched off by an operator; can be enabled again.
    Disabled,
    /// Revoked for good.
    Revoked,
}

/// How the key is presented by clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    /// One string in `authorization: Bearer` or `x-api-key`.
    Single,
    /// `api-key` + `api-secret` headers.
    Pair,
    /// Issued elsewhere, in any format, and found by its digest.
    Imported,
}

/// A secret that a rotation replaced and that keeps working for a grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousSecret {
    /// Its argon2id PHC string.
    pub hash: String,
    /// Its keyed check ([`crate::key::hash::Pepper::secret_check`]), if it was written
    /// with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// When it stops working.
    pub expires_at: UnixTime,
}

/// Uses a key may still make: each allowed request spends its cost, and a request costing
/// more than is left is refused (`CREDITS_EXHAUSTED`). The live balance is the limiter's;
/// the record holds what was granted, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credits {
    /// The balance granted at `granted_at`.
    pub remaining: u64,
    /// How the balance grows back, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
    /// When the balance was granted, in milliseconds: a new grant replaces whatever balance
    /// the limiter holds.
    pub granted_at: UnixMillis,
}

impl Credits {
    /// Checks a grant: a refill adds or resets to at least 1 credit, every interval of at
    /// least a second, or on a cycle whose anchor fits its period. The error names the field
    /// under `at`.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        match &self.refill {
            None => Ok(()),
            Some(Refill::Every { amount, interval }) => {
                if *amount == 0 {
                    Err(format!("{at}.refill.amount: must be at least 1"))
                } else if *interval < std::time::Duration::from_secs(1) {
                    Err(format!("{at}.refill.interval: must be at least 1s"))
                } else {
                    Ok(())
                }
            }
            Some(Refill::Reset {
                amount,
                period,
                anchor,
            }) => {
                if *amount == 0 {
                    return Err(format!("{at}.refill.amount: must be at least 1"));
                }
                let cycle = crate::calendar::Cycle {
                    period: *period,
                    anchor: *anchor,
                };
                cycle
                    .validate()
                    .map_err(|message| format!("{at}.refill.anchor: {message}"))
            }
        }
    }
}

/// How credits grow back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Refill {
    /// `amount` more credits after each whole `interval` since the grant.
    Every {
        /// Credits added each interval.
        amount: u64,
        /// How often, e.g. `1h`, `1day`.
        #[serde(with = "crate::clock::duration_text")]
        interval: std::time::Duration,
    },
    /// Back to `amount` at the start of each calendar cycle (the month from its anchor day,
    /// the week from its anchor weekday, or the day), in the configured time zone.
    Reset {
        /// The balance each cycle starts with.
        amount: u64,
        /// `day`, `week` or `month`.
        period: Period,
        /// Where a cycle starts (see [`crate::calendar::Cycle::anchor`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        anchor: Option<Anchor>,
    },
}

/// A limiter's counter that must outlive the process: a calendar quota's count or a key's
/// credit balance, kept in the store by the in-process limiter.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    /// When counting began: the quota cycle's start, or the credits' grant (milliseconds).
    pub since: UnixMillis,
    /// Units counted (a quota) or left (credits).
    pub value: u64,
    /// The last refill step applied (credits only).
    #[serde(default)]
    pub epoch: i64,
}

/// An API key's record. It never holds the key's plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Public id, embedded in the key text (for issued keys).
    pub id: String,
    /// Owning account.
    pub owner_id: String,
    /// Human-readable name.
    pub name: String,
    /// Profile the current secret was issued with; `None` for imported keys.
    pub profile: Option<String>,
    /// That profile's prefix, as issued; `None` for imported keys.
    pub prefix: Option<String>,
    /// How clients present it.
    pub kind: KeyKind,
    /// Scopes granted.
    pub scopes: Vec<String>,
    /// Plan replacing the owner's for this key.
    pub plan: Option<String>,
    /// Client networks allowed to use it; empty allows any.
    pub allowed_cidrs: Vec<IpNet>,
    /// Free-form attributes.
    pub metadata: BTreeMap<String, String>,
    /// Life-cycle state.
    pub state: KeyState,
    /// Whether the admin disabled it: then only the admin may enable it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled_by_admin: bool,
    /// argon2id PHC string of the whole key text.
    pub secret_hash: String,
    /// Keyed check of the whole key text ([`crate::key::hash::Pepper::secret_check`]): most
    /// wrong secrets are refused by it without argon2. Absent in records written before
    /// checks existed; argon2 alone decides those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_check: Option<String>,
    /// Lower-case hex HMAC digest of the key text, for keys found by digest (imported ones).
    /// For a key imported by digest and not used since, the same value as `foreign_digest`.
    pub lookup_digest: Option<String>,
    /// For a key imported by the SHA-256 digest another system kept, until its first use:
    /// that digest in keyed form ([`crate::key::foreign::Sha256Digest::keyed`]), lower-case
    /// hex, which verifies the key meanwhile. Such a record has no `secret_hash` or
    /// `secret_check` yet; the first verification stores them and drops this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub foreign_digest: Option<String>,
    /// The secret replaced by the last rotation, while its grace period lasts.
    pub previous_secret: Option<PreviousSecret>,
    /// Hex HMAC digest of the one-time activation code, while activation is pending.
    pub activation_digest: Option<String>,
    /// When it was created.
    pub created_at: UnixTime,
    /// When it last changed.
    pub updated_at: UnixTime,
    /// When it stops working, if ever.
    pub expires_at: Option<UnixTime>,
    /// When it was revoked.
    pub revoked_at: Option<UnixTime>,
    /// When it was last used to authorize a request.
    pub last_used_at: Option<UnixTime>,
    /// How many requests it has authorized (as of the last usage flush).
    #[serde(default)]
    pub usage_count: u64,
    /// Uses it may still make, when it is limited to a number of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<Credits>,
}

/// [`KeyRecord::hash_name`] of a key verified by its argon2id hash.
pub const HASH_ARGON2ID: &str = "argon2id";
/// [`KeyRecord::hash_name`] of a key imported by digest and not used since.
pub const HASH_SHA256_PENDING: &str = "sha256-pending";

impl KeyRecord {
    /// How keygate holds the key's secret, as listings show it: [`HASH_SHA256_PENDING`]
    /// while the key still waits for its first use after an import by digest,
    /// [`HASH_ARGON2ID`] otherwise.
    pub fn hash_name(&self) -> &'static str {
        if self.foreign_digest.is_some() {
            HASH_SHA256_PENDING
        } else {
            HASH_ARGON2ID
        }
    }

    /// Whether the key counts against its owner's maximum of active keys at `now`: every key
    /// not revoked and not expired does, including disabled and pending ones.
    pub fn counts_against_quota(&self, now: UnixTime) -> bool {
        self.state != KeyState::Revoked && self.expires_at.is_none_or(|t| t > now)
    }
}

/// Records for unit tests, here so that every layer's tests can start from one.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A plain active single key `id` of `owner_id`: no scopes, metadata, secret or
    /// timestamps. Tests override what they need.
    pub fn key_record(id: &str, owner_id: &str) -> KeyRecord {
        KeyRecord {
            id: id.into(),
            owner_id: owner_id.into(),
            name: "k".into(),
            profile: Some("kg_live".into()),
            prefix: Some("kg_live".into()),
            kind: KeyKind::Single,
            scopes: Vec::new(),
            plan: None,
            allowed_cidrs: Vec::new(),
            metadata: BTreeMap::new(),
            state: KeyState::Active,
            disabled_by_admin: false,
            secret_hash: String::new(),
            secret_check: None,
            lookup_digest: None,
            foreign_digest: None,
            previous_secret: None,
            activation_digest: None,
            created_at: 0,
            updated_at: 0,
            expires_at: None,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            credits: None,
        }
    }
}

/// Requests of one key on one calendar day: how many were allowed, and how many were
/// denied, by decision code (`RATE_LIMITED`, `EXPIRED_API_KEY`...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyUsage {
    /// Allowed requests.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub allowed: u64,
    /// Denied requests by decision code.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub denied: BTreeMap<String, u64>,
}

impl DailyUsage {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &DailyUsage) {
        self.allowed = self.allowed.saturating_add(other.allowed);
        for (code, count) in &other.denied {
            let total = self.denied.entry(code.clone()).or_default();
            *total = total.saturating_add(*count);
        }
    }

    /// Every denied request, whatever its code.
    pub fn denied_total(&self) -> u64 {
        self.denied
            .values()
            .fold(0, |sum, n| sum.saturating_add(*n))
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_secret_checks_still_load() {
        let old = r#"{"id":"k1","owner_id":"o1","name":"n","profile":null,"prefix":null,
            "kind":"single","scopes":[],"plan":null,"allowed_cidrs":[],"metadata":{},
            "state":"active","secret_hash":"$argon2id$x","lookup_digest":null,
            "previous_secret":{"hash":"$argon2id$y","expires_at":9},
            "activation_digest":null,"created_at":1,"updated_at":1,"expires_at":null,
            "revoked_at":null,"last_used_at":null}"#;
        let record: KeyRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.secret_check, None);
        assert_eq!(record.previous_secret.unwrap().check, None);
    }
}
