//! The gateway's one error type, and the one place it becomes a `tonic::Status`.
//!
//! Every layer (validation, authentication, limits, the upstream client, the
//! adapter's own checks) returns an [`Error`]; `impl From<Error> for Status` builds
//! the status with its rich details: `BadRequest` (which field), `ErrorInfo`
//! (reason, the upstream's code/message/message id, whether a retry is safe),
//! `RetryInfo` (when to retry) and `QuotaFailure` (which limit). Every status
//! carries `ErrorInfo` with `retry_safe`. The README's error tables are these.

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, QuotaViolation, StatusExt};

use crate::auth::AuthError;
use crate::domain::{FieldError, Violation};
use crate::limits::Refusal;
use crate::upstream::{ApiError, UpstreamError};

/// The `ErrorInfo.domain` of every status the gateway makes.
pub const ERROR_DOMAIN: &str = "attachment-gateway.corrigopro.com";

/// Whether the failed call changes upstream state, which decides whether an
/// interrupted call is safe to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
}

/// Everything that can end a call with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Fields of the request are not acceptable (every bad field, at once).
    #[error("invalid request")]
    Invalid(Vec<Violation>),
    /// The caller is not authenticated, or lacks the method's scope.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A limit refused the call before anything was done.
    #[error("refused by the `{}` limit", .0.limit)]
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
    #[error("the gateway is shutting down")]
    ShuttingDown { op: Op, nothing_applied: bool },
    /// A write with the same message id is running now.
    #[error("a write with this message_id is in progress")]
    WriteInProgress,
    /// The caller reused a message id for a different request. `field` names the
    /// message id in the request.
    #[error("this message_id was used for a different request")]
    MessageIdReused { field: &'static str },
    /// The record of writes by message id cannot be reached: the write is not
    /// run, since its retry could not be recognised.
    #[error("the record of writes by message_id is unavailable")]
    WriteRecordUnavailable,
    /// The upstream answered an upload before its last byte: it cannot have
    /// stored the whole file, and whether it stored anything is unknown.
    #[error("the upstream answered the upload before its last byte")]
    UploadUnconfirmed,
    /// A download ended before the length its headers announced.
    #[error("the download ended after {received} of {expected} bytes")]
    DownloadTruncated { received: u64, expected: u64 },
    /// A watch's cursor is older than the events retained (or from a log that lost
    /// its events): the subscriber must resync.
    #[error("the cursor is older than the events the gateway retains")]
    CursorExpired,
    /// The event log could not be read or written.
    #[error("the event log is unavailable: {0}")]
    EventLogUnavailable(String),
    /// A watch under way could not read on; resume after `resume_after`.
    #[error("the watch was interrupted: {why}")]
    WatchInterrupted { resume_after: String, why: String },
    /// A watch's subscriber stopped reading; resume after `resume_after`.
    #[error("the subscriber stopped reading")]
    SubscriberStalled { resume_after: String },
    /// The caller's stream sent nothing for too long.
    #[error("waited {waited:?} for {what}")]
    StreamIdle {
        waited: std::time::Duration,
        what: &'static str,
    },
    /// Something the gateway holds to be impossible happened.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The caller's own request stream failed (reset, protocol error): the status
    /// the transport reported, passed on.
    #[error("the request stream failed: {}", .0.message())]
    Stream(Status),
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

    /// The gRPC code of this error, without building the status.
    pub fn code(&self) -> Code {
        match self {
            Self::Invalid(_) => Code::InvalidArgument,
            Self::Auth(AuthError::MissingScope { .. }) => Code::PermissionDenied,
            Self::Auth(AuthError::Throttled(_)) => Code::ResourceExhausted,
            Self::Auth(_) => Code::Unauthenticated,
            Self::Limited(_) => Code::ResourceExhausted,
            Self::Upstream { error, .. } => upstream_code(error),
            Self::Deadline { .. } => Code::DeadlineExceeded,
            Self::ShuttingDown { .. } => Code::Unavailable,
            Self::WriteInProgress => Code::Aborted,
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
}

/// Upstream error `Code`s, which win over the HTTP status.
pub const BY_UPSTREAM_CODE: &[(i64, Code, &str)] = &[
    (2100, Code::InvalidArgument, "UPSTREAM_VALIDATION_FAILED"),
    (
        3000,
        Code::FailedPrecondition,
        "UPSTREAM_BUSINESS_RULE_VIOLATED",
    ),
    (3001, Code::FailedPrecondition, "WORK_ORDER_STATE_INVALID"),
    (3003, Code::NotFound, "RELATED_ENTITY_NOT_FOUND"),
    (
        3005,
        Code::FailedPrecondition,
        "WORK_ORDER_NOT_FOUND_OR_RECALLED",
    ),
];

/// HTTP statuses, for answers whose body names no known `Code`.
pub const BY_HTTP_STATUS: &[(u16, Code, &str)] = &[
    (400, Code::InvalidArgument, "UPSTREAM_BAD_REQUEST"),
    (401, Code::Internal, "GATEWAY_CREDENTIALS_REJECTED"),
    (403, Code::PermissionDenied, "UPSTREAM_PERMISSION_DENIED"),
    (404, Code::NotFound, "UPSTREAM_NOT_FOUND"),
    (408, Code::DeadlineExceeded, "UPSTREAM_TIMEOUT"),
    (409, Code::Aborted, "UPSTREAM_CONFLICT"),
    (410, Code::NotFound, "UPSTREAM_GONE"),
    (413, Code::InvalidArgument, "UPSTREAM_PAYLOAD_TOO_LARGE"),
    (429, Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED"),
    (500, Code::Internal, "UPSTREAM_INTERNAL_ERROR"),
    (501, Code::Unimplemented, "UPSTREAM_NOT_IMPLEMENTED"),
    (502, Code::Unavailable, "UPSTREAM_BAD_GATEWAY"),
    (503, Code::Unavailable, "UPSTREAM_UNAVAILABLE"),
    (504, Code::DeadlineExceeded, "UPSTREAM_GATEWAY_TIMEOUT"),
];

/// The retry delay suggested when the upstream gives none.
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(1);

/// The gRPC code and reason for an upstream error answer.
pub fn classify(e: &ApiError) -> (Code, &'static str) {
    if let Some(code) = e.code
        && let Some(&(_, grpc, reason)) = BY_UPSTREAM_CODE.iter().find(|(c, _, _)| *c == code)
    {
        return (grpc, reason);
    }
    if let Some(&(_, grpc, reason)) = BY_HTTP_STATUS.iter().find(|(s, _, _)| *s == e.http_status) {
        return (grpc, reason);
    }
    match e.http_status {
        400..=499 => (Code::FailedPrecondition, "UPSTREAM_REJECTED"),
        500..=599 => (Code::Unavailable, "UPSTREAM_FAILED"),
        _ => (Code::Internal, "UPSTREAM_UNEXPECTED_STATUS"),
    }
}

fn upstream_code(e: &UpstreamError) -> Code {
    match e {
        UpstreamError::Api(api) => classify(api).0,
        UpstreamError::Throttled(_) => Code::ResourceExhausted,
        UpstreamError::CircuitOpen(_)
        | UpstreamError::TokenRejected
        | UpstreamError::Connect(_)
        | UpstreamError::Transport(_) => Code::Unavailable,
        UpstreamError::CredentialsRejected(_) | UpstreamError::Protocol(_) => Code::Internal,
        UpstreamError::LinkRefused(_) => Code::FailedPrecondition,
        UpstreamError::Timeout => Code::DeadlineExceeded,
    }
}

/// Whether repeating the call cannot do harm. A write interrupted after it was sent
/// may or may not have been applied upstream: "unknown".
fn retry_safe(op: Op, nothing_applied: bool) -> &'static str {
    match (op, nothing_applied) {
        (Op::Read, _) | (Op::Write, true) => "true",
        (Op::Write, false) => "unknown",
    }
}

/// The parts of a status before it is built.
struct Parts {
    code: Code,
    reason: &'static str,
    message: String,
    meta: HashMap<String, String>,
    details: ErrorDetails,
}

impl Parts {
    fn new(code: Code, reason: &'static str, message: impl Into<String>, retry_safe: &str) -> Self {
        let mut meta = HashMap::new();
        meta.insert("retry_safe".to_string(), retry_safe.to_string());
        Self {
            code,
            reason,
            message: message.into(),
            meta,
            details: ErrorDetails::new(),
        }
    }

    fn meta(mut self, key: &str, value: impl Into<String>) -> Self {
        self.meta.insert(key.to_string(), value.into());
        self
    }

    fn retry_after(mut self, d: Duration) -> Self {
        self.details.set_retry_info(Some(d));
        self
    }

    fn build(mut self) -> Status {
        self.details
            .set_error_info(self.reason, ERROR_DOMAIN, self.meta);
        Status::with_error_details(self.code, self.message, self.details)
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(violations) => invalid_argument(violations),
            Error::Auth(AuthError::Throttled(r)) => limited(&r),
            Error::Auth(e) => {
                let code = match e {
                    AuthError::MissingScope { .. } => Code::PermissionDenied,
                    _ => Code::Unauthenticated,
                };
                let mut p = Parts::new(code, e.reason(), e.to_string(), "true");
                if let AuthError::MissingScope { needed, .. } = &e {
                    p = p.meta("required_scope", *needed);
                }
                p.build()
            }
            Error::Limited(r) => limited(&r),
            Error::Upstream { error, op } => from_upstream(&error, op),
            Error::Deadline {
                op,
                what,
                nothing_applied,
            } => Parts::new(
                Code::DeadlineExceeded,
                "DEADLINE_EXCEEDED",
                format!("the deadline passed before {what} finished"),
                retry_safe(op, nothing_applied),
            )
            .build(),
            Error::ShuttingDown {
                op,
                nothing_applied,
            } => Parts::new(
                Code::Unavailable,
                "GATEWAY_SHUTTING_DOWN",
                "the gateway is shutting down and stopped this call; retry on another replica",
                retry_safe(op, nothing_applied),
            )
            .retry_after(Duration::ZERO)
            .build(),
            Error::WriteInProgress => Parts::new(
                Code::Aborted,
                "WRITE_IN_PROGRESS",
                "a write with this message_id is in progress; retry when it has finished to get its answer",
                "true",
            )
            .retry_after(Duration::from_secs(1))
            .build(),
            Error::MessageIdReused { field } => invalid_argument(vec![Violation {
                field: field.to_string(),
                error: FieldError::new(
                    "MESSAGE_ID_REUSED",
                    "this message_id was already used by this caller for a different request \
                     (another file, attachment or change); a new request needs a new message_id",
                ),
            }]),
            Error::WriteRecordUnavailable => Parts::new(
                Code::Unavailable,
                "WRITE_RECORD_UNAVAILABLE",
                "the record of writes by message_id is unavailable, so a retry of this write could not be recognised; nothing was sent upstream: retry",
                "true",
            )
            .retry_after(Duration::from_secs(1))
            .build(),
            Error::UploadUnconfirmed => Parts::new(
                Code::Internal,
                "UPSTREAM_ANSWERED_EARLY",
                "the upstream answered the upload before its last byte; whether it stored anything is unknown",
                "unknown",
            )
            .build(),
            Error::DownloadTruncated { received, expected } => Parts::new(
                Code::DataLoss,
                "DOWNLOAD_TRUNCATED",
                format!("the download ended after {received} of {expected} bytes"),
                "true",
            )
            .meta("received_bytes", received.to_string())
            .meta("expected_bytes", expected.to_string())
            .build(),
            Error::CursorExpired => Parts::new(
                Code::OutOfRange,
                "CURSOR_EXPIRED",
                "after_event_id is older than the events the gateway retains: list the work orders again (ListAttachments), then watch from now (no after_event_id)",
                "true",
            )
            .build(),
            Error::EventLogUnavailable(why) => Parts::new(
                Code::Unavailable,
                "EVENT_LOG_UNAVAILABLE",
                format!("the event log is unavailable: {why}"),
                "true",
            )
            .retry_after(Duration::from_secs(1))
            .build(),
            Error::WatchInterrupted { resume_after, why } => Parts::new(
                Code::Unavailable,
                "EVENT_LOG_UNAVAILABLE",
                format!("the watch was interrupted ({why}); resume after resume_after_event_id"),
                "true",
            )
            .meta("resume_after_event_id", resume_after)
            .retry_after(Duration::from_secs(1))
            .build(),
            Error::SubscriberStalled { resume_after } => Parts::new(
                Code::Aborted,
                "SUBSCRIBER_STALLED",
                "the watch stopped reading for too long and was ended; resume after resume_after_event_id",
                "true",
            )
            .meta("resume_after_event_id", resume_after)
            .retry_after(Duration::ZERO)
            .build(),
            Error::StreamIdle { waited, what } => Parts::new(
                Code::DeadlineExceeded,
                "STREAM_IDLE",
                format!(
                    "waited {} ms for {what}; the upload was stopped and nothing was stored",
                    waited.as_millis()
                ),
                "true",
            )
            .meta("waited_ms", waited.as_millis().to_string())
            .build(),
            Error::Internal(what) => Parts::new(
                Code::Internal,
                "GATEWAY_INTERNAL",
                format!("internal error: {what}"),
                "unknown",
            )
            .build(),
            // The caller reset its stream: the body failed as ABORTED so the
            // decoder would not read it as the stream's end (see
            // `caller_reset`); the call itself was cancelled by the caller.
            Error::Stream(s) if is_caller_reset(&s) => {
                Parts::new(
                    Code::Cancelled,
                    CALLER_RESET,
                    s.message().to_string(),
                    "true",
                )
                .build()
            }
            // A status the gateway made itself (a limit on the request's messages)
            // is passed on as it is.
            Error::Stream(s)
                if s
                    .get_error_details()
                    .error_info()
                    .is_some_and(|i| i.domain == ERROR_DOMAIN) =>
            {
                s
            }
            Error::Stream(s) => Parts::new(
                s.code(),
                "REQUEST_STREAM_FAILED",
                format!("the request stream failed: {}", s.message()),
                // The upstream request (if any) was aborted with the stream.
                "true",
            )
            .build(),
        }
    }
}

const CALLER_RESET: &str = "CALLER_RESET";

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
    Parts::new(
        Code::Aborted,
        CALLER_RESET,
        format!("the caller's stream ended without its end (reset or broken: {why}); nothing of it is kept"),
        "true",
    )
    .build()
}

