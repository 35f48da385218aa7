//! An upload sent: the bytes streamed into the upstream's multipart body as
//! they arrive, counted and hashed; at the end, the checks that must pass
//! before the body may end (the caller's checksum, the lease on the message
//! id), the commit point, then the rest in a task no caller can cut.

use std::sync::Arc;
use std::time::Duration;

use super::stream::UploadStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

use super::body::UploadBody;
use super::progress::Progress;
use super::{Named, Phase, Uploads, empty_file, late_metadata};
use crate::api::error::{Error, Op, nothing_applied};
use crate::api::reconcile::{self, Found};
use crate::api::writes::{Finished, Settled, WriteGuard, Writes, code_name, event_dedupe, now_ms};
use crate::audit;
use crate::domain::{ListView, NewAttachment, WorkOrderId};
use crate::proto::AttachmentEventType;
use crate::proto::wire::UploadAttachmentResponse;
use crate::proto::wire::upload_attachment_request::Payload;
use crate::recorder::GatewayEvent;
use crate::store::writes::{Attempt, Outcome, Pending, UploadAttempt};
use crate::upstream::model::UpstreamAttachment;
use crate::upstream::{Upstream, UpstreamError};

/// Chunks queued between the caller's stream and the upstream body: memory per
/// upload stays within a few chunks.
const QUEUED_CHUNKS: usize = 2;

/// How long the commit point waits for the list of what the work order held
/// before the upload (taken while the bytes stream), at most.
const LIST_BEFORE_WAIT: Duration = Duration::from_secs(5);

/// Tries `listed` makes at most: the list from before an upload is what tells
/// its attachment from an older identical one should its answer be lost, so a
/// list that failed for a passing reason is asked again while time remains,
/// at most twice more, each time from the read retry budget.
const LIST_BEFORE_TRIES: u32 = 3;

/// What the work order holds now (its attachments' typed fields), within
/// `within`; `None` when it cannot be had.
pub(super) async fn listed(
    upstream: &Upstream,
    work_order: WorkOrderId,
    within: Duration,
) -> Option<Vec<UpstreamAttachment>> {
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(200);
    for attempt in 1..=LIST_BEFORE_TRIES {
        match tokio::time::timeout_at(
            deadline,
            upstream.list(work_order, ListView::Basic, deadline),
        )
        .await
        {
            Ok(Ok(l)) => return Some(l),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, attempt, "the work order's attachments could not be listed");
                if !e.is_transient() {
                    return None;
                }
            }
            Err(_) => return None,
        }
        if Instant::now() + pause >= deadline || !upstream.take_read_retry() {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause *= 2;
    }
    None
}

