//! What can go wrong talking to the upstream, and the decoding of its error body
//! `{"Code": 2100, "Message": "…", "ValidationErrors": [ … ], "MessageId": "…"}`.

use std::time::Duration;

use serde_json::Value;

use super::json::{get_ci, value_str};

/// The most bytes of an error body the gateway reads; the rest is dropped.
pub const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// The longest upstream `Message` passed on (the upstream's own maximum is 1000).
pub const MAX_MESSAGE_CHARS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream answered with a status other than 200.
    #[error("{0}")]
    Api(Box<ApiError>),
    /// The token endpoint refused the gateway's client id/secret, or the API kept
    /// refusing a freshly fetched token: the gateway's own configuration is wrong.
    #[error(
        "the upstream refused the gateway's own credentials; the gateway's operators must fix its client id/secret"
    )]
    CredentialsRejected(&'static str),
    /// The API refused the token of a request whose body cannot be sent again (an
    /// upload); the token was dropped, so a retry of the whole call will work.
    #[error(
        "the upstream refused the gateway's access token and nothing was stored; a new token is being fetched: retry"
    )]
    TokenRejected,
    /// The call's deadline passed before the upstream answered.
    #[error("the upstream did not answer in time")]
    Timeout,
    /// No connection to the upstream could be made.
    #[error("cannot reach the upstream: {0}")]
    Connect(String),
    /// The connection failed while the request or answer was under way.
    #[error("the connection to the upstream failed during the call: {0}")]
    Transport(String),
    /// A limit toward the upstream refused the call before it was sent.
    #[error("{0}")]
    Throttled(crate::limits::Refusal),
    /// The circuit breaker is open: the upstream kept failing; nothing was sent.
    #[error(
        "the upstream is failing; not tried ({}); retry in {} ms",
        .0.description,
        .0.retry_after.as_millis()
    )]
    CircuitOpen(crate::limits::Refusal),
    /// The download link the upstream gave leads where the gateway does not fetch
    /// from (a private address, a host outside the allowlist, plain http).
    #[error(
        "the upstream's download link leads where the gateway does not fetch from: {}",
        .0.rule
    )]
    LinkRefused(super::link_guard::LinkRefused),
    /// The upstream answered 200 with a body the gateway cannot read.
    #[error("the upstream's answer is unreadable: {0}")]
    Protocol(String),
    /// A download's offset is at or past the end of the file (the link host
    /// answered 416, or the file is shorter); `size` when the host said it.
    #[error("the offset is at or past the end of the file{}", .size.map(|s| format!(" ({s} bytes)")).unwrap_or_default())]
    RangeNotSatisfiable { size: Option<u64> },
}

impl UpstreamError {
    /// Whether asking again soon may get another answer: a 5xx or 429, a
    /// connection that failed or was lost, no answer in time. Refusals (4xx,
    /// credentials, an unreadable answer, an open breaker) are not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api(a) => a.http_status >= 500 || a.http_status == 429,
            Self::Timeout | Self::Connect(_) | Self::Transport(_) => true,
            _ => false,
        }
    }
}

/// A non-200 answer, with what its body says when it says anything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApiError {
    pub http_status: u16,
    pub code: Option<i64>,
    pub message: Option<String>,
    pub message_id: Option<String>,
    pub validation_errors: Vec<UpstreamViolation>,
    /// From `Retry-After` (seconds or an HTTP date).
    pub retry_after: Option<Duration>,
}

/// What the caller reads: the status, the upstream's `Code` and `Message`.
impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the upstream refused the call (HTTP {}",
            self.http_status
        )?;
        if let Some(c) = self.code {
            write!(f, ", code {c}")?;
        }
        f.write_str(")")?;
        if let Some(m) = &self.message {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

/// One entry of `ValidationErrors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamViolation {
    /// The field (or, lacking one, the error type) the upstream names.
    pub field: String,
    pub message: String,
}

