//! Wire messages to validated domain types (every bad field reported at once), and
//! upstream answers back to wire messages.

use super::error::Error;
use crate::domain::{
    AttachmentId, AttachmentName, AttachmentRef, AttachmentRemoval, AttachmentUpdate, DocumentType,
    FieldError, ListView, MessageId, MimeType, NewAttachment, PerformedBy, Sha256Hex, UpstreamName,
    Violations, Visibility, WorkOrderId, declared_size,
};
use crate::proto::wire as proto;
use crate::upstream::UpstreamAttachment;

fn document_type(v: i32) -> Result<Option<DocumentType>, FieldError> {
    match DocumentType::try_from(v) {
        Ok(DocumentType::Unspecified) => Ok(None),
        Ok(d) => Ok(Some(d)),
        Err(_) => Err(FieldError::new(
            "UNKNOWN_ENUM_VALUE",
            format!("{v} is not a DocumentType value"),
        )),
    }
}

fn visibility(v: i32) -> Result<Option<Visibility>, FieldError> {
    match Visibility::try_from(v) {
        Ok(Visibility::Unspecified) => Ok(None),
        Ok(x) => Ok(Some(x)),
        Err(_) => Err(FieldError::new(
            "UNKNOWN_ENUM_VALUE",
            format!("{v} is not a MessageVisibility value"),
        )),
    }
}

/// The proto value of the upstream's `DocumentType` spelling (UNSPECIFIED for one
/// this API does not know; the raw value stays in `Attachment.upstream`).
fn document_type_to_proto(upstream: Option<&str>) -> i32 {
    upstream
        .and_then(DocumentType::from_upstream)
        .unwrap_or(DocumentType::Unspecified) as i32
}

fn done<T>(v: Violations, value: Option<T>) -> Result<T, Error> {
    match value {
        Some(value) if v.is_empty() => Ok(value),
        _ => Err(Error::Invalid(v.into_vec())),
    }
}

/// Validates an upload's metadata message (field paths under `metadata.`).
pub fn new_attachment(
    m: proto::UploadMetadata,
    max_upload_bytes: u64,
) -> Result<NewAttachment, Error> {
    let mut v = Violations::new();
    let work_order_id = v.check("metadata.work_order_id", WorkOrderId::new(m.work_order_id));
    let name = v.check("metadata.name", AttachmentName::new(&m.name));
    let mime_type = v.check("metadata.mime_type", MimeType::new(&m.mime_type));
    let document_type = v.check("metadata.document_type", document_type(m.document_type));
    let visibility = v.check(
        "metadata.message_visibility",
        visibility(m.message_visibility),
    );
    let person = m.performed_by.unwrap_or_default();
    let person_name = v.check(
        "metadata.performed_by.name",
        PerformedBy::name(&person.name),
    );
    let phone = v.check(
        "metadata.performed_by.phone",
        PerformedBy::phone(&person.phone),
    );
    let message_id = v.check(
        "metadata.message_id",
        MessageId::new_or_generate(&m.message_id),
    );
    let size = v.check(
        "metadata.size_bytes",
        declared_size(m.size_bytes, max_upload_bytes),
    );
    let expected_sha256 = v.check(
        "metadata.expected_sha256",
        Sha256Hex::new_optional(&m.expected_sha256),
    );
    let value = (|| {
        Some(NewAttachment {
            work_order_id: work_order_id?,
            name: name?,
            mime_type: mime_type?,
            document_type: document_type?,
            visibility: visibility?,
            performed_by: PerformedBy::new(person_name?, phone?),
            message_id: message_id?,
            declared_size: size?,
            expected_sha256: expected_sha256?,
        })
    })();
    done(v, value)
}

fn target(v: &mut Violations, work_order_id: i64, attachment_id: &str) -> Option<AttachmentRef> {
    let wo = v.check("work_order_id", WorkOrderId::new(work_order_id));
    let id = v.check("attachment_id", AttachmentId::new(attachment_id));
    Some(AttachmentRef {
        work_order_id: wo?,
        attachment_id: id?,
    })
}

fn list_view(v: i32) -> Result<ListView, FieldError> {
    use proto::AttachmentView as P;
    match P::try_from(v) {
        Ok(P::Unspecified | P::Full) => Ok(ListView::Full),
        Ok(P::Basic) => Ok(ListView::Basic),
        Err(_) => Err(FieldError::new(
            "UNKNOWN_ENUM_VALUE",
            format!("{v} is not an AttachmentView value"),
        )),
    }
}

/// Validates a list request (every bad field reported at once).
pub fn list_request(r: &proto::ListAttachmentsRequest) -> Result<(WorkOrderId, ListView), Error> {
    let mut v = Violations::new();
    let wo = v.check("work_order_id", WorkOrderId::new(r.work_order_id));
    let view = v.check("view", list_view(r.view));
    let value = (|| Some((wo?, view?)))();
    done(v, value)
}

pub fn attachment_ref(work_order_id: i64, attachment_id: &str) -> Result<AttachmentRef, Error> {
    let mut v = Violations::new();
    let t = target(&mut v, work_order_id, attachment_id);
    done(v, t)
}

pub fn update(r: proto::UpdateAttachmentRequest) -> Result<AttachmentUpdate, Error> {
    let mut v = Violations::new();
    let t = target(&mut v, r.work_order_id, &r.attachment_id);
    let name = v.check("name", AttachmentName::new(&r.name));
    let dt = v.check("document_type", document_type(r.document_type));
    let vis = v.check("message_visibility", visibility(r.message_visibility));
    let mid = v.check("message_id", MessageId::new_or_generate(&r.message_id));
    let value = (|| {
        Some(AttachmentUpdate {
            target: t?,
            name: name?,
            document_type: dt?,
            visibility: vis?,
            message_id: mid?,
        })
    })();
    done(v, value)
}

pub fn removal(r: proto::DeleteAttachmentRequest) -> Result<AttachmentRemoval, Error> {
    let mut v = Violations::new();
    let t = target(&mut v, r.work_order_id, &r.attachment_id);
    let mid = v.check("message_id", MessageId::new_or_generate(&r.message_id));
    let value = (|| {
        Some(AttachmentRemoval {
            target: t?,
            message_id: mid?,
        })
    })();
    done(v, value)
}

pub fn attachment(a: UpstreamAttachment, view: ListView) -> proto::Attachment {
    proto::Attachment {
        document_type: document_type_to_proto(a.document_type.as_deref()),
        attachment_id: a.attachment_id,
        name: a.name,
        mime_type: a.mime_type,
        size_bytes: a.size_bytes,
        subtype: a.subtype,
        upstream: match view {
            ListView::Full => Some(a.raw),
            ListView::Basic => None,
        },
    }
}
