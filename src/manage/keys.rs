//! Keys: issue, activate, read, change, revoke, rotate, delete and import.

use std::fmt;
use std::time::Duration;

use zeroize::Zeroizing;

use super::edit::{KeyEdit, future, require_credit_grant};
use super::{Caller, Deps, Page, Written};
use crate::clock::UnixTime;
use crate::error::{Error, Result, quote};
use crate::key::foreign::{
    DEFAULT_ALPHABET_SIZE, DigestEncoding, ENTROPY_FLOOR_BITS, MAX_ALPHABET_SIZE, Sha256Digest,
    entropy_bits,
};
use crate::key::format::{Alphabet, IssuedKey, KeyProfile};
use crate::key::hash::secrets_equal;
use crate::model::values::required;
use crate::model::{
    Cidrs, Credits, KeyKind, KeyRecord, KeyState, Metadata, Name, Owner, OwnerState,
    PreviousSecret, Scopes,
};
use crate::ratelimit::Subject;
use crate::store::Quota;

/// Longest grace period a rotation may give the old secret.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(90 * 86_400);
/// Longest key accepted by an import.
pub const MAX_IMPORTED_KEY_LEN: usize = 512;
/// Longest lifetime a new key may be given in days (100 years).
pub const MAX_EXPIRY_DAYS: u32 = 36_500;
/// Attempts at drawing an unused random key id before giving up.
const ID_ATTEMPTS: usize = 4;

/// When a new key stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// At this time, which must be in the future.
    At(UnixTime),
    /// This many whole days from now, 1 to [`MAX_EXPIRY_DAYS`].
    InDays(u32),
}

impl Expiry {
    /// The expiry time, judged at `now`.
    pub fn at(self, now: UnixTime) -> Result<UnixTime> {
        match self {
            Expiry::At(t) => future("expire_time", t, now),
            Expiry::InDays(0) => Err(Error::InvalidArgument(
                "expire_in_days must be at least 1; leave it unset for a key that does not expire"
                    .into(),
            )),
            Expiry::InDays(days) if days > MAX_EXPIRY_DAYS => Err(Error::InvalidArgument(format!(
                "expire_in_days must be at most {MAX_EXPIRY_DAYS} (100 years)"
            ))),
            Expiry::InDays(days) => Ok(now + i64::from(days) * 86_400),
        }
    }
}

/// A key to issue.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// The owning account; `None` (or blank) means the calling key's own owner.
    pub owner_id: Option<String>,
    /// Human-readable name.
    pub name: Name,
    /// Scopes granted; the caller must hold each.
    pub scopes: Scopes,
    /// Client networks allowed; empty allows any.
    pub allowed_cidrs: Cidrs,
    /// Free-form attributes.
    pub metadata: Metadata,
    /// When it stops working; `None` for never.
    pub expiry: Option<Expiry>,
    /// A configured plan replacing the owner's for this key.
    pub plan: Option<String>,
    /// The key profile to issue in; `None` for the default one.
    pub profile: Option<String>,
    /// Whether clients present it as an `api-key` + `api-secret` pair.
    pub pair: bool,
    /// Whether it waits for [`Keys::activate`] before it works.
    pub require_activation: bool,
    /// Uses it may make, granted at creation; only the admin may grant them.
    pub credits: Option<Credits>,
}

/// How a rotation treats the secret it replaces.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rotation {
    /// How long the old secret keeps working; zero stops it at once. At most
    /// [`MAX_ROTATION_GRACE`].
    pub grace: Duration,
}

/// A key issued elsewhere, adopted as it is.
pub struct Import {
    /// The owning account.
    pub owner_id: String,
    /// Human-readable name.
    pub name: Name,
    /// The whole key exactly as clients send it; empty when `digest` stands for it.
    pub secret: Zeroizing<String>,
    /// Instead of `secret`: the digest the other system kept of the key.
    pub digest: Option<DigestImport>,
    /// Scopes granted; the caller must hold each.
    pub scopes: Scopes,
    /// Client networks allowed; empty allows any.
    pub allowed_cidrs: Cidrs,
    /// Free-form attributes.
    pub metadata: Metadata,
    /// A configured plan replacing the owner's for this key.
    pub plan: Option<String>,
    /// When it stops working, if ever.
    pub expires_at: Option<UnixTime>,
    /// When the old system issued it; `None` for now.
    pub created_at: Option<UnixTime>,
}

impl fmt::Debug for Import {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Import")
            .field("owner_id", &self.owner_id)
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 digest another system kept of a key, as an import states it; checked by
/// [`Keys::import`] (see [`crate::key::foreign`] for what such a digest is worth).
#[derive(Clone, Default)]
pub struct DigestImport {
    /// SHA-256 of the whole key text, written in `encoding`.
    pub sha256: String,
    /// How `sha256` is written; `None` when the request did not say.
    pub encoding: Option<DigestEncoding>,
    /// The key's leading fixed part (e.g. `sk_live_`), shown in listings; empty for none.
    pub prefix: String,
    /// The key's length in characters, prefix included.
    pub length: u32,
    /// How many characters the random part is drawn from; 0 for
    /// [`DEFAULT_ALPHABET_SIZE`].
    pub alphabet_size: u32,
    /// Accept a key with fewer random bits than [`ENTROPY_FLOOR_BITS`]; only the admin may.
    pub allow_low_entropy: bool,
}

impl fmt::Debug for DigestImport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestImport")
            .field("sha256", &"<redacted>")
            .field("encoding", &self.encoding)
            .field("prefix", &self.prefix)
            .field("length", &self.length)
            .field("alphabet_size", &self.alphabet_size)
            .field("allow_low_entropy", &self.allow_low_entropy)
            .finish()
    }
}

/// What an import adopts the key from, once checked.
enum ImportedSecret<'a> {
    /// The key itself.
    Plain(&'a str),
    /// The other system's digest of it.
    Sha256 {
        /// The digest.
        digest: Sha256Digest,
        /// The key's prefix, if it has one.
        prefix: Option<String>,
        /// The random bits the key carries, as its shape says.
        bits: f64,
    },
}

impl ImportedSecret<'_> {
    /// Refuses an API key importing a key weaker than an issued one.
    fn require_authority(&self, caller: &Caller) -> Result<()> {
        match self {
            ImportedSecret::Plain(secret) => caller.require_strong_import(secret),
            ImportedSecret::Sha256 { bits, .. } => caller.require_import_bits(*bits),
        }
    }
}

