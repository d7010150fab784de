//! One function per client command: each checks its input, builds the request, calls the
//! KeyManager API and prints the answer.
//!
//! Input is checked before connecting, so mistakes on the command line are reported even
//! when the server is down.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use zeroize::Zeroizing;

use super::output;
use super::{
    ClientOpts, CreditArgs, DigestArgs, IdArg, KeysActivateArgs, KeysCli, KeysCommand,
    KeysCreateArgs, KeysImportArgs, KeysListArgs, KeysRotateArgs, KeysUpdateArgs, KeysUsageArgs,
    NewKeyArgs, OwnersCli, OwnersCommand, OwnersCreateArgs, OwnersUpdateArgs, PageArgs,
    PlanNameArg, PlansCli, PlansCommand, PlansCreateArgs, PlansUpdateArgs, Token,
};
use crate::calendar::{Cycle, Day};
use crate::error::quote;
use crate::model::{Cidrs, Credits, Metadata, Name, Refill, Scopes};
use crate::plan::{PlanConfig, Quota, RateScope, RateWindow};
use crate::proto;
use crate::proto::key_manager_client::KeyManagerClient;

/// Longest line `keys import` reads from standard input.
const MAX_IMPORTED_KEY_LEN: u64 = 64 * 1024;

/// How long connecting to the server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a client command failed.
#[derive(Debug)]
pub enum CliError {
    /// The command line is wrong; nothing was sent. Exit code 2.
    Usage(String),
    /// The server could not be reached. Exit code 1.
    Connect {
        /// The address as given.
        addr: String,
        /// What went wrong, with its causes.
        cause: String,
    },
    /// The server refused the call. Exit code 1.
    Rpc(tonic::Status),
    /// Reading input or writing output failed. Exit code 1.
    Io(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) => ExitCode::from(2),
            CliError::Connect { .. } | CliError::Rpc(_) | CliError::Io(_) => ExitCode::FAILURE,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Usage(message) | CliError::Io(message) => f.write_str(message),
            CliError::Connect { addr, cause } => {
                write!(f, "cannot reach keygate at {addr}: {cause}")
            }
            CliError::Rpc(status) if status.message().is_empty() => {
                write!(f, "{:?}", status.code())
            }
            CliError::Rpc(status) => write!(f, "{:?}: {}", status.code(), status.message()),
        }
    }
}

impl std::error::Error for CliError {}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Rpc(status)
    }
}

fn usage(message: impl Into<String>) -> CliError {
    CliError::Usage(message.into())
}

/// Adds `authorization: Bearer <token>` to every call when a token was given.
#[derive(Clone)]
pub struct AuthInterceptor {
    header: Option<AsciiMetadataValue>,
}

impl AuthInterceptor {
    /// An interceptor sending `token`, or nothing when there is none (or it is empty).
    pub fn new(token: Option<&Token>) -> Result<Self, CliError> {
        let header = match token.map(Token::expose) {
            None | Some("") => None,
            Some(token) => {
                let text = Zeroizing::new(format!("Bearer {token}"));
                let mut value = MetadataValue::try_from(text.as_str()).map_err(|_| {
                    usage("the token contains characters that cannot be sent in a header")
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(AuthInterceptor { header })
    }
}

impl Interceptor for AuthInterceptor {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// A KeyManager client that authenticates every call.
pub type Client = KeyManagerClient<InterceptedService<Channel, AuthInterceptor>>;

/// Connects to the server named by `opts.addr`.
pub async fn connect(opts: &ClientOpts) -> Result<Client, CliError> {
    let auth = AuthInterceptor::new(opts.token.as_ref())?;
    let tls = client_tls(opts)?;
    let uri = match (opts.addr.split_once("://"), &tls) {
        (Some(("http", _)), Some(_)) => {
            return Err(usage("--ca-cert needs an https:// address"));
        }
        (Some(("https", _)), None) => {
            return Err(usage(
                "an https:// address needs --ca-cert, the CA that signed the server's certificate",
            ));
        }
        (Some(_), _) => opts.addr.clone(),
        (None, Some(_)) => format!("https://{}", opts.addr),
        (None, None) => format!("http://{}", opts.addr),
    };
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|err| usage(format!("invalid --addr {}: {err}", quote(&opts.addr))))?
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(tls) = tls {
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|err| usage(format!("unusable TLS files: {}", error_chain(&err))))?;
    }
    let channel = endpoint.connect().await.map_err(|err| CliError::Connect {
        addr: opts.addr.clone(),
        cause: error_chain(&err),
    })?;
    Ok(KeyManagerClient::with_interceptor(channel, auth))
}

/// The client TLS settings `opts` ask for: the server's CA and, for mutual TLS, a client
/// certificate and key; `None` for plaintext.
fn client_tls(opts: &ClientOpts) -> Result<Option<ClientTlsConfig>, CliError> {
    let read = |flag: &str, path: &Path| {
        std::fs::read(path)
            .map_err(|e| usage(format!("cannot read {flag} {}: {e}", path.display())))
    };
    let Some(ca) = &opts.ca_cert else {
        return match opts.cert {
            Some(_) => Err(usage(
                "--cert needs --ca-cert: client certificates are sent over TLS",
            )),
            None => Ok(None),
        };
    };
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--ca-cert", ca)?));
    if let (Some(cert), Some(key)) = (&opts.cert, &opts.key) {
        tls = tls.identity(Identity::from_pem(
            read("--cert", cert)?,
            read("--key", key)?,
        ));
    }
    Ok(Some(tls))
}

/// `err` and its sources, joined by `: `, skipping repeats.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(err) = next {
        let text = err.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = err.source();
    }
    parts.join(": ")
}

/// Writes `text` and a newline to standard output.
fn print_out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|err| CliError::Io(format!("cannot write output: {err}")))
}

/// Prints one JSON value, pretty.
fn print_json(value: &serde_json::Value) -> Result<(), CliError> {
    print_out(&format!("{value:#}"))
}

/// Runs `keygate owners ...`.
pub async fn owners(cli: OwnersCli) -> Result<(), CliError> {
    let opts = &cli.client;
    match cli.command {
        OwnersCommand::Create(args) => owners_create(opts, args).await,
        OwnersCommand::Get(args) => owners_get(opts, args).await,
        OwnersCommand::List(args) => owners_list(opts, args).await,
        OwnersCommand::Update(args) => owners_update(opts, args).await,
    }
}

