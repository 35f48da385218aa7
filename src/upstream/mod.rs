//! The CorrigoPro Direct API client: one method per attachments call, bearer token
//! from the cache, multipart bodies, bounded reads, and error decoding.

pub mod answers;
pub mod auth;
mod body;
pub mod error;
pub(crate) mod json;
pub mod link_guard;
mod list_reader;
pub mod model;
pub mod struct_json;

use std::io;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;
use reqwest::multipart::{Form, Part};
use reqwest::{RequestBuilder, StatusCode, header};
use tokio::time::Instant;
use tracing::Instrument;
use tracing::field::Empty;

pub use self::auth::TokenCache;
use self::body::{check_status, read_bounded};
pub use self::error::{ApiError, UpstreamError, UpstreamViolation};
use self::link_guard::{GuardedResolver, LinkPolicy};
pub use self::model::{DownloadLink, UploadReceipt, UpstreamAttachment};
use crate::config::UpstreamSettings;
use crate::domain::{
    AttachmentRef, AttachmentRemoval, AttachmentUpdate, DocumentType, ListView, NewAttachment,
    UpstreamName, Visibility, WorkOrderId,
};
use crate::limits::{CircuitBreaker, Permit, RetryBudget, UpstreamBudget};
use crate::metrics::{CallLabel, Metrics, UpstreamLabels};
use crate::secret::Secret;

/// Installs the process-wide TLS provider (ring) once; harmless when already done.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub struct Upstream {
    api: reqwest::Client,
    download: reqwest::Client,
    links: Arc<LinkPolicy>,
    tokens: Arc<TokenCache>,
    // Parsed once: reqwest would parse a string on every request.
    attachments_url: reqwest::Url,
    download_url_endpoint: reqwest::Url,
    work_order_param: String,
    max_body: usize,
    budget: Arc<UpstreamBudget>,
    metrics: Arc<Metrics>,
    breaker: CircuitBreaker,
    retry_budget: RetryBudget,
    read_attempts: u32,
}

/// The longest a read waits before retrying (a longer `Retry-After` goes back to
/// the caller in RetryInfo instead).
const MAX_RETRY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A call the breaker let through: its outcome is recorded, or, if the call is
/// dropped before it has one, the permit is released.
struct BreakerCall<'a> {
    breaker: &'a CircuitBreaker,
    permit: Option<Permit>,
}

impl BreakerCall<'_> {
    fn finish(mut self, ok: bool) {
        if let Some(p) = self.permit.take() {
            self.breaker.record(p, ok);
        }
    }
}

impl Drop for BreakerCall<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            self.breaker.release(p);
        }
    }
}

fn parse_url(url: &str) -> Result<reqwest::Url, UpstreamError> {
    reqwest::Url::parse(url)
        // Not quoted: a base URL may carry credentials.
        .map_err(|e| UpstreamError::Connect(format!("upstream.base_url gives an invalid URL: {e}")))
}

impl Upstream {
    pub fn new(
        s: &UpstreamSettings,
        budget: Arc<UpstreamBudget>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, UpstreamError> {
        install_crypto_provider();
        if s.allow_plain_http
            && [&s.base_url, &s.token_url]
                .iter()
                .any(|u| u.starts_with("http:"))
        {
            tracing::warn!(
                "upstream.allow_plain_http: the client secret and tokens may travel in clear"
            );
        }
        let base = s.base_url.trim_end_matches('/');
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(s.connect_timeout)
                .pool_idle_timeout(s.pool_idle_timeout)
                .tcp_nodelay(true)
                .user_agent(concat!("attachment-gateway/", env!("CARGO_PKG_VERSION")))
        };
        let build_err = |e: reqwest::Error| {
            UpstreamError::Connect(format!("cannot build the HTTP client: {e}"))
        };
        // API calls carry the bearer token: never follow a redirect with it.
        let api = builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(build_err)?;
        // Download links are fetched without credentials; storage may redirect.
        // Where a link may lead is held to the link policy at each hop and on
        // every resolved address.
        let links = Arc::new(LinkPolicy {
            hosts: s.download_hosts.clone(),
            allow_private: s.allow_private_download_addresses,
            allow_http: s.allow_http_downloads,
        });
        let download = builder()
            .redirect(link_guard::redirect_policy(Arc::clone(&links)))
            .dns_resolver(GuardedResolver::new(Arc::clone(&links)))
            .build()
            .map_err(build_err)?;
        let max_body = usize::try_from(s.max_response_bytes).unwrap_or(usize::MAX);
        let tokens = TokenCache::new(api.clone(), s, max_body, Arc::clone(&metrics));
        Ok(Self {
            api,
            download,
            links,
            tokens,
            attachments_url: parse_url(&format!("{base}/api/attachments"))?,
            download_url_endpoint: parse_url(&format!("{base}/api/attachments/downloadUrl"))?,
            work_order_param: s.work_order_query_param.clone(),
            max_body,
            budget,
            metrics,
            breaker: CircuitBreaker::new(s.circuit_failure_threshold, s.circuit_open_for),
            retry_budget: RetryBudget::new(s.retry_budget_ratio),
            read_attempts: s.read_attempts.max(1),
        })
    }

