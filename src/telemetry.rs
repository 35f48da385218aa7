//! Logs and traces. `tracing` everywhere, printed pretty or as JSON (`log.format`),
//! filtered by `log.level` or `RUST_LOG`; every call's lines carry its span: the
//! trace id, RPC, caller and work order id.
//!
//! OpenTelemetry spans are made and exported by OTLP only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and
//! `OTEL_TRACES_EXPORTER` is not `none`). Otherwise a small layer keeps only the
//! trace context (trace id, span id, flags, the caller's `tracestate`) in each span:
//! log lines still carry the trace id and the upstream still gets a `traceparent`
//! of the caller's trace, without building spans nobody receives (about 4 % of a
//! unary call's instructions; BENCHMARKS.md).
//!
//! With an endpoint, the standard variables apply:
//! `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc`, the default here, or `http/protobuf`), `OTEL_SERVICE_NAME`
//! (default `attachment-gateway`), `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`
//! and `OTEL_TRACES_SAMPLER_ARG`.

use opentelemetry::Context as OtelContext;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::span::{Attributes, Id};
use tracing::{Subscriber, dispatcher::Dispatch};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::{LookupSpan, Registry, SpanData};
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

/// Why logging and tracing cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0} is not supported: use grpc or http/protobuf")]
    Protocol(String),
    #[error("cannot set up OTLP export: {0}")]
    Exporter(#[source] opentelemetry_otlp::ExporterBuildError),
}

fn provider() -> Result<SdkTracerProvider, TelemetryError> {
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
            "grpc" => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build(),
            "http/protobuf" => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .build(),
            other => return Err(TelemetryError::Protocol(other.to_string())),
        }
        .map_err(TelemetryError::Exporter)?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// Installs logging and tracing for the process (a second call changes nothing).
/// Must run inside the tokio runtime (the exporter's batch task lives there).
pub fn init(settings: &LogSettings) -> Result<TelemetryGuard, TelemetryError> {
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
    if !otlp_requested() {
        tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            // Only our spans (the server's and the upstream client's): unfiltered,
            // this layer would switch on every TRACE callsite of every crate.
            .with(
                TraceIdLayer.with_filter(
                    tracing_subscriber::filter::Targets::new()
                        .with_target("attachment_gateway", tracing::Level::INFO),
                ),
            )
            .try_init()
            .ok();
        return Ok(TelemetryGuard { provider: None });
    }
    let provider = provider()?;
    let tracer = provider.tracer("attachment-gateway");
    // Only what the exported spans use. Context activation would push and pop an
    // OpenTelemetry context on every poll of every instrumented future, and nothing
    // here reads the active context (the upstream client injects from its span);
    // busy/idle timing, thread ids and source locations are per-span work no
    // dashboard asks for. Per-span work saved; a few per cent of a unary call at
    // most (BENCHMARKS.md).
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
    let cx = match ids_of(span) {
        Some(sc) => OtelContext::new().with_remote_span_context(sc),
        None => span.context(),
    };
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Reads W3C trace context from incoming HTTP headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Makes `span` a child of the caller's trace (its `traceparent`, when valid) and
/// returns the span's trace id (`None` when no tracing is installed).
pub fn adopt_caller_trace(span: &tracing::Span, headers: &http::HeaderMap) -> Option<TraceId> {
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let remote = parent.span().span_context().clone();
    let mut light = None;
    span.with_subscriber(|(id, dispatch)| {
        if let Some(data) = registry(dispatch).and_then(|r| r.span_data(id)) {
            let mut ext = data.extensions_mut();
            if let Some(ids) = ext.get_mut::<SpanContext>() {
                if remote.is_valid() {
                    *ids = SpanContext::new(
                        remote.trace_id(),
                        ids.span_id(),
                        remote.trace_flags(),
                        false,
                        remote.trace_state().clone(),
                    );
                }
                light = Some(ids.trace_id());
            }
        }
    });
    if light.is_some() {
        return light;
    }
    let _ = span.set_parent(parent);
    let trace_id = span.context().span().span_context().trace_id();
    (trace_id != TraceId::INVALID).then_some(trace_id)
}

fn registry(dispatch: &Dispatch) -> Option<&Registry> {
    dispatch.downcast_ref::<Registry>()
}

/// The trace id of `span` (lowercase hex), for log lines that name it; `None`
/// when no tracing is installed.
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let id = match ids_of(span) {
        Some(ids) => ids.trace_id(),
        None => span.context().span().span_context().trace_id(),
    };
    (id != TraceId::INVALID).then(|| id.to_string())
}

/// The trace context the light layer keeps for `span`, if it is installed.
fn ids_of(span: &tracing::Span) -> Option<SpanContext> {
    span.with_subscriber(|(id, dispatch)| {
        registry(dispatch)
            .and_then(|r| r.span_data(id))
            .and_then(|d| d.extensions().get::<SpanContext>().cloned())
    })
    .flatten()
}

/// Without an exporter: gives every span a trace context (a new trace for a root
/// span, the parent's trace otherwise) and nothing else.
struct TraceIdLayer;

fn random_nonzero<T>(make: impl Fn(u128) -> T, invalid: T) -> T
where
    T: PartialEq,
{
    loop {
        let v = make(fastrand::u128(..));
        if v != invalid {
            return v;
        }
    }
}

impl<S> Layer<S> for TraceIdLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, _attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = span
            .parent()
            .and_then(|p| p.extensions().get::<SpanContext>().cloned());
        let span_id = random_nonzero(|v| SpanId::from(v as u64), SpanId::INVALID);
        let ids = match parent {
            Some(p) => SpanContext::new(
                p.trace_id(),
                span_id,
                p.trace_flags(),
                false,
                p.trace_state().clone(),
            ),
            None => SpanContext::new(
                random_nonzero(TraceId::from, TraceId::INVALID),
                span_id,
                TraceFlags::default(),
                false,
                TraceState::default(),
            ),
        };
        span.extensions_mut().insert(ids);
    }
}
