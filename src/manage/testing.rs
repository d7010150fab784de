//! What the management unit tests share: services over a real embedded store in a temporary
//! directory, a manual clock, cheap argon2 and an invalidator that records what it is told.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::{Caller, CallingKey, Deps, Invalidator, Keys, NewKey, Owners, Plans};
use crate::clock::{Clock, ManualClock, UnixTime};
use crate::invalidation::{Invalidation, Propagation};
use crate::key::format::{Alphabet, KeyProfile, Profiles, default_profile};
use crate::key::hash::{Argon2Config, Pepper, SecretHasher};
use crate::model::testing::key_record;
use crate::model::{Cidrs, KeyRecord, Metadata, Name, Owner, Scopes};
use crate::plan::PlanConfig;
use crate::store::embedded::EmbeddedStore;

/// The time the fixture's clock starts at.
pub const T0: UnixTime = 1_700_000_000;

/// Collects the invalidations it is sent, in order, and answers confirmed ones with the
/// replicas it is told are not answering.
#[derive(Default)]
pub struct Recorder {
    sent: Mutex<Vec<Invalidation>>,
    confirmed: Mutex<Vec<Invalidation>>,
    silent: Mutex<Vec<String>>,
}

impl Recorder {
    /// From now on, confirmed invalidations report `replicas` as unacknowledged.
    pub fn silent_replicas(&self, replicas: &[&str]) {
        *self.silent.lock().unwrap() = replicas.iter().map(|r| r.to_string()).collect();
    }

    /// The invalidations that were confirmed rather than announced, forgetting them.
    pub fn take_confirmed(&self) -> Vec<Invalidation> {
        std::mem::take(&mut *self.confirmed.lock().unwrap())
    }
}

#[async_trait::async_trait]
impl Invalidator for Recorder {
    async fn invalidate(&self, change: Invalidation) -> Propagation {
        self.sent.lock().unwrap().push(change.clone());
        self.confirmed.lock().unwrap().push(change);
        Propagation {
            unacknowledged: self.silent.lock().unwrap().clone(),
        }
    }

    async fn announce(&self, change: Invalidation) {
        self.sent.lock().unwrap().push(change);
    }
}

/// The services under test and what they run on.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub deps: Deps,
    pub clock: ManualClock,
    pub recorder: Arc<Recorder>,
    pub owners: Owners,
    pub plans: Plans,
    pub keys: Keys,
}

impl Fixture {
    /// Plans `default` (no cap, the default) and `free` (2 keys), stored as at a start;
    /// profiles `kg_live` and the hex `ctw`.
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("keygate.redb")).unwrap();
        let clock = ManualClock::new(T0);
        let recorder = Arc::new(Recorder::default());
        let ctw = KeyProfile {
            name: "ctw".into(),
            prefix: "ctw".into(),
            alphabet: Alphabet::Hex,
            body_len: 56,
        };
        let free = PlanConfig {
            max_active_keys: 2,
            ..PlanConfig::unlimited("free")
        };
        let deps_store: Arc<dyn crate::store::Store> = Arc::new(store);
        let deps = Deps {
            store: deps_store.clone(),
            hasher: SecretHasher::new(&Argon2Config {
                memory_kib: 64,
                iterations: 1,
                parallelism: 1,
                max_concurrent: 2,
                ..Argon2Config::default()
            })
            .unwrap(),
            pepper: Pepper::new(vec![7; 32]).unwrap(),
            profiles: Arc::new(Profiles::new(vec![default_profile(), ctw], "kg_live").unwrap()),
            default_plan: "default".into(),
            clock: Arc::new(clock.clone()),
            calendar: crate::calendar::Calendar::default(),
            invalidator: recorder.clone(),
            limiter: Arc::new(crate::ratelimit::RateLimiter::local(
                &crate::ratelimit::RateLimitConfig::default(),
                deps_store.clone(),
            )),
        };
        let plans = Plans::new(deps.clone());
        plans
            .create_initial(&[PlanConfig::unlimited("default"), free])
            .await
            .unwrap();
        Fixture {
            _dir: dir,
            owners: Owners::new(deps.clone()),
            plans,
            keys: Keys::new(deps.clone()),
            deps,
            clock,
            recorder,
        }
    }

    /// The clock's time.
    pub fn now(&self) -> UnixTime {
        self.clock.now()
    }

    /// The invalidations sent so far.
    pub fn invalidations(&self) -> Vec<Invalidation> {
        self.recorder.sent.lock().unwrap().clone()
    }

    /// The invalidations sent so far, forgetting them.
    pub fn take_invalidations(&self) -> Vec<Invalidation> {
        std::mem::take(&mut *self.recorder.sent.lock().unwrap())
    }

    /// A new active owner on `plan`, with the invalidations its creation sent forgotten.
    pub async fn owner_on(&self, external_id: &str, plan: Option<&str>) -> Owner {
        let owner = self
            .owners
            .create(
                &Caller::Admin,
                super::NewOwner {
                    external_id: Name::parse("external_id", external_id).unwrap(),
                    display_name: Name::parse("display_name", external_id).unwrap(),
                    plan: plan.map(str::to_owned),
                    metadata: Metadata::default(),
                },
            )
            .await
            .unwrap();
        self.take_invalidations();
        owner
    }

    /// A new active owner on the default plan.
    pub async fn owner(&self, external_id: &str) -> Owner {
        self.owner_on(external_id, None).await
    }

    /// Whether `secret` verifies against `phc`.
    pub async fn verifies(&self, phc: &str, secret: &str) -> bool {
        self.deps.hasher.verify(phc, secret).await.unwrap()
    }
}

/// A key named `ci` holding `read` for `owner_id`, on its owner's plan, as the admin would
/// ask for it.
pub fn new_key(owner_id: &str) -> NewKey {
    NewKey {
        owner_id: Some(owner_id.into()),
        name: Name::parse("name", "ci").unwrap(),
        scopes: Scopes::parse("scopes", &["read".into()]).unwrap(),
        allowed_cidrs: Cidrs::default(),
        metadata: Metadata::default(),
        expiry: None,
        plan: None,
        profile: None,
        pair: false,
        require_activation: false,
        credits: None,
    }
}

/// An API key caller acting for `owner_id` and holding `scopes`, with no expiry and no
/// network fence.
pub fn key_caller(owner_id: &str, scopes: &[&str]) -> Caller {
    let mut key = record("caller", owner_id);
    key.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    Caller::Key(CallingKey::of(&key))
}

/// A plain active key record, for tests that need no store.
pub fn record(id: &str, owner_id: &str) -> KeyRecord {
    KeyRecord {
        name: "ci".into(),
        scopes: vec!["read".into()],
        metadata: BTreeMap::from([("team".into(), "core".into())]),
        created_at: T0,
        updated_at: T0,
        ..key_record(id, owner_id)
    }
}
