//! Acting as the customer: changes made in CorrigoPro (not through the Direct API),
//! which CorrigoPro notifies to the subscriber. Plain HTTP, for `curl`:
//!
//! - `POST /sandbox/customer/work-orders/{id}/attachments?name=photo.jpg` with the
//!   file as the body (its `Content-Type` is the file's): adds an attachment
//!   (visibility All) and notifies `AttachmentAdded`.
//! - `DELETE /sandbox/customer/work-orders/{id}/attachments/{attachment_id}`:
//!   removes it and notifies `AttachmentRemoved`.
//! - `POST /sandbox/customer/work-orders` with an optional JSON body
//!   `{"attachments": [{"name": "a.txt", "mime_type": "text/plain", "content": "…"}]}`:
//!   creates a work order and notifies its reception, attachments listed.
//! - `POST /sandbox/customer/work-orders/{id}/actions/{action}`: any other
//!   notification (`Accepted`, `Reopened`, …), not about attachments.
//! - `GET /sandbox/notifications`: the deliveries and their outcomes.

#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use axum::Router;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use bytes::Bytes;
use serde_json::{Value, json};

use super::contract::{MAX_MESSAGE_ID_CHARS, NO_UPLOADS_IN};
use super::{State, StoredAttachment, WorkOrder};

type St = AxState<Arc<State>>;

pub(super) fn routes(max_file_bytes: u64) -> Router<Arc<State>> {
    let limit = usize::try_from(max_file_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    Router::new()
        .route("/sandbox/customer/work-orders", post(create_work_order))
        .route(
            "/sandbox/customer/work-orders/{id}/attachments",
            post(add_attachment),
        )
        .route(
            "/sandbox/customer/work-orders/{id}/attachments/{attachment_id}",
            delete(remove_attachment),
        )
        .route(
            "/sandbox/customer/work-orders/{id}/actions/{action}",
            post(other_action),
        )
        .route("/sandbox/notifications", get(notifications))
        .layer(axum::extract::DefaultBodyLimit::max(limit))
}

fn problem(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"error": message}))).into_response()
}

/// A notification's `Header`, as CorrigoPro sends it.
fn header(work_order_id: i64, action: &str) -> Value {
    let mut id = uuid::Uuid::new_v4().to_string();
    id.truncate(MAX_MESSAGE_ID_CHARS);
    json!({
        "WorkOrderId": work_order_id,
        "BranchId": 492042,
        "Sender": {"Name": "Sandbox Customer", "Phone": "+12025550141", "Type": "CorrigoPro"},
        "Action": action,
        "ActionDate": action_date(SystemTime::now()),
        "ApiVersion": "1.0",
        "MessageId": id,
    })
}

/// `2017-10-04T08:28:36.9484279Z`: seven fractional digits, as CorrigoPro
/// writes its dates (a .NET `DateTime`'s ticks).
fn action_date(t: SystemTime) -> String {
    let nanos = humantime::format_rfc3339_nanos(t).to_string();
    match nanos.split_once('.') {
        Some((whole, frac)) => format!("{whole}.{}Z", &frac[..7.min(frac.len())]),
        None => nanos,
    }
}

fn attachment_fields(a: &StoredAttachment) -> Value {
    json!({
        "AttachmentId": a.attachment_id,
        "Name": a.name,
        "MimeType": a.mime_type,
        "Size": a.bytes.len(),
        "Subtype": "",
    })
}

fn new_attachment(work_order_id: i64, name: &str, mime: &str, bytes: Bytes) -> StoredAttachment {
    StoredAttachment {
        attachment_id: uuid::Uuid::new_v4().to_string(),
        work_order_id,
        name: name.to_string(),
        mime_type: mime.to_string(),
        document_type: None,
        visibility: "All".into(),
        performed_by_name: "Sandbox Customer".into(),
        performed_by_phone: None,
        message_id: uuid::Uuid::new_v4().to_string(),
        created: SystemTime::now(),
        bytes,
    }
}

fn check_name(name: &str) -> Result<(), Response> {
    if name.trim().is_empty() || name.chars().count() > 255 || name.contains(['/', '\\']) {
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "name: 1 to 255 characters, no path separators",
        ));
    }
    Ok(())
}

