//! Telling every replica that a key, owner or plan changed, and waiting until they have.
//!
//! The management path applies each change to its own cache, then, with Redis, publishes it
//! on a channel every replica subscribes to; a replica drops what it cached about that key,
//! owner or plan when the message arrives.
//!
//! # Confirmed invalidations
//!
//! A change that can withdraw access (a key, owner or plan changed or deleted, a lookup digest
//! released) is *confirmed*: [`Invalidations::invalidate`] returns only when every other
//! live replica has said it dropped what it cached, or when `invalidation.ack_timeout` has
//! passed. Replicas that did not answer in time are returned in the [`Propagation`],
//! counted (`keygate_invalidation_unacknowledged_replicas_total`) and logged; the write
//! itself is stored either way. A change that only adds something (a new key, owner or
//! plan, a digest that now names a key) is *announced* ([`Invalidations::announce`]) without
//! waiting: nothing a replica cached about it can grant access it should not.
//!
//! The protocol, on Redis:
//!
//! - Every replica has a random id. Once its first subscription to the invalidation channel
//!   is up, it writes a heartbeat every [`HEARTBEAT_EVERY`] into the sorted set
//!   [`LIVE_REPLICAS`], scored by Redis' own clock in milliseconds (so the hosts' clocks do
//!   not matter), and removes itself when it stops. A replica is live while its heartbeat is
//!   at most [`LIVE_WITHIN`] old; entries older than [`FORGET_AFTER`] are deleted by the
//!   heartbeats. A replica that lost its subscription keeps its heartbeat: it still answers
//!   from its cache, so a writer must report it when it does not confirm.
//! - The writer reads the live set (without itself). If it is empty, it publishes the
//!   change alone and returns. Otherwise it publishes an ack request and waits.
//! - Messages on [`INVALIDATIONS`] are text: `KIND:VALUE` (kind `k` key id, `o` owner id,
//!   `i` imported digest, `u` released digest, `p` plan name), the format earlier versions
//!   publish and read (versions before plans were stored ignore `p`, and never confirm it:
//!   they decide by the plans of their configuration); or `ack:WRITER:NONCE;KIND:VALUE`, an ack request. A replica
//!   applies the change to its cache first, then publishes `NONCE:REPLICA` on the writer's
//!   ack channel ([`invalidation_acks`]`(WRITER)`), to which the writer is subscribed on the
//!   same connection as the invalidation channel. An earlier version reads the kind `ack`
//!   as unknown and ignores the message, so a writer publishes the plain change just before
//!   the ack request, in the same round trip: during a rolling upgrade, earlier replicas
//!   still drop the key at once. They do not register a heartbeat, so writers do not wait
//!   for their confirmation.
//!
//! A replica that joins after the writer read the live set subscribed first and dropped its
//! whole cache when it did, after the write was stored: it cannot hold the old record. A
//! writer that has lost its own subscription cannot hear confirmations, and reports every
//! other live replica; one that cannot read the live set publishes without waiting and
//! logs why.
//!
//! A replica that loses its subscription keeps deciding from its cache (the TTL bounds
//! staleness) and drops the whole cache when it subscribes again, since messages may have
//! been missed. In embedded mode there is one replica and nothing to wait for.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use redis::{self, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tracing::{info, warn};

use crate::authz::engine::Authorizer;
use crate::authz::keys::KeyCache;
use crate::redis::RedisClient;
use crate::redis::keyspace::{INVALIDATIONS, LIVE_REPLICAS, invalidation_acks};
use crate::redis::scripts;
use crate::shutdown::until_stopped;

/// How long a replica waits before subscribing again after losing the subscription.
const RESUBSCRIBE_AFTER: Duration = Duration::from_secs(1);
/// How often a replica writes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How old a heartbeat may be for its replica to count as live.
pub const LIVE_WITHIN: Duration = Duration::from_secs(3);
/// How old a heartbeat is when it is deleted from the live set.
pub const FORGET_AFTER: Duration = Duration::from_secs(60);

static HEARTBEAT_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::HEARTBEAT));
static LIVE_SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::LIVE_REPLICAS));

/// The invalidation settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InvalidationConfig {
    /// Longest a write that withdraws access (revoke, disable, rotate, delete, an owner or
    /// plan change) waits for every other live replica to confirm it dropped what it cached.
    /// Replicas that did not confirm by then are reported; the write is stored either way.
    #[serde(with = "crate::clock::duration_text")]
    pub ack_timeout: Duration,
}

impl Default for InvalidationConfig {
    fn default() -> Self {
        InvalidationConfig {
            ack_timeout: Duration::from_secs(1),
        }
    }
}

/// How far a confirmed invalidation got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Propagation {
    /// Ids of the live replicas that did not confirm in time, sorted; empty when every
    /// live replica dropped what it cached.
    pub unacknowledged: Vec<String>,
}

