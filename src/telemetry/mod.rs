//! Logs and traces.
//!
//! Logs go to stderr, human-readable or one JSON object per line, at the level `KEYGATE_LOG`
//! or `RUST_LOG` selects (default `info`). Traces are exported over OTLP when OpenTelemetry's
//! standard variables ask for it (see [`otlp`]); otherwise keygate's spans are never even
//! created, so tracing costs nothing on the request path.
//!
//! keygate's spans are at DEBUG level: the OTLP exporter takes them all, while the log
//! shows them only when asked for with `KEYGATE_LOG=keygate=debug`.

pub mod decisions;
pub mod otlp;
pub mod propagation;
pub mod rpc;
pub mod store;

use std::io::IsTerminal;

use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    #[default]
    Human,
    /// One JSON object per event, with the span's fields.
    Json,
}

/// The installed log and trace pipeline; [`Telemetry::shutdown`] sends the spans not yet
/// exported.
#[must_use = "dropping it loses the spans not yet exported; call shutdown"]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Installs the process-wide subscriber: logs in `format`, and the OTLP exporter when
    /// the environment configures one. Must run inside the Tokio runtime (the gRPC exporter
    /// needs it). Problems with the exporter's settings are logged, never fatal.
    pub fn init(format: LogFormat) -> Telemetry {
        let (traces, exporter_problem) = match otlp::tracer_provider() {
            Ok(provider) => (provider, None),
            Err(problem) => (None, Some(problem)),
        };
        Self::install(format, traces.clone());
        if let Some(problem) = exporter_problem {
            tracing::warn!("traces are not exported: {problem}");
        } else if traces.is_some() {
            tracing::info!("exporting traces over OTLP");
        }
        Telemetry { traces }
    }

    /// Installs logs in `format` only, for commands that serve nothing.
    pub fn init_logs(format: LogFormat) {
        Self::install(format, None);
    }

    fn install(format: LogFormat, traces: Option<SdkTracerProvider>) {
        let filter = std::env::var("KEYGATE_LOG")
            .ok()
            .and_then(|spec| EnvFilter::try_new(spec).ok())
            .or_else(|| EnvFilter::try_from_default_env().ok())
            .unwrap_or_else(|| EnvFilter::new("info"));
        let ansi = std::io::stderr().is_terminal();
        let logs = match format {
            LogFormat::Human => tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi)
                .with_filter(filter)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .with_writer(std::io::stderr)
                .with_filter(filter)
                .boxed(),
        };
        let spans = traces.as_ref().map(|provider| {
            use opentelemetry::trace::TracerProvider as _;
            tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("keygate"))
                // Spans start when they end or get a child, so a Check span can still take
                // its parent from the request's headers after they are decoded.
                .with_context_activation(false)
                .with_tracked_inactivity(false)
                .with_location(false)
                .with_target(false)
                .with_filter(Targets::new().with_target("keygate", Level::DEBUG))
        });
        let _ = tracing_subscriber::registry()
            .with(logs)
            .with(spans)
            .try_init();
    }

    /// Exports the spans still buffered and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.traces else {
            return;
        };
        // The exporter's thread needs the runtime to send; wait for it off the runtime.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!("could not export the last spans: {e}");
        }
    }
}
