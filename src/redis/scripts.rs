//! Every Lua script keygate runs in Redis. Each runs atomically and names only keys of one
//! hash slot (see [`keyspace`](super::keyspace)), so it runs unchanged on Redis Cluster. Each comment says
//! what the script expects in `KEYS` and `ARGV` and what it returns; callers send them with
//! EVALSHA, and the script is loaded again after a Redis restart or `SCRIPT FLUSH`.
//!
//! The store's scripts come first, then the rate limiter's, then the live replica set's.

// The store (`store/redis.rs`).

/// Claims an owner's external id and lists its id.
///
/// `KEYS[1]`: `kg:{owners}:ids`, `KEYS[2]`: `kg:{owners}:by_external`.
/// `ARGV[1]`: the owner id, `ARGV[2]`: its external id.
/// Returns 1 when claimed (or already claimed by this owner id, after an interrupted
/// attempt), 0 when another owner holds the external id. The id itself is unique through
/// `SET NX` on the owner's record, done before.
pub const CLAIM_OWNER: &str = r#"
local holder = redis.call('HGET', KEYS[2], ARGV[2])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[1], 'NX', 0, ARGV[1])
return 1
"#;

/// Claims a new key's id and, for imported keys, its lookup digest.
///
/// `KEYS[1]`: `kg:{keys}:owner_of`, `KEYS[2]`: `kg:{keys}:by_digest`.
/// `ARGV[1]`: the key id, `ARGV[2]`: its owner id, `ARGV[3]` (only if it has one): its lookup
/// digest.
/// Returns 0 when claimed, 1 when the key id is taken, 2 when another key holds the digest.
/// A digest held by a key that has no `owner_of` entry is a leftover of a deleted key and is
/// taken over.
pub const CLAIM_KEY: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  return 1
end
if #ARGV >= 3 then
  local holder = redis.call('HGET', KEYS[2], ARGV[3])
  if holder and redis.call('HEXISTS', KEYS[1], holder) == 1 then
    return 2
  end
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 0
"#;

/// Releases a key's claims: its `owner_of` entry and its digest, each only if it still names
/// this key.
///
/// `KEYS[1]`: `kg:{keys}:owner_of`, `KEYS[2]`: `kg:{keys}:by_digest`.
/// `ARGV[1]`: the key id, `ARGV[2]`: its owner id, `ARGV[3]` (only if it has one): its lookup
/// digest.
/// Returns 1.
pub const RELEASE_KEY: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if #ARGV >= 3 and redis.call('HGET', KEYS[2], ARGV[3]) == ARGV[1] then
  redis.call('HDEL', KEYS[2], ARGV[3])
end
return 1
"#;

/// Claims a lookup digest for an existing key that an update gives one.
///
/// `KEYS[1]`: `kg:{keys}:owner_of`, `KEYS[2]`: `kg:{keys}:by_digest`.
/// `ARGV[1]`: the digest, `ARGV[2]`: the key id.
/// Returns 0 when newly claimed, 1 when this key held it already, 2 when another key holds
/// it, 3 when the key has no `owner_of` entry (it is gone).
pub const CLAIM_DIGEST: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[2]) == 0 then
  return 3
end
local holder = redis.call('HGET', KEYS[2], ARGV[1])
if holder == ARGV[2] then
  return 1
end
if holder and redis.call('HEXISTS', KEYS[1], holder) == 1 then
  return 2
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 0
"#;

/// Stores a new key record, checking the owner and, when given, the quota in the same step.
///
/// `KEYS[1]`: `kg:{o:ID}:owner`, `KEYS[2]`: `kg:{o:ID}:keys`, `KEYS[3]`: `kg:{o:ID}:key_ids`.
/// `ARGV[1]`: the key id, `ARGV[2]`: its JSON record; with a quota, `ARGV[3]`: the most counted
/// keys, `ARGV[4]`: the time (Unix seconds) at which expiry is judged.
/// Returns `{0, 0}` when stored, `{1, 0}` when the owner does not exist, `{2, 0}` when the
/// owner has a record with this id, `{3, counted}` when the quota is reached.
///
/// A key counts as in `KeyRecord::counts_against_quota`: not revoked and not expired.
pub const INSERT_KEY: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {1, 0}
end
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then
  return {2, 0}
end
if #ARGV >= 4 then
  local max, now = tonumber(ARGV[3]), tonumber(ARGV[4])
  local counted = 0
  for _, json in ipairs(redis.call('HVALS', KEYS[2])) do
    local key = cjson.decode(json)
    local expires = key.expires_at
    if key.state ~= 'revoked' and (expires == nil or expires == cjson.null or expires > now) then
      counted = counted + 1
    end
  end
  if counted >= max then
    return {3, counted}
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
return {0, 0}
"#;

