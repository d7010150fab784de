//! Who is calling, and the authority rule: what each caller may see, touch and grant.
//!
//! How a caller is recognised (admin token, API key, anonymous on loopback) belongs to the
//! adapters (`service::caller::authenticate`); what it may then do is decided here, once,
//! for every management call.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
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
    /// An API key acting for its owner.
    Owner {
        /// The owner it may act for.
        owner_id: String,
        /// Scopes the calling key holds; it may grant no others.
        scopes: Vec<String>,
    },
}

impl Caller {
    /// Refuses callers that are not admin.
    pub fn require_admin(&self) -> Result<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Owner { .. } => Err(Error::PermissionDenied(
                "this call needs the admin token; API keys may manage only their own owner's keys"
                    .into(),
            )),
        }
    }

    /// Refuses an owner-scoped caller acting for another owner.
    pub fn require_owner(&self, owner_id: &str) -> Result<()> {
        match self {
            Caller::Owner { owner_id: own, .. } if own != owner_id => Err(Error::PermissionDenied(
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
            Caller::Owner { owner_id: own, .. } => own == owner_id,
        }
    }

    /// Refuses granting scopes the caller does not hold itself.
    pub fn require_grantable(&self, scopes: &[String]) -> Result<()> {
        if let Caller::Owner { scopes: held, .. } = self
            && let Some(missing) = scopes.iter().find(|s| !held.contains(s))
        {
            return Err(Error::PermissionDenied(format!(
                "the calling key cannot grant scope {missing:?}, which it does not hold"
            )));
        }
        Ok(())
    }

    /// The owner a new key is for: the one named, or, for an API key naming none, its own.
    pub fn owner_for_new_key<'a>(&'a self, named: Option<&'a str>) -> Option<&'a str> {
        match (self, named.map(str::trim).filter(|id| !id.is_empty())) {
            (_, Some(id)) => Some(id),
            (Caller::Owner { owner_id, .. }, None) => Some(owner_id),
            (Caller::Admin, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_caller() -> Caller {
        Caller::Owner {
            owner_id: "own_a".into(),
            scopes: vec!["read".into(), MANAGE_SCOPE.into()],
        }
    }

    #[test]
    fn admin_may_do_everything() {
        let admin = Caller::Admin;
        admin.require_admin().unwrap();
        admin.require_owner("own_b").unwrap();
        assert!(admin.can_see("own_b"));
        admin.require_grantable(&["anything".into()]).unwrap();
    }

    #[test]
    fn a_key_acts_for_its_owner_only_and_grants_only_what_it_holds() {
        let caller = key_caller();
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
        caller.require_grantable(&["read".into()]).unwrap();
        let error = caller.require_grantable(&["write".into()]).unwrap_err();
        assert!(error.to_string().contains("\"write\""), "{error}");
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
    fn a_new_key_defaults_to_the_calling_keys_owner() {
        assert_eq!(key_caller().owner_for_new_key(None), Some("own_a"));
        assert_eq!(key_caller().owner_for_new_key(Some(" ")), Some("own_a"));
        assert_eq!(key_caller().owner_for_new_key(Some("own_b")), Some("own_b"));
        assert_eq!(Caller::Admin.owner_for_new_key(None), None);
    }
}
