//! The decision engine: credential extraction, route rules, the policy, and how denials are
//! rendered. [`engine::decide`] ties them to the cache and the store.

pub mod decision;
pub mod engine;
pub mod extract;
pub mod observe;
pub mod policy;
pub mod response;
pub mod routes;
