//! `keygate.v1.KeyManager`: owners, plans and keys. Each RPC authenticates the caller,
//! validates the request, and changes the store in one atomic step.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::caller::{Caller, authenticate};
use super::convert::{self, from_duration, from_timestamp, name, next_page_token, required};
use crate::app::App;
use crate::clock::UnixTime;
use crate::error::{Error, Result};
use crate::invalidation::Invalidation;
use crate::key::format::{Alphabet, IssuedKey, KeyProfile};
use crate::model::{KeyKind, KeyRecord, KeyState, Owner, OwnerState, PreviousSecret};
use crate::proto::{self, key_manager_server::KeyManager};
use crate::store::{KeyChange, Quota};

/// Longest grace period a rotation may give the old secret.
const MAX_ROTATION_GRACE_SECS: u64 = 90 * 86_400;
/// Longest key accepted by ImportKey.
const MAX_IMPORTED_KEY_LEN: usize = 512;
/// Attempts at drawing an unused random key id before giving up.
const ID_ATTEMPTS: usize = 4;

/// The KeyManager gRPC service.
pub struct KeyManagerService {
    app: Arc<App>,
}

impl KeyManagerService {
    /// A service over the shared state.
    pub fn new(app: Arc<App>) -> Self {
        KeyManagerService { app }
    }

    fn owner_not_found(id: &str) -> Error {
        Error::NotFound(format!("owner {id:?} not found"))
    }

    fn key_not_found(id: &str) -> Error {
        Error::NotFound(format!("key {id:?} not found"))
    }

    /// The owner `id`, if the caller may see it.
    async fn visible_owner(&self, caller: &Caller, id: &str) -> Result<Owner> {
        let id = required("owner_id", id)?;
        match self.app.store.get_owner(id).await? {
            Some(owner) if caller.can_see(&owner.id) => Ok(owner),
            _ => Err(Self::owner_not_found(id)),
        }
    }

    /// The key `id`, if the caller may see it.
    async fn visible_key(&self, caller: &Caller, id: &str) -> Result<KeyRecord> {
        let id = required("id", id)?;
        match self.app.store.get_key(id).await? {
            Some(key) if caller.can_see(&key.owner_id) => Ok(key),
            _ => Err(Self::key_not_found(id)),
        }
    }

    /// Applies `change` to a key the caller may see, stamping `updated_at`.
    async fn change_key(
        &self,
        caller: &Caller,
        id: &str,
        change: impl Fn(&mut KeyRecord, UnixTime) -> Result<()> + Send + Sync + 'static,
    ) -> Result<KeyRecord> {
        let key = self.visible_key(caller, id).await?;
        let now = self.app.clock.now();
        let change: KeyChange = Arc::new(move |k: &mut KeyRecord| {
            change(k, now)?;
            k.updated_at = now;
            Ok(())
        });
        let updated = self.app.store.update_key(&key.id, change).await?;
        // Only after the change is stored: the next request must load the new record.
        self.app
            .invalidate(Invalidation::Key(updated.id.clone()))
            .await;
        if let Some(digest) = &key.lookup_digest
            && updated.lookup_digest.is_none()
        {
            self.app
                .invalidate(Invalidation::Unimported(digest.clone()))
                .await;
        }
        Ok(updated)
    }

    fn plan_name(&self, field: &str, plan: &str) -> Result<Option<String>> {
        let plan = plan.trim();
        if plan.is_empty() {
            return Ok(None);
        }
        if self.app.plans.get(plan).is_none() {
            let known = self.app.plans.names();
            return Err(Error::InvalidArgument(format!(
                "{field}: unknown plan {plan:?}; configured plans are {known:?}"
            )));
        }
        Ok(Some(plan.to_owned()))
    }

