//! Connections to Redis or Redis Cluster, behind one type, so the store, the rate limiter,
//! the shared cache and the invalidation publisher run unchanged on either. Every command
//! they send names keys of one hash slot, which a cluster connection routes to its node
//! (following MOVED and ASK redirections).

use deadpool_redis::redis::aio::ConnectionLike;
use deadpool_redis::redis::{Cmd, Pipeline, RedisFuture, Value};

/// Chooses ring as rustls's cryptography for `rediss://` connections; the first call wins
/// and later calls do nothing. Server certificates are checked against the system's trust
/// store (or the file `SSL_CERT_FILE` names).
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    pub async fn get(&self) -> Result<RedisConnection, String> {
        match self {
            RedisPool::Single(pool) => pool
                .get()
                .await
                .map(RedisConnection::Single)
                .map_err(|e| e.to_string()),
            RedisPool::Cluster(pool) => pool
                .get()
                .await
                .map(RedisConnection::Cluster)
                .map_err(|e| e.to_string()),
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
