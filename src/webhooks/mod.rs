//! The webhook listener: CorrigoPro's notifications in, on a port of its own (the
//! only one to expose to the internet), path [`PATH`].
//!
//! A request is checked in this order, and refused at the first failure, before
//! its body is read (so a refused `Expect: 100-continue` request never sends it):
//! the source's budget of failed checks (429), the credential (401, counted by
//! reason, the token never logged), the declared length (413). Then the body is
//! read, bounded in size (413) and time (408), and:
//!
//! - a notification about attachments becomes events, recorded together and once
//!   per `Header.MessageId` (a redelivery is acknowledged and records nothing);
//!   the answer is 2xx only once they are recorded, 503 when they cannot be, so
//!   CorrigoPro delivers again;
//! - any other notification is not the gateway's: it goes unchanged to
//!   `webhooks.forward_url` when set, and CorrigoPro gets the forward's outcome
//!   (so its retries cover a downstream outage); else it is acknowledged and
//!   counted. The work-order-received notification is both: its attachments are
//!   recorded, then it is forwarded.

mod forward;
pub mod notification;
pub mod refusal;
mod setup;
pub mod signature;
pub mod token;
pub mod verify;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use sha2::Digest;
use tokio::net::TcpListener;

use self::forward::Forwarder;
use self::notification::Notification;
use self::refusal::Refused;
pub use self::setup::SetupError;
use self::verify::Verifier;
use crate::auth::cache::{Bounded, Digest32};
use crate::auth::throttle::FailureThrottle;
use crate::config::{WebhookSettings, WebhookVerify};
use crate::listener::{ConnLimits, PeerInfo};
use crate::metrics::Metrics;
use crate::recorder::Recorder;
use crate::store::event_log::Appended;

/// The path CorrigoPro posts to.
pub const PATH: &str = "/webhooks/corrigopro";

/// How long recording a notification's events may take before CorrigoPro is told
/// to deliver again.
const RECORD_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the certificate or secret file is read again (rotation).
const RELOAD_EVERY: Duration = Duration::from_secs(60);
/// How long a credential that verified passes the failure throttle when it
/// does not say how long it is valid (a shared secret). A signed token passes
/// until its own `.expires`, renewed by each request it verifies on; it is still
/// checked each time (signature, expiry, audience, name).
const VERIFIED_FOR: Duration = Duration::from_secs(300);
/// A signed token passes the throttle for at most this long after its last
/// verification, whatever its `.expires` says.
const VERIFIED_AT_MOST: Duration = Duration::from_secs(3600);

/// How long a credential refused for good is refused without a check (a
/// certificate rotated in by the periodic reload may make a token refused for
/// a bad signature good again: it waits at most this long).
const REFUSED_FOR: Duration = Duration::from_secs(60);