    fn profile(&self, name: &str) -> Result<&KeyProfile> {
        if name.trim().is_empty() {
            return Ok(self.app.profiles.default_profile());
        }
        self.app.profiles.get(name.trim()).ok_or_else(|| {
            let known: Vec<_> = self.app.profiles.iter().map(|p| p.name.as_str()).collect();
            Error::InvalidArgument(format!(
                "profile: unknown key profile {name:?}; configured profiles are {known:?}"
            ))
        })
    }

    /// The quota for a new key of `owner` (or of the key's own plan).
    fn quota(&self, owner: &Owner, key_plan: Option<&str>, now: UnixTime) -> Option<Quota> {
        let plan = self.app.plans.get(key_plan.unwrap_or(&owner.plan))?;
        (plan.max_active_keys > 0).then_some(Quota {
            max_active_keys: plan.max_active_keys,
            now,
        })
    }

    /// The owner a new key is created for: it must exist, be visible and be active.
    async fn owner_for_new_key(&self, caller: &Caller, owner_id: &str) -> Result<Owner> {
        let owner = self.visible_owner(caller, owner_id).await?;
        caller.require_owner(&owner.id)?;
        if owner.state != OwnerState::Active {
            return Err(Error::FailedPrecondition(format!(
                "owner {:?} is disabled; enable it before creating keys",
                owner.id
            )));
        }
        Ok(owner)
    }

    async fn create_owner_inner(
        &self,
        caller: &Caller,
        req: proto::CreateOwnerRequest,
    ) -> Result<proto::Owner> {
        caller.require_admin()?;
        let now = self.app.clock.now();
        let owner = Owner {
            id: format!("own_{}", &*Alphabet::Base62.random(16)),
            external_id: name("external_id", &req.external_id)?,
            display_name: name("display_name", &req.display_name)?,
            state: OwnerState::Active,
            plan: self
                .plan_name("plan", &req.plan)?
                .unwrap_or_else(|| self.app.plans.default_name().to_owned()),
            metadata: convert::metadata(&req.metadata)?,
            created_at: now,
            updated_at: now,
        };
        self.app.store.create_owner(&owner).await?;
        Ok((&owner).into())
    }

    async fn list_owners_inner(
        &self,
        caller: &Caller,
        req: proto::ListOwnersRequest,
    ) -> Result<proto::ListOwnersResponse> {
        caller.require_admin()?;
        let size = convert::page_size(req.page_size)?;
        let after = convert::parse_page_token(&req.page_token)?;
        let owners = self.app.store.list_owners(after.as_deref(), size).await?;
        Ok(proto::ListOwnersResponse {
            next_page_token: next_page_token(&owners, size),
            owners: owners.iter().map(Into::into).collect(),
        })
    }

    async fn update_owner_inner(
        &self,
        caller: &Caller,
        req: proto::UpdateOwnerRequest,
    ) -> Result<proto::Owner> {
        caller.require_admin()?;
        let patch = req
            .owner
            .ok_or_else(|| Error::InvalidArgument("owner is required".into()))?;
        let paths = mask_paths(
            req.update_mask,
            &["display_name", "plan", "state", "metadata"],
        )?;
        let mut display_name = None;
        let mut plan = None;
        let mut state = None;
        let mut metadata = None;
        for path in &paths {
            match path.as_str() {
                "display_name" => {
                    display_name = Some(name("owner.display_name", &patch.display_name)?)
                }
                "plan" => {
                    plan = Some(self.plan_name("owner.plan", &patch.plan)?.ok_or_else(|| {
                        Error::InvalidArgument("owner.plan must name a configured plan".into())
                    })?)
                }
                "state" => state = Some(convert::owner_state(patch.state)?),
                _ => metadata = Some(convert::metadata(&patch.metadata)?),
            }
        }
        let id = required("owner.id", &patch.id)?.to_owned();
        let now = self.app.clock.now();
        let owner = self
            .app
            .store
            .update_owner(
                &id,
                Arc::new(move |o| {
                    if let Some(v) = &display_name {
                        o.display_name = v.clone();
                    }
                    if let Some(v) = &plan {
                        o.plan = v.clone();
                    }
                    if let Some(v) = state {
                        o.state = v;
                    }
                    if let Some(v) = &metadata {
                        o.metadata = v.clone();
                    }
                    o.updated_at = now;
                    Ok(())
                }),
            )
            .await?;
        self.app
            .invalidate(Invalidation::Owner(owner.id.clone()))
            .await;
        Ok((&owner).into())
    }

