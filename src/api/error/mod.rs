//! The gateway's one error type, and the one place it becomes a `tonic::Status`.
//!
//! Every layer (validation, authentication, limits, the upstream client, the
//! adapter's own checks) returns an [`Error`]. Each aspect of a status is decided
//! once, by one short match: [`Error::code`], [`Error::reason`],
//! [`Error::retry_safe`], [`Error::retry_after`] and [`Error::details`] (the
//! `ErrorInfo` every status carries, with `retry_safe`, and `BadRequest` /
//! `RetryInfo` / `QuotaFailure` where they apply); the message is the error's
//! own text (`#[error]`). Upstream failures have their tables and aspects in
//! [`upstream`]. The README's error tables are these.

mod upstream;

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, QuotaViolation, StatusExt};

use self::upstream::RATE_LIMITED;
pub use self::upstream::{BY_HTTP_STATUS, BY_UPSTREAM_CODE, classify, nothing_applied};
use crate::auth::AuthError;
use crate::domain::{FieldError, Violation};
use crate::limits::Refusal;
pub use crate::proto::error_info::{ERROR_DOMAIN, RESUME_AFTER_EVENT_ID, RETRY_SAFE, RetrySafe};
use crate::upstream::UpstreamError;

/// Whether the failed call changes upstream state, which decides whether an
/// interrupted call is safe to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

impl Op {
    /// A read can always be repeated; a write only when nothing of it was
    /// applied (one interrupted after it was sent may or may not have been).
    fn retry_safe(self, nothing_applied: bool) -> RetrySafe {
        match (self, nothing_applied) {
            (Self::Read, _) | (Self::Write, true) => RetrySafe::Yes,
            (Self::Write, false) => RetrySafe::Unknown,
        }
    }
}

/// The reason of a call the caller ended by resetting its stream.
const CALLER_RESET: &str = "CALLER_RESET";
/// What a caller is told that reuses a message id for another request.
const MESSAGE_ID_REUSED: &str = "this message_id was already used by this caller for a different request \
     (another file, attachment or change); a new request needs a new message_id";