/// The 401 of a refused credential.
fn unauthorized(m: &Metrics, refused: Refused) -> Response {
    let mut resp = answer(
        m,
        StatusCode::UNAUTHORIZED,
        refused.label(),
        &refused.to_string(),
    );
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The webhook side of the gateway: what it needs and nothing of the gRPC side
/// but the event log's recorder.
pub struct Webhooks {
    verifier: Arc<Verifier>,
    throttle: FailureThrottle,
    /// Credentials (by digest) that verified lately: their requests are not
    /// held up by the failure throttle, which a flood of bad requests can empty
    /// for everyone behind one ingress address. They are still checked.
    verified: std::sync::Mutex<Bounded<()>>,
    /// Credentials (by digest) refused after a check, for good: the same one
    /// again is refused without a check and without spending the budget (a
    /// replayed bad token costs one check, not one per request).
    refused: std::sync::Mutex<Bounded<Refused>>,
    recorder: Recorder,
    forward: Option<Forwarder>,
    metrics: Arc<Metrics>,
    max_body: u64,
    body_timeout: Duration,
    limits: ConnLimits,
}

impl Webhooks {
    /// From the settings; `trusted_pem` is a certificate trusted when the settings
    /// name none (the sandbox's).
    pub fn new(
        w: &WebhookSettings,
        trusted_pem: Option<&str>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
    ) -> Result<Self, SetupError> {
        let verifier = Arc::new(Verifier::new(w, trusted_pem)?);
        if let Some(t) = verifier.certificates_not_after() {
            metrics.webhook_certificate_not_after(t);
        }
        if w.verify != WebhookVerify::None {
            let m = Arc::clone(&metrics);
            crate::periodic::every(&verifier, RELOAD_EVERY, move |v| {
                let m = Arc::clone(&m);
                async move {
                    v.reload();
                    if let Some(t) = v.certificates_not_after() {
                        m.webhook_certificate_not_after(t);
                    }
                }
            });
        }
        let forward = match &w.forward_url {
            Some(url) => Some(Forwarder::new(url, w.forward_timeout)?),
            None => None,
        };
        Ok(Self {
            verifier,
            // One budget, per source and in all: behind an ingress every request
            // has the ingress's address, so a per-source budget smaller than the
            // total would let one bad sender lock CorrigoPro out.
            throttle: FailureThrottle::new(w.failed_checks, w.failed_checks),
            verified: std::sync::Mutex::new(Bounded::new()),
            refused: std::sync::Mutex::new(Bounded::new()),
            recorder,
            forward,
            metrics,
            max_body: w.max_body_bytes,
            body_timeout: w.body_timeout,
            limits: ConnLimits {
                max_connections: w.max_connections as usize,
                handshake_timeout: w.header_timeout,
                idle_timeout: w.idle_timeout,
            },
        })
    }

    /// Serves on `listener` until the process ends.
    pub fn serve(self, listener: TcpListener) {
        let limits = self.limits;
        let metrics = Arc::clone(&self.metrics);
        crate::listener::serve_http("webhooks", listener, self.router(), limits, metrics);
    }

    /// The routes: [`PATH`] (POST), and 404 for the rest.
    pub fn router(self) -> axum::Router {
        let metrics = Arc::clone(&self.metrics);
        axum::Router::new()
            .route(PATH, axum::routing::post(handle))
            .fallback(move || {
                let metrics = Arc::clone(&metrics);
                async move { answer(&metrics, StatusCode::NOT_FOUND, "not_found", "not found") }
            })
            .with_state(Arc::new(self))
    }
}

/// The answer to CorrigoPro: a status, a short JSON body, and the outcome
/// counted. A refusal (4xx) closes its connection: a refused sender does not
/// keep a connection, and a body it did not send is not waited for.
fn answer(m: &Metrics, status: StatusCode, outcome: &'static str, detail: &str) -> Response {
    m.webhook(outcome);
    let body = serde_json::json!({"outcome": outcome, "detail": detail}).to_string();
    let mut resp = (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if status.is_client_error() {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

async fn handle(
    State(h): State<Arc<Webhooks>>,
    peer: Option<axum::Extension<PeerInfo>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let m = &h.metrics;
    let ip: Option<IpAddr> = peer.and_then(|p| p.0.remote).map(|a| a.ip());
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let key: Option<Digest32> = auth.map(|a| sha2::Sha256::digest(a).into());
    let known = key.is_some_and(|k| {
        h.verified
            .lock()
            .ok()
            .is_some_and(|mut v| v.get(&k, 0).is_some())
    });
    let refused_before = if known {
        None
    } else {
        key.and_then(|k| h.refused.lock().ok().and_then(|mut r| r.get(&k, 0)))
    };
    if let Some(refused) = refused_before {
        return unauthorized(m, refused);
    }
    if !known && let Err(r) = h.throttle.check(ip) {
        let mut resp = answer(
            m,
            StatusCode::TOO_MANY_REQUESTS,
            "throttled",
            &r.description,
        );
        if let Ok(v) = HeaderValue::from_str(&r.retry_after.as_secs().max(1).to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let now = SystemTime::now();
    let verified = match h.verifier.check(auth, now) {
        Ok(v) => v,
        Err(refusal) => {
            // Only a check that cost something spends the failure budget: a
            // flood of garbage is refused as cheaply as it is made.
            let refused = refusal.reason;
            // A credential that verified before and is refused now (expired,
            // or a certificate rotated out) no longer passes the throttle.
            if known
                && let Some(k) = key
                && let Ok(mut v) = h.verified.lock()
            {
                v.remove(&k);
            }
            if refusal.checked {
                h.throttle.failed(ip);
                if let Some(k) = key
                    && refused.is_for_good()
                    && let Ok(mut r) = h.refused.lock()
                {
                    r.put(k, refused, REFUSED_FOR, 0);
                }
            }
            // Counted by reason in webhook_requests_total; a line each only at
            // debug, so a flood of refusals is not a flood of logs.
            tracing::debug!(reason = refused.label(), remote = ?ip, "webhook request refused");
            return unauthorized(m, refused);
        }
    };
    if let Some(r) = verified.reading {
        m.webhook_token_reading(r.part_label(), r.algorithm_label());
    }
    if let Some(k) = key {
        // Renewed on every success: a token in use keeps passing the throttle
        // for as long as it is valid.
        let ttl = match verified.valid_until {
            Some(until) => until
                .duration_since(now)
                .unwrap_or(Duration::ZERO)
                .min(VERIFIED_AT_MOST),
            None => VERIFIED_FOR,
        };
        if !ttl.is_zero()
            && let Ok(mut v) = h.verified.lock()
        {
            v.put(k, (), ttl, 0);
        }
    }
    let too_large = format!("the body is larger than {} bytes", h.max_body);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > h.max_body) {
        return answer(m, StatusCode::PAYLOAD_TOO_LARGE, "too_large", &too_large);
    }
    let body = match tokio::time::timeout(h.body_timeout, read_body(body, h.max_body)).await {
        Err(_) => {
            return answer(
                m,
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the body did not arrive in time",
            );
        }
        Ok(Err(ReadBody::TooLarge)) => {
            return answer(m, StatusCode::PAYLOAD_TOO_LARGE, "too_large", &too_large);
        }
        Ok(Err(ReadBody::Broken)) => {
            return answer(
                m,
                StatusCode::BAD_REQUEST,
                "broken_body",
                "the body ended early",
            );
        }
        Ok(Ok(b)) => b,
    };
    let event_type = headers
        .get("event-type")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let json = match serde_json::from_slice::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(o)) => o,
        _ => {
            return answer(
                m,
                StatusCode::BAD_REQUEST,
                "not_json",
                "the body is not a JSON object",
            );
        }
    };
    let hash = hex::encode(sha2::Sha256::digest(&body));
    match notification::classify(&json, event_type, &hash, now) {
        Err(e) => {
            tracing::warn!(error = %e, "an attachment notification that cannot be read: refused (CorrigoPro will deliver it again)");
            answer(m, StatusCode::BAD_REQUEST, "malformed", &e.0)
        }
        Ok(Notification::Other) => match &h.forward {
            Some(f) => f.forward(m, &headers, body).await,
            None => answer(
                m,
                StatusCode::OK,
                "ignored",
                "not about attachments; no forward target set",
            ),
        },
        Ok(Notification::Attachments {
            dedupe,
            events,
            also_other,
        }) => {
            let n = events.len();
            // What the audit trail says of each change (read before the events
            // go to the log).
            let changes: Vec<AuditedChange> = events.iter().map(AuditedChange::of).collect();
            let recorded =
                tokio::time::timeout(RECORD_TIMEOUT, h.recorder.record(events, Some(&dedupe)))
                    .await;
            let (outcome, detail) = match recorded {
                Ok(Ok(Appended::New(_))) => ("recorded", format!("{n} event(s) recorded")),
                Ok(Ok(Appended::Duplicate)) => ("duplicate", "already recorded".to_string()),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "a notification's events could not be recorded: CorrigoPro will deliver it again");
                    return answer(
                        m,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "record_failed",
                        "the event could not be recorded; deliver again",
                    );
                }
                Err(_) => {
                    h.metrics.event_record_failed("corrigopro");
                    tracing::error!(
                        "recording a notification's events timed out: CorrigoPro will deliver it again"
                    );
                    return answer(
                        m,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "record_failed",
                        "recording the event timed out; deliver again",
                    );
                }
            };
            for c in &changes {
                crate::audit::notification(&crate::audit::Notification {
                    action: c.action,
                    work_order_id: c.work_order_id,
                    attachment_id: &c.attachment_id,
                    name: &c.name,
                    size_bytes: c.size_bytes,
                    message_id: &c.message_id,
                    outcome,
                    integration: verified.name.as_deref().unwrap_or(""),
                });
            }
            match (&h.forward, also_other) {
                (Some(f), true) => {
                    tracing::debug!(outcome, "{detail}; forwarding the notification too");
                    f.forward(m, &headers, body).await
                }
                _ => answer(m, StatusCode::OK, outcome, &detail),
            }
        }
    }
}

/// A change recorded from a notification, as the audit trail names it.
struct AuditedChange {
    action: &'static str,
    work_order_id: i64,
    attachment_id: String,
    name: String,
    size_bytes: u64,
    message_id: String,
}

impl AuditedChange {
    fn of(e: &crate::proto::AttachmentEvent) -> Self {
        let a = e.attachment.clone().unwrap_or_default();
        Self {
            action: if e.r#type == crate::proto::AttachmentEventType::Removed as i32 {
                "AttachmentRemoved"
            } else {
                "AttachmentAdded"
            },
            work_order_id: e.work_order_id,
            attachment_id: a.attachment_id,
            name: a.name,
            size_bytes: a.size_bytes,
            message_id: e.upstream_message_id.clone(),
        }
    }
}

enum ReadBody {
    TooLarge,
    Broken,
}

/// The body, at most `max` bytes.
async fn read_body(body: Body, max: u64) -> Result<Bytes, ReadBody> {
    let mut stream = body.into_data_stream();
    let mut out = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ReadBody::Broken)?;
        if (out.len() + chunk.len()) as u64 > max {
            return Err(ReadBody::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}
