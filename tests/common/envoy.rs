//! Envoy as a child process, running a shipped example (`examples/envoy/envoy.yaml`, the
//! gRPC ext_authz mode, or `examples/envoy/http-service.yaml`, forward-auth) with only its
//! ports replaced (and, for TLS to keygate, the README's `UpstreamTlsContext` snippet added
//! with its file names replaced): started on a free loopback port, its output kept for
//! assertions, killed when dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::proxy::{ProxyProcess, example, free_loopback_addr, replace_once};
use super::tools::venv_tool;

/// The most an access log line may take to appear: Envoy flushes stdout every 50 ms here.
const ACCESS_LOG_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause between two readiness checks.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The ports written in the example configurations: listener, keygate, HTTP upstream,
/// gRPC upstream (`envoy.yaml` only).
const EXAMPLE_PORTS: [u16; 4] = [10000, 9191, 8081, 8082];

/// Path of the gRPC example configuration, as shipped.
pub fn example_config() -> PathBuf {
    example("envoy/envoy.yaml")
}

/// Path of the forward-auth (`http_service`) example configuration, as shipped.
pub fn http_service_config() -> PathBuf {
    example("envoy/http-service.yaml")
}

/// Path of the example's README, which shows the `UpstreamTlsContext` for TLS to keygate.
fn example_readme() -> PathBuf {
    example("envoy/README.md")
}

/// The name the README's snippet expects in keygate's certificate: its `sni`, and the SAN
/// Envoy checks.
pub const KEYGATE_TLS_NAME: &str = "keygate.keygate.svc";

/// The files the README's TLS snippet names, as a test made them.
pub struct UpstreamTls<'a> {
    /// The CA that signed keygate's certificate.
    pub ca: &'a Path,
    /// Envoy's client certificate and key, for keygate with `tls.client_ca_file`; `None`
    /// leaves the snippet's `tls_certificates` block out, as the README says to.
    pub client: Option<(&'a Path, &'a Path)>,
}

/// The `keygate` cluster's `transport_socket` exactly as the example's README shows it
/// (its one yaml block under "TLS to keygate"), with its file names replaced by `tls`'s.
fn readme_transport_socket(tls: &UpstreamTls<'_>) -> String {
    let readme = std::fs::read_to_string(example_readme()).unwrap();
    let section = readme
        .split("## TLS to keygate\n")
        .nth(1)
        .expect("the README has a \"TLS to keygate\" section");
    let snippet = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|block| block.split("```").next())
        .expect("the TLS section has a yaml block");
    let path = |p: &Path| p.display().to_string();
    let snippet = replace_once(snippet, "/etc/envoy/keygate-ca.crt", &path(tls.ca));
    let client_block = "            tls_certificates:\n";
    match tls.client {
        Some((cert, key)) => {
            let snippet = replace_once(&snippet, "/etc/envoy/client.crt", &path(cert));
            replace_once(&snippet, "/etc/envoy/client.key", &path(key))
        }
        None => {
            // The block ends the snippet: everything before it is the TLS-only setup.
            let (before, _) = snippet
                .split_once(client_block)
                .expect("the snippet has a tls_certificates block");
            assert_eq!(snippet.matches(client_block).count(), 1);
            before.to_owned()
        }
    }
}