/// Removes a key record and its place in the owner's id order.
///
/// `KEYS[1]`: `kg:{o:ID}:keys`, `KEYS[2]`: `kg:{o:ID}:key_ids`.
/// `ARGV[1]`: the key id.
/// Returns the removed JSON record, or nil when there was none.
pub const DELETE_KEY: &str = r#"
local json = redis.call('HGET', KEYS[1], ARGV[1])
if json then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
return json
"#;

/// One page of an owner's keys in id order, ids and records read together.
///
/// `KEYS[1]`: `kg:{o:ID}:key_ids`, `KEYS[2]`: `kg:{o:ID}:keys`.
/// `ARGV[1]`: the `ZRANGEBYLEX` lower bound (`-` or `(` + the last id seen), `ARGV[2]`: the most
/// ids to read (at most a few thousand: they are unpacked onto the Lua stack).
/// Returns `{id1, json1, id2, json2, ...}`, a json nil where a record is missing.
pub const LIST_KEYS_PAGE: &str = r#"
local ids = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
if #ids == 0 then
  return {}
end
local records = redis.call('HMGET', KEYS[2], unpack(ids))
local out = {}
for i, id in ipairs(ids) do
  out[2 * i - 1] = id
  out[2 * i] = records[i]
end
return out
"#;

/// Compare-and-set of a string: an owner's read-modify-write.
///
/// `KEYS[1]`: the string. `ARGV[1]`: the value read, `ARGV[2]`: the new value.
/// Returns 1 when replaced, 0 when the value was no longer the one read (or is gone).
pub const SET_IF_UNCHANGED: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// Compare-and-delete of a string: undoing an owner record whose claims were refused.
///
/// `KEYS[1]`: the string. `ARGV[1]`: the value written.
/// Returns 1 when deleted, 0 when the value had changed (it is left alone).
pub const DELETE_IF_UNCHANGED: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// Compare-and-set of a hash field: a key's read-modify-write.
///
/// `KEYS[1]`: the hash. `ARGV[1]`: the field, `ARGV[2]`: the value read, `ARGV[3]`: the new value.
/// Returns 1 when replaced, 0 when the value was no longer the one read (or is gone).
pub const HSET_IF_UNCHANGED: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"#;

/// Compare-and-delete of a hash field: releasing one index entry if it is still ours.
///
/// `KEYS[1]`: the hash. `ARGV[1]`: the field, `ARGV[2]`: the value it must have.
/// Returns 1 when deleted, 0 otherwise.
pub const HDEL_IF_EQUAL: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
"#;

// The rate limiter (`ratelimit/redis.rs`).

/// Checks and charges every window, calendar quota and the credits of a batch of decisions
/// for one subject, in order, with the window logs of `ratelimit/window.rs` and the meters of
/// `ratelimit/meters.rs`: the same steps, on the same structures kept in a string per window
/// and a hash per meter.
///
/// `KEYS`: one string per window, named by
/// [`keyspace::key_rate_window`](super::keyspace::key_rate_window) or
/// [`keyspace::owner_rate_window`](super::keyspace::owner_rate_window), then one hash per
/// quota ([`keyspace::key_quota`](super::keyspace::key_quota) or
/// [`keyspace::owner_quota`](super::keyspace::owner_quota)), then the credits' hash
/// ([`keyspace::key_credits`](super::keyspace::key_credits)) if the key has credits: all under
/// the owner's hash tag, so they share a cluster slot. A window's string holds three
/// little-endian doubles (units per group, units in the open group, newest time in ms) and
/// then the time of each closed group, oldest first; it expires when its newest unit leaves
/// the window. A meter's hash holds `since`, `value` and, for credits, `epoch`.
/// `ARGV[1]`: `check` (a decision is charged only if everything has room for it) or `charge`
/// (charged regardless: admissions made while Redis was away); `ARGV[2]`: the time in ms to
/// decide at, or empty for Redis's clock; `ARGV[3]`: the number of windows n; then, for each
/// window, its limit and its period in ms; then the number of quotas m and, for each, its
/// limit, its cycle's start (ms, by the deciding replica's clock) and how long to keep its
/// count (ms from now: until a day after the cycle ends); then
/// 1 and the credits' grant, grant time, refill step, refill kind (0 none, 1 add, 2 reset)
/// and refill amount, or 0 for no credits; then the cost of each decision.
/// Returns the numbers `now_ms, then per decision: allowed, then per window: count, newest,
/// wait, then per quota: used, fits, then for credits: left, fits`: the units counted (after
/// the decision, if admitted), the newest time logged and how long until the decision would
/// fit (0 when it fits, -1 when it never can); a quota's units counted in its cycle; the
/// credits left. They come packed in one string, each a little-endian double (read them with
/// [`unpack_numbers`]): a batch's hundreds of numbers then cost Redis and the client one bulk
/// string instead of an array of integers, each encoded and parsed on its own.
///
/// Times and counts are whole numbers far below 2^53, exact in Lua's doubles.
pub const CHECK_AND_CHARGE: &str = r#"
local now = tonumber(ARGV[2])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local n = tonumber(ARGV[3])
local HEADER = 24