/// Runs `keygate plans ...`.
pub async fn plans(cli: PlansCli) -> Result<(), CliError> {
    let opts = &cli.client;
    match cli.command {
        PlansCommand::Create(args) => plans_create(opts, args).await,
        PlansCommand::Get(args) => plans_get(opts, args).await,
        PlansCommand::List => plans_list(opts).await,
        PlansCommand::Update(args) => plans_update(opts, args).await,
        PlansCommand::Delete(args) => plans_delete(opts, args).await,
    }
}

/// Runs `keygate keys ...`.
pub async fn keys(cli: KeysCli) -> Result<(), CliError> {
    let opts = &cli.client;
    match cli.command {
        KeysCommand::Create(args) => keys_create(opts, args).await,
        KeysCommand::Get(args) => keys_get(opts, args).await,
        KeysCommand::List(args) => keys_list(opts, args).await,
        KeysCommand::Update(args) => keys_update(opts, args).await,
        KeysCommand::Activate(args) => keys_activate(opts, args).await,
        KeysCommand::Revoke(args) => keys_revoke(opts, args).await,
        KeysCommand::Rotate(args) => keys_rotate(opts, args).await,
        KeysCommand::Delete(args) => keys_delete(opts, args).await,
        KeysCommand::Import(args) => keys_import(opts, args).await,
        KeysCommand::Usage(args) => keys_usage(opts, args).await,
    }
}

// ---- input checks ----------------------------------------------------------------------

/// `value`, or an error naming `what` when it is empty.
fn required(what: &str, value: String) -> Result<String, CliError> {
    if value.trim().is_empty() {
        Err(usage(format!("{what} must not be empty")))
    } else {
        Ok(value)
    }
}

/// A model validation error as a usage error: the CLI refuses exactly what the server
/// refuses, before connecting.
fn invalid(error: crate::error::Error) -> CliError {
    usage(error.to_string())
}

/// A name given with `flag`, checked by the server's rule ([`Name`]).
fn name(flag: &str, value: String) -> Result<String, CliError> {
    Name::parse(flag, &value)
        .map(Name::into_string)
        .map_err(invalid)
}

/// The `--meta` items as a map, checked by the server's rule ([`Metadata`]); a key given
/// twice is an error.
pub fn meta_map(items: Vec<(String, String)>) -> Result<HashMap<String, String>, CliError> {
    let mut map = HashMap::with_capacity(items.len());
    for (key, value) in items {
        if map.contains_key(&key) {
            return Err(usage(format!(
                "metadata key {} is given more than once",
                quote(&key)
            )));
        }
        map.insert(key, value);
    }
    Metadata::parse("--meta", &map).map_err(invalid)?;
    Ok(map)
}

/// Checks `--scope` values by the server's rule ([`Scopes`]).
fn check_scopes(scopes: Vec<String>) -> Result<Vec<String>, CliError> {
    Scopes::parse("--scope", &scopes)
        .map(Scopes::into_vec)
        .map_err(invalid)
}

/// Checks `--cidr` values by the server's rule ([`Cidrs`]): each an address range
/// (`10.0.0.0/8`) or one address. They are sent as given; the server normalises them.
fn check_cidrs(cidrs: Vec<String>) -> Result<Vec<String>, CliError> {
    Cidrs::parse("--cidr", &cidrs).map_err(invalid)?;
    Ok(cidrs)
}

/// Parses `--expires-at`.
fn parse_time(flag: &str, text: &str) -> Result<prost_types::Timestamp, CliError> {
    humantime::parse_rfc3339(text)
        .map(prost_types::Timestamp::from)
        .map_err(|err| {
            usage(format!(
                "invalid {flag} {}: {err}; expected RFC 3339 in UTC, e.g. 2027-01-31T00:00:00Z",
                quote(text)
            ))
        })
}

/// The time `days` whole days after `now`.
fn days_from(now: SystemTime, days: u32) -> Result<prost_types::Timestamp, CliError> {
    now.checked_add(Duration::from_secs(u64::from(days) * 86_400))
        .map(prost_types::Timestamp::from)
        .ok_or_else(|| usage(format!("--expires-in-days {days} is too far in the future")))
}

/// Parses `--grace`.
fn parse_grace(text: &str) -> Result<prost_types::Duration, CliError> {
    let duration = humantime::parse_duration(text).map_err(|err| {
        usage(format!(
            "invalid --grace {}: {err}; expected a duration like 30m or 24h",
            quote(text)
        ))
    })?;
    prost_types::Duration::try_from(duration)
        .map_err(|_| usage(format!("--grace {} is too long", quote(text))))
}

fn page(args: PageArgs) -> (u32, String) {
    (
        args.page_size.unwrap_or(0),
        args.page_token.unwrap_or_default(),
    )
}

// ---- owners ----------------------------------------------------------------------------

/// The CreateOwner request for `owners create`.
pub fn owner_create_request(args: OwnersCreateArgs) -> Result<proto::CreateOwnerRequest, CliError> {
    Ok(proto::CreateOwnerRequest {
        external_id: name("--external-id", args.external_id)?,
        display_name: name("--name", args.name)?,
        plan: args.plan.unwrap_or_default(),
        metadata: meta_map(args.meta)?,
    })
}

/// The UpdateOwner request for `owners update`: the mask names exactly the fields given.
pub fn owner_update_request(args: OwnersUpdateArgs) -> Result<proto::UpdateOwnerRequest, CliError> {
    let mut owner = proto::Owner {
        id: required("the owner id", args.id)?,
        ..Default::default()
    };
    let mut paths = Vec::new();
    if let Some(name) = args.name {
        owner.display_name = self::name("--name", name)?;
        paths.push("display_name");
    }
    if let Some(plan) = args.plan {
        owner.plan = plan;
        paths.push("plan");
    }
    if let Some(state) = args.state {
        owner.set_state(state.into());
        paths.push("state");
    }
    if args.clear_meta || !args.meta.is_empty() {
        owner.metadata = meta_map(args.meta)?;
        paths.push("metadata");
    }
    if paths.is_empty() {
        return Err(usage(
            "nothing to update: give --name, --plan, --state, --meta or --clear-meta",
        ));
    }
    Ok(proto::UpdateOwnerRequest {
        owner: Some(owner),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.into_iter().map(String::from).collect(),
        }),
    })
}

