//! The Helm chart `helm/keygate`, linted and rendered by Helm's own engine (PyPI
//! `helm-python-sdk`, through `tests/helm/chart.py`), and manifests checked with
//! `kubernetes-validate --strict`: what the chart, image, examples and README tests share.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_json::Value as Json;

use super::tools::venv_tool;

/// The Kubernetes version manifests are linted and validated for.
const KUBERNETES_VERSION: &str = "1.37.0";

/// A file of the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The chart's directory.
pub fn chart_dir() -> PathBuf {
    repo_path("helm/keygate")
}

/// A values file under `helm/keygate/ci/`.
pub fn ci_values(name: &str) -> PathBuf {
    chart_dir().join("ci").join(name)
}

/// Runs `tests/helm/chart.py ACTION` on the chart with `files` then `overrides` as values:
/// its JSON answer, or Helm's message when it refuses the values or a template fails.
pub fn helm(action: &str, files: &[&Path], overrides: &[Json]) -> Result<Json, String> {
    let mut command = Command::new(venv_tool("python"));
    command
        .arg(repo_path("tests/helm/chart.py"))
        .arg(action)
        .arg(chart_dir())
        .args(["--kube-version", KUBERNETES_VERSION]);
    for file in files {
        command.arg("--values").arg(file);
    }
    for values in overrides {
        command.arg("--set-json").arg(values.to_string());
    }
    let output = command.output().expect("cannot run tests/helm/chart.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answer =
        || -> Json { serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")) };
    match output.status.code() {
        Some(0) => Ok(answer()),
        Some(3) => Err(answer()["error"].as_str().unwrap().to_owned()),
        _ => panic!(
            "chart.py {action} failed ({}):\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Every YAML document in `text`, empty ones left out.
pub fn yaml_documents(text: &str) -> Vec<Json> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| Json::deserialize(document).unwrap_or_else(|e| panic!("{e}:\n{text}")))
        .filter(|document| !document.is_null())
        .collect()
}

/// What the chart rendered: its objects and its NOTES.txt.
pub struct Rendering {
    pub objects: Vec<Json>,
    pub notes: String,
}

/// Renders the chart with `files` then `overrides` as values.
pub fn try_render(files: &[&Path], overrides: &[Json]) -> Result<Rendering, String> {
    let answer = helm("render", files, overrides)?;
    let mut rendering = Rendering {
        objects: Vec::new(),
        notes: String::new(),
    };
    for (template, text) in answer["manifests"].as_object().unwrap() {
        let text = text.as_str().unwrap();
        if template.ends_with("NOTES.txt") {
            rendering.notes = text.to_owned();
        } else {
            rendering.objects.extend(yaml_documents(text));
        }
    }
    Ok(rendering)
}

/// Renders the chart; the values must be accepted.
pub fn render(files: &[&Path], overrides: &[Json]) -> Rendering {
    try_render(files, overrides).unwrap_or_else(|e| panic!("the chart refused the values: {e}"))
}

/// Renders the chart with one file of `helm/keygate/ci/`.
pub fn render_ci(name: &str) -> Rendering {
    render(&[&ci_values(name)], &[])
}

/// Renders the chart with `overrides`; they must be refused. Returns Helm's message.
pub fn refused(overrides: Json) -> String {
    match try_render(&[], std::slice::from_ref(&overrides)) {
        Ok(_) => panic!("the chart accepted {overrides}"),
        Err(message) => message,
    }
}

impl Rendering {
    /// The objects of `kind`.
    pub fn all(&self, kind: &str) -> Vec<&Json> {
        self.objects.iter().filter(|o| o["kind"] == kind).collect()
    }

    /// The one object of `kind` named `name`.
    pub fn get(&self, kind: &str, name: &str) -> &Json {
        let found: Vec<_> = self
            .all(kind)
            .into_iter()
            .filter(|o| o["metadata"]["name"] == name)
            .collect();
        assert_eq!(found.len(), 1, "{kind}/{name} in {:?}", self.names());
        found[0]
    }

    /// `(kind, name)` of every object.
    pub fn names(&self) -> BTreeSet<(String, String)> {
        self.objects
            .iter()
            .map(|o| {
                let text = |v: &Json| v.as_str().unwrap_or_default().to_owned();
                (text(&o["kind"]), text(&o["metadata"]["name"]))
            })
            .collect()
    }

    pub fn deployment(&self) -> &Json {
        self.get("Deployment", "keygate")
    }

    pub fn pod(&self) -> &Json {
        &self.deployment()["spec"]["template"]
    }

    pub fn container(&self) -> &Json {
        let containers = self.pod()["spec"]["containers"].as_array().unwrap();
        assert_eq!(containers.len(), 1);
        &containers[0]
    }

    /// The container's environment, by name, in order.
    pub fn env(&self) -> Vec<(String, Json)> {
        self.container()["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
            .collect()
    }

    pub fn env_value(&self, name: &str) -> Option<String> {
        self.env()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, e)| e["value"].as_str().unwrap().to_owned())
    }

    /// The container's ports, by name.
    pub fn container_ports(&self) -> BTreeMap<String, u64> {
        ports(&self.container()["ports"], "containerPort")
    }

    /// keygate's config file, as the ConfigMap holds it.
    pub fn keygate_config(&self) -> Json {
        let text = self.get("ConfigMap", "keygate")["data"]["keygate.yaml"]
            .as_str()
            .unwrap();
        serde_yaml_ng::from_str(text).unwrap()
    }

    /// The volume holding `path` in keygate's container (mounted there or at a directory
    /// above it), from the pod's volumes.
    pub fn volume_at(&self, path: &str) -> &Json {
        let holds = |mount: &str| path == mount || path.starts_with(&format!("{mount}/"));
        let mount = self.container()["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["mountPath"].as_str().is_some_and(holds))
            .max_by_key(|m| m["mountPath"].as_str().unwrap().len())
            .unwrap_or_else(|| panic!("nothing is mounted at or above {path}"));
        self.pod()["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap()
    }
}

/// `name → port field` of a list of ports.
pub fn ports(list: &Json, field: &str) -> BTreeMap<String, u64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p[field].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Whether every label of `selector` is among `labels`.
pub fn selects(selector: &Json, labels: &Json) -> bool {
    let selector = selector.as_object().unwrap();
    !selector.is_empty() && selector.iter().all(|(k, v)| &labels[k] == v)
}

/// Runs `kubernetes-validate --strict` on `objects`: Ok when every one of them was checked
/// against its schema and passed, else the tool's report.
pub fn kubernetes_validate(objects: &[&Json]) -> Result<(), String> {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    // As JSON documents: YAML readers of every version agree on what JSON means.
    let documents: Vec<String> = objects.iter().map(|o| o.to_string()).collect();
    std::fs::write(file.path(), documents.join("\n---\n")).unwrap();
    let output = Command::new(venv_tool("kubernetes-validate"))
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .arg(file.path())
        .output()
        .expect("cannot run kubernetes-validate");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // One "passed" line per object: a kind without a schema only warns, and must not
    // slip through as if it had been checked.
    let passed = report.matches(" passed for resource ").count();
    if output.status.success()
        && !report.contains("WARN")
        && !report.contains("ERROR")
        && passed == objects.len()
    {
        Ok(())
    } else {
        Err(report)
    }
}
