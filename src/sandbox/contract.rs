//! The upstream's contract as the emulator reads it from the vendor's guide
//! ("Working with attachments"), kept apart from the gateway's own reading (its
//! `domain` types): the emulator stands in for someone else's server, so a
//! misreading the two shared would go unnoticed.

use std::time::Duration;

/// `DocumentType` values.
pub const DOCUMENT_TYPES: [&str; 6] = [
    "Document",
    "Picture",
    "Signature",
    "InvoicePrintout",
    "ServiceContract",
    "Misc",
];

/// `MessageVisibility` values; `All` by default.
pub const VISIBILITIES: [&str; 6] = ["None", "CruOnly", "CruSubs", "CruLeads", "CruLead", "All"];

/// "The size of a file cannot exceed 20 MB."
pub const MAX_FILE_BYTES: u64 = 20 * 1024 * 1024;
/// "You can download the attached file from the obtained URL within 15 minutes."
pub const LINK_TTL: Duration = Duration::from_secs(15 * 60);
/// Access tokens live 20 minutes (`expires_in: 1199`).
pub const TOKEN_TTL: Duration = Duration::from_secs(1199);
/// `PerformedBy.Name`: "Maximum length 100".
pub const MAX_PERSON_NAME_CHARS: usize = 100;
/// `MessageId`: "Maximum length 36".
pub const MAX_MESSAGE_ID_CHARS: usize = 36;
/// Work order statuses in which uploads are refused.
pub const NO_UPLOADS_IN: [&str; 2] = ["Rejected", "Recalled"];

/// The canonical spelling of `value` among `values`, ignoring case (the API
/// ignores the case of values as of names).
pub fn canonical(values: &[&'static str], value: &str) -> Option<&'static str> {
    values
        .iter()
        .copied()
        .find(|v| v.eq_ignore_ascii_case(value.trim()))
}
