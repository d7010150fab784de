//! Who is calling, and the authority rule: what each caller may see, touch and make.
//!
//! How a caller is recognised (admin token, API key, anonymous on loopback) belongs to the
//! adapters (`service::caller::authenticate`); what it may then do is decided here, once,
//! for every management call.
//!
//! # The rule
//!
//! The admin may do everything. An API key holding [`MANAGE_SCOPE`] acts for its own owner
//! only (another owner's records are reported as not found), never manages owners, and may
//! touch (update, rotate, revoke, delete, activate) and make (create, import, update into)
//! only keys **no stronger than itself**. A key is no stronger than the calling key when
//! every one of these dimensions holds:
//!
//! | dimension  | the key must                                                              |
//! | ---------- | ------------------------------------------------------------------------- |
//! | `scopes`   | hold only scopes the calling key holds                                    |
//! | `plan`     | follow its owner's plan (or the calling key's own plan); an API key never chooses one |
//! | `expiry`   | expire no later than the calling key, when the calling key expires        |
//! | `networks` | be fenced within the calling key's networks, when the calling key is fenced |
//! | `state`    | not be re-enabled after the admin disabled it                             |
//! | `activation` | not be made usable without its activation code                          |
//! | `secret`   | (imports) carry at least as many random bits as issued keys               |
//!
//! A refusal is `PermissionDenied` with a message that starts with the dimension's name.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::clock::UnixTime;
use crate::error::{Error, Result, quote};
use crate::key::format::{MIN_SECRET_BITS, estimated_secret_bits};
use crate::model::{KeyRecord, KeyState};
use crate::tls::PeerIdentity;

/// Settings of the management API's authority rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementConfig {
    /// Client-certificate names (SAN URI, SAN DNS name or subject CN) that are admin with
    /// no bearer token; needs mutual TLS on the management listener.
    pub admin_identities: Vec<String>,
}

impl ManagementConfig {
    /// The caller a verified client certificate makes on its own: admin when one of its
    /// names is listed, nobody otherwise.
    pub fn caller_for(&self, identity: Option<&PeerIdentity>) -> Option<Caller> {
        identity
            .filter(|id| id.is_any_of(&self.admin_identities))
            .map(|_| Caller::Admin)
    }
}

/// The scope that lets an API key manage its owner's keys.
pub const MANAGE_SCOPE: &str = "keygate:keys";

/// An authenticated management caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Full access.
    Admin,
    /// An API key acting for its owner, within its own authority.
    Key(CallingKey),
}

/// What an API key caller holds: the bounds of everything it may touch or make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingKey {
    /// The calling key's id.
    pub id: String,
    /// The owner it acts for.
    pub owner_id: String,
    /// Scopes it holds.
    pub scopes: Vec<String>,
    /// The plan it was given in place of its owner's, if any.
    pub plan: Option<String>,
    /// When it expires, if ever.
    pub expires_at: Option<UnixTime>,
    /// Networks it is fenced to; empty for any.
    pub allowed_cidrs: Vec<IpNet>,
}

impl CallingKey {
    /// The authority of the key `record`.
    pub fn of(record: &KeyRecord) -> Self {
        CallingKey {
            id: record.id.clone(),
            owner_id: record.owner_id.clone(),
            scopes: record.scopes.clone(),
            plan: record.plan.clone(),
            expires_at: record.expires_at,
            allowed_cidrs: record.allowed_cidrs.clone(),
        }
    }