/// Everything that can end a call with an error. Each text is what the caller
/// reads as the status message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fields of the request are not acceptable (every bad field, at once).
    #[error("invalid request: {}", summary(.0))]
    Invalid(Vec<Violation>),
    /// The caller is not authenticated, or lacks the method's scope.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A limit refused the call before anything was done.
    #[error("{0}")]
    Limited(Refusal),
    /// The upstream call failed or was refused.
    #[error("{error}")]
    Upstream { error: UpstreamError, op: Op },
    /// The caller's deadline (or the gateway's own timeout) passed.
    /// `nothing_applied`: the call was stopped before the upstream could act on it.
    #[error("the deadline passed before {what} finished")]
    Deadline {
        op: Op,
        what: &'static str,
        nothing_applied: bool,
    },
    /// The gateway is shutting down and its grace period ran out for this call.
    #[error("the gateway is shutting down and stopped this call; retry on another replica")]
    ShuttingDown { op: Op, nothing_applied: bool },
    /// A write with the same message id is running now.
    #[error(
        "a write with this message_id is in progress; retry when it has finished to get its answer"
    )]
    WriteInProgress { retry_after: Duration },
    /// The write's lease on its message id was lost before it was sent whole
    /// (the record of writes was out of reach longer than a lease): it was
    /// stopped, and nothing was stored upstream.
    #[error(
        "this write lost its hold on its message_id before it was sent whole (the record of writes was out of reach); it was stopped and nothing was stored upstream: retry"
    )]
    LeaseLost,
    /// The write was sent whole and its answer was lost; the upstream does not
    /// show yet whether it came true. A retry with the same message id asks
    /// again, and never runs the write blindly.
    #[error(
        "the write was sent but its answer was lost ({cause}); whether it came true is not known yet: retry with the same message_id, and the gateway finds out before doing anything"
    )]
    OutcomeUnknown {
        cause: String,
        retry_after: Duration,
    },
    /// An upload's answer was lost, and the upstream shows several
    /// attachments it may have created (or one that may be older): the
    /// gateway cannot tell. Told by the attempt itself (`this_attempt`), or by
    /// a retry, which uploads nothing.
    #[error(
        "{} with this message_id was sent but its answer was lost, and the gateway cannot tell which attachment (if any) it created: candidates {}{}. Check these attachments, then upload with a new message_id if none is yours",
        if *.this_attempt { "the upload" } else { "an earlier attempt" },
        .candidates.join(", "),
        if *.this_attempt { "" } else { "; nothing was uploaded now" }
    )]
    OutcomeAmbiguous {
        candidates: Vec<String>,
        this_attempt: bool,
    },
    /// The caller stopped waiting (deadline, shutdown) after the write was
    /// sent whole: it runs to its end, and a retry with the same message id
    /// gets its outcome.
    #[error(
        "{why} after the write was sent; it runs to its end and its outcome is recorded under its message_id: retry with the same message_id to get it"
    )]
    OutcomePending { why: &'static str, deadline: bool },
    /// The bytes received do not have the SHA-256 the caller said they have:
    /// nothing was stored upstream.
    #[error(
        "invalid request: metadata.expected_sha256: the file received has SHA-256 {actual}, not {expected}; the upload was stopped before its end and nothing was stored"
    )]
    ChecksumMismatch { expected: String, actual: String },
    /// The caller reused a message id for a different request. `field` names the
    /// message id in the request.
    #[error("invalid request: {field}: {}", MESSAGE_ID_REUSED)]
    MessageIdReused { field: &'static str },
    /// The record of writes by message id cannot be reached: the write is not
    /// run, since its retry could not be recognised.
    #[error(
        "the record of writes by message_id is unavailable, so a retry of this write could not be recognised; nothing was sent upstream: retry"
    )]
    WriteRecordUnavailable,
    /// The upstream answered an upload before its last byte: it cannot have
    /// stored the whole file, and whether it stored anything is unknown.
    #[error(
        "the upstream answered the upload before its last byte; whether it stored anything is unknown"
    )]
    UploadUnconfirmed,
    /// A download ended before the length its headers announced.
    #[error("the download ended after {received} of {expected} bytes")]
    DownloadTruncated { received: u64, expected: u64 },
    /// A watch's cursor is older than the events retained (or from a log that lost
    /// its events): the subscriber must resync.
    #[error(
        "after_event_id is older than the events the gateway retains: list the work orders again (ListAttachments), then watch from now (no after_event_id)"
    )]
    CursorExpired,
    /// The event log could not be read or written.
    #[error("the event log is unavailable: {0}")]
    EventLogUnavailable(String),
    /// A watch under way could not read on; resume after `resume_after`.
    #[error(
        "the watch was interrupted ({why}); resume after {}",
        RESUME_AFTER_EVENT_ID
    )]
    WatchInterrupted { resume_after: String, why: String },
    /// A watch's subscriber stopped reading; resume after `resume_after`.
    #[error(
        "the watch stopped reading for too long and was ended; resume after {}",
        RESUME_AFTER_EVENT_ID
    )]
    SubscriberStalled { resume_after: String },
    /// The caller's stream sent nothing for too long.
    #[error(
        "waited {} ms for {what}; the upload was stopped and nothing was stored",
        .waited.as_millis()
    )]
    StreamIdle {
        waited: std::time::Duration,
        what: &'static str,
    },
    /// Something the gateway holds to be impossible happened.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The caller's own request stream failed (reset, protocol error): the status
    /// the transport reported, passed on. A caller's reset (see [`caller_reset`])
    /// and a status of the gateway's own keep their message.
    #[error("{}", stream_message(.0))]
    Stream(Status),
}

/// `field: description; …` of every bad field.
fn summary(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.error.description))
        .collect::<Vec<_>>()
        .join("; ")
}

fn stream_message(s: &Status) -> String {
    if is_caller_reset(s) {
        s.message().to_string()
    } else {
        format!("the request stream failed: {}", s.message())
    }
}

impl Error {
    /// `INVALID_ARGUMENT` for one field.
    pub fn invalid(field: &str, reason: &'static str, description: impl Into<String>) -> Self {
        Self::Invalid(vec![Violation {
            field: field.to_string(),
            error: FieldError::new(reason, description),
        }])
    }

    /// An upstream failure of a read or a write.
    pub fn upstream(error: UpstreamError, op: Op) -> Self {
        match error {
            // Refused before anything was sent: a limit like any other.
            UpstreamError::Throttled(r) => Self::Limited(r),
            error => Self::Upstream { error, op },
        }
    }

