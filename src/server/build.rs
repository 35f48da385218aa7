//! Wiring a gateway from its settings (linkerd's `Config::build`): what the
//! settings alone decide first, then who calls (authentication), the state
//! replicas share, the runtime every path shares, the service and its layers,
//! and the gRPC port's TLS. Nothing is served yet: [`Gateway::run`] does that.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tower::layer::util::{Identity, Stack};

use super::error::ServeError;
use super::listeners::Listeners;
use crate::api::writes::Writes;
use crate::api::{
    AttachmentApi, Bounds, DirectDownloads, Downloads, Paths, Runtime, Timeouts, Uploads, Watches,
};
use crate::auth::{AuthConfig, Authenticator};
use crate::config::{ServerSettings, Settings};
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
use crate::upstream::Upstream;
use crate::webhooks::Webhooks;

/// HTTP/2 DATA frames up to 512 KiB instead of 16 KiB: a 256 KiB chunk (the usual
/// size) with its gRPC and protobuf framing fits one frame. At 256 KiB each message
/// spanned two frames, tonic's decode buffer doubled to hold them, and every chunk
/// in flight pinned a 512 KiB allocation (peak RSS of 32 concurrent uploads ~1.8x).
const MAX_FRAME_SIZE: u32 = 512 * 1024;

/// Connections to the admin port at once (Prometheus and the kubelet's probes).
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The layers every call passes, outermost first (see [`Gateway::build`]).
type Layers = Stack<
    GateLayer<RateLimit>,
    Stack<GateLayer<Auth>, Stack<MessageLimitLayer, Stack<ObserveLayer, Identity>>>,
>;

/// A port: its listener and what its connections are held to.
pub(super) struct Port {
    pub(super) listener: TcpListener,
    pub(super) limits: ConnLimits,
}

impl Port {
    /// `max_connections` at once, within the server's handshake and idle timeouts.
    fn new(listener: TcpListener, s: &ServerSettings, max_connections: usize) -> Self {
        let limits = ConnLimits {
            max_connections,
            handshake_timeout: s.handshake_timeout,
            idle_timeout: s.idle_timeout,
        };
        Self { listener, limits }
    }
}

/// A gateway wired from its settings, serving nothing yet; [`Gateway::run`]
/// serves it until shutdown.
pub struct Gateway {
    pub(super) router: Router<Stack<Layers, Identity>>,
    pub(super) grpc: Port,
    pub(super) tls: Option<TlsAcceptor>,
    /// The admin port (`/metrics`, probes), when on.
    pub(super) admin: Option<Port>,
    /// CorrigoPro's notifications, when on.
    pub(super) webhooks: Option<(Webhooks, TcpListener)>,
    /// Reloads its keys while the gateway runs.
    pub(super) authenticator: Arc<Authenticator>,
    /// Forgets the callers gone quiet while the gateway runs.
    pub(super) callers: Arc<CallerLimits>,
    pub(super) bounds: Bounds,
    pub(super) metrics: Arc<Metrics>,
    pub(super) drain_delay: Duration,
    pub(super) shutdown_grace: Duration,
}

