//! [`KeyEdit`]: the changes an update makes to a key, and the state rules they obey.

use super::Caller;
use crate::clock::UnixTime;
use crate::error::{Error, Result, quote};
use crate::model::{Cidrs, Credits, KeyRecord, KeyState, Metadata, Name, Scopes};

/// The fields a key update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct KeyEdit {
    /// New name.
    pub name: Option<Name>,
    /// New scopes, replacing all of them; the caller must hold each.
    pub scopes: Option<Scopes>,
    /// New allowed networks, replacing all of them.
    pub allowed_cidrs: Option<Cidrs>,
    /// New metadata, replacing all of it.
    pub metadata: Option<Metadata>,
    /// New expiry: `Some(None)` removes it, `Some(Some(t))` needs `t` in the future.
    pub expires_at: Option<Option<UnixTime>>,
    /// `true` disables an active key, `false` enables a disabled one.
    pub disabled: Option<bool>,
    /// New credits, granted when the edit is applied: `Some(None)` lifts the limit. Only the
    /// admin may set them.
    pub credits: Option<Option<Credits>>,
}

impl KeyEdit {
    /// Refuses an expiry that is not after `now`, credits that break their rules, and
    /// credits set by anyone but the admin.
    pub fn check(&self, now: UnixTime, caller: &Caller) -> Result<()> {
        if let Some(Some(t)) = self.expires_at {
            future("expire_time", t, now)?;
        }
        if let Some(credits) = &self.credits {
            require_credit_grant(caller, credits.as_ref())?;
        }
        Ok(())
    }

    /// Applies the edit to `k` for `caller`. A revoked key cannot change; a pending key is
    /// enabled only by its activation code; a key the admin disabled is enabled only by the
    /// admin; disabling or enabling a key already in that state is a no-op.
    pub fn apply(&self, k: &mut KeyRecord, caller: &Caller) -> Result<()> {
        if k.state == KeyState::Revoked {
            return Err(Error::FailedPrecondition(format!(
                "key {} is revoked and can no longer be changed",
                quote(&k.id)
            )));
        }
        if self.disabled == Some(false) {
            caller.require_may_enable(k)?;
        }
        match (self.disabled, k.state) {
            (Some(true), KeyState::Active) => {
                k.state = KeyState::Disabled;
                k.disabled_by_admin = caller.is_admin();
            }
            (Some(false), KeyState::Disabled) => {
                k.state = KeyState::Active;
                k.disabled_by_admin = false;
            }
            (Some(false), KeyState::PendingActivation) => {
                return Err(Error::FailedPrecondition(format!(
                    "key {} is pending activation; activate it with its code",
                    quote(&k.id)
                )));
            }
            _ => {}
        }
        if let Some(v) = &self.name {
            k.name = v.as_str().to_owned();
        }
        if let Some(v) = &self.scopes {
            k.scopes = v.to_vec();
        }
        if let Some(v) = &self.allowed_cidrs {
            k.allowed_cidrs = v.to_vec();
        }
        if let Some(v) = &self.metadata {
            k.metadata = (**v).clone();
        }
        if let Some(v) = self.expires_at {
            k.expires_at = v;
        }
        if let Some(v) = &self.credits {
            k.credits = v.clone();
        }
        Ok(())
    }
}

/// `t` if it lies after `now`.
pub(super) fn future(field: &str, t: UnixTime, now: UnixTime) -> Result<UnixTime> {
    if t <= now {
        return Err(Error::InvalidArgument(format!(
            "{field} must be in the future"
        )));
    }
    Ok(t)
}

/// Refuses credits that break their rules, and credits granted by anyone but the admin: they
/// are what a customer paid for, so a customer's own key cannot grant them.
pub fn require_credit_grant(caller: &Caller, credits: Option<&Credits>) -> Result<()> {
    if !caller.is_admin() {
        return Err(Error::PermissionDenied(
            "credits: only the admin may set a key's credits".into(),
        ));
    }
    match credits {
        Some(credits) => credits.validate("credits").map_err(Error::InvalidArgument),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::testing::record;

    fn edited(state: KeyState, edit: &KeyEdit) -> Result<KeyRecord> {
        let mut k = record("k1", "own_a");
        k.state = state;
        edit.apply(&mut k, &Caller::Admin).map(|()| k)
    }

    fn toggle(disabled: bool) -> KeyEdit {
        KeyEdit {
            disabled: Some(disabled),
            ..Default::default()
        }
    }

    #[test]
    fn disable_and_enable_move_between_active_and_disabled() {
        use KeyState::*;
        assert_eq!(edited(Active, &toggle(true)).unwrap().state, Disabled);
        assert_eq!(edited(Disabled, &toggle(false)).unwrap().state, Active);
        assert_eq!(edited(Disabled, &toggle(true)).unwrap().state, Disabled);
        assert_eq!(edited(Active, &toggle(false)).unwrap().state, Active);
        assert_eq!(
            edited(PendingActivation, &toggle(true)).unwrap().state,
            PendingActivation,
            "disabling a pending key leaves it pending"
        );
    }

    #[test]
    fn a_pending_key_cannot_be_enabled() {
        let error = edited(KeyState::PendingActivation, &toggle(false)).unwrap_err();
        assert!(matches!(&error, Error::FailedPrecondition(m) if m.contains("activat")));
    }

    #[test]
    fn a_revoked_key_is_immutable() {
        let rename = KeyEdit {
            name: Some(Name::parse("name", "new").unwrap()),
            ..Default::default()
        };
        for edit in [rename, toggle(false), KeyEdit::default()] {
            let error = edited(KeyState::Revoked, &edit).unwrap_err();
            assert!(matches!(&error, Error::FailedPrecondition(m) if m.contains("revoked")));
        }
    }

    #[test]
    fn only_named_fields_change() {
        let edit = KeyEdit {
            scopes: Some(Scopes::parse("scopes", &["b".into()]).unwrap()),
            expires_at: Some(None),
            ..Default::default()
        };
        let mut before = record("k1", "own_a");
        before.expires_at = Some(5);
        let mut after = before.clone();
        edit.apply(&mut after, &Caller::Admin).unwrap();
        assert_eq!(after.scopes, ["b"]);
        assert_eq!(after.expires_at, None);
        assert_eq!(after.name, before.name);
        assert_eq!(after.metadata, before.metadata);
        assert_eq!(after.allowed_cidrs, before.allowed_cidrs);
    }

    #[test]
    fn expiry_must_be_in_the_future() {
        let at = |t| KeyEdit {
            expires_at: Some(Some(t)),
            ..Default::default()
        };
        assert!(at(101).check(100, &Caller::Admin).is_ok());
        for t in [100, 99] {
            let error = at(t).check(100, &Caller::Admin).unwrap_err();
            assert!(matches!(&error, Error::InvalidArgument(m) if m.contains("future")));
        }
        let clear = KeyEdit {
            expires_at: Some(None),
            ..Default::default()
        };
        assert!(clear.check(100, &Caller::Admin).is_ok());
    }
}
