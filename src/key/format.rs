//! The textual form of keygate keys: `<prefix>_<body>`.
//!
//! The body is one run of characters from the profile's alphabet (no `_`, so a
//! double-click selects the whole key) made of three fixed-width parts:
//!
//! ```text
//! kg_live_ 3kTbq9XwL2mZ  <43 chars of secret>  Q7fK2a
//!          \ key id /    \      secret      /  \ checksum /
//! ```
//!
//! * the key id is public and names the record, so lookups are O(1);
//! * the secret is uniformly random; only its argon2id hash is stored;
//! * the checksum is CRC-32 of everything before it (prefix, `_`, id, secret). It rejects
//!   typos and random strings before any store access or hashing. It is an integrity
//!   check, not a secret: CRC-32 catches every single-character change.
//!
//! Every key keygate issues matches [`KEY_REGEX`]; each profile's exact shape is given by
//! [`KeyProfile::regex`].

use std::fmt;

use zeroize::Zeroizing;

/// Matches every key keygate issues, whatever the profile: a lower-case prefix (which may
/// itself contain `_`), one `_`, and a body of at least 24 base62 characters. Secret
/// scanners can use it as is; [`KeyProfile::regex`] is exact for one profile.
pub const KEY_REGEX: &str = r"\b[a-z][a-z0-9]*(?:_[a-z0-9]+)*_[0-9A-Za-z]{24,}\b";

/// The characters a key body is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Alphabet {
    /// `0-9A-Za-z`.
    Base62,
    /// `0-9a-f`.
    Hex,
}

impl Alphabet {
    fn chars(self) -> &'static [u8] {
        match self {
            Alphabet::Base62 => b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
            Alphabet::Hex => b"0123456789abcdef",
        }
    }

    fn contains(self, c: u8) -> bool {
        match self {
            Alphabet::Base62 => c.is_ascii_alphanumeric(),
            Alphabet::Hex => matches!(c, b'0'..=b'9' | b'a'..=b'f'),
        }
    }

    /// Bits of randomness one character carries.
    pub fn bits_per_char(self) -> f64 {
        (self.chars().len() as f64).log2()
    }

    /// Width of the key id part; wide enough that random ids rarely collide (a collision
    /// is caught by the store and a new id drawn).
    pub fn id_len(self) -> usize {
        match self {
            Alphabet::Base62 => 12,
            Alphabet::Hex => 16,
        }
    }

    /// Width of the checksum part: enough characters to hold a 32-bit CRC.
    pub fn checksum_len(self) -> usize {
        match self {
            Alphabet::Base62 => 6,
            Alphabet::Hex => 8,
        }
    }

    fn regex_class(self) -> &'static str {
        match self {
            Alphabet::Base62 => "[0-9A-Za-z]",
            Alphabet::Hex => "[0-9a-f]",
        }
    }

    /// `len` uniformly random characters of this alphabet, from the OS's CSPRNG.
    pub fn random(self, len: usize) -> Zeroizing<String> {
        let chars = self.chars();
        // Reject bytes at or above the largest multiple of the alphabet size so that every
        // character is equally likely.
        let bound = 256 - (256 % chars.len());
        let mut out = Zeroizing::new(String::with_capacity(len));
        let mut pool = Zeroizing::new([0u8; 64]);
        while out.len() < len {
            getrandom::fill(&mut pool[..]).expect("the operating system's random source failed");
            for &b in pool.iter() {
                if (b as usize) < bound && out.len() < len {
                    out.push(chars[b as usize % chars.len()] as char);
                }
            }
        }
        out
    }

    /// `value` written in exactly `width` characters, most significant first.
    fn encode_fixed(self, mut value: u64, width: usize) -> String {
        let chars = self.chars();
        let base = chars.len() as u64;
        let mut out = vec![b'0'; width];
        for slot in out.iter_mut().rev() {
            *slot = chars[(value % base) as usize];
            value /= base;
        }
        String::from_utf8(out).expect("alphabet characters are ASCII")
    }
}

