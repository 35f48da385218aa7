//! Authentication and per-method authorization as a tower layer.

use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};
use tower::{Layer, Service};

use super::{BoxFuture, Response, refuse};
use crate::api::status::ERROR_DOMAIN;
use crate::auth::{AuthError, Authenticator, Needed, needed_for};
use crate::metrics::{Metrics, ReasonLabel};

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> Self {
        Self { auth, metrics }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            auth: Arc::clone(&self.auth),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

/// UNAUTHENTICATED or PERMISSION_DENIED with the reason in ErrorInfo; never the
/// credential itself.
pub fn auth_status(e: &AuthError) -> Status {
    let code = match e {
        AuthError::MissingScope { .. } => Code::PermissionDenied,
        _ => Code::Unauthenticated,
    };
    let mut meta = HashMap::new();
    if let AuthError::MissingScope { needed, .. } = e {
        meta.insert("required_scope".to_string(), (*needed).to_string());
    }
    let details = ErrorDetails::with_error_info(e.reason(), ERROR_DOMAIN, meta);
    Status::with_error_details(code, e.to_string(), details)
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let needed = needed_for(req.uri().path(), self.auth.public_reflection());
        if needed == Needed::Nothing {
            return Box::pin(self.inner.call(req));
        }
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = Arc::clone(&self.auth);
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let cert = req
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|i| i.peer_certs())
                .and_then(|certs| certs.first().map(|c| c.to_vec()));
            let result = auth.authenticate(req.headers(), cert.as_deref()).await;
            let caller = match result {
                Ok(c) if needed.allowed_by(c.scopes) => c,
                Ok(c) => {
                    let e = AuthError::MissingScope {
                        caller: c.to_string(),
                        needed: needed.scope_name(),
                    };
                    tracing::Span::current().record("caller", tracing::field::display(&c));
                    metrics
                        .auth_failures
                        .get_or_create(&ReasonLabel {
                            reason: e.reason().into(),
                        })
                        .inc();
                    tracing::info!(reason = e.reason(), "call refused");
                    return Ok(refuse(auth_status(&e)));
                }
                Err(e) => {
                    metrics
                        .auth_failures
                        .get_or_create(&ReasonLabel {
                            reason: e.reason().into(),
                        })
                        .inc();
                    tracing::info!(reason = e.reason(), error = %e, "call refused");
                    return Ok(refuse(auth_status(&e)));
                }
            };
            tracing::Span::current().record("caller", tracing::field::display(&caller));
            req.extensions_mut().insert(caller);
            inner.call(req).await
        })
    }
}
