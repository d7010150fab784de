//! keygate's command line.
//!
//! `keygate serve` runs the server; every other command is a client of the
//! `keygate.v1.KeyManager` gRPC API:
//!
//! ```text
//! keygate owners create|get|list|update
//! keygate plans create|get|list|update|delete
//! keygate keys create|get|list|update|activate|revoke|rotate|delete|import
//! ```
//!
//! Client commands share `--addr` (`KEYGATE_ADDR`), `--token` (`KEYGATE_TOKEN`) and
//! `--json`. Exit codes: 0 on success, 1 when the server refuses a call or cannot be
//! reached, 2 when the command line itself is wrong.

pub mod admin;
pub mod commands;
pub mod output;

use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use zeroize::Zeroizing;

use crate::error::quote;
use crate::proto;

/// The whole command line.
#[derive(Parser, Debug)]
#[command(
    name = "keygate",
    version = concat!(env!("CARGO_PKG_VERSION"), " (revision ", env!("BUILD_GIT_REVISION"), ")"),
    about = "API-key authorization service and its management client"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// keygate's top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Runs the keygate server.
    Serve(crate::config::ServeArgs),
    /// Manages owners: the accounts API keys belong to.
    Owners(OwnersCli),
    /// Manages plans: what owners' keys may do.
    Plans(PlansCli),
    /// Manages API keys.
    Keys(KeysCli),
    /// Works on the store directly: backup and migration.
    Admin(admin::AdminCli),
    /// Checks a configuration without serving.
    Config(ConfigCli),
}

/// `keygate config ...`.
#[derive(Args, Debug)]
pub struct ConfigCli {
    /// The config command to run.
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// The config commands.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validates the configuration `serve` would run with (same flags, file and
    /// environment) and prints the effective one as YAML, secrets masked. Exit code 2 when
    /// it is invalid.
    Check(crate::config::ServeArgs),
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Address of keygate's gRPC API; `http://` is assumed when no scheme is given.
    #[arg(
        long,
        env = "KEYGATE_ADDR",
        default_value = "http://127.0.0.1:9192",
        global = true
    )]
    pub addr: String,
    /// Bearer token sent with every call: the admin token, or an API key holding the
    /// scope `keygate:keys`. Prefer the environment variable: command lines are visible
    /// to other users of the machine.
    #[arg(
        long,
        env = "KEYGATE_TOKEN",
        hide_env_values = true,
        global = true,
        value_name = "TOKEN"
    )]
    pub token: Option<Token>,
    /// CA certificate (PEM) that signed the server's certificate: connects over TLS
    /// (`https://` is then assumed when no scheme is given).
    #[arg(long, env = "KEYGATE_CA_CERT", global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for a server requiring mutual TLS; needs `--key`.
    #[arg(
        long,
        env = "KEYGATE_CERT",
        global = true,
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of `--cert`.
    #[arg(
        long,
        env = "KEYGATE_KEY",
        global = true,
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A bearer token. Its `Debug` form never shows the value, and the memory holding it is
/// wiped when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Zeroizing<String>);

