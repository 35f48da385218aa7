//! The `limits` section: sizes and timeouts of the calls themselves.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::nonzero;
use crate::domain::DEFAULT_MAX_UPLOAD_BYTES;

/// The largest upload limit the gateway accepts as a setting (the upstream's is 20 MB).
pub const MAX_UPLOAD_LIMIT: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct LimitSettings {
    /// The largest file accepted, in bytes (the upstream's own limit: 20 MiB).
    #[garde(range(min = 1, max = MAX_UPLOAD_LIMIT))]
    pub max_upload_bytes: u64,
    /// The largest `chunk` in one upload message, in bytes.
    #[garde(range(min = 1024 * 1024, max = 64 * 1024 * 1024))]
    pub max_chunk_bytes: u64,
    /// The size of the `chunk` messages of a download, in bytes.
    #[garde(range(min = 1024, max = 4 * 1024 * 1024))]
    pub download_chunk_bytes: u64,
    /// The largest request message of every method, but upload chunks (unary
    /// requests, health, an upload's metadata), in bytes.
    #[garde(range(min = 1024, max = 1024 * 1024))]
    pub max_request_message_bytes: u64,
    /// How long an upload stream may take to send its metadata message; no slot
    /// is held meanwhile.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub upload_first_message_timeout: Duration,
    /// How long an upload stream may go without a message once it has started.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub upload_idle_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            max_chunk_bytes: 4 * 1024 * 1024,
            download_chunk_bytes: 256 * 1024,
            max_request_message_bytes: 16 * 1024,
            upload_first_message_timeout: Duration::from_secs(10),
            upload_idle_timeout: Duration::from_secs(60),
        }
    }
}