    async fn create_key_inner(
        &self,
        caller: &Caller,
        req: proto::CreateKeyRequest,
    ) -> Result<proto::CreateKeyResponse> {
        let now = self.app.clock.now();
        let owner_id = match (caller, req.owner_id.trim()) {
            (Caller::Owner { owner_id, .. }, "") => owner_id.clone(),
            (_, id) => id.to_owned(),
        };
        let name = name("name", &req.name)?;
        let scopes = convert::scopes(&req.scopes)?;
        caller.require_grantable(&scopes)?;
        let allowed_cidrs = convert::cidrs(&req.allowed_cidrs)?;
        let metadata = convert::metadata(&req.metadata)?;
        let expires_at = expiry(req.expiry, now)?;
        let plan = self.plan_name("plan", &req.plan)?;
        let profile = self.profile(&req.profile)?.clone();
        let owner = self.owner_for_new_key(caller, &owner_id).await?;
        let quota = self.quota(&owner, plan.as_deref(), now);
        let activation_code = req.require_activation.then(|| Alphabet::Base62.random(12));

        for _ in 0..ID_ATTEMPTS {
            let id = profile.new_key_id();
            let issued = profile.issue(&id);
            let record = KeyRecord {
                id,
                owner_id: owner.id.clone(),
                name: name.clone(),
                profile: Some(profile.name.clone()),
                prefix: Some(profile.prefix.clone()),
                kind: if req.pair {
                    KeyKind::Pair
                } else {
                    KeyKind::Single
                },
                scopes: scopes.clone(),
                plan: plan.clone(),
                allowed_cidrs: allowed_cidrs.clone(),
                metadata: metadata.clone(),
                state: if activation_code.is_some() {
                    KeyState::PendingActivation
                } else {
                    KeyState::Active
                },
                secret_hash: self.hash(issued.text()).await?,
                lookup_digest: None,
                previous_secret: None,
                activation_digest: activation_code
                    .as_ref()
                    .map(|code| self.app.pepper.digest(code.as_bytes()).to_hex()),
                created_at: now,
                updated_at: now,
                expires_at,
                revoked_at: None,
                last_used_at: None,
                usage_count: 0,
            };
            match self.app.store.insert_key(&record, quota).await {
                Ok(()) => {
                    let mut answer = secret_answer(&record, &issued);
                    answer.activation_code =
                        activation_code.map(|c| c.to_string()).unwrap_or_default();
                    return Ok(answer);
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

    async fn hash(&self, secret: &str) -> Result<String> {
        self.app
            .hasher
            .hash(secret)
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))
    }

    async fn activate_key_inner(
        &self,
        caller: &Caller,
        req: proto::ActivateKeyRequest,
    ) -> Result<proto::Key> {
        let code = required("activation_code", &req.activation_code)?;
        let presented = self.app.pepper.digest(code.as_bytes()).to_hex();
        let key = self
            .change_key(caller, &req.id, move |k, _| {
                if k.state != KeyState::PendingActivation {
                    return Err(Error::FailedPrecondition(format!(
                        "key {:?} is not pending activation",
                        k.id
                    )));
                }
                let expected = k.activation_digest.as_deref().unwrap_or_default();
                if !crate::key::hash::secrets_equal(expected.as_bytes(), presented.as_bytes()) {
                    return Err(Error::InvalidArgument(
                        "activation_code is not the code issued for this key".into(),
                    ));
                }
                k.state = KeyState::Active;
                k.activation_digest = None;
                Ok(())
            })
            .await?;
        Ok((&key).into())
    }

    async fn list_keys_inner(
        &self,
        caller: &Caller,
        req: proto::ListKeysRequest,
    ) -> Result<proto::ListKeysResponse> {
        let owner = self.visible_owner(caller, &req.owner_id).await?;
        let state = convert::key_state_filter(req.state)?;
        let size = convert::page_size(req.page_size)?;
        let after = convert::parse_page_token(&req.page_token)?;
        let keys = self
            .app
            .store
            .list_keys(&owner.id, state, after.as_deref(), size)
            .await?;
        Ok(proto::ListKeysResponse {
            next_page_token: next_page_token(&keys, size),
            keys: keys.iter().map(Into::into).collect(),
        })
    }

    async fn update_key_inner(
        &self,
        caller: &Caller,
        req: proto::UpdateKeyRequest,
    ) -> Result<proto::Key> {
        let patch = req
            .key
            .ok_or_else(|| Error::InvalidArgument("key is required".into()))?;
        let paths = mask_paths(
            req.update_mask,
            &[
                "name",
                "scopes",
                "allowed_cidrs",
                "metadata",
                "expire_time",
                "disabled",
            ],
        )?;
        let now = self.app.clock.now();
        let mut edit = KeyEdit::default();
        for path in &paths {
            match path.as_str() {
                "name" => edit.name = Some(name("key.name", &patch.name)?),
                "scopes" => {
                    let scopes = convert::scopes(&patch.scopes)?;
                    caller.require_grantable(&scopes)?;
                    edit.scopes = Some(scopes);
                }
                "allowed_cidrs" => edit.allowed_cidrs = Some(convert::cidrs(&patch.allowed_cidrs)?),
                "metadata" => edit.metadata = Some(convert::metadata(&patch.metadata)?),
                "expire_time" => {
                    edit.expires_at = Some(match &patch.expire_time {
                        Some(t) => Some(future(
                            "key.expire_time",
                            from_timestamp("key.expire_time", t)?,
                            now,
                        )?),
                        None => None,
                    })
                }
                _ => edit.disabled = Some(req.disabled),
            }
        }
        let key = self
            .change_key(caller, &patch.id, move |k, _| edit.apply(k))
            .await?;
        Ok((&key).into())
    }

    async fn revoke_key_inner(&self, caller: &Caller, id: &str) -> Result<proto::Key> {
        let key = self
            .change_key(caller, id, |k, now| {
                if k.state != KeyState::Revoked {
                    k.state = KeyState::Revoked;
                    k.revoked_at = Some(now);
                    k.previous_secret = None;
                    k.activation_digest = None;
                }
                Ok(())
            })
            .await?;
        Ok((&key).into())
    }

    async fn rotate_key_inner(
        &self,
        caller: &Caller,
        req: proto::RotateKeyRequest,
    ) -> Result<proto::CreateKeyResponse> {
        let grace = match &req.grace {
            Some(d) => from_duration("grace", d)?.as_secs(),
            None => 0,
        };
        if grace > MAX_ROTATION_GRACE_SECS {
            return Err(Error::InvalidArgument(format!(
                "grace may be at most {} days",
                MAX_ROTATION_GRACE_SECS / 86_400
            )));
        }
        let current = self.visible_key(caller, &req.id).await?;
        if current.state == KeyState::Revoked {
            return Err(Error::FailedPrecondition(format!(
                "key {:?} is revoked; create a new key instead",
                current.id
            )));
        }
        let profile = match &current.profile {
            Some(name) => self.app.profiles.get(name).ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "key {:?} was issued with profile {name:?}, which is no longer configured",
                    current.id
                ))
            })?,
            None => self.app.profiles.default_profile(),
        }
        .clone();
        let issued = profile.issue(&current.id);
        let new_hash = self.hash(issued.text()).await?;
        let kind = match current.kind {
            KeyKind::Imported => KeyKind::Single,
            kind => kind,
        };
        let key = self
            .change_key(caller, &current.id, move |k, now| {
                if k.state == KeyState::Revoked {
                    return Err(Error::FailedPrecondition(format!(
                        "key {:?} is revoked; create a new key instead",
                        k.id
                    )));
                }
                let old_hash = std::mem::replace(&mut k.secret_hash, new_hash.clone());
                k.previous_secret = (grace > 0).then(|| PreviousSecret {
                    hash: old_hash,
                    expires_at: now + grace as i64,
                });
                if grace == 0 {
                    k.lookup_digest = None;
                }
                k.profile = Some(profile.name.clone());
                k.prefix = Some(profile.prefix.clone());
                k.kind = kind;
                Ok(())
            })
            .await?;
        Ok(secret_answer(&key, &issued))
    }

    async fn import_key_inner(
        &self,
        caller: &Caller,
        req: proto::ImportKeyRequest,
    ) -> Result<proto::Key> {
        let now = self.app.clock.now();
        let secret = req.secret.as_str();
        if secret.is_empty()
            || secret.len() > MAX_IMPORTED_KEY_LEN
            || !secret.bytes().all(|c| c.is_ascii_graphic())
        {
            return Err(Error::InvalidArgument(format!(
                "secret must be 1 to {MAX_IMPORTED_KEY_LEN} printable ASCII characters without spaces, exactly as clients send it"
            )));
        }
        let scopes = convert::scopes(&req.scopes)?;
        caller.require_grantable(&scopes)?;
        let plan = self.plan_name("plan", &req.plan)?;
        let expires_at = req
            .expire_time
            .as_ref()
            .map(|t| from_timestamp("expire_time", t))
            .transpose()?;
        let created_at = req
            .create_time
            .as_ref()
            .map(|t| from_timestamp("create_time", t))
            .transpose()?
            .unwrap_or(now);
        let owner = self.owner_for_new_key(caller, &req.owner_id).await?;
        // A key already in a configured profile's format keeps its embedded id, so it is found
        // like any issued key; anything else gets a random id and is found by its digest.
        let (id, profile) = match self.app.profiles.parse(secret) {
            Ok(parsed) => (
                parsed.id.to_owned(),
                self.app.profiles.get(parsed.profile).cloned(),
            ),
            Err(_) => (Alphabet::Base62.random(12).to_string(), None),
        };
        let record = KeyRecord {
            id,
            owner_id: owner.id.clone(),
            name: name("name", &req.name)?,
            prefix: profile.as_ref().map(|p| p.prefix.clone()),
            profile: profile.map(|p| p.name),
            kind: KeyKind::Imported,
            scopes,
            plan: plan.clone(),
            allowed_cidrs: convert::cidrs(&req.allowed_cidrs)?,
            metadata: convert::metadata(&req.metadata)?,
            state: KeyState::Active,
            secret_hash: self.hash(secret).await?,
            lookup_digest: Some(self.app.pepper.digest(secret.as_bytes()).to_hex()),
            previous_secret: None,
            activation_digest: None,
            created_at,
            updated_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
            usage_count: 0,
        };
        self.app
            .store
            .insert_key(&record, self.quota(&owner, plan.as_deref(), now))
            .await
            .map_err(|e| match e {
                Error::AlreadyExists(_) => {
                    Error::AlreadyExists("this key has been imported or issued already".into())
                }
                other => other,
            })?;
        if let Some(digest) = &record.lookup_digest {
            self.app
                .invalidate(Invalidation::Imported(digest.clone()))
                .await;
        }
        Ok((&record).into())
    }
}

