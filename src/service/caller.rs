//! Who is calling the management API, and what they may touch.
//!
//! * The admin token (`authorization: Bearer <token>`, compared in constant time) may manage
//!   everything.
//! * An API key holding [`MANAGE_SCOPE`] may manage its own owner's keys, and grant only
//!   scopes it holds itself.
//! * With no admin token configured and the listener on loopback, calls without credentials
//!   are accepted as admin: a single-machine setup needs no token. Off loopback, keygate
//!   refuses to start without one.

use tonic::metadata::MetadataMap;

use crate::app::App;
use crate::error::{Error, Result};
use crate::model::{KeyState, OwnerState};
use crate::verify::MatchedSecret;

/// The scope that lets an API key manage its owner's keys.
pub const MANAGE_SCOPE: &str = "keygate:keys";

/// An authenticated management caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Full access.
    Admin,
    /// An API key acting for its owner.
    Owner {
        /// The owner it may act for.
        owner_id: String,
        /// Scopes the calling key holds; it may grant no others.
        scopes: Vec<String>,
    },
}

impl Caller {
    /// Refuses callers that are not admin.
    pub fn require_admin(&self) -> Result<()> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Owner { .. } => Err(Error::PermissionDenied(
                "this call needs the admin token; API keys may manage only their own owner's keys"
                    .into(),
            )),
        }
    }

    /// Refuses an owner-scoped caller acting for another owner.
    pub fn require_owner(&self, owner_id: &str) -> Result<()> {
        match self {
            Caller::Owner { owner_id: own, .. } if own != owner_id => Err(Error::PermissionDenied(
                "an API key may manage only its own owner's keys".into(),
            )),
            _ => Ok(()),
        }
    }

    /// Whether the caller may see this owner's records; others are reported as not found so
    /// that ids cannot be probed.
    pub fn can_see(&self, owner_id: &str) -> bool {
        match self {
            Caller::Admin => true,
            Caller::Owner { owner_id: own, .. } => own == owner_id,
        }
    }

    /// Refuses granting scopes the caller does not hold itself.
    pub fn require_grantable(&self, scopes: &[String]) -> Result<()> {
        if let Caller::Owner { scopes: held, .. } = self
            && let Some(missing) = scopes.iter().find(|s| !held.contains(s))
        {
            return Err(Error::PermissionDenied(format!(
                "the calling key cannot grant scope {missing:?}, which it does not hold"
            )));
        }
        Ok(())
    }
}

/// Authenticates the caller of a management RPC from its request metadata.
pub async fn authenticate(app: &App, metadata: &MetadataMap) -> Result<Caller> {
    let Some(header) = metadata.get("authorization") else {
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
    let invalid =
        || Error::Unauthenticated("the bearer token is not a valid admin token or API key".into());
    let now = app.clock.now();
    let verified = app.verifier.verify(token, now).await?.ok_or_else(invalid)?;
    let key = verified.key;
    let usable = verified.matched != MatchedSecret::PreviousExpired
        && key.state == KeyState::Active
        && key.expires_at.is_none_or(|t| t > now);
    if !usable {
        return Err(invalid());
    }
    let owner = app.store.get_owner(&key.owner_id).await?;
    if owner.is_none_or(|o| o.state != OwnerState::Active) {
        return Err(invalid());
    }
    if !key.scopes.iter().any(|s| s == MANAGE_SCOPE) {
        return Err(Error::PermissionDenied(format!(
            "this API key lacks the scope {MANAGE_SCOPE:?} needed to manage keys"
        )));
    }
    Ok(Caller::Owner {
        owner_id: key.owner_id,
        scopes: key.scopes,
    })
}
