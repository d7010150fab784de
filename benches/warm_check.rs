//! keygate's own work per warm Check, without the network: the ext_authz service decodes a
//! Check, decides it and encodes its answer, on one thread, as it does behind HTTP/2. The
//! `check_load` bench measures whole calls against a no-op server; this one isolates the
//! part keygate adds, with far less noise, to weigh a change to the warm path.
//!
//! Scenarios, in alternating rounds:
//! * `floor`: decoding the Check and encoding a no-op server's answer (one header), the
//!   work any ext_authz server does;
//! * `no rate limit`: keygate, one warm key, a plan without windows;
//! * `local limiter`: the same with `check_load`'s two windows, too wide to deny anything.
//!
//! `cargo bench --bench warm_check [ROUNDS] [SCENARIO]` (a scenario's name runs it alone,
//! to profile it). Bounded: a fixed number of Checks per round.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use prost::bytes::{Bytes, BytesMut};
use tonic::Request;

use keygate::app::{App, Backends};
use keygate::clock::SystemClock;
use keygate::config::Config;
use keygate::key::hash::{Argon2Config, Pepper};
use keygate::manage::owners::NewOwner;
use keygate::manage::{Caller, NewKey};
use keygate::model::values::{Metadata, Name, Scopes};
use keygate::plan::{PlanConfig, RateWindow};
use keygate::secrets::Secrets;
use keygate::service::check_wire::{
    Check, CheckRequest, CheckResponse, HeaderValue, HeaderValueOption, OkHttpResponse, RpcStatus,
};
use keygate::service::ext_authz::ExtAuthzService;

// The allocator `serve` runs on.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/common/check.rs"]
mod check;
#[path = "common/windows.rs"]
mod windows;
use windows::wide_windows;

/// Checks per scenario and round.
const CHECKS: u32 = 200_000;
const DEFAULT_ROUNDS: usize = 7;

/// keygate in a temporary directory, its plan limiting with `windows`, and one of its keys.
struct Keygate {
    _dir: tempfile::TempDir,
    service: ExtAuthzService,
    check: Bytes,
}

impl Keygate {
    async fn start(windows: Vec<RateWindow>) -> Keygate {
        let dir = tempfile::tempdir().unwrap();
        // keygate refuses a data directory others can read.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let config = Config {
            data_dir: dir.path().to_owned(),
            argon2: Argon2Config {
                memory_kib: 256,
                iterations: 1,
                parallelism: 1,
                ..Argon2Config::default()
            },
            plans: vec![PlanConfig {
                rate_windows: windows,
                ..PlanConfig::unlimited("bench")
            }],
            default_plan: "bench".into(),
            ..Config::default()
        };
        let secrets = Secrets {
            pepper: Pepper::new(vec![0x5c; 32]).unwrap(),
            admin_token: None,
        };
        let backends = Backends::open(&config).await.unwrap();
        let app = App::new(&config, secrets, backends, Arc::new(SystemClock)).unwrap();
        app.store_configured_plans().await.unwrap();
        let management = &app.management;
        let owner = management
            .owners
            .create(
                &Caller::Admin,
                NewOwner {
                    external_id: Name::parse("external_id", "bench").unwrap(),
                    display_name: Name::parse("display_name", "bench").unwrap(),
                    plan: None,
                    metadata: Metadata::default(),
                },
            )
            .await
            .unwrap();
        let new = NewKey {
            owner_id: Some(owner.id),
            name: Name::parse("name", "bench").unwrap(),
            scopes: Scopes::default(),
            allowed_cidrs: Default::default(),
            metadata: Metadata::default(),
            expiry: None,
            plan: None,
            profile: None,
            pair: false,
            require_activation: false,
            credits: None,
        };
        let issued = management.keys.create(&Caller::Admin, new).await.unwrap();
        let bearer = format!("Bearer {}", issued.secret.text());
        let headers = [
            (":authority", "api.example.com"),
            ("user-agent", "load/1.0"),
            ("authorization", bearer.as_str()),
        ];
        let request = check::check_request("203.0.113.9", "GET", "/v1/sites?page=2", &headers, &[]);
        let keygate = Keygate {
            _dir: dir,
            service: ExtAuthzService::new(app.data_plane.clone()),
            check: Bytes::from(request.encode_to_vec()),
        };
        let answer = keygate.answer().await;
        assert_eq!(
            answer.status.unwrap_or_default().code,
            0,
            "the key is allowed"
        );
        keygate
    }

    /// One Check, decoded, decided and encoded; its answer decoded again.
    async fn answer(&self) -> CheckResponse {
        let mut out = BytesMut::new();
        self.check_into(&mut out).await;
        CheckResponse::decode(out.freeze()).unwrap()
    }

    async fn check_into(&self, out: &mut BytesMut) {
        let request = CheckRequest::decode(self.check.clone()).unwrap();
        let answer = self.service.check(Request::new(request)).await.unwrap();
        answer.into_inner().encode(out).unwrap();
    }
}

/// What a no-op server does with the same Check: decode it, answer OK with one header.
fn floor(check: &Bytes, out: &mut BytesMut) {
    let request = CheckRequest::decode(check.clone()).unwrap();
    std::hint::black_box(&request);
    let answer = CheckResponse {
        status: Some(RpcStatus::default()),
        ok_response: Some(OkHttpResponse {
            headers: vec![HeaderValueOption {
                header: Some(HeaderValue {
                    key: "x-noop".into(),
                    value: "1".into(),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    };
    answer.encode(out).unwrap();
}

/// Nanoseconds per Check of `CHECKS` runs of `one`.
async fn time<F: AsyncFnMut(&mut BytesMut)>(mut one: F) -> f64 {
    let mut out = BytesMut::with_capacity(4096);
    let started = Instant::now();
    for _ in 0..CHECKS {
        out.clear();
        one(&mut out).await;
    }
    started.elapsed().as_nanos() as f64 / f64::from(CHECKS)
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_ROUNDS);
    let only = args
        .iter()
        .find(|a| a.parse::<usize>().is_err() && !a.starts_with('-'));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let plain = Keygate::start(vec![]).await;
        let limited = Keygate::start(wide_windows()).await;
        let names = ["floor", "no rate limit", "local limiter"];
        let mut samples = vec![Vec::new(); names.len()];
        for round in 1..=rounds {
            for (i, name) in names.iter().enumerate() {
                if only.is_some_and(|only| only != name) {
                    continue;
                }
                let ns = match i {
                    0 => time(async |out| floor(&plain.check, out)).await,
                    1 => time(async |out| plain.check_into(out).await).await,
                    _ => time(async |out| limited.check_into(out).await).await,
                };
                samples[i].push(ns);
            }
            let line: Vec<String> = names
                .iter()
                .zip(&samples)
                .filter_map(|(name, s)| Some(format!("{name} {:.0} ns", s.last()?)))
                .collect();
            println!("warm_check: round {round}: {}", line.join(", "));
        }
        if only.is_some() {
            return;
        }
        let floor = median(&mut samples[0].clone());
        println!("\n| scenario | ns per Check (median) | above the floor |");
        println!("| --- | --- | --- |");
        for (name, s) in names.iter().zip(&mut samples) {
            let ns = median(s);
            println!("| {name} | {ns:.0} | {:+.0} |", ns - floor);
        }
    });
}
