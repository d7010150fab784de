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

/// Most characters of caller input an error message quotes.
pub const QUOTE_LIMIT: usize = 32;

/// `input` as an error message quotes it: escaped (control and format characters shown as
/// `\u{..}`) and cut to its first [`QUOTE_LIMIT`] characters with an ellipsis, so a message
/// stays short and printable whatever was sent. Every message that repeats caller input
/// quotes it through here.
pub fn quote(input: &str) -> String {
    match input.char_indices().nth(QUOTE_LIMIT) {
        Some((end, _)) => format!("{:?}…", &input[..end]),
        None => format!("{input:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_input_is_escaped_and_short() {
        assert_eq!(quote("read"), r#""read""#);
        assert_eq!(quote("a\nb"), r#""a\nb""#);
        assert_eq!(quote("a\u{202e}b"), r#""a\u{202e}b""#);
        let long = "é".repeat(10_000);
        let quoted = quote(&long);
        assert_eq!(quoted, format!("{:?}…", "é".repeat(QUOTE_LIMIT)));
        assert_eq!(
            quote(&"x".repeat(QUOTE_LIMIT)),
            format!("{:?}", "x".repeat(32))
        );
    }
}
