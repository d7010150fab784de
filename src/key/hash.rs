//! What keygate stores instead of secrets: an argon2id hash (PHC string) to verify a key,
//! an HMAC-SHA-256 digest under the server's pepper to find or cache it, and a short keyed
//! check that refuses most wrong secrets before argon2.
//!
//! # The cold path has a fixed cost
//!
//! argon2id is the only expensive thing keygate does, so it runs on a fixed set of worker
//! threads (`argon2.max_concurrent`, one per core by default), each owning one block of
//! argon2 memory allocated when the worker starts and reused for every job (zeroed after
//! each). Resident memory for hashing is therefore `workers × argon2.memory_kib` plus the
//! queue, whatever arrives; nothing is handed to the general-purpose allocator per job, so
//! its arena behaviour cannot make memory grow.
//!
//! Jobs wait in a bounded queue (16 per worker). Each carries its caller's deadline and a
//! reply channel:
//!
//! * a job that cannot finish before its deadline, judging by the queue ahead of it and the
//!   recent job duration, is refused at once ([`HashError::Busy`]), as is a job finding the
//!   queue full;
//! * a worker that takes a job whose caller has gone (the request was cancelled and its
//!   future dropped) or whose deadline has passed answers it without running argon2;
//! * a caller waits at most until its deadline, then gives up with [`HashError::Busy`].
//!
//! The data plane passes the deadline its caller sent (gRPC `grpc-timeout`) or waits
//! `argon2.wait` (200 ms by default); hashes for the management plane wait up to 10 s for
//! room in the queue.
//!
//! A stored hash whose memory cost exceeds a worker's block (it was made with a larger
//! `argon2.memory_kib` than the one configured now) is not verified: that would need memory
//! outside the bound. It is an error naming both sizes, so an operator raises
//! `argon2.memory_kib` back; it is never taken for a wrong secret.
//!
//! # The secret check
//!
//! [`Pepper::secret_check`] is a short keyed check of a secret, stored with its hash: the
//! first 32 bits of HMAC-SHA-256 under the pepper of a domain-separated message, tagged with
//! 16 bits that identify the pepper. A presented secret whose check differs is wrong, and
//! is refused without argon2; only a match (the right secret, or one guess in 2^32) costs a
//! worker. Without the pepper, a stolen database's checks are pseudo-random values that say
//! nothing about the secrets; with the pepper, a check narrows an offline search by 32
//! bits, which leaves issued keys (at least 256 bits of secret) exactly as out of reach.
//! Checks written under another pepper are recognised by their tag and ignored (argon2
//! decides, as for records that have no check).

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use zeroize::{Zeroize, Zeroizing};

/// Jobs that may wait per worker before new ones are refused.
const QUEUE_PER_WORKER: usize = 16;

/// How long a hash for the management plane may wait for a worker.
const MANAGEMENT_WAIT: Duration = Duration::from_secs(10);

/// Cost parameters for new argon2id hashes, and the workers that compute them. Existing
/// hashes keep the parameters recorded in their PHC string, so raising these affects only
/// keys issued afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Config {
    /// Memory per hash, in KiB. Each worker holds this much for its whole life; stored
    /// hashes needing more are not verified.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Worker threads, each running one hash at a time; 0 means one per CPU core.
    pub max_concurrent: usize,
    /// How long a verification may wait for a worker when its caller set no deadline.
    #[serde(with = "crate::clock::duration_text")]
    pub wait: Duration,
}

impl Default for Argon2Config {
    /// OWASP's recommended argon2id settings: 19 MiB, 2 iterations, 1 lane; one worker per
    /// core; 200 ms of waiting, Envoy's default ext_authz timeout.
    fn default() -> Self {
        Argon2Config {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 0,
            wait: Duration::from_millis(200),
        }
    }
}

