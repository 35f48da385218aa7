//! Every error becomes a `tonic::Status` here and nowhere else, with rich details:
//! `BadRequest` (which field), `ErrorInfo` (reason, upstream code/message/message id,
//! whether a retry is safe) and `RetryInfo` (when to retry).

use std::collections::HashMap;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, QuotaViolation, StatusExt};

use crate::domain::Violation;
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

/// `INVALID_ARGUMENT` naming every bad field.
pub fn invalid_argument(violations: Vec<Violation>) -> Status {
    let summary = violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.error.description))
        .collect::<Vec<_>>()
        .join("; ");
    let mut details = ErrorDetails::new();
    let reason = violations
        .first()
        .map(|v| v.error.reason)
        .unwrap_or("INVALID_ARGUMENT");
    details.set_bad_request(
        violations
            .into_iter()
            .map(|v| {
                let mut fv = FieldViolation::new(v.field, v.error.description);
                fv.reason = v.error.reason.to_string();
                fv
            })
            .collect::<Vec<_>>(),
    );
    details.set_error_info(reason, ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid request: {summary}"),
        details,
    )
}

/// `INVALID_ARGUMENT` for one field.
pub fn invalid_field(field: &str, reason: &'static str, description: impl Into<String>) -> Status {
    invalid_argument(vec![Violation {
        field: field.to_string(),
        error: crate::domain::FieldError::new(reason, description),
    }])
}

/// The caller's deadline (or the gateway's default timeout) passed. `nothing_applied`:
/// the call was stopped before the upstream could have acted on it.
pub fn deadline_exceeded(op: Op, what: &str, nothing_applied: bool) -> Status {
    let mut meta = HashMap::new();
    meta.insert(
        "retry_safe".to_string(),
        retry_safe(op, nothing_applied).to_string(),
    );
    let details = ErrorDetails::with_error_info("DEADLINE_EXCEEDED", ERROR_DOMAIN, meta);
    Status::with_error_details(
        Code::DeadlineExceeded,
        format!("the deadline passed before {what} finished"),
        details,
    )
}

/// RESOURCE_EXHAUSTED for a limit: RetryInfo says when, QuotaFailure says which.
/// Nothing went upstream, so a retry is safe.
pub fn resource_exhausted(r: &Refusal) -> Status {
    let mut details = ErrorDetails::new();
    details.set_retry_info(Some(r.retry_after));
    details.set_quota_failure(vec![QuotaViolation::new(
        r.subject.clone(),
        r.description.clone(),
    )]);
    let mut meta = HashMap::new();
    meta.insert("limit".to_string(), r.limit.to_string());
    meta.insert("retry_safe".to_string(), "true".to_string());
    details.set_error_info("RATE_LIMITED", ERROR_DOMAIN, meta);
    Status::with_error_details(
        Code::ResourceExhausted,
        format!(
            "refused by the `{}` limit: {}; retry in {} ms",
            r.limit,
            r.description,
            r.retry_after.as_millis()
        ),
        details,
    )
}

/// A write with the same message id is running now.
pub fn write_in_progress() -> Status {
    let mut meta = HashMap::new();
    meta.insert("retry_safe".to_string(), "true".to_string());
    let mut details = ErrorDetails::with_error_info("WRITE_IN_PROGRESS", ERROR_DOMAIN, meta);
    details.set_retry_info(Some(Duration::from_secs(1)));
    Status::with_error_details(
        Code::Aborted,
        "a write with this message_id is in progress; retry when it has finished to get its answer",
        details,
    )
}

/// The gateway is shutting down and its grace period ran out for this call.
pub fn shutting_down(op: Op, nothing_applied: bool) -> Status {
    let mut meta = HashMap::new();
    meta.insert(
        "retry_safe".to_string(),
        retry_safe(op, nothing_applied).to_string(),
    );
    let mut details = ErrorDetails::with_error_info("GATEWAY_SHUTTING_DOWN", ERROR_DOMAIN, meta);
    details.set_retry_info(Some(Duration::ZERO));
    Status::with_error_details(
        Code::Unavailable,
        "the gateway is shutting down and stopped this call; retry on another replica",
        details,
    )
}

