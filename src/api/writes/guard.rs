//! A write's hold on its key, from its lease to its outcome.

use super::*;

/// A write's hold on its key: renews the lease while alive (when leases
/// expire), turns it into the committed record at the commit point, stores
/// the outcome, and when dropped without an outcome gives the key up (before
/// the commit point) or marks the outcome unknown (after it).
pub struct WriteGuard {
    store: Arc<dyn WriteStore>,
    key: WriteKey,
    token: LeaseToken,
    fingerprint: Fingerprint,
    ttl: Duration,
    renewer: Option<tokio::task::JoinHandle<()>>,
    /// Fired when a renewal finds the lease lost: the write must stop.
    lost: CancellationToken,
    committed: Option<Pending>,
    finished: bool,
}

impl WriteGuard {
    pub(super) fn new(
        store: Arc<dyn WriteStore>,
        key: WriteKey,
        token: LeaseToken,
        fingerprint: Fingerprint,
        ttl: Duration,
        lease: Duration,
    ) -> Self {
        let lost = CancellationToken::new();
        let renewer = store.leases_expire().then(|| {
            let (store, key, fp, lost) = (
                Arc::clone(&store),
                key.clone(),
                fingerprint,
                lost.clone(),
            );
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(lease / 3);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    match store.renew(&key, token, fp, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(
                                "the lease of a running write was lost: the write stops before it is sent whole"
                            );
                            lost.cancel();
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
            lost,
            committed: None,
            finished: false,
        }
    }

    /// Fired when the lease is lost before the commit point.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// The commit point: the lease becomes the committed record, only while it
    /// is held. An error means the write must not be sent whole.
    pub async fn commit(&mut self, pending: Pending) -> Result<(), Error> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.lost.is_cancelled() {
            return Err(Error::LeaseLost);
        }
        match self
            .store
            .commit(&self.key, self.token, self.fingerprint, &pending, self.ttl)
            .await
        {
            Ok(true) => {
                self.committed = Some(pending);
                Ok(())
            }
            Ok(false) => Err(Error::LeaseLost),
            Err(e) => {
                tracing::warn!(error = %e, "the write record is unavailable at the commit point: the write is not sent");
                Err(Error::WriteRecordUnavailable)
            }
        }
    }

    /// Stores the write's outcome. When the store fails (Redis out of reach),
    /// a task of its own writes it again (1 s doubling to 30 s, for up to
    /// [`SETTLE_TRIES_FOR`] and within the record's lifetime); until then the
    /// record stays committed, and a retry reconciles.
    pub async fn complete(mut self, outcome: Outcome) -> bool {
        self.finished = true;
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        match self
            .store
            .complete(&self.key, self.token, self.fingerprint, &outcome, self.ttl)
            .await
        {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(
                    "a write's lease was taken by another attempt before it completed: its outcome is not stored"
                );
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "a completed write's outcome could not be recorded: writing it again while Redis returns; meanwhile a retry with its message_id reconciles it");
                let (store, key, token, fp, ttl) = self.owned();
                tokio::spawn(
                    async move {
                        let until = Instant::now() + SETTLE_TRIES_FOR.min(ttl);
                        let mut wait = SETTLE_FIRST_WAIT;
                        while Instant::now() + wait < until {
                            tokio::time::sleep(wait).await;
                            match store.complete(&key, token, fp, &outcome, ttl).await {
                                Ok(_) => return,
                                Err(_) => wait = (wait * 2).min(SETTLE_MAX_WAIT),
                            }
                        }
                        tracing::error!("a completed write's outcome could not be recorded; a retry with its message_id reconciles it");
                    }
                    .in_current_span(),
                );
                false
            }
        }
    }

    /// The upstream refused the write: nothing happened, a retry may run it.
    pub async fn failed(mut self) {
        self.finished = true;
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if let Err(e) = self.store.abandon(&self.key, self.token).await {
            tracing::warn!(error = %e, "cannot release a failed write's key; it frees itself when its lease (or record) expires");
        }
    }

    /// The write's answer was lost after its commit point: its record says so.
    /// What the record is known by, to settle it later.
    pub async fn give_up(mut self) -> Held {
        self.finished = true;
        give_up(
            &self.store,
            &self.key,
            self.token,
            self.fingerprint,
            self.committed.take(),
            self.ttl,
        )
        .await;
        Held {
            key: self.key.clone(),
            token: self.token,
            fingerprint: self.fingerprint,
        }
    }
}

async fn give_up(
    store: &Arc<dyn WriteStore>,
    key: &WriteKey,
    token: LeaseToken,
    fingerprint: Fingerprint,
    committed: Option<Pending>,
    ttl: Duration,
) {
    let Some(mut pending) = committed else {
        return;
    };
    pending.given_up = true;
    if let Err(e) = store.give_up(key, token, fingerprint, &pending, ttl).await {
        tracing::warn!(error = %e, "cannot mark a write's outcome unknown; a retry reconciles it once it has settled");
    }
}

impl WriteGuard {
    /// What a task of its own needs to finish the record after the guard.
    fn owned(
        &self,
    ) -> (
        Arc<dyn WriteStore>,
        WriteKey,
        LeaseToken,
        Fingerprint,
        Duration,
    ) {
        (
            Arc::clone(&self.store),
            self.key.clone(),
            self.token,
            self.fingerprint,
            self.ttl,
        )
    }
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if self.finished {
            return;
        }
        let (store, key, token, fp, ttl) = self.owned();
        let committed = self.committed.take();
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        rt.spawn(async move {
            if committed.is_some() {
                give_up(&store, &key, token, fp, committed, ttl).await;
            } else if let Err(e) = store.abandon(&key, token).await {
                tracing::warn!(error = %e, "cannot release a failed write's key; it frees itself when its lease expires");
            }
        });
    }
}
