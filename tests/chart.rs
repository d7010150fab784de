//! The Helm chart `helm/keygate`: it lints clean, every rendering is valid Kubernetes, and
//! what it renders (security, probes, stores, secrets, services, optional parts, notes) is
//! what keygate and its operators need.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value as Json, json};

use common::helm::{
    Rendering, chart_dir, ci_values, helm, kubernetes_validate, ports, refused, render, render_ci,
    selects,
};
use common::kubernetes::service_links;
use common::process::keygate_bin;

/// The values files under `helm/keygate/ci/` that the issue of each store mode asks for.
const CI_VALUES: [&str; 5] = [
    "all-on.yaml",
    "embedded.yaml",
    "redis-cluster.yaml",
    "redis.yaml",
    "tls.yaml",
];

/// The labels every object of the chart carries.
const STANDARD_LABELS: [&str; 6] = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
];

/// The seconds of a keygate duration like `5s`.
fn seconds(duration: &Json) -> u64 {
    let text = duration.as_str().unwrap();
    text.strip_suffix('s').unwrap().parse().unwrap()
}

/// Validates every object against Kubernetes' own schemas with `kubernetes-validate
/// --strict`. Custom resources have no schema there; each kind the chart renders is checked
/// here instead, and an unknown one fails.
fn validate_against_kubernetes(rendering: &Rendering, what: &str) {
    let (custom, builtin): (Vec<&Json>, Vec<&Json>) = rendering.objects.iter().partition(|o| {
        o["apiVersion"] == "monitoring.coreos.com/v1" || o["apiVersion"] == "cert-manager.io/v1"
    });
    for object in custom {
        match object["kind"].as_str() {
            Some("ServiceMonitor") => check_service_monitor(object, rendering),
            Some("Certificate") => check_certificate(object, rendering),
            other => panic!("{what}: no check for the custom resource {other:?}"),
        }
    }
    if let Err(report) = kubernetes_validate(&builtin) {
        panic!("{what}: kubernetes-validate refused the manifests:\n{report}");
    }
}

