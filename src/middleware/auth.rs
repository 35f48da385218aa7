//! Authentication and per-method authorization: a [`Gate`] that puts the caller
//! into request extensions, or refuses.

use std::sync::Arc;

use crate::listener::PeerInfo;

use super::gate::Gate;
use crate::api::Error;
use crate::auth::{AuthError, Authenticator, Needed, needed_for};
use crate::metrics::{Metrics, ReasonLabel};

pub struct Auth {
    auth: Arc<Authenticator>,
    metrics: Arc<Metrics>,
}

impl Auth {
    pub fn new(auth: Arc<Authenticator>, metrics: Arc<Metrics>) -> Self {
        Self { auth, metrics }
    }

    fn refused(&self, e: AuthError) -> Error {
        self.metrics
            .auth_failures
            .get_or_create(&ReasonLabel {
                reason: e.reason().into(),
            })
            .inc();
        // Counted by reason in auth_failures_total; a line each only at debug,
        // so a flood of refusals before auth is not a flood of logs.
        tracing::debug!(reason = e.reason(), error = %e, "call refused");
        match e {
            // Not checked at all: a limit, with its RetryInfo and QuotaFailure.
            AuthError::Throttled(r) => {
                self.metrics.refused(r.limit);
                Error::Limited(r)
            }
            e => Error::Auth(e),
        }
    }
}

impl Gate for Auth {
    async fn check(&self, head: &mut http::request::Parts) -> Result<(), Error> {
        let needed = needed_for(head.uri.path(), self.auth.public_reflection());
        if needed == Needed::Nothing {
            return Ok(());
        }
        let peer = head
            .extensions
            .get::<PeerInfo>()
            .cloned()
            .unwrap_or_default();
        let caller = self
            .auth
            .authenticate(&head.headers, peer.leaf_cert(), peer.remote.map(|a| a.ip()))
            .await
            .map_err(|e| self.refused(e))?;
        tracing::Span::current().record("caller", tracing::field::display(&caller));
        if !needed.allowed_by(caller.scopes) {
            return Err(self.refused(AuthError::MissingScope {
                caller: caller.to_string(),
                needed: needed.scope_name(),
            }));
        }
        head.extensions.insert(caller);
        Ok(())
    }
}
