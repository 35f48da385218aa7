//! Writes run once per caller and message id: a caller that retries a write after
//! losing its answer gets the first answer again instead of a second upload or a
//! NOT_FOUND from a second delete; a retry while the first is still running gets
//! ABORTED; the same id reused for a different request is refused, never answered
//! with the other request's outcome. Writes without a caller-given message id are
//! not remembered (the gateway made the id up, so no retry can carry it).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::deadline::Bounds;
use super::error::{Error, Op};
use crate::config::UpstreamSettings;
use crate::domain::MessageId;
use crate::store::writes::{Begin, Fingerprint, LeaseToken, Outcome, WriteKey, WriteStore};
use crate::upstream::UpstreamError;

/// Whether a write was answered from the record (done before) rather than run.
pub type Replayed = bool;

/// How a remembered write starts.
pub enum Start {
    /// Done before, by the same caller with the same request: answer as then.
    /// (An upload's bytes are compared by the caller of `begin`.)
    Replay(Outcome),
    /// Go ahead; complete the guard (when there is one) with the outcome.
    Go(Option<WriteGuard>),
}

/// The writes of this gateway, remembered in a [`WriteStore`].
#[derive(Clone)]
pub struct Writes {
    store: Arc<dyn WriteStore>,
    ttl: Duration,
    lease: Duration,
}

impl Writes {
    /// Outcomes are remembered for `upstream.idempotency_ttl`; a running
    /// write holds a lease of `upstream.idempotency_lease`, renewed while it
    /// runs when the store lets leases expire.
    pub fn new(store: Arc<dyn WriteStore>, s: &UpstreamSettings) -> Self {
        Self {
            store,
            ttl: s.idempotency_ttl,
            lease: s.idempotency_lease,
        }
    }

    /// Starts a write. `key` is `None` when the caller sent no message id;
    /// `field` names the message id in a refusal.
    pub async fn begin(
        &self,
        key: Option<WriteKey>,
        fingerprint: Fingerprint,
        field: &'static str,
    ) -> Result<Start, Error> {
        let Some(key) = key else {
            return Ok(Start::Go(None));
        };
        let begun = self
            .store
            .begin(&key, fingerprint, self.lease)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "the write record is unavailable");
                Error::WriteRecordUnavailable
            })?;
        match begun {
            Begin::Go(token) => Ok(Start::Go(Some(WriteGuard::new(
                Arc::clone(&self.store),
                key,
                token,
                fingerprint,
                self.ttl,
                self.lease,
            )))),
            Begin::Done {
                fingerprint: stored,
                outcome,
            } if stored == fingerprint => Ok(Start::Replay(outcome)),
            Begin::Running {
                fingerprint: stored,
            } if stored == fingerprint => Err(Error::WriteInProgress),
            Begin::Done { .. } | Begin::Running { .. } => {
                tracing::info!(
                    call = key.call,
                    "a message_id reused for another request: refused"
                );
                Err(Error::MessageIdReused { field })
            }
        }
    }

    /// Runs a metadata write (update, delete) once per caller and message id.
    #[allow(clippy::too_many_arguments)]
    pub async fn once(
        &self,
        bounds: &Bounds,
        key: Option<WriteKey>,
        fingerprint: Fingerprint,
        sent: &MessageId,
        deadline: Instant,
        what: &'static str,
        fut: impl Future<Output = Result<Option<String>, UpstreamError>>,
    ) -> Result<(String, Replayed), Error> {
        // The record's look-up is bounded by the caller's deadline too.
        let begun = tokio::time::timeout_at(deadline, self.begin(key, fingerprint, "message_id"))
            .await
            .map_err(|_| Error::Deadline {
                op: Op::Write,
                what: "the write record",
                nothing_applied: true,
            })??;
        let guard = match begun {
            Start::Replay(Outcome::MessageId(m)) => return Ok((m, true)),
            // Another call's outcome under this key: the call is part of the key,
            // so the store gave back something it was not asked for.
            Start::Replay(Outcome::Upload { .. }) => {
                return Err(Error::Internal("the write record answered another call"));
            }
            Start::Go(g) => g,
        };
        let received = bounds.run(deadline, Op::Write, what, fut).await?;
        // The upstream's message id when it answers one, else the one sent.
        let message_id = received.unwrap_or_else(|| sent.as_str().to_string());
        if let Some(g) = guard {
            g.complete(Outcome::MessageId(message_id.clone())).await;
        }
        Ok((message_id, false))
    }
}

/// A running write's hold on its key: renews the lease while alive (when leases
/// expire), stores the outcome on `complete`, and gives the key up when dropped
/// without one (the write failed or was cancelled).
pub struct WriteGuard {
    store: Arc<dyn WriteStore>,
    key: WriteKey,
    token: LeaseToken,
    fingerprint: Fingerprint,
    ttl: Duration,
    renewer: Option<tokio::task::JoinHandle<()>>,
    done: bool,
}

impl WriteGuard {
    fn new(
        store: Arc<dyn WriteStore>,
        key: WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        ttl: Duration,
        lease: Duration,
    ) -> Self {
        let renewer = store.leases_expire().then(|| {
            let (store, key, fp) = (Arc::clone(&store), key.clone(), fingerprint);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match store.renew(&key, token, fp, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("the lease of a running write was lost");
                            return;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot renew a write's lease"),
                    }
                }
            })
        });
        Self {
            store,
            key,
            token,
            fingerprint,
            ttl,
            renewer,
            done: false,
        }
    }

    /// Stores the outcome of the write. A store that fails now loses only the
    /// memory of the write, never the write: logged, and the caller still gets
    /// its answer.
    ///
    /// The write is done upstream by now: its record is stored by a task of its
    /// own, so a caller whose deadline passes (or who goes away) meanwhile does
    /// not cut it off, and a retry gets this answer instead of running again.
    pub async fn complete(mut self, outcome: Outcome) {
        self.done = true;
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        let (store, key, token, fp, ttl) = (
            Arc::clone(&self.store),
            self.key.clone(),
            self.token,
            self.fingerprint,
            self.ttl,
        );
        let stored =
            tokio::spawn(async move { store.complete(&key, token, fp, &outcome, ttl).await });
        match stored.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "a completed write could not be recorded: a retry with its message_id would run again");
            }
            Err(e) => tracing::error!(error = %e, "recording a completed write failed"),
        }
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.done {
            return;
        }
        let (store, key, token) = (Arc::clone(&self.store), self.key.clone(), self.token);
        tokio::spawn(async move {
            if let Err(e) = store.abandon(&key, token).await {
                tracing::warn!(error = %e, "cannot release a failed write's key; it frees itself when its lease expires");
            }
        });
    }
}