/// A profile describes the shape of the keys one product issues: `twa_` + 43 base62
/// characters, `wmt_api_` + 48, and so on.
///
/// Written in the configuration as `{ name, prefix, alphabet, body_length }`; an empty or
/// absent prefix is the name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyProfile {
    /// Name the profile is selected by in CreateKey.
    pub name: String,
    /// Text before the `_` that starts the body, e.g. `kg_live`.
    #[serde(default)]
    pub prefix: String,
    /// Alphabet of the body.
    pub alphabet: Alphabet,
    /// Characters in the body: id + secret + checksum.
    #[serde(rename = "body_length")]
    pub body_len: usize,
}

/// Why a profile cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfileError {
    /// The prefix is not lower-case letters and digits in `_`-separated words.
    #[error(
        "prefix {0:?} must be lower-case letters and digits, words joined by '_', starting with a letter"
    )]
    BadPrefix(String),
    /// The body leaves too little room for the secret.
    #[error(
        "a body of {body_len} {alphabet:?} characters leaves {bits:.0} bits of secret; at least {min} are needed (raise body_length)"
    )]
    WeakSecret {
        /// Configured body length.
        body_len: usize,
        /// Configured alphabet.
        alphabet: Alphabet,
        /// Bits of secret that would remain.
        bits: f64,
        /// Required minimum.
        min: u32,
    },
}

/// Fewest random bits of secret a profile may carry.
pub const MIN_SECRET_BITS: u32 = 128;

/// The shape every plain keygate install issues: `kg_live_` + 61 base62 characters,
/// of which 43 (256 bits) are secret.
pub fn default_profile() -> KeyProfile {
    KeyProfile {
        name: "kg_live".into(),
        prefix: "kg_live".into(),
        alphabet: Alphabet::Base62,
        body_len: 61,
    }
}

impl KeyProfile {
    /// Checks the prefix syntax and that the secret keeps at least [`MIN_SECRET_BITS`].
    pub fn validate(&self) -> Result<(), ProfileError> {
        let words_ok = self.prefix.split('_').all(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
        if !words_ok || !self.prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(ProfileError::BadPrefix(self.prefix.clone()));
        }
        let bits = self.secret_bits();
        if bits < f64::from(MIN_SECRET_BITS) {
            return Err(ProfileError::WeakSecret {
                body_len: self.body_len,
                alphabet: self.alphabet,
                bits,
                min: MIN_SECRET_BITS,
            });
        }
        Ok(())
    }

    /// Characters of secret in the body.
    pub fn secret_len(&self) -> usize {
        self.body_len
            .saturating_sub(self.alphabet.id_len() + self.alphabet.checksum_len())
    }

    /// Bits of randomness in the secret.
    pub fn secret_bits(&self) -> f64 {
        self.secret_len() as f64 * self.alphabet.bits_per_char()
    }

    /// A regex matching exactly the keys of this profile.
    pub fn regex(&self) -> String {
        format!(
            r"\b{}_{}{{{}}}\b",
            self.prefix,
            self.alphabet.regex_class(),
            self.body_len
        )
    }

    /// A fresh random key id for this profile.
    pub fn new_key_id(&self) -> String {
        self.alphabet.random(self.alphabet.id_len()).to_string()
    }

    /// Renders a key with key id `id` and a fresh random secret.
    pub fn issue(&self, id: &str) -> IssuedKey {
        let secret = self.alphabet.random(self.secret_len());
        let mut text = Zeroizing::new(String::with_capacity(self.prefix.len() + 1 + self.body_len));
        text.push_str(&self.prefix);
        text.push('_');
        text.push_str(id);
        text.push_str(&secret);
        let checksum = self.checksum(&text);
        text.push_str(&checksum);
        IssuedKey {
            public_len: self.prefix.len() + 1 + id.len(),
            text,
        }
    }

    fn checksum(&self, covered: &str) -> String {
        let crc = crc32fast::hash(covered.as_bytes());
        self.alphabet
            .encode_fixed(u64::from(crc), self.alphabet.checksum_len())
    }

    /// Reads `text` as a key of this profile. Only the shape and checksum are checked;
    /// nothing is looked up.
    fn parse<'a>(&'a self, text: &'a str) -> Result<ParsedKey<'a>, ParseError> {
        let body = text
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('_'))
            .ok_or(ParseError::UnknownPrefix)?;
        if body.len() != self.body_len {
            return Err(ParseError::BadLength);
        }
        if !body.bytes().all(|c| self.alphabet.contains(c)) {
            return Err(ParseError::BadCharacter);
        }
        let split = text.len() - self.alphabet.checksum_len();
        let (covered, checksum) = text.split_at(split);
        if self.checksum(covered) != checksum {
            return Err(ParseError::BadChecksum);
        }
        let id_start = self.prefix.len() + 1;
        Ok(ParsedKey {
            profile: &self.name,
            id: &text[id_start..id_start + self.alphabet.id_len()],
            text,
        })
    }
}

