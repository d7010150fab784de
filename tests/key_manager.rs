//! The KeyManager API over the wire: every RPC, its happy path and its refusals, against an
//! in-process server on a loopback port.

mod common;

use std::collections::HashMap;

use common::{ADMIN_TOKEN, T0, admin, bearer, create_owner, expect_code, get_owner_as, start};
use keygate::proto::{self, create_key_request::Expiry};
use prost_types::{Duration, FieldMask, Timestamp};
use tonic::Code;

type Client = proto::key_manager_client::KeyManagerClient<tonic::transport::Channel>;

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

fn key_request(owner_id: &str, name: &str) -> proto::CreateKeyRequest {
    proto::CreateKeyRequest {
        owner_id: owner_id.into(),
        name: name.into(),
        scopes: vec!["read".into()],
        ..Default::default()
    }
}

async fn create_key(
    client: &mut Client,
    request: proto::CreateKeyRequest,
) -> proto::CreateKeyResponse {
    client
        .create_key(admin(request))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn owners_can_be_created_read_listed_and_updated() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;

    let alice = create_owner(&mut client, "alice", "").await;
    assert!(alice.id.starts_with("own_"));
    assert_eq!(alice.plan, "pro", "the default plan applies");
    assert_eq!(alice.state, proto::OwnerState::Active as i32);
    assert_eq!(alice.create_time.unwrap().seconds, T0);
    let fetched = client
        .get_owner(admin(proto::GetOwnerRequest {
            id: alice.id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, alice);

    let bob = create_owner(&mut client, "bob", "free").await;
    let carol = create_owner(&mut client, "carol", "free").await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_owners(admin(proto::ListOwnersRequest {
                page_size: 2,
                page_token: token.clone(),
            }))
            .await
            .unwrap()
            .into_inner();
        assert!(page.owners.len() <= 2);
        seen.extend(page.owners.into_iter().map(|o| o.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected = vec![alice.id.clone(), bob.id, carol.id];
    expected.sort();
    assert_eq!(seen, expected);

    server.clock.advance(60);
    let updated = client
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: Some(proto::Owner {
                id: alice.id.clone(),
                display_name: "Alice Ltd".into(),
                state: proto::OwnerState::Disabled as i32,
                plan: "ignored: not in the mask".into(),
                ..Default::default()
            }),
            update_mask: mask(&["display_name", "state"]),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.display_name, "Alice Ltd");
    assert_eq!(updated.state, proto::OwnerState::Disabled as i32);
    assert_eq!(updated.plan, "pro");
    assert_eq!(updated.metadata, alice.metadata);
    assert_eq!(updated.update_time.unwrap().seconds, T0 + 60);
}

#[tokio::test]
async fn owner_rpcs_refuse_bad_input() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let alice = create_owner(&mut client, "alice", "").await;

    let blank = client
        .create_owner(admin(proto::CreateOwnerRequest {
            external_id: " ".into(),
            display_name: "x".into(),
            ..Default::default()
        }))
        .await;
    assert!(expect_code(blank, Code::InvalidArgument).contains("external_id"));
    let plan = client
        .create_owner(admin(proto::CreateOwnerRequest {
            external_id: "dave".into(),
            display_name: "Dave".into(),
            plan: "platinum".into(),
            ..Default::default()
        }))
        .await;
    assert!(expect_code(plan, Code::InvalidArgument).contains("platinum"));
    let duplicate = client
        .create_owner(admin(proto::CreateOwnerRequest {
            external_id: "alice".into(),
            display_name: "Alice again".into(),
            ..Default::default()
        }))
        .await;
    expect_code(duplicate, Code::AlreadyExists);

    let missing = client
        .get_owner(admin(proto::GetOwnerRequest {
            id: "own_nobody".into(),
        }))
        .await;
    expect_code(missing, Code::NotFound);
    let empty = client
        .get_owner(admin(proto::GetOwnerRequest { id: String::new() }))
        .await;
    expect_code(empty, Code::InvalidArgument);

    let bad_token = client
        .list_owners(admin(proto::ListOwnersRequest {
            page_size: 1,
            page_token: "garbage".into(),
        }))
        .await;
    assert!(expect_code(bad_token, Code::InvalidArgument).contains("page_token"));
    let huge = client
        .list_owners(admin(proto::ListOwnersRequest {
            page_size: 5000,
            page_token: String::new(),
        }))
        .await;
    expect_code(huge, Code::InvalidArgument);

    let owner = |id: &str| {
        Some(proto::Owner {
            id: id.into(),
            display_name: "New".into(),
            ..Default::default()
        })
    };
    let no_mask = client
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: owner(&alice.id),
            update_mask: None,
        }))
        .await;
    assert!(expect_code(no_mask, Code::InvalidArgument).contains("update_mask"));
    let bad_path = client
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: owner(&alice.id),
            update_mask: mask(&["external_id"]),
        }))
        .await;
    expect_code(bad_path, Code::InvalidArgument);
    let bad_state = client
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: owner(&alice.id),
            update_mask: mask(&["state"]),
        }))
        .await;
    expect_code(bad_state, Code::InvalidArgument);
    let unknown = client
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: owner("own_nobody"),
            update_mask: mask(&["display_name"]),
        }))
        .await;
    expect_code(unknown, Code::NotFound);
}

