//! keygate: an API-key authorization service.
//!
//! It issues API keys (shown once, stored as argon2id hashes), keeps owners and plans, and
//! lets a product manage keys over the `keygate.v1.KeyManager` gRPC API and the `keygate`
//! CLI. The binary (`src/main.rs`) only calls [`cli::main`]; everything lives here so tests
//! and benches drive the same code.
//!
//! # Layout
//!
//! Two planes over one composition root. Modules are listed in layers, bottom to top; a
//! module imports only from modules listed before it (`tests/architecture.rs` checks it),
//! so the import graph has no cycle.
//!
//! 1. Foundations
//!    - [`clock`] — injected time; durations written as text.
//!    - [`calendar`] — calendar days and cycles (day, week, month from an anchor) in the
//!      configured time zone.
//!    - [`error`] — the error shape callers can act on (invalid, not found, unavailable...).
//!    - [`key`] — key text format ([`key::format`]), argon2id hashing and peppered digests
//!      ([`key::hash`]), digests of keys migrated from other systems ([`key::foreign`]).
//!    - [`model`] — the stored records, owners and keys, and the validated values they are
//!      built from (names, scopes, networks, metadata), shared by the server and the CLI.
//!    - [`plan`] — plans: API access, key caps, rate windows, calendar quotas; the rules every
//!      plan follows.
//!    - [`secrets`] — the pepper and admin token, from env or files only.
//!    - [`shutdown`] — signals, the stop watch, the drain grace.
//!    - [`slots`] — a fixed table of recent values, for what every request reads.
//! 2. Infrastructure
//!    - [`redis`](crate::redis) — Redis settings, connections to Redis or Redis Cluster
//!      behind one type, every key name ([`redis::keyspace`]) and Lua script
//!      ([`redis::scripts`]).
//!    - [`store`] — the [`store::Store`] trait (owners, plans, keys), the embedded redb backend
//!      and the Redis one.
//!    - [`ratelimit`] — sliding-window rate limits, calendar quotas and credits
//!      ([`ratelimit::meters`]), checked together, local and in Redis.
//!    - [`connection`] — accepted connections prepared for small answers: no Nagle delay,
//!      HTTP/2 frames coalesced into one write.
//!    - [`tls`] — TLS on the gRPC listeners: certificates reloaded when their files change,
//!      handshakes with a deadline, the identity a client certificate proves.
//! 3. Data plane
//!    - [`authz`] — [`authz::engine::Authorizer`]: extract → verify ([`authz::keys`], the
//!      verified-key cache) → [`authz::policy`] → rate limits → [`authz::decision::Decision`],
//!      rendered protocol-neutrally by [`authz::response`]. Knows nothing of gRPC.
//!      [`authz::trust`] says whose word about a client's address is taken.
//!    - [`invalidation`] — applying a change to this replica's cache and every other's.
//! 4. Management plane
//!    - [`manage`] — owner, plan and key lifecycle rules, the authority rule, invalidation
//!      after every write; no transport.
//!    - [`admin`] — export and import of every record, for backup and migration.
//! 5. Observability and admission
//!    - [`metrics`] — Prometheus metrics and their HTTP listener.
//!    - [`telemetry`] — logs, OTLP traces, trace context, the per-RPC layer, the decision
//!      observer.
//!    - [`admission`] — the data plane's limits: calls in flight, time per call, streams.
//! 6. Configuration
//!    - [`config`] — composes every module's settings; loads them from defaults, file,
//!      `KEYGATE_*` env and flags.
//! 7. Adapters
//!    - [`service`] — gRPC services (ext_authz Check, Authorize, KeyManager): authenticate,
//!      convert, call a plane, convert back.
//!    - [`http`] — HTTP beside gRPC on the same ports: JSON routes transcoded into the gRPC
//!      calls, their OpenAPI document; forward-auth for proxies ([`http::forward_auth`]).
//! 8. Composition root
//!    - [`app`] — builds every part from the configuration, once.
//!    - [`reflection`] — gRPC reflection listing exactly each listener's services, Envoy's
//!      ext_authz included.
//!    - [`server`] — listeners, health, start and drain.
//! 9. Entry
//!    - [`cli`] — the command line; `serve` and the management client commands.
//!
//! A Check goes socket → [`telemetry::rpc`] (span) → [`service::check_wire`] (decode only
//! the fields keygate reads) → [`service::ext_authz`] (convert) →
//! [`authz`] (engine, extract, keys, policy) → [`ratelimit`] → [`authz::response`]
//! (answer) → [`service::ext_authz`], reporting to [`metrics`] through
//! [`telemetry::decisions`]; a cold key also reads [`store`] and runs [`key::hash`].

#![warn(missing_docs)]

pub mod admin;
pub mod admission;
pub mod app;
pub mod authz;
pub mod calendar;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connection;
pub mod error;
pub mod http;
pub mod invalidation;
pub mod key;
pub mod manage;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod ratelimit;
pub mod redis;
pub mod reflection;
pub mod secrets;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod slots;
pub mod store;
pub mod telemetry;
pub mod tls;

/// Code generated from `proto/keygate/v1/*.proto`.
pub mod proto {
    #![allow(missing_docs)]
    tonic::include_proto!("keygate.v1");

    /// The descriptors of keygate's protos and what they import: offered through gRPC
    /// reflection, read for the management API's method names and the JSON mapping.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("keygate_descriptor");
}
