//! `keygate admin export|import`: backup and migration, working on the store that the same
//! flags and configuration as `keygate serve` select. With the embedded store, stop the
//! server first: the store file is opened exclusively.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::app::{Backends, StartError};
use crate::config::ServeArgs;

/// `keygate admin ...`.
#[derive(Args, Debug)]
pub struct AdminCli {
    /// Which store: the same flags as `keygate serve`.
    #[command(flatten)]
    pub store: ServeArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin commands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Writes every plan, owner and key record (hashes only, never a secret) as JSON lines.
    Export {
        /// File to write; standard output when absent.
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Loads an export into the store; plans it holds already, exactly as exported, are
    /// kept.
    Import {
        /// File to read; standard input when absent.
        #[arg(long)]
        input: Option<PathBuf>,
    },
}

/// Runs an admin command; errors are printed and turned into the exit code.
pub async fn run(cli: AdminCli) -> ExitCode {
    crate::telemetry::Telemetry::init_logs(crate::telemetry::LogFormat::Human);
    match run_inner(cli).await {
        Ok(message) => {
            eprintln!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

async fn run_inner(cli: AdminCli) -> Result<String, StartError> {
    let config = cli.store.load()?;
    let store = Backends::open(&config).await?.store;
    let io = |what: &str, path: &PathBuf, e: std::io::Error| {
        StartError::Runtime(format!("cannot {what} {}: {e}", path.display()))
    };
    let failed = |e: crate::error::Error| StartError::Runtime(e.to_string());
    match cli.command {
        AdminCommand::Export { output } => {
            let counts = match &output {
                Some(path) => {
                    let file = File::create(path).map_err(|e| io("create", path, e))?;
                    crate::admin::export(store.as_ref(), BufWriter::new(file)).await
                }
                None => crate::admin::export(store.as_ref(), std::io::stdout().lock()).await,
            }
            .map_err(failed)?;
            Ok(format!(
                "exported {} plans, {} owners and {} keys",
                counts.plans, counts.owners, counts.keys
            ))
        }
        AdminCommand::Import { input } => {
            let counts = match &input {
                Some(path) => {
                    let file = File::open(path).map_err(|e| io("open", path, e))?;
                    crate::admin::import(store.as_ref(), BufReader::new(file)).await
                }
                None => crate::admin::import(store.as_ref(), std::io::stdin().lock()).await,
            }
            .map_err(failed)?;
            Ok(format!(
                "imported {} plans, {} owners and {} keys",
                counts.plans, counts.owners, counts.keys
            ))
        }
    }
}
