//! Validated domain types and the limits of the upstream's contract.
//!
//! Nothing here knows about gRPC or HTTP: the adapter turns wire messages into these
//! types (collecting every [`FieldError`] with the field's path), and the upstream
//! client turns these types into the upstream's form fields.

use std::fmt;
use std::time::Duration;

/// The upstream's own upload limit ("the size of a file cannot exceed 20 MB").
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 20 * 1024 * 1024;
/// How long an upstream download link works after it was issued.
pub const DOWNLOAD_LINK_TTL: Duration = Duration::from_secs(15 * 60);
/// `Name`: a file name with its extension.
pub const MAX_NAME_CHARS: usize = 255;
/// `MimeType`.
pub const MAX_MIME_TYPE_CHARS: usize = 255;
/// `PerformedBy.Name`: "Maximum length 100".
pub const MAX_PERSON_NAME_CHARS: usize = 100;
/// `PerformedBy.Phone`.
pub const MAX_PHONE_CHARS: usize = 32;
/// `MessageId`: "Maximum length 36".
pub const MAX_MESSAGE_ID_CHARS: usize = 36;
/// `AttachmentId`: a GUID, at most 36 characters.
pub const MAX_ATTACHMENT_ID_CHARS: usize = 36;
/// The longest file extension accepted after the last dot of a name.
pub const MAX_EXTENSION_CHARS: usize = 16;

/// Why one field of a request is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// A SCREAMING_SNAKE_CASE reason, stable for callers to match on.
    pub reason: &'static str,
    /// A sentence for humans.
    pub description: String,
}

impl FieldError {
    pub fn new(reason: &'static str, description: impl Into<String>) -> Self {
        Self {
            reason,
            description: description.into(),
        }
    }
}

/// A field error together with the path of the field it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub error: FieldError,
}

/// Collects every field error of one request, so a caller learns all of them at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<Violation>);