/// The fields UpdateKey changes; `None` leaves a field as it is.
#[derive(Default)]
struct KeyEdit {
    name: Option<String>,
    scopes: Option<Vec<String>>,
    allowed_cidrs: Option<Vec<ipnet::IpNet>>,
    metadata: Option<std::collections::BTreeMap<String, String>>,
    expires_at: Option<Option<UnixTime>>,
    disabled: Option<bool>,
}

impl KeyEdit {
    fn apply(&self, k: &mut KeyRecord) -> Result<()> {
        if k.state == KeyState::Revoked {
            return Err(Error::FailedPrecondition(format!(
                "key {:?} is revoked and can no longer be changed",
                k.id
            )));
        }
        match (self.disabled, k.state) {
            (Some(true), KeyState::Active) => k.state = KeyState::Disabled,
            (Some(false), KeyState::Disabled) => k.state = KeyState::Active,
            (Some(false), KeyState::PendingActivation) => {
                return Err(Error::FailedPrecondition(format!(
                    "key {:?} is pending activation; activate it with its code",
                    k.id
                )));
            }
            _ => {}
        }
        if let Some(v) = &self.name {
            k.name = v.clone();
        }
        if let Some(v) = &self.scopes {
            k.scopes = v.clone();
        }
        if let Some(v) = &self.allowed_cidrs {
            k.allowed_cidrs = v.clone();
        }
        if let Some(v) = &self.metadata {
            k.metadata = v.clone();
        }
        if let Some(v) = self.expires_at {
            k.expires_at = v;
        }
        Ok(())
    }
}

