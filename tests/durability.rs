//! What keygate acknowledged survives a crash: the real binary is killed with SIGKILL and
//! started again on the same data directory.

mod common;

use common::process::KeygateProcess;
use common::{ADMIN_TOKEN, get_owner_as, import_manager_key, issue_manager_key};
use keygate::proto::{self, key_manager_client::KeyManagerClient};

#[tokio::test]
async fn acknowledged_writes_survive_kill_9() {
    let dir = common::data_dir();
    // No pepper in the environment: the one generated into the data directory on first
    // start must be found again after the crash.
    let env = [("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let first = KeygateProcess::start(dir.path(), &env);
    assert!(first.log().contains("generated a new pepper"));
    let mut client = KeyManagerClient::connect(first.url()).await.unwrap();
    let owner = client
        .create_owner(common::admin(proto::CreateOwnerRequest {
            external_id: "acme".into(),
            display_name: "Acme".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let mut written = Vec::new();
    for i in 0..8 {
        written.push(issue_manager_key(&mut client, &owner.id, &format!("key {i}")).await);
    }
    let imported =
        import_manager_key(&mut client, &owner.id, "legacy", "legacy-key-0123456789").await;
    let revoked = client
        .revoke_key(common::admin(proto::RevokeKeyRequest {
            id: written[0].key.as_ref().unwrap().id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    first.kill_hard();

    let second = KeygateProcess::start(dir.path(), &env);
    assert!(
        !second.log().contains("generated a new pepper"),
        "the pepper is reused"
    );
    let mut client = KeyManagerClient::connect(second.url()).await.unwrap();
    let survivors = written[1..].iter().map(|c| c.key.clone().unwrap());
    for key in survivors.chain([imported]) {
        let fetched = client
            .get_key(common::admin(proto::GetKeyRequest { id: key.id.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(fetched, key);
    }
    let fetched = client
        .get_key(common::admin(proto::GetKeyRequest {
            id: revoked.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, revoked);
    // The secrets still verify after the restart: the last issued key and the imported one
    // (found by its peppered digest) authenticate management calls.
    for secret in [written[7].secret.as_str(), "legacy-key-0123456789"] {
        get_owner_as(&mut client, secret, &owner.id).await.unwrap();
    }
}
