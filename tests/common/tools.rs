//! External tools the tests drive, installed by `scripts/install-test-tools`. A missing tool
//! fails the test with the command that installs it; nothing is skipped.

use std::path::PathBuf;

/// Path of `name` in the test tools' Python venv.
pub fn venv_tool(name: &str) -> PathBuf {
    let root = std::env::var_os("KEYGATE_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".tools"));
    let path = root.join("venv/bin").join(name);
    assert!(
        path.exists(),
        "{name} is not installed at {}: run scripts/install-test-tools (scripts/test does it for you)",
        path.display()
    );
    path
}

/// Path of system command `name`, which `scripts/install-test-tools` installs from Debian
/// packages.
#[allow(dead_code)] // the benches drive only the venv's tools
pub fn system_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not on PATH: run scripts/install-test-tools (scripts/test does it for you)")
        })
}
