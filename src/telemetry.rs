//! Logs and traces. `tracing` everywhere, printed pretty or as JSON (`log.format`),
//! filtered by `log.level` or `RUST_LOG`; every call's lines carry its span: the
//! trace id, RPC, caller and work order id.
//!
//! OpenTelemetry spans are always made (so trace ids exist), and exported by OTLP
//! only when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is
//! set (and `OTEL_TRACES_EXPORTER` is not `none`). The standard variables apply:
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default here, or `http/protobuf`), `OTEL_SERVICE_NAME`
//! (default `attachment-gateway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
//! and `OTEL_TRACES_SAMPLER_ARG`.

use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, LogSettings};

/// Flushes and stops trace export when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("attachment-gateway: trace export shutdown: {e}");
        }
    }
}

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// Whether the environment asks for OTLP trace export.
pub fn otlp_requested() -> bool {
    let exporter_off = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.trim() == "none");
    !exporter_off
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT") || env_set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

fn provider() -> Result<SdkTracerProvider, String> {
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "attachment-gateway".into());
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if otlp_requested() {
        let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or_else(|_| "grpc".into());
        use opentelemetry_otlp::{Protocol, WithExportConfig};
        let exporter = match protocol.trim() {
            "grpc" => opentelemetry_otlp::SpanExporter::builder().with_tonic().build(),
            "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build(),
            other => {
                return Err(format!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other} is not supported: use grpc or http/protobuf"
                ));
            }
        }
        .map_err(|e| format!("cannot set up OTLP export: {e}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs logging and tracing for the process (a second call changes nothing).
/// Must run inside the tokio runtime (the exporter's batch task lives there).
pub fn init(settings: &LogSettings) -> Result<TelemetryGuard, String> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = provider()?;
    let tracer = provider.tracer("attachment-gateway");
    // Only what the exported spans use. Context activation would push and pop an
    // OpenTelemetry context on every poll of every instrumented future, and nothing
    // here reads the active context (the upstream client injects from its span);
    // busy/idle timing, thread ids and source locations are per-span work no
    // dashboard asks for. Together: about -6 % CPU per unary call and a lower
    // added p50 (BENCHMARKS.md).
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false);
    let installed = tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel.with_filter(EnvFilter::new("attachment_gateway=info")))
        .try_init()
        .is_ok();
    if installed && otlp_requested() {
        tracing::info!("exporting traces by OTLP");
    }
    Ok(TelemetryGuard {
        provider: installed.then_some(provider),
    })
}

/// Writes W3C trace context into outgoing HTTP headers.
struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

/// Adds `traceparent` (and `tracestate`) of `span` to an upstream request.
pub fn inject_trace_context(span: &tracing::Span, headers: &mut http::HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}
