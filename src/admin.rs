//! The admin HTTP port: Prometheus `/metrics`, and the probes, which must work
//! whatever the gRPC port asks of its callers (TLS, client certificates): the
//! kubelet's probes speak plain HTTP without a certificate.
//!
//! - `/livez` (and `/healthz`): 200 while the process serves, draining included.
//! - `/readyz`: 200 while the gateway takes calls; 503 from the moment it starts
//!   draining on SIGTERM, so load balancers stop sending new calls.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::listener::ConnLimits;
use crate::metrics::Metrics;

/// Whether the gateway takes new calls (what `/readyz` says).
#[derive(Debug, Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Serves the admin routes on `listener` until the process ends.
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    limits: ConnLimits,
) {
    let m = Arc::clone(&metrics);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = Arc::clone(&m);
                async move {
                    (
                        [(
                            http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.render(),
                    )
                }
            }),
        )
        .route("/livez", get(|| async { "ok\n" }))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.get();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "not ready: draining or starting\n",
                        )
                    }
                }
            }),
        );
    crate::listener::serve_http("admin", listener, app, limits, metrics);
}