impl Argon2Config {
    /// The argon2 parameters, or why they are unusable.
    pub fn params(&self) -> Result<Params, InvalidParams> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None).map_err(InvalidParams)
    }

    /// How many workers run: `max_concurrent`, or one per core.
    pub fn workers(&self) -> usize {
        match self.max_concurrent {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// argon2 refuses the configured memory, iterations or lanes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid argon2 parameters: {0}")]
pub struct InvalidParams(argon2::Error);

/// The pepper is too short to key digests safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the pepper has {0} bytes; at least 16 are required")]
pub struct PepperTooShort(usize);

/// Why the hashing workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configured parameters are unusable.
    #[error(transparent)]
    Params(#[from] InvalidParams),
    /// The operating system refused a worker thread.
    #[error("cannot start an argon2 worker thread: {0}")]
    Spawn(std::io::Error),
}

/// Why a hashing job gave no answer. Either way the secret was neither accepted nor
/// refused: callers answer UNAVAILABLE.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HashError {
    /// No worker could take the job before its deadline, or the queue was full.
    #[error("argon2 workers are busy; retry")]
    Busy,
    /// The stored hash needs more memory than a worker holds.
    #[error(
        "a stored argon2 hash needs {needed_kib} KiB, more than the {worker_kib} KiB each worker holds; raise argon2.memory_kib"
    )]
    TooCostly {
        /// What the hash needs.
        needed_kib: usize,
        /// What a worker holds.
        worker_kib: usize,
    },
    /// The workers stopped, or argon2 failed on valid input.
    #[error("secret hashing failed: {0}")]
    Failed(String),
}

/// Hashes and verifies secrets with argon2id on a fixed set of worker threads with
/// preallocated memory, never on the async runtime; see the module docs for the queue,
/// deadlines and cancellation.
#[derive(Clone)]
pub struct SecretHasher {
    jobs: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// What the workers and the submitters share.
struct Shared {
    params: Params,
    workers: usize,
    wait: Duration,
    /// argon2 verifications run (not those answered without running).
    verifications: AtomicU64,
    /// Jobs answered without running: their caller had gone or their deadline had passed.
    skipped: AtomicU64,
    /// Jobs refused at submission: the queue was full or too long for their deadline.
    refused: AtomicU64,
    /// Workers running a job now.
    busy: AtomicUsize,
    /// A moving average of how long a job takes, in microseconds; 0 until one has run.
    typical_micros: AtomicU64,
}

/// One job for a worker.
struct Job {
    work: Work,
    deadline: Instant,
    reply: oneshot::Sender<Result<Done, HashError>>,
}

enum Work {
    Verify {
        phc: String,
        secret: Zeroizing<Vec<u8>>,
    },
    Hash {
        secret: Zeroizing<Vec<u8>>,
    },
}

enum Done {
    Verified(bool),
    Hashed(String),
}

impl SecretHasher {
    /// Starts the workers for `config`. They stop when the last clone of the hasher is
    /// dropped.
    pub fn new(config: &Argon2Config) -> Result<Self, StartError> {
        let params = config.params()?;
        let workers = config.workers().max(1);
        let (jobs, queue) = mpsc::channel(workers * QUEUE_PER_WORKER);
        let shared = Arc::new(Shared {
            params: params.clone(),
            workers,
            wait: config.wait,
            verifications: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            typical_micros: AtomicU64::new(0),
        });
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..workers {
            let (queue, shared) = (queue.clone(), shared.clone());
            let blocks = params.block_count();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || work(&queue, &shared, blocks))
                .map_err(StartError::Spawn)?;
        }
        Ok(SecretHasher { jobs, shared })
    }

    /// The argon2id PHC string of `secret`, with a fresh random salt. Waits up to 10 s for a
    /// worker: management calls are rare and may be slower than requests.
    pub async fn hash(&self, secret: &str) -> Result<String, HashError> {
        self.hash_with_deadline(secret, Instant::now() + MANAGEMENT_WAIT, true)
            .await
    }

    /// [`SecretHasher::hash`] for the data plane, answered by `deadline` like
    /// [`SecretHasher::verify_by`]: [`HashError::Busy`] at once when the job cannot finish
    /// by then.
    pub async fn hash_by(&self, secret: &str, deadline: Instant) -> Result<String, HashError> {
        self.hash_with_deadline(secret, deadline, false)
            .instrument(tracing::debug_span!("argon2 hash"))
            .await
    }

    async fn hash_with_deadline(
        &self,
        secret: &str,
        deadline: Instant,
        wait_for_room: bool,
    ) -> Result<String, HashError> {
        let work = Work::Hash {
            secret: Zeroizing::new(secret.as_bytes().to_vec()),
        };
        match self.submit(work, deadline, wait_for_room).await? {
            Done::Hashed(phc) => Ok(phc),
            Done::Verified(_) => Err(HashError::Failed("unexpected answer".into())),
        }
    }

    /// Whether `secret` matches the PHC string `phc`, using the parameters recorded in it,
    /// waiting for a worker at most `argon2.wait`. A malformed PHC string is a mismatch, not
    /// an error.
    pub async fn verify(&self, phc: &str, secret: &str) -> Result<bool, HashError> {
        self.verify_by(phc, secret, self.deadline(None)).await
    }

