//! The library's error type and its one mapping to gRPC statuses.
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

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        use tonic::Code;
        let code = match &error {
            Error::InvalidArgument(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unavailable(_) => Code::Unavailable,
        };
        tonic::Status::new(code, error.to_string())
    }
}