impl Token {
    /// The token's text, for the `authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Token {
    fn from(value: String) -> Self {
        Token(Zeroizing::new(value))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// `keygate owners ...`.
#[derive(Args, Debug)]
pub struct OwnersCli {
    /// Connection and output options.
    #[command(flatten)]
    pub client: ClientOpts,
    /// The owners command to run.
    #[command(subcommand)]
    pub command: OwnersCommand,
}

/// The owners commands.
#[derive(Subcommand, Debug)]
pub enum OwnersCommand {
    /// Creates an owner.
    Create(OwnersCreateArgs),
    /// Shows one owner.
    Get(IdArg),
    /// Lists owners, one page at a time.
    List(PageArgs),
    /// Changes an owner's name, plan, state or metadata.
    Update(OwnersUpdateArgs),
}

/// `keygate plans ...`.
#[derive(Args, Debug)]
pub struct PlansCli {
    /// Connection and output options.
    #[command(flatten)]
    pub client: ClientOpts,
    /// The plans command to run.
    #[command(subcommand)]
    pub command: PlansCommand,
}

/// The plans commands.
#[derive(Subcommand, Debug)]
pub enum PlansCommand {
    /// Creates a plan.
    Create(PlansCreateArgs),
    /// Shows one plan.
    Get(PlanNameArg),
    /// Lists every plan and the default one.
    List,
    /// Changes a plan's API access, key cap or rate windows; every replica's next request
    /// decides by the new plan.
    Update(PlansUpdateArgs),
    /// Deletes a plan that no owner and no live key is on.
    Delete(PlanNameArg),
}

/// A command that names one plan.
#[derive(Args, Debug)]
pub struct PlanNameArg {
    /// The plan's name.
    pub name: String,
}

/// `keygate plans create`.
#[derive(Args, Debug)]
pub struct PlansCreateArgs {
    /// The plan's name; owners and keys name it, and it cannot be changed.
    pub name: String,
    /// Whether keys on the plan may call the API at all.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub api_access: bool,
    /// Most keys an owner may hold that are not revoked or expired; 0 for no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_active_keys: u32,
    /// A rate window, `LIMIT/PERIOD` counted per key, or `LIMIT/PERIOD per owner` shared by
    /// all of an owner's keys (as `plans list` prints them), e.g. `10/1s` or
    /// `'2000/1h per owner'`; repeat for more.
    #[arg(long = "window", value_name = "WINDOW")]
    pub windows: Vec<String>,
    /// A calendar quota, `LIMIT/PERIOD[@ANCHOR]` with PERIOD `day`, `week` or `month` and
    /// ANCHOR a day of the month or a weekday, counted per key, or with ` per owner`, e.g.
    /// `10000/month@15` or `'500/week@friday per owner'`; repeat for more.
    #[arg(long = "quota", value_name = "QUOTA")]
    pub quotas: Vec<String>,
}

/// `--credits` and `--refill`: a number of uses a key is limited to.
#[derive(Args, Debug, Default)]
pub struct CreditArgs {
    /// Limit the key to this many uses (admin only); each allowed request spends its cost.
    #[arg(long, value_name = "N")]
    pub credits: Option<u64>,
    /// How the credits grow back: `AMOUNT/INTERVAL` adds AMOUNT after each interval (e.g.
    /// `100/1h`), `AMOUNT/PERIOD[@ANCHOR]` resets to AMOUNT each calendar cycle (e.g.
    /// `1000/month@1`).
    #[arg(long, value_name = "REFILL", requires = "credits")]
    pub refill: Option<String>,
}

/// `keygate plans update`: only the fields given are changed.
#[derive(Args, Debug)]
pub struct PlansUpdateArgs {
    /// The plan's name.
    pub name: String,
    /// Whether keys on the plan may call the API at all.
    #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
    pub api_access: Option<bool>,
    /// Most keys an owner may hold that are not revoked or expired; 0 for no limit.
    #[arg(long, value_name = "N")]
    pub max_active_keys: Option<u32>,
    /// A rate window, as for `plans create`; the windows given replace all existing ones.
    #[arg(long = "window", value_name = "WINDOW")]
    pub windows: Vec<String>,
    /// Remove all rate windows.
    #[arg(long, conflicts_with = "windows")]
    pub clear_windows: bool,
    /// A calendar quota, as for `plans create`; the quotas given replace all existing ones.
    #[arg(long = "quota", value_name = "QUOTA")]
    pub quotas: Vec<String>,
    /// Remove all calendar quotas.
    #[arg(long, conflicts_with = "quotas")]
    pub clear_quotas: bool,
}

/// `keygate keys ...`.
#[derive(Args, Debug)]
pub struct KeysCli {
    /// Connection and output options.
    #[command(flatten)]
    pub client: ClientOpts,
    /// The keys command to run.
    #[command(subcommand)]
    pub command: KeysCommand,
}

/// The keys commands.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Issues a key and prints its secret, once.
    Create(KeysCreateArgs),
    /// Shows one key (never its secret).
    Get(IdArg),
    /// Lists an owner's keys, one page at a time.
    List(KeysListArgs),
    /// Changes a key's name, scopes, networks, metadata, expiry or disabled state.
    Update(KeysUpdateArgs),
    /// Activates a key created with `--require-activation`.
    Activate(KeysActivateArgs),
    /// Revokes a key at once; it never works again.
    Revoke(IdArg),
    /// Issues a new secret for a key and prints it, once.
    Rotate(KeysRotateArgs),
    /// Removes a key and its record.
    Delete(IdArg),
    /// Adopts a key issued elsewhere. The key is read from standard input, never from
    /// the command line.
    Import(KeysImportArgs),
    /// Shows a key's requests per day (or an owner's, summed over its keys): allowed and
    /// denied, with a small chart.
    Usage(KeysUsageArgs),
}

/// `keygate keys usage`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("whose").required(true).args(["id", "owner"])))]
pub struct KeysUsageArgs {
    /// The key's id.
    pub id: Option<String>,
    /// An owner's id instead: the sum over its keys.
    #[arg(long)]
    pub owner: Option<String>,
    /// How many days, up to today (or up to `--to`).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=366))]
    pub days: u32,
    /// The last day, YYYY-MM-DD; today by default.
    #[arg(long)]
    pub to: Option<String>,
}

/// A command that names one record.
#[derive(Args, Debug)]
pub struct IdArg {
    /// The record's id.
    pub id: String,
}

/// Paging options of the list commands.
#[derive(Args, Debug)]
pub struct PageArgs {
    /// Most entries to return (1..1000); the server's default when absent.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub page_size: Option<u32>,
    /// Token from a previous page's answer.
    #[arg(long)]
    pub page_token: Option<String>,
}

/// `keygate owners create`.
#[derive(Args, Debug)]
pub struct OwnersCreateArgs {
    /// The product's own id for this account; unique.
    #[arg(long)]
    pub external_id: String,
    /// Display name.
    #[arg(long)]
    pub name: String,
    /// Plan name; the configured default when absent.
    #[arg(long)]
    pub plan: Option<String>,
    /// Metadata entry; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
}

/// The states an owner can be put in.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerStateArg {
    /// Its keys work.
    Active,
    /// None of its keys work.
    Disabled,
}

