//! What the forward-auth tests share: keygate trusting the proxies on 127.0.0.1 and asking
//! the `admin` scope under `/admin/`, keys to call it with, and the proxies that ask it
//! (nginx and Caddy, each running its shipped example with only its ports replaced).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use keygate::proto;
use keygate::store::Store;
use tonic::transport::Channel;

use super::http::HttpResponse;
use super::proxy::{ProxyProcess, example, free_loopback_addr, with_addresses};
use super::tools::system_tool;
use super::{ADMIN_TOKEN, Options, TestServer, admin, create_owner, start_with};

/// keygate's forward-auth settings in the tests: the proxies connect from 127.0.0.1 (a
/// client can be made to come from elsewhere in 127.0.0.0/8), and `/admin/` needs `admin`.
pub const CONFIG: &str = r#"
[forward_auth]
trusted_proxies = ["127.0.0.1/32"]

[[routes]]
path_prefix = "/admin/"
scopes = ["admin"]
"#;

/// The address the fenced key is bound to: a loopback address other than the proxies'.
pub const FENCED_CLIENT: &str = "127.0.0.7";

/// Keys of every kind a test needs, on the `pro` plan (10 requests a second per key)
/// unless said otherwise.
pub struct Keys {
    /// Scope `read`.
    pub reader: String,
    /// The reader's key id.
    pub reader_id: String,
    /// Scopes `read` and `admin`.
    pub administrator: String,
    /// A key whose owner's plan has no API access.
    pub free: String,
    /// A key usable only from [`FENCED_CLIENT`].
    pub fenced: String,
    /// A key usable only from 203.0.113.0/24, an address no test client has.
    pub remote: String,
}

/// keygate with [`CONFIG`] (and `extra` TOML), over `store` when given, and the keys.
pub async fn start(extra: &str, store: Option<Arc<dyn Store>>) -> (TestServer, Keys) {
    let config = format!("{CONFIG}\n{extra}");
    let keygate = start_with(Options {
        admin_token: Some(ADMIN_TOKEN),
        extra_config: &config,
        store,
        ..Options::default()
    })
    .await;
    let keys = issue_keys(&mut keygate.client().await).await;
    (keygate, keys)
}

/// Creates the owners and keys of [`Keys`].
pub async fn issue_keys(manage: &mut proto::key_manager_client::KeyManagerClient<Channel>) -> Keys {
    let pro = create_owner(manage, "acme", "pro").await.id;
    let free_owner = create_owner(manage, "hobbyist", "free").await.id;
    let mut key = async |owner_id: &str, scopes: &[&str], cidrs: &[&str]| {
        let created = manage
            .create_key(admin(proto::CreateKeyRequest {
                owner_id: owner_id.into(),
                name: "forward-auth".into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                allowed_cidrs: cidrs.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        (created.secret, created.key.unwrap().id)
    };
    let (reader, reader_id) = key(&pro, &["read"], &[]).await;
    let (administrator, _) = key(&pro, &["read", "admin"], &[]).await;
    let (free, _) = key(&free_owner, &[], &[]).await;
    let (fenced, _) = key(&pro, &["read"], &[&format!("{FENCED_CLIENT}/32")]).await;
    let (remote, _) = key(&pro, &["read"], &["203.0.113.0/24"]).await;
    Keys {
        reader,
        reader_id,
        administrator,
        free,
        fenced,
        remote,
    }
}

/// The response's body as JSON.
pub fn json(response: &HttpResponse) -> serde_json::Value {
    serde_json::from_str(&response.body)
        .unwrap_or_else(|e| panic!("{e}: {} {:?}", response.status, response.body))
}

/// The `error.code` of a denial's JSON body.
pub fn error_code(response: &HttpResponse) -> String {
    json(response)["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code: {}", response.body))
        .to_owned()
}

/// Starts nginx with `examples/nginx/nginx.conf`, asking `keygate` in front of `upstream`.
pub fn start_nginx(keygate: SocketAddr, upstream: SocketAddr) -> ProxyProcess {
    let listen = free_loopback_addr();
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(example("nginx/nginx.conf")).unwrap();
    let config = with_addresses(
        &example,
        &[(8080, listen), (9191, keygate), (8081, upstream)],
    );
    let path = dir.path().join("nginx.conf");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(system_tool("nginx"));
    command.arg("-p").arg(dir.path()).arg("-c").arg(&path);
    // In the foreground, one process running as the test's user, its pid file and errors
    // its own: nothing is shared with other tests or a system nginx.
    command.args(["-e", "stderr", "-g"]).arg(format!(
        "daemon off; master_process off; pid {};",
        dir.path().join("nginx.pid").display()
    ));
    ProxyProcess::start("nginx", command, listen).keeping(dir)
}

/// Starts Caddy with `examples/caddy/Caddyfile`, asking `keygate` in front of `upstream`.
pub fn start_caddy(keygate: SocketAddr, upstream: SocketAddr) -> ProxyProcess {
    let listen = free_loopback_addr();
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(example("caddy/Caddyfile")).unwrap();
    let config = with_addresses(
        &example,
        &[(8080, listen), (9191, keygate), (8081, upstream)],
    );
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(system_tool("caddy"));
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&path)
        // Caddy keeps its state (autosaved config, certificates) under these.
        .env("XDG_CONFIG_HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("HOME", dir.path());
    ProxyProcess::start("caddy", command, listen).keeping(dir)
}
