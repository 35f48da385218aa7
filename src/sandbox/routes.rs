//! The sandbox's HTTP handlers: what the CorrigoPro Direct API does, as documented.

// Handlers answer early with a ready `Response`; boxing it would only add noise.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{
    DefaultBodyLimit, FromRequest, Multipart, Path, Query, Request, State as AxState,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::contract::{self, DOCUMENT_TYPES, VISIBILITIES, canonical};
use super::{API_PREFIX, CLIENT_ID, CLIENT_SECRET, State, StoredAttachment};

type St = AxState<Arc<State>>;

pub(super) fn router(state: Arc<State>) -> Router {
    Router::new()
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
        .layer(DefaultBodyLimit::disable())
        .merge(super::customer::routes(state.cfg.max_file_bytes))
        .with_state(state)
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

/// The upstream's error body: `{Code, Message, ValidationErrors, MessageId}`.
fn error(
    status: StatusCode,
    code: i64,
    message: &str,
    violations: &[(String, String)],
) -> Response {
    let ve: Vec<Value> = violations
        .iter()
        .map(|(field, msg)| json!({"Type": "Validation", "Field": field, "Message": msg}))
        .collect();
    (
        status,
        axum::Json(json!({
            "Code": code,
            "Message": message,
            "ValidationErrors": ve,
            "MessageId": uuid::Uuid::new_v4().to_string(),
        })),
    )
        .into_response()
}

fn invalid(violations: Vec<(String, String)>) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        2100,
        "Invalid fields.",
        &violations,
    )
}

/// Injects the configured faults before a request is handled.
async fn maybe_fail(st: &State) -> Result<(), Response> {
    let Some(f) = st.cfg.faults else {
        return Ok(());
    };
    let delay = st.delay_ms(f.max_delay_ms);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if st.roll() < f.unavailable {
        bump(&st.counters.faults_injected);
        return Err((StatusCode::SERVICE_UNAVAILABLE, "injected fault").into_response());
    }
    Ok(())
}

/// Checks the bearer token.
fn authorize(st: &State, headers: &HeaderMap) -> Result<(), Response> {
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
        Err((
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            axum::Json(json!({"Message": "Authorization has been denied for this request."})),
        )
            .into_response())
    }
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
    let value = format!("sbx.{}", uuid::Uuid::new_v4().simple());
    let ttl = st.cfg.token_ttl;
    st.tokens()
        .insert(value.clone(), tokio::time::Instant::now() + ttl);
    axum::Json(json!({
        "access_token": value,
        "token_type": "bearer",
        "expires_in": ttl.as_secs(),
    }))
    .into_response()
}

/// Query parameters, names folded to lower case (the API ignores their case).
fn lower_keys(q: HashMap<String, String>) -> HashMap<String, String> {
    q.into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

fn parse_work_order(v: Option<&String>, out: &mut Vec<(String, String)>) -> Option<i64> {
    match v.map(|s| s.trim().parse::<i64>()) {
        Some(Ok(n)) if n > 0 => Some(n),
        Some(_) => {
            out.push((
                "WorkOrderId".into(),
                "The WorkOrderId must be a positive integer.".into(),
            ));
            None
        }
        None => {
            out.push((
                "WorkOrderId".into(),
                "The WorkOrderId field is required.".into(),
            ));
            None
        }
    }
}

fn wo_not_found(id: i64) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        3005,
        &format!("Work order {id} was not found or was recalled by the customer."),
        &[],
    )
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
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = maybe_fail(&st).await {
        return r;
    }
    if let Err(r) = authorize(&st, &headers) {
        return r;
    }
    let q = lower_keys(q);
    let mut v = Vec::new();
    let Some(id) = parse_work_order(q.get("workorderid"), &mut v) else {
        return invalid(v);
    };
    let orders = st.orders();
    let Some(wo) = orders.get(&id) else {
        return wo_not_found(id);
    };
    let items: Vec<Value> = wo.attachments.iter().map(attachment_json).collect();
    axum::Json(Value::Array(items)).into_response()
}

fn check_name(v: Option<&String>, out: &mut Vec<(String, String)>) {
    match v {
        None => out.push(("Name".into(), "The Name field is required.".into())),
        Some(n) if n.trim().is_empty() => {
            out.push(("Name".into(), "The Name field is required.".into()))
        }
        Some(n)
            if !n
                .rsplit_once('.')
                .is_some_and(|(s, e)| !s.is_empty() && !e.is_empty()) =>
        {
            out.push((
                "Name".into(),
                "The Name must include the file's extension.".into(),
            ))
        }
        _ => {}
    }
}