/// `INVALID_ARGUMENT` naming every bad field.
fn invalid_argument(violations: Vec<Violation>) -> Status {
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.error.description))
        .collect::<Vec<_>>()
        .join("; ");
    let reason = violations
        .first()
        .map(|v| v.error.reason)
        .unwrap_or("INVALID_ARGUMENT");
    let mut p = Parts::new(
        Code::InvalidArgument,
        reason,
        format!("invalid request: {summary}"),
        // Nothing was done; the same request will be refused again.
        "true",
    );
    p.details.set_bad_request(
        violations
            .into_iter()
            .map(|v| {
                let mut fv = FieldViolation::new(v.field, v.error.description);
                fv.reason = v.error.reason.to_string();
                fv
            })
            .collect::<Vec<_>>(),
    );
    p.build()
}

/// RESOURCE_EXHAUSTED for a limit: RetryInfo says when, QuotaFailure says which.
/// Nothing went upstream, so a retry is safe.
fn limited(r: &Refusal) -> Status {
    let mut p = Parts::new(
        Code::ResourceExhausted,
        "RATE_LIMITED",
        format!(
            "refused by the `{}` limit: {}; retry in {} ms",
            r.limit,
            r.description,
            r.retry_after.as_millis()
        ),
        "true",
    )
    .meta("limit", r.limit)
    .retry_after(r.retry_after);
    p.details.set_quota_failure(vec![QuotaViolation::new(
        r.subject.clone(),
        r.description.clone(),
    )]);
    p.build()
}