impl From<OwnerStateArg> for proto::OwnerState {
    fn from(value: OwnerStateArg) -> Self {
        match value {
            OwnerStateArg::Active => proto::OwnerState::Active,
            OwnerStateArg::Disabled => proto::OwnerState::Disabled,
        }
    }
}

/// `keygate owners update`: only the fields given are changed.
#[derive(Args, Debug)]
pub struct OwnersUpdateArgs {
    /// The owner's id.
    pub id: String,
    /// New display name.
    #[arg(long)]
    pub name: Option<String>,
    /// New plan.
    #[arg(long)]
    pub plan: Option<String>,
    /// New state.
    #[arg(long, value_enum)]
    pub state: Option<OwnerStateArg>,
    /// Metadata entry; the entries given replace all existing metadata.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// Remove all metadata.
    #[arg(long, conflicts_with = "meta")]
    pub clear_meta: bool,
}

/// What `keys create` and `keys import` both say about a new key.
#[derive(Args, Debug)]
pub struct NewKeyArgs {
    /// The owner's id.
    #[arg(long)]
    pub owner: String,
    /// A name for the key.
    #[arg(long)]
    pub name: String,
    /// Scope granted to the key; repeat for more.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// The key expires at this time (RFC 3339, UTC, e.g. 2027-01-31T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub expires_at: Option<String>,
    /// Network the key may be used from (e.g. 10.0.0.0/8); repeat for more.
    #[arg(long = "cidr", value_name = "CIDR")]
    pub cidrs: Vec<String>,
    /// Metadata entry; repeat for more.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// Plan for this key alone; the owner's when absent.
    #[arg(long)]
    pub plan: Option<String>,
}

