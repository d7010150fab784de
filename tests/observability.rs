//! What operators see: spans exported over OTLP and joined to the caller's trace, the
//! Prometheus metrics, logs with no secret in them, health on both listeners, and the
//! drain on SIGTERM. Spans go to a real OTLP receiver; the server is the real binary
//! wherever its process matters.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use keygate::proto::{self, key_manager_client::KeyManagerClient};
use serde_json::Value;
use tonic::transport::Channel;

use common::authorize::authorize;
use common::check::{check_request, decision_code};
use common::envoy::EnvoyProcess;
use common::http::http_request;
use common::otlp::OtlpReceiver;
use common::process::{KeygateProcess, keygate_bin};
use common::tools::venv_tool;
use common::upstream::{GrpcUpstream, HttpUpstream};
use common::{ADMIN_TOKEN, admin, create_owner, issue_key};

const PEPPER: &str = "observability test pepper 0123";
/// How long a test waits for an exported span.
const EXPORT_WAIT: Duration = Duration::from_secs(20);

/// A caller's trace context: (traceparent, trace id, parent span id).
fn trace_context(trace: &str, span: &str) -> (String, String, String) {
    (
        format!("00-{trace}-{span}-01"),
        trace.to_owned(),
        span.to_owned(),
    )
}

/// A real keygate exporting its spans to a receiver of its own, a management client of
/// it, and an owner on the `pro` plan.
struct Exporting {
    receiver: OtlpReceiver,
    server: KeygateProcess,
    manage: KeyManagerClient<Channel>,
    owner: proto::Owner,
    /// The server's data directory, removed when dropped.
    _dir: tempfile::TempDir,
}