    /// Takes one retry from the read retry budget (shared with the reads'
    /// own retries): false when retries are being spent faster than calls.
    pub fn take_read_retry(&self) -> bool {
        self.retry_budget.withdraw()
    }

    /// Runs a read, retrying transient failures (connection errors, 502/503/504)
    /// with exponential backoff and full jitter, while the retry budget, the
    /// deadline and `read_attempts` allow.
    async fn with_read_retries<F, Fut>(
        &self,
        deadline: Instant,
        mut attempt: F,
    ) -> Result<reqwest::Response, UpstreamError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<reqwest::Response, UpstreamError>>,
    {
        self.retry_budget.deposit();
        let mut backoff = std::time::Duration::from_millis(100);
        let mut n = 1;
        loop {
            let result = attempt().await;
            let hinted = match &result {
                Ok(r) if matches!(r.status().as_u16(), 502..=504) => r
                    .headers()
                    .get(header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(error::parse_retry_after)
                    .or(Some(std::time::Duration::ZERO)),
                Err(UpstreamError::Connect(_)) => Some(std::time::Duration::ZERO),
                _ => None,
            };
            let Some(hinted) = hinted else { return result };
            if n >= self.read_attempts {
                return result;
            }
            let jitter =
                std::time::Duration::from_millis(fastrand::u64(0..=backoff.as_millis() as u64));
            let wait = hinted.max(jitter);
            if wait > MAX_RETRY_WAIT
                || Instant::now() + wait >= deadline
                || !self.retry_budget.withdraw()
            {
                return result;
            }
            tracing::info!(
                attempt = n,
                wait_ms = wait.as_millis() as u64,
                "retrying a read after a transient upstream failure"
            );
            tokio::time::sleep(wait).await;
            backoff *= 2;
            n += 1;
        }
    }

    /// Sends one HTTP request: through the upstream budget (API calls), as a client
    /// span whose `traceparent` goes along, counted and timed. A download link's
    /// query (its signature) is never recorded.
    async fn send(
        &self,
        client: &reqwest::Client,
        call: &'static str,
        builder: RequestBuilder,
        budgeted: bool,
    ) -> Result<reqwest::Response, UpstreamError> {
        if budgeted {
            self.budget.acquire().await.map_err(|r| {
                self.metrics.refused(r.limit);
                UpstreamError::Throttled(r)
            })?;
        }
        let breaker = if budgeted {
            let permit = self.breaker.allow().map_err(|r| {
                self.metrics.refused(r.limit);
                UpstreamError::CircuitOpen(r)
            })?;
            Some(BreakerCall {
                breaker: &self.breaker,
                permit: Some(permit),
            })
        } else {
            None
        };
        let mut req = builder.build().map_err(UpstreamError::from_reqwest)?;
        let method = req.method().as_str().to_string();
        let span = tracing::info_span!(
            "upstream",
            otel.name = %method,
            otel.kind = "client",
            otel.status_code = Empty,
            http.request.method = %method,
            server.address = req.url().host_str().unwrap_or_default(),
            server.port = req.url().port_or_known_default().unwrap_or_default(),
            upstream.call = call,
            http.response.status_code = Empty,
        );
        crate::telemetry::inject_trace_context(&span, req.headers_mut());
        let start = Instant::now();
        let result = client.execute(req).instrument(span.clone()).await;
        let status = match &result {
            Ok(r) => crate::metrics::http_status_label(r.status().as_u16()),
            Err(e) if e.is_timeout() => "timeout",
            Err(e) if e.is_connect() => "connect_error",
            Err(_) => "error",
        };
        self.metrics
            .upstream_requests
            .get_or_create(&UpstreamLabels {
                call: call.into(),
                status: status.into(),
            })
            .inc();
        self.metrics
            .upstream_duration
            .get_or_create(&CallLabel { call: call.into() })
            .observe(start.elapsed().as_secs_f64());
        if let Some(b) = breaker {
            let failed = match &result {
                Ok(r) => r.status().is_server_error(),
                Err(_) => true,
            };
            b.finish(!failed);
        }
        match &result {
            Ok(r) => {
                let code = r.status().as_u16();
                span.record("http.response.status_code", code);
                if code >= 500 {
                    span.record("otel.status_code", "ERROR");
                }
                if budgeted {
                    let retry_after = r
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(error::parse_retry_after);
                    self.budget.observe(code, retry_after);
                }
            }
            Err(_) => {
                span.record("otel.status_code", "ERROR");
            }
        }
        result.map_err(UpstreamError::from_reqwest)
    }

    /// Sends a request that can be built again: on a 401 the token is dropped, a new
    /// one fetched, and the request sent once more.
    async fn send_replayable(
        &self,
        call: &'static str,
        build: &impl Fn(&Secret) -> RequestBuilder,
    ) -> Result<reqwest::Response, UpstreamError> {
        let token = self.tokens.token().await?;
        let resp = self.send(&self.api, call, build(&token), true).await?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        tracing::info!("the upstream refused the access token; fetching a new one");
        self.tokens.invalidate(&token);
        let token = self.tokens.token().await?;
        let resp = self.send(&self.api, call, build(&token), true).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.tokens.invalidate(&token);
            tracing::error!("the upstream refused a freshly fetched access token");
            return Err(UpstreamError::CredentialsRejected(
                "API refused a fresh token",
            ));
        }
        Ok(resp)
    }

