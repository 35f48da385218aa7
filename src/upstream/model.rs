//! What the upstream's success answers say, as the gateway keeps it.

use std::time::SystemTime;

use crate::proto::struct_wire::RawStruct;
use crate::secret::Secret;

/// The names each typed field of an attachment object may go by,
/// case-insensitively, in order of preference.
pub mod fields {
    pub const ID: &[&str] = &["AttachmentId", "Id"];
    pub const NAME: &[&str] = &["Name", "FileName"];
    pub const MIME_TYPE: &[&str] = &["MimeType", "ContentType"];
    pub const SIZE: &[&str] = &["Size", "SizeBytes", "FileSize", "Length"];
    pub const DOCUMENT_TYPE: &[&str] = &["DocumentType"];
    pub const SUBTYPE: &[&str] = &["Subtype", "SubType"];
}

/// One attachment as the upstream describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamAttachment {
    pub attachment_id: String,
    pub name: String,
    pub mime_type: String,
    pub size_bytes: u64,
    /// The upstream's `DocumentType` spelling, verbatim.
    pub document_type: Option<String>,
    pub subtype: String,
    /// The whole object, as received (as an encoded protobuf `Struct`); empty
    /// when read for the BASIC view.
    pub raw: RawStruct,
}

/// A temporary link to an attachment's bytes. The URL carries a signature.
#[derive(Debug, Clone)]
pub struct DownloadLink {
    pub url: Secret,
    pub expires_at: SystemTime,
}

/// `{"AttachmentId": "…", "MessageId": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReceipt {
    pub attachment_id: String,
    pub message_id: Option<String>,
}
