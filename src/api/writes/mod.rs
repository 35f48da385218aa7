//! Writes happen once per caller and message id, and what a write's caller (or
//! its retry) is told is what happened upstream.
//!
//! A write named by a message id keeps a record (see [`WriteStore`]): a lease
//! while it is prepared, a committed record from its **commit point** (the
//! moment its request is sent whole: an upload's multipart closing boundary, an
//! update's or delete's request) until its outcome is known, then its outcome.
//! What holds wherever the call is cut:
//!
//! - **Before the commit point** (metadata, the lease, the bytes streaming):
//!   nothing is stored upstream; the lease is dropped (or expires, if the
//!   replica died); a retry runs the write.
//! - **At the commit point**: the lease becomes the committed record only while
//!   it is held (one atomic step); a lease lost meanwhile (a replica cut off
//!   from Redis past its lease, whose key another replica may hold now) aborts
//!   the body, so nothing is stored. A renewal never takes a key back.
//! - **After it**: the upstream call runs to its end in a task of its own,
//!   which no deadline, reset or departure of the caller cuts (the upstream
//!   client's own timeouts bound it). That task records the outcome, then
//!   appends the write's event, deduplicated by the write's key, so neither
//!   can be lost to the caller going away, and no event is appended twice. A
//!   retry meanwhile gets ABORTED `WRITE_IN_PROGRESS` with `RetryInfo`, then
//!   the first attempt's answer.
//! - **The answer lost** (the connection dropped, a 5xx, no answer in time):
//!   the task asks the upstream what became of the write (see [`reconcile`]);
//!   when the upstream's list shows the write came true, that is the outcome
//!   (`reconciled`). When it cannot be told yet, the record says the outcome is
//!   unknown, and the caller is told to retry with the same message id: the
//!   retry reconciles again, never runs the write blindly. Whether the caller
//!   retries or not, the task asks again once [`Writes::settle`] has passed
//!   since the commit point ([`Writes::settle_later`]), and keeps asking
//!   through a failing list or an unreachable Redis for up to
//!   [`SETTLE_TRIES_FOR`]: the outcome and its event settle by themselves.
//! - **The outcome's record lost** (Redis unreachable at that moment): the
//!   record stays committed; once [`Writes::settle`] has passed since the
//!   commit point, a retry reconciles it.
//! - **The event lost** (the event log unreachable for the task's tries): a
//!   retry answered from the record appends it (the same dedupe key: at most
//!   once).
//!
//! Writes without a caller-given message id have no record (the gateway made
//! the id up, so no retry can carry it); their upstream call and event still
//! run to their end in a task of their own.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::deadline::Bounds;
use super::error::{Error, Op};
use super::reconcile;
use super::runtime::Runtime;
use crate::audit;
use crate::config::UpstreamSettings;
use crate::domain::{MessageId, WorkOrderId};
use crate::metrics::{Counted, Metrics};
use crate::proto::{Attachment, AttachmentEventType};
use crate::recorder::{GatewayEvent, Recorder};
use crate::store::writes::{
    Attempt, Begin, Fingerprint, LeaseToken, Outcome, Pending, WriteKey, WriteStore,
};
use crate::upstream::{Upstream, UpstreamError};

/// How long the task that finishes a write keeps trying to append its event.
const EVENT_TRIES_FOR: Duration = Duration::from_secs(15);

/// How long a write whose answer was lost keeps trying to settle when the
/// upstream cannot be asked or its record cannot be written; never past the
/// record's own lifetime (`upstream.idempotency_ttl`, 10 minutes by default),
/// after which a retry runs the write as new.
pub const SETTLE_TRIES_FOR: Duration = Duration::from_secs(600);

/// The first pause between settling rounds; it doubles up to [`SETTLE_MAX_WAIT`].
const SETTLE_FIRST_WAIT: Duration = Duration::from_secs(1);
const SETTLE_MAX_WAIT: Duration = Duration::from_secs(30);

/// Writes that keep trying to settle at once, at most (each is a small task;
/// the bound holds memory and the upstream's load through a long outage).
pub const MAX_SETTLING: usize = 256;

/// How a remembered write starts.
pub enum Start {
    /// Done before, by the same caller with the same request: answer as then.
    /// (An upload's bytes are compared by the caller of `begin`.)
    Replay(Outcome),
    /// Go ahead; commit and complete the guard (when there is one).
    Go(Option<WriteGuard>),
    /// An earlier attempt was sent whole and its outcome is not recorded:
    /// reconcile before anything.
    Unsettled(Unsettled),
}