/// The status an upstream failure becomes.
fn from_upstream(e: &UpstreamError, op: Op) -> Status {
    match e {
        UpstreamError::Api(api) => {
            let (code, reason) = classify(api);
            // A refused request changed nothing; a 5xx or timeout may have.
            let applied_maybe = api.http_status >= 500 || api.http_status == 408;
            let mut msg = format!("the upstream refused the call (HTTP {}", api.http_status);
            if let Some(c) = api.code {
                msg.push_str(&format!(", code {c}"));
            }
            msg.push(')');
            if let Some(m) = &api.message {
                msg.push_str(": ");
                msg.push_str(m);
            }
            let mut p = Parts::new(code, reason, msg, retry_safe(op, !applied_maybe))
                .meta("http_status", api.http_status.to_string());
            if let Some(c) = api.code {
                p = p.meta("upstream_code", c.to_string());
            }
            if let Some(m) = &api.message {
                p = p.meta("upstream_message", m.clone());
            }
            if let Some(id) = &api.message_id {
                p = p.meta("upstream_message_id", id.clone());
            }
            if !api.validation_errors.is_empty() {
                p.details.set_bad_request(
                    api.validation_errors
                        .iter()
                        .map(|v| {
                            let mut fv =
                                FieldViolation::new(proto_field(&v.field), v.message.clone());
                            fv.reason = "UPSTREAM_VALIDATION_FAILED".into();
                            fv
                        })
                        .collect::<Vec<_>>(),
                );
            }
            if matches!(code, Code::ResourceExhausted | Code::Unavailable) {
                p = p.retry_after(api.retry_after.unwrap_or(DEFAULT_RETRY_DELAY));
            }
            p.build()
        }
        UpstreamError::Throttled(r) => limited(r),
        UpstreamError::CircuitOpen(r) => Parts::new(
            Code::Unavailable,
            "UPSTREAM_CIRCUIT_OPEN",
            format!(
                "the upstream is failing; not tried ({}); retry in {} ms",
                r.description,
                r.retry_after.as_millis()
            ),
            "true",
        )
        .meta("limit", r.limit)
        .retry_after(r.retry_after)
        .build(),
        UpstreamError::CredentialsRejected(stage) => Parts::new(
            Code::Internal,
            "GATEWAY_CREDENTIALS_REJECTED",
            "the upstream refused the gateway's own credentials; the gateway's operators must fix its client id/secret",
            "true",
        )
        .meta("stage", *stage)
        .build(),
        UpstreamError::TokenRejected => Parts::new(
            Code::Unavailable,
            "UPSTREAM_TOKEN_REFRESHED",
            "the upstream refused the gateway's access token and nothing was stored; a new token is being fetched: retry",
            "true",
        )
        .retry_after(Duration::ZERO)
        .build(),
        UpstreamError::Timeout => Parts::new(
            Code::DeadlineExceeded,
            "UPSTREAM_TIMEOUT",
            "the upstream did not answer in time",
            retry_safe(op, false),
        )
        .build(),
        UpstreamError::Connect(m) => Parts::new(
            Code::Unavailable,
            "UPSTREAM_UNREACHABLE",
            format!("cannot reach the upstream: {m}"),
            "true",
        )
        .retry_after(DEFAULT_RETRY_DELAY)
        .build(),
        UpstreamError::Transport(m) => {
            let p = Parts::new(
                Code::Unavailable,
                "UPSTREAM_CONNECTION_FAILED",
                format!("the connection to the upstream failed during the call: {m}"),
                retry_safe(op, false),
            );
            if op == Op::Read {
                p.retry_after(DEFAULT_RETRY_DELAY).build()
            } else {
                p.build()
            }
        }
        UpstreamError::LinkRefused(r) => Parts::new(
            Code::FailedPrecondition,
            "DOWNLOAD_LINK_REFUSED",
            format!(
                "the upstream's download link leads where the gateway does not fetch from: {}",
                r.rule
            ),
            "true",
        )
        .meta("host", r.host.clone())
        .build(),
        UpstreamError::Protocol(m) => Parts::new(
            Code::Internal,
            "UPSTREAM_BAD_ANSWER",
            format!("the upstream's answer is unreadable: {m}"),
            retry_safe(op, false),
        )
        .build(),
    }
}

