//! What a CorrigoPro notification says, as far as attachments go.
//!
//! Every notification has a `Header` (`WorkOrderId`, `Action`, `ActionDate`,
//! `MessageId`, `Sender` or `PerformedBy`, …). Attachment notifications
//! (`AttachmentAdded`, `AttachmentRemoved`) carry one attachment's fields at the
//! top level; the work-order-received notification (whatever its `Action`) may
//! carry an `Attachments` array: one ADDED event per element. Key case is not
//! relied on; unknown fields are kept (in the event's `attachment.upstream`).

use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::domain::{DocumentType, UpstreamName};
use crate::proto::deep::{MAX_STRUCT_DEPTH, from_json, json_text};
use crate::proto::{Attachment, AttachmentEvent, AttachmentEventType, EventSource, Sender};
use crate::upstream::json::{get_ci, value_str};

/// A message id longer than this is not CorrigoPro's (at most 36): the body's
/// hash dedupes it instead.
const MAX_MESSAGE_ID: usize = 128;
/// Attachments one notification may list.
const MAX_ATTACHMENTS: usize = 1000;
/// An attachment object larger than this (as JSON) is recorded without its
/// `upstream` copy (the typed fields stay).
const MAX_UPSTREAM_BYTES: usize = 16 * 1024;

/// What to do with a notification.
#[derive(Debug)]
pub enum Notification {
    /// Attachment events to record together, deduplicated by `dedupe`. `also_other`:
    /// the notification is about more than attachments (work order received), so
    /// it goes to the forward target too.
    Attachments {
        dedupe: String,
        events: Vec<AttachmentEvent>,
        also_other: bool,
    },
    /// Not about attachments.
    Other,
}

/// A notification about attachments that lacks what an event needs.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(pub String);

fn str_field(obj: &Map<String, Value>, names: &[&str]) -> Option<String> {
    get_ci(obj, names)
        .and_then(value_str)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The most characters of a sender's field kept (names, phones, types are short).
const MAX_SENDER_FIELD: usize = 256;

fn bounded(s: String) -> String {
    match s.char_indices().nth(MAX_SENDER_FIELD) {
        Some((end, _)) => s[..end].to_string(),
        None => s,
    }
}

fn action_of(header: Option<&Map<String, Value>>, event_type: Option<&str>) -> String {
    header
        .and_then(|h| str_field(h, &["Action"]))
        .or_else(|| event_type.map(str::to_string))
        .unwrap_or_default()
}

/// Reads `body` (already known to be a JSON object), with the request's
/// `Event-Type` header, received at `now`.
pub fn classify(
    body: &Map<String, Value>,
    event_type: Option<&str>,
    body_hash: &str,
    now: SystemTime,
) -> Result<Notification, Malformed> {
    let header = get_ci(body, &["Header"]).and_then(Value::as_object);
    let action = action_of(header, event_type);
    let kind = if action.eq_ignore_ascii_case("AttachmentAdded") {
        Some(AttachmentEventType::Added)
    } else if action.eq_ignore_ascii_case("AttachmentRemoved") {
        Some(AttachmentEventType::Removed)
    } else {
        None
    };
    let listed = get_ci(body, &["Attachments"]).and_then(Value::as_array);
    if kind.is_none() && listed.is_none() {
        return Ok(Notification::Other);
    }
    let header = header.ok_or_else(|| Malformed("no `Header` object".into()))?;
    let work_order_id = get_ci(header, &["WorkOrderId"])
        .and_then(|v| v.as_i64().or_else(|| value_str(v)?.trim().parse().ok()))
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            Malformed("`Header.WorkOrderId` is missing or not a positive number".into())
        })?;
    let message_id = str_field(header, &["MessageId"]).filter(|m| m.len() <= MAX_MESSAGE_ID);
    let dedupe = match &message_id {
        Some(m) => format!("msg:{m}"),
        None => format!("body:{body_hash}"),
    };
    let occurred_at = str_field(header, &["ActionDate"])
        .and_then(|d| humantime::parse_rfc3339_weak(d.trim_end_matches('Z')).ok())
        .unwrap_or(now);
    let sender = get_ci(header, &["Sender", "PerformedBy"])
        .and_then(Value::as_object)
        .map(|s| Sender {
            // Copied into each event of the notification (up to
            // MAX_ATTACHMENTS): bounded, so one notification cannot multiply
            // its size by the number of its attachments.
            name: bounded(str_field(s, &["Name", "DisplayName"]).unwrap_or_default()),
            phone: bounded(str_field(s, &["Phone"]).unwrap_or_default()),
            r#type: bounded(str_field(s, &["Type"]).unwrap_or_default()),
        });
    let event = |kind: AttachmentEventType, attachment: Attachment| AttachmentEvent {
        event_id: String::new(),
        r#type: kind as i32,
        work_order_id,
        attachment: Some(attachment),
        source: EventSource::Corrigopro as i32,
        caller: String::new(),
        sender: sender.clone(),
        occurred_at: Some(prost_types::Timestamp::from(occurred_at)),
        received_at: Some(prost_types::Timestamp::from(now)),
        upstream_message_id: message_id.clone().unwrap_or_default(),
    };
    let events = if let Some(kind) = kind {
        vec![event(kind, attachment(body, true)?)]
    } else {
        // The notification is about the work order too (it is forwarded): one
        // element that is not an attachment does not hold the rest back.
        let listed = listed.map(Vec::as_slice).unwrap_or_default();
        if listed.len() > MAX_ATTACHMENTS {
            tracing::warn!(
                attachments = listed.len(),
                "a notification lists more than {MAX_ATTACHMENTS} attachments: the first {MAX_ATTACHMENTS} are recorded"
            );
        }
        listed
            .iter()
            .take(MAX_ATTACHMENTS)
            .filter_map(|a| {
                let read = a
                    .as_object()
                    .ok_or_else(|| Malformed("not an object".into()))
                    .and_then(|obj| attachment(obj, false));
                match read {
                    Ok(att) => Some(event(AttachmentEventType::Added, att)),
                    Err(e) => {
                        tracing::warn!(error = %e, "an `Attachments` element that is not an attachment: left out");
                        None
                    }
                }
            })
            .collect()
    };
    Ok(Notification::Attachments {
        dedupe,
        events,
        also_other: kind.is_none(),
    })
}

