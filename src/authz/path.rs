//! Request paths as route rules see them. A client can spell one resource many ways
//! (`//admin/x`, `/%61dmin/x`, `/v1/../admin/x`); a rule written for `/admin/` must cover
//! every spelling the upstream may serve as `/admin/...`, so rules match the normalized path
//! (RFC 3986 §6.2.2), never the raw one:
//!
//! 1. the query string and fragment are dropped: they never match;
//! 2. percent-encoded unreserved characters (letters, digits, `-._~`) are decoded, every
//!    other escape keeps its encoding, with upper-case hex digits;
//! 3. dot segments are removed (§5.2.4), and `..` never climbs above the root;
//! 4. runs of slashes are merged into one;
//! 5. a path that does not start with `/` (or is empty) is read as if it did.
//!
//! Where servers disagree, keygate does not guess. An encoded slash or backslash (`%2F`,
//! `%5C`) and a raw backslash are a separator to some servers and data to others, and
//! `/a//../b` is `/a/b` to a server that removes dot segments first but `/b` to one that
//! merges slashes first. [`readings`] returns every distinct way the path can be read, and
//! the route rules ask of a request what each reading asks, together.
//!
//! A path that cannot be read safely at all, with invalid percent-encoding (`%zz`, a
//! trailing `%`) or a control character (NUL included, raw or encoded), is [`Unreadable`];
//! the route rules then ask of it the most any rule asks.

use std::borrow::Cow;

/// One way of reading the separators of a path where servers disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// `%2F`, `%5C` and `\` separate segments, as `/` does; otherwise they are data.
    pub escaped_separators: bool,
    /// Slashes are merged before dot segments are removed; otherwise after, as RFC 3986
    /// (and Envoy's `normalize_path` then `merge_slashes`) do.
    pub merge_first: bool,
}

impl Reading {
    /// The reading of RFC 3986 and Envoy: encoded separators are data, dot segments are
    /// removed before slashes are merged.
    pub const STANDARD: Reading = Reading {
        escaped_separators: false,
        merge_first: false,
    };

    /// Every reading keygate considers.
    const ALL: [Reading; 4] = [
        Reading::STANDARD,
        Reading {
            escaped_separators: false,
            merge_first: true,
        },
        Reading {
            escaped_separators: true,
            merge_first: false,
        },
        Reading {
            escaped_separators: true,
            merge_first: true,
        },
    ];
}

/// The path holds invalid percent-encoding or a control character, so no reading of it is
/// safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the path has invalid percent-encoding or a control character")]
pub struct Unreadable;

/// `raw` (a request path, possibly with a query string) normalized under `reading`.
pub fn normalize(raw: &str, reading: Reading) -> Result<String, Unreadable> {
    let decoded = decode(without_query(raw), reading.escaped_separators)?;
    let absolute = if decoded.starts_with('/') {
        decoded
    } else {
        format!("/{decoded}")
    };
    let merged = if reading.merge_first {
        merge_slashes(&absolute)
    } else {
        absolute
    };
    Ok(merge_slashes(&remove_dot_segments(&merged)))
}

/// Every distinct normalization of `raw`, [`Reading::STANDARD`]'s first. A path with
/// nothing to normalize is returned as it is, without its query string.
pub fn readings(raw: &str) -> Result<Vec<Cow<'_, str>>, Unreadable> {
    let path = without_query(raw);
    if is_plain(path) {
        return Ok(vec![Cow::Borrowed(path)]);
    }
    let mut found: Vec<Cow<'_, str>> = Vec::with_capacity(Reading::ALL.len());
    for reading in Reading::ALL {
        let normalized = normalize(path, reading)?;
        if !found.iter().any(|f| *f == normalized) {
            found.push(Cow::Owned(normalized));
        }
    }
    Ok(found)
}

/// `raw` up to its query string or fragment.
fn without_query(raw: &str) -> &str {
    raw.find(['?', '#']).map_or(raw, |end| &raw[..end])
}

/// Whether `path` is already normal under every reading: absolute, with no escape, no
/// backslash, no control character, no empty segment and no dot segment.
fn is_plain(path: &str) -> bool {
    path.starts_with('/')
        && !path.contains("//")
        && !path.split('/').any(|s| s == "." || s == "..")
        && !path
            .chars()
            .any(|c| c == '%' || c == '\\' || c.is_control())
}