#[tokio::test]
async fn the_configured_plans_are_stored_at_start_and_listed() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let plans = server
        .client()
        .await
        .list_plans(admin(proto::ListPlansRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(plans.default_plan, "pro");
    let free = &plans.plans[0];
    assert_eq!(
        (free.name.as_str(), free.api_access, free.max_active_keys),
        ("free", false, 2)
    );
    let pro = &plans.plans[1];
    let windows: Vec<_> = pro
        .rate_windows
        .iter()
        .map(|w| (w.limit, w.period.unwrap().seconds, w.scope))
        .collect();
    assert_eq!(
        windows,
        [
            (10, 1, proto::RateScope::Key as i32),
            (2000, 3600, proto::RateScope::Owner as i32)
        ]
    );
}

fn window(limit: u64, seconds: i64, scope: proto::RateScope) -> proto::RateWindow {
    proto::RateWindow {
        limit,
        period: Some(Duration { seconds, nanos: 0 }),
        scope: scope as i32,
    }
}

fn plan_request(name: &str, windows: Vec<proto::RateWindow>) -> proto::CreatePlanRequest {
    proto::CreatePlanRequest {
        name: name.into(),
        api_access: None,
        max_active_keys: 1,
        rate_windows: windows,
        quotas: vec![],
    }
}

#[tokio::test]
async fn the_admin_creates_changes_and_deletes_plans_and_keys_read_them() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let team = client
        .create_plan(admin(plan_request(
            "team",
            vec![window(100, 60, proto::RateScope::Unspecified)],
        )))
        .await
        .unwrap()
        .into_inner();
    assert!(team.api_access, "API access unless refused");
    assert_eq!(
        team.rate_windows,
        [window(100, 60, proto::RateScope::Key)],
        "an unspecified scope counts per key"
    );
    let owner = create_owner(&mut client, "alice", "team").await;
    let manager = create_key(
        &mut client,
        proto::CreateKeyRequest {
            scopes: vec!["keygate:keys".into()],
            ..key_request(&owner.id, "manager")
        },
    )
    .await
    .secret;
    // A managing key reads plans, and changes none.
    let read = client
        .get_plan(bearer(
            &manager,
            proto::GetPlanRequest {
                name: "team".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, team);
    let unlimited = proto::UpdatePlanRequest {
        plan: Some(proto::Plan {
            name: "team".into(),
            max_active_keys: 0,
            ..Default::default()
        }),
        update_mask: mask(&["max_active_keys"]),
    };
    for refused in [
        client
            .create_plan(bearer(&manager, plan_request("mine", vec![])))
            .await
            .err(),
        client
            .update_plan(bearer(&manager, unlimited.clone()))
            .await
            .err(),
        client
            .delete_plan(bearer(
                &manager,
                proto::DeletePlanRequest {
                    name: "free".into(),
                },
            ))
            .await
            .err(),
    ] {
        assert_eq!(refused.map(|s| s.code()), Some(Code::PermissionDenied));
    }
    // The cap as the plan says now: one key, the manager; then none once lifted.
    let capped = client
        .create_key(admin(key_request(&owner.id, "second")))
        .await;
    assert!(expect_code(capped, Code::FailedPrecondition).contains("1 active keys"));
    let lifted = client.update_plan(admin(unlimited)).await.unwrap();
    assert_eq!(
        lifted
            .metadata()
            .get("x-keygate-unacknowledged-replicas")
            .unwrap(),
        "0"
    );
    let lifted = lifted.into_inner();
    assert_eq!(
        (lifted.max_active_keys, lifted.rate_windows.len()),
        (0, 1),
        "only the masked field changed"
    );
    create_key(&mut client, key_request(&owner.id, "second")).await;

    // In use by the owner: refused, naming how many; free once the owner moved and its
    // keys are revoked or gone.
    let delete = |name: &str| proto::DeletePlanRequest { name: name.into() };
    let in_use = client.delete_plan(admin(delete("team"))).await;
    assert!(expect_code(in_use, Code::FailedPrecondition).contains("used by 1 owner and 0 keys"),);
    client
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: Some(proto::Owner {
                id: owner.id.clone(),
                plan: "pro".into(),
                ..Default::default()
            }),
            update_mask: mask(&["plan"]),
        }))
        .await
        .unwrap();
    let default = client.delete_plan(admin(delete("pro"))).await;
    assert!(expect_code(default, Code::FailedPrecondition).contains("default plan"));
    client.delete_plan(admin(delete("team"))).await.unwrap();
    expect_code(
        client
            .get_plan(admin(proto::GetPlanRequest {
                name: "team".into(),
            }))
            .await,
        Code::NotFound,
    );
    expect_code(
        client.delete_plan(admin(delete("team"))).await,
        Code::NotFound,
    );
    let gone = client
        .create_owner(admin(proto::CreateOwnerRequest {
            external_id: "bob".into(),
            display_name: "Bob".into(),
            plan: "team".into(),
            ..Default::default()
        }))
        .await;
    assert!(expect_code(gone, Code::InvalidArgument).contains("unknown plan \"team\""));
}