async fn owners_create(opts: &ClientOpts, args: OwnersCreateArgs) -> Result<(), CliError> {
    let request = owner_create_request(args)?;
    let owner = connect(opts)
        .await?
        .create_owner(request)
        .await?
        .into_inner();
    print_owners(opts, std::slice::from_ref(&owner))
}

async fn owners_get(opts: &ClientOpts, args: IdArg) -> Result<(), CliError> {
    let request = proto::GetOwnerRequest {
        id: required("the owner id", args.id)?,
    };
    let owner = connect(opts).await?.get_owner(request).await?.into_inner();
    print_owners(opts, std::slice::from_ref(&owner))
}

async fn owners_list(opts: &ClientOpts, args: PageArgs) -> Result<(), CliError> {
    let (page_size, page_token) = page(args);
    let request = proto::ListOwnersRequest {
        page_size,
        page_token,
    };
    let answer = connect(opts)
        .await?
        .list_owners(request)
        .await?
        .into_inner();
    if opts.json {
        print_json(&output::owners_list_json(&answer))
    } else {
        print_out(&output::owners_table(&answer.owners))?;
        print_next_page(&answer.next_page_token)
    }
}

async fn owners_update(opts: &ClientOpts, args: OwnersUpdateArgs) -> Result<(), CliError> {
    let request = owner_update_request(args)?;
    let owner = connect(opts)
        .await?
        .update_owner(request)
        .await?
        .into_inner();
    print_owners(opts, std::slice::from_ref(&owner))
}

/// Prints one owner (as a JSON object) or a table of owners.
fn print_owners(opts: &ClientOpts, owners: &[proto::Owner]) -> Result<(), CliError> {
    match owners {
        [owner] if opts.json => print_json(&output::owner_json(owner)),
        _ => print_out(&output::owners_table(owners)),
    }
}

fn print_next_page(token: &str) -> Result<(), CliError> {
    if token.is_empty() {
        Ok(())
    } else {
        print_out(&format!("next page: --page-token {token}"))
    }
}

// ---- plans -----------------------------------------------------------------------------

/// Parses one `--window`: `LIMIT/PERIOD` (counted per key), or `LIMIT/PERIOD per key` or
/// `LIMIT/PERIOD per owner`, as `plans list` prints windows.
pub fn parse_window(text: &str) -> Result<RateWindow, CliError> {
    let bad = |why: String| {
        usage(format!(
            "invalid --window {}: {why}; expected LIMIT/PERIOD, e.g. 10/1s or '2000/1h per owner'",
            quote(text)
        ))
    };
    let (window, per) = split_scope(text).map_err(bad)?;
    let (limit, period) = window.split_once('/').ok_or_else(|| bad("no '/'".into()))?;
    Ok(RateWindow {
        limit: limit
            .trim()
            .parse()
            .map_err(|_| bad(format!("{} is not a whole number", quote(limit.trim()))))?,
        period: humantime::parse_duration(period.trim()).map_err(|e| bad(e.to_string()))?,
        per,
    })
}

/// Splits a trailing ` per key` or ` per owner` off a window or quota; per key without one.
fn split_scope(text: &str) -> Result<(&str, RateScope), String> {
    match text.rsplit_once(" per ") {
        Some((limit, "key")) => Ok((limit, RateScope::Key)),
        Some((limit, "owner")) => Ok((limit, RateScope::Owner)),
        Some((_, other)) => Err(format!("{} is not key or owner", quote(other))),
        None => Ok((text, RateScope::Key)),
    }
}

/// Parses one `--quota`: `LIMIT/PERIOD[@ANCHOR]`, counted per key, or with ` per key` or
/// ` per owner`.
pub fn parse_quota(text: &str) -> Result<Quota, CliError> {
    let bad = |why: String| {
        usage(format!(
            "invalid --quota {}: {why}; expected LIMIT/PERIOD[@ANCHOR], e.g. 10000/month@15 or '500/week@friday per owner'",
            quote(text)
        ))
    };
    let (quota, per) = split_scope(text).map_err(bad)?;
    let (limit, cycle) = quota.split_once('/').ok_or_else(|| bad("no '/'".into()))?;
    let cycle = Cycle::parse(cycle).map_err(bad)?;
    Ok(Quota {
        limit: limit
            .trim()
            .parse()
            .map_err(|_| bad(format!("{} is not a whole number", quote(limit.trim()))))?,
        period: cycle.period,
        anchor: cycle.anchor,
        per,
    })
}

/// The credits `--credits` and `--refill` grant, as a request carries them.
pub fn credit_grant(args: &CreditArgs) -> Result<Option<proto::Credits>, CliError> {
    let Some(remaining) = args.credits else {
        return Ok(None);
    };
    let refill = match args.refill.as_deref() {
        None => None,
        Some(text) => {
            let bad = |why: String| {
                usage(format!(
                    "invalid --refill {}: {why}; expected AMOUNT/INTERVAL (e.g. 100/1h) or AMOUNT/PERIOD[@ANCHOR] (e.g. 1000/month@1)",
                    quote(text)
                ))
            };
            let (amount, every) = text.split_once('/').ok_or_else(|| bad("no '/'".into()))?;
            let amount: u64 = amount
                .trim()
                .parse()
                .map_err(|_| bad(format!("{} is not a whole number", quote(amount.trim()))))?;
            Some(match humantime::parse_duration(every.trim()) {
                Ok(interval) => Refill::Every { amount, interval },
                Err(_) => {
                    let cycle = Cycle::parse(every).map_err(bad)?;
                    Refill::Reset {
                        amount,
                        period: cycle.period,
                        anchor: cycle.anchor,
                    }
                }
            })
        }
    };
    let credits = Credits {
        remaining,
        refill,
        granted_at: 0,
    };
    credits.validate("credits").map_err(usage)?;
    let mut granted = proto::Credits::from(&credits);
    granted.grant_time = None;
    Ok(Some(granted))
}

