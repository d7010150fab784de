//! Turns a presented credential into the key record it proves, or into nothing.
//!
//! Keys in a configured profile's format are parsed (shape and checksum, no I/O), looked up
//! by the id they embed, and verified against the stored argon2id hash. Anything else is
//! looked up by its keyed digest, for keys imported from another system. A secret replaced
//! by rotation is accepted until its grace period ends. (Imported keys that happen to be in
//! a configured profile's format keep their embedded id, so the first path finds them.)

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::key::format::Profiles;
use crate::key::hash::{Pepper, SecretHasher};
use crate::model::KeyRecord;
use crate::store::Store;

/// Which of a key's secrets a credential matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchedSecret {
    /// The current secret.
    Current,
    /// The secret a rotation replaced; whether its grace period still lasts is the policy's
    /// call, made at the time of each request.
    Previous,
}

/// A credential that proved a key.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The key's record as stored.
    pub key: KeyRecord,
    /// Which secret matched.
    pub matched: MatchedSecret,
}

/// Verifies presented credentials against the store.
#[derive(Clone)]
pub struct KeyVerifier {
    store: Arc<dyn Store>,
    hasher: SecretHasher,
    pepper: Pepper,
    profiles: Arc<Profiles>,
}

impl KeyVerifier {
    /// A verifier over `store`.
    pub fn new(
        store: Arc<dyn Store>,
        hasher: SecretHasher,
        pepper: Pepper,
        profiles: Arc<Profiles>,
    ) -> Self {
        KeyVerifier {
            store,
            hasher,
            pepper,
            profiles,
        }
    }

    /// The key `presented` proves, or `None` if it proves none (malformed, unknown, wrong
    /// secret). Store failures are errors, not `None`.
    pub async fn verify(&self, presented: &str) -> Result<Option<Verified>> {
        let record = match self.profiles.parse(presented) {
            Ok(parsed) => self.store.get_key(parsed.id).await?,
            Err(_) => {
                let digest = self.pepper.digest(presented.as_bytes()).to_hex();
                self.store.find_key_by_digest(&digest).await?
            }
        };
        let Some(key) = record else {
            return Ok(None);
        };
        let hash_failed = |e: crate::key::hash::HashError| Error::Unavailable(e.to_string());
        if self
            .hasher
            .verify(&key.secret_hash, presented)
            .await
            .map_err(hash_failed)?
        {
            return Ok(Some(Verified {
                key,
                matched: MatchedSecret::Current,
            }));
        }
        let Some(previous) = key.previous_secret.clone() else {
            return Ok(None);
        };
        if !self
            .hasher
            .verify(&previous.hash, presented)
            .await
            .map_err(hash_failed)?
        {
            return Ok(None);
        }
        Ok(Some(Verified {
            key,
            matched: MatchedSecret::Previous,
        }))
    }
}