/// The proto field an upstream form field corresponds to.
fn proto_field(upstream: &str) -> String {
    let known = [
        ("WorkOrderId", "work_order_id"),
        ("AttachmentId", "attachment_id"),
        ("Name", "name"),
        ("MimeType", "mime_type"),
        ("DocumentType", "document_type"),
        ("MessageVisibility", "message_visibility"),
        ("PerformedBy.Name", "performed_by.name"),
        ("PerformedBy.Phone", "performed_by.phone"),
        ("MessageId", "message_id"),
        ("File", "chunk"),
    ];
    known
        .iter()
        .find(|(u, _)| u.eq_ignore_ascii_case(upstream))
        .map(|(_, p)| (*p).to_string())
        .unwrap_or_else(|| upstream.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<i64>) -> ApiError {
        ApiError {
            http_status: status,
            code,
            ..ApiError::default()
        }
    }

    #[test]
    fn upstream_codes_win_over_http_status() {
        assert_eq!(classify(&api(400, Some(3001))).0, Code::FailedPrecondition);
        assert_eq!(classify(&api(400, Some(3003))).0, Code::NotFound);
        assert_eq!(classify(&api(400, Some(9999))).0, Code::InvalidArgument);
        assert_eq!(classify(&api(418, None)).0, Code::FailedPrecondition);
        assert_eq!(classify(&api(599, None)).0, Code::Unavailable);
        assert_eq!(classify(&api(302, None)).0, Code::Internal);
    }

    /// One of each kind of error, so every path to a status is walked. The match
    /// makes a new kind of error fail to compile here until it is added.
    fn one_of_each() -> Vec<Error> {
        let samples = vec![
            Error::invalid("metadata.name", "REQUIRED", "must not be empty"),
            Error::Auth(AuthError::Missing),
            Error::Auth(AuthError::MissingScope {
                caller: "api_key:x".into(),
                needed: "attachments.write",
            }),
            Error::Limited(Refusal {
                limit: "per_caller_rate",
                subject: "caller:api_key:x".into(),
                description: "at most 1 request/s".into(),
                retry_after: Duration::from_millis(500),
            }),
            Error::upstream(UpstreamError::Api(Box::new(api(503, None))), Op::Write),
            Error::upstream(UpstreamError::Timeout, Op::Read),
            Error::upstream(UpstreamError::Connect("refused".into()), Op::Read),
            Error::upstream(UpstreamError::Transport("reset".into()), Op::Write),
            Error::upstream(UpstreamError::Protocol("not JSON".into()), Op::Read),
            Error::upstream(
                UpstreamError::LinkRefused(crate::upstream::link_guard::LinkRefused {
                    rule: "private",
                    host: "10.0.0.1".into(),
                }),
                Op::Read,
            ),
            Error::upstream(UpstreamError::TokenRejected, Op::Write),
            Error::upstream(
                UpstreamError::CredentialsRejected("token endpoint"),
                Op::Read,
            ),
            Error::Deadline {
                op: Op::Write,
                what: "the upload",
                nothing_applied: true,
            },
            Error::ShuttingDown {
                op: Op::Read,
                nothing_applied: true,
            },
            Error::WriteInProgress,
            Error::MessageIdReused {
                field: "metadata.message_id",
            },
            Error::WriteRecordUnavailable,
            Error::UploadUnconfirmed,
            Error::DownloadTruncated {
                received: 1,
                expected: 2,
            },
            Error::StreamIdle {
                waited: Duration::from_secs(10),
                what: "the metadata message",
            },
            Error::CursorExpired,
            Error::EventLogUnavailable("down".into()),
            Error::WatchInterrupted {
                resume_after: "ab-1".into(),
                why: "down".into(),
            },
            Error::SubscriberStalled {
                resume_after: "ab-1".into(),
            },
            Error::Internal("a broken invariant"),
            Error::Stream(Status::cancelled("reset by the caller")),
            Error::Stream(caller_reset("stream reset")),
        ];
        for e in &samples {
            match e {
                Error::Invalid(_)
                | Error::Auth(_)
                | Error::Limited(_)
                | Error::Upstream { .. }
                | Error::Deadline { .. }
                | Error::ShuttingDown { .. }
                | Error::WriteInProgress
                | Error::MessageIdReused { .. }
                | Error::WriteRecordUnavailable
                | Error::UploadUnconfirmed
                | Error::DownloadTruncated { .. }
                | Error::StreamIdle { .. }
                | Error::CursorExpired
                | Error::EventLogUnavailable(_)
                | Error::WatchInterrupted { .. }
                | Error::SubscriberStalled { .. }
                | Error::Internal(_)
                | Error::Stream(_) => {}
            }
        }
        samples
    }

    #[test]
    fn every_error_becomes_a_status_with_error_info_and_retry_safe() {
        for e in one_of_each() {
            let code = e.code();
            let text = format!("{e:?}");
            let s = Status::from(e);
            assert_eq!(s.code(), code, "{text}");
            assert_ne!(s.code(), Code::Ok, "{text}");
            let d = s.get_error_details();
            let info = d
                .error_info()
                .unwrap_or_else(|| panic!("no ErrorInfo: {text}"));
            assert_eq!(info.domain, ERROR_DOMAIN, "{text}");
            assert!(!info.reason.is_empty(), "{text}");
            assert!(
                matches!(
                    info.metadata.get("retry_safe").map(String::as_str),
                    Some("true" | "unknown")
                ),
                "retry_safe on {text}: {:?}",
                info.metadata
            );
            if matches!(s.code(), Code::ResourceExhausted) {
                assert!(d.retry_info().is_some(), "RetryInfo on {text}");
            }
            if s.code() == Code::InvalidArgument {
                assert!(d.bad_request().is_some(), "BadRequest on {text}");
            }
        }
    }

    #[test]
    fn tables_have_no_duplicates() {
        for (i, (c, _, _)) in BY_UPSTREAM_CODE.iter().enumerate() {
            assert!(BY_UPSTREAM_CODE[i + 1..].iter().all(|(d, _, _)| d != c));
        }
        for (i, (s, _, _)) in BY_HTTP_STATUS.iter().enumerate() {
            assert!(BY_HTTP_STATUS[i + 1..].iter().all(|(t, _, _)| t != s));
        }
    }
}

#[cfg(test)]
mod caller_reset_tests {
    use super::*;

    #[test]
    fn a_caller_reset_body_error_ends_the_call_as_cancelled() {
        let body_error = caller_reset("stream reset");
        assert_eq!(
            body_error.code(),
            Code::Aborted,
            "never CANCELLED in the body"
        );
        let status: Status = Error::Stream(body_error).into();
        assert_eq!(status.code(), Code::Cancelled);
        let info = status
            .get_error_details()
            .error_info()
            .cloned()
            .expect("info");
        assert_eq!(info.reason, "CALLER_RESET");
    }
}
