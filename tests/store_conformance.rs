//! The behaviour every store backend must have. `conformance_suite!` expands to the whole
//! suite for one backend; each backend adds one invocation with an expression that builds a
//! fresh, empty store (and whatever must outlive it, e.g. its directory).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::redis::{RedisCluster, RedisServer};
use keygate::authz::decision::DecisionCode;
use keygate::authz::usage::UsageRecorder;
use keygate::calendar::{Anchor, Period};
use keygate::calendar::{Calendar, Day};
use keygate::error::Error;
use keygate::model::{
    DailyUsage, KeyKind, KeyRecord, KeyState, Meter, Owner, OwnerState, PreviousSecret,
};
use keygate::plan::{PlanConfig, Quota as CalendarQuota, RateScope, RateWindow};
use keygate::redis::RedisConfig;
use keygate::redis::keyspace;
use keygate::store::redis::RedisStore;
use keygate::store::{KeyDayUsage, KeyUse, Quota, Retention, Store};

fn owner(id: &str, external: &str) -> Owner {
    Owner {
        id: id.into(),
        external_id: external.into(),
        display_name: format!("Owner {id}"),
        state: OwnerState::Active,
        plan: "free".into(),
        metadata: BTreeMap::from([("tier".into(), "gold".into())]),
        created_at: 1_000,
        updated_at: 1_000,
    }
}

fn key(id: &str, owner_id: &str) -> KeyRecord {
    KeyRecord {
        id: id.into(),
        owner_id: owner_id.into(),
        name: format!("key {id}"),
        profile: Some("kg_live".into()),
        prefix: Some("kg_live".into()),
        kind: KeyKind::Single,
        scopes: vec!["read".into()],
        plan: None,
        allowed_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
        metadata: BTreeMap::new(),
        state: KeyState::Active,
        disabled_by_admin: false,
        secret_hash: "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2g".into(),
        secret_check: None,
        lookup_digest: None,
        foreign_digest: None,
        previous_secret: None,
        activation_digest: None,
        created_at: 1_000,
        updated_at: 1_000,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        usage_count: 0,
        credits: None,
    }
}

fn plan(name: &str, limit: u64) -> PlanConfig {
    PlanConfig {
        name: name.into(),
        api_access: true,
        max_active_keys: 3,
        rate_windows: vec![RateWindow {
            limit,
            period: Duration::from_secs(3600),
            per: RateScope::Owner,
        }],
        quotas: vec![CalendarQuota {
            limit: limit * 100,
            period: Period::Month,
            anchor: Some(Anchor::MonthDay(15)),
            per: RateScope::Key,
        }],
    }
}

pub async fn ping_answers(store: &dyn Store) {
    store.ping().await.unwrap();
}

pub async fn owners_round_trip(store: &dyn Store) {
    let alice = owner("o1", "ext-alice");
    store.create_owner(&alice).await.unwrap();
    assert_eq!(store.get_owner("o1").await.unwrap(), Some(alice));
    assert_eq!(store.get_owner("nobody").await.unwrap(), None);
}

pub async fn owner_ids_and_external_ids_are_unique(store: &dyn Store) {
    store.create_owner(&owner("o1", "ext-1")).await.unwrap();
    let same_id = store.create_owner(&owner("o1", "ext-2")).await.unwrap_err();
    assert!(matches!(same_id, Error::AlreadyExists(_)), "{same_id:?}");
    let same_external = store.create_owner(&owner("o2", "ext-1")).await.unwrap_err();
    assert!(
        matches!(same_external, Error::AlreadyExists(_)),
        "{same_external:?}"
    );
    assert_eq!(store.get_owner("o2").await.unwrap(), None);
}

pub async fn owners_list_in_pages(store: &dyn Store) {
    for i in 0..5 {
        store
            .create_owner(&owner(&format!("o{i}"), &format!("e{i}")))
            .await
            .unwrap();
    }
    let first = store.list_owners(None, 2).await.unwrap();
    let ids: Vec<_> = first.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["o0", "o1"]);
    let rest = store.list_owners(Some("o1"), 10).await.unwrap();
    let ids: Vec<_> = rest.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["o2", "o3", "o4"]);
    assert!(store.list_owners(Some("o4"), 10).await.unwrap().is_empty());
}

