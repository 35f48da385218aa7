//! The tower layers every call passes, outermost first:
//!
//! 1. [`observe`]: the server span (W3C trace context from the caller), logs and
//!    metrics. Outermost, so refusals by the layers below are traced and counted.
//! 2. [`auth`]: who calls (JWT, API key, mTLS) and whether they hold the method's
//!    scope; the caller goes into request extensions. Health is never behind it.
//! 3. [`rate_limit`]: the caller's token bucket, keyed by the identity from `auth`.
//!
//! Auth and rate limit are [`gate::Gate`]s: plain checks behind one generic
//! service. Each refuses with an [`crate::api::Error`], made a gRPC status (rich
//! details) as an HTTP response, without calling the service.

pub mod auth;
pub mod gate;
pub mod message_limit;
pub mod observe;
pub mod rate_limit;

use std::pin::Pin;

use tonic::Status;

use crate::api::Error;

pub(crate) type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;
pub(crate) type Response = http::Response<tonic::body::Body>;

/// A refusal as a complete (trailers-only) gRPC response.
pub(crate) fn refuse(e: Error) -> Response {
    Status::from(e).into_http()
}
