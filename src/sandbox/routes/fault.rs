//! What the emulator answers instead of what was asked: the upstream's error
//! body (`{Code, Message, ValidationErrors, MessageId}`), a refused token, an
//! injected fault; and [`Checked`], the extractor every API route starts with,
//! which injects the configured faults and then checks the bearer token.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::sandbox::State;

pub(super) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

/// An answer other than the one asked for.
#[derive(Debug)]
pub(super) enum Fault {
    /// The upstream's error body, with its HTTP status and `Code`.
    Api {
        status: StatusCode,
        code: i64,
        message: String,
        violations: Vec<(String, String)>,
    },
    /// The bearer token is missing, unknown or expired.
    Unauthorized,
    /// A fault injected by the test that configured it: a status and a text.
    Injected(StatusCode, &'static str),
}

impl Fault {
    /// A 400 with the upstream's `Code` and `Message`.
    pub(super) fn bad_request(code: i64, message: impl Into<String>) -> Self {
        Self::Api {
            status: StatusCode::BAD_REQUEST,
            code,
            message: message.into(),
            violations: Vec::new(),
        }
    }

    /// `Code` 2100: the fields named, each with why.
    pub(super) fn invalid(violations: Vec<(String, String)>) -> Self {
        Self::Api {
            status: StatusCode::BAD_REQUEST,
            code: 2100,
            message: "Invalid fields.".into(),
            violations,
        }
    }

    /// A form body that broke off or cannot be read: nothing is stored.
    pub(super) fn malformed(what: &str, e: impl std::fmt::Display) -> Self {
        Self::bad_request(2100, format!("Malformed {what} body: {e}"))
    }

    pub(super) fn work_order_not_found(id: i64) -> Self {
        Self::bad_request(
            3005,
            format!("Work order {id} was not found or was recalled by the customer."),
        )
    }

    pub(super) fn attachment_not_found(id: &str) -> Self {
        Self::bad_request(3003, format!("Attachment {id} was not found."))
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        match self {
            Self::Api {
                status,
                code,
                message,
                violations,
            } => {
                let ve: Vec<Value> = violations
                    .iter()
                    // "Each has a type and a message": the type names the field.
                    .map(|(field, msg)| json!({"Type": field, "Message": msg}))
                    .collect();
                let body = json!({
                    "Code": code,
                    "Message": message,
                    "ValidationErrors": ve,
                    "MessageId": uuid::Uuid::new_v4().to_string(),
                });
                (status, axum::Json(body)).into_response()
            }
            Self::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({"Message": "Authorization has been denied for this request."})),
            )
                .into_response(),
            Self::Injected(status, text) => (status, text).into_response(),
        }
    }
}

/// A request to the API, past the configured faults (a delay, a 503) and the
/// bearer token check, in that order.
pub(super) struct Checked;

impl FromRequestParts<Arc<State>> for Checked {
    type Rejection = Fault;

    async fn from_request_parts(parts: &mut Parts, st: &Arc<State>) -> Result<Self, Fault> {
        maybe_fail(st).await?;
        authorize(st, &parts.headers)?;
        Ok(Self)
    }
}

/// Injects the configured faults before a request is handled.
async fn maybe_fail(st: &State) -> Result<(), Fault> {
    let Some(f) = st.cfg.faults else {
        return Ok(());
    };
    let delay = st.delay_ms(f.max_delay_ms);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if st.roll() < f.unavailable {
        bump(&st.counters.faults_injected);
        return Err(Fault::Injected(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected fault",
        ));
    }
    Ok(())
}

/// Checks the bearer token.
fn authorize(st: &State, headers: &HeaderMap) -> Result<(), Fault> {
    bump(&st.counters.api_requests);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        });
    let ok = token.is_some_and(|t| {
        st.tokens()
            .get(t)
            .is_some_and(|exp| tokio::time::Instant::now() < *exp)
    });
    if ok {
        Ok(())
    } else {
        bump(&st.counters.unauthorized);
        Err(Fault::Unauthorized)
    }
}