impl Uploads {
    /// Streams the bytes upstream, then commits and finishes the upload (see
    /// the module's text).
    pub(super) async fn send(
        &self,
        mut stream: UploadStream,
        attachment: NewAttachment,
        mut guard: Option<WriteGuard>,
        listed_before: Option<Vec<String>>,
        named: Named,
        phase: &Phase,
    ) -> Result<UploadAttachmentResponse, Error> {
        let max_chunk = self.limits.max_chunk_bytes;
        let mut progress = Progress::new(
            self.limits.max_upload_bytes,
            max_chunk,
            attachment.declared_size,
        );

        // Nothing goes upstream before the first byte: an empty file is refused here.
        let first = loop {
            match self.next(&mut stream).await? {
                Some(Payload::Chunk(b)) if b.is_empty() => continue,
                Some(Payload::Chunk(b)) => {
                    progress.accept(&b)?;
                    break b;
                }
                Some(Payload::Metadata(_)) => return Err(late_metadata()),
                None => return Err(empty_file()),
            }
        };

        let first = self.hold(first).await?;
        let (tx, rx) = mpsc::channel(QUEUED_CHUNKS);
        let (body, gate) = UploadBody::new(rx);
        // Capacity is at least one, and the queue is empty: this cannot fail.
        let _ = tx.try_send(first);
        // A write with a message id lists what the work order holds before it
        // is sent, to tell its attachment from an older identical one should
        // its answer be lost (in parallel with the bytes: no added latency).
        let before = guard.as_ref().map(|_| {
            let (up, wo, within) = (
                Arc::clone(&self.upstream),
                attachment.work_order_id,
                self.writes.answer_timeout(),
            );
            // Aborted with the upload should it fail before its commit point.
            AbortOnDropHandle::new(tokio::spawn(
                async move { listed(&up, wo, within).await }.in_current_span(),
            ))
        });
        tracing::debug!(
            work_order_id = attachment.work_order_id.get(),
            declared = ?attachment.declared_size,
            "upload: streaming to the upstream"
        );
        // The request runs in a task of its own: it outlives this call once the
        // body ended (the commit point), and fails with the body before it.
        let (up, a) = (Arc::clone(&self.upstream), attachment.clone());
        // Until the commit point, the request goes when this call goes (an
        // abort of ours is no failure of the upstream's).
        let mut request = AbortOnDropHandle::new(tokio::spawn(
            async move { up.upload(&a, body).await }.in_current_span(),
        ));
        let lost = guard.as_ref().map(WriteGuard::lost);

        let pump = async {
            loop {
                match self.next(&mut stream).await? {
                    Some(Payload::Chunk(b)) => {
                        if b.is_empty() {
                            continue;
                        }
                        progress.accept(&b)?;
                        let chunk = self.hold(b).await?;
                        if tx.send(chunk).await.is_err() {
                            // The upstream stopped reading: its answer says why.
                            return Ok(false);
                        }
                    }
                    Some(Payload::Metadata(_)) => return Err(late_metadata()),
                    None => return Ok(true),
                }
            }
        };
        let lease_lost = async {
            match &lost {
                Some(l) => l.cancelled().await,
                None => std::future::pending().await,
            }
        };
        let outcome = tokio::select! {
            r = pump => r,
            r = &mut request => {
                // The upstream answered before the caller's stream ended.
                return Err(match r {
                    Ok(Err(e)) => Error::upstream(e, Op::Write),
                    Ok(Ok(_)) => Error::UploadUnconfirmed,
                    Err(_) => Error::Internal("the upload's request task failed"),
                });
            }
            () = lease_lost => Err(Error::LeaseLost),
        };
        match outcome {
            Ok(true) => {}
            Ok(false) => {
                drop(tx);
                return match request.await {
                    Ok(Err(e)) => Err(Error::upstream(e, Op::Write)),
                    _ => Err(Error::UploadUnconfirmed),
                };
            }
            // The gate drops unopened: the body fails and the upstream request
            // is aborted mid-body.
            Err(e) => {
                tracing::info!(code = ?e.code(), "upload refused mid-stream; upstream request aborted");
                return Err(e);
            }
        }
        let (size, sha256) = progress.finish()?;
        tracing::Span::current().record("upload.bytes", size);
        drop(tx);
        // Checked before the body's end: a mismatch stores nothing.
        if let Some(expected) = &attachment.expected_sha256
            && expected.as_str() != sha256
        {
            tracing::info!(
                "upload refused: its SHA-256 is not the one the caller gave; upstream request aborted"
            );
            drop(gate);
            let _ = request.await;
            return Err(Error::ChecksumMismatch {
                expected: expected.as_str().to_string(),
                actual: sha256,
            });
        }
        let mut attempt = UploadAttempt {
            name: attachment.name.as_str().to_string(),
            mime_type: attachment.mime_type.as_str().to_string(),
            size_bytes: size,
            sha256: sha256.clone(),
            preexisting: None,
        };
        if let Some(mut before) = before {
            let got = tokio::time::timeout(LIST_BEFORE_WAIT, &mut before).await;
            // A list still under way is of no use past this point.
            before.abort();
            attempt.preexisting = got
                .ok()
                .and_then(Result::ok)
                .flatten()
                .and_then(|l| reconcile::candidates_before(&l, &attempt))
                // A run again has the list that showed its earlier attempt
                // absent, also from before this attempt.
                .or(listed_before);
        }
        let keyed = guard.is_some();
        if let Some(g) = guard.as_mut() {
            // The commit point, fenced: only while the lease is held. An error
            // drops the gate unopened: nothing is stored.
            g.commit(Pending {
                committed_at_ms: now_ms(),
                given_up: false,
                message_id: attachment.message_id.as_str().to_string(),
                attempt: Attempt::Upload(attempt.clone()),
            })
            .await?;
        }
        phase.committed(keyed);
        gate.open();
        let (done_tx, done_rx) = oneshot::channel();
        let finish = Finish {
            writes: self.writes.clone(),
            guard,
            request: request.detach(),
            attachment,
            named,
            attempt,
        };
        tokio::spawn(
            async move {
                let _ = done_tx.send(finish.run().await);
            }
            .in_current_span(),
        );
        // The caller's deadline and the shutdown cut bound this wait (see `run`).
        match done_rx.await {
            Ok(r) => r.map(|f| f.value),
            Err(_) => Err(Error::Internal(
                "an upload's task ended without its outcome",
            )),
        }
    }
}

