//! Bounds on what callers send, over the wire: timestamps clients can print, metadata and
//! names without hidden characters, error messages that stay short whatever was sent, and
//! the same `Bearer` spellings on the data plane and the management API.

mod common;

use std::collections::HashMap;

use common::check::{check_request, decision_code, try_check};
use common::{
    ADMIN_TOKEN, TestServer, admin, create_owner, expect_code, issue_key, issue_manager_key, start,
};
use keygate::proto::{self, create_key_request::Expiry};
use prost_types::{Duration, FieldMask, Timestamp};
use tonic::Code;

type Client = proto::key_manager_client::KeyManagerClient<tonic::transport::Channel>;

/// 9999-12-31T23:59:59Z, the last instant a request may name.
const LAST_SECOND: i64 = 253_402_300_799;

/// The longest a refusal's message may be however long the input: the field, a quoted
/// prefix of the input and what to do.
const SHORT_MESSAGE: usize = 300;

async fn server_with_owner() -> (TestServer, Client, String) {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "acme", "").await.id;
    (server, client, owner)
}

fn at(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

fn mask(path: &str) -> Option<FieldMask> {
    Some(FieldMask {
        paths: vec![path.into()],
    })
}

#[track_caller]
fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, field: &str) -> String {
    let message = expect_code(result, Code::InvalidArgument);
    assert!(message.contains(field), "should name {field}: {message}");
    assert!(message.len() <= SHORT_MESSAGE, "too long: {message}");
    message
}

#[tokio::test]
async fn timestamps_outside_1970_to_9999_are_refused_naming_the_field() {
    let (_server, mut client, owner) = server_with_owner().await;
    let create = |expire: Timestamp| proto::CreateKeyRequest {
        owner_id: owner.clone(),
        name: "ci".into(),
        expiry: Some(Expiry::ExpireTime(expire)),
        ..Default::default()
    };
    for bad in [at(LAST_SECOND + 1), at(i64::MAX), at(-1), at(i64::MIN)] {
        let message = refused(client.create_key(admin(create(bad))).await, "expire_time");
        assert!(message.contains("9999-12-31T23:59:59Z"), "{message}");
    }
    // The last second is accepted and comes back as given.
    let last = client
        .create_key(admin(create(at(LAST_SECOND))))
        .await
        .unwrap()
        .into_inner();
    let key = last.key.unwrap();
    assert_eq!(key.expire_time, Some(at(LAST_SECOND)));

    for bad in [at(LAST_SECOND + 1), at(-86_400)] {
        let update = client
            .update_key(admin(proto::UpdateKeyRequest {
                key: Some(proto::Key {
                    id: key.id.clone(),
                    expire_time: Some(bad),
                    ..Default::default()
                }),
                update_mask: mask("expire_time"),
                disabled: false,
            }))
            .await;
        refused(update, "key.expire_time");
        let import = client
            .import_key(admin(proto::ImportKeyRequest {
                owner_id: owner.clone(),
                name: "legacy".into(),
                secret: "legacy-secret-0123456789".into(),
                create_time: Some(bad),
                ..Default::default()
            }))
            .await;
        refused(import, "create_time");
    }

    // RotateKey takes a duration, not a timestamp: a negative or malformed one is refused.
    for grace in [
        Duration {
            seconds: -1,
            nanos: 0,
        },
        Duration {
            seconds: 1,
            nanos: 1_000_000_000,
        },
    ] {
        let rotate = client
            .rotate_key(admin(proto::RotateKeyRequest {
                id: key.id.clone(),
                grace: Some(grace),
            }))
            .await;
        refused(rotate, "grace");
    }
}