#[tokio::test]
async fn a_plan_breaking_a_rule_is_refused_naming_the_field() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let key = |limit, seconds| window(limit, seconds, proto::RateScope::Key);
    let created: Vec<(proto::CreatePlanRequest, &str)> = vec![
        (plan_request("", vec![]), "name: must not be empty"),
        (plan_request(" team", vec![]), "name: must not begin or end"),
        (
            plan_request("te\u{202e}am", vec![]),
            "name: must not contain",
        ),
        (
            plan_request(&"t".repeat(201), vec![]),
            "name: must be at most 200",
        ),
        (
            plan_request("team", vec![key(10, 1), key(0, 60)]),
            "rate_windows[1].limit: must be at least 1",
        ),
        (
            plan_request("team", vec![key(10, 0)]),
            "rate_windows[0].period: must be at least 1s",
        ),
        (
            plan_request("team", vec![key(10, 32 * 86_400)]),
            "rate_windows[0].period: must be at most 31 days",
        ),
        (
            plan_request("team", vec![key(10, 60), key(20, 60)]),
            "rate_windows[1]: another window counts the same subject",
        ),
        (
            plan_request("team", (1..=17).map(|s| key(10, s)).collect()),
            "rate_windows: at most 16",
        ),
        (
            plan_request(
                "team",
                vec![proto::RateWindow {
                    limit: 5,
                    period: None,
                    scope: 0,
                }],
            ),
            "rate_windows[0].period is required",
        ),
        (
            plan_request(
                "team",
                vec![proto::RateWindow {
                    scope: 7,
                    ..key(5, 60)
                }],
            ),
            "rate_windows[0].scope 7",
        ),
        (plan_request("pro", vec![]), "already exists"),
    ];
    for (request, expected) in created {
        let code = if expected == "already exists" {
            Code::AlreadyExists
        } else {
            Code::InvalidArgument
        };
        let message = expect_code(client.create_plan(admin(request)).await, code);
        assert!(
            message.starts_with(expected) || message.contains(expected),
            "{message}"
        );
    }
    let update = |windows: Vec<proto::RateWindow>, paths: &[&str]| proto::UpdatePlanRequest {
        plan: Some(proto::Plan {
            name: "pro".into(),
            rate_windows: windows,
            ..Default::default()
        }),
        update_mask: mask(paths),
    };
    for (request, expected) in [
        (
            update(vec![key(0, 1)], &["rate_windows"]),
            "plan.rate_windows[0].limit: must be at least 1",
        ),
        (
            update(vec![], &["name"]),
            "update_mask: \"name\" cannot be updated",
        ),
        (update(vec![], &[]), "update_mask must name at least one of"),
    ] {
        let message = expect_code(
            client.update_plan(admin(request)).await,
            Code::InvalidArgument,
        );
        assert!(message.starts_with(expected), "{message}");
    }
    let pro = client
        .get_plan(admin(proto::GetPlanRequest { name: "pro".into() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pro.rate_windows.len(), 2, "the refusals changed nothing");
}

#[tokio::test]
async fn created_keys_show_their_secret_once_in_the_configured_shape() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "alice", "").await;

    let mut request = key_request(&owner.id, "CI GitHub");
    request.scopes = vec!["read".into(), "write".into()];
    request.allowed_cidrs = vec!["203.0.113.7/24".into()];
    request.expiry = Some(Expiry::ExpireInDays(365));
    request.metadata = HashMap::from([("team".into(), "platform".into())]);
    let created = create_key(&mut client, request).await;
    let key = created.key.clone().unwrap();
    let secret = created.secret.clone();
    assert!(
        secret.starts_with(&format!("kg_live_{}", key.id)),
        "the key embeds its id"
    );
    assert_eq!(secret.len(), "kg_live_".len() + 61);
    assert_eq!(key.prefix, "kg_live");
    assert_eq!(key.kind, proto::KeyKind::Single as i32);
    assert_eq!(key.state, proto::KeyState::Active as i32);
    assert_eq!(key.scopes, ["read", "write"]);
    assert_eq!(key.allowed_cidrs, ["203.0.113.0/24"]);
    assert_eq!(key.expire_time.unwrap().seconds, T0 + 365 * 86_400);
    assert!(created.api_key.is_empty() && created.api_secret.is_empty());

    let fetched = client
        .get_key(admin(proto::GetKeyRequest { id: key.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fetched, key);
    let listed = client
        .list_keys(admin(proto::ListKeysRequest {
            owner_id: owner.id.clone(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let body_secret = &secret["kg_live_".len() + key.id.len()..];
    for shown in [format!("{fetched:?}"), format!("{listed:?}")] {
        assert!(
            !shown.contains(body_secret),
            "a secret leaked into a read answer"
        );
    }

    let twa = create_key(
        &mut client,
        proto::CreateKeyRequest {
            profile: "twa".into(),
            ..key_request(&owner.id, "twa")
        },
    )
    .await;
    assert!(twa.secret.starts_with("twa_") && twa.secret.len() == 4 + 43);
    let wmt = create_key(
        &mut client,
        proto::CreateKeyRequest {
            profile: "wmt".into(),
            ..key_request(&owner.id, "wmt")
        },
    )
    .await;
    assert!(wmt.secret.starts_with("wmt_api_") && wmt.secret.len() == 8 + 48);
    let ctw = create_key(
        &mut client,
        proto::CreateKeyRequest {
            profile: "ctw".into(),
            ..key_request(&owner.id, "ctw")
        },
    )
    .await;
    let body = &ctw.secret["ctw_".len()..];
    assert!(
        body.len() == 56
            && body
                .bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );

    let pair = create_key(
        &mut client,
        proto::CreateKeyRequest {
            pair: true,
            ..key_request(&owner.id, "pair")
        },
    )
    .await;
    let pair_key = pair.key.unwrap();
    assert!(pair.secret.is_empty());
    assert_eq!(pair.api_key, format!("kg_live_{}", pair_key.id));
    assert_eq!(pair_key.public_key, pair.api_key);
    assert_eq!(pair_key.kind, proto::KeyKind::Pair as i32);
    assert_eq!(
        pair.api_key.len() + pair.api_secret.len(),
        "kg_live_".len() + 61
    );
}

#[tokio::test]
async fn create_key_refuses_bad_input() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "alice", "").await;
    let base = || key_request(&owner.id, "ok");
    let cases: Vec<(proto::CreateKeyRequest, Code, &str)> = vec![
        (
            proto::CreateKeyRequest {
                name: "  ".into(),
                ..base()
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            proto::CreateKeyRequest {
                allowed_cidrs: vec!["10.0.0.300/8".into()],
                ..base()
            },
            Code::InvalidArgument,
            "10.0.0.300/8",
        ),
        (
            proto::CreateKeyRequest {
                expiry: Some(Expiry::ExpireInDays(0)),
                ..base()
            },
            Code::InvalidArgument,
            "expire_in_days",
        ),
        (
            proto::CreateKeyRequest {
                expiry: Some(Expiry::ExpireTime(Timestamp {
                    seconds: T0 - 1,
                    nanos: 0,
                })),
                ..base()
            },
            Code::InvalidArgument,
            "future",
        ),
        (
            proto::CreateKeyRequest {
                scopes: vec!["read write".into()],
                ..base()
            },
            Code::InvalidArgument,
            "scope",
        ),
        (
            proto::CreateKeyRequest {
                profile: "nope".into(),
                ..base()
            },
            Code::InvalidArgument,
            "profile",
        ),
        (
            proto::CreateKeyRequest {
                plan: "nope".into(),
                ..base()
            },
            Code::InvalidArgument,
            "plan",
        ),
        (
            proto::CreateKeyRequest {
                owner_id: "own_nobody".into(),
                ..base()
            },
            Code::NotFound,
            "own_nobody",
        ),
        (
            proto::CreateKeyRequest {
                owner_id: String::new(),
                ..base()
            },
            Code::InvalidArgument,
            "owner_id",
        ),
    ];
    for (request, code, mentions) in cases {
        let message = expect_code(client.create_key(admin(request)).await, code);
        assert!(
            message.contains(mentions),
            "{message:?} should mention {mentions:?}"
        );
    }

    client
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: Some(proto::Owner {
                id: owner.id.clone(),
                state: proto::OwnerState::Disabled as i32,
                ..Default::default()
            }),
            update_mask: mask(&["state"]),
        }))
        .await
        .unwrap();
    expect_code(
        client.create_key(admin(base())).await,
        Code::FailedPrecondition,
    );
}

#[tokio::test]
async fn the_plan_caps_active_keys_per_owner() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "bob", "free").await;
    let first = create_key(&mut client, key_request(&owner.id, "one")).await;
    create_key(&mut client, key_request(&owner.id, "two")).await;
    let third = client
        .create_key(admin(key_request(&owner.id, "three")))
        .await;
    assert!(expect_code(third, Code::FailedPrecondition).contains("active keys"));
    client
        .revoke_key(admin(proto::RevokeKeyRequest {
            id: first.key.unwrap().id,
        }))
        .await
        .unwrap();
    create_key(&mut client, key_request(&owner.id, "three")).await;
}

