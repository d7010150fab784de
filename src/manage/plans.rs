//! Plans: what owners' keys may do, as records the admin creates, changes and deletes while
//! keygate runs. The configuration's plans are the set a store starts with
//! ([`Plans::create_initial`]).

use std::fmt;
use std::sync::Arc;

use tracing::{info, warn};

use super::{Caller, Deps, Written};
use crate::error::{Error, Result, quote};
use crate::invalidation::Invalidation;
use crate::model::KeyState;
use crate::model::values::required;
use crate::plan::{PlanConfig, Quota, RateWindow};
use crate::store::{Walked, plan_not_found, walk};

/// The fields a plan update changes; `None` leaves a field as it is. A plan's name never
/// changes: owners and keys name it.
#[derive(Debug, Clone, Default)]
pub struct PlanUpdate {
    /// Whether keys on the plan may call the API.
    pub api_access: Option<bool>,
    /// Most live keys per owner; 0 for no limit.
    pub max_active_keys: Option<u32>,
    /// The rate windows, replacing all of them.
    pub rate_windows: Option<Vec<RateWindow>>,
    /// The calendar quotas, replacing all of them.
    pub quotas: Option<Vec<Quota>>,
}

/// Every plan, and the one owners created without one are put on.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanList {
    /// The plans, in name order.
    pub plans: Vec<PlanConfig>,
    /// The default plan's name.
    pub default_plan: String,
}

/// Creates, reads, changes and deletes plans.
#[derive(Clone)]
pub struct Plans {
    deps: Deps,
}

/// Who names a plan: owners on it, and keys (not revoked) given it as their own.
#[derive(Debug, Default)]
struct Users {
    owners: usize,
    keys: usize,
}

impl fmt::Display for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let counted = |n: usize, what: &str| match n {
            1 => format!("1 {what}"),
            n => format!("{n} {what}s"),
        };
        write!(
            f,
            "{} and {}",
            counted(self.owners, "owner"),
            counted(self.keys, "key")
        )
    }
}

impl Plans {
    /// The plan service over `deps`.
    pub fn new(deps: Deps) -> Self {
        Plans { deps }
    }

    /// Creates `plan`, which must follow the plan rules ([`PlanConfig::validate`]). Admin
    /// only. `AlreadyExists` if a plan has its name.
    pub async fn create(&self, caller: &Caller, plan: PlanConfig) -> Result<PlanConfig> {
        caller.require_admin()?;
        plan.validate("")?;
        self.deps.store.create_plan(&plan).await?;
        let change = Invalidation::Plan(plan.name.clone());
        self.deps.after_write(change, true).await;
        Ok(plan)
    }

    /// The plan `name`; any authenticated caller may read it.
    pub async fn get(&self, _caller: &Caller, name: &str) -> Result<PlanConfig> {
        let name = required("name", name)?;
        self.deps
            .store
            .get_plan(name)
            .await?
            .ok_or_else(|| plan_not_found(name))
    }

    /// Every plan and the default one; any authenticated caller may read them.
    pub async fn list(&self, _caller: &Caller) -> Result<PlanList> {
        Ok(PlanList {
            plans: self.deps.store.list_plans().await?,
            default_plan: self.deps.default_plan.clone(),
        })
    }

    /// Changes the fields `update` names on plan `name`; the result must follow the plan
    /// rules (fields named `plan.…`). Admin only. Returns once every live replica dropped
    /// its copy of the plan, so that their next request decides by the new one (see
    /// [`Written`]).
    pub async fn update(
        &self,
        caller: &Caller,
        name: &str,
        update: PlanUpdate,
    ) -> Result<Written<PlanConfig>> {
        caller.require_admin()?;
        let name = required("plan.name", name)?;
        let plan = self
            .deps
            .store
            .update_plan(
                name,
                Arc::new(move |plan| {
                    if let Some(v) = update.api_access {
                        plan.api_access = v;
                    }
                    if let Some(v) = update.max_active_keys {
                        plan.max_active_keys = v;
                    }
                    if let Some(v) = &update.quotas {
                        plan.quotas = v.clone();
                    }
                    if let Some(v) = &update.rate_windows {
                        plan.rate_windows = v.clone();
                    }
                    plan.validate("plan")?;
                    Ok(())
                }),
            )
            .await?;
        let change = Invalidation::Plan(plan.name.clone());
        let propagation = self.deps.after_write(change, false).await;
        Ok(Written {
            record: plan,
            propagation,
        })
    }

