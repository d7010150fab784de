//! The servers under load, each a child process that can be pinned to CPUs: keygate (this
//! build or `KEYGATE_BENCH_BINARY`), a no-op ext_authz server on the same stack (this bench
//! binary run again in its no-op mode), Envoy in front of either, and nginx in front of
//! keygate's forward-auth or of nothing.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::{
    Authorization, AuthorizationServer, CheckRequest, CheckResponse, HeaderValue,
    HeaderValueOption, HttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::rpc;
use keygate::proto::{self, key_manager_client::KeyManagerClient};

use crate::proxy::{
    ProxyProcess, example, free_loopback_addr, replace_once, start_nginx, with_addresses,
};
use crate::tools::system_tool;

/// The admin token every keygate under load is started with.
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789abcdef";

/// The environment variable that turns this bench binary into the no-op server.
pub const NOOP_MODE: &str = "KEYGATE_BENCH_NOOP_SERVER";

/// A server process, killed when dropped.
pub struct Running {
    child: Child,
    /// The data plane's (or the no-op server's) `http://` URL.
    pub data_plane: String,
    /// The management API's URL; `None` for the no-op server.
    pub management: Option<String>,
    /// Where keygate serves its metrics; `None` for the no-op server.
    metrics: Option<String>,
    /// The cgroup limiting its CPU, removed after it.
    cgroup: Option<PathBuf>,
}

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// keygate's counters so far, from its metrics; `None` for the no-op server, which
    /// allows every call.
    pub fn counters(&self) -> Option<Counters> {
        let addr = self.metrics.as_deref()?.trim_start_matches("http://");
        let mut page = String::new();
        let mut metrics = std::net::TcpStream::connect(addr).unwrap();
        write!(
            metrics,
            "GET /metrics HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
        )
        .unwrap();
        metrics.read_to_string(&mut page).unwrap();
        let counter = |name: &str| {
            page.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
                .map_or(0, |count| count.trim().parse().unwrap())
        };
        Some(Counters {
            allowed: counter(r#"keygate_decisions_total{api="check",code="OK"}"#),
            redis_calls: counter("keygate_rate_limit_redis_calls_total"),
            redis_fallbacks: counter("keygate_rate_limit_fallbacks_total"),
        })
    }
}

/// What keygate's metrics count.
#[derive(Debug, Clone, Copy)]
pub struct Counters {
    /// Check calls allowed.
    pub allowed: u64,
    /// Script calls of the Redis rate limiter.
    pub redis_calls: u64,
    /// Rate-limit checks its local stand-in decided, Redis not answering.
    pub redis_fallbacks: u64,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(group) = &self.cgroup {
            let _ = std::fs::remove_dir(group);
        }
    }
}

/// nginx (one process, pinned like the servers) on a free loopback port, running the shipped
/// `examples/nginx/nginx.conf`: asking forward-auth at `authz` (the server's `http://`
/// URL) before every request when `auth`, with `auth_request off` otherwise, and answering
/// the requests it lets through from a server block of its own in place of the example's
/// API.
pub fn nginx(authz: &str, auth: bool) -> ProxyProcess {
    let listen = free_loopback_addr();
    let api = free_loopback_addr();
    let authz: SocketAddr = authz.trim_start_matches("http://").parse().unwrap();
    let example = std::fs::read_to_string(example("nginx/nginx.conf")).unwrap();
    let mut config = with_addresses(&example, &[(8080, listen), (9191, authz), (8081, api)]);
    if !auth {
        config = replace_once(&config, "auth_request /_keygate;", "auth_request off;");
    }
    let end = config.rfind('}').expect("the example ends its http block");
    config.insert_str(
        end,
        &format!("    server {{\n        listen {api};\n        location / {{ return 200 \"ok\"; }}\n    }}\n"),
    );
    start_nginx(pinned(&system_tool("nginx")), &config, listen)
}

/// `program`, pinned to `KEYGATE_BENCH_SERVER_CPUS` when set (e.g. "0", with the bench
/// itself under `taskset -c 1`), so that server and load generator do not share a core.
fn pinned(program: &Path) -> Command {
    match std::env::var("KEYGATE_BENCH_SERVER_CPUS") {
        Ok(cpus) => {
            let mut taskset = Command::new("taskset");
            taskset.arg("-c").arg(cpus).arg(program);
            taskset
        }
        Err(_) => Command::new(program),
    }
}

