//! The sandbox's HTTP handlers: what the CorrigoPro Direct API does, as
//! documented. Every API route starts with [`Checked`] (the configured faults,
//! then the bearer token); what a handler refuses is a [`Fault`], answered as
//! the upstream answers; forms are read one way ([`form`]).

mod fault;
mod form;
pub(crate) mod lost;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use self::fault::{Checked, Fault, bump};
use self::form::{
    Fields, Form, check_enums, check_message_id, check_name, lower_keys, parse_work_order,
    read_multipart, target_fields,
};
use super::contract::{self, DOCUMENT_TYPES, VISIBILITIES, canonical};
use super::{API_PREFIX, CLIENT_ID, CLIENT_SECRET, State, StoredAttachment};

type St = AxState<Arc<State>>;

pub(super) fn router(state: Arc<State>) -> Router {
    Router::new()
        // CorrigoPro's token URL is `/OAuth/Token`; its server matches paths
        // case aside, so the lower-case spelling is served too.
        .route("/OAuth/Token", post(token))
        .route("/oauth/token", post(token))
        .route(
            &format!("{API_PREFIX}/api/attachments"),
            get(list).post(upload).put(update).delete(remove),
        )
        .route(
            &format!("{API_PREFIX}/api/attachments/downloadUrl"),
            get(download_url),
        )
        .route("/files/{id}", get(file))
        .route("/sandbox/faults/lose-answer", post(lost::request))
        .layer(DefaultBodyLimit::disable())
        .merge(super::customer::routes(state.cfg.max_file_bytes))
        .with_state(state)
}

async fn token(AxState(st): St, form: axum::Form<HashMap<String, String>>) -> Response {
    bump(&st.counters.token_requests);
    let f = &form.0;
    if f.get("grant_type").map(String::as_str) != Some("client_credentials") {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    if f.get("client_id").map(String::as_str) != Some(CLIENT_ID)
        || f.get("client_secret").map(String::as_str) != Some(CLIENT_SECRET)
    {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let ttl = st.cfg.token_ttl;
    let Ok(value) = st.notifier.access_token(ttl) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"error": "server_error"})),
        )
            .into_response();
    };
    let now = tokio::time::Instant::now();
    let mut tokens = st.tokens();
    // Expired ones go: the map holds the tokens of one lifetime at most.
    tokens.retain(|_, until| *until > now);
    tokens.insert(value.clone(), now + ttl);
    drop(tokens);
    axum::Json(json!({
        "access_token": value,
        "token_type": "bearer",
        "expires_in": ttl.as_secs(),
    }))
    .into_response()
}

fn attachment_json(a: &StoredAttachment) -> Value {
    let created = humantime::format_rfc3339_seconds(a.created).to_string();
    json!({
        "AttachmentId": a.attachment_id,
        "Name": a.name,
        "MimeType": a.mime_type,
        "Size": a.bytes.len(),
        "DocumentType": a.document_type,
        "Subtype": a.document_type.clone().unwrap_or_else(|| "Document".into()),
        "MessageVisibility": a.visibility,
        "CreatedDate": created,
        "PerformedBy": {"Name": a.performed_by_name, "Phone": a.performed_by_phone},
    })
}

async fn list(
    AxState(st): St,
    _: Checked,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Fault> {
    let q = lower_keys(q);
    let mut v = Vec::new();
    let Some(id) = parse_work_order(q.get("workorderid"), &mut v) else {
        return Err(Fault::invalid(v));
    };
    let orders = st.orders();
    let wo = orders.get(&id).ok_or(Fault::work_order_not_found(id))?;
    let items: Vec<Value> = wo.attachments.iter().map(attachment_json).collect();
    Ok(axum::Json(Value::Array(items)).into_response())
}

/// Counts an upload as aborted unless it ends stored or rejected.
struct UploadGuard<'a> {
    st: &'a State,
    settled: bool,
}

impl UploadGuard<'_> {
    fn settle(&mut self, c: &AtomicU64) {
        bump(c);
        self.settled = true;
    }
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        if !self.settled {
            bump(&self.st.counters.uploads_aborted);
        }
    }
}