pub async fn owner_updates_apply_atomically(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    let updated = store
        .update_owner(
            "o1",
            Arc::new(|o| {
                o.state = OwnerState::Disabled;
                o.updated_at = 2_000;
                Ok(())
            }),
        )
        .await
        .unwrap();
    assert_eq!(updated.state, OwnerState::Disabled);
    assert_eq!(store.get_owner("o1").await.unwrap(), Some(updated));
    let refused = store
        .update_owner(
            "o1",
            Arc::new(|o| {
                o.display_name = "changed".into();
                Err(Error::FailedPrecondition("no".into()))
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(refused, Error::FailedPrecondition("no".into()));
    assert_eq!(
        store.get_owner("o1").await.unwrap().unwrap().display_name,
        "Owner o1"
    );
    let missing = store.update_owner("nobody", Arc::new(|_| Ok(()))).await;
    assert!(matches!(missing, Err(Error::NotFound(_))));
    let renamed = store
        .update_owner(
            "o1",
            Arc::new(|o| {
                o.external_id = "other".into();
                Ok(())
            }),
        )
        .await;
    assert!(matches!(renamed, Err(Error::InvalidArgument(_))));
}

pub async fn keys_round_trip_with_indexes(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    let mut imported = key("k2", "o1");
    imported.kind = KeyKind::Imported;
    imported.lookup_digest = Some("ab".repeat(32));
    imported.secret_check = Some("1a2b:0badf00d".into());
    imported.previous_secret = Some(PreviousSecret {
        hash: "old".into(),
        check: Some("1a2b:12345678".into()),
        expires_at: 5_000,
    });
    store.insert_key(&key("k1", "o1"), None).await.unwrap();
    store.insert_key(&imported, None).await.unwrap();
    assert_eq!(store.get_key("k1").await.unwrap(), Some(key("k1", "o1")));
    assert_eq!(
        store.find_key_by_digest(&"ab".repeat(32)).await.unwrap(),
        Some(imported.clone())
    );
    assert_eq!(
        store.find_key_by_digest(&"cd".repeat(32)).await.unwrap(),
        None
    );
    let listed = store.list_keys("o1", None, None, 10).await.unwrap();
    assert_eq!(listed, vec![key("k1", "o1"), imported]);
}

pub async fn key_inserts_refuse_duplicates_and_unknown_owners(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    store.insert_key(&key("k1", "o1"), None).await.unwrap();
    let dup = store.insert_key(&key("k1", "o1"), None).await.unwrap_err();
    assert!(matches!(dup, Error::AlreadyExists(_)), "{dup:?}");
    let mut a = key("k2", "o1");
    a.lookup_digest = Some("11".repeat(32));
    store.insert_key(&a, None).await.unwrap();
    let mut b = key("k3", "o1");
    b.lookup_digest = Some("11".repeat(32));
    let dup_digest = store.insert_key(&b, None).await.unwrap_err();
    assert!(
        matches!(dup_digest, Error::AlreadyExists(_)),
        "{dup_digest:?}"
    );
    assert_eq!(store.get_key("k3").await.unwrap(), None);
    let orphan = store
        .insert_key(&key("k4", "ghost"), None)
        .await
        .unwrap_err();
    assert!(matches!(orphan, Error::NotFound(_)), "{orphan:?}");
}

pub async fn quota_counts_only_live_keys(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    store.create_owner(&owner("o2", "e2")).await.unwrap();
    let quota = Some(Quota {
        max_active_keys: 2,
        now: 10_000,
    });
    let mut revoked = key("a-revoked", "o1");
    revoked.state = KeyState::Revoked;
    let mut expired = key("b-expired", "o1");
    expired.expires_at = Some(9_000);
    let mut disabled = key("c-disabled", "o1");
    disabled.state = KeyState::Disabled;
    for k in [&revoked, &expired, &disabled] {
        store.insert_key(k, quota).await.unwrap();
    }
    store.insert_key(&key("d-live", "o1"), quota).await.unwrap();
    let over = store
        .insert_key(&key("e-over", "o1"), quota)
        .await
        .unwrap_err();
    assert!(matches!(over, Error::FailedPrecondition(_)), "{over:?}");
    assert_eq!(store.get_key("e-over").await.unwrap(), None);
    // Another owner's keys do not count, and no quota means no check.
    store.insert_key(&key("f", "o2"), quota).await.unwrap();
    store
        .insert_key(&key("g-unlimited", "o1"), None)
        .await
        .unwrap();
}

pub async fn concurrent_inserts_never_exceed_the_quota(store: Arc<dyn Store>) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    let quota = Some(Quota {
        max_active_keys: 3,
        now: 10_000,
    });
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert_key(&key(&format!("k{i:02}"), "o1"), quota)
                    .await
            })
        })
        .collect();
    let mut accepted = 0;
    for task in tasks {
        if task.await.unwrap().is_ok() {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 3);
    assert_eq!(
        store.list_keys("o1", None, None, 100).await.unwrap().len(),
        3
    );
}

pub async fn plans_round_trip_in_name_order(store: &dyn Store) {
    assert!(store.list_plans().await.unwrap().is_empty());
    for name in ["pro", "free", "Team Pro: annual"] {
        store.create_plan(&plan(name, 10)).await.unwrap();
    }
    let names: Vec<String> = store
        .list_plans()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["Team Pro: annual", "free", "pro"]);
    assert_eq!(store.get_plan("pro").await.unwrap(), Some(plan("pro", 10)));
    assert_eq!(store.get_plan("gold").await.unwrap(), None);
    let taken = store.create_plan(&plan("pro", 99)).await.unwrap_err();
    assert!(matches!(taken, Error::AlreadyExists(_)), "{taken:?}");
    assert_eq!(store.get_plan("pro").await.unwrap(), Some(plan("pro", 10)));
}