#[tokio::test]
async fn keys_requiring_activation_wait_for_their_code() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "alice", "").await;
    let created = create_key(
        &mut client,
        proto::CreateKeyRequest {
            require_activation: true,
            ..key_request(&owner.id, "emailed")
        },
    )
    .await;
    let key = created.key.unwrap();
    assert_eq!(key.state, proto::KeyState::PendingActivation as i32);
    assert!(!created.activation_code.is_empty());

    let activate = |code: &str| {
        admin(proto::ActivateKeyRequest {
            id: key.id.clone(),
            activation_code: code.into(),
        })
    };
    expect_code(
        client.activate_key(activate("wrong-code")).await,
        Code::InvalidArgument,
    );
    expect_code(
        client.activate_key(activate("")).await,
        Code::InvalidArgument,
    );
    let enable = client
        .update_key(admin(proto::UpdateKeyRequest {
            key: Some(proto::Key {
                id: key.id.clone(),
                ..Default::default()
            }),
            update_mask: mask(&["disabled"]),
            disabled: false,
        }))
        .await;
    assert!(expect_code(enable, Code::FailedPrecondition).contains("activat"));
    let active = client
        .activate_key(activate(&created.activation_code))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.state, proto::KeyState::Active as i32);
    let again = client
        .activate_key(activate(&created.activation_code))
        .await;
    expect_code(again, Code::FailedPrecondition);
}