fn check_enums(f: &HashMap<String, String>, out: &mut Vec<(String, String)>) {
    if let Some(dt) = f.get("documenttype")
        && canonical(&DOCUMENT_TYPES, dt).is_none()
    {
        out.push((
            "DocumentType".into(),
            format!("'{dt}' is not a valid DocumentType."),
        ));
    }
    if let Some(mv) = f.get("messagevisibility")
        && canonical(&VISIBILITIES, mv).is_none()
    {
        out.push((
            "MessageVisibility".into(),
            format!("'{mv}' is not a valid MessageVisibility."),
        ));
    }
}

fn check_message_id(v: Option<&String>, out: &mut Vec<(String, String)>) {
    match v {
        None => out.push((
            "MessageId".into(),
            "The MessageId field is required.".into(),
        )),
        Some(m) if m.is_empty() => out.push((
            "MessageId".into(),
            "The MessageId field is required.".into(),
        )),
        Some(m) if m.chars().count() > contract::MAX_MESSAGE_ID_CHARS => out.push((
            "MessageId".into(),
            "The MessageId must be at most 36 characters.".into(),
        )),
        _ => {}
    }
}

/// Counts an upload as aborted unless it ends stored or rejected.
struct UploadGuard<'a> {
    st: &'a State,
    settled: bool,
}

impl UploadGuard<'_> {
    fn settle(mut self, c: &AtomicU64) {
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

async fn upload(AxState(st): St, headers: HeaderMap, mut multipart: Multipart) -> Response {
    if let Err(r) = maybe_fail(&st).await {
        return r;
    }
    if let Err(r) = authorize(&st, &headers) {
        return r;
    }
    bump(&st.counters.uploads_started);
    let guard = UploadGuard {
        st: &st,
        settled: false,
    };
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut file: Option<Bytes> = None;
    let max = st.cfg.max_file_bytes;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                // The body broke off or is malformed: nothing is stored.
                return error(
                    StatusCode::BAD_REQUEST,
                    2100,
                    &format!("Malformed multipart body: {e}"),
                    &[],
                );
            }
        };
        let name = field.name().unwrap_or_default().to_ascii_lowercase();
        if name == "file" {
            let mut field = field;
            let mut buf = BytesMut::new();
            loop {
                match field.chunk().await {
                    Ok(Some(c)) => {
                        if (buf.len() + c.len()) as u64 > max {
                            guard.settle(&st.counters.uploads_rejected);
                            return error(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                2100,
                                "The size of a file cannot exceed 20 MB.",
                                &[("File".into(), format!("The file exceeds {max} bytes."))],
                            );
                        }
                        buf.extend_from_slice(&c);
                        if let Some(f) = st.cfg.faults
                            && buf.len() > 1024
                            && st.roll() < f.fail_mid_upload / 8.0
                        {
                            bump(&st.counters.faults_injected);
                            guard.settle(&st.counters.uploads_rejected);
                            return (
                                StatusCode::INTERNAL_SERVER_ERROR,
                                "injected fault mid-upload",
                            )
                                .into_response();
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            2100,
                            &format!("Malformed multipart body: {e}"),
                            &[],
                        );
                    }
                }
            }
            file = Some(buf.freeze());
        } else {
            match field.text().await {
                Ok(t) => {
                    fields.insert(name, t);
                }
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        2100,
                        &format!("Malformed multipart body: {e}"),
                        &[],
                    );
                }
            }
        }
    }
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
        return invalid(v);
    };
    let mut orders = st.orders();
    let Some(wo) = orders.get_mut(&wo_id) else {
        guard.settle(&st.counters.uploads_rejected);
        return wo_not_found(wo_id);
    };
    if contract::NO_UPLOADS_IN.contains(&wo.status.as_str()) {
        guard.settle(&st.counters.uploads_rejected);
        return error(
            StatusCode::BAD_REQUEST,
            3001,
            &format!(
                "Files cannot be attached to a work order in status {}.",
                wo.status
            ),
            &[],
        );
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
    axum::Json(json!({"AttachmentId": id, "MessageId": message_id})).into_response()
}