pub async fn plan_updates_apply_atomically(store: &dyn Store) {
    store.create_plan(&plan("pro", 10)).await.unwrap();
    let updated = store
        .update_plan(
            "pro",
            Arc::new(|p| {
                p.rate_windows[0].limit = 20;
                p.api_access = false;
                Ok(())
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        (updated.rate_windows[0].limit, updated.api_access),
        (20, false)
    );
    assert_eq!(store.get_plan("pro").await.unwrap(), Some(updated.clone()));
    let refused = store
        .update_plan(
            "pro",
            Arc::new(|p| {
                p.max_active_keys = 0;
                Err(Error::InvalidArgument("no".into()))
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(refused, Error::InvalidArgument("no".into()));
    let renamed = store
        .update_plan(
            "pro",
            Arc::new(|p| {
                p.name = "gold".into();
                Ok(())
            }),
        )
        .await;
    assert!(
        matches!(renamed, Err(Error::InvalidArgument(_))),
        "{renamed:?}"
    );
    assert_eq!(store.get_plan("pro").await.unwrap(), Some(updated));
    assert_eq!(store.get_plan("gold").await.unwrap(), None);
    let missing = store.update_plan("gold", Arc::new(|_| Ok(()))).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
}

pub async fn concurrent_plan_updates_lose_nothing(store: Arc<dyn Store>) {
    store.create_plan(&plan("pro", 1)).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                let raise = Arc::new(|p: &mut PlanConfig| {
                    p.rate_windows[0].limit += 1;
                    Ok(())
                });
                store.update_plan("pro", raise).await
            })
        })
        .collect();
    let mut applied = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => applied += 1,
            // A store may give up on a record that keeps changing; it must say so.
            Err(e) => assert!(matches!(e, Error::Unavailable(_)), "{e:?}"),
        }
    }
    assert!(applied > 0);
    let limit = store.get_plan("pro").await.unwrap().unwrap().rate_windows[0].limit;
    assert_eq!(limit, 1 + applied, "every applied change is kept");
}

pub async fn deleting_a_plan_returns_it_and_frees_its_name(store: &dyn Store) {
    store.create_plan(&plan("pro", 10)).await.unwrap();
    store.create_plan(&plan("free", 1)).await.unwrap();
    assert_eq!(store.delete_plan("pro").await.unwrap(), plan("pro", 10));
    assert_eq!(store.get_plan("pro").await.unwrap(), None);
    assert_eq!(store.list_plans().await.unwrap(), [plan("free", 1)]);
    let again = store.delete_plan("pro").await.unwrap_err();
    assert!(matches!(again, Error::NotFound(_)), "{again:?}");
    store.create_plan(&plan("pro", 5)).await.unwrap();
    assert_eq!(store.get_plan("pro").await.unwrap(), Some(plan("pro", 5)));
}

