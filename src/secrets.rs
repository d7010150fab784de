//! The server's two secrets, read from the environment or files, never from the config
//! file: the pepper (key for digests) and the admin token (full management access).
//!
//! * `KEYGATE_PEPPER` or `KEYGATE_PEPPER_FILE`: at least 16 bytes. With neither, keygate
//!   uses `<data_dir>/pepper`, generating 32 random bytes there (mode 0600) on first start.
//!   Keep it: imported keys and activation codes are found by digests made with it.
//! * `KEYGATE_ADMIN_TOKEN` or `KEYGATE_ADMIN_TOKEN_FILE`: optional, at least
//!   [`MIN_ADMIN_TOKEN_LEN`] bytes besides surrounding blanks. Without it the
//!   management API accepts only API keys with the `keygate:keys` scope and, on loopback,
//!   unauthenticated local calls.
//!
//! The data directory and the pepper in it must be private to keygate's user: keygate
//! creates them so (0700, 0600) and refuses to start when either is open to its group or
//! others ([`not_private`]), saying which `chmod` fixes it.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::key::hash::{Pepper, hex};

/// Fewest bytes of an admin token: 32, as many as `openssl rand -hex 16` prints, so it
/// cannot be guessed.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// Secrets that a running server holds.
#[derive(Debug, Clone)]
pub struct Secrets {
    /// Key for HMAC digests.
    pub pepper: Pepper,
    /// Token granting full management access, if configured.
    pub admin_token: Option<AdminToken>,
}

/// The admin token. Zeroized on drop, never printed.
#[derive(Clone)]
pub struct AdminToken(Zeroizing<String>);

impl AdminToken {
    /// `value` without surrounding blanks, refused when blank or shorter than
    /// [`MIN_ADMIN_TOKEN_LEN`] bytes. The message never repeats the token.
    fn new(value: Zeroizing<String>) -> Result<Self, SecretsError> {
        let token = value.trim();
        let problem = if token.is_empty() {
            "is empty or only whitespace"
        } else if token.len() < MIN_ADMIN_TOKEN_LEN {
            "is too short"
        } else {
            return Ok(AdminToken(Zeroizing::new(token.to_owned())));
        };
        Err(SecretsError::Invalid {
            name: "KEYGATE_ADMIN_TOKEN",
            message: format!(
                "{problem}: it must be at least {MIN_ADMIN_TOKEN_LEN} bytes; generate one with `openssl rand -hex 32`"
            ),
        })
    }

    /// Whether `presented` is this token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        crate::key::hash::secrets_equal(self.0.as_bytes(), presented.as_bytes())
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// Why the secrets could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A secret file could not be read or written.
    #[error("{what} {path}: {source}")]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A secret file is open to other users.
    #[error("{0}")]
    NotPrivate(String),
    /// A secret has an unusable value.
    #[error("{name}: {message}")]
    Invalid {
        /// The variable it came from.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Where the pepper came from, so start-up can say so once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PepperSource {
    /// `KEYGATE_PEPPER` or `KEYGATE_PEPPER_FILE`.
    Environment,
    /// An existing `<data_dir>/pepper`.
    DataDir(PathBuf),
    /// Freshly generated into `<data_dir>/pepper`.
    Generated(PathBuf),
}

impl Secrets {
    /// Reads the secrets from `env` (a snapshot of the process environment), generating a
    /// pepper into `data_dir` if none is given.
    pub fn load(
        env: &HashMap<String, String>,
        data_dir: &Path,
    ) -> Result<(Secrets, PepperSource), SecretsError> {
        let (pepper_bytes, source) = match from_env_or_file(env, "KEYGATE_PEPPER")? {
            Some(value) => (value, PepperSource::Environment),
            None => pepper_in_data_dir(data_dir)?,
        };
        let pepper =
            Pepper::new(pepper_bytes.as_bytes().to_vec()).map_err(|e| SecretsError::Invalid {
                name: "pepper",
                message: e.to_string(),
            })?;
        let admin_token = from_env_or_file(env, "KEYGATE_ADMIN_TOKEN")?
            .map(AdminToken::new)
            .transpose()?;
        Ok((
            Secrets {
                pepper,
                admin_token,
            },
            source,
        ))
    }
}

/// `NAME` itself, or the trimmed contents of the file `NAME_FILE` names.
fn from_env_or_file(
    env: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<Zeroizing<String>>, SecretsError> {
    if let Some(value) = env.get(name).filter(|v| !v.is_empty()) {
        return Ok(Some(Zeroizing::new(value.clone())));
    }
    let file_var = format!("{name}_FILE");
    let Some(path) = env.get(&file_var).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| SecretsError::File {
                what: "cannot read",
                path: path.into(),
                source,
            })?,
        );
    Ok(Some(Zeroizing::new(text.trim().to_owned())))
}

/// Why `path` (the data directory, or a secret file in it) is not private to its owner:
/// its group or others may access it. The answer says what to run; `None` when private.
pub fn not_private(path: &Path, metadata: &std::fs::Metadata) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            let private = if metadata.is_dir() { "700" } else { "600" };
            return Some(format!(
                "{path} is open to its group or others (mode {mode:03o}) but holds keygate's secrets; run `chmod {private} {path}` and start again",
                path = path.display()
            ));
        }
    }
    #[cfg(not(unix))]
    let _ = (path, metadata);
    None
}

