//! The name of every Redis key and channel keygate uses, in one place.
//!
//! These names are on the wire: data written under them must stay readable by the next
//! version, so a name never changes without a migration.
//!
//! Every key starts with `kg:`, so keygate can share a Redis with other applications. Every
//! key name carries a hash tag, the part in `{…}`: Redis Cluster places a key by its hash tag
//! alone, so keys with the same tag share a slot, and only keys of one slot can be touched by
//! one command or one Lua script (see [`scripts`](super::scripts)). The tag of each name is
//! chosen so that everything one atomic step touches shares it:
//!
//! | tag | keys | why together |
//! | --- | --- | --- |
//! | `{o:OWNER}` | an owner's record, its key records and their order | a key's insert checks its owner and quota; a key's record and its place in the order change together |
//! | `{owners}` | the owner listing and the external-id index | an owner's external id is claimed and its id listed in one step |
//! | `{plans}` | every plan | a plan's read-modify-write is one compare-and-set, and a listing one read |
//! | `{keys}` | the key-id and digest indexes | a key's id and its lookup digest are claimed together |
//! | `{OWNER}` (after `kg:rw:`) | an owner's rate-limit window logs, quota meters and its keys' credits | one decision checks and charges all of its windows, quotas and credits in one step |
//! | `{DIGEST}` (after `kg:l2:`) | one shared verification | nothing: the tag only spreads these over the cluster |
//! | `{u:KEY}` | one key's daily usage counts | a flush writes, and a query reads, one key's days in one pipeline |
//! | `{replicas}` | the live replica set | nothing: it is touched alone |
//!
//! The invalidation and ack channels are not keys: a message published on one reaches
//! subscribers on every node of a cluster.

// The store (`store/redis.rs`). Records are JSON; lists are sorted sets with every
// score 0, so that `ZRANGEBYLEX` pages them in id order.

/// Every owner id, a sorted set (scores 0) paged in id order when owners are listed. An id
/// is listed once its external id is claimed.
pub const OWNER_IDS: &str = "kg:{owners}:ids";

/// External id → owner id, a hash. Only keeps external ids unique; owners are never looked
/// up by it. Shares the `{owners}` slot with [`OWNER_IDS`], as both change in one step.
pub const OWNERS_BY_EXTERNAL_ID: &str = "kg:{owners}:by_external";

/// Plan name → the plan, JSON, a hash: every plan in one key, as plans are few and are
/// listed whole.
pub const PLANS: &str = "kg:{plans}:records";

/// Key id → owner id, a hash: which owner's slot holds a key's record. An entry is the
/// claim on a key id, taken before the record is written.
pub const OWNER_OF: &str = "kg:{keys}:owner_of";

/// Lookup digest (lower-case hex) → key id, a hash: finds imported keys. Shares the `{keys}`
/// slot with [`OWNER_OF`], as a key's id and digest are claimed and released together.
pub const KEYS_BY_DIGEST: &str = "kg:{keys}:by_digest";

/// An owner's record, a JSON string. Tagged with the owner (`{o:ID}`) like the owner's keys
/// ([`owner_keys`], [`owner_key_ids`]), so that a key's insert can check its owner in the
/// same step.
pub fn owner_record(owner_id: &str) -> String {
    format!("kg:{{o:{owner_id}}}:owner")
}

/// An owner's keys, a hash: key id → the key record, JSON. Tagged with the owner, so a key's
/// insert counts the owner's other keys against its quota in the same step.
pub fn owner_keys(owner_id: &str) -> String {
    format!("kg:{{o:{owner_id}}}:keys")
}

/// An owner's key ids, a sorted set (scores 0) that pages the owner's keys in id order.
/// Tagged with the owner, as it changes with [`owner_keys`] in one step.
pub fn owner_key_ids(owner_id: &str) -> String {
    format!("kg:{{o:{owner_id}}}:key_ids")
}

// The rate limiter (`ratelimit/redis.rs`).

/// One window's log for one key, a string (see the rate limiter's script) that expires when
/// its newest unit leaves the window. Tagged with the key's owner, like
/// [`owner_rate_window`], so every window of one decision — per key or per owner — lives in
/// one slot and is checked and charged in one step.
pub fn key_rate_window(owner_id: &str, key_id: &str, period_ms: u64) -> String {
    format!("kg:rw:{{{owner_id}}}:k:{key_id}:{period_ms}")
}

/// One calendar quota's meter for one key, a hash (`since`: the cycle's start in ms, `value`:
/// units counted) that expires a day after its cycle ends. `cycle` names the period and
/// anchor (`month@15`). Tagged with the key's owner like the windows, so a decision checks
/// its windows and quotas in one step.
pub fn key_quota(owner_id: &str, key_id: &str, cycle: &str) -> String {
    format!("kg:rw:{{{owner_id}}}:k:{key_id}:q:{cycle}")
}