pub async fn keys_list_by_owner_state_and_page(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    store.create_owner(&owner("o2", "e2")).await.unwrap();
    for i in 0..6 {
        let mut k = key(&format!("k{i}"), "o1");
        if i % 2 == 1 {
            k.state = KeyState::Revoked;
        }
        store.insert_key(&k, None).await.unwrap();
    }
    store.insert_key(&key("k9", "o2"), None).await.unwrap();
    let ids = |keys: Vec<KeyRecord>| keys.into_iter().map(|k| k.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_keys("o1", None, None, 4).await.unwrap()),
        ["k0", "k1", "k2", "k3"]
    );
    assert_eq!(
        ids(store.list_keys("o1", None, Some("k3"), 4).await.unwrap()),
        ["k4", "k5"]
    );
    assert_eq!(
        ids(store
            .list_keys("o1", Some(KeyState::Active), None, 2)
            .await
            .unwrap()),
        ["k0", "k2"]
    );
    assert_eq!(
        ids(store
            .list_keys("o1", Some(KeyState::Active), Some("k2"), 2)
            .await
            .unwrap()),
        ["k4"]
    );
    assert_eq!(
        ids(store.list_keys("o2", None, None, 10).await.unwrap()),
        ["k9"]
    );
    assert!(
        store
            .list_keys("nobody", None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn key_updates_keep_indexes_in_step(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    let mut k = key("k1", "o1");
    k.lookup_digest = Some("aa".repeat(32));
    store.insert_key(&k, None).await.unwrap();
    let updated = store
        .update_key(
            "k1",
            Arc::new(|k| {
                k.state = KeyState::Revoked;
                k.revoked_at = Some(3_000);
                k.lookup_digest = Some("bb".repeat(32));
                Ok(())
            }),
        )
        .await
        .unwrap();
    assert_eq!(updated.state, KeyState::Revoked);
    assert_eq!(store.get_key("k1").await.unwrap(), Some(updated.clone()));
    assert_eq!(
        store.find_key_by_digest(&"aa".repeat(32)).await.unwrap(),
        None
    );
    assert_eq!(
        store.find_key_by_digest(&"bb".repeat(32)).await.unwrap(),
        Some(updated.clone())
    );
    let refused = store
        .update_key(
            "k1",
            Arc::new(|k| {
                k.name = "changed".into();
                Err(Error::FailedPrecondition("refused".into()))
            }),
        )
        .await
        .unwrap_err();
    assert_eq!(refused, Error::FailedPrecondition("refused".into()));
    assert_eq!(store.get_key("k1").await.unwrap(), Some(updated));
    let moved = store
        .update_key(
            "k1",
            Arc::new(|k| {
                k.owner_id = "o2".into();
                Ok(())
            }),
        )
        .await;
    assert!(matches!(moved, Err(Error::InvalidArgument(_))));
    let missing = store.update_key("nope", Arc::new(|_| Ok(()))).await;
    assert!(matches!(missing, Err(Error::NotFound(_))));
}

/// A key imported by the digest another system kept: indexed by that digest's keyed form
/// until its first use.
fn pending_key(id: &str, owner_id: &str, foreign: &str) -> KeyRecord {
    KeyRecord {
        kind: KeyKind::Imported,
        profile: None,
        prefix: Some("sk_live_".into()),
        secret_hash: String::new(),
        lookup_digest: Some(foreign.into()),
        foreign_digest: Some(foreign.into()),
        ..key(id, owner_id)
    }
}

/// The change the first use of a key imported by digest makes: keygate's own hash and
/// lookup digest in place of the foreign digest, only while the record still holds it.
fn upgrade(foreign: &str, lookup: &str) -> keygate::store::KeyChange {
    let (foreign, lookup) = (foreign.to_owned(), lookup.to_owned());
    Arc::new(move |k: &mut KeyRecord| {
        if k.foreign_digest.as_deref() != Some(foreign.as_str()) {
            return Err(Error::FailedPrecondition("changed".into()));
        }
        k.secret_hash = "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$dXBncmFkZWQ".into();
        k.lookup_digest = Some(lookup.clone());
        k.foreign_digest = None;
        Ok(())
    })
}

pub async fn keys_imported_by_digest_are_found_by_it_until_upgraded(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    let (foreign, lookup) = ("f1".repeat(32), "d1".repeat(32));
    let pending = pending_key("k1", "o1", &foreign);
    store.insert_key(&pending, None).await.unwrap();
    assert_eq!(store.get_key("k1").await.unwrap(), Some(pending.clone()));
    assert_eq!(
        store.find_key_by_digest(&foreign).await.unwrap(),
        Some(pending.clone())
    );
    assert_eq!(store.lookup_digests().await.unwrap(), [foreign.as_str()]);
    let twin = store
        .insert_key(&pending_key("k2", "o1", &foreign), None)
        .await
        .unwrap_err();
    assert!(matches!(twin, Error::AlreadyExists(_)), "{twin:?}");
    assert_eq!(store.get_key("k2").await.unwrap(), None);

    let upgraded = store
        .update_key("k1", upgrade(&foreign, &lookup))
        .await
        .unwrap();
    assert_eq!(upgraded.foreign_digest, None);
    assert_eq!(upgraded.lookup_digest.as_deref(), Some(lookup.as_str()));
    assert_eq!(store.get_key("k1").await.unwrap(), Some(upgraded.clone()));
    assert_eq!(store.find_key_by_digest(&foreign).await.unwrap(), None);
    assert_eq!(
        store.find_key_by_digest(&lookup).await.unwrap(),
        Some(upgraded.clone())
    );
    assert_eq!(store.lookup_digests().await.unwrap(), [lookup.as_str()]);
    // The upgrade applies once: the record no longer holds the foreign digest.
    let again = store
        .update_key("k1", upgrade(&foreign, &"d2".repeat(32)))
        .await
        .unwrap_err();
    assert!(matches!(again, Error::FailedPrecondition(_)), "{again:?}");
    assert_eq!(store.get_key("k1").await.unwrap(), Some(upgraded));
    // The foreign digest is free for another key once no record holds it.
    store
        .insert_key(&pending_key("k3", "o1", &foreign), None)
        .await
        .unwrap();
}

pub async fn an_update_cannot_take_a_digest_another_key_holds(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    let mut holder = key("k1", "o1");
    holder.lookup_digest = Some("aa".repeat(32));
    store.insert_key(&holder, None).await.unwrap();
    let pending = pending_key("k2", "o1", &"f2".repeat(32));
    store.insert_key(&pending, None).await.unwrap();
    let taken = store
        .update_key("k2", upgrade(&"f2".repeat(32), &"aa".repeat(32)))
        .await
        .unwrap_err();
    assert!(matches!(taken, Error::AlreadyExists(_)), "{taken:?}");
    assert_eq!(
        store.find_key_by_digest(&"aa".repeat(32)).await.unwrap(),
        Some(holder)
    );
    assert_eq!(store.get_key("k2").await.unwrap(), Some(pending));
}

/// Replicas verifying one key imported by digest at once each try to upgrade it, while its
/// uses are being written: one upgrade applies, and the key is found by its new digest.
pub async fn concurrent_upgrades_of_one_key_leave_it_found(store: Arc<dyn Store>) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    for round in 0..4 {
        let id = format!("k{round}");
        let (foreign, lookup) = (
            format!("f{round}").repeat(32),
            format!("d{round}").repeat(32),
        );
        store
            .insert_key(&pending_key(&id, "o1", &foreign), None)
            .await
            .unwrap();
        let (mut tasks, mut uses) = (Vec::new(), Vec::new());
        for _ in 0..8 {
            let (upgrader, key_id) = (store.clone(), id.clone());
            let change = upgrade(&foreign, &lookup);
            // A verification whose upgrade met too many concurrent writes tries again.
            tasks.push(tokio::spawn(async move {
                loop {
                    match upgrader.update_key(&key_id, change.clone()).await {
                        Err(Error::Unavailable(_)) => continue,
                        other => return other.map(|_| ()),
                    }
                }
            }));
            let (store, id) = (store.clone(), id.clone());
            uses.push(tokio::spawn(async move {
                let used = KeyUse {
                    key_id: id,
                    used_at: 5_000,
                    uses: 1,
                };
                store.record_uses(vec![used]).await.unwrap()
            }));
        }
        // Uses that met too many concurrent writes come back to be tried again; no matter.
        for used in uses {
            used.await.unwrap();
        }
        let mut applied = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(()) => applied += 1,
                Err(Error::FailedPrecondition(_)) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        assert_eq!(applied, 1, "round {round}");
        let found = store.find_key_by_digest(&lookup).await.unwrap();
        assert_eq!(
            found.map(|k| k.id),
            Some(id.clone()),
            "round {round}: the upgraded key is found by its new digest"
        );
        assert_eq!(store.find_key_by_digest(&foreign).await.unwrap(), None);
    }
}

pub async fn deleting_a_key_removes_it_everywhere(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    let mut k = key("k1", "o1");
    k.lookup_digest = Some("cc".repeat(32));
    store.insert_key(&k, None).await.unwrap();
    assert_eq!(store.delete_key("k1").await.unwrap(), k);
    assert_eq!(store.get_key("k1").await.unwrap(), None);
    assert_eq!(
        store.find_key_by_digest(&"cc".repeat(32)).await.unwrap(),
        None
    );
    assert!(
        store
            .list_keys("o1", None, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        store.delete_key("k1").await,
        Err(Error::NotFound(_))
    ));
    // The id and digest are free again.
    store.insert_key(&k, None).await.unwrap();

    // The key's credits go with it; another key's stay.
    let credits = |key_id| keyspace::key_credits("o1", key_id);
    let meter = Meter {
        since: 1,
        value: 2,
        epoch: 0,
    };
    store
        .save_meters(&[(credits("k1"), meter), (credits("k10"), meter)])
        .await
        .unwrap();
    store.delete_key("k1").await.unwrap();
    let left = store
        .load_meters(&[credits("k1"), credits("k10")])
        .await
        .unwrap();
    assert_eq!(left.keys().collect::<Vec<_>>(), [&credits("k10")]);
}

pub async fn key_uses_add_up_and_skip_keys_that_are_gone(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    store.insert_key(&key("k1", "o1"), None).await.unwrap();
    store.insert_key(&key("k2", "o1"), None).await.unwrap();
    let used = |key_id: &str, used_at, uses| KeyUse {
        key_id: key_id.into(),
        used_at,
        uses,
    };
    let failed = store
        .record_uses(vec![
            used("k1", 100, 2),
            used("gone", 100, 1),
            used("k2", 50, 7),
        ])
        .await
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    // An older use does not move `last_used_at` back; counts add up.
    let failed = store.record_uses(vec![used("k1", 60, 3)]).await.unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let k1 = store.get_key("k1").await.unwrap().unwrap();
    assert_eq!((k1.last_used_at, k1.usage_count), (Some(100), 5));
    let k2 = store.get_key("k2").await.unwrap().unwrap();
    assert_eq!((k2.last_used_at, k2.usage_count), (Some(50), 7));
    assert_eq!(store.get_key("gone").await.unwrap(), None);
}

pub async fn daily_usage_adds_up_by_day_from_the_first_kept_day(store: &dyn Store) {
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    store.insert_key(&key("k1", "o1"), None).await.unwrap();
    store.insert_key(&key("k2", "o1"), None).await.unwrap();
    let counts = |allowed: u64, denied: &[(&str, u64)]| DailyUsage {
        allowed,
        denied: denied.iter().map(|(c, n)| (c.to_string(), *n)).collect(),
    };
    // Days up to today: Redis lets a day expire once it leaves the kept history.
    let today = today();
    let d = |n: i32| Day(today.0 - 103 + n);
    let on = |key_id: &str, day: i32, usage: DailyUsage| KeyDayUsage {
        key_id: key_id.into(),
        day: d(day),
        usage,
    };
    let kept = Retention { today, days: 4 };
    assert_eq!(kept.first_kept(), d(100));
    let failed = store
        .record_daily_usage(
            vec![
                on("k1", 100, counts(5, &[("RATE_LIMITED", 2)])),
                on("k1", 102, counts(1, &[])),
                on("k2", 101, counts(0, &[("EXPIRED_API_KEY", 4)])),
                on("gone", 101, counts(9, &[])),
                on("k1", 99, counts(7, &[])),
            ],
            kept,
        )
        .await
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let failed = store
        .record_daily_usage(
            vec![on(
                "k1",
                100,
                counts(3, &[("RATE_LIMITED", 1), ("SCOPE_DENIED", 1)]),
            )],
            kept,
        )
        .await
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        store.daily_usage("k1", d(90), d(110)).await.unwrap(),
        vec![
            (
                d(100),
                counts(8, &[("RATE_LIMITED", 3), ("SCOPE_DENIED", 1)])
            ),
            (d(102), counts(1, &[])),
        ],
        "days before keep_from are never written; counts of a day add up"
    );
    assert_eq!(
        store.daily_usage("k1", d(101), d(102)).await.unwrap(),
        vec![(d(102), counts(1, &[]))]
    );
    assert_eq!(
        store.daily_usage("k2", d(90), d(110)).await.unwrap(),
        vec![(d(101), counts(0, &[("EXPIRED_API_KEY", 4)]))]
    );
    assert_eq!(
        store.daily_usage("gone", d(90), d(110)).await.unwrap(),
        vec![]
    );

    // A deleted key's history goes with it (or, on Redis, is never shown for a new key:
    // ids are random).
    store.delete_key("k2").await.unwrap();
    let failed = store
        .record_daily_usage(vec![on("k2", 103, counts(1, &[]))], kept)
        .await
        .unwrap();
    assert!(failed.is_empty());
    assert_eq!(
        store.daily_usage("k2", d(103), d(103)).await.unwrap(),
        vec![]
    );
}