impl Propagation {
    /// How many replicas did not confirm.
    pub fn unacknowledged_count(&self) -> usize {
        self.unacknowledged.len()
    }

    /// Adds what `other` did not reach.
    pub fn merge(&mut self, other: Propagation) {
        self.unacknowledged.extend(other.unacknowledged);
        self.unacknowledged.sort();
        self.unacknowledged.dedup();
    }
}

/// Something cached that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidation {
    /// A key's record changed or was deleted.
    Key(String),
    /// An owner's record changed.
    Owner(String),
    /// A plan, by name, was created, changed or deleted.
    Plan(String),
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
            Invalidation::Plan(name) => format!("p:{name}"),
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
            "p" => Some(Invalidation::Plan(value)),
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
            Invalidation::Plan(name) => keys.invalidate_plan(name),
            Invalidation::Imported(digest) => keys.add_imported(digest).await,
            Invalidation::Unimported(digest) => keys.remove_imported(digest),
        }
    }
}

/// Who asks for a confirmation, and which one: the `ack:WRITER:NONCE;` head of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRequest {
    /// The writer's replica id; the ack goes to its channel.
    pub writer: String,
    /// Names this invalidation among the writer's.
    pub nonce: u64,
}

/// One message on the invalidation channel: a change, and whether it is to be confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Set when the writer waits for a confirmation.
    pub ack: Option<AckRequest>,
    /// The change.
    pub invalidation: Invalidation,
}

impl Message {
    /// The text published: `KIND:VALUE`, or `ack:WRITER:NONCE;KIND:VALUE`.
    pub fn encode(&self) -> String {
        match &self.ack {
            None => self.invalidation.encode(),
            Some(AckRequest { writer, nonce }) => {
                format!("ack:{writer}:{nonce};{}", self.invalidation.encode())
            }
        }
    }

    /// The message `text` carries, if it is one.
    pub fn decode(text: &str) -> Option<Self> {
        let Some(rest) = text.strip_prefix("ack:") else {
            return Some(Message {
                ack: None,
                invalidation: Invalidation::decode(text)?,
            });
        };
        let (head, change) = rest.split_once(';')?;
        let (writer, nonce) = head.split_once(':')?;
        Some(Message {
            ack: Some(AckRequest {
                writer: writer.to_owned(),
                nonce: nonce.parse().ok()?,
            }),
            invalidation: Invalidation::decode(change)?,
        })
    }
}

/// Where a change is applied: this replica's cache first, then, with Redis, every other
/// replica's through the channel.
pub struct Invalidations {
    authorizer: Arc<Authorizer>,
    replica: Option<Arc<Replica>>,
}

impl Invalidations {
    /// Applies changes to `authorizer`'s cache and, with Redis, to the other replicas'
    /// through `replica`.
    pub fn new(authorizer: Arc<Authorizer>, replica: Option<Arc<Replica>>) -> Self {
        Invalidations {
            authorizer,
            replica,
        }
    }

    /// This replica on Redis, if keygate runs with Redis.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.as_ref()
    }

    /// Replicas that did not confirm an invalidation in time, counted once per
    /// invalidation, since start.
    pub fn unacknowledged_total(&self) -> u64 {
        self.replica
            .as_ref()
            .map_or(0, |r| r.unacknowledged_total.load(Ordering::Relaxed))
    }

    /// Drops what this replica cached about `invalidation`, then tells the other live
    /// replicas and waits, at most `invalidation.ack_timeout`, until each confirmed.
    pub async fn invalidate(&self, invalidation: Invalidation) -> Propagation {
        invalidation.apply(self.authorizer.keys()).await;
        match &self.replica {
            Some(replica) => replica.publish_confirmed(&invalidation).await,
            None => Propagation::default(),
        }
    }

    /// Applies `invalidation` here and tells the other replicas, without waiting: for news
    /// that cannot make anything cached grant access (a new record).
    pub async fn announce(&self, invalidation: Invalidation) {
        invalidation.apply(self.authorizer.keys()).await;
        if let Some(replica) = &self.replica {
            replica.publish(&[invalidation.encode()]).await;
        }
    }
}

/// This replica on Redis: its id, its heartbeat, and the confirmations it waits for.
pub struct Replica {
    id: String,
    client: RedisClient,
    ack_timeout: Duration,
    next_nonce: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<String>>>,
    unacknowledged_total: AtomicU64,
}

impl Replica {
    /// A replica with a new random id, publishing over `client`.
    pub fn new(client: RedisClient, config: &InvalidationConfig) -> Self {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        Replica {
            id: bytes.iter().map(|b| format!("{b:02x}")).collect(),
            client,
            ack_timeout: config.ack_timeout,
            next_nonce: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
            unacknowledged_total: AtomicU64::new(0),
        }
    }