/// `plan` as the server would take it, or why it would refuse it: the CLI refuses exactly
/// what the server refuses, before connecting.
fn checked_plan(plan: PlanConfig) -> Result<proto::Plan, CliError> {
    plan.validate("").map_err(|e| usage(e.to_string()))?;
    Ok((&plan).into())
}

/// The CreatePlan request for `plans create`.
pub fn plan_create_request(args: PlansCreateArgs) -> Result<proto::CreatePlanRequest, CliError> {
    let plan = checked_plan(PlanConfig {
        name: args.name,
        api_access: args.api_access,
        max_active_keys: args.max_active_keys,
        rate_windows: args
            .windows
            .iter()
            .map(|w| parse_window(w))
            .collect::<Result<_, _>>()?,
        quotas: (args.quotas.iter())
            .map(|q| parse_quota(q))
            .collect::<Result<_, _>>()?,
    })?;
    Ok(proto::CreatePlanRequest {
        name: plan.name,
        api_access: Some(plan.api_access),
        max_active_keys: plan.max_active_keys,
        rate_windows: plan.rate_windows,
        quotas: plan.quotas,
    })
}

/// The UpdatePlan request for `plans update`: the mask names exactly the fields given.
pub fn plan_update_request(args: PlansUpdateArgs) -> Result<proto::UpdatePlanRequest, CliError> {
    let mut plan = PlanConfig::unlimited(&required("the plan name", args.name)?);
    let mut paths = Vec::new();
    if let Some(api_access) = args.api_access {
        plan.api_access = api_access;
        paths.push("api_access");
    }
    if let Some(max) = args.max_active_keys {
        plan.max_active_keys = max;
        paths.push("max_active_keys");
    }
    if args.clear_windows || !args.windows.is_empty() {
        plan.rate_windows = (args.windows.iter())
            .map(|w| parse_window(w))
            .collect::<Result<_, _>>()?;
        paths.push("rate_windows");
    }
    if args.clear_quotas || !args.quotas.is_empty() {
        plan.quotas = (args.quotas.iter())
            .map(|q| parse_quota(q))
            .collect::<Result<_, _>>()?;
        paths.push("quotas");
    }
    if paths.is_empty() {
        return Err(usage(
            "nothing to update: give --api-access, --max-active-keys, --window, --quota, --clear-windows or --clear-quotas",
        ));
    }
    Ok(proto::UpdatePlanRequest {
        plan: Some(checked_plan(plan)?),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.into_iter().map(String::from).collect(),
        }),
    })
}

async fn plans_create(opts: &ClientOpts, args: PlansCreateArgs) -> Result<(), CliError> {
    let request = plan_create_request(args)?;
    let plan = connect(opts)
        .await?
        .create_plan(request)
        .await?
        .into_inner();
    print_plan(opts, &plan)
}

async fn plans_get(opts: &ClientOpts, args: PlanNameArg) -> Result<(), CliError> {
    let request = proto::GetPlanRequest {
        name: required("the plan name", args.name)?,
    };
    let plan = connect(opts).await?.get_plan(request).await?.into_inner();
    print_plan(opts, &plan)
}

async fn plans_update(opts: &ClientOpts, args: PlansUpdateArgs) -> Result<(), CliError> {
    let request = plan_update_request(args)?;
    let plan = connect(opts)
        .await?
        .update_plan(request)
        .await?
        .into_inner();
    print_plan(opts, &plan)
}

async fn plans_delete(opts: &ClientOpts, args: PlanNameArg) -> Result<(), CliError> {
    let name = required("the plan name", args.name)?;
    let request = proto::DeletePlanRequest { name: name.clone() };
    connect(opts).await?.delete_plan(request).await?;
    if opts.json {
        print_json(&serde_json::json!({ "name": name, "deleted": true }))
    } else {
        print_out(&format!("deleted plan {name}"))
    }
}

/// Prints one plan, as a JSON object or a one-row table.
fn print_plan(opts: &ClientOpts, plan: &proto::Plan) -> Result<(), CliError> {
    if opts.json {
        print_json(&output::plan_json(plan))
    } else {
        print_out(&output::plans_table(std::slice::from_ref(plan), ""))
    }
}

async fn plans_list(opts: &ClientOpts) -> Result<(), CliError> {
    let answer = connect(opts)
        .await?
        .list_plans(proto::ListPlansRequest {})
        .await?
        .into_inner();
    if opts.json {
        print_json(&output::plans_list_json(&answer))
    } else {
        print_out(&output::plans_table(&answer.plans, &answer.default_plan))
    }
}

// ---- keys ------------------------------------------------------------------------------

/// A new key's attributes from the command line, checked.
pub struct NewKey {
    owner_id: String,
    name: String,
    scopes: Vec<String>,
    expire_time: Option<prost_types::Timestamp>,
    allowed_cidrs: Vec<String>,
    metadata: HashMap<String, String>,
    plan: String,
}

impl NewKey {
    /// Checks what `keys create` and `keys import` share.
    pub fn check(args: NewKeyArgs) -> Result<Self, CliError> {
        Ok(NewKey {
            owner_id: required("--owner", args.owner)?,
            name: name("--name", args.name)?,
            scopes: check_scopes(args.scopes)?,
            expire_time: args
                .expires_at
                .as_deref()
                .map(|at| parse_time("--expires-at", at))
                .transpose()?,
            allowed_cidrs: check_cidrs(args.cidrs)?,
            metadata: meta_map(args.meta)?,
            plan: args.plan.unwrap_or_default(),
        })
    }
}

/// The CreateKey request for `keys create`.
pub fn key_create_request(args: KeysCreateArgs) -> Result<proto::CreateKeyRequest, CliError> {
    use proto::create_key_request::Expiry;
    let key = NewKey::check(args.key)?;
    let expiry = match (args.expires_in_days, key.expire_time) {
        (Some(days), _) => Some(Expiry::ExpireInDays(days)),
        (None, Some(at)) => Some(Expiry::ExpireTime(at)),
        (None, None) => None,
    };
    Ok(proto::CreateKeyRequest {
        owner_id: key.owner_id,
        name: key.name,
        scopes: key.scopes,
        expiry,
        allowed_cidrs: key.allowed_cidrs,
        metadata: key.metadata,
        profile: args.profile.unwrap_or_default(),
        pair: args.pair,
        require_activation: args.require_activation,
        plan: key.plan,
        credits: credit_grant(&args.credits)?,
    })
}

