//! The embedded CorrigoPro emulator: the same HTTP contract as the Direct API's
//! attachments endpoints (token endpoint, list, upload, update, delete, download
//! link), its error body and codes, signed download links that expire, work orders
//! in states that refuse uploads, and the 20 MiB limit. Files live in memory.
//!
//! It is what `attachment-gateway --sandbox` talks to, and the upstream the
//! integration tests use. It listens on loopback only.

mod contract;
mod customer;
pub mod notifier;
mod routes;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::config::UpstreamSettings;
use crate::secret::Secret;

/// The sandbox's client id; any other is refused.
pub const CLIENT_ID: &str = "sandbox-client";
/// The sandbox's client secret.
pub const CLIENT_SECRET: &str = "sandbox-secret";
/// The certificate of the key the sandbox signs its notifications with: trusted
/// by the gateway in sandbox mode. Public; protects nothing outside the sandbox.
pub const NOTIFIER_CERT_PEM: &str = include_str!("keys/notifier-cert.pem");
/// The sandbox's notification signing key (PKCS#8). Public on purpose.
pub const NOTIFIER_KEY_PEM: &str = include_str!("keys/notifier-key.pem");
/// The path prefix of the API, as in the production base URL (`…/Direct`).
pub const API_PREFIX: &str = "/Direct";

#[derive(Debug, Clone)]
pub struct SandboxConfig {
    pub listen: SocketAddr,
    pub token_ttl: Duration,
    pub link_ttl: Duration,
    pub max_file_bytes: u64,
    /// Start with the seeded work orders (see [`seed`]).
    pub seed: bool,
    /// Faults to inject (tests); none by default.
    pub faults: Option<Faults>,
    /// How long a "minute" of the notification retry schedule lasts.
    pub notification_retry_minute: Duration,
}

/// Seeded, reproducible faults for reliability tests.
#[derive(Debug, Clone, Copy)]
pub struct Faults {
    pub seed: u64,
    /// Chance that an API request is answered 503 before anything is done.
    pub unavailable: f64,
    /// Chance that an upload fails with 500 after part of its body was read
    /// (nothing is stored).
    pub fail_mid_upload: f64,
    /// Each API request is delayed by up to this many milliseconds.
    pub max_delay_ms: u64,
    /// Chance that a write (upload, update, delete) is applied and its answer
    /// then lost: the connection dropped without one, or a 502 (half each).
    pub lose_answer: f64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            token_ttl: contract::TOKEN_TTL,
            link_ttl: contract::LINK_TTL,
            max_file_bytes: contract::MAX_FILE_BYTES,
            seed: true,
            faults: None,
            notification_retry_minute: Duration::from_secs(1),
        }
    }
}

/// A stored attachment, as tests inspect it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredAttachment {
    pub attachment_id: String,
    pub work_order_id: i64,
    pub name: String,
    pub mime_type: String,
    pub document_type: Option<String>,
    pub visibility: String,
    pub performed_by_name: String,
    pub performed_by_phone: Option<String>,
    pub message_id: String,
    pub created: SystemTime,
    pub bytes: Bytes,
}

#[derive(Debug, Clone)]
pub struct WorkOrder {
    pub id: i64,
    pub status: String,
    pub attachments: Vec<StoredAttachment>,
}

/// What the sandbox has seen, for tests and the demo.
#[derive(Debug, Default)]
pub struct Counters {
    pub token_requests: AtomicU64,
    pub api_requests: AtomicU64,
    pub unauthorized: AtomicU64,
    pub uploads_started: AtomicU64,
    pub uploads_stored: AtomicU64,
    pub uploads_rejected: AtomicU64,
    /// Upload requests whose body broke off or was malformed.
    pub uploads_aborted: AtomicU64,
    pub downloads: AtomicU64,
    /// Download-link requests that carried an `Authorization` header (refused).
    pub downloads_with_credentials: AtomicU64,
    /// Faults injected (503s and mid-upload failures).
    pub faults_injected: AtomicU64,
    /// Writes applied whose answer was then lost (dropped or 502).
    pub answers_lost: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub token_requests: u64,
    pub api_requests: u64,
    pub unauthorized: u64,
    pub uploads_started: u64,
    pub uploads_stored: u64,
    pub uploads_rejected: u64,
    pub uploads_aborted: u64,
    pub downloads: u64,
    pub downloads_with_credentials: u64,
    pub faults_injected: u64,
    pub answers_lost: u64,
}

