//! Backup and migration: every record of a store as JSON lines, and back into any store.
//!
//! Records hold hashes and digests only, never a plaintext key, so an export is as
//! sensitive as the store itself and no more. Keys imported from other systems and pending
//! activation codes are found by digests made with the pepper: a store moved elsewhere needs
//! the same pepper to keep them working.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{KeyRecord, Owner};
use crate::store::Store;

/// Records read or written per store call.
const PAGE: usize = 500;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "record", rename_all = "snake_case")]
pub enum ExportLine {
    /// An owner; always before its keys.
    Owner(Owner),
    /// A key record.
    Key(Box<KeyRecord>),
}

/// How many records an export or import handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Owners.
    pub owners: usize,
    /// Keys.
    pub keys: usize,
}

/// Writes every owner, each followed by its keys, to `out` as JSON lines.
pub async fn export(store: &dyn Store, mut out: impl Write) -> Result<Counts> {
    let mut counts = Counts::default();
    let write_error =
        |e: std::io::Error| Error::Unavailable(format!("cannot write the export: {e}"));
    let mut after_owner: Option<String> = None;
    loop {
        let owners = store.list_owners(after_owner.as_deref(), PAGE).await?;
        for owner in &owners {
            write_line(&mut out, &ExportLine::Owner(owner.clone())).map_err(write_error)?;
            counts.owners += 1;
            let mut after_key: Option<String> = None;
            loop {
                let keys = store
                    .list_keys(&owner.id, None, after_key.as_deref(), PAGE)
                    .await?;
                for key in &keys {
                    write_line(&mut out, &ExportLine::Key(Box::new(key.clone())))
                        .map_err(write_error)?;
                    counts.keys += 1;
                }
                match keys.last() {
                    Some(last) if keys.len() == PAGE => after_key = Some(last.id.clone()),
                    _ => break,
                }
            }
        }
        match owners.last() {
            Some(last) if owners.len() == PAGE => after_owner = Some(last.id.clone()),
            _ => break,
        }
    }
    out.flush().map_err(write_error)?;
    Ok(counts)
}

fn write_line(out: &mut impl Write, line: &ExportLine) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")
}

/// Loads an export into `store`. Stops at the first line that cannot be read or stored,
/// naming it; everything before it is stored.
pub async fn import(store: &dyn Store, input: impl BufRead) -> Result<Counts> {
    let mut counts = Counts::default();
    for (index, line) in input.lines().enumerate() {
        let number = index + 1;
        let line =
            line.map_err(|e| Error::InvalidArgument(format!("line {number}: cannot read: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        let record: ExportLine = serde_json::from_str(&line).map_err(|e| {
            Error::InvalidArgument(format!("line {number} is not a keygate export record: {e}"))
        })?;
        let stored = match &record {
            ExportLine::Owner(owner) => {
                store.create_owner(owner).await.map(|()| counts.owners += 1)
            }
            ExportLine::Key(key) => store.insert_key(key, None).await.map(|()| counts.keys += 1),
        };
        stored.map_err(|e| match e {
            Error::Unavailable(m) => Error::Unavailable(format!("line {number}: {m}")),
            other => Error::FailedPrecondition(format!("line {number}: {other}")),
        })?;
    }
    Ok(counts)
}
