//! Keys migrated by the digest another system kept of them: that SHA-256 digest as the
//! import names it, the entropy floor below which it is refused, and the keyed form keygate
//! stores until the key's first use.
//!
//! # What a SHA-256 digest is worth
//!
//! SHA-256 is fast. Whoever holds the digest of a key can test guesses offline, billions
//! per second per GPU, so the digest protects the key only as far as the key's own
//! randomness does: a 16-character base62 key (about 95 bits) is out of reach, an 8-digit
//! PIN is found at once. keygate therefore refuses digests of keys that carry fewer than
//! [`ENTROPY_FLOOR_BITS`] random bits ([`entropy_bits`]) unless the admin accepts the risk,
//! and keeps a digest only until the key is first used: that verification stores keygate's
//! own argon2id hash and keyed lookup digest, and drops the SHA-256 digest.
//!
//! Meanwhile the record holds the digest keyed with the pepper ([`Sha256Digest::keyed`]),
//! never as the other system had it: a copy of keygate's store without the pepper gives
//! nothing to test guesses against.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use sha2::{Digest as _, Sha256};

use super::format::MIN_SECRET_BITS;
use super::hash::{Digest, Pepper, unhex};

/// The fewest random bits a key imported by digest must carry, unless the admin accepts
/// less: the floor every issued key's secret keeps.
pub const ENTROPY_FLOOR_BITS: u32 = MIN_SECRET_BITS;
/// The alphabet a key's random part is assumed to be drawn from when the import names
/// none: letters and digits.
pub const DEFAULT_ALPHABET_SIZE: u32 = 62;
/// The largest alphabet a key can use: printable ASCII without the space.
pub const MAX_ALPHABET_SIZE: u32 = 94;

/// Domain separation of the keyed form, followed by the 32 digest bytes. It holds a zero
/// byte, which no key text does, so it never equals the text of a key whose lookup digest
/// is kept in the same index.
const KEYED_MESSAGE: &[u8] = b"keygate/foreign-sha256\0";

/// How the text of a digest is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestEncoding {
    /// 64 hexadecimal digits, either case.
    Hex,
    /// Standard base64 of the 32 bytes, with or without `=` padding.
    Base64,
}

impl DigestEncoding {
    /// Its name in messages and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestEncoding::Hex => "hex",
            DigestEncoding::Base64 => "base64",
        }
    }
}

/// The SHA-256 digest of a whole key text. It is never printed: `Debug` shows nothing of it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Sha256Digest([u8; 32]);

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sha256Digest(<redacted>)")
    }
}

/// Why a digest's text was refused. The messages never quote the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadDigest {
    /// Hex text that is not 64 hexadecimal digits.
    #[error("a hex SHA-256 digest is 64 hexadecimal digits; this one has {0} characters")]
    Hex(usize),
    /// Text that is not standard base64.
    #[error(
        "not standard base64 (letters, digits, '+' and '/', optionally '=' padded); was it hex?"
    )]
    Base64,
    /// Base64 of something other than 32 bytes.
    #[error("a SHA-256 digest is 32 bytes; this base64 holds {0}")]
    Length(usize),
}

impl Sha256Digest {
    /// The digest of `text`, as another system computed it: SHA-256 of its bytes.
    pub fn of(text: &str) -> Self {
        Sha256Digest(Sha256::digest(text.as_bytes()).into())
    }

    /// The digest `text` writes in `encoding`; blanks around it are ignored.
    pub fn parse(text: &str, encoding: DigestEncoding) -> Result<Self, BadDigest> {
        let text = text.trim();
        let bytes: [u8; 32] = match encoding {
            DigestEncoding::Hex => unhex(text)
                .and_then(|decoded| decoded.try_into().ok())
                .ok_or_else(|| BadDigest::Hex(text.chars().count()))?,
            DigestEncoding::Base64 => {
                let engine = if text.ends_with('=') {
                    &STANDARD
                } else {
                    &STANDARD_NO_PAD
                };
                let decoded = engine.decode(text).map_err(|_| BadDigest::Base64)?;
                decoded
                    .as_slice()
                    .try_into()
                    .map_err(|_| BadDigest::Length(decoded.len()))?
            }
        };
        Ok(Sha256Digest(bytes))
    }