/// An earlier attempt of this write whose outcome is not recorded.
pub struct Unsettled {
    key: WriteKey,
    fingerprint: Fingerprint,
    token: LeaseToken,
    pub pending: Pending,
    /// Since its commit point.
    age: Duration,
}

impl Unsettled {
    /// Whether its holder can no longer be waiting for the upstream's answer.
    pub fn settled(&self, settle: Duration) -> bool {
        self.age >= settle
    }

    /// How long until it is settled.
    pub fn wait(&self, settle: Duration) -> Duration {
        settle.saturating_sub(self.age)
    }
}

/// The writes of this gateway, remembered in a [`WriteStore`].
#[derive(Clone)]
pub struct Writes {
    store: Arc<dyn WriteStore>,
    ttl: Duration,
    lease: Duration,
    /// How long after a commit point a write's answer may still come.
    settle: Duration,
    /// How long a write's task waits for the upstream's answer after its
    /// commit point.
    answer_timeout: Duration,
    upstream: Arc<Upstream>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// Permits for writes that keep trying to settle ([`MAX_SETTLING`]).
    settling: Arc<Semaphore>,
}

/// What a finished write was, for its caller, its event and the audit trail.
#[derive(Debug, Clone)]
pub struct Finished<T> {
    pub value: T,
    /// Answered from the record (done before), not run now.
    pub replayed: bool,
    /// Found by reconciling with the upstream after its answer was lost.
    pub reconciled: bool,
}

impl Writes {
    /// Outcomes are remembered for `upstream.idempotency_ttl`; a running
    /// write holds a lease of `upstream.idempotency_lease`, renewed while it
    /// runs when the store lets leases expire. After its commit point, a write
    /// waits up to `upstream.request_timeout` for its answer (the upstream has
    /// the whole request by then); twice that after the commit point, a write
    /// the upstream does not show is taken as not applied (its holder cannot
    /// be waiting for it any more, and the upstream had as long again to store
    /// it).
    pub fn new(store: Arc<dyn WriteStore>, s: &UpstreamSettings, rt: &Runtime) -> Self {
        let answer_timeout = s.request_timeout;
        Self {
            store,
            ttl: s.idempotency_ttl,
            lease: s.idempotency_lease,
            settle: answer_timeout * 2,
            answer_timeout,
            upstream: Arc::clone(&rt.upstream),
            recorder: rt.recorder.clone(),
            metrics: Arc::clone(&rt.metrics),
            settling: Arc::new(Semaphore::new(MAX_SETTLING)),
        }
    }

    /// How long after its commit point a write's answer may still come.
    pub fn settle(&self) -> Duration {
        self.settle
    }