/// The UpdateKey request for `keys update`, with `--expires-in-days` counted from `now`:
/// the mask names exactly the fields given.
pub fn key_update_request(
    args: KeysUpdateArgs,
    now: SystemTime,
) -> Result<proto::UpdateKeyRequest, CliError> {
    let mut key = proto::Key {
        id: required("the key id", args.id)?,
        ..Default::default()
    };
    let mut paths = Vec::new();
    if let Some(name) = args.name {
        key.name = self::name("--name", name)?;
        paths.push("name");
    }
    if args.clear_scopes || !args.scopes.is_empty() {
        key.scopes = check_scopes(args.scopes)?;
        paths.push("scopes");
    }
    if args.clear_cidrs || !args.cidrs.is_empty() {
        key.allowed_cidrs = check_cidrs(args.cidrs)?;
        paths.push("allowed_cidrs");
    }
    if args.clear_meta || !args.meta.is_empty() {
        key.metadata = meta_map(args.meta)?;
        paths.push("metadata");
    }
    if let Some(at) = args.expires_at {
        key.expire_time = Some(parse_time("--expires-at", &at)?);
        paths.push("expire_time");
    } else if let Some(days) = args.expires_in_days {
        key.expire_time = Some(days_from(now, days)?);
        paths.push("expire_time");
    } else if args.no_expiry {
        key.expire_time = None;
        paths.push("expire_time");
    }
    let disabled = if args.disable || args.enable {
        paths.push("disabled");
        args.disable
    } else {
        false
    };
    if args.unlimited || args.credits.credits.is_some() {
        key.credits = credit_grant(&args.credits)?;
        paths.push("credits");
    }
    if paths.is_empty() {
        return Err(usage(
            "nothing to update: give --name, --scope, --cidr, --meta, an expiry, --disable, --enable, --credits or --unlimited (or a --clear-* flag)",
        ));
    }
    Ok(proto::UpdateKeyRequest {
        key: Some(key),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.into_iter().map(String::from).collect(),
        }),
        disabled,
    })
}

async fn keys_create(opts: &ClientOpts, args: KeysCreateArgs) -> Result<(), CliError> {
    let request = key_create_request(args)?;
    let answer = connect(opts).await?.create_key(request).await?.into_inner();
    print_created(opts, answer)
}

async fn keys_get(opts: &ClientOpts, args: IdArg) -> Result<(), CliError> {
    let request = proto::GetKeyRequest {
        id: required("the key id", args.id)?,
    };
    let key = connect(opts).await?.get_key(request).await?.into_inner();
    print_key(opts, &key)
}

async fn keys_list(opts: &ClientOpts, args: KeysListArgs) -> Result<(), CliError> {
    let (page_size, page_token) = page(args.page);
    let mut request = proto::ListKeysRequest {
        owner_id: required("--owner", args.owner)?,
        page_size,
        page_token,
        ..Default::default()
    };
    if let Some(state) = args.state {
        request.set_state(state.into());
    }
    let answer = connect(opts).await?.list_keys(request).await?.into_inner();
    if opts.json {
        print_json(&output::keys_list_json(&answer))
    } else {
        print_out(&output::keys_table(&answer.keys))?;
        print_next_page(&answer.next_page_token)
    }
}

async fn keys_usage(opts: &ClientOpts, args: KeysUsageArgs) -> Result<(), CliError> {
    let mut client = connect(opts).await?;
    // Without `--to`, the server's today ends the range: ask for its default range and then,
    // for another length, for the days before its last one.
    let end_date = match args.to {
        Some(to) => to,
        None if args.days == DEFAULT_USAGE_DAYS => String::new(),
        None => {
            let probe = usage_request(&args.id, &args.owner, String::new(), String::new());
            let answer = client.get_key_usage(probe).await?.into_inner();
            answer
                .days
                .last()
                .map(|d| d.date.clone())
                .unwrap_or_default()
        }
    };
    let start_date = if end_date.is_empty() {
        String::new()
    } else {
        let last = Day::parse(&end_date).ok_or_else(|| {
            CliError::Usage(format!(
                "--to must be a date written YYYY-MM-DD, not {end_date:?}"
            ))
        })?;
        Day(last.0 - args.days as i32 + 1).to_string()
    };
    let request = usage_request(&args.id, &args.owner, start_date, end_date);
    let answer = client.get_key_usage(request).await?.into_inner();
    if opts.json {
        print_json(&output::usage_json(&answer))
    } else {
        print_out(&output::usage_table(&answer))
    }
}

/// The 30 days the server reports when no range is given.
const DEFAULT_USAGE_DAYS: u32 = 30;

/// GetKeyUsage for a key or an owner.
fn usage_request(
    key: &Option<String>,
    owner: &Option<String>,
    start_date: String,
    end_date: String,
) -> proto::GetKeyUsageRequest {
    proto::GetKeyUsageRequest {
        key_id: key.clone().unwrap_or_default(),
        owner_id: owner.clone().unwrap_or_default(),
        start_date,
        end_date,
    }
}

async fn keys_update(opts: &ClientOpts, args: KeysUpdateArgs) -> Result<(), CliError> {
    let request = key_update_request(args, SystemTime::now())?;
    let key = connect(opts).await?.update_key(request).await?.into_inner();
    print_key(opts, &key)
}

async fn keys_activate(opts: &ClientOpts, args: KeysActivateArgs) -> Result<(), CliError> {
    let request = proto::ActivateKeyRequest {
        id: required("the key id", args.id)?,
        activation_code: required("--code", args.code)?,
    };
    let key = connect(opts)
        .await?
        .activate_key(request)
        .await?
        .into_inner();
    print_key(opts, &key)
}

async fn keys_revoke(opts: &ClientOpts, args: IdArg) -> Result<(), CliError> {
    let request = proto::RevokeKeyRequest {
        id: required("the key id", args.id)?,
    };
    let key = connect(opts).await?.revoke_key(request).await?.into_inner();
    print_key(opts, &key)
}

