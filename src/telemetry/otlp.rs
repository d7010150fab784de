//! The OTLP span exporter, configured only by OpenTelemetry's standard environment
//! variables:
//!
//! * `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: where to send;
//!   exporting is on when either is set (or `OTEL_TRACES_EXPORTER=otlp`), off otherwise.
//! * `OTEL_EXPORTER_OTLP_PROTOCOL` / `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`: `grpc` or
//!   `http/protobuf` (the default).
//! * `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `OTEL_BSP_*`: as the specification says.
//! * `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`: the resource (service name `keygate`
//!   unless set).
//! * `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG`: sampling (default: follow the
//!   parent, sample roots).
//! * `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`: off, whatever else is set.

use opentelemetry::KeyValue;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::runtime::Tokio;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;

/// The tracer provider the environment asks for, `None` when it asks for none, or why the
/// settings are unusable.
pub fn tracer_provider() -> Result<Option<SdkTracerProvider>, String> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let exporter_named = match var("OTEL_TRACES_EXPORTER").as_deref() {
        None => false,
        Some(name) if name.eq_ignore_ascii_case("none") => return Ok(None),
        Some(name) if name.eq_ignore_ascii_case("otlp") => true,
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other:?} is not supported; use otlp or none"
            ));
        }
    };
    let endpoint_given = var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if !exporter_named && !endpoint_given {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if var("OTEL_SERVICE_NAME").is_none()
        && !var("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="))
    {
        resource = resource.with_service_name("keygate");
    }
    // Batches are sent from a task on keygate's runtime: both transports' clients need it.
    let batches = BatchSpanProcessor::builder(exporter, Tokio).build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_resource(resource.build())
            .build(),
    ))
}