/// One calendar quota's meter shared by all of an owner's keys, a hash like
/// [`key_quota`]'s.
pub fn owner_quota(owner_id: &str, cycle: &str) -> String {
    format!("kg:rw:{{{owner_id}}}:o:q:{cycle}")
}

/// One key's credits, a hash (`since`: the grant in ms, `value`: credits left, `epoch`: the
/// last refill step applied). Tagged with the key's owner like the windows.
pub fn key_credits(owner_id: &str, key_id: &str) -> String {
    format!("kg:rw:{{{owner_id}}}:k:{key_id}:credits")
}

/// The start of the name of every meter and window log of one key ([`key_credits`],
/// [`key_quota`], [`key_rate_window`]): what is forgotten with the key.
pub fn key_limits_prefix(owner_id: &str, key_id: &str) -> String {
    format!("kg:rw:{{{owner_id}}}:k:{key_id}:")
}

/// A meter of the in-process limiter, saved by a Redis store: the meter's own name
/// ([`key_quota`], [`key_credits`]...) behind a prefix of its own, JSON. Its hash tag is the
/// meter's.
pub fn stored_meter(name: &str) -> String {
    format!("kg:m:{name}")
}

/// One key's requests on one day (days since 1970-01-01 in the configured time zone), a
/// hash: `allowed` and `denied:CODE` → count. Expires once the day leaves the kept history.
/// Tagged with the key, so a key's days are written and read in one pipeline.
pub fn key_daily_usage(key_id: &str, day: i32) -> String {
    format!("kg:{{u:{key_id}}}:usage:{day}")
}

/// One window's log shared by all of an owner's keys, a string like
/// [`key_rate_window`]'s, tagged with the owner for the same reason.
pub fn owner_rate_window(owner_id: &str, period_ms: u64) -> String {
    format!("kg:rw:{{{owner_id}}}:o:{period_ms}")
}

// The shared verification cache (`crate::cache`).

/// What a replica verified a presented key as, a string (`KEY_ID c|p FINGERPRINT`) that
/// expires after the shared cache TTL, so other replicas skip the argon2 check. Named by the
/// lookup digest (lower-case hex) of the presented text; the digest is its own hash tag, which
/// spreads these entries over the cluster (each is read and written alone).
pub fn shared_verification(digest_hex: &str) -> String {
    format!("kg:l2:{{{digest_hex}}}")
}

// Cache invalidation (`invalidation.rs`).

/// The pub/sub channel on which replicas tell each other that a key or owner changed. A
/// channel has no slot: a message published on any node reaches subscribers on every node.
pub const INVALIDATIONS: &str = "kg:invalidations";

/// The live replicas, a sorted set: replica id → its last heartbeat, in milliseconds of
/// Redis' clock. Read and written alone, by one script at a time.
pub const LIVE_REPLICAS: &str = "kg:{replicas}:live";

/// The pub/sub channel on which replicas confirm to the writer `replica_id` that they
/// applied one of its invalidations.
pub fn invalidation_acks(replica_id: &str) -> String {
    format!("kg:invalidation_acks:{replica_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are on the wire: stored data is found by them.
    #[test]
    fn names_stay_as_stored() {
        assert_eq!(owner_record("o1"), "kg:{o:o1}:owner");
        assert_eq!(owner_keys("o1"), "kg:{o:o1}:keys");
        assert_eq!(owner_key_ids("o1"), "kg:{o:o1}:key_ids");
        assert_eq!(PLANS, "kg:{plans}:records");
        assert_eq!(key_rate_window("o1", "k1", 60_000), "kg:rw:{o1}:k:k1:60000");
        assert_eq!(owner_rate_window("o1", 1_000), "kg:rw:{o1}:o:1000");
        assert_eq!(
            key_quota("o1", "k1", "month@15"),
            "kg:rw:{o1}:k:k1:q:month@15"
        );
        assert_eq!(owner_quota("o1", "week"), "kg:rw:{o1}:o:q:week");
        assert_eq!(key_credits("o1", "k1"), "kg:rw:{o1}:k:k1:credits");
        for name in [
            key_credits("o1", "k1"),
            key_quota("o1", "k1", "day"),
            key_rate_window("o1", "k1", 1000),
        ] {
            assert!(name.starts_with(&key_limits_prefix("o1", "k1")), "{name}");
        }
        assert!(!key_credits("o1", "k10").starts_with(&key_limits_prefix("o1", "k1")));
        assert_eq!(
            stored_meter("kg:rw:{o1}:o:q:day"),
            "kg:m:kg:rw:{o1}:o:q:day"
        );
        assert_eq!(shared_verification("ab12"), "kg:l2:{ab12}");
        assert_eq!(INVALIDATIONS, "kg:invalidations");
        assert_eq!(LIVE_REPLICAS, "kg:{replicas}:live");
        assert_eq!(invalidation_acks("r1"), "kg:invalidation_acks:r1");
    }
}
