//! TLS on the gRPC listeners: settings, server configurations rebuilt when their PEM files
//! change, handshakes with a deadline, and the identity a client certificate proves.
//!
//! Tonic's own TLS cannot reload a certificate, so keygate accepts TCP, runs the handshake
//! itself and hands the finished streams to tonic. Each handshake reads the files'
//! modification times and rebuilds the configuration when one changed: a rotated
//! certificate is served to the next connection, open connections keep theirs.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::connection::Unvectored;

/// TLS for the data plane and the management API. Setting `cert_file` and `key_file`
/// turns it on for both; each listener may override any file or turn TLS off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM, leaf first.
    pub cert_file: Option<PathBuf>,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// CA certificates, PEM. When set, clients must present a certificate they signed
    /// (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// How long a client may take to finish its handshake before the connection is
    /// closed, so that idle half-open connections cannot pile up.
    #[serde(with = "crate::clock::duration_text")]
    pub handshake_timeout: Duration,
    /// Overrides for the data-plane listener.
    pub data_plane: ListenerTls,
    /// Overrides for the management listener.
    pub management: ListenerTls,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert_file: None,
            key_file: None,
            client_ca_file: None,
            handshake_timeout: Duration::from_secs(10),
            data_plane: ListenerTls::default(),
            management: ListenerTls::default(),
        }
    }
}

/// One listener's TLS overrides; a file left out is taken from `tls`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenerTls {
    /// `false` serves this listener in plaintext even when `tls` names files.
    pub enabled: bool,
    /// This listener's certificate chain.
    pub cert_file: Option<PathBuf>,
    /// This listener's private key.
    pub key_file: Option<PathBuf>,
    /// This listener's client CA.
    pub client_ca_file: Option<PathBuf>,
}

impl Default for ListenerTls {
    fn default() -> Self {
        ListenerTls {
            enabled: true,
            cert_file: None,
            key_file: None,
            client_ca_file: None,
        }
    }
}

/// A gRPC listener that may serve TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Check and Authorize.
    DataPlane,
    /// KeyManager.
    Management,
}

impl Listener {
    /// The listener's name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Listener::DataPlane => "data_plane",
            Listener::Management => "management",
        }
    }
}

/// The files one listener serves TLS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert_file: PathBuf,
    /// Private key.
    pub key_file: PathBuf,
    /// Client CA; `Some` requires client certificates.
    pub client_ca_file: Option<PathBuf>,
}

impl TlsConfig {
    /// The files `listener` serves TLS with, `None` for plaintext, or the misconfigured
    /// field and why.
    pub fn files(&self, listener: Listener) -> Result<Option<TlsFiles>, (String, String)> {
        let own = match listener {
            Listener::DataPlane => &self.data_plane,
            Listener::Management => &self.management,
        };
        if !own.enabled {
            return Ok(None);
        }
        let pick = |own: &Option<PathBuf>, base: &Option<PathBuf>| own.clone().or(base.clone());
        let cert = pick(&own.cert_file, &self.cert_file);
        let key = pick(&own.key_file, &self.key_file);
        let client_ca = pick(&own.client_ca_file, &self.client_ca_file);
        let field = |name: &str| format!("tls.{}.{name}", listener.name());
        match (cert, key) {
            (Some(cert_file), Some(key_file)) => Ok(Some(TlsFiles {
                cert_file,
                key_file,
                client_ca_file: client_ca,
            })),
            (None, None) if client_ca.is_none() => Ok(None),
            (None, None) => Err((
                field("client_ca_file"),
                "client certificates need TLS: set tls.cert_file and tls.key_file".into(),
            )),
            (Some(_), None) => Err((field("key_file"), "cert_file is set without it".into())),
            (None, Some(_)) => Err((field("cert_file"), "key_file is set without it".into())),
        }
    }

    /// Whether `listener` requires client certificates.
    pub fn requires_client_cert(&self, listener: Listener) -> bool {
        matches!(
            self.files(listener),
            Ok(Some(TlsFiles {
                client_ca_file: Some(_),
                ..
            }))
        )
    }
}

/// Why TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TlsError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