-- The time of the j-th closed group of a body of packed times.
local function time_of(body, j)
  return (struct.unpack('<d', body, 8 * (j - 1) + 1))
end

local function regroup(w, size)
  local total = w.group * w.n + w.open
  local parts = {}
  for i = 1, math.floor(total / size) do
    local j = math.floor((i * size - 1) / w.group) + 1
    if j <= w.n then
      parts[i] = string.sub(w.body, 8 * (j - 1) + 1, 8 * j)
    else
      parts[i] = struct.pack('<d', w.newest)
    end
  end
  w.body, w.n, w.open, w.group = table.concat(parts), #parts, total % size, size
end

local function load(key, limit, period)
  local w = {group = 0, open = 0, newest = 0, body = '', n = 0, limit = limit, period = period}
  local s = redis.call('GET', key)
  if s then
    w.group, w.open, w.newest = struct.unpack('<ddd', s)
    local body = string.sub(s, HEADER + 1)
    local count = #body / 8
    local horizon = now - period
    local first = 1
    while first <= count and time_of(body, first) <= horizon do
      first = first + 1
    end
    w.body, w.n = string.sub(body, 8 * (first - 1) + 1), count - first + 1
    if w.n == 0 and w.newest <= horizon then
      w.open = 0
    end
  end
  local count = w.group * w.n + w.open
  local wanted = math.floor(limit / 100) + 1
  if w.group == 0 or count == 0 then
    w.group = wanted
  elseif w.group < wanted then
    regroup(w, wanted)
  elseif w.group > wanted then
    local size = math.max(wanted, math.ceil(count / 100))
    if size < w.group then
      regroup(w, size)
    end
  end
  return w
end

local function charge(w, cost)
  if now > w.newest then
    w.newest = now
  end
  local total = w.open + cost
  local filled = math.floor(total / w.group)
  if filled > 0 then
    w.body = w.body .. string.rep(struct.pack('<d', w.newest), filled)
    w.n = w.n + filled
  end
  w.open = total % w.group
end

local function wait(w, cost)
  if cost > w.limit then
    return -1
  end
  local j = math.ceil((w.group * w.n + w.open + cost - w.limit) / w.group)
  local leaves = w.newest
  if j >= 1 and j <= w.n then
    leaves = time_of(w.body, j)
  end
  return math.max(leaves + w.period - now, 1)
end

local logs = {}
for i = 1, n do
  logs[i] = load(KEYS[i], tonumber(ARGV[2 * i + 2]), tonumber(ARGV[2 * i + 3]))
end

-- A meter's since, value and epoch, 0 when it has none.
local function meter(key)
  local m = redis.call('HMGET', key, 'since', 'value', 'epoch')
  return {since = tonumber(m[1]) or 0, value = tonumber(m[2]) or 0, epoch = tonumber(m[3]) or 0}
end

local at = 2 * n + 4
local quotas = {}
for q = 1, tonumber(ARGV[at]) do
  local key = KEYS[n + q]
  local limit, start, keep = tonumber(ARGV[at + 3 * q - 2]), tonumber(ARGV[at + 3 * q - 1]), tonumber(ARGV[at + 3 * q])
  local m = meter(key)
  -- A meter of an earlier cycle counts again from zero; one of a later cycle is kept.
  if start > m.since then
    m.since, m.value = start, 0
  end
  m.key, m.limit, m.keep = key, limit, keep
  quotas[q] = m
