//! Who is calling the management API. What each caller may then touch is decided by
//! [`crate::manage::Caller`]; this module only recognises the caller.
//!
//! * The admin token (`authorization: Bearer <token>`, compared in constant time) may manage
//!   everything.
//! * An API key holding [`MANAGE_SCOPE`] may manage its own owner's keys, and grant only
//!   scopes it holds itself.
//! * With no admin token configured and the listener on loopback, calls without credentials
//!   are accepted as admin: a single-machine setup needs no token. Off loopback, keygate
//!   refuses to start without one.

use tonic::Request;

use crate::app::App;
use crate::authz::decision::DecisionCode;
use crate::authz::policy::{RequestFacts, effective_plan, evaluate};
use crate::error::{Error, Result};
pub use crate::manage::caller::{Caller, MANAGE_SCOPE};

/// Authenticates the caller of a management RPC from its metadata and peer address.
pub async fn authenticate<T>(app: &App, request: &Request<T>) -> Result<Caller> {
    let Some(header) = request.metadata().get("authorization") else {
        return if app.allow_anonymous_management {
            Ok(Caller::Admin)
        } else {
            Err(Error::Unauthenticated(format!(
                "send `authorization: Bearer <admin token or API key with scope {MANAGE_SCOPE}>`"
            )))
        };
    };
    let token = header
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            Error::Unauthenticated("the authorization header must be `Bearer <token>`".into())
        })?;
    if app.admin_token.as_ref().is_some_and(|t| t.matches(token)) {
        return Ok(Caller::Admin);
    }
    // Otherwise the token must be an API key that the data-plane policy would let through
    // to a route requiring MANAGE_SCOPE, from this caller's address.
    let invalid =
        || Error::Unauthenticated("the bearer token is not a valid admin token or API key".into());
    let cached = app.keys.verify(token).await?.key.ok_or_else(invalid)?;
    let key = &cached.key;
    let owner = app.keys.owner(&key.owner_id).await?;
    let plan = effective_plan(key, owner.as_ref()).and_then(|name| app.plans.get(name));
    let required = [MANAGE_SCOPE.to_owned()];
    let facts = RequestFacts {
        client_ip: request.remote_addr().map(|a| a.ip()),
        required_scopes: &required,
    };
    match evaluate(
        key,
        cached.matched,
        owner.as_ref(),
        plan,
        &facts,
        app.clock.now(),
    ) {
        DecisionCode::Ok => Ok(Caller::Owner {
            owner_id: key.owner_id.clone(),
            scopes: key.scopes.clone(),
        }),
        DecisionCode::InsufficientScope => Err(Error::PermissionDenied(format!(
            "this API key lacks the scope {MANAGE_SCOPE:?} needed to manage keys"
        ))),
        code @ (DecisionCode::PlanForbidden | DecisionCode::IpNotAllowed) => Err(
            Error::PermissionDenied(format!("{} ({})", code.default_message(), code.as_str())),
        ),
        _ => Err(invalid()),
    }
}
