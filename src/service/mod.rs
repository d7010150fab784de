//! gRPC services and what they share: caller authentication and message conversion.

pub mod authorizer;
pub mod caller;
pub mod convert;
pub mod ext_authz;
pub mod key_manager;
