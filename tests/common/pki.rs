//! Test certificates, made with `openssl` at test time, and TLS clients that use them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A certificate and its private key, PEM files.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority in a directory.
pub struct Ca {
    dir: PathBuf,
    /// The CA's own certificate, the file clients and servers trust.
    pub cert: PathBuf,
    key: PathBuf,
}

/// Runs `openssl` in `dir`; a missing `openssl` or a failure stops the test with why.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): install it (Debian/Ubuntu: apt-get install openssl)")
        });
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Ca {
    /// A new CA called `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let (cert, key) = (format!("{name}.crt"), format!("{name}.key"));
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &cert,
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Ca {
            dir: dir.to_owned(),
            cert: dir.join(cert),
            key: dir.join(key),
        }
    }

    /// A certificate with common name `name` and the subject alternative names `san`
    /// (`URI:spiffe://test/ops`, `IP:127.0.0.1,DNS:localhost`), good for servers and
    /// clients.
    pub fn issue(&self, name: &str, san: &str) -> Issued {
        let (cert, key, csr, ext) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = serverAuth,clientAuth\nsubjectAltName = {san}\n"
            ),
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &self.cert.display().to_string(),
                "-CAkey",
                &self.key.display().to_string(),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &cert,
                "-extfile",
                &ext,
            ],
        );
        Issued {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }

    /// A server certificate for loopback (`127.0.0.1`, `localhost`).
    pub fn server(&self, name: &str) -> Issued {
        self.issue(name, "IP:127.0.0.1,DNS:localhost")
    }
}

/// `[tls]` configuration serving `server`, requiring certificates from `client_ca` if set.
pub fn tls_config(server: &Issued, client_ca: Option<&Ca>) -> String {
    let mut text = format!(
        "[tls]\ncert_file = {:?}\nkey_file = {:?}\n",
        server.cert.display().to_string(),
        server.key.display().to_string()
    );
    if let Some(ca) = client_ca {
        text += &format!("client_ca_file = {:?}\n", ca.cert.display().to_string());
    }
    text
}

/// A TLS connection to `addr` trusting `ca`, presenting `client` if given.
pub async fn tls_channel(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&Issued>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(std::fs::read(ca).unwrap()));
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(&client.cert).unwrap(),
            std::fs::read(&client.key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}
