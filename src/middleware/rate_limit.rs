//! The per-caller token bucket, after authentication: a [`Gate`].

use std::sync::Arc;
use std::time::Duration;

use super::gate::Gate;
use crate::api::Error;
use crate::api::deadline::Arrived;
use crate::auth::{Caller, Needed, needed_for};
use crate::limits::CallerLimits;
use crate::metrics::Metrics;

pub struct RateLimit {
    limits: Arc<CallerLimits>,
    metrics: Arc<Metrics>,
}

impl RateLimit {
    pub fn new(limits: Arc<CallerLimits>, metrics: Arc<Metrics>) -> Self {
        Self { limits, metrics }
    }
}

impl Gate for RateLimit {
    async fn check(&self, head: &mut http::request::Parts) -> Result<(), Error> {
        // Only the attachment calls count; health and reflection are not limited.
        let limited = matches!(
            needed_for(head.uri.path(), true),
            Needed::Read | Needed::Write
        );
        if !limited {
            return Ok(());
        }
        let Some(caller) = head.extensions.get::<Caller>() else {
            return Ok(());
        };
        let key: Arc<str> = caller.to_string().into();
        // The shared bucket's round trip is bounded by the caller's deadline as
        // well as the command timeout; past it, the call goes on as when Redis
        // cannot answer (it meets its deadline further on).
        let within = head
            .headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::api::deadline::parse_grpc_timeout);
        let check = self.limits.check_everywhere(&key);
        let checked = match within {
            Some(t) => {
                let arrived = head
                    .extensions
                    .get::<Arrived>()
                    .map_or_else(tokio::time::Instant::now, |a| a.0);
                // Less the margin the handler's deadline keeps, so the caller
                // still gets the gateway's answer.
                let t = t.min(Duration::from_secs(86_400));
                let margin = crate::api::deadline::margin(t);
                tokio::time::timeout_at(arrived + t.saturating_sub(margin), check)
                    .await
                    .unwrap_or(Ok(()))
            }
            None => check.await,
        };
        checked.map_err(|refusal| {
            self.metrics.refused(refusal.limit);
            tracing::info!(limit = refusal.limit, retry_after = ?refusal.retry_after, "call refused by rate limit");
            Error::Limited(refusal)
        })
    }
}