    /// [`SecretHasher::verify`], answered by `deadline`: [`HashError::Busy`] at once when the
    /// job cannot finish by then, and at `deadline` at the latest.
    pub async fn verify_by(
        &self,
        phc: &str,
        secret: &str,
        deadline: Instant,
    ) -> Result<bool, HashError> {
        let work = Work::Verify {
            phc: phc.to_owned(),
            secret: Zeroizing::new(secret.as_bytes().to_vec()),
        };
        match self
            .submit(work, deadline, false)
            .instrument(tracing::debug_span!("argon2 verify"))
            .await?
        {
            Done::Verified(matched) => Ok(matched),
            Done::Hashed(_) => Err(HashError::Failed("unexpected answer".into())),
        }
    }

    /// `deadline`, or the configured wait from now when the caller set none.
    pub fn deadline(&self, deadline: Option<Instant>) -> Instant {
        deadline.unwrap_or_else(|| Instant::now() + self.shared.wait)
    }

    /// How many argon2 verifications have run since this hasher was made.
    pub fn verifications(&self) -> u64 {
        self.shared.verifications.load(Ordering::Relaxed)
    }

    /// How many jobs were answered without running: their caller had gone or their deadline
    /// had passed.
    pub fn skipped(&self) -> u64 {
        self.shared.skipped.load(Ordering::Relaxed)
    }

    /// How many jobs were refused at once: the queue was full or too long for their
    /// deadline.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// How many jobs are waiting for a free worker.
    pub fn queued(&self) -> u64 {
        (self.jobs.max_capacity() - self.jobs.capacity()) as u64
    }

    /// How many workers there are.
    pub fn workers(&self) -> usize {
        self.shared.workers
    }

    /// Queues `work` to be answered by `deadline`; `wait_for_room` waits (until the
    /// deadline) for room in a full queue instead of refusing at once.
    async fn submit(
        &self,
        work: Work,
        deadline: Instant,
        wait_for_room: bool,
    ) -> Result<Done, HashError> {
        let refuse = || {
            self.shared.refused.fetch_add(1, Ordering::Relaxed);
            Err(HashError::Busy)
        };
        if !self.can_finish_by(deadline) {
            return refuse();
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            work,
            deadline,
            reply,
        };
        let until = tokio::time::Instant::from_std(deadline);
        if wait_for_room {
            match tokio::time::timeout_at(until, self.jobs.send(job)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(HashError::Failed("the workers stopped".into())),
                Err(_) => return refuse(),
            }
        } else {
            match self.jobs.try_send(job) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => return refuse(),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(HashError::Failed("the workers stopped".into()));
                }
            }
        }
        // Dropping `answer` (on timeout here, or when the caller's future is dropped) tells
        // the worker not to start the job.
        match tokio::time::timeout_at(until, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(HashError::Failed("the workers stopped".into())),
            Err(_) => Err(HashError::Busy),
        }
    }

    /// Whether a job queued now can be expected to finish by `deadline`: the jobs ahead of it
    /// run `workers` at a time, each taking about the recent typical duration.
    fn can_finish_by(&self, deadline: Instant) -> bool {
        let typical = Duration::from_micros(self.shared.typical_micros.load(Ordering::Relaxed));
        let ahead = self.queued() as usize + self.shared.busy.load(Ordering::Relaxed);
        let rounds = (ahead / self.shared.workers + 1) as u32;
        Instant::now() + typical * rounds <= deadline
    }
}

/// A worker: owns `blocks` KiB of argon2 memory for its whole life and runs jobs from
/// `queue` until every sender is gone.
fn work(queue: &Mutex<mpsc::Receiver<Job>>, shared: &Shared, blocks: usize) {
    let mut memory = vec![Block::new(); blocks];
    loop {
        let job = queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .blocking_recv();
        let Some(job) = job else { return };
        if job.reply.is_closed() || Instant::now() >= job.deadline {
            shared.skipped.fetch_add(1, Ordering::Relaxed);
            let _ = job.reply.send(Err(HashError::Busy));
            continue;
        }
        shared.busy.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let result = match job.work {
            Work::Verify { phc, secret } => {
                shared.verifications.fetch_add(1, Ordering::Relaxed);
                verify_with(&mut memory, &phc, &secret).map(Done::Verified)
            }
            Work::Hash { secret } => {
                hash_with(&mut memory, &shared.params, &secret).map(Done::Hashed)
            }
        };
        for block in memory.iter_mut() {
            block.zeroize();
        }
        let took = started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        let typical = shared.typical_micros.load(Ordering::Relaxed);
        let updated = if typical == 0 {
            took
        } else {
            typical - typical / 8 + took / 8
        };
        shared.typical_micros.store(updated, Ordering::Relaxed);
        shared.busy.fetch_sub(1, Ordering::Relaxed);
        let _ = job.reply.send(result);
    }
}

