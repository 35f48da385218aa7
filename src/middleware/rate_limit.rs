//! The per-caller token bucket, after authentication: a [`Gate`].

use std::sync::Arc;

use super::gate::Gate;
use crate::api::Error;
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
        self.limits.check_everywhere(&key).await.map_err(|refusal| {
            self.metrics.refused(refusal.limit);
            tracing::info!(limit = refusal.limit, retry_after = ?refusal.retry_after, "call refused by rate limit");
            Error::Limited(refusal)
        })
    }
}