async fn upload(AxState(st): St, _: Checked, multipart: Multipart) -> Result<Response, Fault> {
    bump(&st.counters.uploads_started);
    let mut guard = UploadGuard {
        st: &st,
        settled: false,
    };
    let max = st.cfg.max_file_bytes;
    let Form { fields, file } = read_multipart(multipart, |held| {
        if held as u64 > max {
            guard.settle(&st.counters.uploads_rejected);
            return Err(Fault::Api {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: 2100,
                message: "The size of a file cannot exceed 20 MB.".into(),
                violations: vec![("File".into(), format!("The file exceeds {max} bytes."))],
            });
        }
        if let Some(f) = st.cfg.faults
            && held > 1024
            && st.roll() < f.fail_mid_upload / 8.0
        {
            bump(&st.counters.faults_injected);
            guard.settle(&st.counters.uploads_rejected);
            return Err(Fault::Injected(
                StatusCode::INTERNAL_SERVER_ERROR,
                "injected fault mid-upload",
            ));
        }
        Ok(())
    })
    .await?;
    let mut v = Vec::new();
    let wo = parse_work_order(fields.get("workorderid"), &mut v);
    check_name(fields.get("name"), &mut v);
    if fields.get("mimetype").is_none_or(|m| m.trim().is_empty()) {
        v.push(("MimeType".into(), "The MimeType field is required.".into()));
    }
    match fields.get("performedby.name") {
        Some(n) if !n.trim().is_empty() && n.chars().count() <= contract::MAX_PERSON_NAME_CHARS => {
        }
        Some(n) if !n.trim().is_empty() => v.push((
            "PerformedBy.Name".into(),
            "The PerformedBy.Name must be at most 100 characters.".into(),
        )),
        _ => v.push((
            "PerformedBy.Name".into(),
            "The PerformedBy.Name field is required.".into(),
        )),
    }
    check_message_id(fields.get("messageid"), &mut v);
    check_enums(&fields, &mut v);
    match &file {
        None => v.push(("File".into(), "The File field is required.".into())),
        Some(b) if b.is_empty() => v.push(("File".into(), "The File is empty.".into())),
        _ => {}
    }
    let (Some(wo_id), Some(bytes), true) = (wo, file, v.is_empty()) else {
        guard.settle(&st.counters.uploads_rejected);
        return Err(Fault::invalid(v));
    };
    let mut orders = st.orders();
    let Some(wo) = orders.get_mut(&wo_id) else {
        guard.settle(&st.counters.uploads_rejected);
        return Err(Fault::work_order_not_found(wo_id));
    };
    if contract::NO_UPLOADS_IN.contains(&wo.status.as_str()) {
        guard.settle(&st.counters.uploads_rejected);
        let status = &wo.status;
        return Err(Fault::bad_request(
            3001,
            format!("Files cannot be attached to a work order in status {status}."),
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let message_id = fields.get("messageid").cloned().unwrap_or_default();
    let norm = |k: &str, f: fn(&str) -> Option<&'static str>| {
        fields.get(k).and_then(|s| f(s)).map(str::to_string)
    };
    wo.attachments.push(StoredAttachment {
        attachment_id: id.clone(),
        work_order_id: wo_id,
        name: fields.get("name").cloned().unwrap_or_default(),
        mime_type: fields.get("mimetype").cloned().unwrap_or_default(),
        document_type: norm("documenttype", |s| canonical(&DOCUMENT_TYPES, s)),
        visibility: norm("messagevisibility", |s| canonical(&VISIBILITIES, s))
            .unwrap_or_else(|| "All".into()),
        performed_by_name: fields.get("performedby.name").cloned().unwrap_or_default(),
        performed_by_phone: fields.get("performedby.phone").cloned(),
        message_id: message_id.clone(),
        created: SystemTime::now(),
        bytes,
    });
    drop(orders);
    guard.settle(&st.counters.uploads_stored);
    let ok = axum::Json(json!({"AttachmentId": id, "MessageId": message_id})).into_response();
    Ok(lost::answer(&st, fields.get("messageid"), ok))
}

async fn update(AxState(st): St, _: Checked, Fields(f): Fields) -> Result<Response, Fault> {
    let mut v = Vec::new();
    let (wo, id) = target_fields(&f, &mut v);
    check_name(f.get("name"), &mut v);
    check_message_id(f.get("messageid"), &mut v);
    check_enums(&f, &mut v);
    let (Some(wo), Some(id), true) = (wo, id, v.is_empty()) else {
        return Err(Fault::invalid(v));
    };
    let mut orders = st.orders();
    let order = orders.get_mut(&wo).ok_or(Fault::work_order_not_found(wo))?;
    let a = order
        .attachments
        .iter_mut()
        .find(|a| a.attachment_id == id)
        .ok_or_else(|| Fault::attachment_not_found(&id))?;
    if let Some(n) = f.get("name") {
        a.name = n.clone();
    }
    if let Some(dt) = f
        .get("documenttype")
        .and_then(|s| canonical(&DOCUMENT_TYPES, s))
    {
        a.document_type = Some(dt.into());
    }
    if let Some(mv) = f
        .get("messagevisibility")
        .and_then(|s| canonical(&VISIBILITIES, s))
    {
        a.visibility = mv.into();
    }
    drop(orders);
    let ok = axum::Json(json!({"MessageId": f.get("messageid")})).into_response();
    Ok(lost::answer(&st, f.get("messageid"), ok))
}

async fn remove(AxState(st): St, _: Checked, Fields(f): Fields) -> Result<Response, Fault> {
    let mut v = Vec::new();
    let (wo, id) = target_fields(&f, &mut v);
    check_message_id(f.get("messageid"), &mut v);
    let (Some(wo), Some(id), true) = (wo, id, v.is_empty()) else {
        return Err(Fault::invalid(v));
    };
    let mut orders = st.orders();
    let order = orders.get_mut(&wo).ok_or(Fault::work_order_not_found(wo))?;
    let before = order.attachments.len();
    order.attachments.retain(|a| a.attachment_id != id);
    if order.attachments.len() == before {
        return Err(Fault::attachment_not_found(&id));
    }
    drop(orders);
    let ok = axum::Json(json!({"MessageId": f.get("messageid")})).into_response();
    Ok(lost::answer(&st, f.get("messageid"), ok))
}

fn signature(key: &str, id: &str, expires: u64) -> String {
    let mut h = Sha256::new();
    h.update(key.as_bytes());
    h.update(b"\n");
    h.update(id.as_bytes());
    h.update(b"\n");
    h.update(expires.to_string().as_bytes());
    hex::encode(h.finalize())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

async fn download_url(
    AxState(st): St,
    _: Checked,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Fault> {
    let q = lower_keys(q);
    let mut v = Vec::new();
    let (wo, id) = target_fields(&q, &mut v);
    let (Some(wo), Some(id), true) = (wo, id, v.is_empty()) else {
        return Err(Fault::invalid(v));
    };
    let orders = st.orders();
    let order = orders.get(&wo).ok_or(Fault::work_order_not_found(wo))?;
    if !order.attachments.iter().any(|a| a.attachment_id == id) {
        return Err(Fault::attachment_not_found(&id));
    }
    let expires = unix_now() + st.cfg.link_ttl.as_secs().max(1);
    let sig = signature(&st.link_key, &id, expires);
    let url = format!("{}/files/{id}?expires={expires}&sig={sig}", st.base_url);
    Ok(axum::Json(json!({"Url": url})).into_response())
}

/// What RFC 5987 leaves unencoded in a `filename*` value: letters, digits and
/// `!#$&+-.^_`|~`.
const ATTR_CHAR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

async fn file(
    AxState(st): St,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    bump(&st.counters.downloads);
    if headers.contains_key(header::AUTHORIZATION) {
        // Like object storage behind a signed link: one auth mechanism only. A
        // client that sends its API token here is leaking it.
        bump(&st.counters.downloads_with_credentials);
        return (
            StatusCode::BAD_REQUEST,
            "Only one auth mechanism allowed: the link's signature, no Authorization header.",
        )
            .into_response();
    }
    let expires = q
        .get("expires")
        .and_then(|e| e.parse::<u64>().ok())
        .unwrap_or(0);
    let sig_ok = q
        .get("sig")
        .is_some_and(|s| *s == signature(&st.link_key, &id, expires));
    if !sig_ok {
        return (StatusCode::FORBIDDEN, "Signature does not match.").into_response();
    }
    if unix_now() >= expires {
        return (StatusCode::FORBIDDEN, "The link has expired.").into_response();
    }
    let found = st
        .orders()
        .values()
        .flat_map(|w| w.attachments.iter())
        .find(|a| a.attachment_id == id)
        .cloned();
    let Some(a) = found else {
        return (StatusCode::NOT_FOUND, "No such file.").into_response();
    };
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&a.mime_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename*=UTF-8''{}",
        utf8_percent_encode(&a.name, ATTR_CHAR)
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // `Range: bytes=<first>-[<last>]`, as object storage serves it.
    let len = a.bytes.len() as u64;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes="))
        .and_then(|v| v.split_once('-'))
        .and_then(|(f, l)| {
            let first: u64 = f.trim().parse().ok()?;
            let last = match l.trim() {
                "" => None,
                l => Some(l.parse::<u64>().ok()?),
            };
            Some((first, last))
        });
    match range {
        // No range, or one that reads backwards (ignored, as RFC 9110 says).
        None => (StatusCode::OK, h, a.bytes).into_response(),
        Some((first, Some(last))) if last < first => (StatusCode::OK, h, a.bytes).into_response(),
        Some((first, _)) if first >= len => {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response()
        }
        Some((first, last)) => {
            let last = last.map_or(len - 1, |l| l.min(len - 1));
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{last}/{len}")) {
                h.insert(header::CONTENT_RANGE, v);
            }
            let part = a.bytes.slice(first as usize..=last.max(first) as usize);
            (StatusCode::PARTIAL_CONTENT, h, part).into_response()
        }
    }
}