/// Starts an [`Exporting`] server sending spans with `protocol` (`grpc` or
/// `http/protobuf`), with `extra_env` on top (a variable given again there wins).
async fn exporting(protocol: &str, extra_env: &[(&str, &str)]) -> Exporting {
    let receiver = OtlpReceiver::start();
    let collector = match protocol {
        "grpc" => receiver.grpc_addr,
        _ => receiver.http_addr,
    };
    let endpoint = format!("http://{collector}");
    let mut env = vec![
        ("KEYGATE_PEPPER", PEPPER),
        ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", protocol),
        // Export batches every 100 ms rather than every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    env.extend_from_slice(extra_env);
    let dir = common::data_dir();
    let server = KeygateProcess::start(dir.path(), &env);
    let mut manage = KeyManagerClient::new(channel(server.management_addr).await);
    let owner = create_owner(&mut manage, "acme", "pro").await;
    Exporting {
        receiver,
        server,
        manage,
        owner,
        _dir: dir,
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Authorizes `secret` from a public address; returns whether it was allowed.
async fn allowed(data_plane: &Channel, secret: &str) -> bool {
    let request = proto::AuthorizeRequest {
        key: secret.to_owned(),
        client_address: "203.0.113.7".into(),
        ..Default::default()
    };
    authorize(data_plane, request).await.allowed
}

/// Checks `GET /v1/things` from a public address with `headers`; returns the decision code.
async fn check(data_plane: &Channel, headers: &[(&str, &str)]) -> String {
    let request = check_request("203.0.113.7", "GET", "/v1/things", headers, &[]);
    decision_code(&common::check::check(data_plane, request).await)
}

fn attribute<'a>(span: &'a Value, name: &str) -> &'a Value {
    &span["attributes"][name]
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_span_joins_the_callers_trace_and_carries_the_decision() {
    let Exporting {
        receiver,
        server,
        mut manage,
        owner,
        _dir,
    } = exporting("grpc", &[]).await;

    // A management call carrying trace context in its gRPC metadata.
    let (traceparent, create_trace, create_parent) =
        trace_context("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let mut create = admin(proto::CreateKeyRequest {
        owner_id: owner.id.clone(),
        name: "traced".into(),
        ..Default::default()
    });
    create
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let key = manage.create_key(create).await.unwrap().into_inner();
    let key_id = key.key.as_ref().unwrap().id.clone();

    // A Check whose HTTP request carries trace context, as Envoy forwards it.
    let data_plane = channel(server.data_plane_addr).await;
    let (traceparent, trace, parent) =
        trace_context("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let bearer = format!("Bearer {}", key.secret);
    let headers = [
        ("authorization", bearer.as_str()),
        ("traceparent", traceparent.as_str()),
    ];
    assert_eq!(check(&data_plane, &headers).await, "OK");
    let (traceparent, warm_trace, _) =
        trace_context("5bf92f3577b34da6a3ce929d0e0e4737", "10f067aa0ba902b8");
    let warm_headers = [
        ("authorization", bearer.as_str()),
        ("traceparent", traceparent.as_str()),
    ];
    assert_eq!(check(&data_plane, &warm_headers).await, "OK");

    let check_span = receiver.wait_for(EXPORT_WAIT, |s| {
        s["trace_id"] == trace.as_str() && s["name"] == "envoy.service.auth.v3.Authorization/Check"
    });
    assert_eq!(check_span["parent_span_id"], parent.as_str());
    assert_eq!(check_span["service_name"], "keygate");
    assert_eq!(check_span["kind"], 2, "a server span");
    assert_eq!(attribute(&check_span, "keygate.decision"), "OK");
    assert_eq!(attribute(&check_span, "keygate.key_id"), key_id.as_str());
    assert_eq!(
        attribute(&check_span, "keygate.owner_id"),
        owner.id.as_str()
    );
    assert_eq!(attribute(&check_span, "keygate.cache"), "miss");
    assert_eq!(attribute(&check_span, "keygate.rate_limit"), "allowed");
    assert_eq!(attribute(&check_span, "rpc.grpc.status_code"), 0);
    // The costly step inside, in the same trace, under the Check span's tree.
    let argon2 = receiver.wait_for(EXPORT_WAIT, |s| {
        s["trace_id"] == trace.as_str() && s["name"] == "argon2 verify"
    });
    assert_ne!(argon2["parent_span_id"], parent.as_str());

    let warm = receiver.wait_for(EXPORT_WAIT, |s| {
        s["trace_id"] == warm_trace.as_str()
            && s["name"] == "envoy.service.auth.v3.Authorization/Check"
    });
    assert_eq!(attribute(&warm, "keygate.cache"), "l1");
    assert!(
        !receiver
            .spans()
            .iter()
            .any(|s| s["trace_id"] == warm_trace.as_str() && s["name"] == "argon2 verify"),
        "a warm key runs no argon2"
    );

    let create_span = receiver.wait_for(EXPORT_WAIT, |s| {
        s["trace_id"] == create_trace.as_str() && s["name"] == "keygate.v1.KeyManager/CreateKey"
    });
    assert_eq!(create_span["parent_span_id"], create_parent.as_str());
    assert!(
        !receiver.raw().contains(&key.secret),
        "no span carries the credential"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_spans_are_exported_over_otlp_http_and_join_the_grpc_callers_trace() {
    let Exporting {
        receiver,
        server,
        mut manage,
        owner,
        _dir,
    } = exporting("http/protobuf", &[("OTEL_SERVICE_NAME", "edge-auth")]).await;
    let key = issue_key(&mut manage, &owner.id, "observed").await;

    let (traceparent, trace, parent) =
        trace_context("6bf92f3577b34da6a3ce929d0e0e4738", "20f067aa0ba902b9");
    let mut request = tonic::Request::new(proto::AuthorizeRequest {
        key: key.secret.clone(),
        method: "GET".into(),
        path: "/v1/things".into(),
        client_address: "203.0.113.7".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    let answer = authorize(&channel(server.data_plane_addr).await, request).await;
    assert!(answer.allowed);

    let span = receiver.wait_for(EXPORT_WAIT, |s| {
        s["trace_id"] == trace.as_str() && s["name"] == "keygate.v1.Authorizer/Authorize"
    });
    assert_eq!(span["parent_span_id"], parent.as_str());
    assert_eq!(span["service_name"], "edge-auth");
    assert_eq!(attribute(&span, "keygate.decision"), "OK");
    assert_eq!(attribute(&span, "keygate.cache"), "miss");
}

/// The samples of a Prometheus text exposition, by name and sorted labels.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort();
                (name, labels.join(","))
            }
            None => (series, String::new()),
        };
        samples.insert(format!("{name}{{{labels}}}"), value.parse().unwrap());
    }
    samples
}

async fn scrape(addr: SocketAddr) -> BTreeMap<String, f64> {
    let response = http_request(addr, "GET", "/metrics", &[]).await;
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.contains("text")),
        "{:?}",
        response.headers
    );
    samples(&response.body)
}