impl DigestImport {
    /// The digest, checked: its text, the key's shape, and that the key carries
    /// [`ENTROPY_FLOOR_BITS`] random bits or the import accepts fewer (which only the admin
    /// may: [`ImportedSecret::require_authority`]).
    fn check(&self) -> Result<ImportedSecret<'static>> {
        let invalid = |message: String| Err(Error::InvalidArgument(message));
        let Some(encoding) = self.encoding else {
            return invalid(
                "digest.encoding: say how digest.sha256 is written, hex or base64".into(),
            );
        };
        let digest = Sha256Digest::parse(&self.sha256, encoding).map_err(|e| {
            Error::InvalidArgument(format!(
                "digest.sha256 (encoding {}): {e}",
                encoding.as_str()
            ))
        })?;
        let length = self.length as usize;
        if length == 0 || length > MAX_IMPORTED_KEY_LEN {
            return invalid(format!(
                "digest.length must be the key's length in characters, prefix included: 1 to {MAX_IMPORTED_KEY_LEN}"
            ));
        }
        let prefix = self.prefix.as_str();
        if !prefix.bytes().all(|c| c.is_ascii_graphic()) || prefix.len() >= length {
            return invalid(
                "digest.prefix must be the key's leading fixed part in printable ASCII without spaces, shorter than digest.length, or empty"
                    .into(),
            );
        }
        let alphabet = match self.alphabet_size {
            0 => DEFAULT_ALPHABET_SIZE,
            n @ 2..=MAX_ALPHABET_SIZE => n,
            _ => {
                return invalid(format!(
                    "digest.alphabet_size must be 2 to {MAX_ALPHABET_SIZE} (16 for hex keys, 62 for letters and digits, 64 for base64), or 0 for {DEFAULT_ALPHABET_SIZE}"
                ));
            }
        };
        let random = length - prefix.len();
        let bits = entropy_bits(random, alphabet);
        if bits < f64::from(ENTROPY_FLOOR_BITS) && !self.allow_low_entropy {
            return invalid(format!(
                "digest: a SHA-256 digest of a key with about {bits:.0} random bits ({random} characters after the prefix, from an alphabet of {alphabet}) can be brute-forced offline by anyone holding it; keygate requires {ENTROPY_FLOOR_BITS} bits. Import the key itself (secret) instead, or, as the admin, set digest.allow_low_entropy to accept the risk"
            ));
        }
        Ok(ImportedSecret::Sha256 {
            digest,
            prefix: (!prefix.is_empty()).then(|| prefix.to_owned()),
            bits,
        })
    }
}

/// What `import` adopts the key from: exactly one of its plaintext and a digest of it, each
/// checked (the caller's authority over it apart).
fn imported_secret<'a>(
    secret: &'a str,
    digest: Option<&DigestImport>,
) -> Result<ImportedSecret<'a>> {
    match (secret.is_empty(), digest) {
        (false, Some(_)) => Err(Error::InvalidArgument(
            "give either secret (the key itself) or digest (the SHA-256 digest another system kept of it), not both"
                .into(),
        )),
        (true, None) => Err(Error::InvalidArgument(
            "secret or digest is required: the key itself, or the SHA-256 digest another system kept of it"
                .into(),
        )),
        (true, Some(digest)) => digest.check(),
        (false, None) => {
            if secret.len() > MAX_IMPORTED_KEY_LEN || !secret.bytes().all(|c| c.is_ascii_graphic())
            {
                return Err(Error::InvalidArgument(format!(
                    "secret must be 1 to {MAX_IMPORTED_KEY_LEN} printable ASCII characters without spaces, exactly as clients send it"
                )));
            }
            Ok(ImportedSecret::Plain(secret))
        }
    }
}

/// A key with a newly issued secret: the only time the secret exists outside the client.
pub struct Issued {
    /// The stored record.
    pub key: KeyRecord,
    /// The key text to hand over once.
    pub secret: IssuedKey,
    /// The one-time code that activates a key created pending activation.
    pub activation_code: Option<Zeroizing<String>>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("key", &self.key)
            .field("secret", &self.secret)
            .field(
                "activation_code",
                &self.activation_code.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The key lifecycle.
#[derive(Clone)]
pub struct Keys {
    deps: Deps,
}

impl Keys {
    /// The key service over `deps`.
    pub fn new(deps: Deps) -> Self {
        Keys { deps }
    }

    /// Issues a key to an active owner the caller may act for, within the plan's quota and
    /// the caller's authority.
    pub async fn create(&self, caller: &Caller, new: NewKey) -> Result<Issued> {
        caller.require_plan_choice(new.plan.as_deref())?;
        if new.credits.is_some() {
            require_credit_grant(caller, new.credits.as_ref())?;
        }
        let now = self.deps.clock.now();
        let expires_at = new.expiry.map(|e| e.at(now)).transpose()?;
        let plan = self.deps.plan_name("plan", new.plan.as_deref()).await?;
        let profile = self.profile(new.profile.as_deref())?.clone();
        let owner = self
            .owner_for_new_key(caller, caller.owner_for_new_key(new.owner_id.as_deref()))
            .await?;
        let activation_code = new.require_activation.then(|| Alphabet::Base62.random(12));
        // Everything but the id and the secret, judged before any secret is drawn.
        let draft = KeyRecord {
            id: String::new(),
            owner_id: owner.id.clone(),
            name: new.name.as_str().to_owned(),
            profile: Some(profile.name.clone()),
            prefix: Some(profile.prefix.clone()),
            kind: if new.pair {
                KeyKind::Pair
            } else {
                KeyKind::Single
            },
            scopes: new.scopes.to_vec(),
            plan,
            allowed_cidrs: new.allowed_cidrs.to_vec(),
            metadata: (*new.metadata).clone(),
            state: if activation_code.is_some() {
                KeyState::PendingActivation
            } else {
                KeyState::Active
            },
            disabled_by_admin: false,
            secret_hash: String::new(),
            secret_check: None,
            lookup_digest: None,
            foreign_digest: None,
            previous_secret: None,
            activation_digest: activation_code
                .as_ref()
                .map(|code| self.deps.pepper.digest(code.as_bytes()).to_hex()),
            created_at: now,
            updated_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            credits: new.credits.map(|credits| Credits {
                granted_at: self.deps.clock.now_millis(),
                ..credits
            }),
        };
        caller.require_may_make(&draft)?;
        let quota = self.quota(&owner, draft.plan.as_deref(), now).await?;
        for _ in 0..ID_ATTEMPTS {
            let id = profile.new_key_id();
            let secret = profile.issue(&id);
            let record = KeyRecord {
                id,
                secret_hash: self.hash(secret.text()).await?,
                secret_check: Some(self.deps.pepper.secret_check(secret.text())),
                ..draft.clone()
            };
            match self.deps.store.insert_key(&record, quota).await {
                Ok(()) => {
                    self.deps.after_key_write(None, Some(&record)).await;
                    return Ok(Issued {
                        key: record,
                        secret,
                        activation_code,
                    });
                }
                // A random id collided with an existing one: draw another.
                Err(Error::AlreadyExists(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Unavailable(
            "could not draw an unused key id; try again".into(),
        ))
    }

    /// Activates a key pending activation with the code issued for it.
    pub async fn activate(
        &self,
        caller: &Caller,
        id: &str,
        code: &str,
    ) -> Result<Written<KeyRecord>> {
        let code = required("activation_code", code)?;
        let presented = self.deps.pepper.digest(code.as_bytes()).to_hex();
        self.deps
            .change_key(caller, id, move |k, _| {
                if k.state != KeyState::PendingActivation {
                    return Err(Error::FailedPrecondition(format!(
                        "key {:?} is not pending activation",
                        k.id
                    )));
                }
                let expected = k.activation_digest.as_deref().unwrap_or_default();
                if !secrets_equal(expected.as_bytes(), presented.as_bytes()) {
                    return Err(Error::InvalidArgument(
                        "activation_code is not the code issued for this key".into(),
                    ));
                }
                k.state = KeyState::Active;
                k.activation_digest = None;
                Ok(())
            })
            .await
    }

    /// The key `id`; another owner's keys are `NotFound` to an API key.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<KeyRecord> {
        self.deps.visible_key(caller, id).await
    }

    /// The credits `key` has left now, refills applied, as the rate limiter holds them;
    /// `None` for a key without credits.
    pub async fn credits_left(&self, key: &KeyRecord) -> Result<Option<u64>> {
        let Some(credits) = &key.credits else {
            return Ok(None);
        };
        let subject = Subject {
            owner_id: &key.owner_id,
            key_id: &key.id,
        };
        let deps = &self.deps;
        let left = deps
            .limiter
            .credits_left(subject, credits, &deps.calendar, deps.clock.as_ref())
            .await?;
        Ok(Some(left))
    }

    /// A page of an owner's keys in id order, only those in `state` when given.
    pub async fn list(
        &self,
        caller: &Caller,
        owner_id: &str,
        state: Option<KeyState>,
        page: &Page,
    ) -> Result<Vec<KeyRecord>> {
        let owner = self.deps.visible_owner(caller, owner_id).await?;
        self.deps
            .store
            .list_keys(&owner.id, state, page.after.as_deref(), page.size)
            .await
    }

    /// Applies `edit` to key `id` (see [`KeyEdit::apply`] for the state rules); the key as
    /// updated must be within the caller's authority.
    pub async fn update(
        &self,
        caller: &Caller,
        id: &str,
        mut edit: KeyEdit,
    ) -> Result<Written<KeyRecord>> {
        edit.check(self.deps.clock.now(), caller)?;
        // New credits are granted now: the limiter replaces whatever balance it holds.
        if let Some(Some(credits)) = &mut edit.credits {
            credits.granted_at = self.deps.clock.now_millis();
        }
        let by = caller.clone();
        self.deps
            .change_key(caller, id, move |k, _| {
                edit.apply(k, &by)?;
                by.require_may_make(k)
            })
            .await
    }

    /// Revokes key `id` for good; revoking a revoked key changes nothing. The previous
    /// secret and any pending activation go with it.
    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<Written<KeyRecord>> {
        self.deps
            .change_key(caller, id, |k, now| {
                if k.state != KeyState::Revoked {
                    k.state = KeyState::Revoked;
                    k.revoked_at = Some(now);
                    k.previous_secret = None;
                    k.activation_digest = None;
                }
                Ok(())
            })
            .await
    }

    /// Issues a new secret for key `id`, keeping its id. The old secret works for the grace
    /// period, or stops at once; an imported key becomes an issued single key.
    pub async fn rotate(
        &self,
        caller: &Caller,
        id: &str,
        rotation: Rotation,
    ) -> Result<Written<Issued>> {
        if rotation.grace > MAX_ROTATION_GRACE {
            return Err(Error::InvalidArgument(format!(
                "grace may be at most {} days",
                MAX_ROTATION_GRACE.as_secs() / 86_400
            )));
        }
        let grace = rotation.grace.as_secs() as i64;
        let current = self.deps.visible_key(caller, id).await?;
        caller.require_may_touch(&current)?;
        refuse_revoked(&current)?;
        let profile = match &current.profile {
            Some(name) => self.deps.profiles.get(name).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "key {:?} was issued with profile {name:?}, which is no longer configured",
                    current.id
                ))
            })?,
            None => self.deps.profiles.default_profile(),
        }
        .clone();
        let secret = profile.issue(&current.id);
        let new_hash = self.hash(secret.text()).await?;
        let new_check = self.deps.pepper.secret_check(secret.text());
        let Written {
            record: key,
            propagation,
        } = self
            .deps
            .change_key(caller, &current.id, move |k, now| {
                refuse_revoked(k)?;
                if k.foreign_digest.is_some() && grace > 0 {
                    return Err(Error::FailedPrecondition(format!(
                        "key {:?} still waits for its first use since it was imported by digest: keygate has no hash of its secret to keep working for a grace period; rotate it without grace, or after its first use",
                        k.id
                    )));
                }
                k.foreign_digest = None;
                let old_hash = std::mem::replace(&mut k.secret_hash, new_hash.clone());
                let old_check = k.secret_check.replace(new_check.clone());
                k.previous_secret = (grace > 0).then(|| PreviousSecret {
                    hash: old_hash,
                    check: old_check,
                    expires_at: now + grace,
                });
                if grace == 0 {
                    k.lookup_digest = None;
                }
                k.profile = Some(profile.name.clone());
                k.prefix = Some(profile.prefix.clone());
                if k.kind == KeyKind::Imported {
                    k.kind = KeyKind::Single;
                }
                Ok(())
            })
            .await?;
        Ok(Written {
            record: Issued {
                key,
                secret,
                activation_code: None,
            },
            propagation,
        })
    }