#[tokio::test]
async fn metadata_with_control_characters_or_over_the_limits_is_refused() {
    let (_server, mut client, owner) = server_with_owner().await;
    let one = |k: &str, v: &str| HashMap::from([(k.to_owned(), v.to_owned())]);
    let cases = [
        (one("team", "a\nb"), "value"),
        (one("team", "\u{1b}[31mred"), "value"),
        (one("te\u{0}am", "x"), "key"),
        (one("te\u{202e}am", "x"), "key"),
        (one("team", &"v".repeat(1025)), "1024 bytes"),
        (one(&"k".repeat(129), "x"), "128 bytes"),
        (
            (0..65).map(|i| (format!("k{i}"), String::new())).collect(),
            "at most 64",
        ),
    ];
    for (metadata, mentions) in cases {
        let create = client
            .create_owner(admin(proto::CreateOwnerRequest {
                external_id: "bob".into(),
                display_name: "Bob".into(),
                metadata: metadata.clone(),
                ..Default::default()
            }))
            .await;
        let message = refused(create, "metadata");
        assert!(message.contains(mentions), "{message}");
        let key = client
            .create_key(admin(proto::CreateKeyRequest {
                owner_id: owner.clone(),
                name: "ci".into(),
                metadata,
                ..Default::default()
            }))
            .await;
        refused(key, "metadata");
    }
    // Readable text, tabs aside, is kept as given.
    let kept = one("région", "Zürich, 東京 — ok");
    let created = client
        .create_owner(admin(proto::CreateOwnerRequest {
            external_id: "carol".into(),
            display_name: "Carol".into(),
            metadata: kept.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.metadata, kept);
}

#[tokio::test]
async fn names_with_bidi_or_zero_width_characters_are_refused() {
    let (_server, mut client, owner) = server_with_owner().await;
    let key = issue_key(&mut client, &owner, "ci").await.key.unwrap();
    for hidden in [
        "\u{202e}", "\u{2067}", "\u{200b}", "\u{200d}", "\u{feff}", "\t",
    ] {
        let name = format!("invoice{hidden}fdp.exe");
        let owner_create = client
            .create_owner(admin(proto::CreateOwnerRequest {
                external_id: format!("ext{hidden}id"),
                display_name: "Dave".into(),
                ..Default::default()
            }))
            .await;
        let message = refused(owner_create, "external_id");
        assert!(!message.contains(hidden), "shown escaped: {message:?}");
        let renamed = client
            .update_owner(admin(proto::UpdateOwnerRequest {
                owner: Some(proto::Owner {
                    id: owner.clone(),
                    display_name: name.clone(),
                    ..Default::default()
                }),
                update_mask: mask("display_name"),
            }))
            .await;
        refused(renamed, "owner.display_name");
        let created = client
            .create_key(admin(proto::CreateKeyRequest {
                owner_id: owner.clone(),
                name: name.clone(),
                ..Default::default()
            }))
            .await;
        refused(created, "name");
        let updated = client
            .update_key(admin(proto::UpdateKeyRequest {
                key: Some(proto::Key {
                    id: key.id.clone(),
                    name,
                    ..Default::default()
                }),
                update_mask: mask("name"),
                disabled: false,
            }))
            .await;
        refused(updated, "key.name");
    }
}

#[tokio::test]
async fn a_huge_invalid_input_gets_a_short_message_quoting_only_its_start() {
    let (_server, mut client, owner) = server_with_owner().await;
    let huge = format!("BEGIN{}", "x y".repeat(100_000));
    let scope = client
        .create_key(admin(proto::CreateKeyRequest {
            owner_id: owner.clone(),
            name: "ci".into(),
            scopes: vec![huge.clone()],
            ..Default::default()
        }))
        .await;
    let message = refused(scope, "scopes");
    assert!(
        message.contains("\"BEGINx yx y"),
        "quotes the start: {message}"
    );
    assert!(message.contains('…'), "marks the cut: {message}");

    let cidr = client
        .create_key(admin(proto::CreateKeyRequest {
            owner_id: owner.clone(),
            name: "ci".into(),
            allowed_cidrs: vec![huge.clone()],
            ..Default::default()
        }))
        .await;
    refused(cidr, "allowed_cidrs");
    let plan = client
        .create_owner(admin(proto::CreateOwnerRequest {
            external_id: "erin".into(),
            display_name: "Erin".into(),
            plan: huge.clone(),
            ..Default::default()
        }))
        .await;
    refused(plan, "plan");
    let missing = client
        .get_key(admin(proto::GetKeyRequest { id: huge.clone() }))
        .await;
    let message = expect_code(missing, Code::NotFound);
    assert!(message.len() <= SHORT_MESSAGE, "{message}");
    let metadata_key = client
        .create_owner(admin(proto::CreateOwnerRequest {
            external_id: "frank".into(),
            display_name: "Frank".into(),
            metadata: HashMap::from([(huge, "v".into())]),
            ..Default::default()
        }))
        .await;
    refused(metadata_key, "metadata");
}

#[tokio::test]
async fn check_and_management_accept_the_same_bearer_spellings() {
    let (server, mut client, owner) = server_with_owner().await;
    let secret = issue_manager_key(&mut client, &owner, "manager")
        .await
        .secret;
    let data_plane = server.data_plane().await;
    // (how the header is written, whether both planes accept it)
    let table = [
        ("Bearer {}", true),
        ("bearer {}", true),
        ("BEARER {}", true),
        ("bEaReR {}", true),
        ("Bearer   {}", true),
        ("Bearer\t{}", true),
        ("  Bearer {}  ", true),
        ("Basic {}", false),
        ("Bearer{}", false),
        ("{}", false),
        ("Bearer ", false),
    ];
    for (spelling, accepted) in table {
        let value = spelling.replace("{}", &secret);
        let check = try_check(
            &data_plane,
            check_request(
                "203.0.113.9",
                "GET",
                "/v1/x",
                &[("authorization", &value)],
                &[],
            ),
        )
        .await
        .unwrap();
        let code = decision_code(&check);
        assert_eq!(code == "OK", accepted, "Check with {spelling:?}: {code}");

        let mut request = tonic::Request::new(proto::GetOwnerRequest { id: owner.clone() });
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let managed = client.get_owner(request).await;
        match managed {
            Ok(_) => assert!(accepted, "management accepted {spelling:?}"),
            Err(status) => {
                assert!(!accepted, "management refused {spelling:?}: {status:?}");
                assert_eq!(status.code(), Code::Unauthenticated, "{spelling:?}");
                assert!(!status.message().contains(&secret), "never echoes the key");
            }
        }
    }
}