/// The part of an upload after its commit point, which no caller can cut.
struct Finish {
    writes: Writes,
    guard: Option<WriteGuard>,
    request: tokio::task::JoinHandle<Result<crate::upstream::model::UploadReceipt, UpstreamError>>,
    attachment: NewAttachment,
    named: Named,
    attempt: UploadAttempt,
}

impl Finish {
    async fn run(mut self) -> Result<Finished<UploadAttachmentResponse>, Error> {
        let sent = self.attachment.message_id.as_str().to_string();
        let answer =
            match tokio::time::timeout(self.writes.answer_timeout(), &mut self.request).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(UpstreamError::Transport(
                    "the upload's request task failed".into(),
                )),
                Err(_) => {
                    self.request.abort();
                    Err(UpstreamError::Timeout)
                }
            };
        match answer {
            Ok(receipt) => {
                let message_id = receipt.message_id.filter(|m| !m.is_empty()).unwrap_or(sent);
                self.done(receipt.attachment_id, message_id, false, "ok")
                    .await
            }
            Err(e) if nothing_applied(&e) => {
                tracing::warn!(error = %e, "upload refused upstream");
                if let Some(g) = self.guard.take() {
                    g.failed().await;
                }
                self.writes.metrics().write_outcome("failed");
                let err = Error::upstream(e, Op::Write);
                self.audit("", &sent, "failed", code_name(&err), false);
                Err(err)
            }
            Err(e) => self.lost(e, sent).await,
        }
    }

    /// The upstream's answer was lost after the body ended: ask it what became
    /// of the upload.
    async fn lost(
        mut self,
        e: UpstreamError,
        sent: String,
    ) -> Result<Finished<UploadAttachmentResponse>, Error> {
        tracing::warn!(error = %e, "an upload's answer was lost after it was sent whole: asking the upstream what became of it");
        let mut ambiguous = None;
        if self.guard.is_some() {
            let listed = listed(
                self.writes.upstream(),
                self.attachment.work_order_id,
                self.writes.answer_timeout(),
            )
            .await;
            match listed.map(|l| reconcile::upload(&l, &self.attempt, &sent)) {
                Some(Found::Ours(a)) => {
                    return self.done(a.attachment_id, sent, true, "reconciled").await;
                }
                // What a retry would be told, told now: the caller who stops
                // here knows the gateway cannot tell, and which to look at.
                Some(Found::Ambiguous(candidates)) => ambiguous = Some(candidates),
                Some(Found::Absent) | None => {}
            }
        }
        self.writes.metrics().write_outcome("outcome_unknown");
        let Some(g) = self.guard.take() else {
            let err = Error::upstream(e, Op::Write);
            self.audit("", &sent, "outcome_unknown", code_name(&err), false);
            return Err(err);
        };
        let held = g.give_up().await;
        let err = match ambiguous {
            Some(candidates) => Error::OutcomeAmbiguous {
                candidates,
                this_attempt: true,
            },
            None => Error::OutcomeUnknown {
                cause: e.to_string(),
                retry_after: Duration::from_secs(1),
            },
        };
        self.audit("", &sent, "outcome_unknown", code_name(&err), false);
        // Settled later by a task of its own (the caller has its answer now).
        let committed_at = now_ms();
        let writes = self.writes.clone();
        let (this, sent) = (Arc::new(self), Arc::<str>::from(sent));
        let check = move || {
            let (this, sent) = (Arc::clone(&this), Arc::clone(&sent));
            async move {
                let Some(l) = listed(
                    this.writes.upstream(),
                    this.attachment.work_order_id,
                    this.writes.answer_timeout(),
                )
                .await
                else {
                    return Settled::Unreachable;
                };
                match reconcile::upload(&l, &this.attempt, &sent) {
                    Found::Ours(a) => {
                        let outcome = Outcome::Upload {
                            attachment_id: a.attachment_id.clone(),
                            message_id: sent.to_string(),
                            size_bytes: this.attempt.size_bytes,
                            sha256: this.attempt.sha256.clone(),
                            reconciled: true,
                        };
                        let event = upload_event(
                            &this.attachment,
                            &this.named,
                            &a.attachment_id,
                            this.attempt.size_bytes,
                            &sent,
                        );
                        Settled::Happened(outcome, Box::new(event))
                    }
                    Found::Absent => Settled::DidNot,
                    Found::Ambiguous(_) => Settled::Unknown,
                }
            }
        };
        tokio::spawn(
            async move { writes.settle_later(held, committed_at, check).await }.in_current_span(),
        );
        Err(err)
    }

    /// The upload came true: its outcome recorded, then its event.
    async fn done(
        mut self,
        attachment_id: String,
        message_id: String,
        reconciled: bool,
        outcome: &'static str,
    ) -> Result<Finished<UploadAttachmentResponse>, Error> {
        let a = &self.attempt;
        let response = UploadAttachmentResponse {
            attachment_id: attachment_id.clone(),
            message_id: message_id.clone(),
            size_bytes: a.size_bytes,
            sha256: a.sha256.clone(),
            reconciled,
        };
        if let Some(g) = self.guard.take() {
            g.complete(Outcome::Upload {
                attachment_id: attachment_id.clone(),
                message_id: message_id.clone(),
                size_bytes: a.size_bytes,
                sha256: a.sha256.clone(),
                reconciled,
            })
            .await;
        }
        self.writes.metrics().write_outcome(outcome);
        self.writes
            .record_event(upload_event(
                &self.attachment,
                &self.named,
                &attachment_id,
                a.size_bytes,
                &message_id,
            ))
            .await;
        self.audit(&attachment_id, &message_id, outcome, "OK", reconciled);
        Ok(Finished {
            value: response,
            replayed: false,
            reconciled,
        })
    }

    fn audit(&self, attachment_id: &str, message_id: &str, outcome: &str, code: &str, rec: bool) {
        upload_audit(
            &self.attachment,
            &self.named,
            attachment_id,
            (self.attempt.size_bytes, &self.attempt.sha256),
            message_id,
            (outcome, code),
            (false, rec),
        );
    }
}