impl Gateway {
    /// Wires everything the settings ask for, on the listeners given. Fails
    /// on what cannot work (a key file, Redis, TLS) before anything is served.
    pub async fn build(
        settings: Settings,
        listeners: Listeners,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServeError> {
        crate::upstream::install_crypto_provider();
        // What the settings alone decide.
        let s = &settings;
        metrics.shared_state_configured(s.shared_state.redis_url.is_some());
        metrics.webhook_listener_enabled(listeners.webhooks.is_some());
        if let Some(t) = crate::tls::certificate_not_after(&s.tls) {
            metrics.tls_certificate_not_after(t);
        }
        let server = http2(&s.server);
        let reflection = reflection(&s.server)?;
        let message_limits = MessageLimits::from(&s.limits);
        let max_connections = s.server.max_connections as usize;
        let grpc = Port::new(listeners.grpc, &s.server, max_connections);
        let admin = (listeners.admin).map(|l| Port::new(l, &s.server, ADMIN_MAX_CONNECTIONS));
        let trusted_pem = trusted_notifier(s, listeners.webhooks.as_ref());
        let auth = auth_config(s, &metrics);

        // Who calls: the JWKS and the API keys must load now.
        let authenticator = Arc::new(Authenticator::start(auth).await.map_err(ServeError::Auth)?);
        // The state replicas share (in Redis, or in this process), and what
        // every path shares.
        let m = Arc::clone(&metrics);
        let stores = Stores::open(
            &s.shared_state,
            s.upstream.idempotency_ttl,
            Retention::new(&s.events, &s.webhooks),
            Arc::new(move |purpose| m.shared_state_failed(purpose)),
        )
        .await
        .map_err(ServeError::SharedState)?;
        let budget = UpstreamBudget::with_redis(&s.rate_limit, stores.redis.as_ref());
        let rt = Runtime {
            upstream: Arc::new(Upstream::new(
                &s.upstream,
                Arc::new(budget),
                Arc::clone(&metrics),
            )?),
            recorder: Recorder::new(stores.log, Arc::clone(&metrics)),
            bounds: Bounds::default(),
            metrics: Arc::clone(&metrics),
        };
        let webhooks = match listeners.webhooks {
            Some(listener) => Some((
                Webhooks::new(
                    &s.webhooks,
                    trusted_pem,
                    rt.recorder.clone(),
                    Arc::clone(&metrics),
                )
                .map_err(ServeError::WebhookSetup)?,
                listener,
            )),
            None => None,
        };

        // The AttachmentService, each path from the sections it needs.
        let writes = Writes::new(stores.writes, &s.upstream, &rt);
        let paths = Paths {
            uploads: Uploads::new(&rt, &s.limits, &s.rate_limit, writes.clone()),
            downloads: Downloads::new(&rt, &s.limits, &s.rate_limit),
            watches: Watches::new(&rt, &s.events),
            writes,
        };
        let bounds = rt.bounds.clone();
        let api = Arc::new(AttachmentApi::new(rt, Timeouts::from(&s.upstream), paths));
        // DownloadAttachment is answered outside tonic's encoder (no copy of its
        // bytes); every other method by the generated service.
        let service = DirectDownloads::new(
            AttachmentServiceServer::from_arc(Arc::clone(&api))
                .max_decoding_message_size(message_limits.chunk),
            api,
            message_limits.chunk,
        );

        // The layers every call passes, outermost first.
        let callers = Arc::new(CallerLimits::with_redis(
            &s.rate_limit,
            stores.redis.as_ref(),
        ));
        let layers = tower::ServiceBuilder::new()
            // Every call is traced and counted, refused ones too.
            .layer(ObserveLayer::new(Arc::clone(&metrics)))
            // Oversized messages are refused before anything reads them.
            .layer(MessageLimitLayer::new(message_limits))
            // Who calls, and may they (health, and public reflection, skip it).
            .layer(GateLayer::new(Auth::new(
                Arc::clone(&authenticator),
                Arc::clone(&metrics),
            )))
            // Each caller's rate, once the caller is known.
            .layer(GateLayer::new(RateLimit::new(
                Arc::clone(&callers),
                Arc::clone(&metrics),
            )))
            .into_inner();
        let mut server = server.layer(layers);
        let router = server.add_routes(reflection).add_service(service);

        Ok(Self {
            router,
            tls: crate::tls::acceptor(&s.tls).map_err(ServeError::Tls)?,
            grpc,
            admin,
            webhooks,
            authenticator,
            callers,
            bounds,
            metrics,
            drain_delay: s.server.drain_delay,
            shutdown_grace: s.server.shutdown_grace,
        })
    }
}

/// The HTTP/2 server and its limits.
fn http2(s: &ServerSettings) -> Server {
    let builder = Server::builder()
        .http2_keepalive_interval(Some(s.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(s.http2_keepalive_timeout))
        .max_concurrent_streams(s.max_concurrent_streams)
        .http2_max_header_list_size(16 * 1024)
        .initial_stream_window_size(s.http2_stream_window)
        .initial_connection_window_size(s.http2_connection_window)
        .max_frame_size(MAX_FRAME_SIZE);
    match s.max_connection_age {
        Some(age) => builder.max_connection_age(age),
        None => builder,
    }
}

/// Reflection v1 and v1alpha (grpcurl 1.8 speaks only v1alpha), when on.
fn reflection(s: &ServerSettings) -> Result<Routes, ServeError> {
    if !s.reflection {
        return Ok(Routes::default());
    }
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // So grpcurl and other reflection clients can decode error details.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    Ok(Routes::new(builder().build_v1()?).add_service(builder().build_v1alpha()?))
}

/// The certificate of the sandbox's notifier, trusted on a loopback webhook
/// listener when the sandbox runs and no verification was configured. Its key
/// is public: never on an address others can reach.
fn trusted_notifier(s: &Settings, webhooks: Option<&TcpListener>) -> Option<&'static str> {
    let loopback = webhooks
        .and_then(|l| l.local_addr().ok())
        .is_some_and(|a| a.ip().is_loopback());
    (s.sandbox.enabled && !s.explicit.webhooks_verification && loopback)
        .then_some(crate::sandbox::NOTIFIER_CERT_PEM)
}

/// What authentication is asked to do: its section, and what the other
/// sections decide for it.
fn auth_config<'a>(s: &'a Settings, metrics: &Arc<Metrics>) -> AuthConfig<'a> {
    AuthConfig {
        settings: &s.auth,
        mtls: s.tls.mtls(),
        anonymous: s.unauthenticated_allowed(),
        public_reflection: s.reflection_public(),
        metrics: Arc::clone(metrics),
    }
}
