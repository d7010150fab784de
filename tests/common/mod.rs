//! What the integration tests share: an in-process server on a loopback port with a cheap
//! argon2 cost and a manual clock, and helpers to call it.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod authorize;
pub mod check;
pub mod envoy;
pub mod faulty;
pub mod forward_auth;
pub mod helm;
pub mod http;
pub mod json_api;
pub mod kubernetes;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod tools;
pub mod upstream;

use std::sync::Arc;

use keygate::clock::ManualClock;
use keygate::config::Config;
use keygate::proto::key_manager_client::KeyManagerClient;
use keygate::secrets::Secrets;
use keygate::server::RunningServer;
use keygate::store::Store;
use keygate::store::embedded::EmbeddedStore;
use tonic::transport::Channel;

/// The admin token test servers are started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789-abcdefghij";

/// The start of the manual clock: 2026-01-01T00:00:00Z.
pub const T0: i64 = 1_767_225_600;

/// A configuration with several plans and profiles, and an argon2 cost low enough for tests.
pub const TEST_CONFIG: &str = r#"
default_plan = "pro"
default_profile = "kg_live"

[listen]
management = "127.0.0.1:0"
data_plane = "127.0.0.1:0"
metrics = "127.0.0.1:0"

[shutdown]
drain_grace = "0s"

[argon2]
memory_kib = 64
iterations = 1
parallelism = 1

[[plans]]
name = "free"
api_access = false
max_active_keys = 2

[[plans]]
name = "pro"
max_active_keys = 10
rate_windows = [{ limit = 10, period = "1s" }, { limit = 2000, period = "1h", per = "owner" }]

[[profiles]]
name = "kg_live"
alphabet = "base62"
body_length = 61

[[profiles]]
name = "twa"
alphabet = "base62"
body_length = 43

[[profiles]]
name = "wmt"
prefix = "wmt_api"
alphabet = "base62"
body_length = 48

[[profiles]]
name = "ctw"
alphabet = "hex"
body_length = 56
"#;

/// A running in-process server and what a test needs to drive it.
pub struct TestServer {
    pub server: RunningServer,
    pub clock: ManualClock,
    pub dir: tempfile::TempDir,
}

/// The test configuration between `before` and `extra` TOML, with its data directory in
/// `dir`.
pub fn test_config_around(dir: &std::path::Path, before: &str, extra: &str) -> Config {
    let path = dir.join("keygate.toml");
    std::fs::write(&path, format!("{before}\n{TEST_CONFIG}\n{extra}")).unwrap();
    Config::load(
        Some(&path),
        [],
        &[("data_dir".into(), dir.display().to_string())],
    )
    .unwrap()
}

/// The test configuration followed by `extra` TOML, with its data directory in `dir`.
pub fn test_config_with(dir: &std::path::Path, extra: &str) -> Config {
    test_config_around(dir, "", extra)
}

/// The test configuration, with its data directory in `dir`.
pub fn test_config(dir: &std::path::Path) -> Config {
    test_config_with(dir, "")
}

/// A fresh directory private to this user (0700), as keygate requires of a data directory
/// it is given.
pub fn data_dir() -> tempfile::TempDir {
    let mut builder = tempfile::Builder::new();
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700));
    builder.tempdir().unwrap()
}

/// How a test server differs from the default one.
#[derive(Default)]
pub struct Options<'a> {
    /// Admin token; none leaves loopback management calls unauthenticated.
    pub admin_token: Option<&'a str>,
    /// TOML appended to [`TEST_CONFIG`].
    pub extra_config: &'a str,
    /// A store to use instead of a fresh embedded one.
    pub store: Option<Arc<dyn Store>>,
    /// TOML put before [`TEST_CONFIG`], for top-level fields.
    pub prepend_config: &'a str,
    /// Opens the plaintext health-only listener on a free loopback port.
    pub health_listener: bool,
}

/// Starts a server over a fresh embedded store, with or without an admin token.
pub async fn start(admin_token: Option<&str>) -> TestServer {
    start_with(Options {
        admin_token,
        ..Options::default()
    })
    .await
}

