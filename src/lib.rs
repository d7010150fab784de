//! keygate: an API-key authorization service.
//!
//! It issues API keys (shown once, stored as argon2id hashes), keeps owners and plans, and
//! lets a product manage keys over the `keygate.v1.KeyManager` gRPC API and the `keygate`
//! CLI. The binary (`src/main.rs`) only calls [`cli::main`]; everything lives here so tests
//! and benches drive the same code.
//!
//! # Layout
//!
//! - [`cli`] — the command line; `serve` and the management client commands.
//! - [`config`] — typed configuration from defaults, file, `KEYGATE_*` env and flags.
//! - [`secrets`] — the pepper and admin token, from env or files only.
//! - [`key`] — key text format ([`key::format`]) and hashing and digests ([`key::hash`]).
//! - [`model`] — the stored records, owners and keys, and the validated values they are
//!   built from (names, scopes, networks, metadata), shared by the server and the CLI.
//! - [`store`] — the [`store::Store`] trait, the embedded redb backend and the Redis one.
//! - [`admin`] — export and import of every record, for backup and migration.
//! - [`verify`] — presented credential → key record.
//! - [`cache`] — the verified-key cache in front of the store and argon2.
//! - [`authz`] — the decision engine: extraction, route rules, policy, denial rendering.
//! - [`ratelimit`] — sliding-window rate limits, local and in Redis.
//! - [`usage`] — batched `last_used_at` updates.
//! - [`redis_pool`] — connections to Redis or Redis Cluster behind one type.
//! - [`invalidation`] — telling every replica that a key or owner changed (Redis pub/sub).
//! - [`manage`] — the management plane: owner and key lifecycle rules, the authority rule,
//!   invalidation after every write; no transport.
//! - [`service`] — gRPC services (ext_authz Check, Authorize, KeyManager), caller
//!   authentication, message conversion.
//! - [`app`] — the state every handler shares.
//! - [`server`] — listeners, health, reflection, start and shutdown.
//! - [`error`] — the library error and its mapping to gRPC statuses.
//! - [`clock`] — injected time.
//! - [`telemetry`] — logs, OTLP traces, trace context, the per-RPC span and count.
//! - [`metrics`] — Prometheus metrics and their HTTP listener.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
pub mod authz;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod invalidation;
pub mod key;
pub mod manage;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod ratelimit;
pub mod redis_pool;
pub mod secrets;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod usage;
pub mod verify;

/// Code generated from `proto/keygate/v1/*.proto`.
pub mod proto {
    #![allow(missing_docs)]
    tonic::include_proto!("keygate.v1");
}