/// Recomputes the hash `phc` records for `secret` in `memory` and compares in constant
/// time. Anything malformed in `phc` is a mismatch.
fn verify_with(memory: &mut [Block], phc: &str, secret: &[u8]) -> Result<bool, HashError> {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return Ok(false);
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return Ok(false);
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return Ok(false);
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(version) => version.unwrap_or_default(),
        Err(_) => return Ok(false),
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return Ok(false);
    };
    if params.block_count() > memory.len() {
        return Err(HashError::TooCostly {
            needed_kib: params.block_count(),
            worker_kib: memory.len(),
        });
    }
    let mut output = Zeroizing::new([0u8; Output::MAX_LENGTH]);
    let Some(output) = output.get_mut(..expected.len()) else {
        return Ok(false);
    };
    if Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(secret, salt.as_ref(), output, &mut *memory)
        .is_err()
    {
        return Ok(false);
    }
    Ok(secrets_equal(output, expected.as_bytes()))
}

/// The argon2id PHC string of `secret` under `params` with a fresh salt, computed in
/// `memory`.
fn hash_with(memory: &mut [Block], params: &Params, secret: &[u8]) -> Result<String, HashError> {
    let failed = |e: &dyn fmt::Display| HashError::Failed(e.to_string());
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| failed(&e))?;
    let mut output = Zeroizing::new(vec![
        0u8;
        params
            .output_len()
            .unwrap_or(Params::DEFAULT_OUTPUT_LEN)
    ]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into_with_memory(secret, &salt, &mut output, &mut *memory)
        .map_err(|e| failed(&e))?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(params).map_err(|e| failed(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| failed(&e))?),
        hash: Some(Output::new(&output).map_err(|e| failed(&e))?),
    };
    Ok(phc.to_string())
}

/// The server's secret key for keyed digests. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct Pepper(Arc<hmac::Hmac<Sha256>>);

/// An HMAC-SHA-256 digest of a secret under the pepper. Safe to store and index: without the
/// pepper it reveals nothing about the secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({}..)", hex(&self.0[..4]))
    }
}

impl Digest {
    /// Eight of the digest's bytes as a number, uniform as the digest is: where it falls
    /// among slots.
    pub fn spread(&self) -> u64 {
        u64::from_le_bytes(self.0[..8].try_into().expect("eight bytes"))
    }

    /// Lower-case hex, for storage keys.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The digest whose [`Digest::to_hex`] is `text`.
    pub fn from_hex(text: &str) -> Option<Self> {
        unhex(text)?.try_into().ok().map(Digest)
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes hex `text` (either case, two digits a byte) writes; `None` for anything else.
pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

impl Pepper {
    /// Wraps pepper bytes; at least 16 are required. Only the HMAC state keyed with them is
    /// kept (it is wiped when dropped, as the bytes are now), so no request pays for keying.
    pub fn new(bytes: Vec<u8>) -> Result<Self, PepperTooShort> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < 16 {
            return Err(PepperTooShort(bytes.len()));
        }
        let keyed = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&bytes)
            .expect("HMAC accepts keys of any length");
        Ok(Pepper(Arc::new(keyed)))
    }

    /// HMAC-SHA-256 of `data` under the pepper.
    pub fn digest(&self, data: &[u8]) -> Digest {
        let mut mac = (*self.0).clone();
        mac.update(data);
        Digest(mac.finalize().into_bytes().into())
    }
}

/// What a stored secret check says about a presented secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckOutcome {
    /// The check differs: the secret is certainly wrong.
    Mismatch,
    /// The check matches: the secret may be right, argon2 decides.
    Match,
    /// The check was made under another pepper, or is malformed: it says nothing.
    Unknown,
}

/// Domain separation of the pepper tag.
const PEPPER_TAG_MESSAGE: &[u8] = b"keygate/pepper-tag";
/// Domain separation of secret checks, followed by a zero byte and the secret.
const SECRET_CHECK_MESSAGE: &[u8] = b"keygate/secret-check";

