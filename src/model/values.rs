//! Validated values that arrive from outside: names, scopes, networks and metadata.
//!
//! Each type can only be built by its `parse` constructor, so holding one means the value
//! passed the rule. The server (for every request) and the CLI (before any network call)
//! use these same types, so both refuse exactly the same input. Errors name the field and
//! say what is expected.

use std::collections::BTreeMap;
use std::ops::Deref;

use ipnet::IpNet;

use crate::error::{Error, Result, quote};

/// Longest name, display name or external id accepted, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// Most metadata entries per record.
pub const MAX_METADATA_ENTRIES: usize = 64;
/// Longest metadata key, in bytes.
pub const MAX_METADATA_KEY_LEN: usize = 128;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_LEN: usize = 1024;
/// Most scopes per key.
pub const MAX_SCOPES: usize = 64;
/// Most allowed networks per key.
pub const MAX_CIDRS: usize = 64;
/// Longest scope, in characters.
pub const MAX_SCOPE_LEN: usize = 128;

/// A required identifier: `value` without surrounding blanks, refused when blank.
pub fn required<'a>(field: &str, value: &'a str) -> Result<&'a str> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Error::InvalidArgument(format!("{field} is required")));
    }
    Ok(value)
}

/// Unicode's format characters (general category Cf, Unicode 16): invisible characters
/// that change how the text around them displays, such as bidi controls (U+202E) and
/// zero-width characters (U+200B).
const FORMAT_CHARACTERS: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{0600}', '\u{0605}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{06DD}', '\u{06DD}'),
    ('\u{070F}', '\u{070F}'),
    ('\u{0890}', '\u{0891}'),
    ('\u{08E2}', '\u{08E2}'),
    ('\u{180E}', '\u{180E}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{2064}'),
    ('\u{2066}', '\u{206F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFF9}', '\u{FFFB}'),
    ('\u{110BD}', '\u{110BD}'),
    ('\u{110CD}', '\u{110CD}'),
    ('\u{13430}', '\u{1343F}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0001}', '\u{E0001}'),
    ('\u{E0020}', '\u{E007F}'),
];

/// Whether `c` is a Unicode format character (general category Cf).
pub fn is_format(c: char) -> bool {
    FORMAT_CHARACTERS
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
}

/// Refuses `value` if it holds a control character or, with `readable`, a format
/// character ([`is_format`]): text a person reads must show what it says.
fn refuse_hidden(field: &str, value: &str, readable: bool) -> Result<()> {
    let hidden = |c: &char| c.is_control() || (readable && is_format(*c));
    match value.chars().find(hidden) {
        Some(c) => Err(Error::InvalidArgument(format!(
            "{field} contains U+{:04X}, a control{} character; remove it",
            u32::from(c),
            if readable {
                " or invisible formatting (bidi, zero-width)"
            } else {
                ""
            }
        ))),
        None => Ok(()),
    }
}