async fn add_attachment(
    AxState(st): St,
    Path(id): Path<i64>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let name = q
        .get("name")
        .cloned()
        .unwrap_or_else(|| "customer-file.bin".into());
    if let Err(r) = check_name(&name) {
        return r;
    }
    if body.len() as u64 > st.cfg.max_file_bytes {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the file is larger than 20 MB",
        );
    }
    let mime = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|m| m.contains('/') && !m.starts_with("application/x-www-form-urlencoded"))
        .unwrap_or("application/octet-stream")
        .to_string();
    let a = new_attachment(id, &name, &mime, body);
    {
        let mut orders = st.orders();
        let Some(order) = orders.get_mut(&id) else {
            return problem(StatusCode::NOT_FOUND, &format!("no work order {id}"));
        };
        if NO_UPLOADS_IN.contains(&order.status.as_str()) {
            return problem(
                StatusCode::CONFLICT,
                &format!("work order {id} is {}: no attachments", order.status),
            );
        }
        order.attachments.push(a.clone());
    }
    let mut body = attachment_fields(&a);
    body["Header"] = header(id, "AttachmentAdded");
    st.notifier.notify(body);
    (
        StatusCode::CREATED,
        axum::Json(json!({"attachment_id": a.attachment_id, "work_order_id": id})),
    )
        .into_response()
}

async fn remove_attachment(
    AxState(st): St,
    Path((id, attachment_id)): Path<(i64, String)>,
) -> Response {
    {
        let mut orders = st.orders();
        let Some(order) = orders.get_mut(&id) else {
            return problem(StatusCode::NOT_FOUND, &format!("no work order {id}"));
        };
        let before = order.attachments.len();
        order
            .attachments
            .retain(|a| a.attachment_id != attachment_id);
        if order.attachments.len() == before {
            return problem(
                StatusCode::NOT_FOUND,
                &format!("no attachment {attachment_id} on work order {id}"),
            );
        }
    }
    st.notifier.notify(json!({
        "AttachmentId": attachment_id,
        "Header": header(id, "AttachmentRemoved"),
    }));
    StatusCode::NO_CONTENT.into_response()
}

#[derive(serde::Deserialize, Default)]
struct NewWorkOrder {
    #[serde(default)]
    attachments: Vec<NewFile>,
}

#[derive(serde::Deserialize)]
struct NewFile {
    name: String,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    content: String,
}

async fn create_work_order(AxState(st): St, body: Bytes) -> Response {
    let req: NewWorkOrder = if body.iter().all(u8::is_ascii_whitespace) {
        NewWorkOrder::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    &format!(
                        "expected {{\"attachments\": [{{\"name\": …, \"content\": …}}]}}: {e}"
                    ),
                );
            }
        }
    };
    for f in &req.attachments {
        if let Err(r) = check_name(&f.name) {
            return r;
        }
    }
    let id = st.next_work_order.fetch_add(1, Ordering::Relaxed);
    let files: Vec<StoredAttachment> = req
        .attachments
        .into_iter()
        .map(|f| {
            let mime = f.mime_type.unwrap_or_else(|| "text/plain".into());
            new_attachment(id, &f.name, &mime, Bytes::from(f.content))
        })
        .collect();
    st.orders().insert(
        id,
        WorkOrder {
            id,
            status: "New".into(),
            attachments: files.clone(),
        },
    );
    st.notifier.notify(json!({
        "Header": header(id, "NewWorkOrder"),
        "WorkOrder": {"Id": id, "Number": format!("SB-{id}"), "Status": "New"},
        "Attachments": files.iter().map(attachment_fields).collect::<Vec<_>>(),
    }));
    (
        StatusCode::CREATED,
        axum::Json(json!({
            "work_order_id": id,
            "attachment_ids": files.iter().map(|a| a.attachment_id.clone()).collect::<Vec<_>>(),
        })),
    )
        .into_response()
}

async fn other_action(AxState(st): St, Path((id, action)): Path<(i64, String)>) -> Response {
    if action.is_empty() || action.len() > 64 || !action.chars().all(|c| c.is_ascii_alphanumeric())
    {
        return problem(StatusCode::BAD_REQUEST, "action: letters and digits");
    }
    if !st.orders().contains_key(&id) {
        return problem(StatusCode::NOT_FOUND, &format!("no work order {id}"));
    }
    st.notifier.notify(json!({"Header": header(id, &action)}));
    StatusCode::ACCEPTED.into_response()
}

async fn notifications(AxState(st): St) -> Response {
    axum::Json(st.notifier.deliveries()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn action_dates_are_written_as_corrigopro_writes_them() {
        let t = UNIX_EPOCH + Duration::new(1_507_105_716, 948_427_900);
        assert_eq!(action_date(t), "2017-10-04T08:28:36.9484279Z");
    }
}