/// The answer that carries a newly issued secret, the only place it ever appears.
fn secret_answer(key: &KeyRecord, issued: &IssuedKey) -> proto::CreateKeyResponse {
    let mut answer = proto::CreateKeyResponse {
        key: Some(key.into()),
        ..Default::default()
    };
    if key.kind == KeyKind::Pair {
        let (api_key, api_secret) = issued.split_pair();
        answer.api_key = api_key.to_owned();
        answer.api_secret = api_secret.to_owned();
    } else {
        answer.secret = issued.text().to_owned();
    }
    answer
}

/// The paths of a field mask, each checked against `allowed`; an empty mask is refused.
fn mask_paths(mask: Option<prost_types::FieldMask>, allowed: &[&str]) -> Result<Vec<String>> {
    let paths = mask.map(|m| m.paths).unwrap_or_default();
    if paths.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "update_mask must name at least one of {allowed:?}"
        )));
    }
    for path in &paths {
        if !allowed.contains(&path.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "update_mask: {path:?} cannot be updated; updatable fields are {allowed:?}"
            )));
        }
    }
    Ok(paths)
}

/// `t` if it lies after `now`.
fn future(field: &str, t: UnixTime, now: UnixTime) -> Result<UnixTime> {
    if t <= now {
        return Err(Error::InvalidArgument(format!(
            "{field} must be in the future"
        )));
    }
    Ok(t)
}