/// Spawns `command`, applies `KEYGATE_BENCH_SERVER_CPU_SHARE`, and reads the listening
/// addresses it logs.
fn spawn(mut command: Command, management: bool) -> Running {
    let mut child = command
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("cannot start the server");
    let cgroup = std::env::var("KEYGATE_BENCH_SERVER_CPU_SHARE")
        .ok()
        .map(|share| {
            limit_cpu(
                child.id(),
                share.parse().expect("a share of one CPU, e.g. 0.25"),
            )
        });
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut address = |what: &str| loop {
        let line = lines.next().expect("the server exited").unwrap();
        if line.contains(what) {
            return format!("http://{}", line.split("addr=").nth(1).unwrap().trim());
        }
    };
    let management = management.then(|| address("management API listening"));
    let data_plane = address("data plane listening");
    let metrics = management.is_some().then(|| address("metrics listening"));
    std::thread::spawn(move || lines.for_each(drop));
    Running {
        child,
        data_plane,
        management,
        metrics,
        cgroup,
    }
}

/// Starts keygate with `config` and `env`, its data in `dir`.
pub fn keygate(dir: &Path, config: &str, env: &[(&str, &str)]) -> Running {
    let config_path = dir.join("keygate.toml");
    std::fs::write(&config_path, config).unwrap();
    let binary = std::env::var_os("KEYGATE_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_keygate")),
        PathBuf::from,
    );
    let mut command = pinned(&binary);
    command
        .args([
            "serve",
            "--management-addr",
            "127.0.0.1:0",
            "--data-plane-addr",
            "127.0.0.1:0",
            "--set",
            "listen.metrics=127.0.0.1:0",
        ])
        .arg("--config")
        .arg(&config_path)
        .arg("--data-dir")
        // A directory keygate creates itself, private as it requires.
        .arg(dir.join("data"))
        .env_clear()
        .env("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("KEYGATE_LOG", "error,keygate::server=info")
        .envs(env.iter().copied())
        .envs(std::env::vars().filter(|(name, _)| name.starts_with("KEYGATE_ADMISSION__")));
    spawn(command, true)
}

/// Starts the no-op ext_authz server: this bench binary in its no-op mode.
pub fn noop() -> Running {
    let mut command = pinned(&std::env::current_exe().unwrap());
    command.env_clear().env(NOOP_MODE, "1");
    spawn(command, false)
}

/// `message` as the admin sends it.
fn as_admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

