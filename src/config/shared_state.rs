//! The `shared_state` section: Redis, when replicas share their state.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, invalid, nonzero};

/// State replicas share (write records by message id, quotas, the event log).
/// Unset: each process keeps its own, which is right for one replica only.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct SharedStateSettings {
    /// `redis://host:port/db` or `rediss://…` (TLS). A password in it is
    /// redacted wherever it is shown; prefer `password_file`.
    pub redis_url: Option<String>,
    /// A file holding the Redis password (a mounted Kubernetes Secret).
    pub password_file: Option<PathBuf>,
    /// With `rediss://`: the PEM CA certificate(s) the server's must chain to,
    /// instead of the system's roots (a private CA in the cluster).
    pub ca_file: Option<PathBuf>,
    /// Prefixed to every key, so several deployments can share one Redis.
    pub key_prefix: String,
    /// Each Redis command (and connecting) is bounded by this.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub command_timeout: Duration,
}

impl Default for SharedStateSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            password_file: None,
            ca_file: None,
            key_prefix: "attachment-gateway:".into(),
            command_timeout: Duration::from_millis(500),
        }
    }
}

impl SharedStateSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.redis_url {
            let scheme = url.split_once("://").map(|(s, _)| s);
            if !matches!(scheme, Some("redis" | "rediss")) {
                return Err(invalid(
                    "shared_state.redis_url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            if self.ca_file.is_some() && scheme != Some("rediss") {
                return Err(invalid(
                    "shared_state.ca_file",
                    "a CA is for TLS: use a rediss:// URL",
                ));
            }
        } else if self.ca_file.is_some() {
            return Err(invalid(
                "shared_state.ca_file",
                "needs shared_state.redis_url (rediss://)",
            ));
        }
        Ok(())
    }
}