/// A newly issued key. Its text is the secret: it is zeroized on drop and never printed by
/// `Debug`.
pub struct IssuedKey {
    text: Zeroizing<String>,
    public_len: usize,
}

impl IssuedKey {
    /// The whole key, as sent in `authorization: Bearer` or `x-api-key`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The key split for pair credentials: the public `api-key` (`<prefix>_<id>`) and the
    /// `api-secret` (the rest). Joined again they are the whole key.
    pub fn split_pair(&self) -> (&str, &str) {
        self.text.split_at(self.public_len)
    }
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IssuedKey(<redacted>)")
    }
}

/// A key that has the right shape and checksum for one of the configured profiles.
#[derive(Clone, Copy)]
pub struct ParsedKey<'a> {
    /// Name of the profile it belongs to.
    pub profile: &'a str,
    /// The public key id embedded in it.
    pub id: &'a str,
    /// The whole key text (secret).
    pub text: &'a str,
}

impl fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedKey")
            .field("profile", &self.profile)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a string is not a key of any configured profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// No profile has this prefix.
    #[error("unknown key prefix")]
    UnknownPrefix,
    /// The body has the wrong number of characters.
    #[error("wrong key length")]
    BadLength,
    /// The body holds a character outside the profile's alphabet.
    #[error("invalid character in key")]
    BadCharacter,
    /// The checksum does not match: a typo or a random string.
    #[error("key checksum mismatch")]
    BadChecksum,
}

/// Why a set of profiles cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProfilesError {
    /// One profile is unusable on its own.
    #[error("profile {name:?}: {error}")]
    Invalid {
        /// The profile.
        name: String,
        /// What is wrong with it.
        error: ProfileError,
    },
    /// Two profiles share a name.
    #[error("profile {0:?} is defined twice")]
    Duplicate(String),
    /// One prefix starts another, so keys could not be told apart.
    #[error("profiles {:?} and {:?} have overlapping prefixes {:?} and {:?}", names.0, names.1, prefixes.0, prefixes.1)]
    OverlappingPrefixes {
        /// The two profiles.
        names: (String, String),
        /// Their prefixes.
        prefixes: (String, String),
    },
    /// The default profile is not among them.
    #[error("default profile {0:?} is not defined")]
    NoDefault(String),
}

/// The configured key profiles, looked up by name (to issue) or by prefix (to parse).
#[derive(Debug, Clone)]
pub struct Profiles {
    profiles: Vec<KeyProfile>,
    default: usize,
}

impl Profiles {
    /// Builds the set; `default` must name one of `profiles`. Prefixes must be distinct and
    /// no prefix may be the start of another (`kg` and `kg_live`), so a key's prefix is
    /// never ambiguous.
    pub fn new(mut profiles: Vec<KeyProfile>, default: &str) -> Result<Self, ProfilesError> {
        for profile in &mut profiles {
            if profile.prefix.is_empty() {
                profile.prefix = profile.name.clone();
            }
        }
        for (i, a) in profiles.iter().enumerate() {
            a.validate().map_err(|error| ProfilesError::Invalid {
                name: a.name.clone(),
                error,
            })?;
            for b in &profiles[i + 1..] {
                if a.name == b.name {
                    return Err(ProfilesError::Duplicate(a.name.clone()));
                }
                let (pa, pb) = (format!("{}_", a.prefix), format!("{}_", b.prefix));
                if pa.starts_with(&pb) || pb.starts_with(&pa) {
                    return Err(ProfilesError::OverlappingPrefixes {
                        names: (a.name.clone(), b.name.clone()),
                        prefixes: (a.prefix.clone(), b.prefix.clone()),
                    });
                }
            }
        }
        let default = profiles
            .iter()
            .position(|p| p.name == default)
            .ok_or_else(|| ProfilesError::NoDefault(default.to_owned()))?;
        Ok(Profiles { profiles, default })
    }

