//! The README's Install on Kubernetes section: its values example installs with the Helm
//! chart, and every value it names is one of the chart's.

mod common;

use serde_json::Value as Json;

use common::helm::{chart_dir, render, repo_path};

#[test]
fn the_readme_install_section_matches_the_chart() {
    let readme = std::fs::read_to_string(repo_path("README.md")).unwrap();
    let start = readme
        .find("\n## Install on Kubernetes\n")
        .expect("the README has an Install on Kubernetes section");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];

    // Its values example installs as written.
    let example = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a values example");
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(file.path(), example).unwrap();
    let rendering = render(&[file.path()], &[]);
    assert_eq!(rendering.keygate_config()["store"], "redis");

    // Every value it names (`a.b.c`, starting with one of the chart's values) exists.
    let values: Json =
        serde_yaml_ng::from_str(&std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap())
            .unwrap();
    let named: Vec<&str> = section
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| {
            s.contains('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '*')
        })
        .filter(|s| values.get(s.split('.').next().unwrap()).is_some())
        .collect();
    assert!(named.len() >= 5, "{named:?}");
    for path in named {
        let mut node = &values;
        for part in path.split('.').take_while(|p| *p != "*") {
            node = node.get(part).unwrap_or_else(|| {
                panic!("the README names `{path}`, which the chart does not have")
            });
        }
    }
}