/// Starts a server as `options` say.
pub async fn start_with(options: Options<'_>) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config_around(dir.path(), options.prepend_config, options.extra_config);
    if options.health_listener {
        config.listen.health = Some(([127, 0, 0, 1], 0).into());
    }
    let mut env = std::collections::HashMap::new();
    env.insert(
        "KEYGATE_PEPPER".to_string(),
        "test pepper, 16+ bytes".to_string(),
    );
    if let Some(token) = options.admin_token {
        env.insert("KEYGATE_ADMIN_TOKEN".to_string(), token.to_string());
    }
    let (secrets, _) = Secrets::load(&env, dir.path()).unwrap();
    let store = options.store.unwrap_or_else(|| {
        Arc::new(EmbeddedStore::open(&dir.path().join("keygate.redb")).unwrap())
    });
    let clock = ManualClock::new(T0);
    let backends = keygate::app::Backends::with_store(&config, store).unwrap();
    let server = keygate::server::start(&config, secrets, backends, Arc::new(clock.clone()))
        .await
        .unwrap();
    TestServer { server, clock, dir }
}

impl TestServer {
    /// A client of the management API.
    pub async fn client(&self) -> KeyManagerClient<Channel> {
        KeyManagerClient::connect(format!("http://{}", self.server.management_addr()))
            .await
            .unwrap()
    }

    /// A channel to the data plane (Check, Authorize, health).
    pub async fn data_plane(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.server.data_plane_addr()))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

/// `message` as a request carrying `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Creates an owner on `plan` (empty for the default) through the management API.
pub async fn create_owner(
    client: &mut KeyManagerClient<Channel>,
    external_id: &str,
    plan: &str,
) -> keygate::proto::Owner {
    client
        .create_owner(admin(keygate::proto::CreateOwnerRequest {
            external_id: external_id.into(),
            display_name: format!("Account {external_id}"),
            plan: plan.into(),
            metadata: std::collections::HashMap::from([("region".into(), "eu".into())]),
        }))
        .await
        .unwrap()
        .into_inner()
}

/// Issues a key called `name` to `owner_id` in the default profile, as admin.
pub async fn issue_key(
    client: &mut KeyManagerClient<Channel>,
    owner_id: &str,
    name: &str,
) -> keygate::proto::CreateKeyResponse {
    issue_key_with_scopes(client, owner_id, name, &[]).await
}

/// Issues a key called `name` to `owner_id` holding `keygate:keys`, the scope with which a
/// key makes management calls for its owner, as admin.
pub async fn issue_manager_key(
    client: &mut KeyManagerClient<Channel>,
    owner_id: &str,
    name: &str,
) -> keygate::proto::CreateKeyResponse {
    issue_key_with_scopes(client, owner_id, name, &["keygate:keys"]).await
}

/// Issues a key called `name` to `owner_id` holding `scopes`, as admin.
pub async fn issue_key_with_scopes(
    client: &mut KeyManagerClient<Channel>,
    owner_id: &str,
    name: &str,
    scopes: &[&str],
) -> keygate::proto::CreateKeyResponse {
    client
        .create_key(admin(keygate::proto::CreateKeyRequest {
            owner_id: owner_id.into(),
            name: name.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
}

/// Imports `secret` as a key called `name` of `owner_id` holding `keygate:keys`, as admin.
pub async fn import_manager_key(
    client: &mut KeyManagerClient<Channel>,
    owner_id: &str,
    name: &str,
    secret: &str,
) -> keygate::proto::Key {
    client
        .import_key(admin(keygate::proto::ImportKeyRequest {
            owner_id: owner_id.into(),
            name: name.into(),
            secret: secret.into(),
            scopes: vec!["keygate:keys".into()],
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
}

/// Reads owner `owner_id` with `secret` as the bearer: a management call that a key holding
/// `keygate:keys` may make, and only while its secret verifies.
pub async fn get_owner_as(
    client: &mut KeyManagerClient<Channel>,
    secret: &str,
    owner_id: &str,
) -> Result<keygate::proto::Owner, tonic::Status> {
    client
        .get_owner(bearer(
            secret,
            keygate::proto::GetOwnerRequest {
                id: owner_id.into(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The UpdateKey request granting key `id` `remaining` credits, without refill.
pub fn grant_credits(id: &str, remaining: u64) -> keygate::proto::UpdateKeyRequest {
    keygate::proto::UpdateKeyRequest {
        key: Some(keygate::proto::Key {
            id: id.to_owned(),
            credits: Some(keygate::proto::Credits {
                remaining,
                ..Default::default()
            }),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["credits".into()],
        }),
        disabled: false,
    }
}

/// `message` as a request carrying the admin token.
pub fn admin<T>(message: T) -> tonic::Request<T> {
    bearer(ADMIN_TOKEN, message)
}

/// Asserts that `result` failed with `code`, and returns the message.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
) -> String {
    match result {
        Ok(value) => panic!("expected {code:?}, got {value:?}"),
        Err(status) => {
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(
                !status.message().is_empty(),
                "a status must say what is wrong"
            );
            status.message().to_owned()
        }
    }
}
