//! `keygate.v1.KeyManager`: owners, plans and keys over gRPC. Each handler authenticates
//! the caller, converts the request to a typed input, calls the management plane
//! ([`crate::manage`]), which owns every rule, and converts the record back. Errors become
//! statuses through the one `From<Error> for Status`.
//!
//! A call that changes or deletes a record (UpdateOwner, UpdatePlan, DeletePlan, ActivateKey,
//! UpdateKey, RevokeKey, RotateKey, DeleteKey) answers once every live replica dropped what
//! it cached about it,
//! or the bounded wait ended (see [`crate::invalidation`]); its response metadata
//! [`UNACKNOWLEDGED_REPLICAS`] says how many live replicas did not confirm in time (0 when
//! all did). The change is stored either way.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use tonic::{Request, Response, Status};

use super::ManagementPlane;
use super::caller::authenticate;
use super::convert::{self, next_page_token};
use crate::manage::{UsageOf, Written};
use crate::model::KeyRecord;
use crate::proto::{self, key_manager_server::KeyManager};

/// The KeyManager gRPC service.
pub struct KeyManagerService {
    plane: Arc<ManagementPlane>,
}

impl KeyManagerService {
    /// A service over the management plane.
    pub fn new(plane: Arc<ManagementPlane>) -> Self {
        KeyManagerService { plane }
    }
}

type Answer<T> = Result<Response<T>, Status>;

/// How many keys of a page have their credit balance read at once.
const CONCURRENT_BALANCES: usize = 32;

impl KeyManagerService {
    /// `record` as answered: its credits show the live balance, not the grant.
    async fn key(&self, record: &KeyRecord) -> Result<proto::Key, Status> {
        let mut key = proto::Key::from(record);
        if let (Some(credits), Some(left)) = (
            key.credits.as_mut(),
            self.plane.keys.credits_left(record).await?,
        ) {
            credits.remaining = left;
        }
        Ok(key)
    }

    /// Each of `records` as answered (see [`KeyManagerService::key`]), in order. The live
    /// balances are asked for `CONCURRENT_BALANCES` keys at a time, so a page of keys with
    /// credits costs the Redis limiter a few round trips, not one per key.
    async fn keys(&self, records: &[KeyRecord]) -> Result<Vec<proto::Key>, Status> {
        // The futures are made first: a stream mapping each record to its future makes the
        // closure's lifetime too narrow for the `Send` bound tonic puts on the handler.
        let answers: Vec<_> = records.iter().map(|record| self.key(record)).collect();
        futures_util::stream::iter(answers)
            .buffered(CONCURRENT_BALANCES)
            .try_collect()
            .await
    }
}

/// Response metadata: how many live replicas did not confirm dropping the changed record
/// within `invalidation.ack_timeout`.
pub const UNACKNOWLEDGED_REPLICAS: &str = "x-keygate-unacknowledged-replicas";

/// The answer to a write: `message`, with the number of replicas `written` did not reach.
fn written<R, T>(written: &Written<R>, message: T) -> Response<T> {
    let mut response = Response::new(message);
    response.metadata_mut().insert(
        UNACKNOWLEDGED_REPLICAS,
        written.propagation.unacknowledged_count().into(),
    );
    response
}

