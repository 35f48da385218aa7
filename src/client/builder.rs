//! Connecting: the builder (address, TLS, credential, deadline, chunk size,
//! retries), the connected client, and how it makes a unary call: within its
//! deadline, retried while the gateway says a retry is safe.

use std::time::Duration;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Response, Status};

use super::error::ClientError;
use crate::proto::attachment_service_client::AttachmentServiceClient;

/// The chunk size uploads are cut into (the gateway accepts up to 4 MiB).
pub const DEFAULT_CHUNK_BYTES: usize = 256 * 1024;

/// Adds the credential to every call.
#[derive(Clone)]
pub struct Credentials {
    header: Option<(&'static str, AsciiMetadataValue)>,
}

impl Interceptor for Credentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some((k, v)) = &self.header {
            req.metadata_mut().insert(*k, v.clone());
        }
        Ok(req)
    }
}

pub(super) type Inner = AttachmentServiceClient<InterceptedService<Channel, Credentials>>;

/// Builds a [`GatewayClient`].
pub struct ClientBuilder {
    uri: String,
    tls: Option<ClientTlsConfig>,
    header: Option<(&'static str, String)>,
    timeout: Duration,
    chunk_bytes: usize,
    retries: u32,
}

impl ClientBuilder {
    /// Sends `authorization: Bearer <token>` (a JWT or an API key).
    pub fn bearer_token(mut self, token: impl Into<String>) -> Self {
        self.header = Some(("authorization", format!("Bearer {}", token.into())));
        self
    }

    /// Sends `x-api-key: <key>`.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.header = Some(("x-api-key", key.into()));
        self
    }

    /// TLS, trusting `ca_pem` (and presenting `identity` for mTLS).
    pub fn tls(
        mut self,
        ca_pem: Option<Vec<u8>>,
        identity: Option<(Vec<u8>, Vec<u8>)>,
        domain: Option<String>,
    ) -> Self {
        let mut tls = ClientTlsConfig::new().with_native_roots();
        if let Some(ca) = ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(d) = domain {
            tls = tls.domain_name(d);
        }
        self.tls = Some(tls);
        self
    }

    /// The deadline of each unary call (uploads and downloads get 10× this).
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn chunk_bytes(mut self, n: usize) -> Self {
        self.chunk_bytes = n.clamp(1024, 4 * 1024 * 1024);
        self
    }

    /// How often a call the gateway calls safe to retry is retried (default 2).
    pub fn retries(mut self, n: u32) -> Self {
        self.retries = n;
        self
    }

    pub async fn connect(self) -> Result<GatewayClient, ClientError> {
        let mut ep = Endpoint::from_shared(self.uri.clone())
            .map_err(|e| ClientError::local(Code::InvalidArgument, format!("bad address: {e}")))?
            .tcp_nodelay(true)
            // Downloads arrive in DATA frames up to 512 KiB instead of HTTP/2's
            // 16 KiB default: a 256 KiB chunk with its framing fits one frame.
            .max_frame_size(512 * 1024)
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30));
        if let Some(tls) = self.tls {
            ep = ep.tls_config(tls)?;
        }
        let channel = ep.connect().await?;
        let header = match self.header {
            Some((k, v)) => Some((
                k,
                MetadataValue::try_from(v.as_str()).map_err(|_| {
                    ClientError::local(Code::InvalidArgument, "the credential is not ASCII")
                })?,
            )),
            None => None,
        };
        let inner = AttachmentServiceClient::with_interceptor(channel, Credentials { header })
            .max_decoding_message_size(16 * 1024 * 1024);
        Ok(GatewayClient {
            inner,
            timeout: self.timeout,
            chunk_bytes: self.chunk_bytes,
            retries: self.retries,
        })
    }
}

/// A connected client.
#[derive(Clone)]
pub struct GatewayClient {
    pub(super) inner: Inner,
    pub(super) timeout: Duration,
    pub(super) chunk_bytes: usize,
    retries: u32,
}

pub(super) fn with_deadline<T>(msg: T, t: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(t);
    r
}

impl GatewayClient {
    pub fn builder(uri: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            uri: uri.into(),
            tls: None,
            header: None,
            timeout: Duration::from_secs(30),
            chunk_bytes: DEFAULT_CHUNK_BYTES,
            retries: 2,
        }
    }

    /// The generated client, for anything this wrapper does not cover.
    pub fn raw(&self) -> Inner {
        self.inner.clone()
    }

    /// How many more times a failed call (or a broken download) is tried.
    pub(super) fn retries(&self) -> u32 {
        self.retries
    }

    /// Runs a call again while the gateway says a retry is safe, at most
    /// `retries` more times, waiting its RetryInfo delay (else 200 ms, doubling).
    pub(super) async fn retrying<T, F, Fut>(&self, mut call: F) -> Result<T, ClientError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut backoff = Duration::from_millis(200);
        let mut left = self.retries;
        loop {
            match call().await {
                Err(e) if left > 0 && e.is_retryable() => {
                    left -= 1;
                    tokio::time::sleep(
                        e.retry_after
                            .unwrap_or(backoff)
                            .min(Duration::from_secs(10)),
                    )
                    .await;
                    backoff *= 2;
                }
                other => return other,
            }
        }
    }

    /// One unary call, retried as [`Self::retrying`] says: `request` makes
    /// the message of each try, `call` sends it with the client's deadline.
    pub(super) async fn unary<M, T, F, Fut>(
        &self,
        request: impl Fn() -> M,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(Inner, Request<M>) -> Fut,
        Fut: Future<Output = Result<Response<T>, Status>>,
    {
        self.retrying(|| {
            let sent = call(self.inner.clone(), with_deadline(request(), self.timeout));
            async move { Ok(sent.await?.into_inner()) }
        })
        .await
    }
}