#[tokio::test]
async fn metrics_move_by_exactly_the_decisions_and_calls_made() {
    let server = common::start(Some(ADMIN_TOKEN)).await;
    let metrics_addr = server.server.metrics_addr();
    let before = scrape(metrics_addr).await;
    assert_eq!(
        before
            .keys()
            .find(|k| k.starts_with("keygate_build_info{"))
            .map(|k| k.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))),
        Some(true),
        "build info with the version"
    );

    let mut manage = server.client().await;
    let owner = create_owner(&mut manage, "acme", "pro").await;
    let key = issue_key(&mut manage, &owner.id, "observed").await;
    let missing = manage
        .get_key(admin(proto::GetKeyRequest {
            id: "no-such-key".into(),
        }))
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);

    let data_plane = server.data_plane().await;
    let bearer = format!("Bearer {}", key.secret);
    for _ in 0..3 {
        assert_eq!(
            check(&data_plane, &[("authorization", &bearer)]).await,
            "OK"
        );
    }
    for garbage in ["Bearer kg_live_nope", "Bearer something-else"] {
        let answer = check(&data_plane, &[("authorization", garbage)]).await;
        assert_eq!(answer, "INVALID_API_KEY");
    }
    assert_eq!(check(&data_plane, &[]).await, "MISSING_CREDENTIALS");
    assert!(allowed(&data_plane, &key.secret).await);

    let after = scrape(metrics_addr).await;
    let delta = |series: &str| {
        after.get(series).copied().unwrap_or(0.0) - before.get(series).copied().unwrap_or(0.0)
    };
    let expected = [
        ("keygate_decisions_total{api=\"check\",code=\"OK\"}", 3.0),
        (
            "keygate_decisions_total{api=\"check\",code=\"INVALID_API_KEY\"}",
            2.0,
        ),
        (
            "keygate_decisions_total{api=\"check\",code=\"MISSING_CREDENTIALS\"}",
            1.0,
        ),
        (
            "keygate_decisions_total{api=\"authorize\",code=\"OK\"}",
            1.0,
        ),
        (
            "keygate_decisions_total{api=\"authorize\",code=\"INVALID_API_KEY\"}",
            0.0,
        ),
        (
            "keygate_decision_duration_seconds_count{api=\"check\"}",
            6.0,
        ),
        (
            "keygate_decision_duration_seconds_count{api=\"authorize\"}",
            1.0,
        ),
        ("keygate_cache_misses_total{}", 1.0),
        ("keygate_cache_hits_total{level=\"l1\"}", 3.0),
        ("keygate_cache_hits_total{level=\"l2\"}", 0.0),
        ("keygate_malformed_credentials_total{}", 2.0),
        ("keygate_argon2_verifications_total{}", 1.0),
        (
            "keygate_rate_limit_decisions_total{outcome=\"allowed\"}",
            4.0,
        ),
        (
            "keygate_rate_limit_decisions_total{outcome=\"limited\"}",
            0.0,
        ),
        (
            "keygate_management_requests_total{code=\"OK\",method=\"CreateOwner\"}",
            1.0,
        ),
        (
            "keygate_management_requests_total{code=\"OK\",method=\"CreateKey\"}",
            1.0,
        ),
        (
            "keygate_management_requests_total{code=\"NOT_FOUND\",method=\"GetKey\"}",
            1.0,
        ),
        (
            "keygate_store_operation_duration_seconds_count{operation=\"insert_key\"}",
            1.0,
        ),
        (
            "keygate_store_operation_duration_seconds_count{operation=\"get_key\"}",
            2.0,
        ),
        ("keygate_store_errors_total{operation=\"get_key\"}", 0.0),
    ];
    for (series, moved) in expected {
        assert_eq!(delta(series), moved, "{series}");
    }
    assert_eq!(after["keygate_argon2_queue_depth{}"], 0.0);
    assert!(
        !after
            .keys()
            .any(|k| k.contains(&key.key.as_ref().unwrap().id)),
        "no key id as a label"
    );
    let other = http_request(metrics_addr, "GET", "/", &[]).await;
    assert_eq!(other.status, 404);
}

