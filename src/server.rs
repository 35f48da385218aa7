//! Builds and runs the gRPC server: the AttachmentService, `grpc.health.v1` health,
//! reflection v1 and v1alpha, HTTP/2 limits, and graceful shutdown: on the signal,
//! health turns NOT_SERVING, the listener closes after `server.drain_delay`, and
//! in-flight calls get `server.shutdown_grace` to finish before they are cut (a cut
//! upload aborts its upstream request, so nothing partial is stored). Watches,
//! which never finish by themselves, end as the listener closes
//! (UNAVAILABLE `GATEWAY_SHUTTING_DOWN`; callers resume elsewhere from their cursor).

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::admin::Readiness;
use crate::api::writes::Writes;
use crate::api::{AttachmentApi, Bounds, Downloads, Paths, Runtime, Timeouts, Uploads, Watches};
use crate::auth::{AuthConfig, Authenticator};
use crate::config::Settings;
use crate::limits::{CallerLimits, UpstreamBudget};
use crate::listener::ConnLimits;
use crate::metrics::Metrics;
use crate::middleware::auth::Auth;
use crate::middleware::gate::GateLayer;
use crate::middleware::message_limit::{MessageLimitLayer, MessageLimits};
use crate::middleware::observe::ObserveLayer;
use crate::middleware::rate_limit::RateLimit;
use crate::proto::FILE_DESCRIPTOR_SET;
use crate::proto::wire::attachment_service_server::AttachmentServiceServer;
use crate::recorder::Recorder;
use crate::store::Stores;
use crate::store::event_log::Retention;
use crate::upstream::{Upstream, UpstreamError};
use crate::webhooks::Webhooks;

/// The health service name that stays SERVING until the process exits, for
/// liveness probes; `""` and the AttachmentService turn NOT_SERVING on shutdown.
pub const LIVENESS_SERVICE: &str = "liveness";

/// After the grace period, how long cut calls get to send their final status.
const CUT_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// HTTP/2 DATA frames up to 512 KiB instead of 16 KiB: a 256 KiB chunk (the usual
/// size) with its gRPC and protobuf framing fits one frame. At 256 KiB each message
/// spanned two frames, tonic's decode buffer doubled to hold them, and every chunk
/// in flight pinned a 512 KiB allocation (peak RSS of 32 concurrent uploads ~1.8x).
const MAX_FRAME_SIZE: u32 = 512 * 1024;

/// Connections to the admin port at once (Prometheus and the kubelet's probes).
const ADMIN_MAX_CONNECTIONS: usize = 64;

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
    WebhookSetup(String),
    #[error("shared state: {0}")]
    SharedState(#[source] crate::store::redis::SetupError),
}

/// The sockets the gateway serves on. All of them are bound before anything says
/// the gateway is serving, so a failure to bind one stops it before that.
pub struct Listeners {
    pub grpc: TcpListener,
    /// The admin HTTP port (`/metrics`, probes); none when turned off.
    pub admin: Option<TcpListener>,
    /// CorrigoPro's notifications (`/webhooks/corrigopro`); none when turned off.
    pub webhooks: Option<TcpListener>,
}

impl Listeners {
    /// Binds `listen` and the admin address of the settings.
    pub async fn bind(settings: &Settings) -> Result<Self, ServeError> {
        let grpc = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| ServeError::Listen(settings.listen, e))?;
        Self::with_grpc(settings, grpc).await
    }

    /// Binds what the settings ask for besides the gRPC listener given.
    pub async fn with_grpc(settings: &Settings, grpc: TcpListener) -> Result<Self, ServeError> {
        Ok(Self {
            grpc,
            admin: bind_admin(settings).await?,
            webhooks: bind_webhooks(settings).await?,
        })
    }
}

/// The webhook listener: `webhooks.listen`; with `--sandbox` and none set, a free
/// loopback port (the emulator delivers its notifications there).
async fn bind_webhooks(settings: &Settings) -> Result<Option<TcpListener>, ServeError> {
    let addr = match settings.webhooks.listen {
        Some(a) => a,
        None if settings.sandbox.enabled => std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        None => return Ok(None),
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|e| ServeError::Webhooks(addr, e))
}

/// The admin listener. An address set explicitly must be bound. With `--sandbox`,
/// the default address gives way to a free port when it is taken (9090 is also
/// Prometheus's default), and the gateway serves without the admin port if even
/// that fails: a newcomer's first run should not fail over an address they never
/// asked for.
async fn bind_admin(settings: &Settings) -> Result<Option<TcpListener>, ServeError> {
    let Some(addr) = settings.telemetry.admin_listen else {
        return Ok(None);
    };
    match TcpListener::bind(addr).await {
        Ok(l) => Ok(Some(l)),
        Err(e) if settings.sandbox.enabled && !settings.explicit.admin_listen => {
            let free = std::net::SocketAddr::new(addr.ip(), 0);
            match TcpListener::bind(free).await {
                Ok(l) => {
                    tracing::warn!(%addr, error = %e, "the default admin address is taken: serving metrics on a free port instead");
                    Ok(Some(l))
                }
                Err(e2) => {
                    tracing::warn!(%addr, error = %e2, "cannot bind an admin port: serving without metrics");
                    Ok(None)
                }
            }
        }
        Err(e) => Err(ServeError::Admin(addr, e)),
    }
}

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