    /// This replica's id, as listed in the live set.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The other live replicas.
    async fn live_others(&self) -> Result<Vec<String>, String> {
        let mut connection = self.client.get().await.map_err(|e| e.to_string())?;
        let live: Vec<String> = LIVE_SCRIPT
            .key(LIVE_REPLICAS)
            .arg(LIVE_WITHIN.as_millis() as u64)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(live.into_iter().filter(|id| *id != self.id).collect())
    }

    /// Publishes `texts` on the invalidation channel, in order and in one round trip; a
    /// failure is logged.
    async fn publish(&self, texts: &[String]) -> bool {
        let result = async {
            let mut connection = self.client.get().await.map_err(|e| e.to_string())?;
            let mut pipeline = redis::pipe();
            for text in texts {
                pipeline.cmd("PUBLISH").arg(INVALIDATIONS).arg(text);
            }
            pipeline
                .query_async::<Vec<i64>>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = &result {
            warn!(
                "cannot publish a cache invalidation ({e}); other replicas catch up within the cache TTL"
            );
        }
        result.is_ok()
    }

    /// Publishes `invalidation` with an ack request and waits until every other live
    /// replica confirmed, at most the ack timeout.
    async fn publish_confirmed(&self, invalidation: &Invalidation) -> Propagation {
        let live = match self.live_others().await {
            Ok(live) => live,
            Err(e) => {
                warn!("cannot read the live replicas ({e}); publishing without waiting");
                self.publish(&[invalidation.encode()]).await;
                return Propagation::default();
            }
        };
        if live.is_empty() {
            self.publish(&[invalidation.encode()]).await;
            return Propagation::default();
        }
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let (sender, mut acks) = mpsc::unbounded_channel();
        let _waiting = Waiting::new(self, nonce, sender);
        let message = Message {
            ack: Some(AckRequest {
                writer: self.id.clone(),
                nonce,
            }),
            invalidation: invalidation.clone(),
        };
        let mut pending: HashSet<String> = live.into_iter().collect();
        // The plain change first, for earlier versions, which ignore ack requests; this
        // version applies both, which is harmless, and confirms the second.
        if self
            .publish(&[invalidation.encode(), message.encode()])
            .await
        {
            let deadline = tokio::time::Instant::now() + self.ack_timeout;
            while !pending.is_empty() {
                match tokio::time::timeout_at(deadline, acks.recv()).await {
                    Ok(Some(replica)) => {
                        pending.remove(&replica);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        let mut unacknowledged: Vec<String> = pending.into_iter().collect();
        unacknowledged.sort();
        if !unacknowledged.is_empty() {
            self.unacknowledged_total
                .fetch_add(unacknowledged.len() as u64, Ordering::Relaxed);
            warn!(
                replicas = ?unacknowledged,
                timeout = %humantime::format_duration(self.ack_timeout),
                "live replicas did not confirm a cache invalidation in time; the change is stored, and their cache TTL bounds how long they may miss it"
            );
        }
        Propagation { unacknowledged }
    }

    /// Hands a confirmation (`NONCE:REPLICA` on this replica's ack channel) to its waiter.
    fn acknowledged(&self, text: &str) {
        let Some((nonce, replica)) = text.split_once(':') else {
            return;
        };
        let Ok(nonce) = nonce.parse::<u64>() else {
            return;
        };
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = waiting.get(&nonce) {
            let _ = sender.send(replica.to_owned());
        }
    }

    /// Confirms to `request`'s writer that this replica applied the change.
    async fn acknowledge(&self, request: &AckRequest) -> Result<(), String> {
        let mut connection = self.client.get().await.map_err(|e| e.to_string())?;
        redis::cmd("PUBLISH")
            .arg(invalidation_acks(&request.writer))
            .arg(format!("{}:{}", request.nonce, self.id))
            .query_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Writes this replica's heartbeat into the live set.
    async fn heartbeat(&self) -> Result<(), String> {
        let mut connection = self.client.get().await.map_err(|e| e.to_string())?;
        HEARTBEAT_SCRIPT
            .key(LIVE_REPLICAS)
            .arg(&self.id)
            .arg(FORGET_AFTER.as_millis() as u64)
            .invoke_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    /// Removes this replica from the live set.
    async fn leave(&self) {
        let result = async {
            let mut connection = self.client.get().await.map_err(|e| e.to_string())?;
            redis::cmd("ZREM")
                .arg(LIVE_REPLICAS)
                .arg(&self.id)
                .query_async::<i64>(&mut connection)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        if let Err(e) = result {
            warn!("cannot leave the live replica set ({e}); the entry expires by itself");
        }
    }
}

/// A waiter for one nonce's confirmations, removed when the wait ends or is cancelled.
struct Waiting<'a> {
    replica: &'a Replica,
    nonce: u64,
}

impl<'a> Waiting<'a> {
    fn new(replica: &'a Replica, nonce: u64, sender: mpsc::UnboundedSender<String>) -> Self {
        replica
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(nonce, sender);
        Waiting { replica, nonce }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.replica
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.nonce);
    }
}

/// Follows the other replicas' changes until `stop` turns true: subscribes to invalidations
/// (and this replica's ack channel) at `url`, applies them to `authorizer`'s cache and
/// confirms those that ask for it; once first subscribed, keeps this replica's heartbeat in
/// the live set, and leaves the set when stopped.
pub async fn follow(
    url: String,
    authorizer: Arc<Authorizer>,
    replica: Arc<Replica>,
    stop: watch::Receiver<bool>,
) {
    let (subscribed, first_subscription) = watch::channel(false);
    tokio::join!(
        subscribe(url, authorizer, replica.clone(), subscribed, stop.clone()),
        keep_heartbeat(&replica, first_subscription, stop),
    );
    replica.leave().await;
}

/// Writes the heartbeat every [`HEARTBEAT_EVERY`] from the first subscription until `stop`.
async fn keep_heartbeat(
    replica: &Replica,
    mut subscribed: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) {
    tokio::select! {
        result = subscribed.wait_for(|up| *up) => if result.is_err() { return },
        () = until_stopped(stop.clone()) => return,
    }
    let mut failing = false;
    loop {
        match replica.heartbeat().await {
            Ok(()) if failing => {
                info!("replica heartbeat written again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                warn!("cannot write the replica heartbeat ({e}); retrying");
                failing = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            () = until_stopped(stop.clone()) => return,
        }
    }
}

/// Subscribes to invalidations at `url` and applies them to this replica's cache until
/// `stop` turns true. Every (re)subscription drops the whole cache first, since messages may
/// have been missed; `subscribed` turns true at the first.
async fn subscribe(
    url: String,
    authorizer: Arc<Authorizer>,
    replica: Arc<Replica>,
    subscribed: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
) {
    let keys = authorizer.keys();
    crate::redis::init_tls();
    let client = match redis::Client::open(url) {
        Ok(client) => client,
        Err(e) => {
            warn!("invalid Redis URL for invalidations: {e}");
            return;
        }
    };
    let acks = invalidation_acks(&replica.id);
    let mut subscribed_before = false;
    loop {
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(INVALIDATIONS).await?;
            pubsub.subscribe(&acks).await?;
            keys.clear();
            subscribed.send_replace(true);
            if subscribed_before {
                info!("invalidation channel back; dropped the whole key cache");
            }
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Ok(text) = message.get_payload::<String>() else {
                    continue;
                };
                if message.get_channel_name() == acks {
                    replica.acknowledged(&text);
                    continue;
                }
                let Some(message) = Message::decode(&text) else {
                    continue;
                };
                message.invalidation.apply(keys).await;
                if let Some(request) = message.ack.filter(|r| r.writer != replica.id) {
                    // Confirmed off the message loop, so that the next change is not held
                    // up by this one's round trip.
                    let replica = replica.clone();
                    tokio::spawn(async move {
                        if let Err(e) = replica.acknowledge(&request).await {
                            warn!("cannot confirm a cache invalidation ({e})");
                        }
                    });
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
            Invalidation::Plan("team: annual".into()),
            Invalidation::Imported("ab".repeat(32)),
            Invalidation::Unimported("cd".repeat(32)),
        ] {
            assert_eq!(
                Invalidation::decode(&invalidation.encode()),
                Some(invalidation.clone())
            );
            for ack in [
                None,
                Some(AckRequest {
                    writer: "0123456789abcdef".into(),
                    nonce: 42,
                }),
            ] {
                let message = Message {
                    ack,
                    invalidation: invalidation.clone(),
                };
                assert_eq!(Message::decode(&message.encode()), Some(message));
            }
        }
        assert_eq!(Invalidation::decode("x:1"), None);
        assert_eq!(Invalidation::decode("nothing"), None);
        assert_eq!(Message::decode("ack:w:notanumber;k:1"), None);
        assert_eq!(Message::decode("ack:w:1"), None);
    }

    /// The format earlier versions read: a plain change is unchanged, and an ack request
    /// reads as an unknown kind to them, so they ignore it rather than misapply it.
    #[test]
    fn earlier_readers_ignore_ack_requests() {
        assert_eq!(Invalidation::Key("abc".into()).encode(), "k:abc");
        let request = Message {
            ack: Some(AckRequest {
                writer: "w1".into(),
                nonce: 7,
            }),
            invalidation: Invalidation::Key("abc".into()),
        };
        assert_eq!(request.encode(), "ack:w1:7;k:abc");
        assert_eq!(Invalidation::decode(&request.encode()), None);
    }
}
