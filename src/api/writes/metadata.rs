//! Updates and deletes: run once per caller and message id, reconciled when
//! their answer is lost (see the parent module's text).

use super::*;

impl Writes {
    /// Runs an update or a delete once per caller and message id, within the
    /// caller's `deadline` for the caller's part (see the module's text for
    /// what holds where it is cut).
    pub async fn metadata_write(
        &self,
        bounds: &Bounds,
        w: MetadataWrite,
        run: UpstreamCall,
        deadline: Instant,
    ) -> Result<Finished<String>, Error> {
        // The record's look-up is bounded by the caller's deadline too.
        let begun = tokio::time::timeout_at(
            deadline,
            self.begin(w.key.clone(), w.fingerprint, "message_id"),
        )
        .await
        .map_err(|_| Error::Deadline {
            op: Op::Write,
            what: "the write record",
            nothing_applied: true,
        })??;
        let (guard, rerun) = match begun {
            Start::Replay(Outcome::MessageId(m)) => {
                self.record_event(w.event(&m)).await;
                w.audit(&m, "ok", "OK", true, false);
                return Ok(Finished {
                    value: m,
                    replayed: true,
                    reconciled: false,
                });
            }
            // Another call's outcome under this key: the call is part of the key,
            // so the store gave back something it was not asked for.
            Start::Replay(Outcome::Upload { .. }) => {
                return Err(Error::Internal("the write record answered another call"));
            }
            Start::Go(g) => (g, false),
            // The earlier attempt still waits for its answer (or its replica
            // died, and it has not settled yet): not sent a second time.
            Start::Unsettled(u) if !u.pending.given_up && !u.settled(self.settle) => {
                return Err(Error::WriteInProgress {
                    retry_after: u
                        .wait(self.settle)
                        .clamp(Duration::from_secs(1), Duration::from_secs(30)),
                });
            }
            Start::Unsettled(u) => {
                let listed = bounds
                    .run(
                        deadline,
                        Op::Read,
                        "looking up what became of an earlier attempt",
                        self.upstream
                            .list(w.work_order, crate::domain::ListView::Basic, deadline),
                    )
                    .await?;
                if w.came_true(&listed) {
                    let m = u.pending.message_id.clone();
                    self.resolve(&u, &Outcome::MessageId(m.clone())).await;
                    self.record_event(w.event(&m)).await;
                    w.audit(&m, "reconciled", "OK", false, true);
                    return Ok(Finished {
                        value: m,
                        replayed: false,
                        reconciled: true,
                    });
                }
                // Running an update or a delete again does no harm: it asks
                // for what the first asked for.
                (Some(self.take_over(u).await?), true)
            }
        };
        let attempt = w.attempt.clone();
        let mut guard = guard;
        if let Some(g) = guard.as_mut() {
            let pending = Pending {
                committed_at_ms: now_ms(),
                given_up: false,
                message_id: w.message_id.as_str().to_string(),
                attempt,
            };
            tokio::time::timeout_at(deadline, g.commit(pending))
                .await
                .map_err(|_| Error::Deadline {
                    op: Op::Write,
                    what: "the write record",
                    nothing_applied: true,
                })??;
        }
        // From here on, the write runs to its end whatever the caller does.
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        let keyed = guard.is_some();
        tokio::spawn(
            async move {
                let r = this.finish_metadata_write(w, run, guard, rerun).await;
                let _ = tx.send(r);
            }
            .in_current_span(),
        );
        await_finished(bounds, rx, deadline, keyed).await
    }

