//! Reading the API's forms, the one way: multipart (text fields, and a file
//! part kept as bytes) or URL-encoded, field names folded to lower case (the
//! API ignores their case); and the checks of the fields the calls share.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use bytes::{Bytes, BytesMut};

use super::fault::Fault;
use crate::sandbox::State;
use crate::sandbox::contract::{self, DOCUMENT_TYPES, VISIBILITIES, canonical};

/// A form as the API reads it.
#[derive(Default)]
pub(super) struct Form {
    /// The text fields, by lower-case name.
    pub(super) fields: HashMap<String, String>,
    /// The bytes of the `File` part, if any.
    pub(super) file: Option<Bytes>,
}

/// Reads a multipart body. Before each chunk of the file part is kept,
/// `on_file` is told how many bytes the part then holds, and may stop the read.
pub(super) async fn read_multipart(
    mut multipart: Multipart,
    mut on_file: impl FnMut(usize) -> Result<(), Fault>,
) -> Result<Form, Fault> {
    let malformed = |e| Fault::malformed("multipart", e);
    let mut form = Form::default();
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        let name = field.name().unwrap_or_default().to_ascii_lowercase();
        if name != "file" {
            let text = field.text().await.map_err(malformed)?;
            form.fields.insert(name, text);
            continue;
        }
        let mut buf = BytesMut::new();
        while let Some(chunk) = field.chunk().await.map_err(malformed)? {
            on_file(buf.len() + chunk.len())?;
            buf.extend_from_slice(&chunk);
        }
        form.file = Some(buf.freeze());
    }
    Ok(form)
}

/// A form body, multipart or URL-encoded: its text fields by lower-case name.
pub(super) struct Fields(pub(super) HashMap<String, String>);

impl FromRequest<Arc<State>> for Fields {
    type Rejection = Fault;

    async fn from_request(req: Request, st: &Arc<State>) -> Result<Self, Fault> {
        let ct = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if ct.starts_with("multipart/form-data") {
            let multipart = Multipart::from_request(req, st)
                .await
                .map_err(|e| Fault::malformed("multipart", e))?;
            Ok(Self(read_multipart(multipart, |_| Ok(())).await?.fields))
        } else if ct.starts_with("application/x-www-form-urlencoded") {
            let axum::Form(f) = axum::Form::<HashMap<String, String>>::from_request(req, st)
                .await
                .map_err(|e| Fault::malformed("form", e))?;
            Ok(Self(lower_keys(f)))
        } else {
            Err(Fault::bad_request(
                2100,
                "The request must carry form data.",
            ))
        }
    }
}

/// Query parameters, names folded to lower case (the API ignores their case).
pub(super) fn lower_keys(q: HashMap<String, String>) -> HashMap<String, String> {
    q.into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

pub(super) fn parse_work_order(v: Option<&String>, out: &mut Vec<(String, String)>) -> Option<i64> {
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

pub(super) fn check_name(v: Option<&String>, out: &mut Vec<(String, String)>) {
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

pub(super) fn check_enums(f: &HashMap<String, String>, out: &mut Vec<(String, String)>) {
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

pub(super) fn check_message_id(v: Option<&String>, out: &mut Vec<(String, String)>) {
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

pub(super) fn target_fields(
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
