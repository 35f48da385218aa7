//! What a failed call tells its caller: the code, the reason, whether a retry
//! is safe and when, and the fields at fault, read from the gateway's details.

use std::path::Path;
use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::proto::error_info::{RETRY_SAFE, RetrySafe};

/// What a failed call tells its caller.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ClientError {
    pub code: Code,
    pub message: String,
    /// `ErrorInfo.reason`, e.g. `WORK_ORDER_STATE_INVALID`.
    pub reason: Option<String>,
    /// Whether repeating the call cannot do harm, per the gateway.
    pub retry_safe: bool,
    /// When a retry can succeed, per the gateway's RetryInfo.
    pub retry_after: Option<Duration>,
    /// The fields the gateway named (BadRequest), as (field, description).
    pub field_violations: Vec<(String, String)>,
    /// `ErrorInfo.metadata`, as (key, value): what the gateway said of the
    /// failure (e.g. `size_bytes` of an offset past the end); see [`Self::detail`].
    pub metadata: Vec<(String, String)>,
}

impl ClientError {
    /// Whether a retry is worth it: the gateway said it is safe and the code is
    /// one that passes (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, ABORTED).
    pub fn is_retryable(&self) -> bool {
        self.retry_safe
            && matches!(
                self.code,
                Code::Unavailable
                    | Code::ResourceExhausted
                    | Code::DeadlineExceeded
                    | Code::Aborted
            )
    }

    /// One `ErrorInfo.metadata` value the gateway sent, by key.
    pub fn detail(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn local(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason: None,
            retry_safe: false,
            retry_after: None,
            field_violations: Vec::new(),
            metadata: Vec::new(),
        }
    }
}

impl From<Status> for ClientError {
    fn from(s: Status) -> Self {
        let d = s.get_error_details();
        let info = d.error_info();
        let retry_safe = info
            .and_then(|i| i.metadata.get(RETRY_SAFE))
            .map(|v| RetrySafe::parse(v) == Some(RetrySafe::Yes))
            // A transport failure before the gateway answered: nothing was done.
            .unwrap_or(s.code() == Code::Unavailable && info.is_none());
        Self {
            code: s.code(),
            message: s.message().to_string(),
            reason: info.map(|i| i.reason.clone()),
            retry_safe,
            retry_after: d.retry_info().and_then(|r| r.retry_delay),
            field_violations: d
                .bad_request()
                .map(|b| {
                    b.field_violations
                        .iter()
                        .map(|v| (v.field.clone(), v.description.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            metadata: info
                .map(|i| {
                    let mut m: Vec<(String, String)> = i.metadata.clone().into_iter().collect();
                    m.sort();
                    m
                })
                .unwrap_or_default(),
        }
    }
}

impl ClientError {
    /// A local file the caller named cannot be used: the caller's bad input
    /// (INVALID_ARGUMENT), with the path in the message.
    pub fn local_file(path: &Path, e: &std::io::Error) -> Self {
        Self::local(
            Code::InvalidArgument,
            format!("cannot read {}: {e}", path.display()),
        )
    }
}

impl From<tonic::transport::Error> for ClientError {
    fn from(e: tonic::transport::Error) -> Self {
        let mut err = Self::local(Code::Unavailable, format!("cannot connect: {e}"));
        err.retry_safe = true;
        err
    }
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        Self::local(Code::Internal, format!("local I/O: {e}"))
    }
}
