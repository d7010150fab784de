//! The gRPC adapters: each handler authenticates (management), converts the message into
//! the planes' terms, calls them and converts the answer back. No rule lives here.

pub mod authorizer;
pub mod caller;
pub mod convert;
pub mod ext_authz;
pub mod key_manager;

use std::sync::Arc;

use crate::authz::engine::Authorizer;
use crate::authz::extract::CredentialSource;
use crate::authz::response::Responder;
use crate::manage::{Keys, Owners};
use caller::ManagementAuth;

/// What the data-plane adapters (Check, Authorize) share: the decision maker, where
/// credentials are read, and how answers are written.
pub struct DataPlane {
    /// Decides.
    pub authorizer: Arc<Authorizer>,
    /// Where credentials are looked for, in order.
    pub credentials: Vec<CredentialSource>,
    /// Writes answers.
    pub responder: Responder,
}

/// What the management adapter uses: how callers are authenticated, and the owner and key
/// services that decide what they may do.
pub struct ManagementPlane {
    /// Recognises callers.
    pub auth: ManagementAuth,
    /// Owners and plans.
    pub owners: Owners,
    /// Keys.
    pub keys: Keys,
}

/// The one mapping from keygate's errors to gRPC statuses.
impl From<crate::error::Error> for tonic::Status {
    fn from(error: crate::error::Error) -> Self {
        use tonic::Code;
        let code = match &error {
            crate::error::Error::InvalidArgument(_) => Code::InvalidArgument,
            crate::error::Error::NotFound(_) => Code::NotFound,
            crate::error::Error::AlreadyExists(_) => Code::AlreadyExists,
            crate::error::Error::FailedPrecondition(_) => Code::FailedPrecondition,
            crate::error::Error::Unauthenticated(_) => Code::Unauthenticated,
            crate::error::Error::PermissionDenied(_) => Code::PermissionDenied,
            crate::error::Error::Unavailable(_) => Code::Unavailable,
        };
        tonic::Status::new(code, error.to_string())
    }
}
