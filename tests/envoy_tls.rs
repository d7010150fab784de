//! Envoy asking keygate over TLS and mutual TLS, its `keygate` cluster configured by the
//! `UpstreamTlsContext` snippet of `examples/envoy/README.md`, with certificates made by
//! `openssl`: keys are judged as over plaintext, Envoy refuses a keygate whose certificate
//! does not name it, keygate refuses an Envoy without a certificate, and route rules tell
//! Envoys apart by their certificates.

mod common;

use common::envoy::{EnvoyProcess, KEYGATE_TLS_NAME, UpstreamTls};
use common::http::{HttpResponse, http_request};
use common::pki::{Ca, Issued, tls_config};
use common::upstream::{GrpcUpstream, HttpUpstream, UPSTREAM_BODY};
use common::{ADMIN_TOKEN, Options, TestServer, create_owner, issue_key_with_scopes, start_with};

/// keygate's certificate as the README's snippet expects it: its `sni` name, and the
/// loopback address Envoy dials.
fn keygate_cert(ca: &Ca) -> Issued {
    ca.issue("keygate", &format!("DNS:{KEYGATE_TLS_NAME},IP:127.0.0.1"))
}

/// keygate serving `tls` (TOML) on its data plane, its management API left in plaintext
/// for the test's setup, and a key with scope `read`.
async fn keygate(tls: &str) -> (TestServer, String) {
    let server = start_with(Options {
        admin_token: Some(ADMIN_TOKEN),
        extra_config: &format!("{tls}\n[tls.management]\nenabled = false\n"),
        ..Options::default()
    })
    .await;
    let mut manage = server.client().await;
    let owner = create_owner(&mut manage, "acme", "pro").await;
    let key = issue_key_with_scopes(&mut manage, &owner.id, "e2e", &["read"])
        .await
        .secret;
    (server, key)
}

/// Envoy in front of an HTTP upstream, asking `keygate` with the README's TLS snippet.
struct Front {
    envoy: EnvoyProcess,
    http: HttpUpstream,
    _grpc: GrpcUpstream,
}

impl Front {
    async fn start(keygate: &TestServer, ca: &Ca, client: Option<&Issued>) -> Front {
        let http = HttpUpstream::start().await;
        let grpc = GrpcUpstream::start().await;
        let (data_plane, http_addr, grpc_addr) =
            (keygate.server.data_plane_addr(), http.addr, grpc.addr);
        let ca = ca.cert.clone();
        let client = client.map(|c| (c.cert.clone(), c.key.clone()));
        let envoy = tokio::task::spawn_blocking(move || {
            let tls = UpstreamTls {
                ca: &ca,
                client: client.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            };
            EnvoyProcess::start_tls(data_plane, http_addr, grpc_addr, &tls)
        })
        .await
        .unwrap();
        Front {
            envoy,
            http,
            _grpc: grpc,
        }
    }

    async fn get(&self, path: &str, key: &str) -> HttpResponse {
        http_request(self.envoy.listen_addr, "GET", path, &[("x-api-key", key)]).await
    }

    /// A valid key reaches the upstream, a wrong one gets 401 from keygate.
    async fn judges_keys(&self, key: &str) {
        let ok = self.get("/v1/things", key).await;
        assert_eq!(
            (ok.status, ok.body.as_str()),
            (200, UPSTREAM_BODY),
            "{}",
            self.envoy.log()
        );
        let wrong = self.get("/v1/things", "kg_live_not-a-real-key").await;
        assert_eq!(wrong.status, 401, "{}", self.envoy.log());
        assert!(wrong.body.contains("INVALID_API_KEY"), "{}", wrong.body);
        assert_eq!(
            self.http.requests().len(),
            1,
            "only the valid key got through"
        );
    }

    /// Envoy could not ask keygate: it fails closed with 403, and the access log says
    /// ext_authz failed (`UAEX`) without a decision from keygate.
    async fn fails_closed(&self, key: &str) {
        let refused = self.get("/v1/things", key).await;
        assert_eq!(refused.status, 403, "{}", self.envoy.log());
        let entry = &self.envoy.access_log(1)[0];
        assert_eq!(entry["flags"], "UAEX", "{entry}");
        assert!(entry["authz"].is_null(), "keygate decided: {entry}");
        assert!(self.http.requests().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_asks_keygate_over_tls_and_checks_its_certificate_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (server, key) = keygate(&tls_config(&keygate_cert(&ca), None)).await;
    Front::start(&server, &ca, None)
        .await
        .judges_keys(&key)
        .await;

    // Signed by the same CA, but not for keygate's name: Envoy must not talk to it.
    let (impostor, key) = keygate(&tls_config(&ca.server("impostor"), None)).await;
    Front::start(&impostor, &ca, None)
        .await
        .fails_closed(&key)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_presents_its_client_certificate_to_keygate_with_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let (server, key) = keygate(&tls_config(&keygate_cert(&ca), Some(&ca))).await;
    let envoy_cert = ca.issue("envoy", "URI:spiffe://test/envoy");
    Front::start(&server, &ca, Some(&envoy_cert))
        .await
        .judges_keys(&key)
        .await;

    // Without a client certificate keygate refuses the connection.
    Front::start(&server, &ca, None)
        .await
        .fails_closed(&key)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_rules_tell_envoys_apart_by_their_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    // The internal Envoy's callers may read /v1/ with any key; everyone else needs `admin`.
    let config = format!(
        "{}\n{}",
        tls_config(&keygate_cert(&ca), Some(&ca)),
        r#"
[[routes]]
path_prefix = "/v1/"
callers = ["spiffe://test/internal-envoy"]
scopes = ["read"]

[[routes]]
path_prefix = "/v1/"
scopes = ["admin"]
"#
    );
    let (server, key) = keygate(&config).await;
    let internal = ca.issue("internal-envoy", "URI:spiffe://test/internal-envoy");
    Front::start(&server, &ca, Some(&internal))
        .await
        .judges_keys(&key)
        .await;

    let edge = ca.issue("edge-envoy", "URI:spiffe://test/edge-envoy");
    let front = Front::start(&server, &ca, Some(&edge)).await;
    let refused = front.get("/v1/things", &key).await;
    assert_eq!(refused.status, 403, "{}", front.envoy.log());
    assert!(
        refused.body.contains("INSUFFICIENT_SCOPE"),
        "{}",
        refused.body
    );
}
