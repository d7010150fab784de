//! The management plane: the lifecycle rules of owners, plans and keys, with no transport.
//!
//! [`Owners`], [`Plans`] and [`Keys`] take typed, already validated inputs (see
//! [`crate::model`]'s values) and a [`Caller`], apply the rules and return records. The gRPC
//! service and the CLI are adapters around them: authenticate, convert, call, convert back.
//!
//! # Who may do what
//!
//! - The admin (the admin token, or anonymous on a loopback-only install) may do
//!   everything: create, list and update owners, and manage any owner's keys.
//! - An API key holding [`MANAGE_SCOPE`] acts for its own owner only. Another owner's
//!   records are reported as not found, so ids cannot be probed; creating or importing for
//!   another owner is refused; it may grant only scopes it holds itself; owner-wide calls
//!   (create, list, update owners) are refused.
//! - Plans are created, changed and deleted by the admin only; any authenticated caller may
//!   read them (a key's owner is on one).
//! - Whoever may see a key or an owner may read its usage history.
//!
//! # Rules every write follows
//!
//! - An owner or key is put only on a plan that is stored; a disabled owner gets no new keys;
//!   the plan's `max_active_keys`, as stored at that moment, is checked in the same store
//!   transaction as the insert.
//! - A plan is deleted only while no owner and no key that is not revoked names it, and
//!   never the default plan. The check reads every owner and key first, so an owner put on
//!   the plan by another call while it is being deleted is left on a plan that no longer
//!   exists: its keys are refused with `PLAN_FORBIDDEN` until it is moved to another plan
//!   (or the plan is created again). Nothing is granted that was not.
//! - A revoked key can no longer be changed or rotated; revoking again changes nothing.
//! - A new secret (create, rotate) appears once, in the answer; the store keeps its argon2id
//!   hash only.
//! - After each stored write, what replicas cached about it is dropped through the
//!   [`Invalidator`], in one place per record kind (see `Deps::after_key_write`). A write
//!   that changes or deletes a record (revoke, disable, rotate, delete, an owner or plan
//!   change, a plan's deletion) returns only when every live replica confirmed it dropped
//!   what it cached, or the invalidator's bounded wait ended; the answer ([`Written`]) says
//!   which replicas did not confirm, and the write is stored either way. So a plan change
//!   is in force on every replica's next request once its write returned. A new record
//!   (create, import, a new owner or plan) is only announced: nothing cached about it can
//!   grant access it should not.

pub mod caller;
pub mod edit;
pub mod keys;
pub mod owners;
pub mod plans;
pub mod usage;

use std::sync::{Arc, Mutex};

use crate::calendar::Calendar;
use crate::clock::Clock;
use crate::error::{Error, Result, quote};
use crate::invalidation::{Invalidation, Propagation};
use crate::key::format::Profiles;
use crate::key::hash::{Pepper, SecretHasher};
use crate::model::values::required;
use crate::model::{KeyRecord, Owner};
use crate::store::{KeyChange, Store};

pub use caller::{Caller, CallingKey, MANAGE_SCOPE};
pub use edit::KeyEdit;
pub use keys::{DigestImport, Expiry, Import, Issued, Keys, NewKey, Rotation};
pub use owners::{NewOwner, OwnerUpdate, Owners};
pub use plans::{PlanList, PlanUpdate, Plans};
pub use usage::{Usage, UsageOf, UsageReport};

/// Drops what every replica cached about a change; called after each stored write.
#[async_trait::async_trait]
pub trait Invalidator: Send + Sync {
    /// Drops what is cached about `change`, here and on every other live replica, waiting
    /// (bounded) until each confirmed; returns which did not.
    async fn invalidate(&self, change: Invalidation) -> Propagation;

    /// Tells every replica about `change` without waiting: for news that cannot make
    /// anything cached grant access (a new record).
    async fn announce(&self, change: Invalidation);
}

/// A stored write, and how far the invalidation that followed it got.
#[derive(Debug, Clone)]
pub struct Written<T> {
    /// What was written (or, for a delete, removed).
    pub record: T,
    /// The live replicas that did not confirm dropping what they cached in time.
    pub propagation: Propagation,
}

/// What the management services work with; cheap to clone.
#[derive(Clone)]
pub struct Deps {
    /// Owners, plans and keys.
    pub store: Arc<dyn Store>,
    /// argon2id hashing of new secrets.
    pub hasher: SecretHasher,
    /// Key for lookup and activation-code digests.
    pub pepper: Pepper,
    /// Key shapes new secrets are issued in.
    pub profiles: Arc<Profiles>,
    /// The plan owners created without one are put on (`default_plan`).
    pub default_plan: String,
    /// Current time.
    pub clock: Arc<dyn Clock>,
    /// The time zone usage is counted in.
    pub calendar: Calendar,
    /// Told about every stored write.
    pub invalidator: Arc<dyn Invalidator>,
    /// The data plane's rate limiter, which holds keys' live credit balances.
    pub limiter: Arc<crate::ratelimit::RateLimiter>,
}

