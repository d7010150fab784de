//! gRPC services and what they share: caller authentication and message conversion.

pub mod caller;
pub mod convert;
pub mod key_manager;