/// Whether repeating the call cannot do harm. A write interrupted after it was sent
/// may or may not have been applied upstream: "unknown".
fn retry_safe(op: Op, nothing_applied: bool) -> &'static str {
    match (op, nothing_applied) {
        (Op::Read, _) | (Op::Write, true) => "true",
        (Op::Write, false) => "unknown",
    }
}

/// Maps an upstream failure to the status the caller gets.
pub fn from_upstream(e: &UpstreamError, op: Op) -> Status {
    let mut meta: HashMap<String, String> = HashMap::new();
    let mut details = ErrorDetails::new();
    let (code, reason, message) = match e {
        UpstreamError::Api(api) => {
            let (code, reason) = classify(api);
            meta.insert("http_status".into(), api.http_status.to_string());
            if let Some(c) = api.code {
                meta.insert("upstream_code".into(), c.to_string());
            }
            if let Some(m) = &api.message {
                meta.insert("upstream_message".into(), m.clone());
            }
            if let Some(id) = &api.message_id {
                meta.insert("upstream_message_id".into(), id.clone());
            }
            if !api.validation_errors.is_empty() {
                details.set_bad_request(
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
                details.set_retry_info(Some(api.retry_after.unwrap_or(DEFAULT_RETRY_DELAY)));
            }
            // A refused request changed nothing; a 5xx or timeout may have.
            let applied_maybe = api.http_status >= 500 || api.http_status == 408;
            meta.insert("retry_safe".into(), retry_safe(op, !applied_maybe).into());
            let mut msg = format!("the upstream refused the call (HTTP {}", api.http_status);
            if let Some(c) = api.code {
                msg.push_str(&format!(", code {c}"));
            }
            msg.push(')');
            if let Some(m) = &api.message {
                msg.push_str(": ");
                msg.push_str(m);
            }
            (code, reason, msg)
        }
        UpstreamError::Throttled(r) => return resource_exhausted(r),
        UpstreamError::CircuitOpen(r) => {
            meta.insert("retry_safe".into(), "true".into());
            meta.insert("limit".into(), r.limit.into());
            details.set_retry_info(Some(r.retry_after));
            (
                Code::Unavailable,
                "UPSTREAM_CIRCUIT_OPEN",
                format!(
                    "the upstream is failing; not tried ({}); retry in {} ms",
                    r.description,
                    r.retry_after.as_millis()
                ),
            )
        }
        UpstreamError::CredentialsRejected(stage) => {
            meta.insert("stage".into(), (*stage).into());
            meta.insert("retry_safe".into(), "true".into());
            (
                Code::Internal,
                "GATEWAY_CREDENTIALS_REJECTED",
                "the upstream refused the gateway's own credentials; the gateway's operators must fix its client id/secret".to_string(),
            )
        }
        UpstreamError::TokenRejected => {
            meta.insert("retry_safe".into(), "true".into());
            details.set_retry_info(Some(Duration::ZERO));
            (
                Code::Unavailable,
                "UPSTREAM_TOKEN_REFRESHED",
                "the upstream refused the gateway's access token and nothing was stored; a new token is being fetched: retry".to_string(),
            )
        }
        UpstreamError::Timeout => {
            meta.insert("retry_safe".into(), retry_safe(op, false).into());
            (
                Code::DeadlineExceeded,
                "UPSTREAM_TIMEOUT",
                "the upstream did not answer in time".to_string(),
            )
        }
        UpstreamError::Connect(m) => {
            meta.insert("retry_safe".into(), "true".into());
            details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            (
                Code::Unavailable,
                "UPSTREAM_UNREACHABLE",
                format!("cannot reach the upstream: {m}"),
            )
        }
        UpstreamError::Transport(m) => {
            let safe = retry_safe(op, false);
            meta.insert("retry_safe".into(), safe.into());
            if op == Op::Read {
                details.set_retry_info(Some(DEFAULT_RETRY_DELAY));
            }
            (
                Code::Unavailable,
                "UPSTREAM_CONNECTION_FAILED",
                format!("the connection to the upstream failed during the call: {m}"),
            )
        }
        UpstreamError::Protocol(m) => {
            meta.insert("retry_safe".into(), retry_safe(op, false).into());
            (
                Code::Internal,
                "UPSTREAM_BAD_ANSWER",
                format!("the upstream's answer is unreadable: {m}"),
            )
        }
    };
    details.set_error_info(reason, ERROR_DOMAIN, meta);
    Status::with_error_details(code, message, details)
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