pub(crate) struct State {
    cfg: SandboxConfig,
    base_url: String,
    link_key: String,
    work_orders: Mutex<BTreeMap<i64, WorkOrder>>,
    /// Access token -> when it expires.
    tokens: Mutex<HashMap<String, tokio::time::Instant>>,
    counters: Counters,
    rng: Mutex<fastrand::Rng>,
    notifier: Arc<notifier::Notifier>,
    /// The id of the next work order the customer creates.
    next_work_order: std::sync::atomic::AtomicI64,
    /// Writes (by message id) whose answer is to be lost.
    lose_requests: Mutex<std::collections::VecDeque<(String, routes::lost::How)>>,
}

impl State {
    /// A draw in [0, 1) from the fault generator.
    pub(crate) fn roll(&self) -> f64 {
        self.rng.lock().map(|mut r| r.f64()).unwrap_or(1.0)
    }

    pub(crate) fn delay_ms(&self, max: u64) -> u64 {
        if max == 0 {
            return 0;
        }
        self.rng.lock().map(|mut r| r.u64(0..=max)).unwrap_or(0)
    }

    fn orders(&self) -> MutexGuard<'_, BTreeMap<i64, WorkOrder>> {
        self.work_orders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lose_requests(
        &self,
    ) -> MutexGuard<'_, std::collections::VecDeque<(String, routes::lost::How)>> {
        self.lose_requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn tokens(&self) -> MutexGuard<'_, HashMap<String, tokio::time::Instant>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Serves the emulator until `stopped`: HTTP/1.1 and HTTP/2 as axum does, and
/// a response marked [`routes::lost::DropConnection`] closes its connection
/// without being sent (an answer lost after the write was applied).
async fn serve(listener: TcpListener, app: axum::Router, stopped: oneshot::Receiver<()>) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    tokio::pin!(stopped);
    loop {
        let tcp = tokio::select! {
            a = listener.accept() => match a {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut stopped => return,
        };
        let service = LoseAnswers(app.clone());
        tokio::spawn(async move {
            let _ = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service))
                .await;
        });
    }
}

/// The router, but a response marked [`routes::lost::DropConnection`] becomes
/// an error: hyper then closes the connection without an answer.
#[derive(Clone)]
struct LoseAnswers(axum::Router);

impl<B> tower::Service<axum::http::Request<B>> for LoseAnswers
where
    B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        use tower::ServiceExt;
        let app = self.0.clone();
        Box::pin(async move {
            let resp = app
                .oneshot(req.map(axum::body::Body::new))
                .await
                .map_err(std::io::Error::other)?;
            if resp
                .extensions()
                .get::<routes::lost::DropConnection>()
                .is_some()
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the answer is lost (sandbox fault)",
                ));
            }
            Ok(resp)
        })
    }
}

/// The seeded work orders: a few in each kind of state.
pub fn seed() -> Vec<(i64, &'static str)> {
    vec![
        (1001, "Accepted"),
        (1002, "CheckedIn"),
        (1003, "Rejected"),
        (1004, "Recalled"),
        (1005, "New"),
        (1006, "OnHold"),
    ]
}

/// A running sandbox; stops when dropped.
pub struct Sandbox {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Option<oneshot::Sender<()>>,
}