/// The in-process limiter's meters come back as saved, under names of any owner (any
/// cluster slot); a meter never saved is absent, and saving again replaces.
pub async fn meters_round_trip(store: &dyn Store) {
    let names: Vec<String> = ["o1", "o2", "o3"]
        .iter()
        .map(|owner| keyspace::key_credits(owner, "k"))
        .collect();
    assert!(store.load_meters(&names).await.unwrap().is_empty());
    let meter = |value| Meter {
        since: 1_700_000_000_000,
        value,
        epoch: 3,
    };
    let saved = vec![(names[0].clone(), meter(7)), (names[2].clone(), meter(9))];
    store.save_meters(&saved).await.unwrap();
    store
        .save_meters(&[(names[2].clone(), meter(4))])
        .await
        .unwrap();
    let loaded = store.load_meters(&names).await.unwrap();
    assert_eq!(loaded.len(), 2);
    assert_eq!(loaded[&names[0]], meter(7));
    assert_eq!(loaded[&names[2]], meter(4));
}

/// Today in UTC.
fn today() -> Day {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    Day((now.as_secs() / 86_400) as i32)
}

/// Expands to one `#[tokio::test]` per conformance check for a backend. `$make` is an async
/// expression yielding `(Arc<dyn Store>, guard)`; the guard lives until the test ends.
macro_rules! conformance_suite {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            macro_rules! check {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let (store, _guard) = $make.await;
                        super::$name(store.as_ref()).await;
                    }
                };
            }

            check!(ping_answers);
            check!(owners_round_trip);
            check!(owner_ids_and_external_ids_are_unique);
            check!(owners_list_in_pages);
            check!(owner_updates_apply_atomically);
            check!(keys_round_trip_with_indexes);
            check!(key_inserts_refuse_duplicates_and_unknown_owners);
            check!(quota_counts_only_live_keys);
            check!(keys_list_by_owner_state_and_page);
            check!(key_updates_keep_indexes_in_step);
            check!(deleting_a_key_removes_it_everywhere);
            check!(keys_imported_by_digest_are_found_by_it_until_upgraded);
            check!(an_update_cannot_take_a_digest_another_key_holds);
            check!(key_uses_add_up_and_skip_keys_that_are_gone);
            check!(daily_usage_adds_up_by_day_from_the_first_kept_day);
            check!(plans_round_trip_in_name_order);
            check!(plan_updates_apply_atomically);
            check!(deleting_a_plan_returns_it_and_frees_its_name);
            check!(meters_round_trip);

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_inserts_never_exceed_the_quota() {
                let (store, _guard) = $make.await;
                super::concurrent_inserts_never_exceed_the_quota(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_upgrades_of_one_key_leave_it_found() {
                let (store, _guard) = $make.await;
                super::concurrent_upgrades_of_one_key_leave_it_found(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_plan_updates_lose_nothing() {
                let (store, _guard) = $make.await;
                super::concurrent_plan_updates_lose_nothing(store).await;
            }
        }
    };
}

async fn embedded_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        keygate::store::embedded::EmbeddedStore::open(&dir.path().join("keygate.redb")).unwrap();
    (Arc::new(store), dir)
}