async fn keys_rotate(opts: &ClientOpts, args: KeysRotateArgs) -> Result<(), CliError> {
    let request = proto::RotateKeyRequest {
        id: required("the key id", args.id)?,
        grace: args.grace.as_deref().map(parse_grace).transpose()?,
    };
    let answer = connect(opts).await?.rotate_key(request).await?.into_inner();
    print_created(opts, answer)
}

async fn keys_delete(opts: &ClientOpts, args: IdArg) -> Result<(), CliError> {
    let id = required("the key id", args.id)?;
    let request = proto::DeleteKeyRequest { id: id.clone() };
    connect(opts).await?.delete_key(request).await?;
    if opts.json {
        print_json(&serde_json::json!({ "id": id, "deleted": true }))
    } else {
        print_out(&format!("deleted key {id}"))
    }
}

async fn keys_import(opts: &ClientOpts, args: KeysImportArgs) -> Result<(), CliError> {
    // Check the command line before waiting for standard input.
    let key = NewKey::check(args.key)?;
    let digest = imported_digest(args.digest);
    let secret = match digest {
        Some(_) => Zeroizing::new(String::new()),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprint!("paste the key to import, then press Enter: ");
            }
            read_imported_key(stdin.lock())?
        }
    };
    let request = proto::ImportKeyRequest {
        owner_id: key.owner_id,
        name: key.name,
        secret: secret.to_string(),
        digest,
        scopes: key.scopes,
        expire_time: key.expire_time,
        allowed_cidrs: key.allowed_cidrs,
        metadata: key.metadata,
        plan: key.plan,
        create_time: None,
    };
    drop(secret);
    let key = connect(opts).await?.import_key(request).await?.into_inner();
    print_key(opts, &key)
}

/// The digest `keys import --sha256` names, if it does; the server checks it.
fn imported_digest(args: DigestArgs) -> Option<proto::ImportedDigest> {
    let sha256 = args.sha256?;
    Some(proto::ImportedDigest {
        sha256,
        encoding: args
            .digest_encoding
            .map_or(proto::DigestEncoding::Unspecified, Into::into) as i32,
        prefix: args.prefix,
        length: args.length.unwrap_or_default(),
        alphabet_size: args.alphabet_size.unwrap_or_default(),
        allow_low_entropy: args.allow_low_entropy,
    })
}

/// Reads the key `keys import` adopts: the first line of `input`, without its line end.
/// Errors never contain the key.
pub fn read_imported_key(input: impl BufRead) -> Result<Zeroizing<String>, CliError> {
    let mut line = Zeroizing::new(String::new());
    input
        .take(MAX_IMPORTED_KEY_LEN)
        .read_line(&mut line)
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::InvalidData => {
                usage("the key on standard input is not valid UTF-8")
            }
            _ => CliError::Io(format!("cannot read the key from standard input: {err}")),
        })?;
    let len = line
        .strip_suffix('\n')
        .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
        .unwrap_or(&line)
        .len();
    line.truncate(len);
    if line.is_empty() {
        return Err(usage(
            "no key on standard input: pipe the existing key in, e.g. `keygate keys import ... < key.txt`",
        ));
    }
    if line.trim() != line.as_str() {
        return Err(usage(
            "the key on standard input begins or ends with white space",
        ));
    }
    Ok(line)
}

/// Prints one key, as a JSON object or a one-row table.
fn print_key(opts: &ClientOpts, key: &proto::Key) -> Result<(), CliError> {
    if opts.json {
        print_json(&output::key_json(key))
    } else {
        print_out(&output::keys_table(std::slice::from_ref(key)))
    }
}

/// Prints the answer of CreateKey or RotateKey: the key, then its secret, once, with a
/// warning on standard error.
fn print_created(opts: &ClientOpts, answer: proto::CreateKeyResponse) -> Result<(), CliError> {
    let answer = ZeroizingAnswer(answer);
    let text = Zeroizing::new(if opts.json {
        format!("{:#}", output::created_key_json(&answer.0))
    } else {
        let mut text = match &answer.0.key {
            Some(key) => output::keys_table(std::slice::from_ref(key)),
            None => String::new(),
        };
        for line in output::secret_lines(&answer.0) {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(&line);
        }
        text
    });
    print_out(&text)?;
    if output::has_secret(&answer.0) {
        eprintln!("{}", output::SECRET_WARNING);
    }
    Ok(())
}

/// Wipes the secrets of a CreateKey answer when it is dropped.
struct ZeroizingAnswer(proto::CreateKeyResponse);

impl Drop for ZeroizingAnswer {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.0.secret.zeroize();
        self.0.api_secret.zeroize();
        self.0.activation_code.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::calendar::{Anchor, Period, Weekday};
    use crate::cli::{Cli, Command};

    fn owners_update(args: &[&str]) -> Result<proto::UpdateOwnerRequest, CliError> {
        let argv = ["keygate", "owners", "update"]
            .into_iter()
            .chain(args.iter().copied());
        let Command::Owners(OwnersCli {
            command: OwnersCommand::Update(args),
            ..
        }) = Cli::try_parse_from(argv).expect("parses").command
        else {
            panic!("wrong command");
        };
        owner_update_request(args)
    }

    fn keys_update(args: &[&str]) -> Result<proto::UpdateKeyRequest, CliError> {
        let argv = ["keygate", "keys", "update"]
            .into_iter()
            .chain(args.iter().copied());
        let Command::Keys(KeysCli {
            command: KeysCommand::Update(args),
            ..
        }) = Cli::try_parse_from(argv).expect("parses").command
        else {
            panic!("wrong command");
        };
        key_update_request(
            args,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        )
    }

    fn paths(mask: Option<prost_types::FieldMask>) -> Vec<String> {
        mask.expect("mask is set").paths
    }

