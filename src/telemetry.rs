//! Logging: human-readable lines on stderr, level from `KEYGATE_LOG` or `RUST_LOG`
//! (default `info`).

use tracing_subscriber::EnvFilter;

/// Installs the process-wide log subscriber. Safe to call more than once; later calls do
/// nothing.
pub fn init_logging() {
    let filter = std::env::var("KEYGATE_LOG")
        .ok()
        .and_then(|spec| EnvFilter::try_new(spec).ok())
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}