/// [`serve`] with the listeners and metrics given by the caller.
pub async fn serve_with(
    settings: Settings,
    listeners: Listeners,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let Listeners {
        grpc: listener,
        admin,
        webhooks,
    } = listeners;
    crate::upstream::install_crypto_provider();
    let m = Arc::clone(&metrics);
    let stores = Stores::open(
        &settings.shared_state,
        settings.upstream.idempotency_ttl,
        Retention::new(&settings.events, &settings.webhooks),
        Arc::new(move |purpose| m.shared_state_failed(purpose)),
    )
    .await
    .map_err(ServeError::SharedState)?;
    let budget = UpstreamBudget::with_redis(&settings.rate_limit, stores.redis.as_ref());
    let rt = Runtime {
        upstream: Arc::new(Upstream::new(
            &settings.upstream,
            Arc::new(budget),
            Arc::clone(&metrics),
        )?),
        recorder: Recorder::new(stores.log, Arc::clone(&metrics)),
        bounds: Bounds::default(),
        metrics: Arc::clone(&metrics),
    };
    let writes = Writes::new(stores.writes, &settings.upstream);
    let paths = Paths {
        uploads: Uploads::new(&rt, &settings.limits, &settings.rate_limit, writes.clone()),
        downloads: Downloads::new(&rt, &settings.limits, &settings.rate_limit),
        watches: Watches::new(&rt, &settings.events),
        writes,
    };
    let recorder = rt.recorder.clone();
    let bounds = rt.bounds.clone();
    let api = AttachmentApi::new(rt, Timeouts::from(&settings.upstream), paths);
    if let Some(listener) = webhooks {
        // The sandbox's key is public: its certificate is trusted only on a
        // loopback listener, never on an address others can reach.
        let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
        let trusted_pem =
            (settings.sandbox.enabled && !settings.explicit.webhooks_verification && loopback)
                .then_some(crate::sandbox::NOTIFIER_CERT_PEM);
        let hooks = Webhooks::new(
            &settings.webhooks,
            trusted_pem,
            recorder,
            Arc::clone(&metrics),
        )
        .map_err(ServeError::WebhookSetup)?;
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, path = crate::webhooks::PATH, "webhooks on http://{addr}{}", crate::webhooks::PATH);
        }
        hooks.serve(listener);
    }
    let message_limits = MessageLimits::from(&settings.limits);
    let service = AttachmentServiceServer::new(api).max_decoding_message_size(message_limits.chunk);
    let authenticator = Arc::new(
        Authenticator::start(AuthConfig {
            settings: &settings.auth,
            mtls: settings.tls.mtls(),
            anonymous: settings.unauthenticated_allowed(),
            public_reflection: settings.reflection_public(),
            metrics: Arc::clone(&metrics),
        })
        .await
        .map_err(ServeError::Auth)?,
    );
    let caller_limits = CallerLimits::with_redis(&settings.rate_limit, stores.redis.as_ref());
    let caller_limits = Arc::new(caller_limits);
    // Forget the buckets of callers gone quiet, so memory stays bounded.
    crate::periodic::every(
        &caller_limits,
        std::time::Duration::from_secs(60),
        |l| async move { l.forget_idle() },
    );
    let readiness = Arc::new(Readiness::default());
    if let Some(admin) = admin {
        if let Ok(addr) = admin.local_addr() {
            tracing::info!(%addr, "metrics on http://{addr}/metrics");
        }
        crate::admin::serve(
            admin,
            Arc::clone(&metrics),
            Arc::clone(&readiness),
            ConnLimits {
                max_connections: ADMIN_MAX_CONNECTIONS,
                handshake_timeout: settings.server.handshake_timeout,
                idle_timeout: settings.server.idle_timeout,
            },
        );
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AttachmentServiceServer<AttachmentApi>>()
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
    readiness.set(true);
    // For liveness probes: stays SERVING while draining (the process is alive).
    health
        .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
        .await;

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
    let layers = tower::ServiceBuilder::new()
        .layer(ObserveLayer::new(Arc::clone(&metrics)))
        .layer(MessageLimitLayer::new(message_limits))
        .layer(GateLayer::new(Auth::new(
            authenticator,
            Arc::clone(&metrics),
        )))
        .layer(GateLayer::new(RateLimit::new(
            caller_limits,
            Arc::clone(&metrics),
        )))
        .into_inner();
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(s.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(s.http2_keepalive_timeout))
        .max_concurrent_streams(s.max_concurrent_streams)
        .http2_max_header_list_size(16 * 1024)
        .initial_stream_window_size(s.http2_stream_window)
        .initial_connection_window_size(s.http2_connection_window)
        .max_frame_size(MAX_FRAME_SIZE);
    if let Some(age) = s.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    let router = builder
        .layer(layers)
        .add_service(health_service)
        .add_service(service)
        .add_optional_service(reflection_v1)
        .add_optional_service(reflection_v1alpha);

    let tls = crate::tls::acceptor(&settings.tls).map_err(ServeError::Tls)?;
    let incoming = crate::listener::accept(
        "grpc",
        listener,
        tls,
        ConnLimits {
            max_connections: s.max_connections as usize,
            handshake_timeout: s.handshake_timeout,
            idle_timeout: s.idle_timeout,
        },
        Arc::clone(&metrics),
    );
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
    readiness.set(false);
    if !s.drain_delay.is_zero() {
        tokio::select! {
            r = &mut server => return r.map_err(Into::into),
            () = tokio::time::sleep(s.drain_delay) => {}
        }
    }
    tracing::info!(grace = ?s.shutdown_grace, "closing the listener; in-flight calls may finish");
    let _ = stop_tx.send(());
    bounds.closing.cancel();
    match tokio::time::timeout(s.shutdown_grace, &mut server).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            // Calls still running end with UNAVAILABLE; their upstream requests are
            // aborted. Give that a moment to reach the callers, then stop.
            tracing::warn!("the grace period passed: ending the calls still in flight");
            bounds.cut.cancel();
            match tokio::time::timeout(CUT_LINGER, &mut server).await {
                Ok(r) => r.map_err(Into::into),
                Err(_) => Ok(()),
            }
        }
    }
}