/// `keygate keys create`.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("expiry").args(["expires_in_days", "expires_at"])))]
pub struct KeysCreateArgs {
    /// Owner, name, scopes, networks, metadata, plan, expiry time.
    #[command(flatten)]
    pub key: NewKeyArgs,
    /// The key expires this many whole days from now.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub expires_in_days: Option<u32>,
    /// Key profile; the configured default when absent.
    #[arg(long)]
    pub profile: Option<String>,
    /// Issue an `api-key` + `api-secret` pair instead of one string.
    #[arg(long)]
    pub pair: bool,
    /// Leave the key pending until `keys activate` is called with the printed code.
    #[arg(long)]
    pub require_activation: bool,
    /// Credits the key starts with.
    #[command(flatten)]
    pub credits: CreditArgs,
}

/// The states keys can be listed by.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStateArg {
    /// Usable keys.
    Active,
    /// Keys waiting for `keys activate`.
    #[value(name = "pending_activation", alias = "pending-activation")]
    PendingActivation,
    /// Disabled keys.
    Disabled,
    /// Revoked keys.
    Revoked,
}

impl From<KeyStateArg> for proto::KeyState {
    fn from(value: KeyStateArg) -> Self {
        match value {
            KeyStateArg::Active => proto::KeyState::Active,
            KeyStateArg::PendingActivation => proto::KeyState::PendingActivation,
            KeyStateArg::Disabled => proto::KeyState::Disabled,
            KeyStateArg::Revoked => proto::KeyState::Revoked,
        }
    }
}

/// `keygate keys list`.
#[derive(Args, Debug)]
pub struct KeysListArgs {
    /// The owner whose keys to list.
    #[arg(long)]
    pub owner: String,
    /// Only keys in this state.
    #[arg(long, value_enum)]
    pub state: Option<KeyStateArg>,
    /// Paging.
    #[command(flatten)]
    pub page: PageArgs,
}

/// `keygate keys update`: only the fields given are changed.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("expiry").args(["expires_at", "expires_in_days", "no_expiry"])))]
pub struct KeysUpdateArgs {
    /// The key's id.
    pub id: String,
    /// New name.
    #[arg(long)]
    pub name: Option<String>,
    /// Scope; the scopes given replace all existing ones.
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Remove all scopes.
    #[arg(long, conflicts_with = "scopes")]
    pub clear_scopes: bool,
    /// Network the key may be used from; the networks given replace all existing ones.
    #[arg(long = "cidr", value_name = "CIDR")]
    pub cidrs: Vec<String>,
    /// Remove all network restrictions.
    #[arg(long, conflicts_with = "cidrs")]
    pub clear_cidrs: bool,
    /// Metadata entry; the entries given replace all existing metadata.
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// Remove all metadata.
    #[arg(long, conflicts_with = "meta")]
    pub clear_meta: bool,
    /// New expiry time (RFC 3339, UTC, e.g. 2027-01-31T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub expires_at: Option<String>,
    /// New expiry, this many whole days from now.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u32).range(1..))]
    pub expires_in_days: Option<u32>,
    /// Make the key never expire.
    #[arg(long)]
    pub no_expiry: bool,
    /// Disable the key.
    #[arg(long, conflicts_with = "enable")]
    pub disable: bool,
    /// Enable a disabled key again.
    #[arg(long)]
    pub enable: bool,
    /// Grant new credits, replacing what is left.
    #[command(flatten)]
    pub credits: CreditArgs,
    /// Lift the key's credit limit.
    #[arg(long, conflicts_with = "credits")]
    pub unlimited: bool,
}

/// `keygate keys activate`.
#[derive(Args, Debug)]
pub struct KeysActivateArgs {
    /// The key's id.
    pub id: String,
    /// The activation code `keys create --require-activation` printed.
    #[arg(long)]
    pub code: String,
}

