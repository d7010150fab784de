//! Owners: the accounts keys belong to, and the plans they may be on.

use std::sync::Arc;

use super::{Caller, Deps, Page, Written};
use crate::error::{Error, Result};
use crate::invalidation::Invalidation;
use crate::key::format::Alphabet;
use crate::model::{Metadata, Name, Owner, OwnerState};

/// A new owner's attributes.
#[derive(Debug, Clone)]
pub struct NewOwner {
    /// The product's own id for the account; unique.
    pub external_id: Name,
    /// Human-readable name.
    pub display_name: Name,
    /// A stored plan; `None` for the default plan.
    pub plan: Option<String>,
    /// Free-form attributes.
    pub metadata: Metadata,
}

/// The fields an owner update changes; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct OwnerUpdate {
    /// New display name.
    pub display_name: Option<Name>,
    /// New plan; must name a stored plan.
    pub plan: Option<String>,
    /// New state.
    pub state: Option<OwnerState>,
    /// New metadata, replacing all of it.
    pub metadata: Option<Metadata>,
}

/// Creates, reads and changes owners.
#[derive(Clone)]
pub struct Owners {
    deps: Deps,
}

impl Owners {
    /// The owner service over `deps`.
    pub fn new(deps: Deps) -> Self {
        Owners { deps }
    }

    /// Creates an owner on the given or the default plan. Admin only.
    pub async fn create(&self, caller: &Caller, new: NewOwner) -> Result<Owner> {
        caller.require_admin()?;
        let plan = match self.deps.plan_name("plan", new.plan.as_deref()).await? {
            Some(plan) => plan,
            None => self.deps.default_plan().await?,
        };
        let now = self.deps.clock.now();
        let owner = Owner {
            id: format!("own_{}", &*Alphabet::Base62.random(16)),
            external_id: new.external_id.into_string(),
            display_name: new.display_name.into_string(),
            state: OwnerState::Active,
            plan,
            metadata: new.metadata.into_map(),
            created_at: now,
            updated_at: now,
        };
        self.deps.store.create_owner(&owner).await?;
        let change = Invalidation::Owner(owner.id.clone());
        self.deps.after_write(change, true).await;
        Ok(owner)
    }

