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
/// packages: on `PATH`, or in the sbin directories where Debian puts daemons (nginx).
pub fn system_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run scripts/install-test-tools (scripts/test does it for you)")
        })
}