/// An upload's event.
pub(super) fn upload_event(
    a: &NewAttachment,
    named: &Named,
    attachment_id: &str,
    size_bytes: u64,
    message_id: &str,
) -> GatewayEvent {
    GatewayEvent {
        kind: AttachmentEventType::Added,
        work_order_id: a.work_order_id.get(),
        attachment: crate::proto::Attachment {
            attachment_id: attachment_id.to_string(),
            name: a.name.as_str().to_string(),
            mime_type: a.mime_type.as_str().to_string(),
            size_bytes,
            document_type: a.document_type.map_or(0, |d| d as i32),
            ..Default::default()
        },
        caller: Arc::clone(&named.caller),
        message_id: message_id.to_string(),
        dedupe: event_dedupe(named.key.as_ref(), "upload", a.message_id.as_str()),
    }
}

/// An upload's line in the audit trail.
pub(super) fn upload_audit(
    a: &NewAttachment,
    named: &Named,
    attachment_id: &str,
    (size, sha256): (u64, &str),
    message_id: &str,
    (outcome, code): (&str, &str),
    (replayed, reconciled): (bool, bool),
) {
    audit::write(&audit::Write {
        caller: &named.caller,
        method: "UploadAttachment",
        work_order_id: a.work_order_id.get(),
        attachment_id,
        name: a.name.as_str(),
        size_bytes: Some(size),
        sha256: Some(sha256),
        message_id,
        outcome,
        code,
        replayed,
        reconciled,
    });
}

/// Reads the rest of the caller's stream through, counted and hashed (for an
/// upload answered without sending it): its size and SHA-256.
pub(super) async fn read_through(
    uploads: &Uploads,
    stream: &mut UploadStream,
    a: &NewAttachment,
) -> Result<(u64, String), Error> {
    let mut progress = Progress::new(
        uploads.limits.max_upload_bytes,
        uploads.limits.max_chunk_bytes,
        a.declared_size,
    );
    loop {
        match uploads.next(stream).await? {
            Some(Payload::Chunk(b)) => progress.accept(&b)?,
            Some(Payload::Metadata(_)) => return Err(late_metadata()),
            None => break,
        }
    }
    if progress.received == 0 {
        return Err(empty_file());
    }
    progress.finish()
}