impl Sandbox {
    pub async fn start(cfg: SandboxConfig) -> std::io::Result<Self> {
        if !cfg.listen.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the sandbox listens on loopback only",
            ));
        }
        let listener = TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let mut orders = BTreeMap::new();
        if cfg.seed {
            for (id, status) in seed() {
                orders.insert(
                    id,
                    WorkOrder {
                        id,
                        status: status.to_string(),
                        attachments: Vec::new(),
                    },
                );
            }
            if let Some(wo) = orders.get_mut(&1001) {
                wo.attachments.push(StoredAttachment {
                    attachment_id: "3f2b8c1e-5d4a-4e7b-9c61-0a1b2c3d4e5f".into(),
                    work_order_id: 1001,
                    name: "leak-under-sink.txt".into(),
                    mime_type: "text/plain".into(),
                    document_type: Some("Picture".into()),
                    visibility: "All".into(),
                    performed_by_name: "Customer".into(),
                    performed_by_phone: None,
                    message_id: "seed-1".into(),
                    created: SystemTime::now(),
                    bytes: Bytes::from_static(
                        b"Water is dripping from the trap under the kitchen sink.\n",
                    ),
                });
            }
        }
        let notifier = Arc::new(
            notifier::Notifier::new(NOTIFIER_KEY_PEM, cfg.notification_retry_minute)
                .map_err(std::io::Error::other)?,
        );
        let state = Arc::new(State {
            base_url: format!("http://{addr}"),
            link_key: uuid::Uuid::new_v4().to_string(),
            rng: Mutex::new(fastrand::Rng::with_seed(
                cfg.faults.map(|f| f.seed).unwrap_or(0),
            )),
            cfg,
            work_orders: Mutex::new(orders),
            tokens: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            notifier,
            next_work_order: std::sync::atomic::AtomicI64::new(2001),
            lose_requests: Mutex::new(std::collections::VecDeque::new()),
        });
        let app = routes::router(Arc::clone(&state));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, app, stopped));
        Ok(Self {
            addr,
            state,
            stop: Some(stop),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL (what `upstream.base_url` is set to).
    pub fn base_url(&self) -> String {
        format!("http://{}{API_PREFIX}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("http://{}/OAuth/Token", self.addr)
    }

    /// `base` with the upstream pointed at this sandbox and its credentials.
    pub fn upstream_settings(&self, base: &UpstreamSettings) -> UpstreamSettings {
        UpstreamSettings {
            base_url: self.base_url(),
            token_url: self.token_url(),
            client_id: CLIENT_ID.into(),
            client_secret: Secret::new(CLIENT_SECRET),
            client_secret_file: None,
            // The sandbox's storage is its own loopback address, over http.
            allow_private_download_addresses: true,
            allow_http_downloads: true,
            ..base.clone()
        }
    }

    pub fn stats(&self) -> Stats {
        let c = &self.state.counters;
        let g = |a: &AtomicU64| a.load(Ordering::SeqCst);
        Stats {
            token_requests: g(&c.token_requests),
            api_requests: g(&c.api_requests),
            unauthorized: g(&c.unauthorized),
            uploads_started: g(&c.uploads_started),
            uploads_stored: g(&c.uploads_stored),
            uploads_rejected: g(&c.uploads_rejected),
            uploads_aborted: g(&c.uploads_aborted),
            downloads: g(&c.downloads),
            downloads_with_credentials: g(&c.downloads_with_credentials),
            faults_injected: g(&c.faults_injected),
            answers_lost: g(&c.answers_lost),
        }
    }

    /// Sends the emulator's notifications to `url` (the gateway's webhook URL).
    pub fn deliver_to(&self, url: String) {
        self.state.notifier.deliver_to(url);
    }

    /// The notifications sent so far and their outcomes.
    pub fn deliveries(&self) -> Vec<notifier::Delivery> {
        self.state.notifier.deliveries()
    }

    /// The attachments of a work order (empty when it does not exist).
    pub fn attachments(&self, work_order_id: i64) -> Vec<StoredAttachment> {
        self.state
            .orders()
            .get(&work_order_id)
            .map(|w| w.attachments.clone())
            .unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