    #[test]
    fn owner_mask_names_the_flags_given() {
        let request = owners_update(&["own_1", "--name", "Acme"]).unwrap();
        assert_eq!(paths(request.update_mask), ["display_name"]);
        let owner = request.owner.unwrap();
        assert_eq!(
            (owner.id.as_str(), owner.display_name.as_str()),
            ("own_1", "Acme")
        );

        let request = owners_update(&["own_1", "--plan", "pro", "--state", "disabled"]).unwrap();
        assert_eq!(paths(request.update_mask), ["plan", "state"]);
        assert_eq!(request.owner.unwrap().state(), proto::OwnerState::Disabled);

        let request = owners_update(&["own_1", "--meta", "a=1", "--meta", "b=2"]).unwrap();
        assert_eq!(paths(request.update_mask), ["metadata"]);
        assert_eq!(request.owner.unwrap().metadata.len(), 2);

        let request = owners_update(&["own_1", "--clear-meta"]).unwrap();
        assert_eq!(paths(request.update_mask), ["metadata"]);
        assert!(request.owner.unwrap().metadata.is_empty());
    }

    #[test]
    fn owner_update_needs_a_flag() {
        let err = owners_update(&["own_1"]).unwrap_err();
        assert!(
            matches!(&err, CliError::Usage(m) if m.starts_with("nothing to update")),
            "{err}"
        );
        assert_eq!(err.exit_code(), ExitCode::from(2));
    }

    #[test]
    fn key_mask_names_the_flags_given() {
        let request = keys_update(&["k1", "--name", "ci", "--scope", "read"]).unwrap();
        assert_eq!(paths(request.update_mask), ["name", "scopes"]);
        let key = request.key.unwrap();
        assert_eq!(key.id, "k1");
        assert_eq!(key.scopes, ["read"]);

        let request =
            keys_update(&["k1", "--clear-scopes", "--clear-cidrs", "--clear-meta"]).unwrap();
        assert_eq!(
            paths(request.update_mask),
            ["scopes", "allowed_cidrs", "metadata"]
        );

        let request = keys_update(&["k1", "--cidr", "10.0.0.0/8", "--meta", "a=b"]).unwrap();
        assert_eq!(paths(request.update_mask), ["allowed_cidrs", "metadata"]);

        let request = keys_update(&["k1", "--no-expiry"]).unwrap();
        assert_eq!(paths(request.update_mask), ["expire_time"]);
        assert_eq!(request.key.unwrap().expire_time, None);

        let request = keys_update(&["k1", "--expires-in-days", "2"]).unwrap();
        assert_eq!(paths(request.update_mask), ["expire_time"]);
        let expire = request.key.unwrap().expire_time.unwrap();
        assert_eq!(expire.seconds, 1_000_000 + 2 * 86_400);

        let request = keys_update(&["k1", "--expires-at", "2030-01-01T00:00:00Z"]).unwrap();
        assert_eq!(
            request.key.unwrap().expire_time.unwrap().seconds,
            1_893_456_000
        );

        let request = keys_update(&["k1", "--disable"]).unwrap();
        assert_eq!(paths(request.update_mask), ["disabled"]);
        assert!(request.disabled);
        let request = keys_update(&["k1", "--enable"]).unwrap();
        assert_eq!(paths(request.update_mask), ["disabled"]);
        assert!(!request.disabled);
    }

    #[test]
    fn key_update_checks_input() {
        assert!(
            matches!(keys_update(&["k1"]), Err(CliError::Usage(m)) if m.starts_with("nothing to update"))
        );
        assert!(
            matches!(keys_update(&["k1", "--cidr", "10.0.0.0/33"]), Err(CliError::Usage(m)) if m.contains("10.0.0.0/33"))
        );
        assert!(
            matches!(keys_update(&["k1", "--expires-at", "tomorrow"]), Err(CliError::Usage(m)) if m.contains("tomorrow"))
        );
        assert!(
            matches!(keys_update(&["k1", "--meta", "a=1", "--meta", "a=2"]), Err(CliError::Usage(m)) if m.contains("\"a\""))
        );
        assert!(matches!(
            keys_update(&["k1", "--scope", ""]),
            Err(CliError::Usage(_))
        ));
    }

    #[test]
    fn values_are_refused_by_the_servers_rules() {
        for scope in [":x", "a\u{e9}", "read write"] {
            let refused = keys_update(&["k1", "--scope", scope]);
            assert!(
                matches!(&refused, Err(CliError::Usage(m)) if m.starts_with("--scope")),
                "{scope:?}: {refused:?}"
            );
        }
        let long_scope = "s".repeat(129);
        assert!(keys_update(&["k1", "--scope", &long_scope]).is_err());
        let long_name = "n".repeat(201);
        assert!(matches!(
            keys_update(&["k1", "--name", &long_name]),
            Err(CliError::Usage(m)) if m.starts_with("--name")
        ));
        let long_key = format!("{}=v", "k".repeat(129));
        assert!(matches!(
            keys_update(&["k1", "--meta", &long_key]),
            Err(CliError::Usage(m)) if m.starts_with("--meta")
        ));
        let request = keys_update(&["k1", "--name", "  ci  ", "--scope", "a", "--scope", "a"]);
        let key = request.unwrap().key.unwrap();
        assert_eq!(
            (key.name.as_str(), key.scopes.as_slice()),
            ("ci", &["a".to_owned()][..])
        );
    }

    fn plans_update(args: &[&str]) -> Result<proto::UpdatePlanRequest, CliError> {
        let argv = ["keygate", "plans", "update"]
            .into_iter()
            .chain(args.iter().copied());
        let Command::Plans(PlansCli {
            command: PlansCommand::Update(args),
            ..
        }) = Cli::try_parse_from(argv).expect("parses").command
        else {
            panic!("wrong command");
        };
        plan_update_request(args)
    }

    #[test]
    fn windows_read_as_plans_list_prints_them() {
        let window = parse_window("2000/1h per owner").unwrap();
        assert_eq!(
            (window.limit, window.period, window.per),
            (2000, Duration::from_secs(3600), RateScope::Owner)
        );
        let window = parse_window("10/1s").unwrap();
        assert_eq!((window.limit, window.per), (10, RateScope::Key));
        assert_eq!(
            parse_window("5/1h 30m per key").unwrap().period,
            Duration::from_secs(5400)
        );
        for bad in ["10", "ten/1s", "10/soon", "10/1s per team"] {
            let refused = parse_window(bad).unwrap_err();
            assert!(
                matches!(&refused, CliError::Usage(m) if m.contains(&format!("{bad:?}"))),
                "{bad}: {refused}"
            );
        }
    }

