//! Records as keygate's management plane writes them, for benches that fill a store directly.

use std::collections::BTreeMap;

use keygate::model::{KeyKind, KeyRecord, KeyState};

/// A key record as CreateKey makes it: two scopes, one metadata entry, a secret check.
pub fn record(id: String, owner_id: &str, check: String, hash: String, now: i64) -> KeyRecord {
    KeyRecord {
        id,
        owner_id: owner_id.to_owned(),
        name: "payments service".into(),
        profile: Some("kg_live".into()),
        prefix: Some("kg_live".into()),
        kind: KeyKind::Single,
        scopes: vec!["read".into(), "write".into()],
        plan: None,
        allowed_cidrs: vec![],
        metadata: BTreeMap::from([("team".into(), "payments".into())]),
        state: KeyState::Active,
        disabled_by_admin: false,
        secret_hash: hash,
        secret_check: Some(check),
        lookup_digest: None,
        foreign_digest: None,
        previous_secret: None,
        activation_digest: None,
        created_at: now,
        updated_at: now,
        expires_at: None,
        revoked_at: None,
        last_used_at: None,
        usage_count: 0,
        credits: None,
    }
}
