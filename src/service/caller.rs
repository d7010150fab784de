//! Who is calling the management API. What each caller may then touch is decided by
//! [`crate::manage::Caller`]; this module only recognises the caller.
//!
//! * A client certificate naming one of `management.admin_identities` (mutual TLS) is
//!   admin, bearer token or not: a service mesh calls keygate without tokens.
//! * The admin token (`authorization: Bearer <token>`, compared in constant time) may manage
//!   everything.
//! * An API key holding [`MANAGE_SCOPE`] may manage its own owner's keys, and grant only
//!   scopes it holds itself.
//! * With neither an admin token nor admin identities configured and the listener on
//!   loopback, calls without credentials are accepted as admin: a single-machine setup
//!   needs no token. Off loopback, keygate refuses to start without one of them.

use std::sync::Arc;

use tonic::Request;

use crate::authz::decision::DecisionCode;
use crate::authz::engine::Authorizer;
use crate::authz::extract::bearer_token;
use crate::authz::keys::VerifiedKey;
use crate::error::{Error, Result};
use crate::manage::caller::ManagementConfig;
use crate::secrets::AdminToken;

pub use crate::manage::caller::{Caller, CallingKey, MANAGE_SCOPE};

/// What management authentication needs: the admin token and identities, whether
/// anonymous loopback calls are accepted, and the data plane to check API keys with.
pub struct ManagementAuth {
    /// Full-access token, if configured.
    pub admin_token: Option<AdminToken>,
    /// Client-certificate names that are admin.
    pub config: ManagementConfig,
    /// Whether calls without credentials are accepted: only when neither an admin token nor
    /// admin identities are configured and the management listener is on loopback.
    pub allow_anonymous: bool,
    /// Checks API keys presented as bearer tokens.
    pub authorizer: Arc<Authorizer>,
}

/// Authenticates the caller of a management RPC from its metadata and peer address.
pub async fn authenticate<T>(auth: &ManagementAuth, request: &Request<T>) -> Result<Caller> {
    let identity = super::peer_identity(request, &auth.config.admin_identities);
    if let Some(caller) = auth.config.caller_for(identity.as_ref()) {
        return Ok(caller);
    }
    let Some(header) = request.metadata().get("authorization") else {
        return if auth.allow_anonymous {
            Ok(Caller::Admin)
        } else {
            Err(Error::Unauthenticated(format!(
                "send `authorization: Bearer <admin token or API key with scope {MANAGE_SCOPE}>`"
            )))
        };
    };
    let token = header.to_str().ok().and_then(bearer_token).ok_or_else(|| {
        Error::Unauthenticated("the authorization header must be `Bearer <token>`".into())
    })?;
    if auth.admin_token.as_ref().is_some_and(|t| t.matches(token)) {
        return Ok(Caller::Admin);
    }
    // Otherwise the token must be an API key that the data-plane policy would let through
    // to a route requiring MANAGE_SCOPE, from this caller's address.
    let invalid =
        || Error::Unauthenticated("the bearer token is not a valid admin token or API key".into());
    let client_ip = request.remote_addr().map(|a| a.ip());
    let check = auth
        .authorizer
        .check_key(token, client_ip, &[MANAGE_SCOPE.to_owned()])
        .await?;
    match (check.code, check.key) {
        (DecisionCode::Ok, Some(key)) => Ok(Caller::Key(calling_key(&key.key))),
        (DecisionCode::InsufficientScope, _) => Err(Error::PermissionDenied(format!(
            "this API key lacks the scope {MANAGE_SCOPE:?} needed to manage keys"
        ))),
        (code @ (DecisionCode::PlanForbidden | DecisionCode::IpNotAllowed), _) => Err(
            Error::PermissionDenied(format!("{} ({})", code.default_message(), code.as_str())),
        ),
        _ => Err(invalid()),
    }
}

/// The authority of the verified API key `key` as a management caller.
fn calling_key(key: &VerifiedKey) -> CallingKey {
    CallingKey {
        id: key.id().to_owned(),
        owner_id: key.owner_id().to_owned(),
        scopes: key.scope_list(),
        plan: key.plan().map(str::to_owned),
        expires_at: key.expires_at,
        allowed_cidrs: key.allowed_cidrs().to_vec(),
    }
}