conformance_suite!(embedded, embedded_store());

/// A store on its own fresh redis-server, which is the guard: it is killed when dropped.
async fn redis_store() -> (Arc<dyn Store>, RedisServer) {
    let server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let config = RedisConfig {
        url: server.url(),
        // Generous: tests run in parallel on small machines.
        timeout: Duration::from_secs(5),
        ..RedisConfig::default()
    };
    let store = RedisStore::connect(&config).await.unwrap();
    (Arc::new(store), server)
}

conformance_suite!(redis, redis_store());

/// A store on its own fresh three-master Redis Cluster, which is the guard.
async fn redis_cluster_store() -> (Arc<dyn Store>, RedisCluster) {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let config = RedisConfig {
        cluster_nodes: cluster.urls(),
        timeout: Duration::from_secs(5),
        ..RedisConfig::default()
    };
    let store = RedisStore::connect(&config).await.unwrap();
    (Arc::new(store), cluster)
}

conformance_suite!(redis_cluster, redis_cluster_store());

#[tokio::test]
async fn embedded_usage_history_forgets_days_before_the_first_kept_day() {
    let (store, _dir) = embedded_store().await;
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    store.insert_key(&key("k1", "o1"), None).await.unwrap();
    let kept = |today: i32, days: u32| Retention {
        today: Day(today),
        days,
    };
    let day = |n: i32, allowed: u64| KeyDayUsage {
        key_id: "k1".into(),
        day: Day(n),
        usage: DailyUsage {
            allowed,
            ..DailyUsage::default()
        },
    };
    store
        .record_daily_usage(vec![day(10, 1), day(11, 2), day(12, 3)], kept(12, 3))
        .await
        .unwrap();
    store
        .record_daily_usage(vec![day(13, 4)], kept(13, 2))
        .await
        .unwrap();
    let kept: Vec<i32> = (store.daily_usage("k1", Day(0), Day(20)).await.unwrap())
        .iter()
        .map(|(d, _)| d.0)
        .collect();
    assert_eq!(kept, [12, 13]);
}