    /// The part of an update or delete that no caller can cut: the upstream
    /// call, its outcome recorded, its event appended.
    async fn finish_metadata_write(
        &self,
        w: MetadataWrite,
        run: UpstreamCall,
        guard: Option<WriteGuard>,
        rerun: bool,
    ) -> Result<Finished<String>, Error> {
        let sent = w.message_id.as_str().to_string();
        let answer = match tokio::time::timeout(self.answer_timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(UpstreamError::Timeout),
        };
        let answer = match answer {
            // Run again after an attempt whose outcome was lost: the attachment
            // gone means the first delete came true.
            Err(UpstreamError::Api(api))
                if rerun && w.call == Call::Delete && api.http_status == 404 =>
            {
                Ok(None)
            }
            other => other,
        };
        match answer {
            Ok(received) => {
                // The upstream's message id when it answers one, else the one sent.
                let m = received.unwrap_or(sent);
                if let Some(g) = guard {
                    g.complete(Outcome::MessageId(m.clone())).await;
                }
                self.metrics.write_outcome("ok");
                self.record_event(w.event(&m)).await;
                w.audit(&m, "ok", "OK", false, false);
                Ok(Finished {
                    value: m,
                    replayed: false,
                    reconciled: false,
                })
            }
            Err(e) if crate::api::error::nothing_applied(&e) => {
                if let Some(g) = guard {
                    g.failed().await;
                }
                self.metrics.write_outcome("failed");
                let err = Error::upstream(e, Op::Write);
                w.audit(&sent, "failed", code_name(&err), false, false);
                Err(err)
            }
            Err(e) => {
                tracing::warn!(error = %e, "a write's answer was lost after it was sent: asking the upstream what became of it");
                let listed = tokio::time::timeout(
                    self.answer_timeout,
                    self.upstream.list(
                        w.work_order,
                        crate::domain::ListView::Basic,
                        Instant::now() + self.answer_timeout,
                    ),
                )
                .await;
                if let Ok(Ok(listed)) = listed
                    && w.came_true(&listed)
                {
                    if let Some(g) = guard {
                        g.complete(Outcome::MessageId(sent.clone())).await;
                    }
                    self.metrics.write_outcome("reconciled");
                    self.record_event(w.event(&sent)).await;
                    w.audit(&sent, "reconciled", "OK", false, true);
                    return Ok(Finished {
                        value: sent,
                        replayed: false,
                        reconciled: true,
                    });
                }
                self.metrics.write_outcome("outcome_unknown");
                let Some(g) = guard else {
                    let err = Error::upstream(e, Op::Write);
                    w.audit(&sent, "outcome_unknown", code_name(&err), false, false);
                    return Err(err);
                };
                let held = g.give_up().await;
                let err = Error::OutcomeUnknown {
                    cause: e.to_string(),
                    retry_after: Duration::from_secs(1),
                };
                w.audit(&sent, "outcome_unknown", code_name(&err), false, false);
                // Settled later by this same task, once the caller has its answer.
                let (this, committed_at) = (self.clone(), now_ms());
                let (w, sent) = (Arc::new(w), Arc::<str>::from(sent));
                let check = {
                    let this = this.clone();
                    move || {
                        let (this, w, sent) = (this.clone(), Arc::clone(&w), Arc::clone(&sent));
                        async move {
                            match this
                                .upstream
                                .list(
                                    w.work_order,
                                    crate::domain::ListView::Basic,
                                    Instant::now() + this.answer_timeout,
                                )
                                .await
                            {
                                Ok(listed) if w.came_true(&listed) => Settled::Happened(
                                    Outcome::MessageId(sent.to_string()),
                                    Box::new(w.event(&sent)),
                                ),
                                // Running an update or a delete again does no harm.
                                Ok(_) => Settled::DidNot,
                                // Whatever kept the list away (an open breaker, a
                                // cool-down included), ask again later.
                                Err(_) => Settled::Unreachable,
                            }
                        }
                    }
                };
                tokio::spawn(
                    async move { this.settle_later(held, committed_at, check).await }
                        .in_current_span(),
                );
                Err(err)
            }
        }
    }
}

/// An update or a delete, ready to run.
pub struct MetadataWrite {
    pub call: Call,
    pub key: Option<WriteKey>,
    pub fingerprint: Fingerprint,
    /// The message id sent upstream.
    pub message_id: MessageId,
    pub work_order: WorkOrderId,
    pub attempt: Attempt,
    /// The event it becomes (without its message id).
    pub kind: AttachmentEventType,
    pub attachment: Attachment,
    pub caller: Arc<str>,
}

/// A metadata write's upstream call.
pub type UpstreamCall = BoxFuture<'static, Result<Option<String>, UpstreamError>>;

impl MetadataWrite {
    fn event(&self, message_id: &str) -> GatewayEvent {
        GatewayEvent {
            kind: self.kind,
            work_order_id: self.work_order.get(),
            attachment: self.attachment.clone(),
            caller: Arc::clone(&self.caller),
            message_id: message_id.to_string(),
            dedupe: event_dedupe(
                self.key.as_ref(),
                self.call_name(),
                self.message_id.as_str(),
            ),
        }
    }

    fn call_name(&self) -> &'static str {
        match self.call {
            Call::Update => "update",
            Call::Delete => "delete",
        }
    }

    /// Whether the upstream's list shows the write came true.
    fn came_true(&self, listed: &[crate::upstream::model::UpstreamAttachment]) -> bool {
        match &self.attempt {
            Attempt::Delete { attachment_id } => reconcile::deleted(listed, attachment_id),
            Attempt::Update(u) => reconcile::updated(listed, u) == reconcile::Updated::Yes,
            Attempt::Upload(_) => false,
        }
    }

    fn audit(&self, message_id: &str, outcome: &str, code: &str, replayed: bool, reconciled: bool) {
        audit::write(&audit::Write {
            caller: &self.caller,
            method: match self.call {
                Call::Update => "UpdateAttachment",
                Call::Delete => "DeleteAttachment",
            },
            work_order_id: self.work_order.get(),
            attachment_id: &self.attachment.attachment_id,
            name: &self.attachment.name,
            size_bytes: None,
            sha256: None,
            message_id,
            outcome,
            code,
            replayed,
            reconciled,
        });
    }
}