/// The expiry a CreateKey request asks for.
fn expiry(
    expiry: Option<proto::create_key_request::Expiry>,
    now: UnixTime,
) -> Result<Option<UnixTime>> {
    use proto::create_key_request::Expiry;
    match expiry {
        None => Ok(None),
        Some(Expiry::ExpireTime(t)) => Ok(Some(future(
            "expire_time",
            from_timestamp("expire_time", &t)?,
            now,
        )?)),
        Some(Expiry::ExpireInDays(0)) => Err(Error::InvalidArgument(
            "expire_in_days must be at least 1; leave it unset for a key that does not expire"
                .into(),
        )),
        Some(Expiry::ExpireInDays(days)) if days > 36_500 => Err(Error::InvalidArgument(
            "expire_in_days must be at most 36500 (100 years)".into(),
        )),
        Some(Expiry::ExpireInDays(days)) => Ok(Some(now + i64::from(days) * 86_400)),
    }
}

/// Authenticates, then runs one RPC's body, mapping its error to a status.
macro_rules! rpc {
    ($self:ident, $request:ident, |$caller:ident, $req:ident| $body:expr) => {{
        let $caller = authenticate(&$self.app.management_auth, &$request).await?;
        let $req = $request.into_inner();
        let answer: Result<_> = $body.await;
        Ok(Response::new(answer?))
    }};
}