/// Reads a form body, multipart or URL-encoded; keys folded to lower case.
async fn read_form(req: Request, st: &Arc<State>) -> Result<HashMap<String, String>, Response> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let bad = |m: String| error(StatusCode::BAD_REQUEST, 2100, &m, &[]);
    if ct.starts_with("multipart/form-data") {
        let mut mp = Multipart::from_request(req, st)
            .await
            .map_err(|e| bad(format!("Malformed multipart body: {e}")))?;
        let mut out = HashMap::new();
        while let Some(field) = mp
            .next_field()
            .await
            .map_err(|e| bad(format!("Malformed multipart body: {e}")))?
        {
            let name = field.name().unwrap_or_default().to_ascii_lowercase();
            let text = field
                .text()
                .await
                .map_err(|e| bad(format!("Malformed multipart body: {e}")))?;
            out.insert(name, text);
        }
        Ok(out)
    } else if ct.starts_with("application/x-www-form-urlencoded") {
        let axum::Form(f) = axum::Form::<HashMap<String, String>>::from_request(req, st)
            .await
            .map_err(|e| bad(format!("Malformed form body: {e}")))?;
        Ok(lower_keys(f))
    } else {
        Err(bad("The request must carry form data.".into()))
    }
}

fn target_fields(
    f: &HashMap<String, String>,
    v: &mut Vec<(String, String)>,
) -> (Option<i64>, Option<String>) {
    let wo = parse_work_order(f.get("workorderid"), v);
    let id = match f.get("attachmentid") {
        Some(id) if !id.trim().is_empty() => Some(id.clone()),
        _ => {
            v.push((
                "AttachmentId".into(),
                "The AttachmentId field is required.".into(),
            ));
            None
        }
    };
    (wo, id)
}

async fn update(AxState(st): St, req: Request) -> Response {
    if let Err(r) = maybe_fail(&st).await {
        return r;
    }
    if let Err(r) = authorize(&st, req.headers()) {
        return r;
    }
    let f = match read_form(req, &st).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut v = Vec::new();
    let (wo, id) = target_fields(&f, &mut v);
    check_name(f.get("name"), &mut v);
    check_message_id(f.get("messageid"), &mut v);
    check_enums(&f, &mut v);
    let (Some(wo), Some(id), true) = (wo, id, v.is_empty()) else {
        return invalid(v);
    };
    let mut orders = st.orders();
    let Some(order) = orders.get_mut(&wo) else {
        return wo_not_found(wo);
    };
    let Some(a) = order.attachments.iter_mut().find(|a| a.attachment_id == id) else {
        return error(
            StatusCode::BAD_REQUEST,
            3003,
            &format!("Attachment {id} was not found."),
            &[],
        );
    };
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
    axum::Json(json!({"MessageId": f.get("messageid")})).into_response()
}

async fn remove(AxState(st): St, req: Request) -> Response {
    if let Err(r) = maybe_fail(&st).await {
        return r;
    }
    if let Err(r) = authorize(&st, req.headers()) {
        return r;
    }
    let f = match read_form(req, &st).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut v = Vec::new();
    let (wo, id) = target_fields(&f, &mut v);
    check_message_id(f.get("messageid"), &mut v);
    let (Some(wo), Some(id), true) = (wo, id, v.is_empty()) else {
        return invalid(v);
    };
    let mut orders = st.orders();
    let Some(order) = orders.get_mut(&wo) else {
        return wo_not_found(wo);
    };
    let before = order.attachments.len();
    order.attachments.retain(|a| a.attachment_id != id);
    if order.attachments.len() == before {
        return error(
            StatusCode::BAD_REQUEST,
            3003,
            &format!("Attachment {id} was not found."),
            &[],
        );
    }
    axum::Json(json!({"MessageId": f.get("messageid")})).into_response()
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
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = maybe_fail(&st).await {
        return r;
    }
    if let Err(r) = authorize(&st, &headers) {
        return r;
    }
    let q = lower_keys(q);
    let mut v = Vec::new();
    let (wo, id) = target_fields(&q, &mut v);
    let (Some(wo), Some(id), true) = (wo, id, v.is_empty()) else {
        return invalid(v);
    };
    let orders = st.orders();
    let Some(order) = orders.get(&wo) else {
        return wo_not_found(wo);
    };
    if !order.attachments.iter().any(|a| a.attachment_id == id) {
        return error(
            StatusCode::BAD_REQUEST,
            3003,
            &format!("Attachment {id} was not found."),
            &[],
        );
    }
    let expires = unix_now() + st.cfg.link_ttl.as_secs().max(1);
    let sig = signature(&st.link_key, &id, expires);
    let url = format!("{}/files/{id}?expires={expires}&sig={sig}", st.base_url);
    axum::Json(json!({"Url": url})).into_response()
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
    (StatusCode::OK, h, a.bytes).into_response()
}
