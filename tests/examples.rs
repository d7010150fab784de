//! The Istio and Envoy Gateway examples under `examples/`, checked against what the Helm
//! chart renders; the Traefik example, which no test can run (Traefik has no Debian
//! package), checked against keygate's defaults.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value as Json, json};

use common::helm::{ports, render, repo_path, yaml_documents};

/// Every YAML document of the files in `examples/<dir>`, each with apiVersion, kind and
/// metadata.name, by kind.
fn example_objects(dir: &str) -> BTreeMap<String, Vec<Json>> {
    let mut objects: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_path(&format!("examples/{dir}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in examples/{dir}");
    for file in files {
        for object in yaml_documents(&std::fs::read_to_string(&file).unwrap()) {
            for field in [
                &object["apiVersion"],
                &object["kind"],
                &object["metadata"]["name"],
            ] {
                assert!(
                    field.as_str().is_some_and(|v| !v.is_empty()),
                    "{}: an object lacks apiVersion, kind or metadata.name",
                    file.display()
                );
            }
            objects
                .entry(object["kind"].as_str().unwrap().to_owned())
                .or_default()
                .push(object);
        }
    }
    objects
}

/// The chart's data-plane Service (with the defaults): name, namespace and port.
fn data_plane_service() -> (String, String, u64) {
    let rendering = render(&[], &[]);
    let service = rendering.get("Service", "keygate");
    let port = ports(&service["spec"]["ports"], "port")["grpc-authz"];
    let text = |v: &Json| v.as_str().unwrap().to_owned();
    (
        text(&service["metadata"]["name"]),
        text(&service["metadata"]["namespace"]),
        port,
    )
}

/// The one object of `kind` among `objects`.
fn only<'a>(objects: &'a BTreeMap<String, Vec<Json>>, kind: &str) -> &'a Json {
    let found = objects.get(kind).map(Vec::as_slice).unwrap_or_default();
    assert_eq!(found.len(), 1, "one {kind} in {:?}", objects.keys());
    &found[0]
}

#[test]
fn the_istio_example_sends_checks_to_the_chart_s_data_plane() {
    let (service, namespace, port) = data_plane_service();
    let objects = example_objects("istio");
    let operator = only(&objects, "IstioOperator");
    assert_eq!(operator["apiVersion"], "install.istio.io/v1alpha1");
    let providers = operator["spec"]["meshConfig"]["extensionProviders"]
        .as_array()
        .unwrap();
    let provider = providers
        .iter()
        .find(|p| p.get("envoyExtAuthzGrpc").is_some())
        .expect("an envoyExtAuthzGrpc extension provider");
    let grpc = &provider["envoyExtAuthzGrpc"];
    assert_eq!(
        grpc["service"],
        format!("{service}.{namespace}.svc.cluster.local")
    );
    assert_eq!(grpc["port"].as_u64(), Some(port));
    assert_eq!(grpc["failOpen"], false);

    let policy = only(&objects, "AuthorizationPolicy");
    assert_eq!(policy["apiVersion"], "security.istio.io/v1");
    assert_eq!(policy["spec"]["action"], "CUSTOM");
    assert_eq!(policy["spec"]["provider"]["name"], provider["name"]);
    assert!(!policy["spec"]["rules"].as_array().unwrap().is_empty());
}

#[test]
fn the_envoy_gateway_example_sends_checks_to_the_chart_s_data_plane() {
    let (service, namespace, port) = data_plane_service();
    let objects = example_objects("envoy-gateway");
    let policy = only(&objects, "SecurityPolicy");
    assert_eq!(policy["apiVersion"], "gateway.envoyproxy.io/v1alpha1");
    let targets = policy["spec"]["targetRefs"].as_array().unwrap();
    assert!(!targets.is_empty());
    for target in targets {
        assert_eq!(target["group"], "gateway.networking.k8s.io");
        assert!(
            target["kind"] == "HTTPRoute"
                || target["kind"] == "Gateway"
                || target["kind"] == "GRPCRoute"
        );
        assert!(target["name"].is_string());
    }
    let backends = policy["spec"]["extAuth"]["grpc"]["backendRefs"]
        .as_array()
        .unwrap();
    assert_eq!(
        backends,
        &vec![json!({"name": service, "namespace": namespace, "port": port})]
    );
    assert_eq!(policy["spec"]["extAuth"]["failOpen"], false);

    // The policy refers to a Service in another namespace, which that namespace must grant.
    let grant = only(&objects, "ReferenceGrant");
    assert_eq!(grant["metadata"]["namespace"], namespace.as_str());
    assert_eq!(
        grant["spec"]["from"],
        json!([{
            "group": "gateway.envoyproxy.io",
            "kind": "SecurityPolicy",
            "namespace": policy["metadata"]["namespace"],
        }])
    );
    assert_eq!(
        grant["spec"]["to"],
        json!([{"group": "", "kind": "Service", "name": service}])
    );
}

#[test]
fn the_traefik_example_sends_and_takes_keygate_s_default_headers() {
    use keygate::authz::extract::CredentialSource;
    use keygate::authz::response::HeaderNames;

    let text = std::fs::read_to_string(repo_path("examples/traefik/dynamic.yaml")).unwrap();
    let config = &yaml_documents(&text)[0]["http"];
    let lower = |list: &Json| -> Vec<String> {
        (list.as_array().unwrap().iter())
            .map(|name| name.as_str().unwrap().to_ascii_lowercase())
            .collect()
    };
    let middlewares = &config["middlewares"];
    let forward_auth = &middlewares["keygate"]["forwardAuth"];
    assert!(
        forward_auth["address"]
            .as_str()
            .is_some_and(|a| a.ends_with(":9191/forward-auth"))
    );
    assert_eq!(forward_auth["trustForwardHeader"], false);

    let names = HeaderNames::default();
    let identity = [names.key_id, names.owner_id, names.plan, names.scopes];
    assert_eq!(lower(&forward_auth["authResponseHeaders"]), identity);

    let credentials: Vec<String> = (CredentialSource::defaults().iter())
        .flat_map(|source| source.headers().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let sent = lower(&forward_auth["authRequestHeaders"]);
    let dropped: Vec<String> = (middlewares["drop-credentials"]["headers"]["customRequestHeaders"]
        .as_object()
        .unwrap())
    .iter()
    .inspect(|(_, value)| assert_eq!(**value, "", "an empty value removes the header"))
    .map(|(name, _)| name.to_ascii_lowercase())
    .collect();
    for header in &credentials {
        assert!(sent.contains(header), "{header} is not sent to keygate");
        assert!(dropped.contains(header), "{header} reaches the API");
    }
    assert!(sent.contains(&names.request_id));
    let router = &config["routers"]["api"];
    assert_eq!(
        router["middlewares"],
        json!(["keygate", "drop-credentials"])
    );
}