/// Which page of a listing: up to `size` records in id order after `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The id the page starts after; `None` for the first page.
    pub after: Option<String>,
    /// Most records on the page.
    pub size: usize,
}

impl Deps {
    /// The owner `id`, if the caller may see it; otherwise `NotFound`.
    async fn visible_owner(&self, caller: &Caller, id: &str) -> Result<Owner> {
        let id = required("owner_id", id)?;
        match self.store.get_owner(id).await? {
            Some(owner) if caller.can_see(&owner.id) => Ok(owner),
            _ => Err(Error::NotFound(format!("owner {} not found", quote(id)))),
        }
    }

    /// The key `id`, if the caller may see it; otherwise `NotFound`.
    async fn visible_key(&self, caller: &Caller, id: &str) -> Result<KeyRecord> {
        let id = required("id", id)?;
        match self.store.get_key(id).await? {
            Some(key) if caller.can_see(&key.owner_id) => Ok(key),
            _ => Err(Error::NotFound(format!("key {} not found", quote(id)))),
        }
    }

    /// `plan` if it names a stored plan; `None` when blank.
    async fn plan_name(&self, field: &str, plan: Option<&str>) -> Result<Option<String>> {
        let plan = plan.map(str::trim).unwrap_or_default();
        if plan.is_empty() {
            return Ok(None);
        }
        if self.store.get_plan(plan).await?.is_none() {
            let known: Vec<String> = self
                .store
                .list_plans()
                .await?
                .into_iter()
                .map(|p| p.name)
                .collect();
            return Err(Error::InvalidArgument(format!(
                "{field}: unknown plan {}; the plans are {known:?}",
                quote(plan)
            )));
        }
        Ok(Some(plan.to_owned()))
    }

    /// The default plan's name, checked to be stored: another replica, configured with
    /// another default, may have deleted it.
    async fn default_plan(&self) -> Result<String> {
        match self.store.get_plan(&self.default_plan).await? {
            Some(plan) => Ok(plan.name),
            None => Err(Error::FailedPrecondition(format!(
                "the default plan {} (default_plan) does not exist; create it, or name a plan",
                quote(&self.default_plan)
            ))),
        }
    }

    /// Applies `change` to a key the caller may see and touch, stamping `updated_at`, then
    /// invalidates what was cached about it. The caller's authority is judged again on the
    /// record the store's write found, so a concurrent change cannot slip past it.
    async fn change_key(
        &self,
        caller: &Caller,
        id: &str,
        change: impl Fn(&mut KeyRecord, crate::clock::UnixTime) -> Result<()> + Send + Sync + 'static,
    ) -> Result<Written<KeyRecord>> {
        let key = self.visible_key(caller, id).await?;
        caller.require_may_touch(&key)?;
        let now = self.clock.now();
        // The record as the committed attempt found it: a store may run the change again.
        let before = Arc::new(Mutex::new(None));
        let seen = before.clone();
        let by = caller.clone();
        let change: KeyChange = Arc::new(move |k: &mut KeyRecord| {
            *seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(k.clone());
            by.require_may_touch(k)?;
            change(k, now)?;
            k.updated_at = now;
            Ok(())
        });
        let updated = self.store.update_key(&key.id, change).await?;
        let before = before.lock().unwrap_or_else(|e| e.into_inner()).take();
        let propagation = self
            .after_key_write(Some(before.as_ref().unwrap_or(&key)), Some(&updated))
            .await;
        Ok(Written {
            record: updated,
            propagation,
        })
    }

    /// The one place a stored key write is followed by its invalidations: the key itself
    /// (created, changed or deleted), a lookup digest that no longer names a key, and one
    /// that now does. What withdraws access (a changed or deleted key, a released digest)
    /// is confirmed by every live replica; what only adds (a new key, a new digest) is
    /// announced.
    async fn after_key_write(
        &self,
        before: Option<&KeyRecord>,
        after: Option<&KeyRecord>,
    ) -> Propagation {
        let mut propagation = Propagation::default();
        let Some(id) = after.or(before).map(|k| k.id.clone()) else {
            return propagation;
        };
        let digest = |k: Option<&KeyRecord>| k.and_then(|k| k.lookup_digest.clone());
        let (old, new) = (digest(before), digest(after));
        if before.is_some() {
            propagation.merge(self.invalidator.invalidate(Invalidation::Key(id)).await);
        } else {
            self.invalidator.announce(Invalidation::Key(id)).await;
        }
        if old != new {
            if let Some(old) = old {
                propagation.merge(
                    self.invalidator
                        .invalidate(Invalidation::Unimported(old))
                        .await,
                );
            }
            if let Some(new) = new {
                self.invalidator.announce(Invalidation::Imported(new)).await;
            }
        }
        propagation
    }

    /// The invalidation that follows a stored owner or plan write, `change`: confirmed for
    /// a change or a deletion, announced for a new record.
    async fn after_write(&self, change: Invalidation, created: bool) -> Propagation {
        if created {
            self.invalidator.announce(change).await;
            Propagation::default()
        } else {
            self.invalidator.invalidate(change).await
        }
    }
}

#[cfg(test)]
pub(crate) mod testing;