#[tonic::async_trait]
impl KeyManager for KeyManagerService {
    async fn create_owner(
        &self,
        request: Request<proto::CreateOwnerRequest>,
    ) -> Result<Response<proto::Owner>, Status> {
        rpc!(self, request, |caller, req| self
            .create_owner_inner(&caller, req))
    }

    async fn get_owner(
        &self,
        request: Request<proto::GetOwnerRequest>,
    ) -> Result<Response<proto::Owner>, Status> {
        rpc!(self, request, |caller, req| async {
            Ok((&self.visible_owner(&caller, &req.id).await?).into())
        })
    }

    async fn list_owners(
        &self,
        request: Request<proto::ListOwnersRequest>,
    ) -> Result<Response<proto::ListOwnersResponse>, Status> {
        rpc!(self, request, |caller, req| self
            .list_owners_inner(&caller, req))
    }

    async fn update_owner(
        &self,
        request: Request<proto::UpdateOwnerRequest>,
    ) -> Result<Response<proto::Owner>, Status> {
        rpc!(self, request, |caller, req| self
            .update_owner_inner(&caller, req))
    }

    async fn list_plans(
        &self,
        request: Request<proto::ListPlansRequest>,
    ) -> Result<Response<proto::ListPlansResponse>, Status> {
        rpc!(self, request, |_caller, _req| async {
            Ok(proto::ListPlansResponse {
                plans: self.app.plans.all().iter().map(Into::into).collect(),
                default_plan: self.app.plans.default_name().to_owned(),
            })
        })
    }

    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        rpc!(self, request, |caller, req| self
            .create_key_inner(&caller, req))
    }

    async fn activate_key(
        &self,
        request: Request<proto::ActivateKeyRequest>,
    ) -> Result<Response<proto::Key>, Status> {
        rpc!(self, request, |caller, req| self
            .activate_key_inner(&caller, req))
    }

    async fn get_key(
        &self,
        request: Request<proto::GetKeyRequest>,
    ) -> Result<Response<proto::Key>, Status> {
        rpc!(self, request, |caller, req| async {
            Ok((&self.visible_key(&caller, &req.id).await?).into())
        })
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Result<Response<proto::ListKeysResponse>, Status> {
        rpc!(self, request, |caller, req| self
            .list_keys_inner(&caller, req))
    }

    async fn update_key(
        &self,
        request: Request<proto::UpdateKeyRequest>,
    ) -> Result<Response<proto::Key>, Status> {
        rpc!(self, request, |caller, req| self
            .update_key_inner(&caller, req))
    }

    async fn revoke_key(
        &self,
        request: Request<proto::RevokeKeyRequest>,
    ) -> Result<Response<proto::Key>, Status> {
        rpc!(self, request, |caller, req| self
            .revoke_key_inner(&caller, &req.id))
    }

    async fn rotate_key(
        &self,
        request: Request<proto::RotateKeyRequest>,
    ) -> Result<Response<proto::CreateKeyResponse>, Status> {
        rpc!(self, request, |caller, req| self
            .rotate_key_inner(&caller, req))
    }

    async fn delete_key(
        &self,
        request: Request<proto::DeleteKeyRequest>,
    ) -> Result<Response<proto::DeleteKeyResponse>, Status> {
        rpc!(self, request, |caller, req| async {
            let key = self.visible_key(&caller, &req.id).await?;
            let deleted = self.app.store.delete_key(&key.id).await?;
            self.app
                .invalidate(Invalidation::Key(deleted.id.clone()))
                .await;
            if let Some(digest) = &deleted.lookup_digest {
                self.app
                    .invalidate(Invalidation::Unimported(digest.clone()))
                    .await;
            }
            Ok(proto::DeleteKeyResponse {})
        })
    }

    async fn import_key(
        &self,
        request: Request<proto::ImportKeyRequest>,
    ) -> Result<Response<proto::Key>, Status> {
        rpc!(self, request, |caller, req| self
            .import_key_inner(&caller, req))
    }
}