/// grpcurl's answer to a health check of `service` on `addr`.
fn grpcurl_health(addr: SocketAddr, service: &str) -> String {
    let output = Command::new(venv_tool("grpcurl"))
        .args(["-plaintext", "-d"])
        .arg(format!("{{\"service\":\"{service}\"}}"))
        .arg(addr.to_string())
        .arg("grpc.health.v1.Health/Check")
        .output()
        .expect("cannot run grpcurl");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    answer["status"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_reports_not_serving_drains_flushes_usage_and_exits_cleanly() {
    let dir = common::data_dir();
    let data = dir.path().join("data");
    let mut server = KeygateProcess::start(
        &data,
        &[
            ("KEYGATE_PEPPER", PEPPER),
            ("KEYGATE_ADMIN_TOKEN", ADMIN_TOKEN),
            ("KEYGATE_SHUTDOWN__DRAIN_GRACE", "4s"),
        ],
    );
    for addr in [server.management_addr, server.data_plane_addr] {
        for service in ["", "keygate.readiness"] {
            assert_eq!(
                grpcurl_health(addr, service),
                "SERVING",
                "{addr} {service:?}"
            );
        }
    }
    assert_eq!(
        grpcurl_health(
            server.data_plane_addr,
            "envoy.service.auth.v3.Authorization"
        ),
        "SERVING"
    );
    assert_eq!(
        grpcurl_health(server.management_addr, "keygate.v1.KeyManager"),
        "SERVING"
    );
    let mut manage = KeyManagerClient::new(channel(server.management_addr).await);
    let owner = create_owner(&mut manage, "acme", "pro").await;
    let key = issue_key(&mut manage, &owner.id, "observed").await;
    let data_plane = channel(server.data_plane_addr).await;
    let bearer = format!("Bearer {}", key.secret);
    assert_eq!(
        check(&data_plane, &[("authorization", &bearer)]).await,
        "OK"
    );

    server.terminate();
    // Health turns NOT_SERVING on both listeners at once, while calls are still answered.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while grpcurl_health(server.data_plane_addr, "") != "NOT_SERVING" {
        assert!(std::time::Instant::now() < deadline, "health never turned");
        tokio::task::yield_now().await;
    }
    assert_eq!(grpcurl_health(server.management_addr, ""), "NOT_SERVING");
    assert_eq!(
        grpcurl_health(
            server.data_plane_addr,
            "envoy.service.auth.v3.Authorization"
        ),
        "NOT_SERVING"
    );
    assert_eq!(
        check(&data_plane, &[("authorization", &bearer)]).await,
        "OK",
        "requests are still decided during the drain grace"
    );

    let status = server.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "exit {status:?}; log:\n{}", server.log());
    let log = server.log();
    assert!(log.contains("draining"), "{log}");
    assert!(log.contains("stopped"), "{log}");

    // The pending last_used_at was written before exiting.
    let exported = Command::new(keygate_bin())
        .args(["admin", "--data-dir"])
        .arg(&data)
        .arg("export")
        .env_clear()
        .output()
        .unwrap();
    assert!(exported.status.success());
    let key_id = key.key.as_ref().unwrap().id.as_str();
    let record: Value = String::from_utf8_lossy(&exported.stdout)
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|record| record.to_string().contains(key_id))
        .expect("the key in the export");
    assert!(
        record.to_string().contains("last_used_at\":1")
            || record.to_string().contains("last_used_at\":\"20"),
        "last_used_at was flushed: {record}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_any_log_line_span_or_metric() {
    let debug_logging = [
        ("KEYGATE_LOG", "debug"),
        ("KEYGATE_LOG_FORMAT", "json"),
        ("KEYGATE_DECISION_LOG", "all"),
    ];
    let Exporting {
        receiver,
        mut server,
        mut manage,
        owner,
        _dir,
    } = exporting("grpc", &debug_logging).await;
    let data_plane = channel(server.data_plane_addr).await;
    let issued = issue_key(&mut manage, &owner.id, "observed").await;
    let key_id = issued.key.as_ref().unwrap().id.clone();
    let bearer = |secret: &str| format!("Bearer {secret}");

    // The whole flow: decide, rotate, import, manage as the key itself, revoke.
    assert_eq!(
        check(&data_plane, &[("authorization", &bearer(&issued.secret))]).await,
        "OK"
    );
    assert_eq!(
        check(&data_plane, &[("x-api-key", &issued.secret)]).await,
        "OK"
    );
    assert!(allowed(&data_plane, &issued.secret).await);
    let rotated = manage
        .rotate_key(admin(proto::RotateKeyRequest {
            id: key_id.clone(),
            grace: Some(prost_types::Duration {
                seconds: 3600,
                nanos: 0,
            }),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        check(&data_plane, &[("authorization", &bearer(&rotated.secret))]).await,
        "OK"
    );
    let legacy = "legacy-plaintext-credential-7c1f9a2e5b";
    manage
        .import_key(admin(proto::ImportKeyRequest {
            owner_id: owner.id.clone(),
            name: "legacy".into(),
            secret: legacy.into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert_eq!(
        check(&data_plane, &[("authorization", &bearer(legacy))]).await,
        "OK"
    );
    let stranger = "kg_live_notakeyatall0000000000000000000000000000000000000000000";
    assert_eq!(
        check(&data_plane, &[("authorization", &bearer(stranger))]).await,
        "INVALID_API_KEY"
    );
    let wrong_admin = manage
        .list_plans(common::bearer(
            "wrong-admin-token-value-42",
            proto::ListPlansRequest {},
        ))
        .await;
    assert_eq!(
        wrong_admin.unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    manage
        .revoke_key(admin(proto::RevokeKeyRequest { id: key_id.clone() }))
        .await
        .unwrap();
    assert_eq!(
        check(&data_plane, &[("authorization", &bearer(&rotated.secret))]).await,
        "INVALID_API_KEY"
    );
    let metrics = http_request(server.metrics_addr, "GET", "/metrics", &[])
        .await
        .body;

    server.terminate();
    assert!(server.wait_exit(Duration::from_secs(30)).success());
    let log = server.log();
    let spans = receiver.raw();

    // What was captured is real: debug lines, JSON throughout, the decision log, spans.
    for line in log.lines() {
        let parsed: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(parsed["level"].is_string(), "{line}");
    }
    assert!(log.contains("\"level\":\"DEBUG\""), "debug logging was on");
    let decisions: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|line| line["target"] == "keygate::decision")
        .collect();
    assert_eq!(decisions.len(), 7, "one decision line per decision:\n{log}");
    assert!(decisions.iter().any(|d| d["key_id"] == key_id.as_str()
        && d["code"] == "OK"
        && d["request_id"] == common::check::REQUEST_ID));
    assert!(decisions.iter().any(|d| d["code"] == "INVALID_API_KEY"));
    assert!(spans.contains(&key_id), "spans were exported");

    let secrets = [
        issued.secret.as_str(),
        rotated.secret.as_str(),
        legacy,
        stranger,
        ADMIN_TOKEN,
        "wrong-admin-token-value-42",
        PEPPER,
    ];
    for (place, text) in [("log", &log), ("spans", &spans), ("metrics", &metrics)] {
        for secret in secrets {
            assert!(!text.contains(secret), "{place} contains {secret:?}");
            // Nor the part after a key's prefix, in case it was split.
            let tail = &secret[secret.len() / 2..];
            assert!(!text.contains(tail), "{place} contains part of {secret:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn behind_a_tracing_envoy_keygate_s_check_span_is_a_child_of_envoy_s() {
    let Exporting {
        receiver,
        server,
        mut manage,
        owner,
        _dir,
    } = exporting("grpc", &[]).await;
    let key = issue_key(&mut manage, &owner.id, "observed").await;
    let http = HttpUpstream::start().await;
    let grpc = GrpcUpstream::start().await;
    let (data_plane, http_addr, grpc_addr, otlp) = (
        server.data_plane_addr,
        http.addr,
        grpc.addr,
        receiver.grpc_addr,
    );
    let envoy = tokio::task::spawn_blocking(move || {
        EnvoyProcess::start_traced(data_plane, http_addr, grpc_addr, otlp)
    })
    .await
    .unwrap();

    let (traceparent, trace, client_span) =
        trace_context("7bf92f3577b34da6a3ce929d0e0e4739", "30f067aa0ba902ba");
    let bearer = format!("Bearer {}", key.secret);
    let response = http_request(
        envoy.listen_addr,
        "GET",
        "/v1/things",
        &[("authorization", &bearer), ("traceparent", &traceparent)],
    )
    .await;
    assert_eq!(response.status, 200, "{}", envoy.log());

    let check = receiver.wait_for(EXPORT_WAIT, |s| {
        s["trace_id"] == trace.as_str() && s["name"] == "envoy.service.auth.v3.Authorization/Check"
    });
    assert_eq!(attribute(&check, "keygate.decision"), "OK");
    // Envoy flushes its spans every few seconds; its span for the request is the client's
    // child, and keygate's Check hangs below Envoy's spans, not directly below the client.
    let envoy_span = receiver.wait_for(EXPORT_WAIT, |s| {
        s["trace_id"] == trace.as_str() && s["service_name"] == "envoy"
    });
    let envoy_spans: Vec<Value> = receiver
        .spans()
        .into_iter()
        .filter(|s| s["trace_id"] == trace.as_str() && s["service_name"] == "envoy")
        .collect();
    assert!(
        envoy_spans
            .iter()
            .any(|s| s["parent_span_id"] == client_span.as_str()),
        "Envoy continues the client's trace: {envoy_span}"
    );
    assert!(
        envoy_spans
            .iter()
            .any(|s| s["span_id"] == check["parent_span_id"]),
        "keygate's Check span is a child of one of Envoy's: {check}\n{envoy_spans:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sigterm_a_check_in_flight_is_answered_and_pending_spans_are_exported() {
    let slow_and_unbatched = [
        // Spans leave only when keygate stops: the exporter's timer would take ten minutes.
        ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        // An argon2 cost high enough that the first Check of a key is still verifying
        // when the signal arrives.
        ("KEYGATE_ARGON2__MEMORY_KIB", "32768"),
        ("KEYGATE_ARGON2__ITERATIONS", "8"),
        // On a busy machine that verification can take longer than the default wait;
        // the test is about shutdown, not about the cold path's deadline.
        ("KEYGATE_ARGON2__WAIT", "60s"),
    ];
    let Exporting {
        receiver,
        mut server,
        mut manage,
        owner,
        _dir,
    } = exporting("grpc", &slow_and_unbatched).await;
    let key = issue_key(&mut manage, &owner.id, "slow").await;
    let data_plane = channel(server.data_plane_addr).await;
    let bearer = format!("Bearer {}", key.secret);
    let (traceparent, trace, _) =
        trace_context("8bf92f3577b34da6a3ce929d0e0e473a", "40f067aa0ba902bb");
    let in_flight = {
        let data_plane = data_plane.clone();
        tokio::spawn(async move {
            let headers = [
                ("authorization", bearer.as_str()),
                ("traceparent", traceparent.as_str()),
            ];
            check(&data_plane, &headers).await
        })
    };
    // Signal once the Check's argon2 verification has started.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while scrape(server.metrics_addr)
        .await
        .get("keygate_argon2_verifications_total{}")
        .copied()
        .unwrap_or_default()
        < 1.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the Check never started verifying"
        );
        tokio::task::yield_now().await;
    }
    server.terminate();

    assert_eq!(
        in_flight.await.unwrap(),
        "OK",
        "the call in flight was answered"
    );
    assert!(server.wait_exit(Duration::from_secs(60)).success());
    assert!(
        receiver
            .spans()
            .iter()
            .any(|s| s["trace_id"] == trace.as_str()
                && s["name"] == "envoy.service.auth.v3.Authorization/Check"),
        "the Check's span was exported on the way out: {}",
        receiver.raw()
    );
}