/// A human-readable name: not blank, at most [`MAX_NAME_LEN`] characters, no control or
/// format characters ([`is_format`]). Surrounding blanks are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    /// Checks `value` as the field `field`.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        let value = required(field, value)?;
        if value.chars().count() > MAX_NAME_LEN {
            return Err(Error::InvalidArgument(format!(
                "{field} must be at most {MAX_NAME_LEN} characters"
            )));
        }
        refuse_hidden(field, value, true)?;
        Ok(Name(value.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as an owned string, for a record.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// One scope: letters, digits and `_ . : / -`, starting with a letter or digit, at most
/// [`MAX_SCOPE_LEN`] characters (`read`, `billing:write`, `keygate:keys`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(String);

impl Scope {
    /// Checks `value` as a scope of the field `field`.
    pub fn parse(field: &str, value: &str) -> Result<Self> {
        let valid = value.len() <= MAX_SCOPE_LEN
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:/-".contains(c));
        if !valid {
            return Err(Error::InvalidArgument(format!(
                "{field}: scope {} is not valid: use letters, digits and _ . : / - (e.g. read, billing:write), at most {MAX_SCOPE_LEN} characters",
                quote(value)
            )));
        }
        Ok(Scope(value.to_owned()))
    }

    /// The scope as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key's scopes: at most [`MAX_SCOPES`] valid [`Scope`]s, duplicates dropped, order kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(Vec<String>);

impl Scopes {
    /// Checks `values` as the field `field`.
    pub fn parse(field: &str, values: &[String]) -> Result<Self> {
        if values.len() > MAX_SCOPES {
            return Err(Error::InvalidArgument(format!(
                "{field}: at most {MAX_SCOPES} scopes are allowed"
            )));
        }
        let mut out: Vec<String> = Vec::with_capacity(values.len());
        for value in values {
            let scope = Scope::parse(field, value)?;
            if !out.contains(&scope.0) {
                out.push(scope.0);
            }
        }
        Ok(Scopes(out))
    }

    /// The scopes, for a record or a request.
    pub fn into_vec(self) -> Vec<String> {
        self.0
    }
}

impl Deref for Scopes {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

/// Client networks a key may be used from: at most [`MAX_CIDRS`] CIDRs (`10.0.0.0/8`,
/// `2001:db8::/32`) or single addresses, each normalised to its network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cidrs(Vec<IpNet>);

impl Cidrs {
    /// Checks `values` as the field `field`.
    pub fn parse(field: &str, values: &[String]) -> Result<Self> {
        if values.len() > MAX_CIDRS {
            return Err(Error::InvalidArgument(format!(
                "{field}: at most {MAX_CIDRS} networks are allowed"
            )));
        }
        values
            .iter()
            .map(|text| {
                let text = text.trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map(|net| net.trunc())
                    .map_err(|_| {
                        Error::InvalidArgument(format!(
                            "{field}: {} is not a CIDR like 203.0.113.0/24 or an IP address",
                            quote(text)
                        ))
                    })
            })
            .collect::<Result<_>>()
            .map(Cidrs)
    }

    /// The networks, for a record.
    pub fn into_vec(self) -> Vec<IpNet> {
        self.0
    }

    /// The networks as text (`10.0.0.0/8`), for a request.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }
}

impl Deref for Cidrs {
    type Target = [IpNet];
    fn deref(&self) -> &[IpNet] {
        &self.0
    }
}

/// Free-form attributes: at most [`MAX_METADATA_ENTRIES`] entries; keys of 1 to
/// [`MAX_METADATA_KEY_LEN`] bytes, not blank, without control or format characters; values
/// of at most [`MAX_METADATA_VALUE_LEN`] bytes without control characters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    /// Checks `entries` as the field `field`.
    pub fn parse<'a>(
        field: &str,
        entries: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Result<Self> {
        let map: BTreeMap<String, String> = entries
            .into_iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if map.len() > MAX_METADATA_ENTRIES {
            return Err(Error::InvalidArgument(format!(
                "{field} has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
                map.len()
            )));
        }
        for (k, v) in &map {
            let key = || format!("{field} key {}", quote(k));
            if k.trim().is_empty() || k.len() > MAX_METADATA_KEY_LEN {
                return Err(Error::InvalidArgument(format!(
                    "{} must be 1 to {MAX_METADATA_KEY_LEN} bytes",
                    key()
                )));
            }
            refuse_hidden(&key(), k, true)?;
            let value = format!("{field} value for {}", quote(k));
            if v.len() > MAX_METADATA_VALUE_LEN {
                return Err(Error::InvalidArgument(format!(
                    "{value} is longer than {MAX_METADATA_VALUE_LEN} bytes"
                )));
            }
            refuse_hidden(&value, v, false)?;
        }
        Ok(Metadata(map))
    }

    /// The entries, for a record.
    pub fn into_map(self) -> BTreeMap<String, String> {
        self.0
    }
}

impl Deref for Metadata {
    type Target = BTreeMap<String, String>;
    fn deref(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn cidrs_accept_networks_and_addresses() {
        let parsed = Cidrs::parse(
            "allowed_cidrs",
            &strings(&["10.1.2.3/8", "2001:db8::1", " 192.0.2.7 "]),
        )
        .unwrap();
        assert_eq!(
            parsed.to_strings(),
            ["10.0.0.0/8", "2001:db8::1/128", "192.0.2.7/32"]
        );
        let error = Cidrs::parse("allowed_cidrs", &strings(&["10.0.0.300/8"])).unwrap_err();
        assert!(error.to_string().contains("10.0.0.300/8"), "{error}");
        assert!(error.to_string().starts_with("allowed_cidrs"), "{error}");
        let many: Vec<String> = (0..65).map(|i| format!("10.0.0.{i}")).collect();
        assert!(Cidrs::parse("allowed_cidrs", &many).is_err());
    }

    #[test]
    fn scopes_are_checked_and_deduplicated() {
        let parsed = Scopes::parse("scopes", &strings(&["read", "billing:write", "read"])).unwrap();
        assert_eq!(&*parsed, ["read", "billing:write"]);
        for bad in ["", " read", "wr ite", ":x", "a\u{e9}", &"s".repeat(129)] {
            let error = Scopes::parse("scopes", &strings(&[bad])).unwrap_err();
            assert!(error.to_string().starts_with("scopes"), "{error}");
        }
        let many: Vec<String> = (0..65).map(|i| format!("s{i}")).collect();
        assert!(Scopes::parse("scopes", &many).is_err());
        assert!(Scope::parse("scope", "a.b/c-d_e:f").is_ok());
    }

    #[test]
    fn names_are_bounded() {
        assert_eq!(Name::parse("name", "  CI  ").unwrap().as_str(), "CI");
        assert!(Name::parse("name", "   ").is_err());
        assert!(Name::parse("name", &"x".repeat(201)).is_err());
        assert!(Name::parse("name", &"é".repeat(200)).is_ok());
        assert!(Name::parse("name", "a\u{7}b").is_err());
        assert!(Name::parse("name", "日本語 Ünïcode ok").is_ok());
        for hidden in [
            "\u{202e}",
            "\u{200b}",
            "\u{2066}",
            "\u{feff}",
            "\u{ad}",
            "\n",
            "\u{e0041}",
        ] {
            let error = Name::parse("key.name", &format!("ad{hidden}min")).unwrap_err();
            let text = error.to_string();
            assert!(text.starts_with("key.name contains U+"), "{text}");
            assert!(
                !text.contains(hidden),
                "the message shows the character escaped: {text}"
            );
        }
        let error = Name::parse("display_name", "").unwrap_err();
        assert!(error.to_string().contains("display_name"), "{error}");
    }

    #[test]
    fn metadata_is_bounded() {
        let too_many: HashMap<_, _> = (0..65).map(|i| (i.to_string(), String::new())).collect();
        assert!(Metadata::parse("metadata", &too_many).is_err());
        assert!(
            Metadata::parse("metadata", &HashMap::from([(String::new(), "v".into())])).is_err()
        );
        let long_value = HashMap::from([("k".to_owned(), "v".repeat(1025))]);
        assert!(Metadata::parse("metadata", &long_value).is_err());
        let ok = HashMap::from([("k".to_owned(), "v".repeat(1024))]);
        assert_eq!(Metadata::parse("metadata", &ok).unwrap().len(), 1);
        let long_key = HashMap::from([("k".repeat(129), String::new())]);
        let error = Metadata::parse("metadata", &long_key)
            .unwrap_err()
            .to_string();
        assert!(error.len() < 120, "the key is quoted short: {error}");
    }

    #[test]
    fn metadata_has_no_control_characters() {
        let accepted = HashMap::from([("team".to_owned(), "Zürich \u{200d} ok".to_owned())]);
        assert!(Metadata::parse("metadata", &accepted).is_ok());
        for (k, v) in [
            ("te\nam", "x"),
            ("te\u{202e}am", "x"),
            ("team", "a\tb"),
            ("team", "\u{0}"),
        ] {
            let entry = HashMap::from([(k.to_owned(), v.to_owned())]);
            let error = Metadata::parse("metadata", &entry).unwrap_err().to_string();
            assert!(error.starts_with("metadata "), "{error}");
            assert!(error.contains("U+"), "{error}");
        }
    }
}
