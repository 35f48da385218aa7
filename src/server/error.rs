//! Why the gateway could not start, or stopped serving.

use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot set up the upstream client: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("cannot build reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("authentication setup: {0}")]
    Auth(#[source] crate::auth::SetupError),
    #[error("TLS setup: {0}")]
    Tls(#[source] crate::tls::TlsError),
    #[error(
        "cannot listen on {0}: {1} (choose another address with --listen or ATTACHMENT_GATEWAY_LISTEN; port 0 picks a free one)"
    )]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
    #[error(
        "cannot listen on the admin address {0}: {1} (choose another with --admin-listen or ATTACHMENT_GATEWAY_TELEMETRY__ADMIN_LISTEN; port 0 picks a free one)"
    )]
    Admin(std::net::SocketAddr, #[source] std::io::Error),
    #[error(
        "cannot listen on the webhook address {0}: {1} (choose another with --webhook-listen or ATTACHMENT_GATEWAY_WEBHOOKS__LISTEN; port 0 picks a free one)"
    )]
    Webhooks(std::net::SocketAddr, #[source] std::io::Error),
    #[error("webhooks: {0}")]
    WebhookSetup(#[source] crate::webhooks::SetupError),
    #[error("shared state: {0}")]
    SharedState(#[source] crate::store::redis::SetupError),
}
