//! An upload whose message id was seen before: answered from its record (the
//! bytes read again and compared, so another file under the same id is
//! refused), or, when an earlier attempt's answer was lost, reconciled with
//! what the upstream shows before anything is sent.

use std::time::Duration;

use super::stream::UploadStream;

use super::send::{listed, read_through, upload_audit, upload_event};
use super::{Named, Uploads};
use crate::api::error::Error;
use crate::api::reconcile::{self, Found};
use crate::api::writes::{Unsettled, WriteGuard};
use crate::domain::NewAttachment;
use crate::proto::wire::UploadAttachmentResponse;
use crate::store::writes::{Attempt, Outcome};

/// What reconciling an earlier attempt decided.
pub(super) enum Reconciled {
    /// The earlier attempt's attachment: the answer.
    Answer(UploadAttachmentResponse),
    /// The earlier attempt provably stored nothing: run the upload, under
    /// this lease, with what the list that showed it held (taken before this
    /// attempt: all older, should this attempt's own list fail).
    RunAgain(Box<WriteGuard>, Option<Vec<String>>),
}

impl Uploads {
    /// The same caller sent an upload with this message id and the same
    /// metadata before, and it was stored. The bytes are read again and
    /// compared with what was stored: the same file gets the first answer (and
    /// the upload's event, if its first attempt could not append it, at most
    /// once); a different file under the same id is refused. Nothing goes
    /// upstream.
    pub(super) async fn replay(
        &self,
        mut stream: UploadStream,
        attachment: &NewAttachment,
        outcome: Outcome,
        named: &Named,
    ) -> Result<UploadAttachmentResponse, Error> {
        let Outcome::Upload {
            attachment_id,
            message_id,
            size_bytes,
            sha256,
            reconciled,
        } = outcome
        else {
            return Err(Error::Internal("the write record answered another call"));
        };
        let got = read_through(self, &mut stream, attachment).await?;
        if got != (size_bytes, sha256.clone()) {
            tracing::info!("a message_id reused for another file: refused");
            return Err(Error::MessageIdReused {
                field: "metadata.message_id",
            });
        }
        tracing::info!("upload already done under this message_id: answering as before");
        self.writes
            .record_event(upload_event(
                attachment,
                named,
                &attachment_id,
                size_bytes,
                &message_id,
            ))
            .await;
        upload_audit(
            attachment,
            named,
            &attachment_id,
            (size_bytes, &sha256),
            &message_id,
            ("ok", "OK"),
            (true, reconciled),
        );
        Ok(UploadAttachmentResponse {
            attachment_id,
            message_id,
            size_bytes,
            sha256,
            reconciled,
        })
    }

    /// An earlier attempt under this message id was sent whole and its
    /// outcome is not recorded: what the upstream lists now decides. The one
    /// attachment it provably created is the answer (once the caller's bytes
    /// are shown to be that file); none, once the earlier attempt can no
    /// longer be on its way, means run it again; several (or one that may be
    /// older) means the gateway cannot tell, and uploads nothing.
    pub(super) async fn reconcile(
        &self,
        stream: &mut UploadStream,
        attachment: &NewAttachment,
        u: Unsettled,
        named: &Named,
    ) -> Result<Reconciled, Error> {
        let Attempt::Upload(attempt) = &u.pending.attempt else {
            return Err(Error::Internal("the write record answered another call"));
        };
        let attempt = attempt.clone();
        let listed = listed(
            self.writes.upstream(),
            attachment.work_order_id,
            self.writes.answer_timeout(),
        )
        .await
        .ok_or(Error::OutcomeUnknown {
            cause: "the upstream cannot be asked what became of the earlier attempt now".into(),
            retry_after: Duration::from_secs(1),
        })?;
        let message_id = u.pending.message_id.clone();
        match reconcile::upload(&listed, &attempt, &message_id) {
            Found::Ours(a) => {
                let got = read_through(self, stream, attachment).await?;
                if got != (attempt.size_bytes, attempt.sha256.clone()) {
                    tracing::info!("a message_id reused for another file: refused");
                    return Err(Error::MessageIdReused {
                        field: "metadata.message_id",
                    });
                }
                tracing::info!(
                    attachment_id = %a.attachment_id,
                    "an earlier attempt's lost answer found upstream: answering with its attachment"
                );
                let outcome = Outcome::Upload {
                    attachment_id: a.attachment_id.clone(),
                    message_id: message_id.clone(),
                    size_bytes: attempt.size_bytes,
                    sha256: attempt.sha256.clone(),
                    reconciled: true,
                };
                self.writes.resolve(&u, &outcome).await;
                self.writes
                    .record_event(upload_event(
                        attachment,
                        named,
                        &a.attachment_id,
                        attempt.size_bytes,
                        &message_id,
                    ))
                    .await;
                upload_audit(
                    attachment,
                    named,
                    &a.attachment_id,
                    (attempt.size_bytes, &attempt.sha256),
                    &message_id,
                    ("reconciled", "OK"),
                    (false, true),
                );
                Ok(Reconciled::Answer(UploadAttachmentResponse {
                    attachment_id: a.attachment_id,
                    message_id,
                    size_bytes: attempt.size_bytes,
                    sha256: attempt.sha256,
                    reconciled: true,
                }))
            }
            Found::Absent if u.settled(self.writes.settle()) => {
                tracing::info!(
                    "an earlier attempt whose answer was lost stored nothing: running the upload again"
                );
                let before = reconcile::same_name_before(
                    &listed,
                    attachment.name.as_str(),
                    attachment.mime_type.as_str(),
                );
                Ok(Reconciled::RunAgain(
                    Box::new(self.writes.take_over(u).await?),
                    before,
                ))
            }
            // It may still be on its way: wait until it no longer can be.
            Found::Absent => Err(Error::WriteInProgress {
                retry_after: u
                    .wait(self.writes.settle())
                    .clamp(Duration::from_secs(1), Duration::from_secs(30)),
            }),
            Found::Ambiguous(candidates) => Err(Error::OutcomeAmbiguous {
                candidates,
                this_attempt: false,
            }),
        }
    }
}
