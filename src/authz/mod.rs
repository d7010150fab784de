//! The data plane: what decides a request, knowing nothing of gRPC. [`engine::Authorizer`]
//! runs extract → verify ([`keys`]) → [`policy`] → rate limits and answers a
//! [`decision::Decision`]; [`response`] says how a denial reads to the client; [`routes`]
//! says what a request needs, matching rules against the [`path`] normalized; [`trust`] says
//! whose word about the client's address is taken.

pub mod decision;
pub mod engine;
pub mod extract;
pub mod keys;
pub mod path;
pub mod policy;
pub mod response;
pub mod routes;
pub mod trust;
pub mod usage;