    /// The owner `id`; an API key sees only its own owner, others are `NotFound`.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<Owner> {
        self.deps.visible_owner(caller, id).await
    }

    /// A page of owners in id order. Admin only.
    pub async fn list(&self, caller: &Caller, page: &Page) -> Result<Vec<Owner>> {
        caller.require_admin()?;
        self.deps
            .store
            .list_owners(page.after.as_deref(), page.size)
            .await
    }

    /// Changes the fields `update` names on owner `id`. Admin only. Returns once every live
    /// replica dropped what it cached about the owner (see [`Written`]).
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        update: OwnerUpdate,
    ) -> Result<Written<Owner>> {
        caller.require_admin()?;
        let id = crate::model::values::required("owner.id", id)?;
        let plan = match update.plan.as_deref() {
            Some(plan) => Some(self.deps.plan_name("plan", Some(plan)).await?.ok_or_else(
                || Error::InvalidArgument("plan must name a plan (see ListPlans)".into()),
            )?),
            None => None,
        };
        let now = self.deps.clock.now();
        let owner = self
            .deps
            .store
            .update_owner(
                id,
                Arc::new(move |o| {
                    if let Some(v) = &update.display_name {
                        o.display_name = v.as_str().to_owned();
                    }
                    if let Some(v) = &plan {
                        o.plan = v.clone();
                    }
                    if let Some(v) = update.state {
                        o.state = v;
                    }
                    if let Some(v) = &update.metadata {
                        o.metadata = (**v).clone();
                    }
                    o.updated_at = now;
                    Ok(())
                }),
            )
            .await?;
        let change = Invalidation::Owner(owner.id.clone());
        let propagation = self.deps.after_write(change, false).await;
        Ok(Written {
            record: owner,
            propagation,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manage::testing::{Fixture, key_caller};

    fn new_owner(external_id: &str, plan: Option<&str>) -> NewOwner {
        NewOwner {
            external_id: Name::parse("external_id", external_id).unwrap(),
            display_name: Name::parse("display_name", "Alice").unwrap(),
            plan: plan.map(str::to_owned),
            metadata: Metadata::default(),
        }
    }

    #[tokio::test]
    async fn admin_creates_owners_on_the_default_or_a_named_plan() {
        let f = Fixture::new().await;
        let owner = f
            .owners
            .create(&Caller::Admin, new_owner("alice", None))
            .await
            .unwrap();
        assert!(owner.id.starts_with("own_"));
        assert_eq!(owner.plan, "default");
        assert_eq!(owner.state, OwnerState::Active);
        assert_eq!(owner.created_at, f.now());
        assert_eq!(f.invalidations(), [Invalidation::Owner(owner.id.clone())]);
        let pro = f
            .owners
            .create(&Caller::Admin, new_owner("bob", Some("free")))
            .await
            .unwrap();
        assert_eq!(pro.plan, "free");
        let unknown = f
            .owners
            .create(&Caller::Admin, new_owner("carol", Some("platinum")))
            .await
            .unwrap_err();
        assert!(matches!(&unknown, Error::InvalidArgument(m) if m.contains("platinum")));
        let duplicate = f
            .owners
            .create(&Caller::Admin, new_owner("alice", None))
            .await
            .unwrap_err();
        assert!(matches!(duplicate, Error::AlreadyExists(_)), "{duplicate}");
    }

    #[tokio::test]
    async fn owner_wide_calls_are_admin_only() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let caller = key_caller(&owner.id, &["keygate:keys"]);
        let page = Page {
            after: None,
            size: 10,
        };
        for refused in [
            f.owners.create(&caller, new_owner("x", None)).await.err(),
            f.owners.list(&caller, &page).await.err(),
            f.owners
                .update(&caller, &owner.id, OwnerUpdate::default())
                .await
                .err(),
        ] {
            assert!(
                matches!(refused, Some(Error::PermissionDenied(_))),
                "{refused:?}"
            );
        }
        assert_eq!(f.owners.list(&Caller::Admin, &page).await.unwrap(), [owner]);
    }

    #[tokio::test]
    async fn a_key_sees_only_its_own_owner() {
        let f = Fixture::new().await;
        let alice = f.owner("alice").await;
        let bob = f.owner("bob").await;
        let caller = key_caller(&alice.id, &["keygate:keys"]);
        assert_eq!(f.owners.get(&caller, &alice.id).await.unwrap(), alice);
        let hidden = f.owners.get(&caller, &bob.id).await.unwrap_err();
        assert_eq!(
            hidden,
            Error::NotFound(format!("owner {:?} not found", bob.id))
        );
        let blank = f.owners.get(&Caller::Admin, " ").await.unwrap_err();
        assert!(matches!(blank, Error::InvalidArgument(_)));
    }

    #[tokio::test]
    async fn updates_change_only_the_named_fields_and_invalidate_the_owner() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        f.clock.advance(60);
        f.take_invalidations();
        let updated = f
            .owners
            .update(
                &Caller::Admin,
                &owner.id,
                OwnerUpdate {
                    state: Some(OwnerState::Disabled),
                    plan: Some("free".into()),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .record;
        assert_eq!(updated.state, OwnerState::Disabled);
        assert_eq!(updated.plan, "free");
        assert_eq!(updated.display_name, owner.display_name);
        assert_eq!(updated.updated_at, owner.created_at + 60);
        assert_eq!(f.invalidations(), [Invalidation::Owner(owner.id.clone())]);

        let blank_plan = OwnerUpdate {
            plan: Some(" ".into()),
            ..Default::default()
        };
        let error = f
            .owners
            .update(&Caller::Admin, &owner.id, blank_plan)
            .await
            .unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error}");
        let missing = f
            .owners
            .update(&Caller::Admin, "own_nobody", OwnerUpdate::default())
            .await
            .unwrap_err();
        assert!(matches!(missing, Error::NotFound(_)), "{missing}");
    }
}