    /// The profile named `name`.
    pub fn get(&self, name: &str) -> Option<&KeyProfile> {
        self.profiles.iter().find(|p| p.name == name)
    }

    /// The profile CreateKey uses when none is named.
    pub fn default_profile(&self) -> &KeyProfile {
        &self.profiles[self.default]
    }

    /// All profiles, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &KeyProfile> {
        self.profiles.iter()
    }

    /// Reads `text` as a key of whichever profile its prefix names. No I/O, no hashing.
    pub fn parse<'a>(&'a self, text: &'a str) -> Result<ParsedKey<'a>, ParseError> {
        let profile = self
            .profiles
            .iter()
            .find(|p| {
                text.strip_prefix(p.prefix.as_str())
                    .is_some_and(|rest| rest.starts_with('_'))
            })
            .ok_or(ParseError::UnknownPrefix)?;
        profile.parse(text)
    }
}

/// A generous estimate of the random bits in `text`: its length times the bits per
/// character of the smallest common alphabet holding it (hex, base62, base64url, printable
/// ASCII), and nothing for a text repeating a handful of characters (fewer distinct
/// characters than a quarter of its length, up to 8).
pub fn estimated_secret_bits(text: &str) -> f64 {
    let bytes = text.as_bytes();
    let distinct = bytes
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if distinct < (bytes.len() / 4).min(8) {
        return 0.0;
    }
    let alphabet: f64 = if bytes.iter().all(u8::is_ascii_hexdigit) {
        16.0
    } else if bytes.iter().all(u8::is_ascii_alphanumeric) {
        62.0
    } else if bytes
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_'))
    {
        64.0
    } else {
        94.0
    };
    bytes.len() as f64 * alphabet.log2()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_pass_the_secret_floor_and_short_or_repetitive_texts_do_not() {
        let issued = default_profile().issue("AAAAAAAAAAAA");
        assert!(estimated_secret_bits(issued.text()) >= f64::from(MIN_SECRET_BITS));
        assert!(estimated_secret_bits(&Alphabet::Base62.random(22)) >= 128.0);
        assert!(estimated_secret_bits(&Alphabet::Hex.random(32)) >= 128.0);
        for weak in [
            "z",
            "password123",
            &"a".repeat(64),
            &"ab".repeat(40),
            "0123456789abcdef",
        ] {
            assert!(estimated_secret_bits(weak) < 128.0, "{weak}");
        }
    }

    fn hex_profile() -> KeyProfile {
        KeyProfile {
            name: "ctw".into(),
            prefix: "ctw".into(),
            alphabet: Alphabet::Hex,
            body_len: 56,
        }
    }

    fn profiles() -> Profiles {
        let wmt = KeyProfile {
            name: "wmt".into(),
            prefix: "wmt_api".into(),
            alphabet: Alphabet::Base62,
            body_len: 48,
        };
        Profiles::new(vec![default_profile(), hex_profile(), wmt], "kg_live").unwrap()
    }

    #[test]
    fn default_profile_carries_256_bits() {
        let p = default_profile();
        assert!(p.secret_bits() >= 256.0, "{}", p.secret_bits());
        p.validate().unwrap();
    }

    #[test]
    fn render_parse_round_trip_for_every_profile() {
        let set = profiles();
        for profile in set.iter() {
            let id = profile.new_key_id();
            let key = profile.issue(&id);
            let parsed = set.parse(key.text()).unwrap();
            assert_eq!(parsed.profile, profile.name);
            assert_eq!(parsed.id, id);
            assert_eq!(
                key.text().len(),
                profile.prefix.len() + 1 + profile.body_len
            );
            let (api_key, api_secret) = key.split_pair();
            assert_eq!(api_key, format!("{}_{id}", profile.prefix));
            assert_eq!(format!("{api_key}{api_secret}"), key.text());
        }
    }

    #[test]
    fn issued_keys_match_the_documented_shapes() {
        let set = profiles();
        let text = set
            .default_profile()
            .issue("AAAAAAAAAAAA")
            .text()
            .to_string();
        assert!(text.starts_with("kg_live_AAAAAAAAAAAA"));
        assert!(!text["kg_live_".len()..].contains('_'));
        let body = &text["kg_live_".len()..];
        assert!(body.bytes().all(|c| c.is_ascii_alphanumeric()));
        let hex = set.get("ctw").unwrap().issue("0123456789abcdef");
        assert!(
            hex.text()["ctw_".len()..]
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        );
    }

    #[test]
    fn checksum_rejects_every_single_character_change() {
        let set = profiles();
        for profile in set.iter() {
            let key = profile.issue(&profile.new_key_id());
            let text = key.text().as_bytes();
            let body_start = profile.prefix.len() + 1;
            for pos in 0..text.len() {
                for &c in profile.alphabet.chars().iter().chain(b"_-x".iter()) {
                    if c == text[pos] {
                        continue;
                    }
                    let mut changed = text.to_vec();
                    changed[pos] = c;
                    let changed = String::from_utf8(changed).unwrap();
                    let result = set.parse(&changed);
                    assert!(result.is_err(), "accepted {pos}:{}", c as char);
                    if pos >= body_start && profile.alphabet.contains(c) {
                        assert_eq!(result.unwrap_err(), ParseError::BadChecksum);
                    }
                }
            }
        }
    }

    #[test]
    fn random_strings_and_wrong_shapes_are_rejected() {
        let set = profiles();
        let body = Alphabet::Base62.random(61);
        let random = format!("kg_live_{}", &*body);
        assert_eq!(set.parse(&random).unwrap_err(), ParseError::BadChecksum);
        assert_eq!(set.parse("twa_abc").unwrap_err(), ParseError::UnknownPrefix);
        assert_eq!(set.parse("kg_live_abc").unwrap_err(), ParseError::BadLength);
        assert_eq!(set.parse("").unwrap_err(), ParseError::UnknownPrefix);
        let mut wrong = random.clone();
        wrong.replace_range(10..11, "é");
        assert!(set.parse(&wrong).is_err());
    }

    #[test]
    fn keys_match_the_scanner_regexes() {
        let set = profiles();
        let any_key = regex::Regex::new(KEY_REGEX).unwrap();
        for profile in set.iter() {
            let exact = regex::Regex::new(&profile.regex()).unwrap();
            let key = profile.issue(&profile.new_key_id());
            let line = format!("token = \"{}\";", key.text());
            assert_eq!(any_key.find(&line).unwrap().as_str(), key.text());
            assert_eq!(exact.find(&line).unwrap().as_str(), key.text());
            let truncated = &key.text()[..key.text().len() - 1];
            assert!(!exact.is_match(truncated));
        }
        assert!(!any_key.is_match("hello_world"));
    }

    #[test]
    fn profile_validation_refuses_weak_or_malformed_profiles() {
        let seed_001_shape = KeyProfile {
            name: "ctw".into(),
            prefix: "ctw".into(),
            alphabet: Alphabet::Hex,
            body_len: 32,
        };
        assert!(matches!(
            seed_001_shape.validate(),
            Err(ProfileError::WeakSecret { .. })
        ));
        let seed_000_shape = KeyProfile {
            name: "twa".into(),
            prefix: "twa".into(),
            alphabet: Alphabet::Base62,
            body_len: 43,
        };
        seed_000_shape.validate().unwrap();
        for prefix in ["", "Kg", "kg__live", "_kg", "kg-live", "1kg", "kg_"] {
            let p = KeyProfile {
                prefix: prefix.into(),
                ..default_profile()
            };
            assert!(
                matches!(p.validate(), Err(ProfileError::BadPrefix(_))),
                "{prefix}"
            );
        }
        let overlapping = Profiles::new(
            vec![
                default_profile(),
                KeyProfile {
                    name: "kg".into(),
                    prefix: "kg".into(),
                    ..default_profile()
                },
            ],
            "kg_live",
        );
        assert!(overlapping.unwrap_err().to_string().contains("overlapping"));
        assert!(Profiles::new(vec![default_profile()], "nope").is_err());
    }

    #[test]
    fn random_characters_are_spread_over_the_alphabet() {
        let text = Alphabet::Base62.random(62 * 200);
        let mut counts = [0usize; 128];
        for c in text.bytes() {
            counts[c as usize] += 1;
        }
        for &c in Alphabet::Base62.chars() {
            assert!(
                counts[c as usize] > 100,
                "{} seen {}",
                c as char,
                counts[c as usize]
            );
        }
    }
}