#[tokio::test]
async fn what_a_usage_flush_could_not_write_is_written_once_by_the_next() {
    let (inner, _dir) = embedded_store().await;
    inner.create_owner(&owner("o1", "e1")).await.unwrap();
    inner.insert_key(&key("k1", "o1"), None).await.unwrap();
    let store = common::faulty::faulty(inner);
    let recorder = UsageRecorder::new(Calendar::default(), 90);
    let noon = 20_000 * 86_400 + 43_200;
    recorder.record("k1", noon, DecisionCode::Ok);
    recorder.record("k1", noon + 1, DecisionCode::RateLimited);
    store.hook().fail(true);
    recorder.flush(&store, noon + 2).await;
    store.hook().fail(false);
    recorder.record("k1", noon + 3, DecisionCode::Ok);
    recorder.flush(&store, noon + 4).await;
    recorder.flush(&store, noon + 5).await;

    let key = store.get_key("k1").await.unwrap().unwrap();
    assert_eq!((key.usage_count, key.last_used_at), (2, Some(noon + 3)));
    let days = store
        .daily_usage("k1", Day(20_000), Day(20_000))
        .await
        .unwrap();
    let expected = DailyUsage {
        allowed: 2,
        denied: BTreeMap::from([("RATE_LIMITED".to_owned(), 1)]),
    };
    assert_eq!(days, vec![(Day(20_000), expected)]);
}

#[tokio::test]
async fn redis_usage_days_expire_once_they_leave_the_kept_history() {
    let (store, server) = redis_store().await;
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    store.insert_key(&key("k1", "o1"), None).await.unwrap();
    let today = today();
    let usage = KeyDayUsage {
        key_id: "k1".into(),
        day: today,
        usage: DailyUsage {
            allowed: 1,
            ..DailyUsage::default()
        },
    };
    let kept = Retention { today, days: 90 };
    store.record_daily_usage(vec![usage], kept).await.unwrap();
    let name = keyspace::key_daily_usage("k1", today.0);
    let expires: i64 = server.command(::redis::cmd("EXPIRETIME").arg(&name));
    // Kept today and the 89 days after; gone on the 90th.
    assert_eq!(expires, i64::from(today.0 + 90) * 86_400);
}

#[tokio::test]
async fn embedded_records_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keygate.redb");
    {
        let store = keygate::store::embedded::EmbeddedStore::open(&path).unwrap();
        store.create_owner(&owner("o1", "e1")).await.unwrap();
        store.insert_key(&key("k1", "o1"), None).await.unwrap();
        store.create_plan(&plan("pro", 10)).await.unwrap();
    }
    let reopened = keygate::store::embedded::EmbeddedStore::open(&path).unwrap();
    assert_eq!(reopened.get_key("k1").await.unwrap(), Some(key("k1", "o1")));
    assert_eq!(
        reopened.get_plan("pro").await.unwrap(),
        Some(plan("pro", 10))
    );
}

#[tokio::test]
async fn embedded_bulk_inserts_index_everything_and_are_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store =
        keygate::store::embedded::EmbeddedStore::open(&dir.path().join("keygate.redb")).unwrap();
    let mut imported = key("k2", "o1");
    imported.lookup_digest = Some("ab".repeat(32));
    store
        .insert_all(
            vec![owner("o1", "e1"), owner("o2", "e2")],
            vec![key("k1", "o1"), imported.clone(), key("k3", "o2")],
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_owner("o2").await.unwrap(),
        Some(owner("o2", "e2"))
    );
    assert_eq!(store.get_key("k1").await.unwrap(), Some(key("k1", "o1")));
    let listed = store.list_keys("o1", None, None, 10).await.unwrap();
    assert_eq!(listed, vec![key("k1", "o1"), imported.clone()]);
    assert_eq!(
        store.find_key_by_digest(&"ab".repeat(32)).await.unwrap(),
        Some(imported)
    );

    // One refusal (a taken id, after records that were fine) stores nothing of the batch.
    let refused = store
        .insert_all(
            vec![owner("o3", "e3")],
            vec![key("k4", "o3"), key("k1", "o1")],
        )
        .await;
    assert!(matches!(refused, Err(Error::AlreadyExists(_))));
    assert_eq!(store.get_owner("o3").await.unwrap(), None);
    assert_eq!(store.get_key("k4").await.unwrap(), None);
    let unknown_owner = store.insert_all(vec![], vec![key("k5", "o9")]).await;
    assert!(matches!(unknown_owner, Err(Error::NotFound(_))));
}