    /// Deletes plan `name`. Admin only. Refused (`FailedPrecondition`) for the default plan,
    /// and while owners or keys that are not revoked name it, saying how many; see the
    /// module documentation of [`crate::manage`] for what a concurrent assignment can do.
    pub async fn delete(&self, caller: &Caller, name: &str) -> Result<Written<PlanConfig>> {
        caller.require_admin()?;
        let name = required("name", name)?;
        if name == self.deps.default_plan {
            return Err(Error::FailedPrecondition(format!(
                "plan {} is the default plan (default_plan), which new owners are put on; it cannot be deleted",
                quote(name)
            )));
        }
        if self.deps.store.get_plan(name).await?.is_none() {
            return Err(plan_not_found(name));
        }
        let users = self.users(name).await?;
        if users.owners > 0 || users.keys > 0 {
            return Err(Error::FailedPrecondition(format!(
                "plan {} is used by {users}; move the owners to another plan, and revoke or delete the keys, first (revoked keys do not count)",
                quote(name)
            )));
        }
        let plan = self.deps.store.delete_plan(name).await?;
        let change = Invalidation::Plan(plan.name.clone());
        let propagation = self.deps.after_write(change, false).await;
        Ok(Written {
            record: plan,
            propagation,
        })
    }

    /// Creates each of `initial`, the configuration's plans, that the store does not have.
    /// A stored plan is never overwritten: one that differs from the configuration's was
    /// changed through the API (or written by a replica configured otherwise), and is kept
    /// as stored, with a warning.
    pub async fn create_initial(&self, initial: &[PlanConfig]) -> Result<()> {
        for plan in initial {
            match self.deps.store.create_plan(plan).await {
                Ok(()) => info!(plan = %plan.name, "plan created from the configuration"),
                Err(Error::AlreadyExists(_)) => {
                    let stored = self.deps.store.get_plan(&plan.name).await?;
                    if stored.as_ref() != Some(plan) {
                        warn!(
                            plan = %plan.name,
                            configured = ?plan,
                            stored = ?stored,
                            "the configured plan differs from the stored one; keeping the stored plan (change it with `keygate plans update`)"
                        );
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Who names plan `name`, read from every owner and key.
    async fn users(&self, name: &str) -> Result<Users> {
        let mut users = Users::default();
        walk(self.deps.store.as_ref(), |record| {
            match record {
                Walked::Owner(owner) => users.owners += usize::from(owner.plan == name),
                Walked::Key(key) => {
                    let named = key.plan.as_deref() == Some(name);
                    users.keys += usize::from(named && key.state != KeyState::Revoked);
                }
            }
            Ok(())
        })
        .await?;
        Ok(users)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::manage::testing::{Fixture, key_caller, new_key, record};
    use crate::manage::{NewOwner, OwnerUpdate};
    use crate::model::{Metadata, Name};
    use crate::plan::RateScope;

    fn team() -> PlanConfig {
        PlanConfig {
            max_active_keys: 3,
            rate_windows: vec![RateWindow {
                limit: 100,
                period: Duration::from_secs(60),
                per: RateScope::Key,
            }],
            ..PlanConfig::unlimited("team")
        }
    }

    fn windows(limit: u64, secs: u64) -> Option<Vec<RateWindow>> {
        Some(vec![RateWindow {
            limit,
            period: Duration::from_secs(secs),
            per: RateScope::Owner,
        }])
    }

    #[tokio::test]
    async fn the_admin_creates_plans_and_every_caller_reads_them() {
        let f = Fixture::new().await;
        let created = f.plans.create(&Caller::Admin, team()).await.unwrap();
        assert_eq!(created, team());
        assert_eq!(f.invalidations(), [Invalidation::Plan("team".into())]);
        assert!(
            f.recorder.take_confirmed().is_empty(),
            "a new plan is announced"
        );
        let reader = key_caller("own_x", &["read"]);
        assert_eq!(f.plans.get(&reader, "team").await.unwrap(), team());
        let listed = f.plans.list(&reader).await.unwrap();
        let names: Vec<&str> = listed.plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["default", "free", "team"]);
        assert_eq!(listed.default_plan, "default");
        let again = f.plans.create(&Caller::Admin, team()).await.unwrap_err();
        assert!(matches!(again, Error::AlreadyExists(_)), "{again}");
        let missing = f.plans.get(&reader, "gold").await.unwrap_err();
        assert_eq!(missing, Error::NotFound("plan \"gold\" not found".into()));
    }

    #[tokio::test]
    async fn only_the_admin_changes_plans() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let manager = key_caller(&owner.id, &["keygate:keys"]);
        let update = PlanUpdate {
            max_active_keys: Some(50),
            ..Default::default()
        };
        for refused in [
            f.plans.create(&manager, team()).await.err(),
            f.plans.update(&manager, "free", update).await.err(),
            f.plans.delete(&manager, "free").await.err(),
        ] {
            assert!(
                matches!(refused, Some(Error::PermissionDenied(_))),
                "{refused:?}"
            );
        }
        assert_eq!(
            f.plans.get(&manager, "free").await.unwrap().max_active_keys,
            2
        );
        assert!(f.plans.get(&manager, "team").await.is_err());
    }

    #[tokio::test]
    async fn a_plan_breaking_a_rule_is_refused_naming_the_field() {
        let f = Fixture::new().await;
        let mut zero = team();
        zero.rate_windows[0].limit = 0;
        let mut blank = team();
        blank.name = "  ".into();
        for (plan, field) in [(zero, "rate_windows[0].limit"), (blank, "name")] {
            let refused = f.plans.create(&Caller::Admin, plan).await.unwrap_err();
            assert!(
                matches!(&refused, Error::InvalidArgument(m) if m.starts_with(field)),
                "{refused}"
            );
        }
        let too_long = PlanUpdate {
            rate_windows: windows(5, 32 * 86_400),
            ..Default::default()
        };
        let refused = f
            .plans
            .update(&Caller::Admin, "free", too_long)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, Error::InvalidArgument(m) if m.starts_with("plan.rate_windows[0].period")),
            "{refused}"
        );
        assert!(
            f.plans
                .get(&Caller::Admin, "free")
                .await
                .unwrap()
                .rate_windows
                .is_empty()
        );
        let missing = f
            .plans
            .update(&Caller::Admin, "gold", PlanUpdate::default())
            .await
            .unwrap_err();
        assert!(matches!(missing, Error::NotFound(_)), "{missing}");
    }

    #[tokio::test]
    async fn an_update_changes_the_named_fields_is_confirmed_and_caps_new_keys_at_once() {
        let f = Fixture::new().await;
        let owner = f.owner_on("alice", Some("free")).await;
        let raised = PlanUpdate {
            max_active_keys: Some(3),
            rate_windows: windows(7, 60),
            ..Default::default()
        };
        let written = f
            .plans
            .update(&Caller::Admin, "free", raised)
            .await
            .unwrap();
        let plan = written.record;
        assert_eq!((plan.max_active_keys, plan.api_access), (3, true));
        assert_eq!(plan.rate_windows, windows(7, 60).unwrap());
        assert_eq!(
            f.recorder.take_confirmed(),
            [Invalidation::Plan("free".into())]
        );
        assert_eq!(f.plans.get(&Caller::Admin, "free").await.unwrap(), plan);
        // The cap as stored now: three keys, not the two the plan started with.
        for i in 0..3 {
            let mut key = record(&format!("k{i}"), &owner.id);
            key.created_at = f.now();
            f.deps.store.insert_key(&key, None).await.unwrap();
        }
        let quota = f
            .keys
            .create(&Caller::Admin, new_key(&owner.id))
            .await
            .unwrap_err();
        assert!(matches!(quota, Error::FailedPrecondition(_)), "{quota}");
    }

    #[tokio::test]
    async fn a_plan_in_use_or_the_default_is_not_deleted() {
        let f = Fixture::new().await;
        f.plans.create(&Caller::Admin, team()).await.unwrap();
        let owner = f.owner_on("alice", Some("team")).await;
        let other = f.owner("bob").await;
        let mut own_plan = record("k1", &other.id);
        own_plan.plan = Some("team".into());
        f.deps.store.insert_key(&own_plan, None).await.unwrap();
        let mut revoked = record("k2", &other.id);
        revoked.plan = Some("team".into());
        revoked.state = KeyState::Revoked;
        f.deps.store.insert_key(&revoked, None).await.unwrap();
        f.take_invalidations();

        let refused = f.plans.delete(&Caller::Admin, "team").await.unwrap_err();
        assert!(
            matches!(&refused, Error::FailedPrecondition(m) if m.contains("used by 1 owner and 1 key;")),
            "{refused}"
        );
        let default = f.plans.delete(&Caller::Admin, "default").await.unwrap_err();
        assert!(
            matches!(&default, Error::FailedPrecondition(m) if m.contains("default plan")),
            "{default}"
        );
        let missing = f.plans.delete(&Caller::Admin, "gold").await.unwrap_err();
        assert!(matches!(missing, Error::NotFound(_)), "{missing}");
        assert!(f.invalidations().is_empty(), "nothing was written");

        let moved = OwnerUpdate {
            plan: Some("free".into()),
            ..Default::default()
        };
        f.owners
            .update(&Caller::Admin, &owner.id, moved)
            .await
            .unwrap();
        f.deps.store.delete_key("k1").await.unwrap();
        f.take_invalidations();
        f.recorder.take_confirmed();
        let deleted = f.plans.delete(&Caller::Admin, "team").await.unwrap();
        assert_eq!(deleted.record, team());
        assert_eq!(
            f.recorder.take_confirmed(),
            [Invalidation::Plan("team".into())]
        );
        assert_eq!(f.deps.store.get_plan("team").await.unwrap(), None);
        let gone = OwnerUpdate {
            plan: Some("team".into()),
            ..Default::default()
        };
        let refused = f
            .owners
            .update(&Caller::Admin, &owner.id, gone)
            .await
            .unwrap_err();
        assert!(matches!(refused, Error::InvalidArgument(_)), "{refused}");
    }

    #[tokio::test]
    async fn the_configured_plans_are_created_once_and_never_overwrite_stored_ones() {
        let f = Fixture::new().await;
        let raised = PlanUpdate {
            max_active_keys: Some(9),
            ..Default::default()
        };
        f.plans
            .update(&Caller::Admin, "free", raised)
            .await
            .unwrap();
        let configured = [
            PlanConfig {
                max_active_keys: 2,
                ..PlanConfig::unlimited("free")
            },
            team(),
        ];
        f.plans.create_initial(&configured).await.unwrap();
        f.plans.create_initial(&configured).await.unwrap();
        let stored = f.plans.list(&Caller::Admin).await.unwrap().plans;
        assert_eq!(stored[1].max_active_keys, 9, "kept as stored: {stored:?}");
        assert_eq!(stored[2], team(), "created when absent");
    }

    #[tokio::test]
    async fn owners_are_not_put_on_a_default_plan_that_is_gone() {
        let f = Fixture::new().await;
        f.deps.store.delete_plan("default").await.unwrap();
        let new = NewOwner {
            external_id: Name::parse("external_id", "carol").unwrap(),
            display_name: Name::parse("display_name", "Carol").unwrap(),
            plan: None,
            metadata: Metadata::default(),
        };
        let refused = f.owners.create(&Caller::Admin, new).await.unwrap_err();
        assert!(
            matches!(&refused, Error::FailedPrecondition(m) if m.contains("default_plan")),
            "{refused}"
        );
    }
}
