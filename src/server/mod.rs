//! The gateway's two phases (linkerd's `Config::build() -> App`, `App::spawn()`):
//! [`Gateway::build`] wires everything from the settings (authentication, the
//! stores, the runtime the paths share, the AttachmentService and its layers,
//! reflection v1 and v1alpha, HTTP/2 limits, TLS) and fails on what cannot
//! work before anything is served; [`Gateway::run`] serves: the admin and
//! webhook ports, the reloads, gRPC with `grpc.health.v1`, and graceful
//! shutdown: on the signal, health turns NOT_SERVING, the listener closes after
//! `server.drain_delay`, and in-flight calls get `server.shutdown_grace` to
//! finish before they are cut (a cut upload aborts its upstream request, so
//! nothing partial is stored). Watches, which never finish by themselves, end as
//! the listener closes (UNAVAILABLE `GATEWAY_SHUTTING_DOWN`; callers resume
//! elsewhere from their cursor).

mod build;
mod error;
mod listeners;
mod run;

use std::sync::Arc;

use tokio::net::TcpListener;

pub use self::build::Gateway;
pub use self::error::ServeError;
pub use self::listeners::Listeners;
pub use self::run::LIVENESS_SERVICE;
use crate::config::Settings;
use crate::metrics::Metrics;

/// Serves until `shutdown` completes, then drains as described above. Binds the
/// admin (metrics) port from the settings.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let listeners = Listeners::with_grpc(&settings, listener).await?;
    serve_with(settings, listeners, Arc::new(Metrics::new()), shutdown).await
}

/// [`serve`] with the listeners and metrics given by the caller: the gateway
/// is built, then run.
pub async fn serve_with(
    settings: Settings,
    listeners: Listeners,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    Gateway::build(settings, listeners, metrics)
        .await?
        .run(shutdown)
        .await
}
