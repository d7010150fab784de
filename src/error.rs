//! The library's error type, shaped after the answers a caller can act on; the adapters map
//! it to their protocol once (the gRPC adapters' `impl From<Error> for tonic::Status`).
//!
//! Messages are written for the person who will read them: they say what was wrong and what
//! to do. None ever contains a secret.

/// An operation failed; the variant decides the gRPC status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The request itself is wrong: a missing field, a bad CIDR, a bad page token.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named owner or key does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something with the same unique name exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request is well formed but the system is not in a state to accept it.
    #[error("{0}")]
    FailedPrecondition(String),
    /// No valid credential was presented.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's credential does not allow this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A dependency (the store) failed; the request can be retried.
    #[error("{0}")]
    Unavailable(String),
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
