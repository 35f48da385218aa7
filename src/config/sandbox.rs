//! The `sandbox` section: the embedded CorrigoPro emulator.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, invalid};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxSettings {
    /// Start the embedded CorrigoPro emulator and use it as the upstream.
    pub enabled: bool,
    /// Where the emulator listens (loopback; port 0 picks a free port).
    pub listen: SocketAddr,
    /// How long the emulator's download links work.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// How long the emulator's access tokens live.
    #[serde(with = "humantime_serde")]
    pub token_ttl: Duration,
    /// How long a "minute" of the emulator's notification retry schedule (5, 10,
    /// 20, 40, 60 minutes, then hourly) lasts.
    #[serde(with = "humantime_serde")]
    pub notification_retry_minute: Duration,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            link_ttl: crate::domain::DOWNLOAD_LINK_TTL,
            token_ttl: Duration::from_secs(1199),
            notification_retry_minute: Duration::from_secs(1),
        }
    }
}

impl SandboxSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.enabled && !self.listen.ip().is_loopback() {
            return Err(invalid(
                "sandbox.listen",
                "the sandbox listens on loopback only",
            ));
        }
        Ok(())
    }
}
