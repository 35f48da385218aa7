//! The names the gateway's statuses carry in their `google.rpc.ErrorInfo`, on
//! the wire: written by the server, read by the client (both builds have them).

/// `ErrorInfo.domain` of every status the gateway makes.
pub const ERROR_DOMAIN: &str = "attachment-gateway.corrigopro.com";

/// `ErrorInfo.metadata` key on every status: whether repeating the call cannot
/// do harm, as a [`RetrySafe`] value.
pub const RETRY_SAFE: &str = "retry_safe";

/// `ErrorInfo.metadata` key of a watch that ended: the event id to resume after.
pub const RESUME_AFTER_EVENT_ID: &str = "resume_after_event_id";

/// Whether repeating a failed call cannot do harm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetrySafe {
    /// The call only reads, or nothing of it was applied: a retry does no harm.
    Yes,
    /// A write was interrupted after it was sent: it may or may not have been
    /// applied upstream.
    Unknown,
    /// Repeating the call as it is would do the wrong thing (an upload whose
    /// earlier attempt may have created one of the attachments named): look
    /// first.
    No,
}

impl RetrySafe {
    /// The value under [`RETRY_SAFE`].
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Yes => "true",
            Self::Unknown => "unknown",
            Self::No => "false",
        }
    }

    /// Reads the value under [`RETRY_SAFE`].
    pub fn parse(value: &str) -> Option<Self> {
        [Self::Yes, Self::Unknown, Self::No]
            .into_iter()
            .find(|v| v.as_str() == value)
    }
}
