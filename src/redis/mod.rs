//! Redis as keygate uses it: the connection settings, a pool over Redis or Redis Cluster
//! behind one type, the names of every key and channel ([`keyspace`]) and the Lua scripts
//! run against them ([`scripts`]).
//!
//! The store, the rate limiter, the shared cache and the invalidation publisher all run
//! unchanged on Redis or Redis Cluster. Every command they send names keys of one hash
//! slot, which a cluster connection routes to its node (following MOVED and ASK
//! redirections).

pub mod keyspace;
pub mod scripts;

use std::time::Duration;

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{Cmd, Pipeline, RedisFuture, Value};
use serde::{Deserialize, Serialize};

/// Chooses ring as rustls's cryptography for `rediss://` connections; the first call wins
/// and later calls do nothing. Server certificates are checked against the system's trust
/// store (or the file `SSL_CERT_FILE` names).
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connection settings for Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// Redis Cluster: the URLs of some of its nodes (any one is enough to find the others).
    /// When given, `url` is not used.
    pub cluster_nodes: Vec<String>,
    /// Most pooled connections.
    pub pool_size: usize,
    /// The longest any decision waits for Redis, connecting included.
    #[serde(with = "crate::clock::duration_text")]
    pub timeout: Duration,
    /// After a failure, how long the local stand-in is used before Redis is tried again.
    #[serde(with = "crate::clock::duration_text")]
    pub retry_after: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
            pool_size: 16,
            timeout: Duration::from_millis(50),
            retry_after: Duration::from_secs(1),
        }
    }
}

impl RedisConfig {
    /// A connection pool for these settings: at most `pool_size` connections, and no wait
    /// for one, nor for connecting, longer than `timeout`. Connections are made on first use.
    pub fn pool(&self) -> Result<RedisPool, PoolError> {
        init_tls();
        let pool = Some(deadpool_redis::PoolConfig {
            max_size: self.pool_size,
            timeouts: deadpool_redis::Timeouts {
                wait: Some(self.timeout),
                create: Some(self.timeout),
                recycle: Some(self.timeout),
            },
            ..Default::default()
        });
        let runtime = Some(deadpool_redis::Runtime::Tokio1);
        let invalid = |e: &dyn std::fmt::Display| PoolError::Settings(e.to_string());
        if self.cluster_nodes.is_empty() {
            let mut config = deadpool_redis::Config::from_url(self.url.clone());
            config.pool = pool;
            config
                .create_pool(runtime)
                .map(RedisPool::Single)
                .map_err(|e| invalid(&e))
        } else {
            let mut config = deadpool_redis::cluster::Config::from_urls(self.cluster_nodes.clone());
            config.pool = pool;
            config
                .create_pool(runtime)
                .map(RedisPool::Cluster)
                .map_err(|e| invalid(&e))
        }
    }

    /// Where to subscribe to invalidations: published messages reach every node of a
    /// cluster, so any one will do.
    pub fn subscribe_url(&self) -> &str {
        self.cluster_nodes.first().unwrap_or(&self.url)
    }
}

/// Why no connection to Redis could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// The URL or cluster nodes cannot be used (`redis.url`, `redis.cluster_nodes`).
    #[error("invalid Redis settings: {0}")]
    Settings(String),
    /// Redis did not give a connection within the timeout.
    #[error("no Redis connection: {0}")]
    Unavailable(String),
}

/// A pool of connections to one Redis, or to a Redis Cluster.
#[derive(Clone)]
pub enum RedisPool {
    /// One Redis server.
    Single(deadpool_redis::Pool),
    /// A Redis Cluster, reached through any of its nodes.
    Cluster(deadpool_redis::cluster::Pool),
}

/// A pooled connection, returned to its pool when dropped.
pub enum RedisConnection {
    /// To one Redis server.
    Single(deadpool_redis::Connection),
    /// To a Redis Cluster.
    Cluster(deadpool_redis::cluster::Connection),
}

impl RedisPool {
    /// A connection, waiting at most the pool's timeout for one.
    pub async fn get(&self) -> Result<RedisConnection, PoolError> {
        let unavailable = |e: &dyn std::fmt::Display| PoolError::Unavailable(e.to_string());
        match self {
            RedisPool::Single(pool) => pool
                .get()
                .await
                .map(RedisConnection::Single)
                .map_err(|e| unavailable(&e)),
            RedisPool::Cluster(pool) => pool
                .get()
                .await
                .map(RedisConnection::Cluster)
                .map_err(|e| unavailable(&e)),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}