/// Checks the configuration at `config_path` with `envoy --mode validate`; the error is what
/// Envoy printed.
pub fn validate(config_path: &Path) -> Result<(), String> {
    let output = Command::new(venv_tool("envoy"))
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(config_path)
        .output()
        .expect("cannot run envoy");
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "envoy --mode validate {} failed ({}):\n{}{}",
            config_path.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `config` with its one `port_value: {from}` set to `to`; panics unless there is exactly one.
fn replace_port(config: &str, from: u16, to: u16) -> String {
    let pattern = regex::Regex::new(&format!(r"port_value: {from}\b")).unwrap();
    let found = pattern.find_iter(config).count();
    assert_eq!(found, 1, "the config must say `port_value: {from}` once");
    pattern
        .replace(config, format!("port_value: {to}").as_str())
        .into_owned()
}

/// `config` with the example's 250 ms for a Check call and for connecting to keygate
/// raised to 5 s. These tests judge decisions, not latency: on a CI machine busy starting
/// other Envoys and keygates, a first connection (a TLS handshake included) can take longer
/// than 250 ms, and the timeout would pass for a refusal (`UAEX`).
fn with_test_timeouts(config: &str) -> String {
    let config = replace_once(config, " timeout: 0.25s\n", " timeout: 5s\n");
    replace_once(&config, "connect_timeout: 0.25s\n", "connect_timeout: 5s\n")
}

/// The example configuration at `path` with its ports replaced by `targets` (listener,
/// keygate, HTTP upstream and, for `envoy.yaml`, gRPC upstream), all on 127.0.0.1.
fn example_with_ports(path: &Path, targets: &[SocketAddr]) -> String {
    let mut config = std::fs::read_to_string(path).unwrap();
    for (from, to) in EXAMPLE_PORTS.into_iter().zip(targets) {
        assert!(
            to.ip().is_loopback() && to.is_ipv4(),
            "the example config only reaches 127.0.0.1, not {to}"
        );
        config = replace_port(&config, from, to.port());
    }
    config
}

/// A running Envoy.
pub struct EnvoyProcess {
    proxy: ProxyProcess,
    /// Where clients send requests: the listener, on 127.0.0.1.
    pub listen_addr: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl EnvoyProcess {
    /// Starts Envoy with the example configuration, its clusters pointed at `keygate` (the
    /// ext_authz server), `http_upstream` and `grpc_upstream`, all on 127.0.0.1, and waits
    /// until its listener accepts connections.
    pub fn start(
        keygate: SocketAddr,
        http_upstream: SocketAddr,
        grpc_upstream: SocketAddr,
    ) -> EnvoyProcess {
        let listen_addr = free_loopback_addr();
        let config = example_with_ports(
            &example_config(),
            &[listen_addr, keygate, http_upstream, grpc_upstream],
        );
        Self::start_with_config(listen_addr, config)
    }

    /// Starts Envoy with the forward-auth example (`http_service` mode), asking `keygate`'s
    /// data plane over HTTP in front of `http_upstream`.
    pub fn start_http_service(keygate: SocketAddr, http_upstream: SocketAddr) -> EnvoyProcess {
        let listen_addr = free_loopback_addr();
        let config = example_with_ports(
            &http_service_config(),
            &[listen_addr, keygate, http_upstream],
        );
        Self::start_with_config(listen_addr, config)
    }

    /// Like [`EnvoyProcess::start`], with the `keygate` cluster speaking TLS to keygate as
    /// the example's README shows, with `tls`'s files.
    pub fn start_tls(
        keygate: SocketAddr,
        http_upstream: SocketAddr,
        grpc_upstream: SocketAddr,
        tls: &UpstreamTls<'_>,
    ) -> EnvoyProcess {
        let listen_addr = free_loopback_addr();
        let config = example_with_ports(
            &example_config(),
            &[listen_addr, keygate, http_upstream, grpc_upstream],
        );
        let endpoints = "      load_assignment:\n        cluster_name: keygate\n";
        let with_tls = readme_transport_socket(tls) + endpoints;
        let config = replace_once(&config, endpoints, &with_tls);
        Self::start_with_config(listen_addr, config)
    }

    /// Like [`EnvoyProcess::start`], with Envoy's OpenTelemetry tracer sending its spans
    /// over OTLP/gRPC to `otlp`: Envoy traces every request and passes the trace context
    /// on to keygate in the Check call's metadata.
    pub fn start_traced(
        keygate: SocketAddr,
        http_upstream: SocketAddr,
        grpc_upstream: SocketAddr,
        otlp: SocketAddr,
    ) -> EnvoyProcess {
        let listen_addr = free_loopback_addr();
        let config = example_with_ports(
            &example_config(),
            &[listen_addr, keygate, http_upstream, grpc_upstream],
        );
        let tracing = r#"                stat_prefix: ingress
                tracing:
                  provider:
                    name: envoy.tracers.opentelemetry
                    typed_config:
                      "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
                      grpc_service:
                        envoy_grpc: { cluster_name: otlp }
                      service_name: envoy
"#;
        let cluster = format!(
            r#"  clusters:
    - name: otlp
      type: STATIC
      connect_timeout: 1s
      typed_extension_protocol_options:
        envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
          "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
          explicit_http_config:
            http2_protocol_options: {{}}
      load_assignment:
        cluster_name: otlp
        endpoints:
          - lb_endpoints:
              - endpoint:
                  address:
                    socket_address: {{ address: 127.0.0.1, port_value: {} }}
"#,
            otlp.port()
        );
        let config = replace_once(&config, "                stat_prefix: ingress\n", tracing);
        let config = replace_once(&config, "  clusters:\n", &cluster);
        Self::start_with_config(listen_addr, config)
    }

    fn start_with_config(listen_addr: SocketAddr, config: String) -> EnvoyProcess {
        let config = with_test_timeouts(&config);
        // Envoy reads YAML only from a file named *.yaml.
        let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
        std::fs::write(file.path(), config).unwrap();
        if let Err(output) = validate(file.path()) {
            panic!("{output}");
        }

        let mut command = Command::new(venv_tool("envoy"));
        command
            .arg("-c")
            .arg(file.path())
            // No hot restart: no shared memory or domain socket, so Envoys in concurrent test
            // binaries cannot collide, and a killed one leaves nothing behind in /dev/shm.
            // The base id would keep them apart otherwise.
            .arg("--disable-hot-restart")
            .args(["--base-id", &listen_addr.port().to_string()])
            .args(["--log-level", "warn", "--concurrency", "1"])
            // Access log lines reach stdout within 50 ms instead of 10 s.
            .args(["--file-flush-interval-msec", "50"]);
        EnvoyProcess {
            proxy: ProxyProcess::start("envoy", command, listen_addr),
            listen_addr,
            _config: file,
        }
    }

    /// Everything Envoy printed so far, stdout (access log) and stderr (warnings) interleaved.
    pub fn log(&self) -> String {
        self.proxy.log()
    }

    /// The access log entries (one JSON object per request, see the example config), once
    /// there are at least `count`; panics with the log if they do not appear in time.
    pub fn access_log(&self, count: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + ACCESS_LOG_TIMEOUT;
        loop {
            let entries: Vec<serde_json::Value> = (self.proxy.lines().iter())
                .filter_map(|line| serde_json::from_str(line).ok())
                .filter(serde_json::Value::is_object)
                .collect();
            if entries.len() >= count {
                return entries;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} access log entries within {ACCESS_LOG_TIMEOUT:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Kills Envoy and waits for it.
    pub fn stop(self) {}
}