impl Pepper {
    /// The keyed check of `secret` stored beside its hash: `<tag>:<check>`, where `tag` is
    /// 16 bits identifying the pepper and `check` 32 bits of HMAC-SHA-256 of the secret
    /// under it, both lower-case hex. See the module docs for what it reveals.
    pub fn secret_check(&self, secret: &str) -> String {
        format!(
            "{}:{}",
            hex(&self.tag()),
            hex(&self.check_bytes(secret.as_bytes()))
        )
    }

    /// What the stored `check` says about `secret`, compared in constant time.
    pub fn compare_check(&self, check: &str, secret: &str) -> CheckOutcome {
        let Some((tag, value)) = check.split_once(':') else {
            return CheckOutcome::Unknown;
        };
        if !secrets_equal(tag.as_bytes(), hex(&self.tag()).as_bytes()) {
            return CheckOutcome::Unknown;
        }
        let presented = hex(&self.check_bytes(secret.as_bytes()));
        if secrets_equal(value.as_bytes(), presented.as_bytes()) {
            CheckOutcome::Match
        } else {
            CheckOutcome::Mismatch
        }
    }

    fn tag(&self) -> [u8; 2] {
        let digest = self.digest(PEPPER_TAG_MESSAGE);
        [digest.0[0], digest.0[1]]
    }

    fn check_bytes(&self, secret: &[u8]) -> [u8; 4] {
        let mut mac = (*self.0).clone();
        mac.update(SECRET_CHECK_MESSAGE);
        mac.update(&[0]);
        mac.update(secret);
        let digest: [u8; 32] = mac.finalize().into_bytes().into();
        [digest[0], digest[1], digest[2], digest[3]]
    }
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pepper(<redacted>)")
    }
}