    /// Refuses `key` (named `subject` in messages) where it is stronger than this key.
    fn require_no_stronger(&self, key: &KeyRecord, subject: &str) -> Result<()> {
        if let Some(scope) = key.scopes.iter().find(|s| !self.scopes.contains(s)) {
            return Err(refused(
                "scopes",
                format!(
                    "{subject} holds scope {}, which the calling key does not",
                    quote(scope)
                ),
            ));
        }
        if key.plan.is_some() && key.plan != self.plan {
            return Err(refused(
                "plan",
                format!("{subject} has a plan of its own in place of its owner's"),
            ));
        }
        if let Some(limit) = self.expires_at {
            match key.expires_at {
                None => {
                    return Err(refused(
                        "expiry",
                        format!(
                            "{subject} never expires, and the calling key expires at {}",
                            rfc3339(limit)
                        ),
                    ));
                }
                Some(t) if t > limit => {
                    return Err(refused(
                        "expiry",
                        format!(
                            "{subject} expires at {}, after the calling key ({})",
                            rfc3339(t),
                            rfc3339(limit)
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        if !self.allowed_cidrs.is_empty() {
            if key.allowed_cidrs.is_empty() {
                return Err(refused(
                    "networks",
                    format!(
                        "{subject} may be used from any network, and the calling key only from {}",
                        networks(&self.allowed_cidrs)
                    ),
                ));
            }
            if let Some(outside) = key
                .allowed_cidrs
                .iter()
                .find(|net| !self.allowed_cidrs.iter().any(|own| own.contains(*net)))
            {
                return Err(refused(
                    "networks",
                    format!(
                        "{subject} allows {outside}, outside the calling key's networks {}",
                        networks(&self.allowed_cidrs)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A refusal on `dimension` of the authority rule.
fn refused(dimension: &str, problem: String) -> Error {
    Error::PermissionDenied(format!(
        "{dimension}: {problem}; an API key may only manage and make keys no stronger than itself"
    ))
}

fn rfc3339(t: UnixTime) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

fn networks(nets: &[IpNet]) -> String {
    let list: Vec<String> = nets.iter().map(IpNet::to_string).collect();
    list.join(", ")
}

impl Caller {
    /// Whether the caller is the admin.
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::Admin)
    }

    /// Refuses callers that are not admin.
    pub fn require_admin(&self) -> Result<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Key(_) => Err(Error::PermissionDenied(
                "this call needs the admin token; API keys may manage only their own owner's keys"
                    .into(),
            )),
        }
    }

    /// Refuses an API key caller acting for another owner.
    pub fn require_owner(&self, owner_id: &str) -> Result<()> {
        match self {
            Caller::Key(own) if own.owner_id != owner_id => Err(Error::PermissionDenied(
                "an API key may manage only its own owner's keys".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the caller may see this owner's records; others are reported as not found so
    /// that ids cannot be probed.
    pub fn can_see(&self, owner_id: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Key(own) => own.owner_id == owner_id,
        }
    }

    /// The owner a new key is for: the one named, or, for an API key naming none, its own.
    pub fn owner_for_new_key<'a>(&'a self, named: Option<&'a str>) -> Option<&'a str> {
        match (self, named.map(str::trim).filter(|id| !id.is_empty())) {
            (_, Some(id)) => Some(id),
            (Caller::Key(own), None) => Some(&own.owner_id),
            (Caller::Admin, None) => None,
        }
    }

    /// Refuses an API key choosing a plan for a key it makes: its keys follow their owner's
    /// plan.
    pub fn require_plan_choice(&self, plan: Option<&str>) -> Result<()> {
        match (self, plan.map(str::trim).filter(|p| !p.is_empty())) {
            (Caller::Key(_), Some(plan)) => Err(refused(
                "plan",
                format!(
                    "an API key cannot choose plan {plan:?}; its keys follow their owner's plan"
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Refuses touching key `key` as it is now, unless it is no stronger than the caller.
    pub fn require_may_touch(&self, key: &KeyRecord) -> Result<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Key(own) => own.require_no_stronger(key, &format!("key {}", quote(&key.id))),
        }
    }

    /// Refuses producing `key` (new, imported or as updated) unless it is no stronger than
    /// the caller.
    pub fn require_may_make(&self, key: &KeyRecord) -> Result<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Key(own) => own.require_no_stronger(key, "the key as requested"),
        }
    }

    /// Refuses an API key importing `text` when it carries fewer random bits than an
    /// issued key ([`estimated_secret_bits`]), so that it cannot make a guessable key; the
    /// admin may import weaker legacy keys.
    pub fn require_strong_import(&self, text: &str) -> Result<()> {
        self.require_import_bits(estimated_secret_bits(text))
    }

    /// Refuses an API key importing a key that carries `bits` random bits, fewer than an
    /// issued key; the admin may.
    pub fn require_import_bits(&self, bits: f64) -> Result<()> {
        if self.is_admin() || bits >= f64::from(MIN_SECRET_BITS) {
            return Ok(());
        }
        Err(refused(
            "secret",
            format!(
                "the imported key carries about {bits:.0} random bits, fewer than the {MIN_SECRET_BITS} of an issued key; only the admin may import weaker legacy keys"
            ),
        ))
    }

    /// Refuses enabling `key` where only the admin may: a key the admin disabled, or one
    /// still waiting for its activation code.
    pub fn require_may_enable(&self, key: &KeyRecord) -> Result<()> {
        if self.is_admin() {
            return Ok(());
        }
        match key.state {
            KeyState::Disabled if key.disabled_by_admin => Err(refused(
                "state",
                format!(
                    "key {:?} was disabled by the admin; only the admin can enable it",
                    key.id
                ),
            )),
            KeyState::PendingActivation => Err(refused(
                "activation",
                format!(
                    "key {:?} is pending activation; activate it with its code",
                    key.id
                ),
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::testing::{key_caller, record};

    fn net(text: &str) -> IpNet {
        text.parse().unwrap()
    }

    /// A calling key holding `read` and the manage scope, expiring at 1,000, fenced to
    /// 10.0.0.0/8.
    fn bounded() -> Caller {
        let mut own = record("caller", "own_a");
        own.scopes = vec!["read".into(), MANAGE_SCOPE.into()];
        own.expires_at = Some(1_000);
        own.allowed_cidrs = vec![net("10.0.0.0/8")];
        Caller::Key(CallingKey::of(&own))
    }

    /// A key of `own_a` within [`bounded`]'s authority.
    fn within() -> KeyRecord {
        let mut key = record("k1", "own_a");
        key.expires_at = Some(900);
        key.allowed_cidrs = vec![net("10.1.0.0/16")];
        key
    }

    fn dimension(result: Result<()>) -> String {
        match result {
            Err(Error::PermissionDenied(message)) => message.split(':').next().unwrap().to_owned(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn admin_may_do_everything() {
        let admin = Caller::Admin;
        admin.require_admin().unwrap();
        admin.require_owner("own_b").unwrap();
        assert!(admin.can_see("own_b"));
        admin.require_plan_choice(Some("unlimited")).unwrap();
        let mut strong = record("k1", "own_b");
        strong.scopes = vec!["admin".into()];
        strong.plan = Some("unlimited".into());
        admin.require_may_touch(&strong).unwrap();
        admin.require_may_make(&strong).unwrap();
        strong.state = KeyState::Disabled;
        strong.disabled_by_admin = true;
        admin.require_may_enable(&strong).unwrap();
    }

    #[test]
    fn a_key_acts_for_its_owner_only() {
        let caller = key_caller("own_a", &["read", MANAGE_SCOPE]);
        assert!(matches!(
            caller.require_admin(),
            Err(Error::PermissionDenied(_))
        ));
        caller.require_owner("own_a").unwrap();
        assert!(matches!(
            caller.require_owner("own_b"),
            Err(Error::PermissionDenied(_))
        ));
        assert!(caller.can_see("own_a") && !caller.can_see("own_b"));
    }

    #[test]
    fn a_key_no_stronger_than_the_caller_may_be_touched_and_made() {
        let caller = bounded();
        caller.require_may_touch(&within()).unwrap();
        caller.require_may_make(&within()).unwrap();
        let mut at_the_limit = within();
        at_the_limit.expires_at = Some(1_000);
        at_the_limit.allowed_cidrs = vec![net("10.0.0.0/8")];
        caller.require_may_make(&at_the_limit).unwrap();
        caller.require_plan_choice(None).unwrap();
        caller.require_plan_choice(Some(" ")).unwrap();
    }

    #[test]
    fn every_dimension_of_a_stronger_key_is_refused_by_name() {
        let caller = bounded();
        type Strengthen = fn(&mut KeyRecord);
        let stronger: [(&str, Strengthen); 6] = [
            ("scopes", |k| k.scopes.push("admin".into())),
            ("plan", |k| k.plan = Some("unlimited".into())),
            ("expiry", |k| k.expires_at = None),
            ("expiry", |k| k.expires_at = Some(1_001)),
            ("networks", |k| k.allowed_cidrs.clear()),
            ("networks", |k| k.allowed_cidrs.push(net("192.168.0.0/16"))),
        ];
        for (expected, strengthen) in stronger {
            let mut key = within();
            strengthen(&mut key);
            assert_eq!(
                dimension(caller.require_may_touch(&key)),
                expected,
                "{key:?}"
            );
            assert_eq!(
                dimension(caller.require_may_make(&key)),
                expected,
                "{key:?}"
            );
        }
        assert_eq!(
            dimension(caller.require_plan_choice(Some("unlimited"))),
            "plan"
        );
    }

    #[test]
    fn only_the_admin_enables_what_the_admin_disabled_or_what_awaits_its_code() {
        let caller = bounded();
        let mut key = within();
        key.state = KeyState::Disabled;
        caller.require_may_enable(&key).unwrap();
        key.disabled_by_admin = true;
        assert_eq!(dimension(caller.require_may_enable(&key)), "state");
        key.state = KeyState::PendingActivation;
        assert_eq!(dimension(caller.require_may_enable(&key)), "activation");
    }

    #[test]
    fn only_a_listed_certificate_name_is_admin() {
        let config = ManagementConfig {
            admin_identities: vec!["spiffe://mesh/ops".into()],
        };
        let id = |name: &str| PeerIdentity {
            names: vec!["other.example".into(), name.into()],
        };
        assert_eq!(
            config.caller_for(Some(&id("spiffe://mesh/ops"))),
            Some(Caller::Admin)
        );
        assert_eq!(config.caller_for(Some(&id("spiffe://mesh/app"))), None);
        assert_eq!(config.caller_for(None), None);
        assert_eq!(
            ManagementConfig::default().caller_for(Some(&id("spiffe://mesh/ops"))),
            None
        );
    }

    #[test]
    fn only_the_admin_imports_a_weak_secret() {
        Caller::Admin.require_strong_import("z").unwrap();
        assert_eq!(dimension(bounded().require_strong_import("z")), "secret");
        let strong = crate::key::format::Alphabet::Base62.random(40);
        bounded().require_strong_import(&strong).unwrap();
    }

    #[test]
    fn a_new_key_defaults_to_the_calling_keys_owner() {
        let caller = key_caller("own_a", &["read"]);
        assert_eq!(caller.owner_for_new_key(None), Some("own_a"));
        assert_eq!(caller.owner_for_new_key(Some(" ")), Some("own_a"));
        assert_eq!(caller.owner_for_new_key(Some("own_b")), Some("own_b"));
        assert_eq!(Caller::Admin.owner_for_new_key(None), None);
    }
}
