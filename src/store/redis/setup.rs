//! Connecting to the Redis that `shared_state` names: its password and CA
//! files, the connection itself, and a warning when it may evict keys.

use std::path::PathBuf;

use super::conn::{FailureHook, Redis};
use crate::config::{SharedStateSettings, redact_url};
use crate::secret::{Secret, SecretFileError};
use crate::store::error::StoreError;

/// Why the shared state cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("shared_state.password_file: {0}")]
    Password(#[source] SecretFileError),
    #[error("shared_state.ca_file: cannot read {}: {source}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An empty trust store would refuse every certificate with a message that
    /// never names the file.
    #[error("shared_state.ca_file: {} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// Redis cannot be reached, refused the connection, or answered nonsense.
    #[error("{}", .0.0)]
    Store(#[from] StoreError),
}

/// Connects to `shared_state.redis_url`; `None` when it is unset (each process
/// keeps its own state). Each command that fails is told to `on_failure`.
pub async fn connect(
    s: &SharedStateSettings,
    on_failure: FailureHook,
) -> Result<Option<Redis>, SetupError> {
    let Some(url) = &s.redis_url else {
        tracing::info!(
            "no shared_state.redis_url: write records, quotas and the event log are per process (one replica only)"
        );
        return Ok(None);
    };
    let password = match &s.password_file {
        Some(p) => Some(
            Secret::from_file(p)
                .map_err(SetupError::Password)?
                .expose()
                .to_string(),
        ),
        None => None,
    };
    let ca = match &s.ca_file {
        Some(p) => Some(read_ca(p)?),
        None => None,
    };
    let redis = Redis::connect_with_ca(url, password, ca, &s.key_prefix, s.command_timeout)
        .await?
        .with_failure_hook(on_failure);
    redis.warn_unless_noeviction().await;
    tracing::info!(redis = %redact_url(url), "write records, quotas and the event log are shared through Redis");
    Ok(Some(redis))
}

fn read_ca(path: &PathBuf) -> Result<Vec<u8>, SetupError> {
    let pem = std::fs::read(path).map_err(|source| SetupError::ReadCa {
        path: path.clone(),
        source,
    })?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(SetupError::NoCertificate { path: path.clone() });
    }
    Ok(pem)
}
