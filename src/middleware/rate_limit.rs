//! The per-caller token bucket as a tower layer, after authentication.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxFuture, Response, refuse};
use crate::api::status::resource_exhausted;
use crate::auth::{Caller, Needed, needed_for};
use crate::limits::CallerLimits;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct RateLimitLayer {
    limits: Arc<CallerLimits>,
    metrics: Arc<Metrics>,
}

impl RateLimitLayer {
    pub fn new(limits: Arc<CallerLimits>, metrics: Arc<Metrics>) -> Self {
        Self { limits, metrics }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimitService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimitService {
            inner,
            limits: Arc::clone(&self.limits),
            metrics: Arc::clone(&self.metrics),
        }
    }
}

#[derive(Clone)]
pub struct RateLimitService<S> {
    inner: S,
    limits: Arc<CallerLimits>,
    metrics: Arc<Metrics>,
}

impl<S, B> Service<http::Request<B>> for RateLimitService<S>
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

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Only the attachment calls count; health and reflection are not limited.
        let limited = matches!(
            needed_for(req.uri().path(), true),
            Needed::Read | Needed::Write
        );
        if limited && let Some(caller) = req.extensions().get::<Caller>() {
            let key: Arc<str> = caller.to_string().into();
            if let Err(refusal) = self.limits.check(&caller.id, &key) {
                self.metrics.refused(refusal.limit);
                tracing::info!(limit = refusal.limit, retry_after = ?refusal.retry_after, "call refused by rate limit");
                let resp = refuse(resource_exhausted(&refusal));
                return Box::pin(async move { Ok(resp) });
            }
        }
        Box::pin(self.inner.call(req))
    }
}