/// Unreserved characters per RFC 3986 §2.3: decoding them never changes what a path means.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// `path` with unreserved characters decoded, other escapes upper-cased, and, when
/// `escaped_separators`, `%2F`, `%5C` and `\` read as `/`.
fn decode(path: &str, escaped_separators: bool) -> Result<String, Unreadable> {
    let mut out = String::with_capacity(path.len());
    let mut chars = path.char_indices();
    while let Some((i, c)) = chars.next() {
        if c.is_control() {
            return Err(Unreadable);
        }
        if c == '\\' && escaped_separators {
            out.push('/');
            continue;
        }
        if c != '%' {
            out.push(c);
            continue;
        }
        let byte = path
            .as_bytes()
            .get(i + 1..i + 3)
            .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok())
            .ok_or(Unreadable)?;
        chars.nth(1);
        match byte {
            _ if byte.is_ascii_control() => return Err(Unreadable),
            _ if is_unreserved(byte) => out.push(char::from(byte)),
            b'/' | b'\\' if escaped_separators => out.push('/'),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    Ok(out)
}

/// RFC 3986 §5.2.4 on an absolute path: `.` segments go, `..` removes the segment before
/// it (nothing at the root), and a final `.` or `..` leaves a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (i, segment) in segments.into_iter().enumerate() {
        match segment {
            "." | ".." => {
                if segment == ".." {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            _ => out.push(segment),
        }
    }
    format!("/{}", out.join("/"))
}

/// `path` with every run of slashes made one.
fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ESCAPED: Reading = Reading {
        escaped_separators: true,
        merge_first: false,
    };
    const MERGE_FIRST: Reading = Reading {
        escaped_separators: false,
        merge_first: true,
    };

    #[test]
    fn spellings_normalize_to_one_path() {
        for (raw, standard) in [
            ("/admin/x", "/admin/x"),
            ("//admin/x", "/admin/x"),
            ("/admin//x/", "/admin/x/"),
            ("/Admin/x", "/Admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/%61%64%6D%69%6e/x", "/admin/x"),
            ("/v1/../admin/x", "/admin/x"),
            ("/v1/%2e%2E/admin/x", "/admin/x"),
            ("/admin/./x", "/admin/x"),
            ("/./admin", "/admin"),
            ("/../../admin/x", "/admin/x"),
            ("/admin/x/..", "/admin/"),
            ("/admin/..", "/"),
            ("/..", "/"),
            ("/admin/.", "/admin/"),
            ("", "/"),
            ("admin/x", "/admin/x"),
            ("/admin%2fx", "/admin%2Fx"),
            ("/admin%5cx", "/admin%5Cx"),
            ("/a%20b/%7euser", "/a%20b/~user"),
            ("/%25%32%46", "/%252F"),
            ("/v1/x?/admin/", "/v1/x"),
            ("/v1/x#/admin/", "/v1/x"),
            ("/billing.v1.Invoices/Create", "/billing.v1.Invoices/Create"),
            ("/caf\u{e9}/..", "/"),
            ("//V1/./..//%41dmin/./x?y=/admin", "/Admin/x"),
        ] {
            assert_eq!(
                normalize(raw, Reading::STANDARD).as_deref(),
                Ok(standard),
                "{raw}"
            );
        }
    }

    #[test]
    fn where_servers_disagree_each_reading_is_kept() {
        assert_eq!(normalize("/admin%2Fx", ESCAPED).as_deref(), Ok("/admin/x"));
        assert_eq!(
            normalize("/public/..%2fadmin/x", ESCAPED).as_deref(),
            Ok("/admin/x")
        );
        assert_eq!(
            normalize("/public\\..\\admin/x", ESCAPED).as_deref(),
            Ok("/admin/x")
        );
        assert_eq!(
            normalize("/a//../b", Reading::STANDARD).as_deref(),
            Ok("/a/b")
        );
        assert_eq!(normalize("/a//../b", MERGE_FIRST).as_deref(), Ok("/b"));
        assert_eq!(
            readings("/public/..%2Fadmin/x").unwrap(),
            ["/public/..%2Fadmin/x", "/admin/x"]
        );
        assert_eq!(
            readings("/admin//../x").unwrap(),
            ["/admin/x", "/x"],
            "`..` removes the empty segment, unless slashes were merged first"
        );
        assert_eq!(readings("/v1/x?a=%zz").unwrap(), ["/v1/x"]);
        assert_eq!(readings("/%61dmin/x").unwrap(), ["/admin/x"]);
    }

    #[test]
    fn plain_paths_are_borrowed() {
        let read = readings("/billing.v1.Invoices/Create?x").unwrap();
        assert!(matches!(
            read.as_slice(),
            [Cow::Borrowed("/billing.v1.Invoices/Create")]
        ));
        assert!(matches!(
            readings("/a/..b/c.d").unwrap()[0],
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn broken_escapes_and_control_characters_are_unreadable() {
        for raw in [
            "/admin/%zz",
            "/admin/%4",
            "/admin/%",
            "/%+1admin",
            "/adm%00in/x",
            "/adm\0in/x",
            "/admin%0a/x",
            "/admin\t/x",
            "/adm%7Fin",
        ] {
            assert_eq!(readings(raw), Err(Unreadable), "{raw:?}");
        }
    }
}
