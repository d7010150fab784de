//! The container image's Dockerfile: the locked release build, run as the chart runs the
//! pod, from a build context that holds what the build needs.

mod common;

use std::collections::BTreeSet;

use common::helm::{render, repo_path};

#[test]
fn the_image_is_the_locked_release_build_run_unprivileged() {
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile.split("\nFROM ").skip(1).collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    let (build, runtime) = (stages[0], stages[1]);

    // The build is the project's release build against the committed Cargo.lock, with a
    // toolchain keygate supports.
    assert!(build.contains("cargo build --release --locked"), "{build}");
    let test_script = std::fs::read_to_string(repo_path("scripts/test")).unwrap();
    assert!(
        test_script.contains("cargo test --locked"),
        "the tests use the same lockfile"
    );
    let toolchain = build
        .strip_prefix("rust:")
        .and_then(|rest| rest.split('-').next())
        .unwrap_or_else(|| panic!("the build stage starts from an official rust image: {build}"));
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo_path("Cargo.toml")).unwrap()).unwrap();
    let minimum = manifest["package"]["rust-version"].as_str().unwrap();
    let version =
        |text: &str| -> Vec<u32> { text.split('.').map(|p| p.parse().unwrap()).collect() };
    assert!(
        version(toolchain) >= version(minimum),
        "rust {toolchain} < {minimum}"
    );

    // The runtime stage holds the binary and runs it as the numeric non-root user the chart
    // runs the pod as.
    let user = runtime
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the runtime stage sets USER");
    let ids: Vec<u32> = user
        .trim()
        .split(':')
        .map(|id| {
            id.parse()
                .unwrap_or_else(|_| panic!("USER {user} is not numeric"))
        })
        .collect();
    assert!(ids.iter().all(|&id| id != 0), "USER {user} is root");
    let rendering = render(&[], &[]);
    let pod_security = &rendering.pod()["spec"]["securityContext"];
    assert_eq!(pod_security["runAsUser"].as_u64(), Some(u64::from(ids[0])));
    assert!(runtime.contains("COPY --from=build /out/keygate /usr/local/bin/keygate"));
    let exposed: BTreeSet<u64> = runtime
        .lines()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|ports| ports.split_whitespace().map(|p| p.parse().unwrap()))
        .collect();
    let container: BTreeSet<u64> = rendering.container_ports().into_values().collect();
    assert_eq!(exposed, container);

    // The build context leaves out what the build does not need, and nothing it does.
    let ignored: Vec<String> = std::fs::read_to_string(repo_path(".dockerignore"))
        .unwrap()
        .lines()
        .map(|l| l.trim().trim_matches('/').to_owned())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for unneeded in ["target", ".git", ".tools"] {
        assert!(
            ignored.iter().any(|i| i == unneeded),
            "{unneeded} is sent to the build"
        );
    }
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "src",
        "proto",
        "benches",
    ] {
        assert!(
            !ignored.iter().any(|i| i == needed),
            "{needed} is left out of the build"
        );
    }
}
