//! Answers lost after a write was applied, as over the internet they are: the
//! connection dropped before any answer, or a proxy's 502 after the upstream
//! stored the write. Asked for per write (`POST /sandbox/faults/lose-answer`
//! with `{"message_id": "…", "how": "drop" | "502"}`: the next write carrying
//! that `MessageId` is applied, then its answer lost), or at random
//! (`Faults::lose_answer`).

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::fault::bump;
use crate::sandbox::State;

/// Per-write requests kept at most (the oldest is dropped first).
const MAX_REQUESTED: usize = 1000;

/// How an answer is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(crate) enum How {
    /// The connection closes without an answer.
    #[serde(rename = "drop")]
    Drop,
    /// A proxy's 502, after the write was applied.
    #[serde(rename = "502")]
    BadGateway,
}

/// Marks a response whose connection must close without it (the serving loop
/// turns it into a dropped connection).
#[derive(Debug, Clone, Copy)]
pub(crate) struct DropConnection;

#[derive(Deserialize)]
pub(super) struct LoseAnswer {
    message_id: String,
    how: How,
}

/// `POST /sandbox/faults/lose-answer`.
pub(super) async fn request(
    AxState(st): AxState<Arc<State>>,
    axum::Json(r): axum::Json<LoseAnswer>,
) -> Response {
    if r.message_id.is_empty() || r.message_id.len() > 128 {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "message_id: 1 to 128 characters"})),
        )
            .into_response();
    }
    let mut q = st.lose_requests();
    q.retain(|(m, _)| *m != r.message_id);
    if q.len() >= MAX_REQUESTED {
        q.pop_front();
    }
    q.push_back((r.message_id, r.how));
    StatusCode::NO_CONTENT.into_response()
}

/// Whether the write just applied, carrying `message_id`, loses its answer,
/// and how.
pub(super) fn lose(st: &State, message_id: Option<&String>) -> Option<How> {
    if let Some(m) = message_id {
        let mut q = st.lose_requests();
        if let Some(i) = q.iter().position(|(id, _)| id == m) {
            return q.remove(i).map(|(_, how)| how);
        }
    }
    let f = st.cfg.faults?;
    if f.lose_answer > 0.0 && st.roll() < f.lose_answer {
        return Some(if st.roll() < 0.5 {
            How::Drop
        } else {
            How::BadGateway
        });
    }
    None
}

/// The answer of a write applied with `answer`, unless it is lost.
pub(super) fn answer(st: &State, message_id: Option<&String>, answer: Response) -> Response {
    match lose(st, message_id) {
        None => answer,
        Some(how) => {
            bump(&st.counters.answers_lost);
            tracing::info!(?how, "sandbox: a write was applied and its answer is lost");
            match how {
                How::Drop => {
                    let mut r = StatusCode::OK.into_response();
                    r.extensions_mut().insert(DropConnection);
                    r
                }
                How::BadGateway => (
                    StatusCode::BAD_GATEWAY,
                    [("content-type", "text/html")],
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                )
                    .into_response(),
            }
        }
    }
}
