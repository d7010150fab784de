//! Compiles keygate's protos with a pure-Rust protobuf compiler (no system `protoc`),
//! writes the file descriptor set that the server offers through gRPC reflection, and
//! records the git revision being built (`KEYGATE_GIT_REVISION`; set it in the environment
//! to build from a tree without `.git`).

use std::path::PathBuf;
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
    println!("cargo:rustc-env=KEYGATE_GIT_REVISION={}", git_revision());
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
    Ok(())
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
    for watched in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(watched).exists() {
            println!("cargo:rerun-if-changed={watched}");
        }
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    git(&["rev-parse", "--short=12", "HEAD"])
        .filter(|commit| !commit.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
