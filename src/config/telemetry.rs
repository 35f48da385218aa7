//! The `telemetry` section: the admin port.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The admin HTTP listener: Prometheus `/metrics`. Unset: no admin port.
    pub admin_listen: Option<SocketAddr>,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        Self {
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        }
    }
}
