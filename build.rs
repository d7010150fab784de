//! Compiles keygate's protos with a pure-Rust protobuf compiler (no system `protoc`),
//! writes the file descriptor set that the server offers through gRPC reflection, compiles
//! the descriptors of Envoy's ext_authz service for reflection too (from the protos the
//! envoy-types crate ships, whose generated Rust types keygate serves it with), and records
//! the git revision being built (`KEYGATE_GIT_REVISION`; set it in the environment to build
//! from a tree without `.git`).
//!
//! The revision reaches the code as `BUILD_GIT_REVISION`, a name outside `KEYGATE_*`: Cargo
//! also puts `rustc-env` variables in the environment of `cargo run`, where every
//! `KEYGATE_*` name is weighed as configuration.

use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/keygate/v1/key_manager.proto",
        "proto/keygate/v1/authorizer.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    println!("cargo:rustc-env=BUILD_GIT_REVISION={}", git_revision());
    let descriptors = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("keygate_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    let envoy = protox::compile([ENVOY_EXT_AUTHZ_PROTO], envoy_include_dirs()?)?;
    std::fs::write(out_dir.join("envoy_descriptor.bin"), envoy.encode_to_vec())?;
    Ok(())
}

/// Envoy's ext_authz service; its descriptors are compiled with everything it imports.
const ENVOY_EXT_AUTHZ_PROTO: &str = "envoy/service/auth/v3/external_auth.proto";

/// The directories, under the `proto` directory of the envoy-types crate, that Envoy's
/// protos import from: Envoy's API, xDS and UDPA annotations, googleapis, validation rules.
const ENVOY_PROTO_ROOTS: [&str; 5] = [
    "data-plane-api",
    "xds",
    "googleapis",
    "protoc-gen-validate",
    "cel-spec/proto",
];

/// The import paths for Envoy's protos, in the source of the envoy-types crate that
/// Cargo.lock names. Cargo tells a build script nothing of another package's source, so it is
/// looked for where Cargo unpacks registry crates (`$CARGO_HOME/registry/src/*/`), unless
/// `KEYGATE_ENVOY_TYPES_DIR` names the crate's directory (vendored sources, say).
fn envoy_include_dirs() -> Result<Vec<PathBuf>, String> {
    println!("cargo:rerun-if-env-changed=KEYGATE_ENVOY_TYPES_DIR");
    println!("cargo:rerun-if-env-changed=CARGO_HOME");
    println!("cargo:rerun-if-changed=Cargo.lock");
    let crate_dir = match std::env::var_os("KEYGATE_ENVOY_TYPES_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => find_registry_crate("envoy-types")?,
    };
    let proto = crate_dir.join("proto");
    let dirs: Vec<PathBuf> = ENVOY_PROTO_ROOTS.iter().map(|d| proto.join(d)).collect();
    if !dirs[0].join(ENVOY_EXT_AUTHZ_PROTO).is_file() {
        return Err(format!(
            "{} has no {ENVOY_EXT_AUTHZ_PROTO}; set KEYGATE_ENVOY_TYPES_DIR to the envoy-types crate's source",
            dirs[0].display()
        ));
    }
    Ok(dirs.into_iter().filter(|d| d.is_dir()).collect())
}

/// The unpacked source of the version of `name` that Cargo.lock names.
fn find_registry_crate(name: &str) -> Result<PathBuf, String> {
    let lock_path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?)
        .join("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path)
        .map_err(|e| format!("cannot read {}: {e}", lock_path.display()))?;
    let version = locked_version(&lock, name)
        .ok_or_else(|| format!("{} does not name {name}", lock_path.display()))?;
    let cargo_home = std::env::var_os("CARGO_HOME")
        .filter(|home| !home.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let registries = cargo_home.join("registry").join("src");
    let dir_name = format!("{name}-{version}");
    std::fs::read_dir(&registries)
        .map_err(|e| format!("cannot read {}: {e}", registries.display()))?
        .filter_map(|registry| Some(registry.ok()?.path().join(&dir_name)))
        .find(|dir| dir.is_dir())
        .ok_or_else(|| {
            format!(
                "{dir_name} is not unpacked under {}; set KEYGATE_ENVOY_TYPES_DIR to its source",
                registries.display()
            )
        })
}

/// The version of package `name` in the text of a Cargo.lock.
fn locked_version(lock: &str, name: &str) -> Option<String> {
    let wanted = format!("name = \"{name}\"");
    let mut lines = lock.lines().map(str::trim);
    lines.find(|line| *line == wanted)?;
    let version = lines.next()?.strip_prefix("version = \"")?;
    Some(version.trim_end_matches('"').to_owned())
}

/// The revision being built: `KEYGATE_GIT_REVISION` if set, else git's short commit id,
/// else `unknown`.
fn git_revision() -> String {
    println!("cargo:rerun-if-env-changed=KEYGATE_GIT_REVISION");
    if let Ok(revision) = std::env::var("KEYGATE_GIT_REVISION")
        && !revision.trim().is_empty()
    {
        return revision.trim().to_owned();
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // Build again after a commit or checkout. In a linked worktree `.git` is a file: HEAD
    // lives in the worktree's own git directory, branches in the common one.
    let git_dir = git(&["rev-parse", "--git-dir"]).unwrap_or_else(|| ".git".to_owned());
    let common_dir = git(&["rev-parse", "--git-common-dir"]).unwrap_or_else(|| git_dir.clone());
    for watched in [
        Path::new(&git_dir).join("HEAD"),
        Path::new(&common_dir).join("refs/heads"),
        Path::new(&common_dir).join("packed-refs"),
    ] {
        if watched.exists() {
            println!("cargo:rerun-if-changed={}", watched.display());
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"])
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
