//! Several keygate replicas on one Redis: a key created on one works on all, and a change
//! made on one is refused by the others on their next request.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::check::check_request;
use common::redis::RedisServer;
use common::{ADMIN_TOKEN, Options, TestServer, admin, create_owner, start_with};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::google::protobuf::value::Kind;
use keygate::proto;
use keygate::ratelimit::redis::RedisConfig;
use keygate::store::Store;
use keygate::store::redis::RedisStore;

async fn replica(redis: &RedisServer, store: Arc<dyn Store>) -> TestServer {
    let redis_table = format!("[redis]\nurl = \"{}\"\n", redis.url());
    start_with(Options {
        admin_token: Some(ADMIN_TOKEN),
        extra_config: &redis_table,
        store: Some(store),
        // `store` is a top-level field: it must come before any table.
        prepend_config: "store = \"redis\"",
    })
    .await
}

/// Waits (bounded) until `count` replicas listen on the invalidation channel.
fn wait_for_subscribers(redis: &RedisServer, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply: (String, i64) = redis.command(
            ::redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(keygate::invalidation::CHANNEL),
        );
        if reply.1 >= count {
            return;
        }
        assert!(Instant::now() < deadline, "replicas did not subscribe");
        std::thread::sleep(Duration::from_millis(10));
    }
}

async fn decide(server: &TestServer, key: &str) -> String {
    let mut client = AuthorizationClient::new(server.data_plane().await);
    let answer = client
        .check(check_request(
            "203.0.113.9",
            "GET",
            "/v1",
            &[("x-api-key", key)],
            &[],
        ))
        .await
        .unwrap()
        .into_inner();
    match answer.dynamic_metadata.unwrap().fields["code"].kind.clone() {
        Some(Kind::StringValue(code)) => code,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_on_one_replica_take_effect_on_the_others() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(
        RedisStore::connect(&RedisConfig {
            url: redis.url(),
            timeout: Duration::from_secs(2),
            ..RedisConfig::default()
        })
        .await
        .unwrap(),
    );
    let a = replica(&redis, store.clone()).await;
    let b = replica(&redis, store.clone()).await;
    let redis = tokio::task::spawn_blocking(move || {
        wait_for_subscribers(&redis, 2);
        redis
    })
    .await
    .unwrap();

    let mut manage = a.client().await;
    let owner = create_owner(&mut manage, "acme", "").await;
    let created = manage
        .create_key(admin(proto::CreateKeyRequest {
            owner_id: owner.id.clone(),
            name: "shared".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let key = created.secret;
    assert_eq!(decide(&b, &key).await, "OK", "created on A, works on B");
    assert_eq!(decide(&a, &key).await, "OK");

    manage
        .revoke_key(admin(proto::RevokeKeyRequest {
            id: created.key.unwrap().id,
        }))
        .await
        .unwrap();
    let revoked_at = Instant::now();
    let deadline = revoked_at + Duration::from_secs(5);
    let mut checks = 0;
    loop {
        checks += 1;
        if decide(&b, &key).await == "INVALID_API_KEY" {
            break;
        }
        assert!(Instant::now() < deadline, "B still accepts the revoked key");
    }
    println!(
        "replicas: revoked on A, refused by B {:?} after RevokeKey returned ({checks} checks)",
        revoked_at.elapsed()
    );

    let other = manage
        .create_key(admin(proto::CreateKeyRequest {
            owner_id: owner.id.clone(),
            name: "other".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .secret;
    assert_eq!(decide(&b, &other).await, "OK");
    manage
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: Some(proto::Owner {
                id: owner.id.clone(),
                state: proto::OwnerState::Disabled as i32,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["state".into()],
            }),
        }))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while decide(&b, &other).await != "OWNER_DISABLED" {
        assert!(
            Instant::now() < deadline,
            "B still accepts the disabled owner's key"
        );
    }
    drop(redis);
}