    /// The form keygate stores and indexes: HMAC-SHA-256 under the pepper of a
    /// domain-separated message holding the digest.
    pub fn keyed(&self, pepper: &Pepper) -> Digest {
        let mut message = [0u8; KEYED_MESSAGE.len() + 32];
        message[..KEYED_MESSAGE.len()].copy_from_slice(KEYED_MESSAGE);
        message[KEYED_MESSAGE.len()..].copy_from_slice(&self.0);
        pepper.digest(&message)
    }
}

/// The random bits of a key whose random part is `random_chars` characters drawn from an
/// alphabet of `alphabet_size`: `random_chars × log2(alphabet_size)`. An upper bound:
/// a key made with less care carries less.
pub fn entropy_bits(random_chars: usize, alphabet_size: u32) -> f64 {
    random_chars as f64 * f64::from(alphabet_size.max(1)).log2()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
    /// SHA-256 of `KEY`, as `sha256sum` writes it.
    const HEX: &str = "78a08441f4314f0a2833cfe58c62e555a162264206982cda39f6804f5048f570";
    /// The same, as `openssl dgst -sha256 -binary | base64` writes it.
    const BASE64: &str = "eKCEQfQxTwooM8/ljGLlVaFiJkIGmCzaOfaAT1BI9XA=";

    #[test]
    fn hex_and_base64_name_the_same_digest() {
        let digest = Sha256Digest::of(KEY);
        let hex = crate::key::hash::hex(&digest.0);
        let b64 = STANDARD.encode(digest.0);
        assert_eq!(Sha256Digest::parse(&hex, DigestEncoding::Hex), Ok(digest));
        let upper = hex.to_uppercase();
        assert_eq!(Sha256Digest::parse(&upper, DigestEncoding::Hex), Ok(digest));
        assert_eq!(
            Sha256Digest::parse(&b64, DigestEncoding::Base64),
            Ok(digest)
        );
        let unpadded = b64.trim_end_matches('=');
        assert_eq!(
            Sha256Digest::parse(unpadded, DigestEncoding::Base64),
            Ok(digest)
        );
        assert_eq!(Sha256Digest::parse(HEX, DigestEncoding::Hex), Ok(digest));
        assert_eq!(
            Sha256Digest::parse(BASE64, DigestEncoding::Base64),
            Ok(digest)
        );
        assert_ne!(Sha256Digest::of("sk_live_other"), digest);
        assert_eq!(format!("{digest:?}"), "Sha256Digest(<redacted>)");
    }

    #[test]
    fn malformed_digests_are_refused_without_being_quoted() {
        for (text, encoding, expected) in [
            ("abc", DigestEncoding::Hex, BadDigest::Hex(3)),
            (&"g".repeat(64), DigestEncoding::Hex, BadDigest::Hex(64)),
            (&"a".repeat(63), DigestEncoding::Hex, BadDigest::Hex(63)),
            ("not base64!", DigestEncoding::Base64, BadDigest::Base64),
            ("-_-_", DigestEncoding::Base64, BadDigest::Base64),
            ("AAAA", DigestEncoding::Base64, BadDigest::Length(3)),
        ] {
            let error = Sha256Digest::parse(text, encoding).unwrap_err();
            assert_eq!(error, expected, "{text}");
            assert!(!error.to_string().contains(text), "{error}");
        }
        let hex_as_base64 = Sha256Digest::parse(HEX, DigestEncoding::Base64).unwrap_err();
        assert_eq!(hex_as_base64, BadDigest::Length(48));
    }

    #[test]
    fn the_keyed_form_depends_on_the_pepper_and_is_no_lookup_digest() {
        let a = Pepper::new(vec![1; 32]).unwrap();
        let b = Pepper::new(vec![2; 32]).unwrap();
        let digest = Sha256Digest::of(KEY);
        assert_eq!(digest.keyed(&a), digest.keyed(&a));
        assert_ne!(digest.keyed(&a), digest.keyed(&b));
        assert_ne!(digest.keyed(&a), a.digest(KEY.as_bytes()));
        assert_ne!(digest.keyed(&a), a.digest(&digest.0));
    }

    #[test]
    fn entropy_is_characters_times_bits_per_character() {
        assert_eq!(entropy_bits(32, 16), 128.0);
        assert!((entropy_bits(22, 62) - 131.0).abs() < 0.1);
        assert!(entropy_bits(21, 62) < f64::from(ENTROPY_FLOOR_BITS));
        assert_eq!(entropy_bits(8, 10).floor(), 26.0);
        assert_eq!(entropy_bits(0, 62), 0.0);
    }
}
