//! The server span, access log and metrics of every call, as a tower layer.
//!
//! The span follows the OpenTelemetry RPC conventions (`rpc.system`, `rpc.service`,
//! `rpc.method`, `rpc.grpc.status_code`); its parent is the caller's W3C
//! `traceparent` when one came with the call. It lives until the last byte of the
//! answer, so streaming calls are timed to the end and carry their final status.
//!
//! This layer runs before authentication: the path names a method from the fixed
//! set in [`crate::methods`] (any other path is `unknown`), so no caller can add a
//! label value, a span name or a metric series.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;
use tonic::{Code, Status};
use tower::{Layer, Service};
use tracing::Instrument;
use tracing::field::Empty;

use super::{BoxFuture, Response};
use crate::metrics::{MethodLabel, Metrics, RpcLabels};

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = ObserveService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ObserveService {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct ObserveService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// Records the end of a call once: status on the span, metrics, access log.
struct Finish {
    span: tracing::Span,
    start: Instant,
    method: &'static str,
    metrics: Arc<Metrics>,
}

impl Finish {
    fn finish(self, code: Code) {
        let elapsed = self.start.elapsed();
        self.span.record("rpc.grpc.status_code", code as i32);
        if code != Code::Ok {
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .rpc_requests
            .get_or_create(&RpcLabels {
                method: self.method.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
        self.metrics
            .rpc_duration
            .get_or_create(&MethodLabel {
                method: self.method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
        self.span.in_scope(|| {
            tracing::info!(code = ?code, elapsed_ms = elapsed.as_secs_f64() * 1e3, "call finished");
        });
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from_i32)
}

/// The answer's body, watched for the trailers that carry the final status.
pub struct ObservedBody {
    inner: tonic::body::Body,
    finish: Option<Finish>,
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref()
                    && let Some(f) = self.finish.take()
                {
                    f.finish(grpc_status(t).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => {
                if let Some(f) = self.finish.take() {
                    f.finish(Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        // The caller went away before the end.
        if let Some(f) = self.finish.take() {
            f.finish(Code::Cancelled);
        }
    }
}

impl<S, B> Service<http::Request<B>> for ObserveService<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = crate::methods::method(req.uri().path());
        if method.access == crate::methods::Access::Open {
            // Health probes every few seconds: neither spans nor metrics.
            return Box::pin(self.inner.call(req));
        }
        let span = tracing::info_span!(
            "grpc",
            otel.name = %format_args!("{}/{}", method.service, method.name),
            otel.kind = "server",
            otel.status_code = Empty,
            rpc.system = "grpc",
            rpc.service = method.service,
            rpc.method = method.name,
            rpc.grpc.status_code = Empty,
            caller = Empty,
            work_order_id = Empty,
            upload.bytes = Empty,
            trace_id = Empty,
        );
        if let Some(trace_id) = crate::telemetry::adopt_caller_trace(&span, req.headers()) {
            span.record("trace_id", tracing::field::display(trace_id));
        }
        let finish = Finish {
            span: span.clone(),
            start: Instant::now(),
            method: method.name,
            metrics: Arc::clone(&self.metrics),
        };
        let fut = self.inner.call(req).instrument(span);
        Box::pin(async move {
            let resp = fut.await?;
            if let Some(code) = grpc_status(resp.headers()) {
                // Trailers-only answer: the call is over.
                finish.finish(code);
                return Ok(resp);
            }
            Ok(resp.map(|inner| {
                tonic::body::Body::new(ObservedBody {
                    inner,
                    finish: Some(finish),
                })
            }))
        })
    }
}
