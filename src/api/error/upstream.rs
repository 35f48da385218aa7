//! What an upstream failure tells the caller, aspect by aspect: the tables of
//! the upstream's error `Code`s and HTTP statuses (gRPC code and reason), and
//! for each kind of [`UpstreamError`] its code, reason, retry safety, retry
//! delay and details. Its message is `UpstreamError`'s own text.

use std::collections::HashMap;
use std::time::Duration;

use tonic::Code;
use tonic_types::FieldViolation;

use crate::upstream::{ApiError, UpstreamError};

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

/// The reason of every refusal by a limit, the upstream budget's too.
pub(super) const RATE_LIMITED: &str = "RATE_LIMITED";

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

pub(super) fn code(e: &UpstreamError) -> Code {
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
        UpstreamError::RangeNotSatisfiable { .. } => Code::OutOfRange,
    }
}

pub(super) fn reason(e: &UpstreamError) -> &'static str {
    match e {
        UpstreamError::Api(api) => classify(api).1,
        UpstreamError::Throttled(_) => RATE_LIMITED,
        UpstreamError::CircuitOpen(_) => "UPSTREAM_CIRCUIT_OPEN",
        UpstreamError::CredentialsRejected(_) => "GATEWAY_CREDENTIALS_REJECTED",
        UpstreamError::TokenRejected => "UPSTREAM_TOKEN_REFRESHED",
        UpstreamError::Timeout => "UPSTREAM_TIMEOUT",
        UpstreamError::Connect(_) => "UPSTREAM_UNREACHABLE",
        UpstreamError::Transport(_) => "UPSTREAM_CONNECTION_FAILED",
        UpstreamError::LinkRefused(_) => "DOWNLOAD_LINK_REFUSED",
        UpstreamError::Protocol(_) => "UPSTREAM_BAD_ANSWER",
        UpstreamError::RangeNotSatisfiable { .. } => "OFFSET_PAST_END",
    }
}

/// Whether the upstream cannot have acted on the call: a refused request
/// changed nothing, nor did one never sent; a 5xx, a timeout, a broken
/// connection or an unreadable answer may come after the upstream acted.
/// Whether the upstream provably did not act on a write that failed this way.
pub fn nothing_applied(e: &UpstreamError) -> bool {
    match e {
        UpstreamError::Api(api) => !(api.http_status >= 500 || api.http_status == 408),
        UpstreamError::Timeout | UpstreamError::Transport(_) | UpstreamError::Protocol(_) => false,
        UpstreamError::Throttled(_)
        | UpstreamError::CircuitOpen(_)
        | UpstreamError::CredentialsRejected(_)
        | UpstreamError::TokenRejected
        | UpstreamError::Connect(_)
        | UpstreamError::LinkRefused(_)
        | UpstreamError::RangeNotSatisfiable { .. } => true,
    }
}

/// When a retry can succeed; a connection broken mid-call is worth a retry
/// for a `read` only.
pub(super) fn retry_after(e: &UpstreamError, read: bool) -> Option<Duration> {
    match e {
        UpstreamError::Api(api) => {
            matches!(classify(api).0, Code::ResourceExhausted | Code::Unavailable)
                .then(|| api.retry_after.unwrap_or(DEFAULT_RETRY_DELAY))
        }
        UpstreamError::Throttled(r) | UpstreamError::CircuitOpen(r) => Some(r.retry_after),
        UpstreamError::TokenRejected => Some(Duration::ZERO),
        UpstreamError::Connect(_) => Some(DEFAULT_RETRY_DELAY),
        UpstreamError::Transport(_) => read.then_some(DEFAULT_RETRY_DELAY),
        UpstreamError::CredentialsRejected(_)
        | UpstreamError::Timeout
        | UpstreamError::LinkRefused(_)
        | UpstreamError::RangeNotSatisfiable { .. }
        | UpstreamError::Protocol(_) => None,
    }
}

/// The `ErrorInfo` metadata beside `retry_safe`.
pub(super) fn metadata(e: &UpstreamError, meta: &mut HashMap<String, String>) {
    let mut put = |k: &str, v: String| meta.insert(k.to_string(), v);
    match e {
        UpstreamError::Api(api) => {
            put("http_status", api.http_status.to_string());
            if let Some(c) = api.code {
                put("upstream_code", c.to_string());
            }
            if let Some(m) = &api.message {
                put("upstream_message", m.clone());
            }
            if let Some(id) = &api.message_id {
                put("upstream_message_id", id.clone());
            }
        }
        UpstreamError::Throttled(r) | UpstreamError::CircuitOpen(r) => {
            put("limit", r.limit.to_string());
        }
        UpstreamError::CredentialsRejected(stage) => {
            put("stage", (*stage).to_string());
        }
        UpstreamError::LinkRefused(r) => {
            put("host", r.host.clone());
        }
        UpstreamError::RangeNotSatisfiable { size: Some(s) } => {
            put("size_bytes", s.to_string());
        }
        UpstreamError::RangeNotSatisfiable { size: None } => {}
        UpstreamError::TokenRejected
        | UpstreamError::Timeout
        | UpstreamError::Connect(_)
        | UpstreamError::Transport(_)
        | UpstreamError::Protocol(_) => {}
    }
}

/// The fields the upstream's `ValidationErrors` name, as the proto's fields.
pub(super) fn field_violations(e: &UpstreamError) -> Option<Vec<FieldViolation>> {
    let UpstreamError::Api(api) = e else {
        return None;
    };
    let fields: Vec<_> = api
        .validation_errors
        .iter()
        .map(|v| {
            let mut fv = FieldViolation::new(proto_field(&v.field), v.message.clone());
            fv.reason = "UPSTREAM_VALIDATION_FAILED".into();
            fv
        })
        .collect();
    (!fields.is_empty()).then_some(fields)
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
