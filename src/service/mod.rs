//! The gRPC adapters: each handler authenticates (management), converts the message into
//! the planes' terms, calls them and converts the answer back. No rule lives here.

pub mod authorizer;
pub mod caller;
pub mod check_answer;
pub mod check_wire;
pub mod convert;
pub mod ext_authz;
pub mod key_manager;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::authz::engine::Authorizer;
use crate::authz::extract::{CredentialSource, comma_list};
use crate::authz::response::Responder;
use crate::authz::trust::{ForwardAuthConfig, TrustedCallers};
use crate::manage::{Keys, Owners, Plans, Usage};
use crate::tls::PeerIdentity;
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
    /// Authorize callers whose `client_address` is believed.
    pub trusted_callers: TrustedCallers,
    /// Proxies whose `X-Forwarded-For` forward-auth believes.
    pub forward_auth: ForwardAuthConfig,
    /// Every client-certificate name the data plane's settings list (trusted callers,
    /// route rules' `callers`): a call's certificate is read only when there is one.
    pub listed_identities: Vec<String>,
}

/// What the management adapter uses: how callers are authenticated, and the owner, plan and
/// key services that decide what they may do.
pub struct ManagementPlane {
    /// Recognises callers.
    pub auth: ManagementAuth,
    /// Owners.
    pub owners: Owners,
    /// Plans.
    pub plans: Plans,
    /// Keys.
    pub keys: Keys,
    /// Usage history.
    pub usage: Usage,
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

/// The identity of the client certificate `request` came with, looked up only when some
/// identity is `listed` (parsing the certificate is wasted otherwise).
pub fn peer_identity<T>(request: &tonic::Request<T>, listed: &[String]) -> Option<PeerIdentity> {
    if listed.is_empty() {
        return None;
    }
    request
        .peer_certs()
        .and_then(|certs| certs.first().and_then(PeerIdentity::from_cert))
}

/// What a route asks of keygate on top of the route rules: Check's `context_extensions`
/// (`keygate.scopes`, `keygate.credentials`, `keygate.cost`) and forward-auth's query
/// parameters say the same things, read here alike.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RouteAsks<'a> {
    /// Scopes required on top of the route rules'.
    pub scopes: Vec<String>,
    /// The only credential sources accepted, by name; all when `None`.
    pub credentials: Option<Vec<&'a str>>,
    /// What a request costs against rate limits; the route rules say when `None`.
    pub cost: Option<u64>,
}

impl<'a> RouteAsks<'a> {
    /// Reads the comma-separated `scopes` and `credentials` and the `cost` (a positive
    /// integer; anything else leaves it to the route rules).
    pub fn read(scopes: Option<&str>, credentials: Option<&'a str>, cost: Option<&str>) -> Self {
        RouteAsks {
            scopes: scopes
                .map(|v| comma_list(v).map(str::to_owned).collect())
                .unwrap_or_default(),
            credentials: credentials.map(|v| comma_list(v).collect()),
            cost: cost
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&c| c > 0),
        }
    }
}

/// The id a request is known by in logs and error bodies: the first of `candidates` that
/// is not blank (trimmed), else a new random one.
pub fn request_id<'a>(candidates: impl IntoIterator<Item = Option<&'a str>>) -> String {
    candidates
        .into_iter()
        .flatten()
        .map(str::trim)
        .find(|id| !id.is_empty())
        .map_or_else(new_request_id, str::to_owned)
}

/// A request id for requests that came without one.
fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    crate::key::hash::hex(&bytes)
}

/// When the caller stops waiting, from the `grpc-timeout` it sent (gRPC over HTTP/2: up to
/// 8 digits and a unit, `H`, `M`, `S`, `m`, `u` or `n`); `None` without a valid one.
pub fn deadline(metadata: &tonic::metadata::MetadataMap) -> Option<Instant> {
    // A name made once, not parsed from text at every call.
    const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");
    let headers: &http::HeaderMap = metadata.as_ref();
    let text = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    Some(Instant::now() + grpc_timeout(text)?)
}

/// The duration a `grpc-timeout` value means.
fn grpc_timeout(text: &str) -> Option<Duration> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(value * 3600),
        'M' => Duration::from_secs(value * 60),
        'S' => Duration::from_secs(value),
        'm' => Duration::from_millis(value),
        'u' => Duration::from_micros(value),
        'n' => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        assert_eq!(grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout("1S"), Some(Duration::from_secs(1)));
        assert_eq!(grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout("250000u"), Some(Duration::from_millis(250)));
        assert_eq!(grpc_timeout("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "10", "10x", "123456789m", "-1m", "1.5S", "1é"] {
            assert_eq!(grpc_timeout(bad), None, "{bad}");
        }
    }
}
