//! Telling every replica that a key or owner changed.
//!
//! The management path applies each change to its own cache, then publishes it on a Redis
//! channel that every replica subscribes to; a replica drops what it cached about that key
//! or owner when the message arrives. Publishing is best effort: a replica that misses a
//! message is bounded by the cache TTL. A replica that loses its subscription keeps deciding
//! from its cache (the TTL bounds staleness) and drops the whole cache when it subscribes
//! again, since messages may have been lost meanwhile.

use std::sync::Arc;
use std::time::Duration;

use deadpool_redis::redis;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tracing::{info, warn};

use crate::authz::engine::Authorizer;
use crate::authz::keys::KeyCache;
use crate::redis::keyspace::INVALIDATIONS;
use crate::shutdown::until_stopped;

/// How long a replica waits before subscribing again after losing the subscription.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);

/// Something cached that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A key's record changed or was deleted.
    Key(String),
    /// An owner's record changed.
    Owner(String),
    /// A key was imported; its lookup digest (hex) now names a key.
    Imported(String),
    /// A lookup digest (hex) no longer names a key.
    Unimported(String),
}

impl Invalidation {
    /// The message text: a one-letter kind, `:`, the id or digest.
    pub fn encode(&self) -> String {
        match self {
            Invalidation::Key(id) => format!("k:{id}"),
            Invalidation::Owner(id) => format!("o:{id}"),
            Invalidation::Imported(digest) => format!("i:{digest}"),
            Invalidation::Unimported(digest) => format!("u:{digest}"),
        }
    }

    /// The invalidation a message carries, if it is one.
    pub fn decode(text: &str) -> Option<Self> {
        let (kind, value) = text.split_once(':')?;
        let value = value.to_owned();
        match kind {
            "k" => Some(Invalidation::Key(value)),
            "o" => Some(Invalidation::Owner(value)),
            "i" => Some(Invalidation::Imported(value)),
            "u" => Some(Invalidation::Unimported(value)),
            _ => None,
        }
    }

    /// Applies the invalidation to this replica's cache.
    pub async fn apply(&self, keys: &KeyCache) {
        match self {
            Invalidation::Key(id) => keys.invalidate_key(id),
            Invalidation::Owner(id) => keys.invalidate_owner(id),
            Invalidation::Imported(digest) => keys.add_imported(digest).await,
            Invalidation::Unimported(digest) => keys.remove_imported(digest),
        }
    }
}

/// Where a change is applied: this replica's cache first, then, with Redis, every other
/// replica's through the channel.
pub struct Invalidations {
    authorizer: Arc<Authorizer>,
    publisher: Option<Publisher>,
}

impl Invalidations {
    /// Applies changes to `authorizer`'s cache and publishes them with `publisher`, if any.
    pub fn new(authorizer: Arc<Authorizer>, publisher: Option<Publisher>) -> Self {
        Invalidations {
            authorizer,
            publisher,
        }
    }

    /// Drops what this replica cached about `invalidation`, then tells the other replicas.
    pub async fn invalidate(&self, invalidation: Invalidation) {
        invalidation.apply(self.authorizer.keys()).await;
        if let Some(publisher) = &self.publisher {
            publisher.publish(&invalidation).await;
        }
    }
}

/// Publishes invalidations to the other replicas.
pub struct Publisher {
    pool: crate::redis::RedisPool,
}

impl Publisher {
    /// A publisher over `pool`.
    pub fn new(pool: crate::redis::RedisPool) -> Self {
        Publisher { pool }
    }

    /// Publishes `invalidation`; a failure is logged, not returned: the change is stored and
    /// the other replicas' cache TTL bounds how long they may miss it.
    pub async fn publish(&self, invalidation: &Invalidation) {
        let result = async {
            let mut connection = self.pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("PUBLISH")
                .arg(INVALIDATIONS)
                .arg(invalidation.encode())
                .query_async::<i64>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = result {
            warn!(
                "cannot publish a cache invalidation ({e}); other replicas catch up within the cache TTL"
            );
        }
    }
}

/// Subscribes to invalidations at `url` and applies them to this replica's cache until
/// `stop` turns true. Every (re)subscription drops the whole cache first, since messages may
/// have been missed.
pub async fn subscribe(url: String, authorizer: Arc<Authorizer>, stop: watch::Receiver<bool>) {
    let keys = authorizer.keys();
    crate::redis::init_tls();
    let client = match redis::Client::open(url) {
        Ok(client) => client,
        Err(e) => {
            warn!("invalid Redis URL for invalidations: {e}");
            return;
        }
    };
    let mut subscribed_before = false;
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(INVALIDATIONS).await?;
            keys.clear();
            if subscribed_before {
                info!("invalidation channel back; dropped the whole key cache");
            }
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                if let Some(invalidation) = message
                    .get_payload::<String>()
                    .ok()
                    .and_then(|text| Invalidation::decode(&text))
                {
                    invalidation.apply(keys).await;
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            // Warm keys keep being decided meanwhile; the cache TTL bounds their staleness, and
            // the cache is dropped when the subscription is back.
            result = session => match result {
                Ok(()) => warn!("invalidation channel closed; resubscribing"),
                Err(e) => warn!("invalidation channel unavailable ({e}); resubscribing"),
            },
            () = until_stopped(stop.clone()) => return,
        }
        subscribed_before = true;
        tokio::select! {
            () = tokio::time::sleep(RESUBSCRIBE_AFTER) => {}
            () = until_stopped(stop.clone()) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for invalidation in [
            Invalidation::Key("abc".into()),
            Invalidation::Owner("own_x".into()),
            Invalidation::Imported("ab".repeat(32)),
            Invalidation::Unimported("cd".repeat(32)),
        ] {
            assert_eq!(
                Invalidation::decode(&invalidation.encode()),
                Some(invalidation)
            );
        }
        assert_eq!(Invalidation::decode("x:1"), None);
        assert_eq!(Invalidation::decode("nothing"), None);
    }
}