impl Violations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps the value, or records its error under `field`.
    pub fn check<T>(&mut self, field: &str, result: Result<T, FieldError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(error) => {
                self.push(field, error);
                None
            }
        }
    }

    pub fn push(&mut self, field: &str, error: FieldError) {
        self.0.push(Violation {
            field: field.to_string(),
            error,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_vec(self) -> Vec<Violation> {
        self.0
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

fn required(s: &str) -> Result<&str, FieldError> {
    if s.trim().is_empty() {
        Err(FieldError::new("REQUIRED", "must not be empty"))
    } else {
        Ok(s)
    }
}

fn at_most(s: &str, max: usize) -> Result<&str, FieldError> {
    let n = s.chars().count();
    if n > max {
        Err(FieldError::new(
            "TOO_LONG",
            format!("must be at most {max} characters, got {n}"),
        ))
    } else {
        Ok(s)
    }
}

fn no_control(s: &str) -> Result<&str, FieldError> {
    if has_control(s) {
        Err(FieldError::new(
            "INVALID_CHARACTERS",
            "must not contain control characters",
        ))
    } else {
        Ok(s)
    }
}

/// A CorrigoPro work order id: a positive integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkOrderId(i64);

impl WorkOrderId {
    pub fn new(v: i64) -> Result<Self, FieldError> {
        if v <= 0 {
            Err(FieldError::new(
                "OUT_OF_RANGE",
                format!("must be greater than 0, got {v}"),
            ))
        } else {
            Ok(Self(v))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for WorkOrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An attachment id as the upstream assigns it (a GUID; not checked to be one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttachmentId(String);

impl AttachmentId {
    pub fn new(v: &str) -> Result<Self, FieldError> {
        required(v)?;
        at_most(v, MAX_ATTACHMENT_ID_CHARS)?;
        if !v.chars().all(|c| c.is_ascii_graphic()) {
            return Err(FieldError::new(
                "INVALID_CHARACTERS",
                "must be printable ASCII without spaces (an upstream GUID)",
            ));
        }
        Ok(Self(v.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A file name with its extension, safe to put in a form field and a file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentName(String);

impl AttachmentName {
    pub fn new(v: &str) -> Result<Self, FieldError> {
        required(v)?;
        at_most(v, MAX_NAME_CHARS)?;
        no_control(v)?;
        if v.contains(['/', '\\']) {
            return Err(FieldError::new(
                "INVALID_CHARACTERS",
                "must be a file name, without path separators",
            ));
        }
        if v != v.trim() {
            return Err(FieldError::new(
                "INVALID_CHARACTERS",
                "must not start or end with white space",
            ));
        }
        let ext_ok = match v.rsplit_once('.') {
            Some((stem, ext)) => {
                !stem.is_empty()
                    && !ext.is_empty()
                    && ext.chars().count() <= MAX_EXTENSION_CHARS
                    && ext
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
            }
            None => false,
        };
        if !ext_ok {
            return Err(FieldError::new(
                "MISSING_EXTENSION",
                format!(
                    "must be a file name with its extension, e.g. `photo.jpg` (the extension: 1 to {MAX_EXTENSION_CHARS} letters or digits)"
                ),
            ));
        }
        Ok(Self(v.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A media type such as `image/jpeg` (parameters after `;` allowed), parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimeType(mime::Mime);

impl MimeType {
    pub fn new(v: &str) -> Result<Self, FieldError> {
        required(v)?;
        at_most(v, MAX_MIME_TYPE_CHARS)?;
        no_control(v)?;
        let invalid = || {
            FieldError::new(
                "INVALID_FORMAT",
                "must be a media type `type/subtype`, e.g. `image/jpeg`",
            )
        };
        let m: mime::Mime = v.trim().parse().map_err(|_| invalid())?;
        // `*` is a wildcard in an Accept header, not a file's type; the parser
        // lets an empty subtype through.
        if m.type_() == mime::STAR
            || m.subtype() == mime::STAR
            || m.type_().as_str().is_empty()
            || m.subtype().as_str().is_empty()
        {
            return Err(invalid());
        }
        Ok(Self(m))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_ref()
    }
}

/// `PerformedBy`: the person on whose behalf a change is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerformedBy {
    name: String,
    phone: Option<String>,
}

impl PerformedBy {
    pub fn name(v: &str) -> Result<String, FieldError> {
        required(v)?;
        at_most(v, MAX_PERSON_NAME_CHARS)?;
        no_control(v)?;
        Ok(v.trim().to_string())
    }

    pub fn phone(v: &str) -> Result<Option<String>, FieldError> {
        if v.is_empty() {
            return Ok(None);
        }
        at_most(v, MAX_PHONE_CHARS)?;
        no_control(v)?;
        Ok(Some(v.trim().to_string()))
    }

    pub fn new(name: String, phone: Option<String>) -> Self {
        Self { name, phone }
    }

    pub fn get_name(&self) -> &str {
        &self.name
    }

    pub fn get_phone(&self) -> Option<&str> {
        self.phone.as_deref()
    }
}

/// `MessageId`: a unique id of one write request, at most 36 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessageId(String);

impl MessageId {
    /// The caller's id, or a fresh UUID when the caller sent none.
    pub fn new_or_generate(v: &str) -> Result<Self, FieldError> {
        if v.is_empty() {
            return Ok(Self::generate());
        }
        at_most(v, MAX_MESSAGE_ID_CHARS)?;
        if !v.chars().all(|c| c.is_ascii_graphic()) {
            return Err(FieldError::new(
                "INVALID_CHARACTERS",
                "must be printable ASCII without spaces",
            ));
        }
        Ok(Self(v.to_string()))
    }

    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub use crate::proto::{DocumentType, MessageVisibility as Visibility};

/// The upstream's spelling of a document type or visibility. The proto's enums
/// are the one list of values; the upstream spells each as its name without the
/// enum's prefix, in PascalCase (`DOCUMENT_TYPE_INVOICE_PRINTOUT` is
/// `InvoicePrintout`, `MESSAGE_VISIBILITY_CRU_ONLY` is `CruOnly`).
pub trait UpstreamName: Sized + Copy + PartialEq + 'static {
    /// The spelling the upstream expects and returns; empty for UNSPECIFIED,
    /// which is never sent (the field is left out).
    fn upstream_name(self) -> &'static str;
    /// Reads the upstream's spelling, ignoring case.
    fn from_upstream(s: &str) -> Option<Self>;
}

fn pascal(screaming: &str) -> String {
    screaming
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + &c.as_str().to_ascii_lowercase(),
                None => String::new(),
            }
        })
        .collect()
}

/// Every specified value of an enum with its upstream spelling.
fn upstream_names<T: Copy>(
    prefix: &str,
    value: impl Fn(i32) -> Option<T>,
    name: impl Fn(T) -> &'static str,
) -> Vec<(T, String)> {
    (1..64)
        .filter_map(value)
        .map(|v| (v, pascal(name(v).trim_start_matches(prefix))))
        .collect()
}

macro_rules! upstream_name {
    ($ty:ty, $prefix:literal) => {
        impl UpstreamName for $ty {
            fn upstream_name(self) -> &'static str {
                Self::table()
                    .iter()
                    .find(|(v, _)| *v == self)
                    .map_or("", |(_, n)| n.as_str())
            }

            fn from_upstream(s: &str) -> Option<Self> {
                Self::table()
                    .iter()
                    .find(|(_, n)| n.eq_ignore_ascii_case(s.trim()))
                    .map(|(v, _)| *v)
            }
        }

        impl $ty {
            fn table() -> &'static [($ty, String)] {
                static TABLE: std::sync::LazyLock<Vec<($ty, String)>> =
                    std::sync::LazyLock::new(|| {
                        upstream_names($prefix, |i| <$ty>::try_from(i).ok(), |v| v.as_str_name())
                    });
                &TABLE
            }
        }
    };
}

upstream_name!(DocumentType, "DOCUMENT_TYPE_");
upstream_name!(Visibility, "MESSAGE_VISIBILITY_");

/// How much of each attachment a list returns: the typed fields alone, or with
/// the upstream's whole object (`Attachment.upstream`) too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListView {
    Basic,
    Full,
}

/// Checks a declared upload size against the limit.
pub fn declared_size(v: u64, limit: u64) -> Result<Option<u64>, FieldError> {
    match v {
        0 => Ok(None),
        n if n > limit => Err(FieldError::new(
            "FILE_TOO_LARGE",
            format!("declares {n} bytes; the limit is {limit} bytes"),
        )),
        n => Ok(Some(n)),
    }
}

/// A validated upload, ready for the upstream.
#[derive(Debug, Clone)]
pub struct NewAttachment {
    pub work_order_id: WorkOrderId,
    pub name: AttachmentName,
    pub mime_type: MimeType,
    pub document_type: Option<DocumentType>,
    pub visibility: Option<Visibility>,
    pub performed_by: PerformedBy,
    pub message_id: MessageId,
    pub declared_size: Option<u64>,
    /// The SHA-256 the caller says the file has (lowercase hex).
    pub expected_sha256: Option<Sha256Hex>,
}

/// A SHA-256 as lowercase hex: 64 characters of `0-9a-f`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    /// Empty: none given.
    pub fn new_optional(v: &str) -> Result<Option<Self>, FieldError> {
        if v.is_empty() {
            return Ok(None);
        }
        if v.len() == 64
            && v.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Some(Self(v.to_string())))
        } else {
            Err(FieldError::new(
                "INVALID_SHA256",
                "must be a SHA-256 in lowercase hex: 64 characters of 0-9 and a-f",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One attachment of one work order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentRef {
    pub work_order_id: WorkOrderId,
    pub attachment_id: AttachmentId,
}

/// A validated metadata change.
#[derive(Debug, Clone)]
pub struct AttachmentUpdate {
    pub target: AttachmentRef,
    pub name: AttachmentName,
    pub document_type: Option<DocumentType>,
    pub visibility: Option<Visibility>,
    pub message_id: MessageId,
}

/// A validated removal.
#[derive(Debug, Clone)]
pub struct AttachmentRemoval {
    pub target: AttachmentRef,
    pub message_id: MessageId,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_need_an_extension_and_no_paths() {
        assert!(AttachmentName::new("photo.jpg").is_ok());
        assert!(AttachmentName::new("report.final.pdf").is_ok());
        for bad in [
            "", "   ", "photo", "photo.", ".jpg", "a/b.jpg", "a\\b.jpg", "a\nb.jpg", " a.jpg",
            "a.j pg",
        ] {
            assert!(AttachmentName::new(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}.jpg", "a".repeat(251));
        assert!(AttachmentName::new(&long).is_ok());
        let too_long = format!("{}.jpg", "a".repeat(252));
        assert_eq!(
            AttachmentName::new(&too_long).unwrap_err().reason,
            "TOO_LONG"
        );
    }

    #[test]
    fn mime_types_are_type_slash_subtype() {
        assert!(MimeType::new("image/jpeg").is_ok());
        assert!(MimeType::new("text/plain; charset=utf-8").is_ok());
        assert!(MimeType::new("application/vnd.ms-excel").is_ok());
        for bad in ["", "jpeg", "image/", "/jpeg", "ima ge/jpeg", "image/jp\teg"] {
            assert!(MimeType::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn person_and_message_id_limits() {
        assert!(PerformedBy::name(&"x".repeat(100)).is_ok());
        assert_eq!(
            PerformedBy::name(&"x".repeat(101)).unwrap_err().reason,
            "TOO_LONG"
        );
        assert_eq!(PerformedBy::name("").unwrap_err().reason, "REQUIRED");
        assert!(MessageId::new_or_generate(&"m".repeat(36)).is_ok());
        assert!(MessageId::new_or_generate(&"m".repeat(37)).is_err());
        assert_eq!(MessageId::new_or_generate("").unwrap().as_str().len(), 36);
    }

    #[test]
    fn work_order_and_sizes() {
        assert!(WorkOrderId::new(0).is_err());
        assert!(WorkOrderId::new(-5).is_err());
        assert_eq!(WorkOrderId::new(7).unwrap().get(), 7);
        assert_eq!(declared_size(0, 10), Ok(None));
        assert_eq!(declared_size(10, 10), Ok(Some(10)));
        assert!(declared_size(11, 10).is_err());
    }

    #[test]
    fn enums_spell_the_upstreams_values() {
        // The upstream's lists, as its guide gives them.
        let docs = [
            "Document",
            "Picture",
            "Signature",
            "InvoicePrintout",
            "ServiceContract",
            "Misc",
        ];
        let names: Vec<&str> = DocumentType::table()
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(names, docs);
        let vis = ["None", "CruOnly", "CruSubs", "CruLeads", "CruLead", "All"];
        let names: Vec<&str> = Visibility::table()
            .iter()
            .map(|(_, n)| n.as_str())
            .collect();
        assert_eq!(names, vis);
        assert_eq!(
            DocumentType::from_upstream("invoiceprintout"),
            Some(DocumentType::InvoicePrintout)
        );
        assert_eq!(DocumentType::Unspecified.upstream_name(), "");
        assert_eq!(DocumentType::from_upstream("Blueprint"), None);
        assert_eq!(
            Visibility::from_upstream("cruonly"),
            Some(Visibility::CruOnly)
        );
    }
}