/// Creates an owner and a key through keygate's management API and returns the key.
pub async fn create_key(management: &str) -> String {
    let mut manage = KeyManagerClient::connect(management.to_owned())
        .await
        .unwrap();
    let owner = manage
        .create_owner(as_admin(proto::CreateOwnerRequest {
            external_id: "bench".into(),
            display_name: "bench".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    manage
        .create_key(as_admin(proto::CreateKeyRequest {
            owner_id: owner.id,
            name: "bench".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .secret
}

/// The no-op server: answers every Check OK with one header, on the same tonic and
/// envoy-types as keygate, on the runtime keygate uses. Runs until killed.
pub fn serve_noop() {
    struct Noop;

    #[tonic::async_trait]
    impl Authorization for Noop {
        async fn check(
            &self,
            _request: tonic::Request<CheckRequest>,
        ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
            Ok(tonic::Response::new(CheckResponse {
                status: Some(rpc::Status::default()),
                http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![HeaderValueOption {
                        header: Some(HeaderValue {
                            key: "x-noop".into(),
                            value: "1".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
                ..Default::default()
            }))
        }
    }

    runtime().block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        eprintln!(
            "no-op data plane listening addr={}",
            listener.local_addr().unwrap()
        );
        // TCP_NODELAY, as keygate and gRPC servers generally set it.
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(Noop))
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
}

/// A runtime with keygate's settings (see `keygate::cli::main`), for the no-op server and
/// the generator alike: without the LIFO slot, the calls (or answers) made ready together
/// leave their connection in one write instead of one each.
pub fn runtime() -> tokio::runtime::Runtime {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    #[cfg(tokio_unstable)]
    builder.disable_lifo_slot();
    builder.build().unwrap()
}

/// Envoy (one worker) on a free loopback port, its ext_authz filter calling `authz` (the
/// server's `host:port`) and every authorized request answered by a direct response.
pub struct Envoy {
    child: Child,
    /// Where requests go.
    pub listen: SocketAddr,
    /// Envoy's access log: a line per request, `<status> <duration in ms>`.
    pub access_log: PathBuf,
    _config: tempfile::NamedTempFile,
}

impl Envoy {
    /// Starts Envoy, pinned like the servers, and waits until it listens. At most
    /// `max_requests` Check calls are in flight to `authz` (the cluster's circuit breaker);
    /// Envoy fails the rest at once.
    pub fn start(envoy: &Path, authz: &str, max_requests: u32, log_dir: &Path) -> Envoy {
        let listen = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let authz: SocketAddr = authz.trim_start_matches("http://").parse().unwrap();
        let access_log = log_dir.join("envoy-access.log");
        let config = ENVOY_CONFIG
            .replace("LISTEN_PORT", &listen.port().to_string())
            .replace("AUTHZ_PORT", &authz.port().to_string())
            .replace("MAX_REQUESTS", &max_requests.to_string())
            .replace("ACCESS_LOG", &access_log.display().to_string());
        let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(file.path(), config).unwrap();
        let mut command = pinned(envoy);
        let child = command
            .arg("-c")
            .arg(file.path())
            .arg("--disable-hot-restart")
            .args(["--base-id", &listen.port().to_string()])
            .args(["--log-level", "error", "--concurrency", "1"])
            // Access log lines reach the file within 50 ms.
            .args(["--file-flush-interval-msec", "50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start envoy");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(listen).is_err() {
            assert!(std::time::Instant::now() < deadline, "envoy did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Envoy {
            child,
            listen,
            access_log,
            _config: file,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Envoy's configuration for the bench: ext_authz over gRPC, then a direct response.
const ENVOY_CONFIG: &str = r#"
static_resources:
  listeners:
    - name: ingress
      address:
        socket_address: { address: 127.0.0.1, port_value: LISTEN_PORT }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: ingress
                access_log:
                  - name: envoy.access_loggers.file
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
                      path: ACCESS_LOG
                      log_format:
                        text_format_source:
                          inline_string: "%RESPONSE_CODE% %COMMON_DURATION(DS_RX_BEG:DS_TX_END:us)%\n"
                route_config:
                  virtual_hosts:
                    - name: api
                      domains: ["*"]
                      routes:
                        - match: { prefix: "/" }
                          direct_response: { status: 200, body: { inline_string: "ok" } }
                http_filters:
                  - name: envoy.filters.http.ext_authz
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
                      grpc_service:
                        envoy_grpc: { cluster_name: authz }
                        timeout: 0.25s
                      transport_api_version: V3
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
    - name: authz
      type: STATIC
      connect_timeout: 0.25s
      circuit_breakers:
        thresholds:
          - max_requests: MAX_REQUESTS
            max_pending_requests: MAX_REQUESTS
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {}
      load_assignment:
        cluster_name: authz
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: { address: 127.0.0.1, port_value: AUTHZ_PORT }
"#;

/// Puts process `pid` in a cgroup (v1 `cpu` controller) allowed `share` of one CPU in every
/// 10 ms, as a Kubernetes CPU limit would: a server slower than the load generator, so that
/// the generator can overload it. Needs a writable `/sys/fs/cgroup/cpu`. Returns the
/// cgroup.
fn limit_cpu(pid: u32, share: f64) -> PathBuf {
    let group = PathBuf::from(format!("/sys/fs/cgroup/cpu/keygate-bench-{pid}"));
    let write = |file: &str, value: String| {
        std::fs::write(group.join(file), value)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", group.join(file).display()))
    };
    std::fs::create_dir(&group).expect("cannot create a cpu cgroup (cgroup v1, writable)");
    write("cpu.cfs_period_us", "10000".into());
    write("cpu.cfs_quota_us", format!("{}", (10_000.0 * share) as u64));
    write("cgroup.procs", pid.to_string());
    group
}

/// CPU time (user + system) process `pid` has used so far. `/proc/<pid>/stat` counts it
/// in clock ticks, which Linux exposes to user space at 100 per second.
pub fn cpu_time(pid: u32) -> Duration {
    stat_ticks(pid, 11..13)
}

/// The CPU time (user + system) of the children this process has waited for.
pub fn children_cpu_time() -> Duration {
    stat_ticks(std::process::id(), 13..15)
}

/// The sum of the `/proc/<pid>/stat` clock-tick fields at `fields`, counted after the
/// parenthesised command name (utime and stime are the file's 14th and 15th fields, cutime
/// and cstime its 16th and 17th).
fn stat_ticks(pid: u32, fields: std::ops::Range<usize>) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let values: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = values[fields]
        .iter()
        .map(|v| v.parse::<u64>().unwrap())
        .sum();
    Duration::from_millis(ticks * 10)
}