    /// Deletes key `id` and its indexes, returning what was removed.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<Written<KeyRecord>> {
        let key = self.deps.visible_key(caller, id).await?;
        caller.require_may_touch(&key)?;
        let deleted = self.deps.store.delete_key(&key.id).await?;
        let propagation = self.deps.after_key_write(Some(&deleted), None).await;
        Ok(Written {
            record: deleted,
            propagation,
        })
    }

    /// Adopts a key issued elsewhere, from its text or from the SHA-256 digest the other
    /// system kept. A key text in a configured profile's format keeps its embedded id and is
    /// found like any issued key; anything else gets a random id and is found by its lookup
    /// digest. A key imported by digest is found by the digest's keyed form until its first
    /// use, which replaces that with an argon2id hash and a lookup digest
    /// ([`crate::authz::keys`]).
    pub async fn import(&self, caller: &Caller, import: Import) -> Result<KeyRecord> {
        let source = imported_secret(&import.secret, import.digest.as_ref())?;
        caller.require_plan_choice(import.plan.as_deref())?;
        let now = self.deps.clock.now();
        let plan = self.deps.plan_name("plan", import.plan.as_deref()).await?;
        let owner = self
            .owner_for_new_key(caller, Some(&import.owner_id))
            .await?;
        let random_id = || Alphabet::Base62.random(12).to_string();
        let pepper = &self.deps.pepper;
        let (id, profile, prefix, secret_check, lookup_digest, foreign_digest) = match &source {
            ImportedSecret::Plain(secret) => {
                let (id, profile) = match self.deps.profiles.parse(secret) {
                    Ok(parsed) => (
                        parsed.id.to_owned(),
                        self.deps.profiles.get(parsed.profile).cloned(),
                    ),
                    Err(_) => (random_id(), None),
                };
                let prefix = profile.as_ref().map(|p| p.prefix.clone());
                let digest = pepper.digest(secret.as_bytes()).to_hex();
                let check = pepper.secret_check(secret);
                (
                    id,
                    profile.map(|p| p.name),
                    prefix,
                    Some(check),
                    digest,
                    None,
                )
            }
            ImportedSecret::Sha256 { digest, prefix, .. } => {
                let keyed = digest.keyed(pepper).to_hex();
                (
                    random_id(),
                    None,
                    prefix.clone(),
                    None,
                    keyed.clone(),
                    Some(keyed),
                )
            }
        };
        source.require_authority(caller)?;
        let mut record = KeyRecord {
            id,
            owner_id: owner.id.clone(),
            name: import.name.into_string(),
            prefix,
            profile,
            kind: KeyKind::Imported,
            scopes: import.scopes.into_vec(),
            plan: plan.clone(),
            allowed_cidrs: import.allowed_cidrs.into_vec(),
            metadata: import.metadata.into_map(),
            state: KeyState::Active,
            disabled_by_admin: false,
            secret_hash: String::new(),
            secret_check,
            lookup_digest: Some(lookup_digest),
            foreign_digest,
            previous_secret: None,
            activation_digest: None,
            created_at: import.created_at.unwrap_or(now),
            updated_at: now,
            expires_at: import.expires_at,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
            credits: None,
        };
        caller.require_may_make(&record)?;
        if let ImportedSecret::Plain(secret) = source {
            record.secret_hash = self.hash(secret).await?;
        }
        let quota = self.quota(&owner, plan.as_deref(), now).await?;
        self.deps
            .store
            .insert_key(&record, quota)
            .await
            .map_err(|e| match e {
                Error::AlreadyExists(_) => {
                    Error::AlreadyExists("this key has been imported or issued already".into())
                }
                other => other,
            })?;
        self.deps.after_key_write(None, Some(&record)).await;
        Ok(record)
    }

    /// The owner a new key is created for: it must exist, be visible to the caller, be one
    /// the caller acts for, and be active.
    async fn owner_for_new_key(&self, caller: &Caller, owner_id: Option<&str>) -> Result<Owner> {
        let owner = self
            .deps
            .visible_owner(caller, owner_id.unwrap_or_default())
            .await?;
        caller.require_owner(&owner.id)?;
        if owner.state != OwnerState::Active {
            return Err(Error::FailedPrecondition(format!(
                "owner {:?} is disabled; enable it before creating keys",
                owner.id
            )));
        }
        Ok(owner)
    }

    /// The quota for a new key of `owner` (or of the key's own plan), if its plan, as
    /// stored now, caps keys.
    async fn quota(
        &self,
        owner: &Owner,
        key_plan: Option<&str>,
        now: UnixTime,
    ) -> Result<Option<Quota>> {
        let plan = self
            .deps
            .store
            .get_plan(key_plan.unwrap_or(&owner.plan))
            .await?;
        Ok(plan
            .filter(|plan| plan.max_active_keys > 0)
            .map(|plan| Quota {
                max_active_keys: plan.max_active_keys,
                now,
            }))
    }

    /// The profile named `name`, or the default one when none is named.
    fn profile(&self, name: Option<&str>) -> Result<&KeyProfile> {
        let name = name.map(str::trim).unwrap_or_default();
        if name.is_empty() {
            return Ok(self.deps.profiles.default_profile());
        }
        self.deps.profiles.get(name).ok_or_else(|| {
            let known: Vec<_> = self.deps.profiles.iter().map(|p| p.name.as_str()).collect();
            Error::InvalidArgument(format!(
                "profile: unknown key profile {}; configured profiles are {known:?}",
                quote(name)
            ))
        })
    }

    async fn hash(&self, secret: &str) -> Result<String> {
        self.deps
            .hasher
            .hash(secret)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))
    }
}

