//! The `tls` section: TLS on the gRPC listener (and mTLS).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, invalid};

/// TLS on the gRPC listener. With `client_ca_file`, clients must present a
/// certificate signed by that CA (mTLS), and its SAN becomes the caller's identity.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub client_ca_file: Option<PathBuf>,
}

impl TlsSettings {
    pub fn enabled(&self) -> bool {
        self.cert_file.is_some()
    }

    pub fn mtls(&self) -> bool {
        self.client_ca_file.is_some()
    }
}

impl TlsSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(invalid(
                "tls.cert_file",
                "tls.cert_file and tls.key_file go together",
            ));
        }
        if self.mtls() && !self.enabled() {
            return Err(invalid(
                "tls.client_ca_file",
                "mTLS needs tls.cert_file and tls.key_file",
            ));
        }
        Ok(())
    }
}
