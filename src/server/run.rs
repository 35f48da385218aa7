//! Running a built gateway (linkerd's `App::spawn`): the admin and webhook
//! ports, the reloads, then gRPC with health SERVING; on the shutdown signal
//! the drain: NOT_SERVING, the listener open for `server.drain_delay`, then
//! closed (watches end), `server.shutdown_grace` for the calls in flight, then
//! the cut.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::build::Gateway;
use super::error::ServeError;
use crate::admin::Readiness;
use crate::api::AttachmentApi;
use crate::proto::wire::attachment_service_server::AttachmentServiceServer;

/// The health service name that stays SERVING until the process exits, for
/// liveness probes; `""` and the AttachmentService turn NOT_SERVING on shutdown.
pub const LIVENESS_SERVICE: &str = "liveness";

/// After the grace period, how long cut calls get to send their final status.
const CUT_LINGER: Duration = Duration::from_secs(2);

impl Gateway {
    /// Serves until `shutdown` completes, then drains and stops.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let readiness = Arc::new(Readiness::default());
        if let Some(admin) = self.admin {
            if let Ok(addr) = admin.listener.local_addr() {
                tracing::info!(%addr, "metrics on http://{addr}/metrics");
            }
            let metrics = Arc::clone(&self.metrics);
            crate::admin::serve(
                admin.listener,
                metrics,
                Arc::clone(&readiness),
                admin.limits,
            );
        }
        if let Some((hooks, listener)) = self.webhooks {
            if let Ok(addr) = listener.local_addr() {
                let path = crate::webhooks::PATH;
                tracing::info!(%addr, path, "webhooks on http://{addr}{path}");
            }
            hooks.serve(listener);
        }
        self.authenticator.keep_fresh();
        // Forget the buckets of callers gone quiet, so memory stays bounded.
        crate::periodic::every(&self.callers, Duration::from_secs(60), |l| async move {
            l.forget_idle()
        });

        let (health, health_service) = tonic_health::server::health_reporter();
        serving(&health, &readiness, true).await;
        // For liveness probes: stays SERVING while draining (the process is alive).
        health
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let incoming = crate::listener::accept(
            "grpc",
            self.grpc.listener,
            self.tls,
            self.grpc.limits,
            self.metrics,
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let server = self
            .router
            .add_service(health_service)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stopped.await;
            });
        tokio::pin!(server);
        tokio::pin!(shutdown);
        tokio::select! {
            r = &mut server => return r.map_err(Into::into),
            () = &mut shutdown => {}
        }

        tracing::info!("shutdown requested: health is NOT_SERVING");
        serving(&health, &readiness, false).await;
        if !self.drain_delay.is_zero() {
            tokio::select! {
                r = &mut server => return r.map_err(Into::into),
                () = tokio::time::sleep(self.drain_delay) => {}
            }
        }
        let grace = self.shutdown_grace;
        tracing::info!(?grace, "closing the listener; in-flight calls may finish");
        let _ = stop.send(());
        self.bounds.closing.cancel();
        if let Ok(r) = tokio::time::timeout(grace, &mut server).await {
            return r.map_err(Into::into);
        }
        // Calls still running end with UNAVAILABLE; their upstream requests are
        // aborted. Give that a moment to reach the callers, then stop.
        tracing::warn!("the grace period passed: ending the calls still in flight");
        self.bounds.cut.cancel();
        match tokio::time::timeout(CUT_LINGER, &mut server).await {
            Ok(r) => r.map_err(Into::into),
            Err(_) => Ok(()),
        }
    }
}

/// Health (`""` and the AttachmentService) and `/readyz` say whether new
/// calls are welcome.
async fn serving(health: &HealthReporter, readiness: &Readiness, yes: bool) {
    let status = if yes {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    health
        .set_service_status(
            <AttachmentServiceServer<AttachmentApi> as tonic::server::NamedService>::NAME,
            status,
        )
        .await;
    health.set_service_status("", status).await;
    readiness.set(yes);
}