#[tonic::async_trait]
impl KeyManager for KeyManagerService {
    async fn create_owner(
        &self,
        request: Request<proto::CreateOwnerRequest>,
    ) -> Answer<proto::Owner> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let new = convert::new_owner(request.into_inner())?;
        let owner = self.plane.owners.create(&caller, new).await?;
        Ok(Response::new((&owner).into()))
    }

    async fn get_owner(&self, request: Request<proto::GetOwnerRequest>) -> Answer<proto::Owner> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let owner = self
            .plane
            .owners
            .get(&caller, &request.get_ref().id)
            .await?;
        Ok(Response::new((&owner).into()))
    }

    async fn list_owners(
        &self,
        request: Request<proto::ListOwnersRequest>,
    ) -> Answer<proto::ListOwnersResponse> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let req = request.into_inner();
        let page = convert::page(req.page_size, &req.page_token)?;
        let owners = self.plane.owners.list(&caller, &page).await?;
        Ok(Response::new(proto::ListOwnersResponse {
            next_page_token: next_page_token(&owners, page.size),
            owners: owners.iter().map(Into::into).collect(),
        }))
    }

    async fn update_owner(
        &self,
        request: Request<proto::UpdateOwnerRequest>,
    ) -> Answer<proto::Owner> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let (id, update) = convert::owner_update(request.into_inner())?;
        let owner = self.plane.owners.update(&caller, &id, update).await?;
        Ok(written(&owner, (&owner.record).into()))
    }

    async fn create_plan(&self, request: Request<proto::CreatePlanRequest>) -> Answer<proto::Plan> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let plan = convert::new_plan(request.into_inner())?;
        let plan = self.plane.plans.create(&caller, plan).await?;
        Ok(Response::new((&plan).into()))
    }

    async fn get_plan(&self, request: Request<proto::GetPlanRequest>) -> Answer<proto::Plan> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let plan = self
            .plane
            .plans
            .get(&caller, &request.get_ref().name)
            .await?;
        Ok(Response::new((&plan).into()))
    }

    async fn list_plans(
        &self,
        request: Request<proto::ListPlansRequest>,
    ) -> Answer<proto::ListPlansResponse> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let listed = self.plane.plans.list(&caller).await?;
        Ok(Response::new(proto::ListPlansResponse {
            plans: listed.plans.iter().map(Into::into).collect(),
            default_plan: listed.default_plan,
        }))
    }

    async fn update_plan(&self, request: Request<proto::UpdatePlanRequest>) -> Answer<proto::Plan> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let (name, update) = convert::plan_update(request.into_inner())?;
        let plan = self.plane.plans.update(&caller, &name, update).await?;
        Ok(written(&plan, (&plan.record).into()))
    }

    async fn delete_plan(
        &self,
        request: Request<proto::DeletePlanRequest>,
    ) -> Answer<proto::DeletePlanResponse> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let deleted = self
            .plane
            .plans
            .delete(&caller, &request.get_ref().name)
            .await?;
        Ok(written(&deleted, proto::DeletePlanResponse {}))
    }

    async fn create_key(
        &self,
        request: Request<proto::CreateKeyRequest>,
    ) -> Answer<proto::CreateKeyResponse> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let new = convert::new_key(request.into_inner())?;
        let issued = self.plane.keys.create(&caller, new).await?;
        Ok(Response::new(convert::issued(&issued)))
    }

    async fn activate_key(
        &self,
        request: Request<proto::ActivateKeyRequest>,
    ) -> Answer<proto::Key> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let req = request.get_ref();
        let key = self
            .plane
            .keys
            .activate(&caller, &req.id, &req.activation_code)
            .await?;
        Ok(written(&key, self.key(&key.record).await?))
    }

    async fn get_key(&self, request: Request<proto::GetKeyRequest>) -> Answer<proto::Key> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let key = self.plane.keys.get(&caller, &request.get_ref().id).await?;
        Ok(Response::new(self.key(&key).await?))
    }

    async fn list_keys(
        &self,
        request: Request<proto::ListKeysRequest>,
    ) -> Answer<proto::ListKeysResponse> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let req = request.into_inner();
        let state = convert::key_state_filter(req.state)?;
        let page = convert::page(req.page_size, &req.page_token)?;
        let keys = self
            .plane
            .keys
            .list(&caller, &req.owner_id, state, &page)
            .await?;
        Ok(Response::new(proto::ListKeysResponse {
            next_page_token: next_page_token(&keys, page.size),
            keys: self.keys(&keys).await?,
        }))
    }

    async fn update_key(&self, request: Request<proto::UpdateKeyRequest>) -> Answer<proto::Key> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let (id, edit) = convert::key_edit(request.into_inner())?;
        let key = self.plane.keys.update(&caller, &id, edit).await?;
        Ok(written(&key, self.key(&key.record).await?))
    }

    async fn revoke_key(&self, request: Request<proto::RevokeKeyRequest>) -> Answer<proto::Key> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let key = self
            .plane
            .keys
            .revoke(&caller, &request.get_ref().id)
            .await?;
        Ok(written(&key, self.key(&key.record).await?))
    }

    async fn rotate_key(
        &self,
        request: Request<proto::RotateKeyRequest>,
    ) -> Answer<proto::CreateKeyResponse> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let req = request.get_ref();
        let rotation = convert::rotation(req.grace.as_ref())?;
        let issued = self.plane.keys.rotate(&caller, &req.id, rotation).await?;
        Ok(written(&issued, convert::issued(&issued.record)))
    }

    async fn delete_key(
        &self,
        request: Request<proto::DeleteKeyRequest>,
    ) -> Answer<proto::DeleteKeyResponse> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let deleted = self
            .plane
            .keys
            .delete(&caller, &request.get_ref().id)
            .await?;
        Ok(written(&deleted, proto::DeleteKeyResponse {}))
    }

    async fn import_key(&self, request: Request<proto::ImportKeyRequest>) -> Answer<proto::Key> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let import = convert::import(request.into_inner())?;
        let key = self.plane.keys.import(&caller, import).await?;
        Ok(Response::new(self.key(&key).await?))
    }

    async fn get_key_usage(
        &self,
        request: Request<proto::GetKeyUsageRequest>,
    ) -> Answer<proto::GetKeyUsageResponse> {
        let caller = authenticate(&self.plane.auth, &request).await?;
        let req = request.into_inner();
        let of = match (req.key_id.trim(), req.owner_id.trim()) {
            (key, "") if !key.is_empty() => UsageOf::Key(key),
            ("", owner) if !owner.is_empty() => UsageOf::Owner(owner),
            _ => {
                return Err(Status::invalid_argument(
                    "give exactly one of key_id and owner_id",
                ));
            }
        };
        let first = convert::date("start_date", &req.start_date)?;
        let last = convert::date("end_date", &req.end_date)?;
        let report = self.plane.usage.report(&caller, of, first, last).await?;
        Ok(Response::new(report.into()))
    }
}
