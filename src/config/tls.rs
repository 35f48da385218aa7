//! The `tls` section: TLS on the gRPC listener (and mTLS).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

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