/// `keygate keys rotate`.
#[derive(Args, Debug)]
pub struct KeysRotateArgs {
    /// The key's id.
    pub id: String,
    /// How long the old secret keeps working, e.g. `24h` or `30m`; it stops at once when
    /// absent.
    #[arg(long, value_name = "DURATION")]
    pub grace: Option<String>,
}

/// `keygate keys import`. The key itself is read from the first line of standard input,
/// unless `--sha256` gives the digest another system kept of it.
#[derive(Args, Debug)]
pub struct KeysImportArgs {
    /// Owner, name, scopes, networks, metadata, plan, expiry time.
    #[command(flatten)]
    pub key: NewKeyArgs,
    /// Import from the digest another system kept instead of the key itself.
    #[command(flatten)]
    pub digest: DigestArgs,
}

/// How `keys import --sha256` describes a key known only by its SHA-256 digest.
#[derive(Args, Debug)]
pub struct DigestArgs {
    /// SHA-256 of the whole key text, as the old system stored it; the key is then not read
    /// from standard input.
    #[arg(long, value_name = "DIGEST", requires_all = ["digest_encoding", "length"])]
    pub sha256: Option<String>,
    /// How the digest is written.
    #[arg(long, value_enum, requires = "sha256")]
    pub digest_encoding: Option<DigestEncodingArg>,
    /// The key's leading fixed part (e.g. `sk_live_`), shown in listings.
    #[arg(long, requires = "sha256", default_value = "")]
    pub prefix: String,
    /// The key's length in characters, prefix included.
    #[arg(long, value_name = "CHARS", requires = "sha256")]
    pub length: Option<u32>,
    /// How many characters the key's random part is drawn from (16 hex, 62 letters and
    /// digits, 64 base64); 62 when absent.
    #[arg(long, value_name = "N", requires = "sha256")]
    pub alphabet_size: Option<u32>,
    /// Import a key with fewer than 128 random bits anyway (admin only): its digest can be
    /// brute-forced offline.
    #[arg(long, requires = "sha256")]
    pub allow_low_entropy: bool,
}

/// How a digest's text is written.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestEncodingArg {
    /// 64 hexadecimal digits, as `sha256sum` prints.
    Hex,
    /// Standard base64 of the 32 bytes, padded or not.
    Base64,
}

impl From<DigestEncodingArg> for proto::DigestEncoding {
    fn from(value: DigestEncodingArg) -> Self {
        match value {
            DigestEncodingArg::Hex => proto::DigestEncoding::Hex,
            DigestEncodingArg::Base64 => proto::DigestEncoding::Base64,
        }
    }
}

/// Parses one `--meta KEY=VALUE` item. The value may be empty and may contain `=`; the
/// key may not be empty.
pub fn parse_meta(item: &str) -> Result<(String, String), String> {
    match item.split_once('=') {
        None => Err(format!(
            "metadata item {} has no '=': expected KEY=VALUE",
            quote(item)
        )),
        Some(("", _)) => Err(format!(
            "metadata item {} has an empty key: expected KEY=VALUE",
            quote(item)
        )),
        Some((key, value)) => Ok((key.to_owned(), value.to_owned())),
    }
}

/// Runs the parsed command line and returns the process's exit code.
pub async fn dispatch(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => return crate::server::serve(args).await,
        Command::Owners(owners) => commands::owners(owners).await,
        Command::Plans(plans) => commands::plans(plans).await,
        Command::Keys(keys) => commands::keys(keys).await,
        Command::Admin(admin) => return admin::run(admin).await,
        Command::Config(ConfigCli {
            command: ConfigCommand::Check(args),
        }) => return check_config(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            err.exit_code()
        }
    }
}