/// Refuses to change a revoked key's secret.
fn refuse_revoked(k: &KeyRecord) -> Result<()> {
    if k.state == KeyState::Revoked {
        return Err(Error::FailedPrecondition(format!(
            "key {:?} is revoked; create a new key instead",
            k.id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidation::Invalidation;
    use crate::manage::OwnerUpdate;
    use crate::manage::testing::{Fixture, T0, key_caller, new_key};

    const MANAGER: &[&str] = &["keygate:keys", "read"];

    fn import(owner_id: &str, secret: &str) -> Import {
        Import {
            owner_id: owner_id.into(),
            name: Name::parse("name", "legacy").unwrap(),
            secret: Zeroizing::new(secret.into()),
            digest: None,
            scopes: Scopes::parse("scopes", &["read".into()]).unwrap(),
            allowed_cidrs: Cidrs::default(),
            metadata: Metadata::default(),
            plan: None,
            expires_at: None,
            created_at: Some(T0 - 86_400),
        }
    }

    /// SHA-256 of the key `sk_live_4eC39HqLyjWDarjtT1zdp7dc`, as `sha256sum` writes it, and
    /// as base64.
    const SHA256_HEX: &str = "78a08441f4314f0a2833cfe58c62e555a162264206982cda39f6804f5048f570";
    const SHA256_BASE64: &str = "eKCEQfQxTwooM8/ljGLlVaFiJkIGmCzaOfaAT1BI9XA=";

    /// The digest import of a key `sk_live_` + 24 base62 characters (about 143 bits).
    fn digest(sha256: &str, encoding: DigestEncoding) -> DigestImport {
        DigestImport {
            sha256: sha256.into(),
            encoding: Some(encoding),
            prefix: "sk_live_".into(),
            length: 32,
            alphabet_size: 0,
            allow_low_entropy: false,
        }
    }

    fn import_digest(owner_id: &str, digest: DigestImport) -> Import {
        Import {
            digest: Some(digest),
            ..import(owner_id, "")
        }
    }

    /// The key whose SHA-256 digest is [`SHA256_HEX`], imported by the admin.
    async fn pending(f: &Fixture, owner_id: &str) -> KeyRecord {
        let digest = digest(SHA256_HEX, DigestEncoding::Hex);
        let import = import_digest(owner_id, digest);
        f.keys.import(&Caller::Admin, import).await.unwrap()
    }

    fn grace(secs: u64) -> Rotation {
        Rotation {
            grace: Duration::from_secs(secs),
        }
    }

    /// A key created by the admin, with the invalidations so far forgotten.
    async fn created(f: &Fixture, new: NewKey) -> Issued {
        let issued = f.keys.create(&Caller::Admin, new).await.unwrap();
        f.take_invalidations();
        issued
    }

    #[tokio::test]
    async fn create_issues_a_secret_that_verifies_and_is_stored_only_as_a_hash() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let issued = f
            .keys
            .create(&Caller::Admin, new_key(&owner.id))
            .await
            .unwrap();
        let key = &issued.key;
        assert_eq!(key.state, KeyState::Active);
        assert_eq!(key.kind, KeyKind::Single);
        assert_eq!((key.created_at, key.expires_at), (T0, None));
        assert!(
            issued
                .secret
                .text()
                .starts_with(&format!("kg_live_{}", key.id))
        );
        assert!(issued.activation_code.is_none());
        let stored = f.deps.store.get_key(&key.id).await.unwrap().unwrap();
        assert_eq!(&stored, key);
        assert!(!stored.secret_hash.contains(issued.secret.text()));
        assert!(f.verifies(&stored.secret_hash, issued.secret.text()).await);
        assert_eq!(
            stored.secret_check,
            Some(f.deps.pepper.secret_check(issued.secret.text()))
        );
        assert!(!format!("{issued:?}").contains(issued.secret.text()));
        // Reading the key again never shows the secret: only the record comes back.
        assert_eq!(f.keys.get(&Caller::Admin, &key.id).await.unwrap(), stored);
        assert_eq!(f.invalidations(), [Invalidation::Key(key.id.clone())]);
    }

    #[tokio::test]
    async fn create_honours_pair_profile_plan_and_expiry() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let issued = f
            .keys
            .create(
                &Caller::Admin,
                NewKey {
                    pair: true,
                    profile: Some("ctw".into()),
                    plan: Some("free".into()),
                    expiry: Some(Expiry::InDays(2)),
                    ..new_key(&owner.id)
                },
            )
            .await
            .unwrap();
        assert_eq!(issued.key.kind, KeyKind::Pair);
        assert_eq!(issued.key.prefix.as_deref(), Some("ctw"));
        assert_eq!(issued.key.plan.as_deref(), Some("free"));
        assert_eq!(issued.key.expires_at, Some(T0 + 2 * 86_400));
        let (api_key, _) = issued.secret.split_pair();
        assert_eq!(api_key, format!("ctw_{}", issued.key.id));

        let refused = |new: NewKey| async { f.keys.create(&Caller::Admin, new).await.unwrap_err() };
        for (new, mentions) in [
            (
                NewKey {
                    profile: Some("nope".into()),
                    ..new_key(&owner.id)
                },
                "profile",
            ),
            (
                NewKey {
                    plan: Some("nope".into()),
                    ..new_key(&owner.id)
                },
                "plan",
            ),
            (
                NewKey {
                    expiry: Some(Expiry::At(T0)),
                    ..new_key(&owner.id)
                },
                "future",
            ),
            (
                NewKey {
                    expiry: Some(Expiry::InDays(0)),
                    ..new_key(&owner.id)
                },
                "expire_in_days",
            ),
            (
                NewKey {
                    expiry: Some(Expiry::InDays(MAX_EXPIRY_DAYS + 1)),
                    ..new_key(&owner.id)
                },
                "expire_in_days",
            ),
            (
                NewKey {
                    owner_id: None,
                    ..new_key(&owner.id)
                },
                "owner_id",
            ),
        ] {
            let error = refused(new).await;
            assert!(
                matches!(&error, Error::InvalidArgument(m) if m.contains(mentions)),
                "{error:?} should mention {mentions}"
            );
        }
        let unknown = refused(new_key("own_nobody")).await;
        assert!(matches!(unknown, Error::NotFound(_)), "{unknown}");
    }

    #[tokio::test]
    async fn a_key_caller_creates_only_for_its_own_owner_and_only_scopes_it_holds() {
        let f = Fixture::new().await;
        let alice = f.owner("alice").await;
        let bob = f.owner("bob").await;
        let caller = key_caller(&alice.id, MANAGER);
        let own = f
            .keys
            .create(
                &caller,
                NewKey {
                    owner_id: None,
                    ..new_key("")
                },
            )
            .await
            .unwrap();
        assert_eq!(own.key.owner_id, alice.id, "no owner named means its own");
        let other = f.keys.create(&caller, new_key(&bob.id)).await.unwrap_err();
        assert!(matches!(other, Error::NotFound(_)), "{other}");
        let stronger = NewKey {
            scopes: Scopes::parse("scopes", &["admin".into()]).unwrap(),
            ..new_key(&alice.id)
        };
        let escalate = f.keys.create(&caller, stronger).await.unwrap_err();
        assert!(matches!(&escalate, Error::PermissionDenied(m) if m.contains("admin")));
        let mut imported = import(&alice.id, "legacy-secret-1");
        imported.scopes = Scopes::parse("scopes", &["write".into()]).unwrap();
        let escalate = f.keys.import(&caller, imported).await.unwrap_err();
        assert!(matches!(escalate, Error::PermissionDenied(_)), "{escalate}");
        let elsewhere = f
            .keys
            .import(&caller, import(&bob.id, "legacy-secret-2"))
            .await
            .unwrap_err();
        assert!(matches!(elsewhere, Error::NotFound(_)), "{elsewhere}");
    }

    #[tokio::test]
    async fn a_key_caller_cannot_see_or_touch_another_owners_keys() {
        let f = Fixture::new().await;
        let alice = f.owner("alice").await;
        let bob = f.owner("bob").await;
        let bobs = created(&f, new_key(&bob.id)).await.key;
        let caller = key_caller(&alice.id, MANAGER);
        let page = Page {
            after: None,
            size: 10,
        };
        let not_found = |r: Result<KeyRecord>| match r {
            Err(Error::NotFound(m)) => assert!(m.contains(&bobs.id), "{m}"),
            other => panic!("{other:?}"),
        };
        not_found(f.keys.get(&caller, &bobs.id).await);
        not_found(f.keys.revoke(&caller, &bobs.id).await.map(|w| w.record));
        not_found(f.keys.delete(&caller, &bobs.id).await.map(|w| w.record));
        not_found(
            f.keys
                .activate(&caller, &bobs.id, "code")
                .await
                .map(|w| w.record),
        );
        not_found(
            f.keys
                .update(&caller, &bobs.id, KeyEdit::default())
                .await
                .map(|w| w.record),
        );
        not_found(
            f.keys
                .rotate(&caller, &bobs.id, grace(0))
                .await
                .map(|i| i.record.key),
        );
        let listed = f
            .keys
            .list(&caller, &bob.id, None, &page)
            .await
            .unwrap_err();
        assert!(matches!(listed, Error::NotFound(_)), "{listed}");
        assert_eq!(f.deps.store.get_key(&bobs.id).await.unwrap().unwrap(), bobs);
        assert!(f.invalidations().is_empty(), "nothing was written");
    }

    #[tokio::test]
    async fn the_plan_caps_active_keys_per_owner() {
        let f = Fixture::new().await;
        let owner = f.owner_on("bob", Some("free")).await;
        let first = created(&f, new_key(&owner.id)).await.key;
        created(&f, new_key(&owner.id)).await;
        let third = f
            .keys
            .create(&Caller::Admin, new_key(&owner.id))
            .await
            .unwrap_err();
        assert!(matches!(&third, Error::FailedPrecondition(m) if m.contains("active keys")));
        let imported = f
            .keys
            .import(&Caller::Admin, import(&owner.id, "legacy-secret"))
            .await
            .unwrap_err();
        assert!(
            matches!(imported, Error::FailedPrecondition(_)),
            "{imported}"
        );
        // A key on an uncapped plan of its own is not held to the owner's cap.
        let own_plan = NewKey {
            plan: Some("default".into()),
            ..new_key(&owner.id)
        };
        let uncapped = f.keys.create(&Caller::Admin, own_plan).await.unwrap().key;
        // It still counts against the owner's cap, like every live key.
        f.keys.revoke(&Caller::Admin, &first.id).await.unwrap();
        let refused = f.keys.create(&Caller::Admin, new_key(&owner.id)).await;
        assert!(matches!(refused, Err(Error::FailedPrecondition(_))));
        f.keys.revoke(&Caller::Admin, &uncapped.id).await.unwrap();
        f.keys
            .create(&Caller::Admin, new_key(&owner.id))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_disabled_owner_gets_no_new_keys() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let disable = OwnerUpdate {
            state: Some(crate::model::OwnerState::Disabled),
            ..Default::default()
        };
        f.owners
            .update(&Caller::Admin, &owner.id, disable)
            .await
            .unwrap();
        let create = f
            .keys
            .create(&Caller::Admin, new_key(&owner.id))
            .await
            .unwrap_err();
        assert!(matches!(&create, Error::FailedPrecondition(m) if m.contains("disabled")));
        let import = f
            .keys
            .import(&Caller::Admin, import(&owner.id, "legacy-secret"))
            .await
            .unwrap_err();
        assert!(matches!(import, Error::FailedPrecondition(_)), "{import}");
    }

    #[tokio::test]
    async fn activation_needs_the_issued_code_once() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let pending = NewKey {
            require_activation: true,
            ..new_key(&owner.id)
        };
        let issued = created(&f, pending).await;
        let id = issued.key.id.clone();
        assert_eq!(issued.key.state, KeyState::PendingActivation);
        let code = issued.activation_code.clone().unwrap();
        let stored = f.deps.store.get_key(&id).await.unwrap().unwrap();
        assert!(
            !stored
                .activation_digest
                .as_deref()
                .unwrap()
                .contains(code.as_str())
        );

        let wrong = f
            .keys
            .activate(&Caller::Admin, &id, "wrong-code")
            .await
            .unwrap_err();
        assert!(matches!(&wrong, Error::InvalidArgument(m) if m.contains("activation_code")));
        let blank = f.keys.activate(&Caller::Admin, &id, " ").await.unwrap_err();
        assert!(matches!(blank, Error::InvalidArgument(_)), "{blank}");
        assert!(
            f.invalidations().is_empty(),
            "refused changes write nothing"
        );

        f.clock.advance(5);
        let active = f
            .keys
            .activate(&Caller::Admin, &id, &code)
            .await
            .unwrap()
            .record;
        assert_eq!(active.state, KeyState::Active);
        assert_eq!(active.activation_digest, None);
        assert_eq!(active.updated_at, T0 + 5);
        assert_eq!(f.take_invalidations(), [Invalidation::Key(id.clone())]);
        let again = f
            .keys
            .activate(&Caller::Admin, &id, &code)
            .await
            .unwrap_err();
        assert!(matches!(&again, Error::FailedPrecondition(m) if m.contains("not pending")));
    }

    #[tokio::test]
    async fn updates_follow_the_edit_rules() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let key = created(&f, new_key(&owner.id)).await.key;
        f.clock.advance(10);
        let edit = KeyEdit {
            name: Some(Name::parse("name", "renamed").unwrap()),
            expires_at: Some(Some(T0 + 3600)),
            disabled: Some(true),
            ..Default::default()
        };
        let updated = f
            .keys
            .update(&Caller::Admin, &key.id, edit)
            .await
            .unwrap()
            .record;
        assert_eq!(updated.name, "renamed");
        assert_eq!(updated.state, KeyState::Disabled);
        assert_eq!(updated.expires_at, Some(T0 + 3600));
        assert_eq!(updated.scopes, key.scopes);
        assert_eq!(updated.updated_at, T0 + 10);
        assert_eq!(f.take_invalidations(), [Invalidation::Key(key.id.clone())]);

        let past = KeyEdit {
            expires_at: Some(Some(T0)),
            ..Default::default()
        };
        let error = f
            .keys
            .update(&Caller::Admin, &key.id, past)
            .await
            .unwrap_err();
        assert!(matches!(&error, Error::InvalidArgument(m) if m.contains("future")));

        let caller = key_caller(&owner.id, MANAGER);
        let stronger = KeyEdit {
            scopes: Some(Scopes::parse("scopes", &["write".into()]).unwrap()),
            ..Default::default()
        };
        let error = f.keys.update(&caller, &key.id, stronger).await.unwrap_err();
        assert!(matches!(error, Error::PermissionDenied(_)), "{error}");

        let enable = KeyEdit {
            disabled: Some(false),
            ..Default::default()
        };
        let enabled = f
            .keys
            .update(&Caller::Admin, &key.id, enable.clone())
            .await
            .unwrap()
            .record;
        assert_eq!(enabled.state, KeyState::Active);

        f.keys.revoke(&Caller::Admin, &key.id).await.unwrap();
        f.take_invalidations();
        let error = f
            .keys
            .update(&Caller::Admin, &key.id, enable)
            .await
            .unwrap_err();
        assert!(matches!(&error, Error::FailedPrecondition(m) if m.contains("revoked")));
        assert!(f.invalidations().is_empty());

        let pending = created(
            &f,
            NewKey {
                require_activation: true,
                ..new_key(&owner.id)
            },
        )
        .await
        .key;
        let enable = KeyEdit {
            disabled: Some(false),
            ..Default::default()
        };
        let error = f
            .keys
            .update(&Caller::Admin, &pending.id, enable)
            .await
            .unwrap_err();
        assert!(matches!(&error, Error::FailedPrecondition(m) if m.contains("activat")));
    }

    #[tokio::test]
    async fn revoke_is_idempotent_and_drops_the_previous_secret() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let key = created(&f, new_key(&owner.id)).await.key;
        let rotated = f
            .keys
            .rotate(&Caller::Admin, &key.id, grace(3600))
            .await
            .unwrap()
            .record;
        assert!(rotated.key.previous_secret.is_some());
        f.clock.advance(10);
        f.take_invalidations();
        let revoked = f.keys.revoke(&Caller::Admin, &key.id).await.unwrap().record;
        assert_eq!(revoked.state, KeyState::Revoked);
        assert_eq!(revoked.revoked_at, Some(T0 + 10));
        assert_eq!(revoked.previous_secret, None);
        assert_eq!(f.take_invalidations(), [Invalidation::Key(key.id.clone())]);
        f.clock.advance(10);
        let again = f.keys.revoke(&Caller::Admin, &key.id).await.unwrap().record;
        assert_eq!(
            again.revoked_at,
            Some(T0 + 10),
            "the first revocation time stays"
        );
        assert_eq!(again.state, KeyState::Revoked);
    }

    #[tokio::test]
    async fn rotation_replaces_the_secret_with_or_without_grace() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let first = created(&f, new_key(&owner.id)).await;
        let id = first.key.id.clone();

        f.clock.advance(10);
        let rotated = f
            .keys
            .rotate(&Caller::Admin, &id, grace(3600))
            .await
            .unwrap()
            .record;
        assert_ne!(rotated.secret.text(), first.secret.text());
        assert!(rotated.secret.text().starts_with(&format!("kg_live_{id}")));
        let previous = rotated.key.previous_secret.clone().unwrap();
        assert_eq!(previous.expires_at, T0 + 10 + 3600);
        assert!(f.verifies(&previous.hash, first.secret.text()).await);
        let check = |secret: &str| Some(f.deps.pepper.secret_check(secret));
        assert_eq!(previous.check, check(first.secret.text()));
        assert_eq!(rotated.key.secret_check, check(rotated.secret.text()));
        assert!(
            f.verifies(&rotated.key.secret_hash, rotated.secret.text())
                .await
        );
        assert_eq!(f.take_invalidations(), [Invalidation::Key(id.clone())]);

        let at_once = f
            .keys
            .rotate(&Caller::Admin, &id, grace(0))
            .await
            .unwrap()
            .record;
        assert_eq!(at_once.key.previous_secret, None);
        assert!(
            !f.verifies(&at_once.key.secret_hash, rotated.secret.text())
                .await
        );

        let too_long = f
            .keys
            .rotate(&Caller::Admin, &id, grace(90 * 86_400 + 1))
            .await
            .unwrap_err();
        assert!(matches!(&too_long, Error::InvalidArgument(m) if m.contains("90 days")));
        f.keys
            .rotate(&Caller::Admin, &id, grace(90 * 86_400))
            .await
            .unwrap();

        f.keys.revoke(&Caller::Admin, &id).await.unwrap();
        f.take_invalidations();
        let revoked = f
            .keys
            .rotate(&Caller::Admin, &id, grace(0))
            .await
            .unwrap_err();
        assert!(matches!(&revoked, Error::FailedPrecondition(m) if m.contains("revoked")));
        assert!(f.invalidations().is_empty());
    }

    #[tokio::test]
    async fn rotating_an_imported_key_issues_a_single_key_and_retires_its_digest() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let imported = f
            .keys
            .import(&Caller::Admin, import(&owner.id, "legacy-secret"))
            .await
            .unwrap();
        let digest = imported.lookup_digest.clone().unwrap();
        f.take_invalidations();

        let graced = f
            .keys
            .rotate(&Caller::Admin, &imported.id, grace(60))
            .await
            .unwrap()
            .record;
        assert_eq!(graced.key.kind, KeyKind::Single);
        assert_eq!(graced.key.prefix.as_deref(), Some("kg_live"));
        assert_eq!(
            graced.key.lookup_digest.as_deref(),
            Some(digest.as_str()),
            "the old secret is still found while its grace lasts"
        );
        assert_eq!(
            f.take_invalidations(),
            [Invalidation::Key(imported.id.clone())]
        );

        let at_once = f
            .keys
            .rotate(&Caller::Admin, &imported.id, grace(0))
            .await
            .unwrap()
            .record;
        assert_eq!(at_once.key.lookup_digest, None);
        assert_eq!(
            f.take_invalidations(),
            [
                Invalidation::Key(imported.id.clone()),
                Invalidation::Unimported(digest),
            ]
        );
    }

    #[tokio::test]
    async fn import_adopts_a_secret_once() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let legacy = "ctw_3f8da4f058e8992f91c42ccfd00b31e3";
        let key = f
            .keys
            .import(&Caller::Admin, import(&owner.id, legacy))
            .await
            .unwrap();
        assert_eq!(key.kind, KeyKind::Imported);
        assert_eq!(key.created_at, T0 - 86_400);
        assert_eq!(key.updated_at, T0);
        assert_eq!(key.profile, None, "not in the ctw profile's format");
        let digest = f.deps.pepper.digest(legacy.as_bytes()).to_hex();
        assert_eq!(key.lookup_digest.as_deref(), Some(digest.as_str()));
        assert!(f.verifies(&key.secret_hash, legacy).await);
        assert_eq!(key.secret_check, Some(f.deps.pepper.secret_check(legacy)));
        assert!(!format!("{key:?}").contains("3f8da4f058e8992f91c42ccfd00b31e3"));
        let found = f.deps.store.find_key_by_digest(&digest).await.unwrap();
        assert_eq!(found.as_ref(), Some(&key));
        assert_eq!(
            f.take_invalidations(),
            [
                Invalidation::Key(key.id.clone()),
                Invalidation::Imported(digest),
            ]
        );

        let again = f
            .keys
            .import(&Caller::Admin, import(&owner.id, legacy))
            .await
            .unwrap_err();
        assert!(matches!(&again, Error::AlreadyExists(m) if m.contains("already")));
        assert!(!again.to_string().contains(legacy));
        for bad in [
            "",
            "has a space",
            "tab\there",
            &"x".repeat(MAX_IMPORTED_KEY_LEN + 1),
        ] {
            let error = f
                .keys
                .import(&Caller::Admin, import(&owner.id, bad))
                .await
                .unwrap_err();
            assert!(matches!(&error, Error::InvalidArgument(m) if m.contains("secret")));
            if !bad.is_empty() {
                assert!(
                    !error.to_string().contains(bad),
                    "the secret stays out of errors"
                );
            }
        }
        let blank_owner = f
            .keys
            .import(&Caller::Admin, import(" ", "legacy-secret-2"))
            .await
            .unwrap_err();
        assert!(matches!(&blank_owner, Error::InvalidArgument(m) if m.contains("owner_id")));
        assert!(
            f.invalidations().is_empty(),
            "refused imports write nothing"
        );
    }

    #[tokio::test]
    async fn import_by_digest_checks_its_arguments_and_writes_nothing_it_refuses() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let hex = || digest(SHA256_HEX, DigestEncoding::Hex);
        let base64 = |text: &str| digest(text, DigestEncoding::Base64);
        // Digests the admin imports: each refused with INVALID_ARGUMENT saying this.
        let invalid = [
            ("no encoding", DigestImport { encoding: None, ..hex() }, "digest.encoding"),
            (
                "bad hex",
                digest(&SHA256_HEX.replace('a', "z"), DigestEncoding::Hex),
                "digest.sha256 (encoding hex): a hex SHA-256 digest is 64",
            ),
            (
                "short hex",
                digest(&SHA256_HEX[..62], DigestEncoding::Hex),
                "this one has 62 characters",
            ),
            (
                "base64 given as hex",
                digest(SHA256_BASE64, DigestEncoding::Hex),
                "digest.sha256 (encoding hex)",
            ),
            ("bad base64", base64("eKCEQfQx*wooM8/ljGLl"), "not standard base64"),
            ("hex given as base64", base64(SHA256_HEX), "32 bytes; this base64 holds 48"),
            ("base64 of 30 bytes", base64(&SHA256_BASE64[..40]), "this base64 holds 30"),
            ("no length", DigestImport { length: 0, ..hex() }, "digest.length"),
            (
                "too long",
                DigestImport {
                    length: MAX_IMPORTED_KEY_LEN as u32 + 1,
                    ..hex()
                },
                "digest.length",
            ),
            ("prefix as long as the key", DigestImport { length: 8, ..hex() }, "digest.prefix"),
            (
                "prefix with a space",
                DigestImport {
                    prefix: "sk live".into(),
                    ..hex()
                },
                "digest.prefix",
            ),
            (
                "alphabet of one",
                DigestImport {
                    alphabet_size: 1,
                    ..hex()
                },
                "digest.alphabet_size",
            ),
            (
                // 21 base62 characters after the prefix.
                "below the floor",
                DigestImport { length: 29, ..hex() },
                "about 125 random bits (21 characters after the prefix, from an alphabet of 62) can be brute-forced offline",
            ),
            (
                "hex characters count four bits",
                DigestImport {
                    alphabet_size: 16,
                    ..hex()
                },
                "set digest.allow_low_entropy",
            ),
        ]
        .map(|(case, digest, says)| (case, import_digest(&owner.id, digest), says));
        let both = Import {
            digest: Some(hex()),
            ..import(&owner.id, "legacy-secret")
        };
        let refusals = invalid.into_iter().chain([
            ("both secret and digest", both, "either secret"),
            (
                "neither",
                import(&owner.id, ""),
                "secret or digest is required",
            ),
        ]);
        for (case, import, says) in refusals {
            let error = f.keys.import(&Caller::Admin, import).await.unwrap_err();
            assert!(
                matches!(&error, Error::InvalidArgument(m) if m.contains(says)),
                "{case}: {error}"
            );
            for digest in [SHA256_HEX, SHA256_BASE64, &SHA256_HEX[..40]] {
                assert!(!error.to_string().contains(digest), "{case}: {error}");
            }
        }
        // Only the admin may accept a key below the floor.
        let weak = import_digest(
            &owner.id,
            DigestImport {
                length: 16,
                allow_low_entropy: true,
                ..hex()
            },
        );
        let by_key = f
            .keys
            .import(&key_caller(&owner.id, MANAGER), weak)
            .await
            .unwrap_err();
        assert!(
            matches!(&by_key, Error::PermissionDenied(m) if m.starts_with("secret: the imported key carries about 48 random bits")),
            "{by_key}"
        );
        assert!(
            f.invalidations().is_empty(),
            "refused imports write nothing"
        );
        let page = Page {
            after: None,
            size: 10,
        };
        let keys = f.keys.list(&Caller::Admin, &owner.id, None, &page).await;
        assert!(keys.unwrap().is_empty());
    }

    #[tokio::test]
    async fn import_by_digest_keeps_only_a_keyed_digest_until_first_use() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let key = pending(&f, &owner.id).await;
        let sha256 = Sha256Digest::parse(SHA256_HEX, DigestEncoding::Hex).unwrap();
        let keyed = sha256.keyed(&f.deps.pepper).to_hex();
        assert_eq!(key.kind, KeyKind::Imported);
        assert_eq!(key.hash_name(), "sha256-pending");
        assert_eq!(key.prefix.as_deref(), Some("sk_live_"));
        assert_eq!(key.profile, None);
        assert_eq!(key.foreign_digest.as_deref(), Some(keyed.as_str()));
        assert_eq!(key.lookup_digest.as_deref(), Some(keyed.as_str()));
        assert_eq!((key.secret_hash.as_str(), &key.secret_check), ("", &None));
        let stored = serde_json::to_string(&key).unwrap();
        assert!(!stored.contains(SHA256_HEX), "the digest is stored keyed");
        assert_eq!(
            f.deps.store.find_key_by_digest(&keyed).await.unwrap(),
            Some(key.clone())
        );
        assert_eq!(
            f.take_invalidations(),
            [
                Invalidation::Key(key.id.clone()),
                Invalidation::Imported(keyed.clone()),
            ]
        );

        // The same digest in base64 names the same key.
        let again = f
            .keys
            .import(
                &Caller::Admin,
                import_digest(&owner.id, digest(SHA256_BASE64, DigestEncoding::Base64)),
            )
            .await
            .unwrap_err();
        assert!(matches!(again, Error::AlreadyExists(_)), "{again}");

        // A key above the floor may be imported by an API key; one below only by the admin.
        let manager = key_caller(&owner.id, MANAGER);
        let other = Sha256Digest::of("sk_live_another_key_of_24ch");
        let other_hex = crate::key::hash::hex(&other.keyed(&f.deps.pepper).0);
        let by_key = f
            .keys
            .import(
                &manager,
                import_digest(
                    &owner.id,
                    digest(
                        &crate::key::hash::hex(&sha_bytes("sk_live_another_key_of_24ch")),
                        DigestEncoding::Hex,
                    ),
                ),
            )
            .await
            .unwrap();
        assert_eq!(by_key.foreign_digest, Some(other_hex));
        let pin = f
            .keys
            .import(
                &Caller::Admin,
                import_digest(
                    &owner.id,
                    DigestImport {
                        prefix: String::new(),
                        length: 8,
                        alphabet_size: 10,
                        allow_low_entropy: true,
                        ..digest(
                            &crate::key::hash::hex(&sha_bytes("12345678")),
                            DigestEncoding::Hex,
                        )
                    },
                ),
            )
            .await
            .unwrap();
        assert_eq!(pin.prefix, None);
        assert_eq!(pin.hash_name(), "sha256-pending");
    }

    /// SHA-256 of `text`, computed apart from the code under test.
    fn sha_bytes(text: &str) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(text.as_bytes()).into()
    }

    #[tokio::test]
    async fn a_key_waiting_for_first_use_is_rotated_only_without_grace() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let key = pending(&f, &owner.id).await;
        let keyed = key.foreign_digest.clone().unwrap();
        f.take_invalidations();
        let graced = f
            .keys
            .rotate(&Caller::Admin, &key.id, grace(60))
            .await
            .unwrap_err();
        assert!(
            matches!(&graced, Error::FailedPrecondition(m) if m.contains("without grace")),
            "{graced}"
        );
        assert!(f.invalidations().is_empty());
        let rotated = f
            .keys
            .rotate(&Caller::Admin, &key.id, grace(0))
            .await
            .unwrap()
            .record;
        assert_eq!(rotated.key.foreign_digest, None);
        assert_eq!(rotated.key.lookup_digest, None);
        assert_eq!(rotated.key.hash_name(), "argon2id");
        assert!(
            f.verifies(&rotated.key.secret_hash, rotated.secret.text())
                .await
        );
        assert_eq!(
            f.take_invalidations(),
            [
                Invalidation::Key(key.id.clone()),
                Invalidation::Unimported(keyed.clone()),
            ]
        );
        assert_eq!(f.deps.store.find_key_by_digest(&keyed).await.unwrap(), None);
    }

    #[tokio::test]
    async fn an_issued_key_imported_again_keeps_its_id_and_is_refused() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let issued = created(&f, new_key(&owner.id)).await;
        let error = f
            .keys
            .import(&Caller::Admin, import(&owner.id, issued.secret.text()))
            .await
            .unwrap_err();
        assert!(matches!(error, Error::AlreadyExists(_)), "{error}");
        let (id, profile) = {
            let parsed = f.deps.profiles.parse(issued.secret.text()).unwrap();
            (parsed.id.to_owned(), parsed.profile.to_owned())
        };
        assert_eq!(
            (id.as_str(), profile.as_str()),
            (issued.key.id.as_str(), "kg_live")
        );
    }

    #[tokio::test]
    async fn delete_removes_the_key_and_its_digest() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let imported = f
            .keys
            .import(&Caller::Admin, import(&owner.id, "legacy-secret"))
            .await
            .unwrap();
        let digest = imported.lookup_digest.clone().unwrap();
        f.take_invalidations();
        let caller = key_caller(&owner.id, MANAGER);
        let deleted = f.keys.delete(&caller, &imported.id).await.unwrap().record;
        assert_eq!(deleted, imported);
        assert_eq!(f.deps.store.get_key(&imported.id).await.unwrap(), None);
        assert_eq!(
            f.deps.store.find_key_by_digest(&digest).await.unwrap(),
            None
        );
        assert_eq!(
            f.take_invalidations(),
            [
                Invalidation::Key(imported.id.clone()),
                Invalidation::Unimported(digest),
            ]
        );
        let gone = f
            .keys
            .delete(&Caller::Admin, &imported.id)
            .await
            .unwrap_err();
        assert!(matches!(gone, Error::NotFound(_)), "{gone}");
        let blank = f.keys.delete(&Caller::Admin, "").await.unwrap_err();
        assert!(matches!(blank, Error::InvalidArgument(_)), "{blank}");
    }

    #[tokio::test]
    async fn keys_are_listed_per_owner_in_pages_and_by_state() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        let other = f.owner("bob").await;
        let mut ids = Vec::new();
        for _ in 0..3 {
            ids.push(created(&f, new_key(&owner.id)).await.key.id);
        }
        created(&f, new_key(&other.id)).await;
        ids.sort();
        f.keys.revoke(&Caller::Admin, &ids[1]).await.unwrap();
        let caller = key_caller(&owner.id, MANAGER);
        let first = Page {
            after: None,
            size: 2,
        };
        let page: Vec<_> = f
            .keys
            .list(&caller, &owner.id, None, &first)
            .await
            .unwrap()
            .into_iter()
            .map(|k| k.id)
            .collect();
        assert_eq!(page, ids[..2]);
        let next = Page {
            after: Some(ids[1].clone()),
            size: 2,
        };
        let rest = f.keys.list(&caller, &owner.id, None, &next).await.unwrap();
        assert_eq!(rest.len(), 1);
        let revoked = f
            .keys
            .list(&caller, &owner.id, Some(KeyState::Revoked), &first)
            .await
            .unwrap();
        assert_eq!(revoked.len(), 1);
        assert_eq!(revoked[0].id, ids[1]);
    }

    /// Writes that withdraw access wait for the replicas and say which did not confirm; a
    /// new key is only announced.
    #[tokio::test]
    async fn withdrawing_writes_are_confirmed_and_report_silent_replicas() {
        let f = Fixture::new().await;
        let owner = f.owner("alice").await;
        f.recorder.take_confirmed();
        let issued = created(&f, new_key(&owner.id)).await;
        assert!(
            f.recorder.take_confirmed().is_empty(),
            "a new key is not waited on"
        );
        let id = issued.key.id.clone();
        let rotated = f.keys.rotate(&Caller::Admin, &id, grace(0)).await.unwrap();
        assert!(rotated.propagation.unacknowledged.is_empty());
        f.recorder.silent_replicas(&["r2", "r3"]);
        let disabled = f
            .keys
            .update(
                &Caller::Admin,
                &id,
                KeyEdit {
                    disabled: Some(true),
                    ..KeyEdit::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(disabled.propagation.unacknowledged, ["r2", "r3"]);
        let revoked = f.keys.revoke(&Caller::Admin, &id).await.unwrap();
        assert_eq!(revoked.record.state, KeyState::Revoked);
        assert_eq!(revoked.propagation.unacknowledged_count(), 2);
        let deleted = f.keys.delete(&Caller::Admin, &id).await.unwrap();
        assert_eq!(deleted.propagation.unacknowledged_count(), 2);
        assert_eq!(
            f.recorder.take_confirmed(),
            vec![Invalidation::Key(id); 4],
            "rotate, disable, revoke and delete each waited"
        );
        let owner_disabled = f
            .owners
            .update(
                &Caller::Admin,
                &owner.id,
                OwnerUpdate {
                    state: Some(crate::model::OwnerState::Disabled),
                    ..OwnerUpdate::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(owner_disabled.propagation.unacknowledged_count(), 2);
        assert_eq!(
            f.recorder.take_confirmed(),
            [Invalidation::Owner(owner.id.clone())]
        );
    }
}
