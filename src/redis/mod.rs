//! Redis as keygate uses it: the connection settings, one shared connection to Redis or
//! Redis Cluster behind one type, the names of every key and channel ([`keyspace`]) and the Lua scripts
//! run against them ([`scripts`]).
//!
//! The store, the rate limiter, the shared cache and the invalidation publisher all run
//! unchanged on Redis or Redis Cluster. Every command they send names keys of one hash
//! slot, which a cluster connection routes to its node (following MOVED and ASK
//! redirections).

pub mod keyspace;
pub mod scripts;

use std::time::Duration;

use std::sync::{Arc, Mutex};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};
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
    /// The longest any decision waits for Redis, connecting included.
    #[serde(with = "crate::clock::duration_text")]
    pub timeout: Duration,
    /// After a failure, how long the local stand-in is used before Redis is tried again.
    #[serde(with = "crate::clock::duration_text")]
    pub retry_after: Duration,
    /// No longer used: one multiplexed connection replaced the pool. Still accepted, so
    /// configurations written for earlier versions load (with a warning at start).
    #[serde(skip_serializing)]
    pub pool_size: Option<usize>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster_nodes: Vec::new(),
            timeout: Duration::from_millis(50),
            retry_after: Duration::from_secs(1),
            pool_size: None,
        }
    }
}

impl RedisConfig {
    /// A client for these settings. It connects on first use, and no command (connecting
    /// included) waits longer than `timeout`.
    pub fn client(&self) -> Result<RedisClient, ClientError> {
        init_tls();
        let invalid = |e: &dyn std::fmt::Display| ClientError::Settings(e.to_string());
        let target = if self.cluster_nodes.is_empty() {
            Target::Single(redis::Client::open(self.url.as_str()).map_err(|e| invalid(&e))?)
        } else {
            Target::Cluster(
                redis::cluster::ClusterClient::builder(self.cluster_nodes.clone())
                    .connection_timeout(self.timeout)
                    .response_timeout(self.timeout)
                    .build()
                    .map_err(|e| invalid(&e))?,
            )
        };
        Ok(RedisClient {
            shared: Arc::new(Shared {
                target,
                timeout: self.timeout,
                connection: Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// Where to subscribe to invalidations: published messages reach every node of a
    /// cluster, so any one will do.
    pub fn subscribe_url(&self) -> &str {
        self.cluster_nodes.first().unwrap_or(&self.url)
    }
}

/// Why no connection to Redis could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The URL or cluster nodes cannot be used (`redis.url`, `redis.cluster_nodes`).
    #[error("invalid Redis settings: {0}")]
    Settings(String),
    /// Redis did not accept a connection within the timeout.
    #[error("no Redis connection: {0}")]
    Unavailable(String),
}

/// Redis, or a Redis Cluster, over one multiplexed connection that every user shares:
/// concurrent commands are pipelined on it, and none waits for a connection of its own. The
/// connection is made on first use and made again after it breaks.
#[derive(Clone)]
pub struct RedisClient {
    shared: Arc<Shared>,
}

struct Shared {
    target: Target,
    timeout: Duration,
    /// The connection, while it works.
    connection: Mutex<Option<RedisConnection>>,
    /// Held while connecting, so a broken connection is replaced once, not by every caller.
    connecting: tokio::sync::Mutex<()>,
}

/// Where to connect. One per process, so its size does not matter.
#[allow(clippy::large_enum_variant)]
enum Target {
    Single(redis::Client),
    Cluster(redis::cluster::ClusterClient),
}

/// A handle on the shared connection, cheap to clone; commands sent on it are pipelined
/// with everyone else's.
#[derive(Clone)]
pub struct RedisConnection {
    link: Link,
    shared: Arc<Shared>,
}

#[derive(Clone)]
enum Link {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl RedisClient {
    /// The shared connection, connecting (at most the timeout) if there is none.
    pub async fn get(&self) -> Result<RedisConnection, ClientError> {
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let _connecting = self.shared.connecting.lock().await;
        if let Some(connection) = self.current() {
            return Ok(connection);
        }
        let unavailable = |e: &dyn std::fmt::Display| ClientError::Unavailable(e.to_string());
        let timeout = self.shared.timeout;
        let link = match &self.shared.target {
            Target::Single(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Link::Single)
            }
            Target::Cluster(client) => {
                match tokio::time::timeout(timeout, client.get_async_connection()).await {
                    Ok(connected) => connected.map(Link::Cluster),
                    Err(_) => Err(redis::RedisError::from((
                        redis::ErrorKind::Io,
                        "no answer from the cluster",
                        format!("within {timeout:?}"),
                    ))),
                }
            }
        }
        .map_err(|e| unavailable(&e))?;
        let connection = RedisConnection {
            link,
            shared: self.shared.clone(),
        };
        *self.shared.lock() = Some(connection.clone());
        Ok(connection)
    }

    fn current(&self) -> Option<RedisConnection> {
        self.shared.lock().clone()
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<RedisConnection>> {
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops the shared connection after `error` if it says the connection is gone, so the
    /// next caller connects again.
    fn note(&self, error: &redis::RedisError) {
        if error.is_io_error() || error.is_connection_dropped() || error.is_unrecoverable_error() {
            self.lock().take();
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let reply = match &mut self.link {
                Link::Single(c) => c.req_packed_command(cmd).await,
                Link::Cluster(c) => c.req_packed_command(cmd).await,
            };
            if let Err(e) = &reply {
                self.shared.note(e);
            }
            reply
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let reply = match &mut self.link {
                Link::Single(c) => c.req_packed_commands(cmd, offset, count).await,
                Link::Cluster(c) => c.req_packed_commands(cmd, offset, count).await,
            };
            if let Err(e) = &reply {
                self.shared.note(e);
            }
            reply
        })
    }

    fn get_db(&self) -> i64 {
        match &self.link {
            Link::Single(c) => c.get_db(),
            Link::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_written_for_the_connection_pool_still_load() {
        let config: RedisConfig =
            toml::from_str("url = \"redis://10.0.0.5:6379\"\npool_size = 16\ntimeout = \"20ms\"")
                .unwrap();
        assert_eq!(config.pool_size, Some(16));
        assert_eq!(config.timeout, Duration::from_millis(20));
        assert!(config.client().is_ok());
    }
}