/// Index entries that name no record (left by a write interrupted between its steps) are
/// invisible, and a digest left by a key that is gone is taken by the next key needing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dangling_index_entries_are_ignored() {
    let (store, server) = redis_store().await;
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    let mut live = key("k1", "o1");
    live.lookup_digest = Some("d1".repeat(32));
    store.insert_key(&live, None).await.unwrap();
    let hset = |hash: &str, field: &str, value: &str| {
        server.command::<i64>(::redis::cmd("HSET").arg(hash).arg(field).arg(value));
    };
    // A claimed id and digest whose record was never written.
    hset(keyspace::OWNER_OF, "ghost", "o1");
    hset(keyspace::KEYS_BY_DIGEST, &"d2".repeat(32), "ghost");
    // A digest still naming a key whose record no longer carries it.
    hset(keyspace::KEYS_BY_DIGEST, &"d3".repeat(32), "k1");
    // A digest naming a key that is gone entirely.
    hset(keyspace::KEYS_BY_DIGEST, &"d4".repeat(32), "deleted");
    // A listed owner id whose record was never written.
    server.command::<i64>(
        ::redis::cmd("ZADD")
            .arg(keyspace::OWNER_IDS)
            .arg(0)
            .arg("o0"),
    );

    assert_eq!(store.get_key("ghost").await.unwrap(), None);
    for digest in ["d2", "d3", "d4"] {
        assert_eq!(
            store.find_key_by_digest(&digest.repeat(32)).await.unwrap(),
            None
        );
    }
    assert_eq!(store.lookup_digests().await.unwrap(), ["d1".repeat(32)]);
    let owners = store.list_owners(None, 10).await.unwrap();
    assert_eq!(owners, [owner("o1", "e1")]);

    let mut taken = key("k2", "o1");
    taken.lookup_digest = Some("d2".repeat(32));
    let refused = store.insert_key(&taken, None).await.unwrap_err();
    assert!(matches!(refused, Error::AlreadyExists(_)), "{refused:?}");
    let mut takes_over = key("k3", "o1");
    takes_over.lookup_digest = Some("d4".repeat(32));
    store.insert_key(&takes_over, None).await.unwrap();
    assert_eq!(
        store.find_key_by_digest(&"d4".repeat(32)).await.unwrap(),
        Some(takes_over)
    );
}

/// Listing keeps going across round trips until it has `limit` matches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_lists_across_many_round_trips() {
    let (store, _server) = redis_store().await;
    for i in 0..250 {
        store
            .create_owner(&owner(&format!("o{i:03}"), &format!("e{i}")))
            .await
            .unwrap();
        let mut k = key(&format!("k{i:03}"), "o000");
        if i % 10 != 0 {
            k.state = KeyState::Revoked;
        }
        store.insert_key(&k, None).await.unwrap();
    }
    let owners = store.list_owners(Some("o010"), 200).await.unwrap();
    assert_eq!(owners.len(), 200);
    assert_eq!(owners[0].id, "o011");
    assert_eq!(owners[199].id, "o210");
    let active = store
        .list_keys("o000", Some(KeyState::Active), Some("k000"), 20)
        .await
        .unwrap();
    let ids: Vec<_> = active.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(
        ids,
        (1..25)
            .map(|i| format!("k{:03}", i * 10))
            .collect::<Vec<_>>()[..20]
    );
}

/// Without Redis every call fails fast with UNAVAILABLE, and no message shows the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failures_are_unavailable_and_show_no_secret() {
    let mut server = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let config = RedisConfig {
        url: format!("redis://:hunter2-secret@{}", server.addr),
        timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    };
    // This server has no password, so AUTH fails.
    let Err(refused) = RedisStore::connect(&config).await else {
        panic!("AUTH with a password the server does not have must fail");
    };
    assert!(matches!(&refused, Error::Unavailable(m) if m.starts_with("redis store: ")));
    assert!(!refused.to_string().contains("hunter2"), "{refused}");

    let config = RedisConfig {
        url: server.url(),
        ..config
    };
    let store = RedisStore::connect(&config).await.unwrap();
    store.create_owner(&owner("o1", "e1")).await.unwrap();
    server.kill();
    let started = std::time::Instant::now();
    let down = store.get_owner("o1").await.unwrap_err();
    assert!(matches!(&down, Error::Unavailable(m) if m.starts_with("redis store: ")));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}