    /// The limit that refused the call, whoever reported it (`QuotaFailure`).
    fn refusal(&self) -> Option<&Refusal> {
        match self {
            Self::Limited(r)
            | Self::Auth(AuthError::Throttled(r))
            | Self::Upstream {
                error: UpstreamError::Throttled(r),
                ..
            } => Some(r),
            _ => None,
        }
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Auth(AuthError::MissingScope { .. }) => Code::PermissionDenied,
            Self::Auth(AuthError::Throttled(_)) => Code::ResourceExhausted,
            Self::Auth(_) => Code::Unauthenticated,
            Self::Limited(_) => Code::ResourceExhausted,
            Self::Upstream { error, .. } => upstream::code(error),
            Self::Deadline { .. } => Code::DeadlineExceeded,
            Self::ShuttingDown { .. } => Code::Unavailable,
            Self::WriteInProgress { .. } => Code::Aborted,
            Self::LeaseLost => Code::Unavailable,
            Self::OutcomeUnknown { .. } => Code::Unavailable,
            Self::OutcomeAmbiguous { .. } => Code::FailedPrecondition,
            Self::OutcomePending { deadline: true, .. } => Code::DeadlineExceeded,
            Self::OutcomePending { .. } => Code::Unavailable,
            Self::ChecksumMismatch { .. } => Code::InvalidArgument,
            Self::MessageIdReused { .. } => Code::InvalidArgument,
            Self::WriteRecordUnavailable => Code::Unavailable,
            Self::UploadUnconfirmed => Code::Internal,
            Self::DownloadTruncated { .. } => Code::DataLoss,
            Self::StreamIdle { .. } => Code::DeadlineExceeded,
            Self::CursorExpired => Code::OutOfRange,
            Self::EventLogUnavailable(_) | Self::WatchInterrupted { .. } => Code::Unavailable,
            Self::SubscriberStalled { .. } => Code::Aborted,
            Self::Internal(_) => Code::Internal,
            Self::Stream(s) if is_caller_reset(s) => Code::Cancelled,
            Self::Stream(s) => s.code(),
        }
    }

    /// `ErrorInfo.reason`: stable, for callers to match on.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid(v) => v.first().map_or("INVALID_ARGUMENT", |v| v.error.reason),
            Self::Limited(_) | Self::Auth(AuthError::Throttled(_)) => RATE_LIMITED,
            Self::Auth(e) => e.reason(),
            Self::Upstream { error, .. } => upstream::reason(error),
            Self::Deadline { .. } => "DEADLINE_EXCEEDED",
            Self::ShuttingDown { .. } => "GATEWAY_SHUTTING_DOWN",
            Self::WriteInProgress { .. } => "WRITE_IN_PROGRESS",
            Self::LeaseLost => "WRITE_LEASE_LOST",
            Self::OutcomeUnknown { .. } | Self::OutcomeAmbiguous { .. } => "OUTCOME_UNKNOWN",
            Self::OutcomePending { .. } => "OUTCOME_PENDING",
            Self::ChecksumMismatch { .. } => "CHECKSUM_MISMATCH",
            Self::MessageIdReused { .. } => "MESSAGE_ID_REUSED",
            Self::WriteRecordUnavailable => "WRITE_RECORD_UNAVAILABLE",
            Self::UploadUnconfirmed => "UPSTREAM_ANSWERED_EARLY",
            Self::DownloadTruncated { .. } => "DOWNLOAD_TRUNCATED",
            Self::CursorExpired => "CURSOR_EXPIRED",
            Self::EventLogUnavailable(_) | Self::WatchInterrupted { .. } => "EVENT_LOG_UNAVAILABLE",
            Self::SubscriberStalled { .. } => "SUBSCRIBER_STALLED",
            Self::StreamIdle { .. } => "STREAM_IDLE",
            Self::Internal(_) => "GATEWAY_INTERNAL",
            Self::Stream(s) if is_caller_reset(s) => CALLER_RESET,
            Self::Stream(_) => "REQUEST_STREAM_FAILED",
        }
    }

    /// Whether repeating the call cannot do harm: everything refused or
    /// stopped before the upstream acted can be; a write interrupted after it
    /// was sent, or a state the gateway cannot explain, is unknown.
    pub fn retry_safe(&self) -> RetrySafe {
        match self {
            Self::Upstream { error, op } => op.retry_safe(upstream::nothing_applied(error)),
            Self::Deadline {
                op,
                nothing_applied,
                ..
            }
            | Self::ShuttingDown {
                op,
                nothing_applied,
            } => op.retry_safe(*nothing_applied),
            Self::UploadUnconfirmed | Self::Internal(_) => RetrySafe::Unknown,
            // Only someone who checks the candidates can tell.
            Self::OutcomeAmbiguous { .. } => RetrySafe::No,
            // A bad request is refused again, unchanged: no harm either. A
            // stream that failed took its upstream request (if any) with it.
            _ => RetrySafe::Yes,
        }
    }

    /// When a retry can succeed (`RetryInfo`), where the gateway can tell.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Limited(r) | Self::Auth(AuthError::Throttled(r)) => Some(r.retry_after),
            Self::Upstream { error, op } => upstream::retry_after(error, *op == Op::Read),
            Self::ShuttingDown { .. } | Self::SubscriberStalled { .. } => Some(Duration::ZERO),
            Self::WriteInProgress { retry_after } | Self::OutcomeUnknown { retry_after, .. } => {
                Some(*retry_after)
            }
            Self::LeaseLost | Self::OutcomePending { .. } => Some(Duration::from_secs(1)),
            Self::WriteRecordUnavailable
            | Self::EventLogUnavailable(_)
            | Self::WatchInterrupted { .. } => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// `ErrorInfo.metadata`: `retry_safe`, and what the caller needs besides.
    fn metadata(&self) -> HashMap<String, String> {
        let mut meta = HashMap::new();
        meta.insert(
            RETRY_SAFE.to_string(),
            self.retry_safe().as_str().to_string(),
        );
        let mut put = |k: &str, v: String| meta.insert(k.to_string(), v);
        match self {
            Self::Limited(r) | Self::Auth(AuthError::Throttled(r)) => {
                put("limit", r.limit.to_string());
            }
            Self::Auth(AuthError::MissingScope { needed, .. }) => {
                put("required_scope", (*needed).to_string());
            }
            Self::Upstream { error, .. } => upstream::metadata(error, &mut meta),
            Self::DownloadTruncated { received, expected } => {
                put("received_bytes", received.to_string());
                put("expected_bytes", expected.to_string());
            }
            Self::WatchInterrupted { resume_after, .. }
            | Self::SubscriberStalled { resume_after } => {
                put(RESUME_AFTER_EVENT_ID, resume_after.clone());
            }
            Self::StreamIdle { waited, .. } => {
                put("waited_ms", waited.as_millis().to_string());
            }
            Self::OutcomeAmbiguous { candidates, .. } => {
                put("candidate_attachment_ids", candidates.join(","));
            }
            Self::ChecksumMismatch { expected, actual } => {
                put("expected_sha256", expected.clone());
                put("actual_sha256", actual.clone());
            }
            _ => {}
        }
        meta
    }

    /// Every field the caller must change (`BadRequest`), for the errors
    /// about fields.
    fn field_violations(&self) -> Option<Vec<FieldViolation>> {
        let violation = |field: &str, reason: &str, description: &str| {
            let mut fv = FieldViolation::new(field, description);
            fv.reason = reason.to_string();
            fv
        };
        match self {
            Self::Invalid(v) => Some(
                v.iter()
                    .map(|v| violation(&v.field, v.error.reason, &v.error.description))
                    .collect(),
            ),
            Self::MessageIdReused { field } => {
                Some(vec![violation(field, self.reason(), MESSAGE_ID_REUSED)])
            }
            Self::ChecksumMismatch { expected, actual } => Some(vec![violation(
                "metadata.expected_sha256",
                self.reason(),
                &format!("the file received has SHA-256 {actual}, not {expected}"),
            )]),
            Self::Upstream { error, .. } => upstream::field_violations(error),
            _ => None,
        }
    }

    /// The rich details of the status: `ErrorInfo` always; `RetryInfo`,
    /// `BadRequest` and `QuotaFailure` where they apply.
    pub fn details(&self) -> ErrorDetails {
        let mut d = ErrorDetails::new();
        d.set_error_info(self.reason(), ERROR_DOMAIN, self.metadata());
        if let Some(after) = self.retry_after() {
            d.set_retry_info(Some(after));
        }
        if let Some(fields) = self.field_violations() {
            d.set_bad_request(fields);
        }
        if let Some(r) = self.refusal() {
            d.set_quota_failure(vec![QuotaViolation::new(
                r.subject.clone(),
                r.description.clone(),
            )]);
        }
        d
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            // A status the gateway made itself (a limit on the request's
            // messages) is passed on as it is.
            Error::Stream(s) if is_own(&s) && !is_caller_reset(&s) => s,
            e => Status::with_error_details(e.code(), e.to_string(), e.details()),
        }
    }
}