impl UpstreamError {
    /// Sorts a reqwest failure without keeping its URL (a download link's query
    /// string carries a signature).
    pub fn from_reqwest(e: reqwest::Error) -> Self {
        if let Some(refused) = super::link_guard::refusal_in(&e) {
            tracing::warn!(rule = refused.rule, host = %refused.host, "download link refused");
            return Self::LinkRefused(refused);
        }
        let timeout = e.is_timeout();
        let connect = e.is_connect();
        let text = error_chain(&e.without_url());
        if timeout {
            Self::Timeout
        } else if connect {
            Self::Connect(text)
        } else {
            Self::Transport(text)
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

fn truncate_chars(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Reads `Retry-After`: delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(24 * 3600)));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Decodes an error answer's body; tolerant of any shape, including none.
pub fn parse_error_body(http_status: u16, body: &[u8], retry_after: Option<Duration>) -> ApiError {
    let mut err = ApiError {
        http_status,
        retry_after,
        ..ApiError::default()
    };
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        // Not JSON: keep a short, printable excerpt as the message.
        let text = String::from_utf8_lossy(body);
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = text.trim();
        if !text.is_empty() {
            err.message = Some(truncate_chars(text, 200));
        }
        return err;
    };
    err.code = get_ci(&obj, &["Code", "ErrorCode"]).and_then(|v| match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    err.message = get_ci(&obj, &["Message", "error_description", "error"])
        .and_then(value_str)
        .map(|m| truncate_chars(&m, MAX_MESSAGE_CHARS));
    err.message_id = get_ci(&obj, &["MessageId"])
        .and_then(value_str)
        .map(|m| truncate_chars(&m, 64));
    if let Some(Value::Array(items)) = get_ci(&obj, &["ValidationErrors", "Errors"]) {
        for item in items.iter().take(100) {
            let v = match item {
                Value::Object(o) => {
                    let field = get_ci(
                        o,
                        &["Field", "PropertyName", "Property", "Name", "Key", "Type"],
                    )
                    .and_then(value_str)
                    .unwrap_or_default();
                    let message = get_ci(o, &["Message", "ErrorMessage", "Description"])
                        .and_then(value_str)
                        .unwrap_or_default();
                    UpstreamViolation {
                        field: truncate_chars(&field, 200),
                        message: truncate_chars(&message, MAX_MESSAGE_CHARS),
                    }
                }
                Value::String(s) => UpstreamViolation {
                    field: String::new(),
                    message: truncate_chars(s, MAX_MESSAGE_CHARS),
                },
                _ => continue,
            };
            err.validation_errors.push(v);
        }
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error body as CorrigoPro's documentation shows it; only its
    /// `[ … ]` (an elided list, not JSON) is replaced by an empty list.
    #[test]
    fn the_documented_error_body() {
        const DOC: &str = r#"{"Code": 2100, "Message": "…(max 1000)…", "ValidationErrors": [ … ], "MessageId": "…"}"#;
        let body = DOC.replace("[ … ]", "[]");
        let e = parse_error_body(400, body.as_bytes(), None);
        assert_eq!(e.code, Some(2100));
        assert_eq!(e.message.as_deref(), Some("…(max 1000)…"));
        assert_eq!(e.message_id.as_deref(), Some("…"));
        assert!(e.validation_errors.is_empty());
    }

    #[test]
    fn decodes_the_documented_shape() {
        let body = br#"{"Code":2100,"Message":"Invalid fields","ValidationErrors":[{"Type":"Name","Message":"Name is required"}],"MessageId":"m-1"}"#;
        let e = parse_error_body(400, body, None);
        assert_eq!(e.code, Some(2100));
        assert_eq!(e.message.as_deref(), Some("Invalid fields"));
        assert_eq!(e.message_id.as_deref(), Some("m-1"));
        assert_eq!(
            e.validation_errors,
            vec![UpstreamViolation {
                field: "Name".into(),
                message: "Name is required".into()
            }]
        );
    }

    #[test]
    fn tolerates_other_shapes() {
        let e = parse_error_body(404, b"", None);
        assert_eq!((e.code, e.message), (None, None));
        let e = parse_error_body(500, b"<html>\n<b>oops</b></html>", None);
        assert_eq!(e.message.as_deref(), Some("<html> <b>oops</b></html>"));
        let e = parse_error_body(400, br#"{"code":"3001","message":"bad state"}"#, None);
        assert_eq!(e.code, Some(3001));
        let e = parse_error_body(400, br#"[1,2]"#, None);
        assert_eq!(e.code, None);
        let long = format!(r#"{{"Message":"{}"}}"#, "x".repeat(5000));
        let e = parse_error_body(400, long.as_bytes(), None);
        assert!(e.message.unwrap().chars().count() <= MAX_MESSAGE_CHARS + 1);
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