end
at = at + 3 * #quotas + 1
local credits = nil
if tonumber(ARGV[at]) == 1 then
  local granted, granted_at, epoch = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2]), tonumber(ARGV[at + 3])
  local kind, amount = tonumber(ARGV[at + 4]), tonumber(ARGV[at + 5])
  credits = meter(KEYS[n + #quotas + 1])
  credits.key = KEYS[n + #quotas + 1]
  if credits.since ~= granted_at then
    credits.since, credits.value, credits.epoch, credits.changed = granted_at, granted, epoch, true
  elseif epoch > credits.epoch then
    if kind == 1 then
      credits.value = credits.value + (epoch - credits.epoch) * amount
    elseif kind == 2 then
      credits.value = amount
    end
    credits.epoch, credits.changed = epoch, true
  end
  at = at + 6
else
  at = at + 1
end

local out = {}
local function put(v)
  out[#out + 1] = struct.pack('<d', v)
end
put(now)
local charged = false
for d = at, #ARGV do
  local cost = tonumber(ARGV[d])
  local fits = {}
  local allowed = true
  for i, w in ipairs(logs) do
    fits[i] = w.group * w.n + w.open + cost <= w.limit
    allowed = allowed and fits[i]
  end
  local quota_fits = {}
  for q, m in ipairs(quotas) do
    quota_fits[q] = m.value + cost <= m.limit
    allowed = allowed and quota_fits[q]
  end
  local credits_fit = credits == nil or credits.value >= cost
  allowed = allowed and credits_fit
  if allowed or ARGV[1] == 'charge' then
    for _, w in ipairs(logs) do
      charge(w, cost)
    end
    for _, m in ipairs(quotas) do
      m.value = m.value + cost
    end
    if credits then
      credits.value = math.max(credits.value - cost, 0)
      credits.changed = true
    end
    charged = true
  end
  put(allowed and 1 or 0)
  for i, w in ipairs(logs) do
    put(w.group * w.n + w.open)
    put(w.newest)
    put(fits[i] and 0 or wait(w, cost))
  end
  for q, m in ipairs(quotas) do
    put(m.value)
    put(quota_fits[q] and 1 or 0)
  end
  if credits then
    put(credits.value)
    put(credits_fit and 1 or 0)
  end
end
if charged then
  for i, w in ipairs(logs) do
    local header = struct.pack('<ddd', w.group, w.open, w.newest)
    redis.call('SET', KEYS[i], header .. w.body, 'PX', w.newest + w.period - now)
  end
  for _, m in ipairs(quotas) do
    redis.call('HSET', m.key, 'since', m.since, 'value', m.value)
    redis.call('PEXPIRE', m.key, m.keep)
  end
end
if credits and credits.changed then
  redis.call('HSET', credits.key, 'since', credits.since, 'value', credits.value, 'epoch', credits.epoch)
end
return table.concat(out)
"#;

/// The whole numbers a script packed as little-endian doubles (see [`CHECK_AND_CHARGE`]), or
/// `None` when `packed` is not such a list.
pub fn unpack_numbers(packed: &[u8]) -> Option<Vec<i64>> {
    let numbers = packed.chunks_exact(8);
    if !numbers.remainder().is_empty() {
        return None;
    }
    numbers
        .map(|bytes| {
            let number = f64::from_le_bytes(bytes.try_into().ok()?);
            let whole = number.is_finite() && number.fract() == 0.0 && number.abs() < 2f64.powi(53);
            whole.then_some(number as i64)
        })
        .collect()
}

// The live replica set (`invalidation.rs`). Both read Redis' clock (`TIME`), so that the
// replicas' own clocks do not matter.

/// Writes a replica's heartbeat and deletes the heartbeats too old to matter.
///
/// `KEYS[1]`: `kg:{replicas}:live`.
/// `ARGV[1]`: the replica id, `ARGV[2]`: the age in milliseconds past which an entry is
/// deleted.
/// Returns 1.
pub const HEARTBEAT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return 1
"#;

/// The live replicas: those whose heartbeat is recent enough.
///
/// `KEYS[1]`: `kg:{replicas}:live`.
/// `ARGV[1]`: the oldest heartbeat, in milliseconds before now, that counts as live.
/// Returns the ids of the live replicas.
pub const LIVE_REPLICAS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZRANGEBYSCORE', KEYS[1], now - tonumber(ARGV[1]), '+inf')
"#;

#[cfg(test)]
mod tests {
    use super::unpack_numbers;

    fn packed(numbers: &[f64]) -> Vec<u8> {
        numbers.iter().flat_map(|n| n.to_le_bytes()).collect()
    }

    #[test]
    fn packed_whole_numbers_read_back_exactly() {
        let numbers = [1_764_600_000_123.0, 0.0, -1.0, 9_007_199_254_740_991.0];
        assert_eq!(
            unpack_numbers(&packed(&numbers)),
            Some(vec![1_764_600_000_123, 0, -1, 9_007_199_254_740_991])
        );
        assert_eq!(unpack_numbers(&[]), Some(vec![]));
    }

    #[test]
    fn anything_but_packed_whole_numbers_is_refused() {
        assert_eq!(unpack_numbers(&packed(&[1.0])[..7]), None, "a cut number");
        assert_eq!(unpack_numbers(&packed(&[1.5])), None, "a fraction");
        assert_eq!(unpack_numbers(&packed(&[f64::NAN])), None);
        assert_eq!(unpack_numbers(&packed(&[f64::INFINITY])), None);
        assert_eq!(
            unpack_numbers(&packed(&[2f64.powi(53)])),
            None,
            "past exact"
        );
    }
}