#[tokio::test]
async fn keys_are_listed_by_owner_in_pages_and_by_state() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "alice", "").await;
    let other = create_owner(&mut client, "bob", "").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            create_key(&mut client, key_request(&owner.id, &format!("k{i}")))
                .await
                .key
                .unwrap()
                .id,
        );
    }
    create_key(&mut client, key_request(&other.id, "not alice's")).await;
    client
        .revoke_key(admin(proto::RevokeKeyRequest { id: ids[0].clone() }))
        .await
        .unwrap();

    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_keys(admin(proto::ListKeysRequest {
                owner_id: owner.id.clone(),
                page_size: 2,
                page_token: token,
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.keys.into_iter().map(|k| k.id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(seen, expected);

    let revoked = client
        .list_keys(admin(proto::ListKeysRequest {
            owner_id: owner.id.clone(),
            state: proto::KeyState::Revoked as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.keys.len(), 1);
    assert_eq!(revoked.keys[0].id, ids[0]);

    let unknown = client
        .list_keys(admin(proto::ListKeysRequest {
            owner_id: "own_nobody".into(),
            ..Default::default()
        }))
        .await;
    expect_code(unknown, Code::NotFound);
    let bad_state = client
        .list_keys(admin(proto::ListKeysRequest {
            owner_id: owner.id.clone(),
            state: 42,
            ..Default::default()
        }))
        .await;
    expect_code(bad_state, Code::InvalidArgument);
}

#[tokio::test]
async fn keys_are_updated_through_a_field_mask() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "alice", "").await;
    let key = create_key(&mut client, key_request(&owner.id, "before"))
        .await
        .key
        .unwrap();

    let update = |paths: &[&str], patch: proto::Key, disabled: bool| {
        admin(proto::UpdateKeyRequest {
            key: Some(proto::Key {
                id: key.id.clone(),
                ..patch
            }),
            update_mask: mask(paths),
            disabled,
        })
    };
    let patch = proto::Key {
        name: "after".into(),
        scopes: vec!["read".into(), "write".into()],
        allowed_cidrs: vec!["2001:db8::/32".into()],
        metadata: HashMap::from([("k".into(), "v".into())]),
        expire_time: Some(Timestamp {
            seconds: T0 + 3600,
            nanos: 0,
        }),
        ..Default::default()
    };
    let updated = client
        .update_key(update(
            &[
                "name",
                "scopes",
                "allowed_cidrs",
                "metadata",
                "expire_time",
                "disabled",
            ],
            patch,
            true,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "after");
    assert_eq!(updated.scopes, ["read", "write"]);
    assert_eq!(updated.allowed_cidrs, ["2001:db8::/32"]);
    assert_eq!(updated.metadata.get("k").map(String::as_str), Some("v"));
    assert_eq!(updated.expire_time.unwrap().seconds, T0 + 3600);
    assert_eq!(updated.state, proto::KeyState::Disabled as i32);

    let enabled = client
        .update_key(update(
            &["disabled", "expire_time"],
            proto::Key::default(),
            false,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(enabled.state, proto::KeyState::Active as i32);
    assert_eq!(
        enabled.expire_time, None,
        "expire_time in the mask and unset clears it"
    );
    assert_eq!(enabled.name, "after", "fields outside the mask are kept");

    expect_code(
        client
            .update_key(update(&[], proto::Key::default(), false))
            .await,
        Code::InvalidArgument,
    );
    expect_code(
        client
            .update_key(update(&["owner_id"], proto::Key::default(), false))
            .await,
        Code::InvalidArgument,
    );
    let bad_cidr = proto::Key {
        allowed_cidrs: vec!["nope".into()],
        ..Default::default()
    };
    expect_code(
        client
            .update_key(update(&["allowed_cidrs"], bad_cidr, false))
            .await,
        Code::InvalidArgument,
    );
    let past = proto::Key {
        expire_time: Some(Timestamp {
            seconds: T0 - 10,
            nanos: 0,
        }),
        ..Default::default()
    };
    expect_code(
        client
            .update_key(update(&["expire_time"], past, false))
            .await,
        Code::InvalidArgument,
    );

    client
        .revoke_key(admin(proto::RevokeKeyRequest { id: key.id.clone() }))
        .await
        .unwrap();
    let rename = proto::Key {
        name: "x".into(),
        ..Default::default()
    };
    expect_code(
        client.update_key(update(&["name"], rename, false)).await,
        Code::FailedPrecondition,
    );
    let missing = client
        .update_key(admin(proto::UpdateKeyRequest {
            key: Some(proto::Key {
                id: "nope".into(),
                name: "x".into(),
                ..Default::default()
            }),
            update_mask: mask(&["name"]),
            disabled: false,
        }))
        .await;
    expect_code(missing, Code::NotFound);
}

#[tokio::test]
async fn revoke_rotate_and_delete() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "alice", "").await;
    let created = create_key(&mut client, key_request(&owner.id, "k")).await;
    let key = created.key.unwrap();

    server.clock.advance(10);
    let rotated = client
        .rotate_key(admin(proto::RotateKeyRequest {
            id: key.id.clone(),
            grace: Some(Duration {
                seconds: 3600,
                nanos: 0,
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, created.secret);
    assert!(
        rotated.secret.starts_with(&format!("kg_live_{}", key.id)),
        "rotation keeps the id"
    );
    let rotated_key = rotated.key.unwrap();
    assert_eq!(
        rotated_key.previous_secret_expire_time.unwrap().seconds,
        T0 + 10 + 3600
    );

    let negative = client
        .rotate_key(admin(proto::RotateKeyRequest {
            id: key.id.clone(),
            grace: Some(Duration {
                seconds: -1,
                nanos: 0,
            }),
        }))
        .await;
    expect_code(negative, Code::InvalidArgument);

    let revoked = client
        .revoke_key(admin(proto::RevokeKeyRequest { id: key.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.state, proto::KeyState::Revoked as i32);
    assert_eq!(revoked.revoke_time.unwrap().seconds, T0 + 10);
    assert_eq!(
        revoked.previous_secret_expire_time, None,
        "revocation ends the grace period too"
    );
    let again = client
        .revoke_key(admin(proto::RevokeKeyRequest { id: key.id.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, revoked, "revoking twice changes nothing");
    let rotate_revoked = client
        .rotate_key(admin(proto::RotateKeyRequest {
            id: key.id.clone(),
            grace: None,
        }))
        .await;
    expect_code(rotate_revoked, Code::FailedPrecondition);

    client
        .delete_key(admin(proto::DeleteKeyRequest { id: key.id.clone() }))
        .await
        .unwrap();
    expect_code(
        client
            .get_key(admin(proto::GetKeyRequest { id: key.id.clone() }))
            .await,
        Code::NotFound,
    );
    expect_code(
        client
            .delete_key(admin(proto::DeleteKeyRequest { id: key.id.clone() }))
            .await,
        Code::NotFound,
    );
    expect_code(
        client
            .revoke_key(admin(proto::RevokeKeyRequest { id: String::new() }))
            .await,
        Code::InvalidArgument,
    );
}

#[tokio::test]
async fn rotated_secrets_work_until_the_grace_period_ends() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "alice", "").await;
    let created = create_key(
        &mut client,
        proto::CreateKeyRequest {
            scopes: vec!["keygate:keys".into()],
            ..key_request(&owner.id, "manager")
        },
    )
    .await;
    let old = created.secret;
    let new = client
        .rotate_key(admin(proto::RotateKeyRequest {
            id: created.key.unwrap().id,
            grace: Some(Duration {
                seconds: 60,
                nanos: 0,
            }),
        }))
        .await
        .unwrap()
        .into_inner()
        .secret;
    // A key holding keygate:keys authenticates management calls, which makes the verifier
    // observable over the wire.
    get_owner_as(&mut client, &old, &owner.id).await.unwrap();
    get_owner_as(&mut client, &new, &owner.id).await.unwrap();
    server.clock.advance(60);
    expect_code(
        get_owner_as(&mut client, &old, &owner.id).await,
        Code::Unauthenticated,
    );
    get_owner_as(&mut client, &new, &owner.id).await.unwrap();
}

#[tokio::test]
async fn imported_keys_keep_working_without_reissue() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let owner = create_owner(&mut client, "alice", "").await;
    let legacy = "ctw_3f8da4f058e8992f91c42ccfd00b31e3";
    let import = |secret: &str| {
        admin(proto::ImportKeyRequest {
            owner_id: owner.id.clone(),
            name: "from the old system".into(),
            secret: secret.into(),
            scopes: vec!["keygate:keys".into()],
            create_time: Some(Timestamp {
                seconds: T0 - 86_400,
                nanos: 0,
            }),
            ..Default::default()
        })
    };
    let key = client
        .import_key(import(legacy))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(key.kind, proto::KeyKind::Imported as i32);
    assert_eq!(key.create_time.unwrap().seconds, T0 - 86_400);
    assert!(!format!("{key:?}").contains("3f8da4f058e8992f91c42ccfd00b31e3"));
    expect_code(client.import_key(import(legacy)).await, Code::AlreadyExists);
    expect_code(
        client.import_key(import("has a space")).await,
        Code::InvalidArgument,
    );
    expect_code(client.import_key(import("")).await, Code::InvalidArgument);

    // The imported key is found by its digest and verified like any other.
    get_owner_as(&mut client, legacy, &owner.id).await.unwrap();
    let unknown = "ctw_3f8da4f058e8992f91c42ccfd00b31e4";
    expect_code(
        get_owner_as(&mut client, unknown, &owner.id).await,
        Code::Unauthenticated,
    );

    // A key already in a keygate profile's format keeps its embedded id.
    let other = common::start(Some(ADMIN_TOKEN)).await;
    let mut other_client = other.client().await;
    let other_owner = create_owner(&mut other_client, "x", "").await;
    let issued = create_key(&mut other_client, key_request(&other_owner.id, "elsewhere")).await;
    let adopted = client
        .import_key(import(&issued.secret))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(adopted.id, issued.key.unwrap().id);
    get_owner_as(&mut client, &issued.secret, &owner.id)
        .await
        .unwrap();
}

#[tokio::test]
async fn management_calls_need_the_admin_token_or_a_managing_key() {
    let server = start(Some(ADMIN_TOKEN)).await;
    let mut client = server.client().await;
    let alice = create_owner(&mut client, "alice", "").await;
    let bob = create_owner(&mut client, "bob", "").await;
    let bobs_key = create_key(&mut client, key_request(&bob.id, "bob's"))
        .await
        .key
        .unwrap();

    let anonymous = client.list_plans(proto::ListPlansRequest {}).await;
    assert!(expect_code(anonymous, Code::Unauthenticated).contains("authorization"));
    expect_code(
        client
            .list_plans(bearer("wrong-token", proto::ListPlansRequest {}))
            .await,
        Code::Unauthenticated,
    );
    let mut basic = tonic::Request::new(proto::ListPlansRequest {});
    basic
        .metadata_mut()
        .insert("authorization", "Basic abc".parse().unwrap());
    expect_code(client.list_plans(basic).await, Code::Unauthenticated);

    let reader = create_key(&mut client, key_request(&alice.id, "reader"))
        .await
        .secret;
    expect_code(
        client
            .list_plans(bearer(&reader, proto::ListPlansRequest {}))
            .await,
        Code::PermissionDenied,
    );

    let manager = create_key(
        &mut client,
        proto::CreateKeyRequest {
            scopes: vec!["keygate:keys".into(), "read".into()],
            ..key_request(&alice.id, "manager")
        },
    )
    .await
    .secret;
    // Seed 002: a key creates keys programmatically, for its own owner.
    let made = client
        .create_key(bearer(
            &manager,
            proto::CreateKeyRequest {
                owner_id: String::new(),
                ..key_request("", "made by a key")
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(made.key.unwrap().owner_id, alice.id);
    let escalate = client
        .create_key(bearer(
            &manager,
            proto::CreateKeyRequest {
                scopes: vec!["admin".into()],
                ..key_request(&alice.id, "escalate")
            },
        ))
        .await;
    expect_code(escalate, Code::PermissionDenied);
    let for_bob = client
        .create_key(bearer(&manager, key_request(&bob.id, "for bob")))
        .await;
    expect_code(for_bob, Code::NotFound);
    let bobs = client
        .get_key(bearer(
            &manager,
            proto::GetKeyRequest {
                id: bobs_key.id.clone(),
            },
        ))
        .await;
    expect_code(bobs, Code::NotFound);
    let revoke_bobs = client
        .revoke_key(bearer(
            &manager,
            proto::RevokeKeyRequest { id: bobs_key.id },
        ))
        .await;
    expect_code(revoke_bobs, Code::NotFound);
    let new_owner = client
        .create_owner(bearer(
            &manager,
            proto::CreateOwnerRequest {
                external_id: "mallory".into(),
                display_name: "Mallory".into(),
                ..Default::default()
            },
        ))
        .await;
    expect_code(new_owner, Code::PermissionDenied);
    expect_code(
        client
            .list_owners(bearer(&manager, proto::ListOwnersRequest::default()))
            .await,
        Code::PermissionDenied,
    );
    client
        .list_plans(bearer(&manager, proto::ListPlansRequest {}))
        .await
        .unwrap();

    // A disabled owner's keys stop managing at once.
    client
        .update_owner(admin(proto::UpdateOwnerRequest {
            owner: Some(proto::Owner {
                id: alice.id.clone(),
                state: proto::OwnerState::Disabled as i32,
                ..Default::default()
            }),
            update_mask: mask(&["state"]),
        }))
        .await
        .unwrap();
    expect_code(
        client
            .list_plans(bearer(&manager, proto::ListPlansRequest {}))
            .await,
        Code::Unauthenticated,
    );
}

#[tokio::test]
async fn without_an_admin_token_loopback_calls_are_trusted() {
    let server = start(None).await;
    let mut client = server.client().await;
    client.list_plans(proto::ListPlansRequest {}).await.unwrap();
    let bad = client
        .list_plans(bearer("not a key", proto::ListPlansRequest {}))
        .await;
    expect_code(bad, Code::Unauthenticated);
}

#[tokio::test]
async fn an_exposed_management_api_needs_an_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.listen.management = "0.0.0.0:0".parse().unwrap();
    let env = std::collections::HashMap::from([(
        "KEYGATE_PEPPER".to_string(),
        "test pepper, 16+ bytes".to_string(),
    )]);
    let (secrets, _) = keygate::secrets::Secrets::load(&env, dir.path()).unwrap();
    let store = keygate::store::embedded::EmbeddedStore::open(&dir.path().join("k.redb")).unwrap();
    let backends = keygate::app::Backends::with_store(&config, std::sync::Arc::new(store)).unwrap();
    let refused = keygate::server::start(
        &config,
        secrets,
        backends,
        std::sync::Arc::new(keygate::clock::SystemClock),
    )
    .await;
    let error = refused.err().expect("start must refuse").to_string();
    assert!(error.contains("KEYGATE_ADMIN_TOKEN"), "{error}");
}
