//! What keygate stores instead of secrets: an argon2id hash (PHC string) to verify a key,
//! and an HMAC-SHA-256 digest under the server's pepper to find or cache it.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use argon2::{Algorithm, Argon2, Params, PasswordHasher, PasswordVerifier, Version};
use hmac::{KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use tracing::Instrument;
use zeroize::Zeroizing;

/// Cost parameters for new argon2id hashes. Existing hashes keep the parameters recorded in
/// their PHC string, so raising these affects only keys issued afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Argon2Config {
    /// Memory per hash, in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
    /// Most hashes computed at once; 0 means one per CPU core.
    pub max_concurrent: usize,
}

impl Default for Argon2Config {
    /// OWASP's recommended argon2id settings: 19 MiB, 2 iterations, 1 lane.
    fn default() -> Self {
        Argon2Config {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
            max_concurrent: 0,
        }
    }
}

impl Argon2Config {
    /// The argon2 parameters, or why they are unusable.
    pub fn params(&self) -> Result<Params, InvalidParams> {
        Params::new(self.memory_kib, self.iterations, self.parallelism, None).map_err(InvalidParams)
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

/// Hashes and verifies secrets with argon2id on the blocking thread pool, never on the async
/// runtime, with at most a fixed number running at once.
#[derive(Clone)]
pub struct SecretHasher {
    params: Params,
    permits: Arc<Semaphore>,
    verifications: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
}

/// A hashing task could not run (the blocking pool is shutting down) or its parameters were
/// rejected.
#[derive(Debug, thiserror::Error)]
#[error("secret hashing failed: {0}")]
pub struct HashError(String);

impl SecretHasher {
    /// A hasher for `config`, whose parameters must already be valid.
    pub fn new(config: &Argon2Config) -> Result<Self, InvalidParams> {
        let workers = match config.max_concurrent {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(SecretHasher {
            params: config.params()?,
            permits: Arc::new(Semaphore::new(workers)),
            verifications: Arc::new(AtomicU64::new(0)),
            queued: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The argon2id PHC string of `secret`, with a fresh random salt.
    pub async fn hash(&self, secret: &str) -> Result<String, HashError> {
        let secret = Zeroizing::new(secret.as_bytes().to_vec());
        let params = self.params.clone();
        self.run(move || {
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(&secret)
                .map(|hash| hash.to_string())
                .map_err(|e| HashError(e.to_string()))
        })
        .await?
    }

    /// Whether `secret` matches the PHC string `phc`, using the parameters recorded in it.
    /// A malformed PHC string is a mismatch, not an error.
    pub async fn verify(&self, phc: &str, secret: &str) -> Result<bool, HashError> {
        let secret = Zeroizing::new(secret.as_bytes().to_vec());
        let phc = phc.to_owned();
        self.verifications.fetch_add(1, Ordering::Relaxed);
        self.run(move || {
            Argon2::default()
                .verify_password(&secret, phc.as_str())
                .is_ok()
        })
        .instrument(tracing::debug_span!("argon2 verify"))
        .await
    }

    /// How many verifications have been started since this hasher was made.
    pub fn verifications(&self) -> u64 {
        self.verifications.load(Ordering::Relaxed)
    }

    /// How many jobs are waiting for a free worker.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }

    /// Runs `work` on the blocking pool once one of the bounded permits is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashError> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let permit = self.permits.acquire().await;
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let _permit = permit.map_err(|e| HashError(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| HashError(e.to_string()))
    }
}

/// The server's secret key for keyed digests. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct Pepper(Arc<Zeroizing<Vec<u8>>>);

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
    /// Lower-case hex, for storage keys.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// The digest whose [`Digest::to_hex`] is `text`.
    pub fn from_hex(text: &str) -> Option<Self> {
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Digest(bytes))
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Pepper {
    /// Wraps pepper bytes; at least 16 are required.
    pub fn new(bytes: Vec<u8>) -> Result<Self, PepperTooShort> {
        let bytes = Zeroizing::new(bytes);
        if bytes.len() < 16 {
            return Err(PepperTooShort(bytes.len()));
        }
        Ok(Pepper(Arc::new(bytes)))
    }

    /// HMAC-SHA-256 of `data` under the pepper.
    pub fn digest(&self, data: &[u8]) -> Digest {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(data);
        Digest(mac.finalize().into_bytes().into())
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

    fn cheap() -> SecretHasher {
        SecretHasher::new(&Argon2Config {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
            max_concurrent: 1,
        })
        .unwrap()
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
            parallelism: 1,
            max_concurrent: 1,
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
        assert!(Pepper::new(vec![0; 8]).is_err());
        assert_eq!(format!("{a:?}"), "Pepper(<redacted>)");
    }

    #[test]
    fn constant_time_token_check() {
        assert!(secrets_equal(b"admin-token", b"admin-token"));
        assert!(!secrets_equal(b"admin-token", b"admin-tokeN"));
        assert!(!secrets_equal(b"admin-token", b"admin-token-longer"));
        assert!(!secrets_equal(b"", b"x"));
    }
}