/// Compares two secrets in time that depends only on their lengths, not their contents.
pub fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap_config() -> Argon2Config {
        Argon2Config {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 1,
            wait: Duration::from_secs(5),
        }
    }

    fn cheap() -> SecretHasher {
        SecretHasher::new(&cheap_config()).unwrap()
    }

    #[tokio::test]
    async fn argon2_phc_round_trip() {
        let hasher = cheap();
        let phc = hasher.hash("kg_live_secret").await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(!phc.contains("kg_live_secret"));
        assert!(hasher.verify(&phc, "kg_live_secret").await.unwrap());
        assert!(!hasher.verify(&phc, "kg_live_secreT").await.unwrap());
        assert!(!hasher.verify("not a phc string", "x").await.unwrap());
    }

    #[tokio::test]
    async fn verification_uses_the_parameters_recorded_in_the_hash() {
        let old = cheap().hash("s3cret").await.unwrap();
        let raised = SecretHasher::new(&Argon2Config {
            memory_kib: 128,
            iterations: 2,
            ..cheap_config()
        })
        .unwrap();
        assert!(raised.verify(&old, "s3cret").await.unwrap());
        assert!(raised.hash("s3cret").await.unwrap().contains("m=128,t=2"));
    }

    #[test]
    fn digests_depend_on_the_pepper() {
        let a = Pepper::new(vec![1; 32]).unwrap();
        let b = Pepper::new(vec![2; 32]).unwrap();
        assert_eq!(a.digest(b"key"), a.digest(b"key"));
        assert_ne!(a.digest(b"key"), b.digest(b"key"));
        assert_ne!(a.digest(b"key"), a.digest(b"kez"));
        let digest = a.digest(b"key");
        assert_eq!(Digest::from_hex(&digest.to_hex()), Some(digest));
        assert_eq!(Digest::from_hex("zz"), None);
        assert_eq!(Digest::from_hex(&"g".repeat(64)), None);
        assert_eq!(Digest::from_hex(&format!("+f{}", "0".repeat(62))), None);
        assert_eq!(Digest::from_hex(&"ab".repeat(31)), None, "31 bytes");
        assert_eq!(unhex("00fFa1"), Some(vec![0, 255, 161]));
        assert_eq!(unhex("abc"), None);
        assert!(Pepper::new(vec![0; 8]).is_err());
        assert_eq!(format!("{a:?}"), "Pepper(<redacted>)");
    }

    #[test]
    fn secret_checks_refuse_wrong_secrets_and_ignore_other_peppers() {
        let pepper = Pepper::new(vec![1; 32]).unwrap();
        let check = pepper.secret_check("kg_live_right");
        assert_eq!(check.len(), 4 + 1 + 8, "{check}");
        assert!(!check.contains("right"));
        assert_eq!(
            pepper.compare_check(&check, "kg_live_right"),
            CheckOutcome::Match
        );
        assert_eq!(
            pepper.compare_check(&check, "kg_live_wrong"),
            CheckOutcome::Mismatch
        );
        let other = Pepper::new(vec![2; 32]).unwrap();
        assert_eq!(
            other.compare_check(&check, "kg_live_right"),
            CheckOutcome::Unknown
        );
        assert_eq!(
            pepper.compare_check("garbage", "kg_live_right"),
            CheckOutcome::Unknown
        );
        // The check is not the lookup digest's prefix: the two are domain-separated.
        assert!(
            !pepper
                .digest(b"kg_live_right")
                .to_hex()
                .contains(&check[5..])
        );
    }

    #[tokio::test]
    async fn a_hash_needing_more_memory_than_a_worker_holds_is_an_error_not_a_mismatch() {
        let big = SecretHasher::new(&Argon2Config {
            memory_kib: 256,
            ..cheap_config()
        })
        .unwrap();
        let phc = big.hash("s3cret").await.unwrap();
        match cheap().verify(&phc, "s3cret").await {
            Err(HashError::TooCostly {
                needed_kib: 256,
                worker_kib: 64,
            }) => {}
            other => panic!("expected TooCostly, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_job_past_its_deadline_or_whose_caller_left_does_not_run() {
        let hasher = cheap();
        let phc = hasher.hash("s3cret").await.unwrap();
        let before = hasher.verifications();
        let past = Instant::now() - Duration::from_millis(1);
        assert!(matches!(
            hasher.verify_by(&phc, "s3cret", past).await,
            Err(HashError::Busy)
        ));
        assert_eq!(hasher.verifications(), before);
        assert_eq!(hasher.queued(), 0, "the queue depth does not leak");

        // Occupy the only worker with a slow hash, queue a verification, and drop it.
        let slow = SecretHasher::new(&Argon2Config {
            memory_kib: 8 * 1024,
            iterations: 4,
            ..cheap_config()
        })
        .unwrap();
        let busy = {
            let slow = slow.clone();
            tokio::spawn(async move { slow.hash("occupy").await })
        };
        while slow.shared.busy.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
        let far = Instant::now() + Duration::from_secs(30);
        let cancelled = {
            let slow = slow.clone();
            let phc = phc.clone();
            tokio::spawn(async move { slow.verify_by(&phc, "s3cret", far).await })
        };
        while slow.queued() == 0 {
            tokio::task::yield_now().await;
        }
        cancelled.abort();
        assert!(cancelled.await.unwrap_err().is_cancelled());
        busy.await.unwrap().unwrap();
        // The next job runs after the abandoned one was taken off the queue.
        assert!(slow.verify_by(&phc, "s3cret", far).await.unwrap());
        assert_eq!(slow.verifications(), 1, "the abandoned job never ran");
        assert_eq!(slow.skipped(), 1);
        assert_eq!(slow.queued(), 0);
    }

    #[tokio::test]
    async fn a_job_that_cannot_finish_in_time_is_refused_at_once() {
        let slow = SecretHasher::new(&Argon2Config {
            memory_kib: 8 * 1024,
            iterations: 4,
            ..cheap_config()
        })
        .unwrap();
        // Learn how long a job takes.
        let phc = slow.hash("s3cret").await.unwrap();
        let typical = Duration::from_micros(slow.shared.typical_micros.load(Ordering::Relaxed));
        assert!(typical > Duration::ZERO);
        let started = Instant::now();
        let answer = slow.verify_by(&phc, "s3cret", started + typical / 4).await;
        assert!(matches!(answer, Err(HashError::Busy)), "{answer:?}");
        assert!(
            started.elapsed() < typical / 4,
            "refused before its deadline"
        );
        assert_eq!(slow.refused(), 1);
        assert_eq!(slow.verifications(), 0);
    }

    #[test]
    fn constant_time_token_check() {
        assert!(secrets_equal(b"admin-token", b"admin-token"));
        assert!(!secrets_equal(b"admin-token", b"admin-tokeN"));
        assert!(!secrets_equal(b"admin-token", b"admin-token-longer"));
        assert!(!secrets_equal(b"", b"x"));
    }
}