fn tls_error(path: &Path, message: impl ToString) -> TlsError {
    TlsError {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// When and how big a file was when last read: a change means it was rewritten.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A listener's TLS configuration, rebuilt from its files when they change.
pub struct ServerTls {
    files: TlsFiles,
    current: Mutex<(Vec<Stamp>, Arc<ServerConfig>)>,
}

impl ServerTls {
    /// Reads `files`; fails when they are missing or do not make a usable configuration.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let stamps = Self::stamps(&files);
        let config = Arc::new(server_config(&files)?);
        Ok(ServerTls {
            files,
            current: Mutex::new((stamps, config)),
        })
    }

    fn stamps(files: &TlsFiles) -> Vec<Stamp> {
        [Some(&files.cert_file), Some(&files.key_file)]
            .into_iter()
            .chain([files.client_ca_file.as_ref()])
            .flatten()
            .map(|path| stamp(path))
            .collect()
    }

    /// The configuration for a new connection: rebuilt first when a file changed since the
    /// last look. A change that does not load (a key not yet matching its new certificate)
    /// keeps the previous configuration until the next change.
    pub fn current(&self) -> Arc<ServerConfig> {
        let stamps = Self::stamps(&self.files);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.0 != stamps {
            current.0 = stamps;
            match server_config(&self.files) {
                Ok(config) => {
                    current.1 = Arc::new(config);
                    info!(cert = %self.files.cert_file.display(), "TLS files changed; new connections get the new certificate");
                }
                Err(e) => warn!(
                    "TLS files changed but cannot be loaded, keeping the previous certificate: {e}"
                ),
            }
        }
        current.1.clone()
    }
}

/// A rustls server configuration from `files`, speaking HTTP/2 only.
fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert_file)?;
    let key = PrivateKeyDer::from_pem_file(&files.key_file)
        .map_err(|e| tls_error(&files.key_file, format!("no usable private key: {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&files.cert_file, e))?;
    let builder = match &files.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path)? {
                roots.add(cert).map_err(|e| tls_error(path, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| tls_error(path, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        tls_error(
            &files.cert_file,
            format!(
                "does not match the key in {}: {e}",
                files.key_file.display()
            ),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Every certificate in the PEM file at `path`; at least one.
fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls_error(path, e))?;
    if certs.is_empty() {
        return Err(tls_error(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The TLS connections accepted on `listener`: each handshake runs on its own task,
/// within `handshake_timeout`, so a slow client delays nobody else. Connections whose
/// handshake fails or times out are closed and logged at debug level. Accepting stops
/// when the returned stream is dropped.
pub fn accept(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    handshake_timeout: Duration,
) -> ReceiverStream<io::Result<Unvectored<TlsStream<TcpStream>>>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        debug!(error = %e, "cannot accept a connection");
                        continue;
                    }
                },
                () = sender.closed() => return,
            };
            // Answers are small and must leave at once.
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(Unvectored(stream))).await;
                    }
                    Ok(Err(e)) => handshake_failed(peer, &e.to_string()),
                    Err(_) => handshake_failed(peer, "timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

fn handshake_failed(peer: SocketAddr, why: &str) {
    debug!(%peer, why, "TLS handshake failed; connection closed");
}

/// The names a verified client certificate proves: its subject alternative names (URIs
/// such as SPIFFE IDs, DNS names) and its subject's common name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// Every name, SAN URIs first, then SAN DNS names, then the CN.
    pub names: Vec<String>,
}

impl PeerIdentity {
    /// The identity of the leaf certificate `der`; `None` if it cannot be parsed.
    pub fn from_cert(der: &CertificateDer<'_>) -> Option<PeerIdentity> {
        let cert = webpki::EndEntityCert::try_from(der).ok()?;
        let mut names: Vec<String> = cert.valid_uri_names().map(str::to_owned).collect();
        names.extend(cert.valid_dns_names().map(str::to_owned));
        names.extend(common_name(cert.subject()));
        Some(PeerIdentity { names })
    }

    /// Whether any of this peer's names is in `list`.
    pub fn is_any_of(&self, list: &[String]) -> bool {
        self.names.iter().any(|name| list.contains(name))
    }
}

/// The common name in a DER-encoded X.501 `Name` (without its outer SEQUENCE header).
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    while let Some((_, rdn, rest)) = der_element(name) {
        name = rest;
        let mut attributes = rdn;
        while let Some((_, attribute, rest)) = der_element(attributes) {
            attributes = rest;
            let Some((0x06, oid, value)) = der_element(attribute) else {
                continue;
            };
            if oid == CN_OID {
                let (_, text, _) = der_element(value)?;
                return std::str::from_utf8(text).ok().map(str::to_owned);
            }
        }
    }
    None
}

/// The first DER element of `input`: its tag, its contents and what follows it.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(config: &TlsConfig, listener: Listener) -> Option<TlsFiles> {
        config.files(listener).unwrap()
    }

    #[test]
    fn listeners_inherit_the_files_and_may_override_or_opt_out() {
        assert_eq!(files(&TlsConfig::default(), Listener::DataPlane), None);
        let config = TlsConfig {
            cert_file: Some("server.crt".into()),
            key_file: Some("server.key".into()),
            client_ca_file: Some("ca.crt".into()),
            management: ListenerTls {
                cert_file: Some("admin.crt".into()),
                key_file: Some("admin.key".into()),
                ..ListenerTls::default()
            },
            data_plane: ListenerTls {
                enabled: false,
                ..ListenerTls::default()
            },
            ..TlsConfig::default()
        };
        assert_eq!(files(&config, Listener::DataPlane), None);
        assert_eq!(
            files(&config, Listener::Management),
            Some(TlsFiles {
                cert_file: "admin.crt".into(),
                key_file: "admin.key".into(),
                client_ca_file: Some("ca.crt".into()),
            })
        );
        assert!(config.requires_client_cert(Listener::Management));
        assert!(!config.requires_client_cert(Listener::DataPlane));
    }

    #[test]
    fn half_a_pair_names_the_missing_field() {
        let cert_only = TlsConfig {
            cert_file: Some("server.crt".into()),
            ..TlsConfig::default()
        };
        let (field, _) = cert_only.files(Listener::Management).unwrap_err();
        assert_eq!(field, "tls.management.key_file");
        let ca_only = TlsConfig {
            client_ca_file: Some("ca.crt".into()),
            ..TlsConfig::default()
        };
        let (field, _) = ca_only.files(Listener::DataPlane).unwrap_err();
        assert_eq!(field, "tls.data_plane.client_ca_file");
    }

    #[test]
    fn the_common_name_is_found_among_other_attributes() {
        // SEQUENCE { SET { SEQUENCE { O = "acme" } }, SET { SEQUENCE { CN = "edge" } } },
        // without the outer header.
        let name = [
            0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x04, b'a', b'c', b'm',
            b'e', 0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x04, b'e', b'd',
            b'g', b'e',
        ];
        assert_eq!(common_name(&name).as_deref(), Some("edge"));
        assert_eq!(common_name(&name[..15]), None);
        assert_eq!(common_name(&[0x31, 0x85]), None);
    }
}
