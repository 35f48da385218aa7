//! The `server` section: HTTP/2, connections, drain and the runtime.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, invalid, nonzero};

/// Upper bound for `server.worker_threads` (a typo guard, not a tuning hint).
pub const MAX_WORKER_THREADS: usize = 512;

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct ServerSettings {
    /// After SIGTERM, health says NOT_SERVING for this long before the listener closes
    /// (so load balancers stop sending new calls).
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// After the listener closes, in-flight calls get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Connections are closed (gracefully) after this age, so clients reconnect and
    /// spread over replicas. Unset: never.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub http2_keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub http2_keepalive_timeout: Duration,
    /// Concurrent streams (calls) per client connection.
    #[garde(range(min = 1))]
    pub max_concurrent_streams: u32,
    /// Client connections open at once; more are closed as soon as accepted.
    /// With `http2_connection_window`, it bounds the memory callers can fill
    /// before the gateway has read a message: their product.
    #[garde(range(min = 1))]
    pub max_connections: u32,
    /// Bytes a caller may send on one call before the gateway reads them (HTTP/2
    /// stream window).
    #[garde(range(min = 65_535, max = 16 * 1024 * 1024))]
    pub http2_stream_window: u32,
    /// Bytes a caller may send on all calls of one connection before the gateway
    /// reads them (HTTP/2 connection window).
    #[garde(range(min = self.http2_stream_window, max = 64 * 1024 * 1024))]
    pub http2_connection_window: u32,
    /// A new connection must finish its TLS handshake and send its first bytes
    /// within this (the admin port's request headers too).
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub handshake_timeout: Duration,
    /// A connection that reads and writes nothing for this long is closed
    /// (HTTP/2 keepalive pings count: keep it above `http2_keepalive_interval`).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Serve gRPC server reflection (v1 and v1alpha).
    pub reflection: bool,
    /// Runtime worker threads. 0: one per CPU the process may use (the cgroup's CPU
    /// quota counts). Set it to the container's CPU limit when the pod has none, so
    /// a small pod on a large node does not run a thread per node core.
    #[garde(range(max = MAX_WORKER_THREADS))]
    pub worker_threads: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            drain_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(30),
            max_connection_age: None,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            max_connections: 256,
            http2_stream_window: 1024 * 1024,
            http2_connection_window: 2 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            reflection: true,
            worker_threads: 0,
        }
    }
}

impl ServerSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.idle_timeout <= self.http2_keepalive_interval {
            return Err(invalid(
                "server.idle_timeout",
                "must be longer than server.http2_keepalive_interval (keepalive pings keep live connections from idling)",
            ));
        }
        Ok(())
    }
}