/// `keygate config check`: the effective configuration on stdout, or what is wrong on
/// stderr.
fn check_config(args: &crate::config::ServeArgs) -> ExitCode {
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    let checked = args
        .load()
        .and_then(|config| crate::server::check_deployment(&config, &env).map(|()| config));
    match checked.and_then(|config| config.to_masked_yaml()) {
        Ok(yaml) => {
            print!("{yaml}");
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(crate::app::EXIT_USAGE)
        }
    }
}

/// keygate's entry point: parses the command line, starts the async runtime and runs the
/// command.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to stdout and exit 0; usage errors exit 2.
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };
    // The blocking pool runs embedded-store transactions (argon2 has its own threads); a cap
    // keeps the thread count bounded under a flood, queueing the rest.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().max_blocking_threads(32);
    // With the LIFO slot, a finished call wakes its HTTP/2 connection task ahead of the
    // other calls that arrived in the same read, so every answer is flushed in a write of
    // its own. Without it the connection runs after them and sends their answers together:
    // 0.2 instead of 1 `sendto` per Check under load, and 20 % less CPU per Check.
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keygate").chain(args.iter().copied()))
    }

    #[test]
    fn meta_items() {
        assert_eq!(parse_meta("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_meta("a="), Ok(("a".into(), String::new())));
        assert_eq!(parse_meta("a=b=c"), Ok(("a".into(), "b=c".into())));
        let err = parse_meta("tier").unwrap_err();
        assert!(err.contains("\"tier\""), "{err}");
        let err = parse_meta("=x").unwrap_err();
        assert!(err.contains("\"=x\"") && err.contains("empty key"), "{err}");
    }

    #[test]
    fn meta_errors_name_the_item_through_clap() {
        let err = parse(&[
            "owners",
            "create",
            "--external-id",
            "e",
            "--name",
            "n",
            "--meta",
            "oops",
        ])
        .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(err.to_string().contains("oops"), "{err}");
    }

    #[test]
    fn keys_create_parses() {
        let cli = parse(&[
            "keys",
            "create",
            "--owner",
            "own_1",
            "--name",
            "ci",
            "--scope",
            "read",
            "--scope",
            "write",
            "--expires-in-days",
            "30",
            "--cidr",
            "10.0.0.0/8",
            "--meta",
            "team=infra",
            "--pair",
            "--json",
            "--addr",
            "http://kg:1",
        ])
        .unwrap();
        let Command::Keys(KeysCli {
            client,
            command: KeysCommand::Create(args),
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert!(client.json);
        assert_eq!(client.addr, "http://kg:1");
        assert_eq!(args.key.scopes, ["read", "write"]);
        assert_eq!(args.expires_in_days, Some(30));
        assert_eq!(args.key.meta, [("team".to_owned(), "infra".to_owned())]);
        assert!(args.pair && !args.require_activation);
    }

    #[test]
    fn global_options_before_the_subcommand() {
        let cli = parse(&["owners", "--addr", "http://x:1", "--json", "get", "own_1"]).unwrap();
        let Command::Owners(OwnersCli { client, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(client.addr, "http://x:1");
        assert!(client.json);
    }

    #[test]
    fn expiry_options_are_exclusive() {
        assert!(
            parse(&[
                "keys",
                "create",
                "--owner",
                "o",
                "--name",
                "n",
                "--expires-in-days",
                "1",
                "--expires-at",
                "2030-01-01T00:00:00Z",
            ])
            .is_err()
        );
        assert!(
            parse(&[
                "keys",
                "update",
                "k",
                "--no-expiry",
                "--expires-in-days",
                "3"
            ])
            .is_err()
        );
        assert!(parse(&["keys", "update", "k", "--disable", "--enable"]).is_err());
        assert!(parse(&["keys", "update", "k", "--scope", "a", "--clear-scopes"]).is_err());
        assert!(
            parse(&[
                "keys",
                "create",
                "--owner",
                "o",
                "--name",
                "n",
                "--expires-in-days",
                "0"
            ])
            .is_err()
        );
    }

    #[test]
    fn key_states_use_proto_names() {
        let cli = parse(&[
            "keys",
            "list",
            "--owner",
            "o",
            "--state",
            "pending_activation",
        ])
        .unwrap();
        let Command::Keys(KeysCli {
            command: KeysCommand::List(args),
            ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.state, Some(KeyStateArg::PendingActivation));
        assert!(parse(&["keys", "list", "--owner", "o", "--state", "bogus"]).is_err());
        assert!(parse(&["owners", "update", "o", "--state", "revoked"]).is_err());
    }

    #[test]
    fn import_takes_no_secret_on_the_command_line() {
        let cli = parse(&["keys", "import", "--owner", "o", "--name", "legacy"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Keys(KeysCli {
                command: KeysCommand::Import(_),
                ..
            })
        ));
        for flag in ["--secret", "--key", "--api-key", "--value"] {
            assert!(
                parse(&[
                    "keys", "import", "--owner", "o", "--name", "n", flag, "sk_x"
                ])
                .is_err(),
                "{flag} accepted"
            );
        }
        assert!(
            parse(&[
                "keys",
                "import",
                "--owner",
                "o",
                "--name",
                "n",
                "sk_positional"
            ])
            .is_err()
        );

        // No argument of `keys import` takes a value other than the documented ones.
        let mut cmd = <Cli as clap::CommandFactory>::command();
        cmd.build();
        let import = cmd
            .find_subcommand("keys")
            .and_then(|keys| keys.find_subcommand("import"))
            .expect("keys import exists");
        let mut ids: Vec<&str> = import
            .get_arguments()
            .filter(|arg| arg.get_action().takes_values())
            .map(|arg| arg.get_id().as_str())
            .collect();
        ids.sort_unstable();
        assert_eq!(
            ids,
            [
                "addr",
                "alphabet_size",
                "ca_cert",
                "cert",
                "cidrs",
                "digest_encoding",
                "expires_at",
                "key",
                "length",
                "meta",
                "name",
                "owner",
                "plan",
                "prefix",
                "scopes",
                "sha256",
                "token"
            ]
        );
        assert!(import.get_positionals().next().is_none());
    }

    #[test]
    fn plan_options_parse() {
        let cli = parse(&[
            "plans",
            "create",
            "team",
            "--api-access",
            "false",
            "--max-active-keys",
            "5",
            "--window",
            "10/1s",
            "--window",
            "2000/1h per owner",
        ])
        .unwrap();
        let Command::Plans(PlansCli {
            command: PlansCommand::Create(args),
            ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(args.name, "team");
        assert!(!args.api_access);
        assert_eq!(args.max_active_keys, 5);
        assert_eq!(args.windows, ["10/1s", "2000/1h per owner"]);
        let defaults = parse(&["plans", "create", "basic"]).unwrap();
        let Command::Plans(PlansCli {
            command: PlansCommand::Create(args),
            ..
        }) = defaults.command
        else {
            panic!("wrong command");
        };
        assert!(args.api_access && args.max_active_keys == 0 && args.windows.is_empty());
        assert!(
            parse(&[
                "plans",
                "update",
                "t",
                "--window",
                "1/1s",
                "--clear-windows"
            ])
            .is_err()
        );
        assert!(parse(&["plans", "update", "t", "--api-access", "maybe"]).is_err());
        assert!(parse(&["plans", "delete"]).is_err());
    }

    #[test]
    fn token_is_never_in_debug_output() {
        let cli = parse(&["keys", "--token", "s3cr3t-admin", "get", "k"]).unwrap();
        let debug = format!("{cli:?}");
        assert!(!debug.contains("s3cr3t-admin"), "{debug}");
        let Command::Keys(KeysCli { client, .. }) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(
            client.token.as_ref().map(Token::expose),
            Some("s3cr3t-admin")
        );
    }

    #[test]
    fn serve_has_no_client_options() {
        assert!(parse(&["serve"]).is_ok());
        assert!(parse(&["serve", "--addr", "http://x:1"]).is_err());
    }
}