/// A gRPC code's canonical name (`NOT_FOUND`), for logs and the audit trail.
pub fn code_name(c: Code) -> &'static str {
    match c {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Whether a status is one the gateway made.
fn is_own(s: &Status) -> bool {
    s.get_error_details()
        .error_info()
        .is_some_and(|i| i.domain == ERROR_DOMAIN)
}

fn is_caller_reset(s: &Status) -> bool {
    s.get_error_details()
        .error_info()
        .is_some_and(|i| i.domain == ERROR_DOMAIN && i.reason == CALLER_RESET)
}

/// What a request body fails with when the caller reset its stream: ABORTED
/// (never CANCELLED, which the gRPC decoder would read as the stream's normal
/// end, taking a cut-off upload for a whole one), marked so that the call ends
/// as the caller's cancellation, not as a failure of the gateway.
pub fn caller_reset(why: impl std::fmt::Display) -> Status {
    let mut meta = HashMap::new();
    meta.insert(RETRY_SAFE.to_string(), RetrySafe::Yes.as_str().to_string());
    let mut d = ErrorDetails::new();
    d.set_error_info(CALLER_RESET, ERROR_DOMAIN, meta);
    Status::with_error_details(
        Code::Aborted,
        format!(
            "the caller's stream ended without its end (reset or broken: {why}); nothing of it is kept"
        ),
        d,
    )
}

#[cfg(test)]
mod tests;
