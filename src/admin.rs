//! Backup and migration: every record of a store as JSON lines, and back into any store.
//!
//! Records hold hashes and digests only, never a plaintext key, so an export is as
//! sensitive as the store itself and no more. Keys imported from other systems (by their
//! text, or by a digest and not used since) and pending activation codes are found by
//! digests made with the pepper: a store moved elsewhere needs the same pepper to keep them
//! working.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{KeyRecord, Owner};
use crate::plan::PlanConfig;
use crate::store::{Store, Walked, walk};

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "record", rename_all = "snake_case")]
pub enum ExportLine {
    /// A plan; plans come first, before the owners that name them.
    Plan(PlanConfig),
    /// An owner; always before its keys.
    Owner(Owner),
    /// A key record.
    Key(Box<KeyRecord>),
}

/// How many records an export or import handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Plans.
    pub plans: usize,
    /// Owners.
    pub owners: usize,
    /// Keys.
    pub keys: usize,
}

/// Writes every plan, then every owner, each followed by its keys, to `out` as JSON lines.
pub async fn export(store: &dyn Store, mut out: impl Write) -> Result<Counts> {
    let mut counts = Counts::default();
    let write_error =
        |e: std::io::Error| Error::Unavailable(format!("cannot write the export: {e}"));
    for plan in store.list_plans().await? {
        write_line(&mut out, &ExportLine::Plan(plan)).map_err(write_error)?;
        counts.plans += 1;
    }
    walk(store, |record| {
        let line = match record {
            Walked::Owner(owner) => {
                counts.owners += 1;
                ExportLine::Owner(owner.clone())
            }
            Walked::Key(key) => {
                counts.keys += 1;
                ExportLine::Key(Box::new(key.clone()))
            }
        };
        write_line(&mut out, &line).map_err(write_error)
    })
    .await?;
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
            ExportLine::Plan(plan) => import_plan(store, plan).await.map(|()| counts.plans += 1),
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

/// Stores `plan`, unless the store has exactly this plan already: a store that was served
/// holds its configuration's plans, which an export of a store with the same configuration
/// holds too. A stored plan of the same name that differs is refused, like any record
/// already there.
async fn import_plan(store: &dyn Store, plan: &PlanConfig) -> Result<()> {
    match store.create_plan(plan).await {
        Err(Error::AlreadyExists(refusal)) => match store.get_plan(&plan.name).await? {
            Some(stored) if stored == *plan => Ok(()),
            _ => Err(Error::AlreadyExists(refusal)),
        },
        other => other,
    }
}