    #[test]
    fn quotas_and_refills_read_as_listings_print_them() {
        let quota = parse_quota("10000/month@15").unwrap();
        assert_eq!(
            (quota.limit, quota.period, quota.anchor, quota.per),
            (
                10_000,
                Period::Month,
                Some(Anchor::MonthDay(15)),
                RateScope::Key
            )
        );
        let quota = parse_quota("500/week@Friday per owner").unwrap();
        assert_eq!(quota.anchor, Some(Anchor::Weekday(Weekday::Friday)));
        assert_eq!(quota.per, RateScope::Owner);
        assert_eq!(parse_quota("3/day").unwrap().anchor, None);
        for bad in [
            "10",
            "x/day",
            "10/fortnight",
            "10/day@3",
            "10/month@32",
            "10/week@15",
            "10/month per team",
        ] {
            let refused = parse_quota(bad).unwrap_err();
            assert!(
                matches!(&refused, CliError::Usage(m) if m.contains(&format!("{bad:?}"))),
                "{bad}: {refused}"
            );
        }
        let credits = |refill: Option<&str>| {
            credit_grant(&CreditArgs {
                credits: Some(10),
                refill: refill.map(str::to_owned),
            })
        };
        let every = credits(Some("100/1h")).unwrap().unwrap();
        let refill = every.refill.unwrap();
        assert_eq!((every.remaining, refill.amount), (10, 100));
        assert_eq!(refill.interval.unwrap().seconds, 3600);
        let monthly = credits(Some("1000/month@1"))
            .unwrap()
            .unwrap()
            .refill
            .unwrap();
        assert_eq!(monthly.period, proto::CyclePeriod::Month as i32);
        assert_eq!((monthly.interval, monthly.anchor_day), (None, 1));
        assert!(credits(None).unwrap().unwrap().refill.is_none());
        for bad in ["0/1h", "100/0s", "100", "100/sometimes"] {
            assert!(credits(Some(bad)).is_err(), "{bad}");
        }
        assert_eq!(credit_grant(&CreditArgs::default()).unwrap(), None);
    }

    #[test]
    fn plan_mask_names_the_flags_given() {
        let request = plans_update(&["team", "--max-active-keys", "3"]).unwrap();
        assert_eq!(paths(request.update_mask), ["max_active_keys"]);
        let plan = request.plan.unwrap();
        assert_eq!((plan.name.as_str(), plan.max_active_keys), ("team", 3));
        let request = plans_update(&["team", "--api-access", "false", "--window", "7/1m"]).unwrap();
        assert_eq!(paths(request.update_mask), ["api_access", "rate_windows"]);
        let plan = request.plan.unwrap();
        assert!(!plan.api_access);
        assert_eq!(plan.rate_windows[0].limit, 7);
        let request = plans_update(&["team", "--clear-windows"]).unwrap();
        assert_eq!(paths(request.update_mask), ["rate_windows"]);
        assert!(request.plan.unwrap().rate_windows.is_empty());
        assert!(
            matches!(plans_update(&["team"]), Err(CliError::Usage(m)) if m.starts_with("nothing to update"))
        );
        // The server's plan rules, before connecting.
        let refused = plans_update(&["team", "--window", "0/1s"]).unwrap_err();
        assert!(
            matches!(&refused, CliError::Usage(m) if m.starts_with("rate_windows[0].limit")),
            "{refused}"
        );
        assert_eq!(refused.exit_code(), ExitCode::from(2));
    }

    #[test]
    fn grace_is_a_humantime_duration() {
        assert_eq!(parse_grace("24h").unwrap().seconds, 86_400);
        assert_eq!(parse_grace("1h 30m").unwrap().seconds, 5_400);
        assert!(matches!(parse_grace("soon"), Err(CliError::Usage(m)) if m.contains("soon")));
    }

    #[test]
    fn imported_key_is_the_first_line() {
        let key = read_imported_key(&b"sk_legacy_123\nsecond line\n"[..]).unwrap();
        assert_eq!(key.as_str(), "sk_legacy_123");
        let key = read_imported_key(&b"sk_legacy_123\r\n"[..]).unwrap();
        assert_eq!(key.as_str(), "sk_legacy_123");
        let key = read_imported_key(&b"sk_no_newline"[..]).unwrap();
        assert_eq!(key.as_str(), "sk_no_newline");
        for input in [&b""[..], b"\n", b"\r\n"] {
            assert!(
                matches!(read_imported_key(input), Err(CliError::Usage(m)) if m.starts_with("no key"))
            );
        }
        let err = read_imported_key(&b" sk_padded \n"[..]).unwrap_err();
        assert!(!err.to_string().contains("sk_padded"), "{err}");
    }

    #[test]
    fn rpc_errors_name_the_code() {
        let err = CliError::from(tonic::Status::not_found("key \"abc\" not found"));
        assert_eq!(err.to_string(), "NotFound: key \"abc\" not found");
        assert_eq!(err.exit_code(), ExitCode::FAILURE);
        let err = CliError::from(tonic::Status::permission_denied(""));
        assert_eq!(err.to_string(), "PermissionDenied");
    }

    #[test]
    fn create_request_expiry() {
        let argv = [
            "keygate",
            "keys",
            "create",
            "--owner",
            "o",
            "--name",
            "n",
            "--expires-in-days",
            "7",
        ];
        let Command::Keys(KeysCli {
            command: KeysCommand::Create(args),
            ..
        }) = Cli::try_parse_from(argv).unwrap().command
        else {
            panic!("wrong command");
        };
        let request = key_create_request(args).unwrap();
        assert_eq!(
            request.expiry,
            Some(proto::create_key_request::Expiry::ExpireInDays(7))
        );
    }

    #[test]
    fn bad_token_is_a_usage_error_without_the_token() {
        let token = Token::from("abc\ndef".to_owned());
        let err = AuthInterceptor::new(Some(&token)).err().expect("rejected");
        assert!(!err.to_string().contains("abc"));
        let mut auth = AuthInterceptor::new(Some(&Token::from("t0k".to_owned()))).unwrap();
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer t0k")
        );
    }
}