    /// How long a write's task waits for the upstream's answer.
    pub fn answer_timeout(&self) -> Duration {
        self.answer_timeout
    }

    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
            Begin::Go(token) => Ok(Start::Go(Some(self.guard(key, token, fingerprint)))),
            Begin::Done {
                fingerprint: stored,
                outcome,
            } if stored == fingerprint => Ok(Start::Replay(outcome)),
            Begin::Running {
                fingerprint: stored,
            } if stored == fingerprint => Err(Error::WriteInProgress {
                retry_after: Duration::from_secs(1),
            }),
            Begin::Committed {
                fingerprint: stored,
                token,
                pending,
            } if stored == fingerprint => {
                let age = now_ms().saturating_sub(pending.committed_at_ms);
                Ok(Start::Unsettled(Unsettled {
                    key,
                    fingerprint,
                    token,
                    pending,
                    age: Duration::from_millis(age),
                }))
            }
            Begin::Done { .. } | Begin::Running { .. } | Begin::Committed { .. } => {
                tracing::info!(
                    call = key.call,
                    "a message_id reused for another request: refused"
                );
                Err(Error::MessageIdReused { field })
            }
        }
    }

    fn guard(&self, key: WriteKey, token: LeaseToken, fingerprint: Fingerprint) -> WriteGuard {
        WriteGuard::new(
            Arc::clone(&self.store),
            key,
            token,
            fingerprint,
            self.ttl,
            self.lease,
        )
    }

    /// Records what reconciling found, in place of the earlier attempt's
    /// committed record.
    pub async fn resolve(&self, u: &Unsettled, outcome: &Outcome) {
        self.metrics.write_outcome("reconciled");
        match self
            .store
            .complete(&u.key, u.token, u.fingerprint, outcome, self.ttl)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::info!("a reconciled write was settled by another retry meanwhile")
            }
            Err(e) => {
                tracing::warn!(error = %e, "a reconciled write's outcome could not be recorded: the next retry reconciles again")
            }
        }
    }

    /// Runs the write again, as the earlier attempt provably did not happen:
    /// its committed record becomes this attempt's lease.
    pub async fn take_over(&self, u: Unsettled) -> Result<WriteGuard, Error> {
        match self
            .store
            .take_over(&u.key, u.token, u.fingerprint, self.lease)
            .await
        {
            Ok(Some(token)) => Ok(self.guard(u.key, token, u.fingerprint)),
            Ok(None) => Err(Error::WriteInProgress {
                retry_after: Duration::from_secs(1),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "the write record is unavailable");
                Err(Error::WriteRecordUnavailable)
            }
        }
    }

    /// Once a write whose answer was lost can no longer be on its way (its
    /// settle time after its commit point), asks the upstream again what
    /// became of it, unless a retry settled it meanwhile: what came true is
    /// recorded with its event; what provably did not frees the message id
    /// (a retry runs it); what cannot be told (an identical attachment it
    /// cannot be told apart from) stays unknown. So a write's outcome and
    /// event settle even when its caller never retries.
    ///
    /// When the upstream cannot be asked (its list fails) or the record cannot
    /// be written (Redis unreachable), it asks and writes again, with backoff
    /// (1 s doubling to 30 s), for up to [`SETTLE_TRIES_FOR`]. An outage of the
    /// upstream does not become a storm of lists: at most [`MAX_SETTLING`]
    /// writes keep trying at once (beyond that, a write gets the one check, and
    /// its retry reconciles it), and an open circuit breaker answers their
    /// lists without calling the upstream. (A round is not held to the read
    /// retry budget, which refills only with new calls: a gateway gone quiet
    /// must settle too. Only a list's own second and third tries within a
    /// round take from it.)
    pub async fn settle_later<F, Fut>(&self, held: Held, committed_at_ms: u64, check: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Settled>,
    {
        let _settling = Counted::new(&self.metrics.writes_settling);
        let age = Duration::from_millis(now_ms().saturating_sub(committed_at_ms));
        tokio::time::sleep(self.settle.saturating_sub(age)).await;
        let may_retry = Arc::clone(&self.settling).try_acquire_owned().ok();
        // Within the record's lifetime (from its commit point, which came at
        // most an answer timeout before `committed_at_ms`).
        let age = Duration::from_millis(now_ms().saturating_sub(committed_at_ms));
        let lives = self.ttl.saturating_sub(age + self.answer_timeout);
        let until = Instant::now() + SETTLE_TRIES_FOR.min(lives);
        let mut wait = SETTLE_FIRST_WAIT;
        let mut round = 0u32;
        loop {
            round += 1;
            match check().await {
                Settled::Happened(outcome, event) => {
                    return self.record_settled(&held, &outcome, *event, until).await;
                }
                Settled::DidNot => return self.free_settled(&held, until).await,
                Settled::Unknown => return,
                Settled::Unreachable => {}
            }
            if may_retry.is_none() || Instant::now() + wait >= until {
                tracing::warn!(
                    rounds = round,
                    "a write whose answer was lost could not be settled: the upstream could not be asked; a retry with its message_id reconciles it"
                );
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(SETTLE_MAX_WAIT);
        }
    }

    /// Records a settled write's outcome (trying while Redis is unreachable),
    /// then its event; nothing when a retry recorded it meanwhile.
    async fn record_settled(
        &self,
        held: &Held,
        outcome: &Outcome,
        event: GatewayEvent,
        until: Instant,
    ) {
        let mut wait = SETTLE_FIRST_WAIT;
        loop {
            match self
                .store
                .complete(&held.key, held.token, held.fingerprint, outcome, self.ttl)
                .await
            {
                Ok(true) => {
                    tracing::info!("a write whose answer was lost is found upstream: recorded");
                    self.metrics.write_outcome("reconciled");
                    self.record_event(event).await;
                    return;
                }
                // A retry settled it (and appends the event itself).
                Ok(false) => return,
                Err(e) if Instant::now() + wait < until => {
                    tracing::warn!(error = %e, "a settled write's outcome could not be recorded: trying again");
                }
                Err(e) => {
                    tracing::error!(error = %e, "a settled write's outcome could not be recorded; a retry with its message_id reconciles it");
                    return;
                }
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(SETTLE_MAX_WAIT);
        }
    }

    /// Frees the message id of a write that provably did not happen (only the
    /// record this write left, not one a retry made since), trying while Redis
    /// is unreachable. (Its lease-less committed record would otherwise wait
    /// for a retry to reconcile it.)
    async fn free_settled(&self, held: &Held, until: Instant) {
        tracing::info!(
            "a write whose answer was lost did not happen upstream: its message id is free again"
        );
        let mut wait = SETTLE_FIRST_WAIT;
        while let Err(e) = self.store.abandon(&held.key, held.token).await {
            if Instant::now() + wait >= until {
                tracing::warn!(error = %e, "a write that did not happen could not free its message id; a retry reconciles it");
                return;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(SETTLE_MAX_WAIT);
        }
    }

    /// Appends a write's event, trying for a while: called by the task that
    /// finishes the write (whose caller may be gone), and by a replay (which
    /// heals an event its first attempt could not append). `dedupe` makes it
    /// at most once.
    pub async fn record_event(&self, e: GatewayEvent) {
        let until = Instant::now() + EVENT_TRIES_FOR;
        let mut wait = Duration::from_millis(200);
        loop {
            match self.recorder.gateway_write(&e).await {
                Ok(()) => return,
                Err(err) if Instant::now() + wait < until => {
                    tracing::warn!(error = %err, "a write's event could not be recorded: trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(4));
                }
                Err(err) => {
                    tracing::error!(error = %err, "a write is done but its event could not be recorded; a retry with its message_id records it");
                    return;
                }
            }
        }
    }
}

/// The gRPC code's name, for the audit trail.
pub fn code_name(e: &Error) -> &'static str {
    crate::api::error::code_name(e.code())
}

/// Waits for a write's task within the caller's deadline and the shutdown
/// cut. A caller that stops waiting is told whether a retry with the same
/// message id gets the outcome (`keyed`).
pub async fn await_finished<T>(
    bounds: &Bounds,
    rx: oneshot::Receiver<Result<Finished<T>, Error>>,
    deadline: Instant,
    keyed: bool,
) -> Result<Finished<T>, Error> {
    tokio::select! {
        r = tokio::time::timeout_at(deadline, rx) => match r {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Internal("a write's task ended without its outcome")),
            Err(_) if keyed => Err(Error::OutcomePending {
                why: "the deadline passed",
                deadline: true,
            }),
            Err(_) => Err(Error::Deadline { op: Op::Write, what: "the write", nothing_applied: false }),
        },
        () = bounds.cut.cancelled() => Err(if keyed {
            Error::OutcomePending { why: "the gateway is shutting down", deadline: false }
        } else {
            Error::ShuttingDown { op: Op::Write, nothing_applied: false }
        }),
    }
}

/// Which metadata write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Update,
    Delete,
}

/// The dedupe key of a write's event.
pub fn event_dedupe(key: Option<&WriteKey>, call: &str, message_id: &str) -> String {
    match key {
        Some(k) => {
            let d = Fingerprint::of(&[
                k.caller.as_bytes(),
                k.call.as_bytes(),
                &k.work_order_id.to_le_bytes(),
                k.message_id.as_bytes(),
            ]);
            format!("gw:{}", hex::encode(&d.0[..16]))
        }
        None => format!("gw:{call}:{message_id}"),
    }
}

/// What a write's record is known by, to settle it later.
pub struct Held {
    key: WriteKey,
    token: LeaseToken,
    fingerprint: Fingerprint,
}

/// What asking the upstream again found of a write whose answer was lost.
pub enum Settled {
    /// It came true: its outcome, and its event.
    Happened(Outcome, Box<GatewayEvent>),
    /// It provably did not.
    DidNot,
    /// It cannot be told (an identical attachment it cannot be told apart
    /// from): asking again would not tell either.
    Unknown,
    /// The upstream could not be asked (its list failed): ask again later.
    Unreachable,
}

/// Milliseconds since the Unix epoch, by this replica's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

mod guard;
mod metadata;

pub use guard::WriteGuard;
pub use metadata::{MetadataWrite, UpstreamCall};