/// An attachment's fields from a notification object (`top`: the attachment
/// notification itself, whose `Header` is not the attachment's).
fn attachment(obj: &Map<String, Value>, top: bool) -> Result<Attachment, Malformed> {
    let attachment_id = str_field(obj, &["AttachmentId", "Id"])
        .ok_or_else(|| Malformed("no `AttachmentId`".into()))?;
    if attachment_id.len() > 36 {
        return Err(Malformed(
            "`AttachmentId` is longer than 36 characters".into(),
        ));
    }
    // The notification's own object, unless it is large: the log keeps every
    // event, so one oversized body must not cost what a thousand normal ones do.
    let fields: Vec<(&String, &Value)> = obj
        .iter()
        .filter(|(k, _)| !(top && k.eq_ignore_ascii_case("Header")))
        .collect();
    let size: usize = fields
        .iter()
        .map(|(k, v)| k.len() + serde_json::to_vec(v).map_or(usize::MAX, |b| b.len()))
        .fold(0, usize::saturating_add);
    let upstream = (size <= MAX_UPSTREAM_BYTES).then(|| prost_types::Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.clone(), to_value(v, 0)))
            .collect(),
    });
    if upstream.is_none() {
        tracing::warn!(
            bytes = size,
            "an attachment object larger than {MAX_UPSTREAM_BYTES} bytes: its `upstream` copy is left out"
        );
    }
    Ok(Attachment {
        attachment_id,
        name: str_field(obj, &["Name", "FileName"]).unwrap_or_default(),
        mime_type: str_field(obj, &["MimeType", "ContentType"]).unwrap_or_default(),
        size_bytes: get_ci(obj, &["Size", "SizeBytes"])
            .and_then(|v| v.as_u64().or_else(|| value_str(v)?.parse().ok()))
            .unwrap_or(0),
        document_type: str_field(obj, &["DocumentType"])
            .and_then(|d| DocumentType::from_upstream(&d))
            .map_or(0, |d| d as i32),
        subtype: str_field(obj, &["Subtype"]).unwrap_or_default(),
        upstream,
    })
}

