//! Builds and runs the gRPC server: the AttachmentService, `grpc.health.v1` health,
//! reflection v1 and v1alpha, HTTP/2 limits, and graceful shutdown: on the signal,
//! health turns NOT_SERVING, the listener closes after `server.drain_delay`, and
//! in-flight calls get `server.shutdown_grace` to finish before they are cut (a cut
//! upload aborts its upstream request, so nothing partial is stored).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;

use crate::api::{ApiLimits, AttachmentApi};
use crate::config::Settings;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::attachment_service_server::AttachmentServiceServer;
use crate::upstream::{Upstream, UpstreamError};

/// After the grace period, how long cut calls get to send their final status.
const CUT_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// Room in a decoded message beyond the chunk itself (field tags, metadata).
const MESSAGE_OVERHEAD: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot set up the upstream client: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("cannot build reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves until `shutdown` completes, then drains as described above.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let upstream = Arc::new(Upstream::new(&settings.upstream)?);
    let cut = CancellationToken::new();
    let api = AttachmentApi::new(upstream, ApiLimits::from_settings(&settings), cut.clone());
    let max_message = usize::try_from(settings.limits.max_chunk_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(MESSAGE_OVERHEAD);
    let service = AttachmentServiceServer::new(api).max_decoding_message_size(max_message);

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AttachmentServiceServer<AttachmentApi>>()
        .await;
    health.set_service_status("", ServingStatus::Serving).await;

    let (reflection_v1, reflection_v1alpha) = if settings.server.reflection {
        (
            Some(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    // So grpcurl and other reflection clients can decode error details.
                    .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                    .build_v1()?,
            ),
            Some(
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                    // So grpcurl and other reflection clients can decode error details.
                    .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
                    .build_v1alpha()?,
            ),
        )
    } else {
        (None, None)
    };

    let s = &settings.server;
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(s.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(s.http2_keepalive_timeout))
        .max_concurrent_streams(s.max_concurrent_streams)
        .http2_max_header_list_size(16 * 1024)
        .initial_stream_window_size(1024 * 1024)
        .initial_connection_window_size(4 * 1024 * 1024);
    if let Some(age) = s.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    let router = builder
        .add_service(health_service)
        .add_service(service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha);

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = router.serve_with_incoming_shutdown(incoming, async {
        let _ = stop_rx.await;
    });
    tokio::pin!(server);
    tokio::pin!(shutdown);

    tokio::select! {
        r = &mut server => return r.map_err(Into::into),
        () = &mut shutdown => {}
    }
    tracing::info!("shutdown requested: health is NOT_SERVING");
    health
        .set_not_serving::<AttachmentServiceServer<AttachmentApi>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    if !s.drain_delay.is_zero() {
        tokio::select! {
            r = &mut server => return r.map_err(Into::into),
            () = tokio::time::sleep(s.drain_delay) => {}
        }
    }
    tracing::info!(grace = ?s.shutdown_grace, "closing the listener; in-flight calls may finish");
    let _ = stop_tx.send(());
    match tokio::time::timeout(s.shutdown_grace, &mut server).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            // Calls still running end with UNAVAILABLE; their upstream requests are
            // aborted. Give that a moment to reach the callers, then stop.
            tracing::warn!("the grace period passed: ending the calls still in flight");
            cut.cancel();
            match tokio::time::timeout(CUT_LINGER, &mut server).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Ok(()),
            }
        }
    }
}
