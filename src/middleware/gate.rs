//! One thin tower service for every check a request must pass before the gRPC
//! service sees it: a [`Gate`] is a plain async check over the request's head
//! (path, headers, extensions), which may add to the extensions (the caller's
//! identity) or refuse with an [`Error`], made a response here.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{BoxFuture, Response, refuse};
use crate::api::Error;
use crate::api::deadline::Arrived;

/// A check before the service.
pub trait Gate: Send + Sync + 'static {
    fn check(
        &self,
        head: &mut http::request::Parts,
    ) -> impl Future<Output = Result<(), Error>> + Send;
}

/// Puts a [`Gate`] in front of a service.
pub struct GateLayer<G> {
    gate: Arc<G>,
}

impl<G> GateLayer<G> {
    pub fn new(gate: G) -> Self {
        Self {
            gate: Arc::new(gate),
        }
    }
}

impl<G> Clone for GateLayer<G> {
    fn clone(&self) -> Self {
        Self {
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<S, G> Layer<S> for GateLayer<G> {
    type Service = GateService<S, G>;

    fn layer(&self, inner: S) -> Self::Service {
        GateService {
            inner,
            gate: Arc::clone(&self.gate),
        }
    }
}

pub struct GateService<S, G> {
    inner: S,
    gate: Arc<G>,
}

impl<S: Clone, G> Clone for GateService<S, G> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<S, B, G> Service<http::Request<B>> for GateService<S, G>
where
    S: Service<http::Request<B>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    G: Gate,
{
    type Response = Response;
    type Error = S::Error;
    type Future = BoxFuture<Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            let (mut head, body) = req.into_parts();
            // When the call arrived, before any gate's work: its deadline runs
            // from here, not from when the handler starts.
            if head.extensions.get::<Arrived>().is_none() {
                head.extensions.insert(Arrived(tokio::time::Instant::now()));
            }
            if let Err(e) = gate.check(&mut head).await {
                return Ok(refuse(e));
            }
            inner.call(http::Request::from_parts(head, body)).await
        })
    }
}