/// The pepper kept in the data directory (which must exist), created on first use with
/// owner-only permissions; an existing one must be private ([`not_private`]).
fn pepper_in_data_dir(data_dir: &Path) -> Result<(Zeroizing<String>, PepperSource), SecretsError> {
    let path = data_dir.join("pepper");
    let io = |what: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| SecretsError::File { what, path, source }
    };
    match std::fs::metadata(&path) {
        Ok(metadata) => {
            if let Some(why) = not_private(&path, &metadata) {
                return Err(SecretsError::NotPrivate(why));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot read", &path)(e)),
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return Ok((
                Zeroizing::new(text.trim().to_owned()),
                PepperSource::DataDir(path),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot read", &path)(e)),
    }
    let mut bytes = Zeroizing::new([0u8; 32]);
    getrandom::fill(&mut bytes[..]).expect("the operating system's random source failed");
    let text = Zeroizing::new(hex(&bytes[..]));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(io("cannot create", &path))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("cannot write", &path))?;
    Ok((text, PepperSource::Generated(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pepper_is_generated_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let (first, source) = Secrets::load(&env(&[]), dir.path()).unwrap();
        assert!(matches!(source, PepperSource::Generated(_)));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("pepper"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (second, source) = Secrets::load(&env(&[]), dir.path()).unwrap();
        assert!(matches!(source, PepperSource::DataDir(_)));
        assert_eq!(first.pepper.digest(b"x"), second.pepper.digest(b"x"));
        assert!(first.admin_token.is_none());
    }

    #[cfg(unix)]
    #[test]
    fn a_pepper_others_may_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Secrets::load(&env(&[]), dir.path()).unwrap();
        let pepper = dir.path().join("pepper");
        for mode in [0o640, 0o604, 0o644] {
            std::fs::set_permissions(&pepper, std::fs::Permissions::from_mode(mode)).unwrap();
            let refused = Secrets::load(&env(&[]), dir.path())
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains(&format!("run `chmod 600 {}`", pepper.display())),
                "{refused}"
            );
        }
        std::fs::set_permissions(&pepper, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Secrets::load(&env(&[]), dir.path()).is_ok());
    }

    #[test]
    fn secrets_come_from_variables_or_files() {
        let dir = tempfile::tempdir().unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "file-admin-token-0123456789abcdef\n").unwrap();
        let (secrets, source) = Secrets::load(
            &env(&[
                ("KEYGATE_PEPPER", "a pepper of enough bytes"),
                ("KEYGATE_ADMIN_TOKEN_FILE", token_file.to_str().unwrap()),
            ]),
            dir.path(),
        )
        .unwrap();
        assert_eq!(source, PepperSource::Environment);
        assert!(!dir.path().join("pepper").exists());
        let token = secrets.admin_token.unwrap();
        assert!(token.matches("file-admin-token-0123456789abcdef"));
        assert!(!token.matches("file-admin-token-0123456789abcdeg"));
        assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
    }

    #[test]
    fn weak_or_unreadable_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let short = Secrets::load(&env(&[("KEYGATE_PEPPER", "short")]), dir.path());
        assert!(matches!(short, Err(SecretsError::Invalid { .. })));
        let blank_file = dir.path().join("blank-token");
        std::fs::write(&blank_file, " \n\t\n").unwrap();
        let blank_file = blank_file.to_str().unwrap();
        let short = "a".repeat(MIN_ADMIN_TOKEN_LEN - 1);
        let padded = format!("  {short}  ");
        for (variable, token, problem) in [
            ("KEYGATE_ADMIN_TOKEN", "abc", "too short"),
            ("KEYGATE_ADMIN_TOKEN", short.as_str(), "too short"),
            ("KEYGATE_ADMIN_TOKEN", padded.as_str(), "too short"),
            ("KEYGATE_ADMIN_TOKEN", "       ", "whitespace"),
            ("KEYGATE_ADMIN_TOKEN_FILE", blank_file, "whitespace"),
        ] {
            let refused = Secrets::load(
                &env(&[
                    ("KEYGATE_PEPPER", "a pepper of enough bytes"),
                    (variable, token),
                ]),
                dir.path(),
            )
            .unwrap_err()
            .to_string();
            assert!(refused.starts_with("KEYGATE_ADMIN_TOKEN: "), "{refused}");
            assert!(
                refused.contains(problem) && refused.contains("32 bytes"),
                "{refused}"
            );
            assert!(
                token.trim().is_empty() || !refused.contains(token.trim()),
                "{refused}"
            );
        }
        let long_enough = "a".repeat(MIN_ADMIN_TOKEN_LEN);
        let (secrets, _) = Secrets::load(
            &env(&[
                ("KEYGATE_PEPPER", "a pepper of enough bytes"),
                ("KEYGATE_ADMIN_TOKEN", &format!(" {long_enough} ")),
            ]),
            dir.path(),
        )
        .unwrap();
        assert!(secrets.admin_token.unwrap().matches(&long_enough));
        let missing = Secrets::load(
            &env(&[("KEYGATE_PEPPER_FILE", "/nonexistent/pepper")]),
            dir.path(),
        );
        assert!(matches!(missing, Err(SecretsError::File { .. })));
    }
}