    /// The body of a 200 answer, or the decoded error of any other.
    async fn ok_body(&self, resp: reqwest::Response) -> Result<Bytes, UpstreamError> {
        let resp = check_status(resp).await?;
        read_bounded(resp, self.max_body).await
    }

    pub async fn list(
        &self,
        wo: WorkOrderId,
        view: ListView,
        deadline: Instant,
    ) -> Result<Vec<UpstreamAttachment>, UpstreamError> {
        let build = |t: &Secret| {
            self.api
                .get(self.attachments_url.clone())
                .query(&[(self.work_order_param.as_str(), wo.get())])
                .header(header::ACCEPT, "application/json")
                .bearer_auth(t.expose())
        };
        let resp = self
            .with_read_retries(deadline, || self.send_replayable("list", &build))
            .await?;
        answers::parse_list(&self.ok_body(resp).await?, view)
    }

    pub async fn download_link(
        &self,
        r: &AttachmentRef,
        deadline: Instant,
    ) -> Result<DownloadLink, UpstreamError> {
        let asked_at = SystemTime::now();
        let build = |t: &Secret| {
            self.api
                .get(self.download_url_endpoint.clone())
                .query(&[
                    ("AttachmentId", r.attachment_id.as_str()),
                    ("WorkOrderId", &r.work_order_id.to_string()),
                ])
                .header(header::ACCEPT, "application/json")
                .bearer_auth(t.expose())
        };
        let resp = self
            .with_read_retries(deadline, || self.send_replayable("download_url", &build))
            .await?;
        answers::parse_download_link(&self.ok_body(resp).await?, asked_at)
    }