fn to_value(v: &Value, depth: usize) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => Kind::StringValue(s.clone()),
        _ if depth >= MAX_STRUCT_DEPTH => Kind::StringValue(json_text(&from_json(v.clone()))),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.iter().map(|x| to_value(x, depth + 1)).collect(),
        }),
        Value::Object(o) => Kind::StructValue(prost_types::Struct {
            fields: o
                .iter()
                .map(|(k, x)| (k.clone(), to_value(x, depth + 1)))
                .collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    /// "Attachment added" exactly as CorrigoPro's documentation shows it.
    const DOC_ATTACHMENT_ADDED: &str = r#"{"AttachmentId": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "Name": "test.doc",
 "MimeType": "application/msword", "Size": 234256, "Subtype": "…",
 "Header": {"WorkOrderId": 42, "BranchId": 492042,
            "Sender": {"Name": "Jon Snow", "Phone": "+12025550141", "Type": "CorrigoPro"},
            "Action": "AttachmentAdded", "ActionDate": "2017-10-04T08:28:36.9484279Z",
            "ApiVersion": "1.0", "MessageId": "113cfe40-…"}}"#;

    #[test]
    fn the_documented_attachment_added_notification() {
        let body: Map<String, Value> = serde_json::from_str(DOC_ATTACHMENT_ADDED).unwrap();
        let Notification::Attachments { dedupe, events, .. } =
            classify(&body, None, "h", SystemTime::now()).unwrap()
        else {
            panic!("attachments")
        };
        assert_eq!(dedupe, "msg:113cfe40-…");
        let [e] = events.as_slice() else {
            panic!("one event: {events:?}")
        };
        assert_eq!(
            (e.work_order_id, e.r#type),
            (42, AttachmentEventType::Added as i32)
        );
        let a = e.attachment.as_ref().unwrap();
        assert_eq!(
            (
                a.attachment_id.as_str(),
                a.name.as_str(),
                a.mime_type.as_str(),
                a.size_bytes
            ),
            (
                "7c9e6679-7425-40de-944b-e07fc1f90ae7",
                "test.doc",
                "application/msword",
                234256
            )
        );
        assert_eq!(e.sender.as_ref().unwrap().name, "Jon Snow");
        assert_eq!(e.occurred_at.as_ref().unwrap().seconds, 1507105716);
    }

    #[test]
    fn an_added_attachment_is_one_event_with_its_fields() {
        let body = obj(serde_json::json!({
            "AttachmentId": "7c9e6679-7425-40de-944b-e07fc1f90ae7", "Name": "test.doc",
            "MimeType": "application/msword", "Size": 234256, "Subtype": "x",
            "Header": {"WorkOrderId": 42, "BranchId": 492042,
                "Sender": {"Name": "Jon Snow", "Phone": "+12025550141", "Type": "CorrigoPro"},
                "Action": "AttachmentAdded", "ActionDate": "2017-10-04T08:28:36.9484279Z",
                "ApiVersion": "1.0", "MessageId": "113cfe40-aaaa"}
        }));
        let Notification::Attachments {
            dedupe,
            events,
            also_other,
        } = classify(&body, None, "h", SystemTime::now()).unwrap()
        else {
            panic!("attachments")
        };
        assert_eq!((dedupe.as_str(), also_other), ("msg:113cfe40-aaaa", false));
        let e = &events[0];
        assert_eq!(
            (e.work_order_id, e.r#type),
            (42, AttachmentEventType::Added as i32)
        );
        let a = e.attachment.as_ref().unwrap();
        assert_eq!((a.name.as_str(), a.size_bytes), ("test.doc", 234256));
        assert!(!a.upstream.as_ref().unwrap().fields.contains_key("Header"));
        assert_eq!(e.sender.as_ref().unwrap().name, "Jon Snow");
        assert_eq!(e.occurred_at.as_ref().unwrap().seconds, 1507105716);
    }

    #[test]
    fn work_order_received_lists_its_attachments_and_others_are_not_ours() {
        let body = obj(serde_json::json!({
            "Header": {"WorkOrderId": 7, "Action": "Received", "MessageId": "m"},
            "Attachments": [{"AttachmentId": "a1", "Name": "1.png"}, {"AttachmentId": "a2"}]
        }));
        let Notification::Attachments {
            events, also_other, ..
        } = classify(&body, None, "h", SystemTime::now()).unwrap()
        else {
            panic!("attachments")
        };
        assert!(also_other);
        assert_eq!(events.len(), 2);
        let other = obj(serde_json::json!({"Header": {"WorkOrderId": 7, "Action": "Accepted"}}));
        assert!(matches!(
            classify(&other, None, "h", SystemTime::now()).unwrap(),
            Notification::Other
        ));
        // One bad element is left out; the rest is recorded.
        let mixed = obj(serde_json::json!({
            "Header": {"WorkOrderId": 7, "Action": "Received", "MessageId": "m2"},
            "Attachments": [{"Name": "no id"}, 5, {"AttachmentId": "ok", "Big": "x".repeat(20_000)}]
        }));
        let Notification::Attachments { events, .. } =
            classify(&mixed, None, "h", SystemTime::now()).unwrap()
        else {
            panic!("attachments")
        };
        assert_eq!(events.len(), 1);
        let a = events[0].attachment.as_ref().unwrap();
        assert_eq!(a.attachment_id, "ok");
        assert!(
            a.upstream.is_none(),
            "an object over 16 KiB is kept without its copy"
        );
        let missing = obj(serde_json::json!({"Header": {"Action": "AttachmentRemoved"}}));
        assert!(classify(&missing, None, "h", SystemTime::now()).is_err());
    }
}