/// A ServiceMonitor's required fields, and that it scrapes keygate's metrics port.
fn check_service_monitor(monitor: &Json, rendering: &Rendering) {
    assert!(
        monitor["metadata"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    let selector = &monitor["spec"]["selector"]["matchLabels"];
    let services: Vec<_> = rendering
        .all("Service")
        .into_iter()
        .filter(|s| selects(selector, &s["metadata"]["labels"]))
        .collect();
    assert_eq!(
        services.len(),
        1,
        "the ServiceMonitor must select one Service"
    );
    let service_ports = ports(&services[0]["spec"]["ports"], "port");
    let endpoints = monitor["spec"]["endpoints"].as_array().unwrap();
    assert!(!endpoints.is_empty());
    for endpoint in endpoints {
        let port = endpoint["port"].as_str().unwrap();
        assert_eq!(service_ports.get(port), Some(&9090), "{endpoint}");
        assert_eq!(endpoint["path"], "/metrics");
    }
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"],
        json!([services[0]["metadata"]["namespace"]])
    );
}

/// A Certificate's required fields, and that it names every Service keygate serves TLS
/// on and fills the Secret the pod mounts.
fn check_certificate(certificate: &Json, rendering: &Rendering) {
    let spec = &certificate["spec"];
    assert!(
        spec["issuerRef"]["name"]
            .as_str()
            .is_some_and(|n| !n.is_empty())
    );
    let dns_names: Vec<&str> = spec["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    for service in rendering.all("Service") {
        let name = service["metadata"]["name"].as_str().unwrap();
        let namespace = service["metadata"]["namespace"].as_str().unwrap();
        if name.ends_with("-redis") {
            continue;
        }
        assert!(
            dns_names.contains(&format!("{name}.{namespace}.svc").as_str()),
            "{name} is not in {dns_names:?}"
        );
    }
    let mounted = rendering.volume_at("/etc/keygate/tls");
    assert_eq!(mounted["secret"]["secretName"], spec["secretName"]);
}

/// Every object carries the standard labels, and so do the pods the workloads make.
fn check_labels(rendering: &Rendering, what: &str) {
    for object in &rendering.objects {
        let mut label_sets = vec![&object["metadata"]["labels"]];
        if let Some(template) = object["spec"].get("template") {
            label_sets.push(&template["metadata"]["labels"]);
        }
        for labels in label_sets {
            for label in STANDARD_LABELS {
                assert!(
                    labels[label].as_str().is_some_and(|v| !v.is_empty()),
                    "{what}: {} {} lacks {label}",
                    object["kind"],
                    object["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn the_chart_lints_clean_with_defaults_and_every_ci_values_file() {
    let mut files: Vec<Option<PathBuf>> = vec![None];
    files.extend(CI_VALUES.iter().map(|name| Some(ci_values(name))));
    for file in files {
        let given: Vec<&Path> = file.iter().map(PathBuf::as_path).collect();
        let report = helm("lint", &given, &[]).unwrap();
        assert_eq!(report["total_charts_linted"], 1, "{report}");
        assert_eq!(report["errors"], json!([]), "{file:?}: {report}");
        // Severity 2 is a warning, 3 an error; 1 (information) is advice.
        let problems: Vec<_> = report["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["severity"].as_u64() >= Some(2))
            .collect();
        assert!(problems.is_empty(), "{file:?}: {problems:?}");
    }
}

#[test]
fn every_rendering_is_valid_kubernetes_with_the_standard_labels() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(chart_dir().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = CI_VALUES.iter().map(|s| s.to_string()).collect();
    assert_eq!(on_disk, expected, "every ci values file is rendered here");

    let defaults = render(&[], &[]);
    validate_against_kubernetes(&defaults, "defaults");
    check_labels(&defaults, "defaults");
    for name in CI_VALUES {
        let rendering = render_ci(name);
        validate_against_kubernetes(&rendering, name);
        check_labels(&rendering, name);
    }
}

#[test]
fn the_validator_is_strict() {
    let rendering = render(&[], &[]);
    let mut deployment = rendering.deployment().clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = json!(true);
    let report = kubernetes_validate(&[&deployment]).unwrap_err();
    assert!(report.contains("readOnlyRootFileSystem"), "{report}");
    // A kind it has no schema for is not taken as checked.
    let unknown =
        json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}});
    let report = kubernetes_validate(&[&unknown]).unwrap_err();
    assert!(report.contains("WARN"), "{report}");
}

#[test]
fn the_pod_is_locked_down_and_probed_over_grpc() {
    for rendering in [render(&[], &[]), render_ci("all-on.yaml")] {
        let pod = &rendering.pod()["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_ne!(pod["securityContext"]["runAsUser"], 0);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["enableServiceLinks"], false);

        let container = rendering.container();
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["runAsNonRoot"], true);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
        let secrets = rendering.volume_at("/etc/keygate/secrets");
        assert_eq!(secrets["secret"]["defaultMode"], 0o440);
        assert!(container["resources"]["requests"]["cpu"].is_string());
        assert!(container["resources"]["requests"]["memory"].is_string());

        assert_eq!(
            rendering.container_ports(),
            BTreeMap::from([
                ("grpc-authz".to_owned(), 9191),
                ("grpc-admin".to_owned(), 9192),
                ("http-metrics".to_owned(), 9090),
            ])
        );
        // Liveness and start-up ask for keygate as a whole, readiness whether its store
        // answers; all on the data plane's gRPC health service.
        for (probe, service) in [
            ("startupProbe", ""),
            ("livenessProbe", ""),
            ("readinessProbe", "keygate.readiness"),
        ] {
            assert_eq!(
                container[probe]["grpc"],
                json!({"port": 9191, "service": service}),
                "{probe}"
            );
        }

        // The pod outlives keygate's drain grace, with room to finish calls afterwards.
        let config = rendering.keygate_config();
        let grace = seconds(&config["shutdown"]["drain_grace"]);
        let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            termination >= grace + 10,
            "{termination} s vs drain {grace} s"
        );
    }
    let all_on = render_ci("all-on.yaml");
    assert_eq!(
        seconds(&all_on.keygate_config()["shutdown"]["drain_grace"]),
        10
    );
}

#[test]
fn with_tls_keygate_reads_the_mounted_certificate_and_probes_use_the_plaintext_health_port() {
    let tls = render_ci("tls.yaml");
    let config = tls.keygate_config();
    assert_eq!(
        config["tls"],
        json!({
            "cert_file": "/etc/keygate/tls/tls.crt",
            "key_file": "/etc/keygate/tls/tls.key",
            "client_ca_file": "/etc/keygate/tls/ca.crt",
        })
    );
    assert_eq!(config["listen"]["health"], "0.0.0.0:9193");
    assert_eq!(tls.container_ports()["grpc-health"], 9193);
    let container = tls.container();
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        assert_eq!(container[probe]["grpc"]["port"], 9193, "{probe}");
    }
    let mount = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == "/etc/keygate/tls")
        .unwrap();
    assert!(
        mount.get("subPath").is_none(),
        "renewals must reach the files"
    );

    let existing = render(
        &[],
        &[json!({"tls": {"enabled": true, "existingSecret": "edge-tls"}})],
    );
    assert!(existing.all("Certificate").is_empty());
    assert_eq!(
        existing.volume_at("/etc/keygate/tls")["secret"]["secretName"],
        "edge-tls"
    );
    assert!(
        existing.keygate_config()["tls"]
            .get("client_ca_file")
            .is_none()
    );

    let neither = refused(json!({"tls": {"enabled": true}}));
    assert!(neither.contains("tls.existingSecret"), "{neither}");
    let no_issuer = refused(json!({"tls": {"enabled": true, "certManager": {"enabled": true}}}));
    assert!(no_issuer.contains("issuerRef.name"), "{no_issuer}");
}

#[test]
fn a_config_change_rolls_the_pods() {
    let checksum = |rendering: &Rendering| {
        rendering.pod()["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let before = checksum(&render(&[], &[]));
    let plans = json!({"config": {"plans": [{"name": "default", "max_active_keys": 5}]}});
    assert_ne!(checksum(&render(&[], &[plans])), before);
    let drain = json!({"shutdown": {"drainGraceSeconds": 8}});
    assert_ne!(checksum(&render(&[], &[drain])), before);
    let unrelated = json!({"service": {"annotations": {"example.com/a": "b"}}});
    assert_eq!(checksum(&render(&[], &[unrelated])), before);
}

#[test]
fn values_config_reaches_keygate_with_the_fields_the_pod_depends_on() {
    let embedded = render_ci("embedded.yaml");
    let config = embedded.keygate_config();
    let values: Json =
        serde_yaml_ng::from_str(&std::fs::read_to_string(ci_values("embedded.yaml")).unwrap())
            .unwrap();
    for field in ["plans", "routes", "profiles", "errors", "default_profile"] {
        assert_eq!(config[field], values["config"][field], "{field}");
    }
    assert_eq!(config["store"], "embedded");

    // The config file, the data directory and the listeners are where the pod has them.
    let args = embedded.container()["args"].as_array().unwrap();
    let config_path = args[args.iter().position(|a| a == "--config").unwrap() + 1]
        .as_str()
        .unwrap();
    assert!(
        config_path.ends_with(".yaml"),
        "keygate reads YAML by the extension"
    );
    let config_volume = embedded.volume_at(config_path);
    assert_eq!(config_volume["configMap"]["name"], "keygate");
    let data_dir = config["data_dir"].as_str().unwrap();
    assert!(embedded.volume_at(data_dir)["persistentVolumeClaim"].is_object());
    let ports = embedded.container_ports();
    for (listener, port) in [
        ("data_plane", "grpc-authz"),
        ("management", "grpc-admin"),
        ("metrics", "http-metrics"),
    ] {
        let addr = config["listen"][listener].as_str().unwrap();
        assert_eq!(addr, format!("0.0.0.0:{}", ports[port]), "{listener}");
    }

    // With Redis the replicas share rate limits, and know how many they are.
    let redis = render_ci("redis.yaml").keygate_config();
    assert_eq!(redis["store"], "redis");
    assert_eq!(
        redis["ratelimit"],
        json!({"backend": "redis", "replicas": 3})
    );
    assert_eq!(
        redis["redis"],
        json!({"retry_after": "2s", "timeout": "100ms"})
    );
}

#[test]
fn the_schema_lets_every_keygate_config_field_through_and_refuses_the_chart_s() {
    let schema: Json = serde_json::from_str(
        &std::fs::read_to_string(chart_dir().join("values.schema.json")).unwrap(),
    )
    .unwrap();
    let allowed: BTreeSet<&str> = schema["properties"]["config"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let config = serde_json::to_value(keygate::config::Config::default()).unwrap();
    let mut fields: BTreeSet<&str> = config
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    // Secrets are never config fields; the schema names them only to refuse them.
    fields.extend(["pepper", "admin_token"]);
    assert_eq!(
        allowed, fields,
        "values.schema.json's config section and keygate's config fields"
    );
    for (field, instead) in [
        ("listen", "ports"),
        ("data_dir", "persistence"),
        ("store", "use store"),
        ("shutdown", "shutdown.drainGraceSeconds"),
        ("pepper", "secrets.pepper"),
    ] {
        let message = refused(json!({"config": {field: {}}}));
        assert!(message.contains(&format!("config.{field}")), "{message}");
        assert!(message.contains(instead), "{message}");
    }
    let message = refused(json!({"config": {"redis": {"url": "redis://elsewhere"}}}));
    assert!(message.contains("redis.url"), "{message}");
}

#[test]
fn every_rendered_configuration_is_one_keygate_accepts_in_the_pod_s_environment() {
    let renderings = [
        ("defaults", render(&[], &[])),
        ("embedded.yaml", render_ci("embedded.yaml")),
        ("redis.yaml", render_ci("redis.yaml")),
        ("redis-cluster.yaml", render_ci("redis-cluster.yaml")),
        ("all-on.yaml", render_ci("all-on.yaml")),
        ("tls.yaml", render_ci("tls.yaml")),
    ];
    for (what, rendering) in renderings {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keygate.yaml");
        std::fs::write(
            &path,
            serde_yaml_ng::to_string(&rendering.keygate_config()).unwrap(),
        )
        .unwrap();
        let env: std::collections::HashMap<String, String> = rendering.container()["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|var| {
                let value = var["value"].as_str().unwrap_or("(from a secret)");
                (var["name"].as_str().unwrap().to_owned(), value.to_owned())
            })
            .collect();
        // The pod turns service links off, but a cluster that injects them anyway (or a copy
        // of the pod spec without the setting) must not stop keygate either.
        let links = rendered_service_links(&rendering);
        assert!(
            links.iter().any(|(name, _)| name == "KEYGATE_SERVICE_HOST"),
            "{what}: {links:?}"
        );
        let config =
            keygate::config::Config::load(Some(&path), env.clone().into_iter().chain(links), &[])
                .unwrap_or_else(|e| panic!("{what}: keygate refuses the chart's config: {e}"));
        keygate::server::check_deployment(&config, &env)
            .unwrap_or_else(|e| panic!("{what}: keygate would not start: {e}"));
        assert_eq!(
            env.get("KEYGATE_LOG_FORMAT").map(String::as_str),
            Some(if what == "all-on.yaml" {
                "human"
            } else {
                "json"
            }),
            "{what}"
        );
    }
}

/// The service-link variables Kubernetes would set for the Services of `rendering`.
fn rendered_service_links(rendering: &Rendering) -> Vec<(String, String)> {
    rendering
        .all("Service")
        .into_iter()
        .enumerate()
        .flat_map(|(i, service)| {
            let ports: Vec<(&str, u16, &str)> = service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|port| {
                    (
                        port["name"].as_str().unwrap_or_default(),
                        u16::try_from(port["port"].as_u64().unwrap()).unwrap(),
                        port["protocol"].as_str().unwrap_or("TCP"),
                    )
                })
                .collect();
            service_links(
                service["metadata"]["name"].as_str().unwrap(),
                &format!("10.96.0.{}", 10 + i),
                &ports,
            )
        })
        .collect()
}

#[test]
fn the_schema_rejects_typos_and_wrong_types() {
    for (values, path) in [
        (json!({"replicaCont": 1}), "replicaCont"),
        (json!({"image": {"tagg": "1.0"}}), "tagg"),
        (
            json!({"networkPolicy": {"dataPlaneNamespace": ["x"]}}),
            "dataPlaneNamespace",
        ),
        (json!({"config": {"plan": []}}), "plan"),
        (json!({"replicaCount": "two"}), "/replicaCount"),
        (json!({"store": "postgres"}), "/store"),
        (
            json!({"secrets": {"pepper": "too short"}}),
            "/secrets/pepper",
        ),
        (
            json!({"probes": {"readiness": {"periodSeconds": 0}}}),
            "/probes/readiness",
        ),
    ] {
        let message = refused(values.clone());
        assert!(
            message.contains("schema") && message.contains(path),
            "{values}: {message}"
        );
    }
}

#[test]
fn the_embedded_store_is_one_replica_on_a_kept_volume() {
    let rendering = render(&[], &[]);
    let deployment = &rendering.deployment()["spec"];
    assert_eq!(deployment["replicas"], 1);
    // A rolling update would start a second pod on the same store.
    assert_eq!(deployment["strategy"]["type"], "Recreate");
    let claim = rendering.get("PersistentVolumeClaim", "keygate");
    assert_eq!(
        claim["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let data_dir = rendering.keygate_config()["data_dir"].clone();
    let volume = rendering.volume_at(data_dir.as_str().unwrap());
    assert_eq!(volume["persistentVolumeClaim"]["claimName"], "keygate");

    let message = refused(json!({"replicaCount": 2}));
    assert!(
        message.contains("replicaCount is 2") && message.contains("store: redis"),
        "{message}"
    );
    let message = refused(json!({"autoscaling": {"enabled": true}}));
    assert!(
        message.contains("autoscaling.enabled needs store: redis"),
        "{message}"
    );

    let existing = render(&[], &[json!({"persistence": {"existingClaim": "kept"}})]);
    assert!(existing.all("PersistentVolumeClaim").is_empty());
    let volume = existing.volume_at(data_dir.as_str().unwrap());
    assert_eq!(volume["persistentVolumeClaim"]["claimName"], "kept");
}

#[test]
fn redis_addresses_and_passwords_come_from_values_and_secrets() {
    let redis = render_ci("redis.yaml");
    assert!(redis.all("PersistentVolumeClaim").is_empty());
    let deployment = &redis.deployment()["spec"];
    assert_eq!(deployment["replicas"], 3);
    assert_eq!(deployment["strategy"]["type"], "RollingUpdate");
    assert_eq!(deployment["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
    // The password is expanded into the URL by Kubernetes: it must be defined first.
    let names: Vec<String> = redis.env().into_iter().map(|(n, _)| n).collect();
    let password = names.iter().position(|n| n == "REDIS_PASSWORD").unwrap();
    let url = names
        .iter()
        .position(|n| n == "KEYGATE_REDIS__URL")
        .unwrap();
    assert!(password < url, "{names:?}");
    let (_, password) = &redis.env()[password];
    assert_eq!(
        password["valueFrom"]["secretKeyRef"],
        json!({"name": "keygate-redis", "key": "password"})
    );
    assert_eq!(
        redis.env_value("KEYGATE_REDIS__URL").unwrap(),
        "rediss://:$(REDIS_PASSWORD)@redis.data.svc.cluster.local:6379/0"
    );
    // Every replica gets the same pepper, from the operator's Secret.
    assert!(redis.all("Secret").is_empty());
    let secrets = redis.volume_at("/etc/keygate/secrets");
    assert_eq!(secrets["secret"]["secretName"], "keygate-secrets");
    let files: BTreeSet<&str> = secrets["secret"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["path"].as_str().unwrap())
        .collect();
    for (variable, file) in [
        ("KEYGATE_PEPPER_FILE", "pepper"),
        ("KEYGATE_ADMIN_TOKEN_FILE", "admin-token"),
    ] {
        assert_eq!(
            redis.env_value(variable).unwrap(),
            format!("/etc/keygate/secrets/{file}")
        );
        assert!(files.contains(file), "{files:?}");
    }

    let cluster = render_ci("redis-cluster.yaml");
    assert_eq!(cluster.env_value("KEYGATE_REDIS__URL"), None);
    let nodes: Vec<String> =
        serde_json::from_str(&cluster.env_value("KEYGATE_REDIS__CLUSTER_NODES").unwrap()).unwrap();
    assert_eq!(nodes.len(), 3);
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(
            node,
            &format!(
                "redis://keygate:$(REDIS_PASSWORD)@redis-{i}.redis.data.svc.cluster.local:6379"
            )
        );
    }

    // Without a password the URL is used as given.
    let plain = render(
        &[],
        &[json!({"store": "redis", "redis": {"url": "redis://u:p@cache:6380/2"}})],
    );
    assert_eq!(
        plain.env_value("KEYGATE_REDIS__URL").unwrap(),
        "redis://u:p@cache:6380/2"
    );
    assert!(!plain.env().iter().any(|(n, _)| n == "REDIS_PASSWORD"));

    let message = refused(json!({"store": "redis"}));
    assert!(
        message.contains("store: redis needs redis.url"),
        "{message}"
    );
    let message = refused(json!({"redis": {"bundled": {"enabled": true}}}));
    assert!(message.contains("set store: redis"), "{message}");
}

#[test]
fn secrets_are_generated_long_enough_or_taken_from_values() {
    let generated = render(&[], &[]);
    let secret = generated.get("Secret", "keygate");
    assert_eq!(
        secret["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    // The pepper needs 16 bytes (24 base64 characters), the admin token 32 (44).
    for (key, least) in [("pepper", 24), ("admin-token", 44)] {
        let encoded = secret["data"][key].as_str().unwrap();
        assert!(encoded.len() >= least, "{key}: {encoded}");
    }
    let given = render(
        &[],
        &[json!({"secrets": {
            "pepper": "a-given-pepper-0123456789",
            "adminToken": "a-given-admin-token-0123456789-abcdef",
        }})],
    );
    let secret = given.get("Secret", "keygate");
    assert_eq!(
        secret["data"]["pepper"],
        "YS1naXZlbi1wZXBwZXItMDEyMzQ1Njc4OQ=="
    );
    assert_eq!(
        secret["data"]["admin-token"],
        "YS1naXZlbi1hZG1pbi10b2tlbi0wMTIzNDU2Nzg5LWFiY2RlZg=="
    );
}

#[test]
fn services_name_their_ports_and_keep_management_inside_the_cluster() {
    let rendering = render(&[], &[]);
    let pod_labels = &rendering.pod()["metadata"]["labels"];
    let container_ports = rendering.container_ports();
    let data_plane = rendering.get("Service", "keygate");
    let management = rendering.get("Service", "keygate-management");
    for service in [data_plane, management] {
        assert!(selects(&service["spec"]["selector"], pod_labels));
        for port in service["spec"]["ports"].as_array().unwrap() {
            let name = port["name"].as_str().unwrap();
            assert_eq!(port["targetPort"], name);
            assert_eq!(port["port"].as_u64(), container_ports.get(name).copied());
            let protocol = if name.starts_with("grpc-") {
                "grpc"
            } else {
                "http"
            };
            assert_eq!(port["appProtocol"], protocol, "{name}");
        }
    }
    assert_eq!(
        ports(&data_plane["spec"]["ports"], "port"),
        BTreeMap::from([
            ("grpc-authz".to_owned(), 9191),
            ("http-metrics".to_owned(), 9090)
        ])
    );
    assert_eq!(
        ports(&management["spec"]["ports"], "port"),
        BTreeMap::from([("grpc-admin".to_owned(), 9192)])
    );
    assert_eq!(management["spec"]["type"], "ClusterIP");
    // Exposing the data plane never exposes the management API; it is exposed only when asked.
    let exposed = render(&[], &[json!({"service": {"type": "LoadBalancer"}})]);
    assert_eq!(
        exposed.get("Service", "keygate-management")["spec"]["type"],
        "ClusterIP"
    );
    let asked = render_ci("all-on.yaml");
    assert_eq!(
        asked.get("Service", "keygate-management")["spec"]["type"],
        "LoadBalancer"
    );
}

#[test]
fn optional_parts_are_off_by_default_and_on_by_value() {
    let kinds = |rendering: &Rendering| -> BTreeSet<String> {
        rendering
            .names()
            .into_iter()
            .map(|(kind, _)| kind)
            .collect()
    };
    let defaults = render(&[], &[]);
    let expected: BTreeSet<String> = [
        "ConfigMap",
        "Deployment",
        "PersistentVolumeClaim",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    .map(String::from)
    .into();
    assert_eq!(kinds(&defaults), expected);
    assert!(!defaults.env().iter().any(|(n, _)| n.starts_with("OTEL_")));

    let all_on = render_ci("all-on.yaml");
    let pod_labels = &all_on.pod()["metadata"]["labels"];
    let hpa = all_on.get("HorizontalPodAutoscaler", "keygate");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "keygate");
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].as_u64(),
            hpa["spec"]["maxReplicas"].as_u64()
        ),
        (Some(2), Some(6))
    );
    // The autoscaler owns the replica count.
    assert!(all_on.deployment()["spec"].get("replicas").is_none());
    assert_eq!(all_on.keygate_config()["ratelimit"]["replicas"], 2);
    let pdb = all_on.get("PodDisruptionBudget", "keygate");
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], pod_labels));
    all_on.get("ServiceMonitor", "keygate");
    all_on.get("NetworkPolicy", "keygate");
    for (variable, value) in [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector.observability.svc.cluster.local:4317",
        ),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_SERVICE_NAME", "keygate"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0.1"),
    ] {
        assert_eq!(
            all_on.env_value(variable).as_deref(),
            Some(value),
            "{variable}"
        );
    }

    // The bundled Redis: one replica, AOF on, on a volume, and what keygate connects to.
    let redis = all_on.get("StatefulSet", "keygate-redis");
    assert_eq!(redis["spec"]["replicas"], 1);
    let args: Vec<&str> = redis["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let appendonly = args.iter().position(|a| *a == "--appendonly").unwrap();
    assert_eq!(args[appendonly + 1], "yes");
    assert_eq!(
        redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    let service = all_on.get("Service", "keygate-redis");
    assert!(selects(
        &service["spec"]["selector"],
        &redis["spec"]["template"]["metadata"]["labels"]
    ));
    assert!(!selects(&service["spec"]["selector"], pod_labels));
    let port = service["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert_eq!(
        all_on.env_value("KEYGATE_REDIS__URL").unwrap(),
        format!("redis://keygate-redis:{port}")
    );
}

#[test]
fn the_network_policy_admits_only_the_listed_namespaces_to_each_port() {
    let all_on = render_ci("all-on.yaml");
    let policy = all_on.get("NetworkPolicy", "keygate");
    assert!(selects(
        &policy["spec"]["podSelector"]["matchLabels"],
        &all_on.pod()["metadata"]["labels"]
    ));
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let mut admitted: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for rule in policy["spec"]["ingress"].as_array().unwrap() {
        let ports = rule["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 1, "{rule}");
        let namespaces = rule["from"]
            .as_array()
            .unwrap()
            .iter()
            .map(|peer| {
                assert_eq!(
                    peer.as_object().unwrap().len(),
                    1,
                    "only namespaces: {peer}"
                );
                let labels = &peer["namespaceSelector"]["matchLabels"];
                labels["kubernetes.io/metadata.name"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        admitted.insert(ports[0]["port"].as_u64().unwrap(), namespaces);
    }
    let names = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        admitted,
        BTreeMap::from([
            (
                9191,
                names(&["istio-system", "envoy-gateway-system", "shop"])
            ),
            (9192, names(&["backend"])),
            (9090, names(&["monitoring"])),
        ])
    );
    let redis = all_on.get("NetworkPolicy", "keygate-redis");
    let from = &redis["spec"]["ingress"][0]["from"];
    assert_eq!(from.as_array().unwrap().len(), 1);
    assert!(selects(
        &from[0]["podSelector"]["matchLabels"],
        &all_on.pod()["metadata"]["labels"]
    ));

    let message = refused(json!({"networkPolicy": {"enabled": true}}));
    assert!(
        message.contains("networkPolicy.dataPlaneNamespaces"),
        "{message}"
    );
}

/// The `--flags` of a command line.
fn flags(line: &str) -> Vec<&str> {
    line.split_whitespace()
        .filter(|w| w.starts_with("--"))
        .collect()
}

#[test]
fn the_notes_tell_how_to_create_the_first_key_with_real_commands() {
    let rendering = render(&[], &[]);
    let notes = &rendering.notes;
    let management = rendering.get("Service", "keygate-management");
    let port = management["spec"]["ports"][0]["port"].as_u64().unwrap();
    assert!(
        notes.contains(&format!(
            "port-forward svc/keygate-management {port}:{port}"
        )),
        "{notes}"
    );
    assert!(notes.contains(&format!("KEYGATE_ADDR=http://127.0.0.1:{port}")));
    assert!(notes.contains("get secret keygate -o jsonpath='{.data.admin-token}'"));
    // Each keygate command in the notes takes the flags it is given.
    for command in [["owners", "create"], ["keys", "create"]] {
        let invocation = format!("keygate {} {}", command[0], command[1]);
        let line = notes
            .lines()
            .find(|l| l.contains(&invocation))
            .unwrap_or_else(|| panic!("the notes do not run `{invocation}`:\n{notes}"));
        let help = Command::new(keygate_bin())
            .args(command)
            .arg("--help")
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        let used = &line[line.find(&invocation).unwrap()..];
        for flag in flags(used) {
            assert!(help.contains(flag), "`{invocation}` has no {flag}:\n{help}");
        }
    }
}