    /// Opens the link's bytes, without the bearer token (the link is its own
    /// key); from `range.0` on, at most `range.1` bytes, when asked (`Range`:
    /// a host that does not serve ranges answers 200 with the whole file).
    pub async fn open_download(
        &self,
        link: &DownloadLink,
        deadline: Instant,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = reqwest::Url::parse(link.url.expose())
            .map_err(|_| UpstreamError::Protocol("the download link is not a valid URL".into()))?;
        self.links.check_url(&url).map_err(|e| {
            tracing::warn!(rule = e.rule, host = %e.host, "download link refused");
            UpstreamError::LinkRefused(e)
        })?;
        let resp = self
            .with_read_retries(deadline, || {
                let mut get = self.download.get(link.url.expose());
                if let Some((from, limit)) = range {
                    let last = limit
                        .filter(|n| *n > 0)
                        .map(|n| from.saturating_add(n - 1).to_string())
                        .unwrap_or_default();
                    get = get.header(header::RANGE, format!("bytes={from}-{last}"));
                }
                self.send(&self.download, "download", get, false)
            })
            .await?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            // `Content-Range: bytes */<size>`.
            let size = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().strip_prefix("bytes */"))
                .and_then(|n| n.trim().parse().ok());
            return Err(UpstreamError::RangeNotSatisfiable { size });
        }
        // Classified by its status alone: a storage host's error body can quote
        // the signed request (key id, signature), so it is neither read nor
        // passed on.
        body::check_status_quietly(resp)
    }

    pub async fn update(&self, u: &AttachmentUpdate) -> Result<Option<String>, UpstreamError> {
        let resp = self
            .send_replayable("update", &|t: &Secret| {
                let form = Form::new()
                    .text("WorkOrderId", u.target.work_order_id.to_string())
                    .text("AttachmentId", u.target.attachment_id.as_str().to_string())
                    .text("Name", u.name.as_str().to_string());
                let form = optional_enums(form, u.document_type, u.visibility)
                    .text("MessageId", u.message_id.as_str().to_string());
                self.api
                    .put(self.attachments_url.clone())
                    .header(header::ACCEPT, "application/json")
                    .bearer_auth(t.expose())
                    .multipart(form)
            })
            .await?;
        Ok(answers::parse_message_id(&self.ok_body(resp).await?))
    }

    pub async fn delete(&self, d: &AttachmentRemoval) -> Result<Option<String>, UpstreamError> {
        let resp = self
            .send_replayable("delete", &|t: &Secret| {
                let form = Form::new()
                    .text("WorkOrderId", d.target.work_order_id.to_string())
                    .text("AttachmentId", d.target.attachment_id.as_str().to_string())
                    .text("MessageId", d.message_id.as_str().to_string());
                self.api
                    .delete(self.attachments_url.clone())
                    .header(header::ACCEPT, "application/json")
                    .bearer_auth(t.expose())
                    .multipart(form)
            })
            .await?;
        Ok(answers::parse_message_id(&self.ok_body(resp).await?))
    }

    /// Streams a file into `POST /api/attachments`. The body cannot be replayed, so a
    /// 401 drops the token and reports [`UpstreamError::TokenRejected`]. If `file`
    /// yields an error, the request is aborted mid-body: the upstream never sees a
    /// complete multipart message, so no truncated attachment is created.
    pub async fn upload<S>(
        &self,
        a: &NewAttachment,
        file: S,
    ) -> Result<UploadReceipt, UpstreamError>
    where
        S: Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    {
        let token = self.tokens.token().await?;
        let body = reqwest::Body::wrap_stream(file);
        let part = match a.declared_size {
            Some(n) => Part::stream_with_length(body, n),
            None => Part::stream(body),
        }
        .file_name(a.name.as_str().to_string());
        // The media type was parsed and checked; the upstream also gets it as
        // `MimeType`.
        let part = part
            .mime_str(a.mime_type.as_str())
            .map_err(UpstreamError::from_reqwest)?;
        let mut form = Form::new()
            .percent_encode_attr_chars()
            .text("WorkOrderId", a.work_order_id.to_string())
            .text("Name", a.name.as_str().to_string())
            .text("MimeType", a.mime_type.as_str().to_string())
            .text("PerformedBy.Name", a.performed_by.get_name().to_string());
        if let Some(phone) = a.performed_by.get_phone() {
            form = form.text("PerformedBy.Phone", phone.to_string());
        }
        let form = optional_enums(form, a.document_type, a.visibility)
            .text("MessageId", a.message_id.as_str().to_string())
            .part("File", part);
        let request = self
            .api
            .post(self.attachments_url.clone())
            .header(header::ACCEPT, "application/json")
            .bearer_auth(token.expose())
            .multipart(form);
        let resp = self.send(&self.api, "upload", request, true).await?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            self.tokens.invalidate(&token);
            return Err(UpstreamError::TokenRejected);
        }
        answers::parse_upload_receipt(&self.ok_body(resp).await?)
    }
}

fn optional_enums(mut form: Form, dt: Option<DocumentType>, vis: Option<Visibility>) -> Form {
    if let Some(dt) = dt {
        form = form.text("DocumentType", dt.upstream_name());
    }
    if let Some(vis) = vis {
        form = form.text("MessageVisibility", vis.upstream_name());
    }
    form
}
