//! keygate on a Redis that only speaks TLS (`rediss://`): the server certificate is checked
//! against the trust store (`SSL_CERT_FILE` here), and an untrusted one stops keygate.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};

use common::process::{KeygateProcess, keygate_bin};
use common::{ADMIN_TOKEN, create_owner, get_owner_as, issue_manager_key};
use keygate::proto::key_manager_client::KeyManagerClient;

/// Makes a CA and a certificate for 127.0.0.1 signed by it, with the openssl command.
fn certificates(dir: &Path) {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("cannot run openssl: apt-get install openssl");
        assert!(status.success(), "openssl {args:?} failed");
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=keygate test CA",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// A redis-server listening only with TLS; killed when dropped.
struct TlsRedis(Child, u16);

impl TlsRedis {
    fn start(dir: &Path) -> TlsRedis {
        let file = |name: &str| dir.join(name).display().to_string();
        let (child, port) = common::redis::start_on_free_port(
            &dir.join("redis.log"),
            |port| {
                let port = port.to_string();
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ]
                .into_iter()
                .map(String::from)
                .chain(["--tls-cert-file".into(), file("server.pem")])
                .chain(["--tls-key-file".into(), file("server.key")])
                .chain(["--tls-ca-cert-file".into(), file("ca.pem")])
                .chain(["--save", "", "--appendonly", "no"].map(String::from))
                .collect()
            },
            // Over TLS, with redis-cli.
            |port, pid| {
                Command::new("redis-cli")
                    .args(["--tls", "--cacert", "ca.pem", "-p", &port.to_string()])
                    .args(["info", "server"])
                    .current_dir(dir)
                    .output()
                    .is_ok_and(|o| {
                        common::redis::is_process(&String::from_utf8_lossy(&o.stdout), pid)
                    })
            },
        );
        TlsRedis(child, port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygate_stores_keys_in_redis_over_tls_and_refuses_an_untrusted_server() {
    let dir = common::data_dir();
    let tls = dir.path().to_owned();
    let redis = tokio::task::spawn_blocking(move || {
        certificates(&tls);
        TlsRedis::start(&tls)
    })
    .await
    .unwrap();
    let url = format!("rediss://127.0.0.1:{}", redis.1);
    let ca = dir.path().join("ca.pem");
    let env = [
        ("KEYGATE_PEPPER", "tls test pepper 0123456789"),
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("KEYGATE_STORE", "redis"),
        ("KEYGATE_REDIS__URL", url.as_str()),
        // Room for TLS handshakes of new connections in a debug build.
        ("KEYGATE_REDIS__TIMEOUT", "2s"),
        ("SSL_CERT_FILE", ca.to_str().unwrap()),
    ];
    let server = KeygateProcess::start(&dir.path().join("data"), &env);
    let mut client = KeyManagerClient::connect(server.url()).await.unwrap();
    let owner = create_owner(&mut client, "acme", "").await;
    let key = issue_manager_key(&mut client, &owner.id, "over tls").await;
    get_owner_as(&mut client, &key.secret, &owner.id)
        .await
        .unwrap();
    drop(server);

    // Without the CA in the trust store the server's certificate is refused.
    let untrusted = Command::new(keygate_bin())
        .args([
            "serve",
            "--management-addr",
            "127.0.0.1:0",
            "--data-plane-addr",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path().join("data2"))
        .env_clear()
        .envs(env.iter().copied().filter(|(k, _)| *k != "SSL_CERT_FILE"))
        .output()
        .unwrap();
    assert_eq!(untrusted.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(stderr.contains("certificate"), "{stderr}");
    drop(redis);
}
