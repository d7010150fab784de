//! The one decision enum. Check, Authorize, metrics and logs all speak it; its HTTP
//! statuses and default messages live here and nowhere else (the gRPC adapters map it to
//! their protocols once each).

use std::sync::Arc;

use super::keys::{CacheOutcome, CachedKey, Standing};
use crate::clock::UnixTime;
use crate::ratelimit::RateOutcome;

/// What keygate decided about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DecisionCode {
    /// Allowed.
    Ok,
    /// No credential where the configuration looks.
    MissingCredentials,
    /// Malformed, unknown, wrong secret, revoked or deleted: one answer to the client.
    InvalidApiKey,
    /// Past its expiry, or an old secret past its rotation grace period.
    ExpiredApiKey,
    /// Disabled by an operator, or pending activation.
    KeyDisabled,
    /// The owning account is disabled or gone.
    OwnerDisabled,
    /// The owner's plan has no API access.
    PlanForbidden,
    /// The key lacks a scope the request requires.
    InsufficientScope,
    /// The client address is outside the key's allowed networks.
    IpNotAllowed,
    /// A rate window is exhausted.
    RateLimited,
    /// A calendar quota (per day, week or month) is used up until its cycle ends.
    QuotaExceeded,
    /// The key's credits are spent.
    CreditsExhausted,
}

impl DecisionCode {
    /// Every code, in a stable order.
    pub const ALL: [DecisionCode; 12] = [
        DecisionCode::Ok,
        DecisionCode::MissingCredentials,
        DecisionCode::InvalidApiKey,
        DecisionCode::ExpiredApiKey,
        DecisionCode::KeyDisabled,
        DecisionCode::OwnerDisabled,
        DecisionCode::PlanForbidden,
        DecisionCode::InsufficientScope,
        DecisionCode::IpNotAllowed,
        DecisionCode::RateLimited,
        DecisionCode::QuotaExceeded,
        DecisionCode::CreditsExhausted,
    ];

    /// The code's name, as in error bodies, metrics and logs: `INVALID_API_KEY`.
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionCode::Ok => "OK",
            DecisionCode::MissingCredentials => "MISSING_CREDENTIALS",
            DecisionCode::InvalidApiKey => "INVALID_API_KEY",
            DecisionCode::ExpiredApiKey => "EXPIRED_API_KEY",
            DecisionCode::KeyDisabled => "KEY_DISABLED",
            DecisionCode::OwnerDisabled => "OWNER_DISABLED",
            DecisionCode::PlanForbidden => "PLAN_FORBIDDEN",
            DecisionCode::InsufficientScope => "INSUFFICIENT_SCOPE",
            DecisionCode::IpNotAllowed => "IP_NOT_ALLOWED",
            DecisionCode::RateLimited => "RATE_LIMITED",
            DecisionCode::QuotaExceeded => "QUOTA_EXCEEDED",
            DecisionCode::CreditsExhausted => "CREDITS_EXHAUSTED",
        }
    }

    /// The code named `name` (as [`DecisionCode::as_str`] writes it).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The HTTP status a client gets by default.
    pub fn http_status(self) -> u16 {
        match self {
            DecisionCode::Ok => 200,
            DecisionCode::MissingCredentials
            | DecisionCode::InvalidApiKey
            | DecisionCode::ExpiredApiKey
            | DecisionCode::KeyDisabled
            | DecisionCode::OwnerDisabled => 401,
            DecisionCode::PlanForbidden
            | DecisionCode::InsufficientScope
            | DecisionCode::IpNotAllowed => 403,
            DecisionCode::RateLimited
            | DecisionCode::QuotaExceeded
            | DecisionCode::CreditsExhausted => 429,
        }
    }

    /// The message a client gets by default.
    pub fn default_message(self) -> &'static str {
        match self {
            DecisionCode::Ok => "Allowed.",
            DecisionCode::MissingCredentials => "No API key was provided.",
            DecisionCode::InvalidApiKey => "The API key is invalid or has been revoked.",
            DecisionCode::ExpiredApiKey => "The API key has expired.",
            DecisionCode::KeyDisabled => "The API key is disabled.",
            DecisionCode::OwnerDisabled => "The account that owns this API key is disabled.",
            DecisionCode::PlanForbidden => "API access is not available on your plan.",
            DecisionCode::InsufficientScope => {
                "The API key lacks a permission this request requires."
            }
            DecisionCode::IpNotAllowed => "The API key may not be used from this network address.",
            DecisionCode::RateLimited => "Rate limit exceeded.",
            DecisionCode::QuotaExceeded => "Usage quota exceeded for the current period.",
            DecisionCode::CreditsExhausted => "The API key has no usage credits left.",
        }
    }
}

/// Who a credential belongs to, once the key was identified: the verified key and the
/// standing its decision found, shared with the cache rather than copied, so identifying a
/// warm key allocates nothing.
#[derive(Debug, Clone)]
pub struct Identity {
    key: Arc<CachedKey>,
    standing: Arc<Standing>,
}

impl Identity {
    /// The identity of `key` under `standing`.
    pub fn new(key: Arc<CachedKey>, standing: Arc<Standing>) -> Self {
        Identity { key, standing }
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        self.key.key.id()
    }

    /// Its owner's id.
    pub fn owner_id(&self) -> &str {
        self.key.key.owner_id()
    }

    /// The plan in force: the key's own, else the owner's.
    pub fn plan(&self) -> &str {
        &self.standing.plan
    }

    /// Scopes the key holds, in the record's order.
    pub fn scopes(&self) -> impl ExactSizeIterator<Item = &str> {
        self.key.key.scopes()
    }

    /// The key's metadata, in key order.
    pub fn metadata(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.key.key.metadata()
    }

    /// When the key expires, if ever.
    pub fn expires_at(&self) -> Option<UnixTime> {
        self.key.key.expires_at
    }
}

impl PartialEq for Identity {
    fn eq(&self, other: &Self) -> bool {
        self.key_id() == other.key_id()
            && self.owner_id() == other.owner_id()
            && self.plan() == other.plan()
            && self.scopes().eq(other.scopes())
            && self.metadata().eq(other.metadata())
            && self.expires_at() == other.expires_at()
    }
}

impl Eq for Identity {}

/// A decision and, when the key was identified, whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What was decided.
    pub code: DecisionCode,
    /// The identified key, even on some denials (expired, scope, network).
    pub identity: Option<Identity>,
    /// The rate-limit state, when the key's plan has windows or quotas, or the key has
    /// credits, and the policy passed.
    pub rate: Option<RateOutcome>,
    /// How the verified-key cache answered, when a credential was looked up.
    pub cache: Option<CacheOutcome>,
}

impl Decision {
    /// A denial before any key was identified.
    pub fn anonymous(code: DecisionCode) -> Self {
        Decision {
            code,
            identity: None,
            rate: None,
            cache: None,
        }
    }

    /// Whether the request may proceed.
    pub fn allowed(&self) -> bool {
        self.code == DecisionCode::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_statuses_follow_the_design() {
        for code in DecisionCode::ALL {
            assert_eq!(DecisionCode::from_name(code.as_str()), Some(code));
        }
        assert_eq!(DecisionCode::from_name("NOPE"), None);
        assert_eq!(DecisionCode::InvalidApiKey.http_status(), 401);
        assert_eq!(DecisionCode::PlanForbidden.http_status(), 403);
        assert_eq!(DecisionCode::RateLimited.http_status(), 429);
    }
}
