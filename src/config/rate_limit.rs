//! The `rate_limit` section: callers' rates, the upstream budget, concurrency.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, invalid};

/// A request rate: `rps` per second, bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, garde::Validate)]
#[serde(deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct Rate {
    #[garde(range(min = 1))]
    pub rps: u32,
    #[garde(range(min = 1))]
    pub burst: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct RateLimitSettings {
    /// Each caller's request rate (all connections together).
    #[garde(dive)]
    pub per_caller: Rate,
    /// Rates for named callers, replacing `per_caller`, keyed by the caller's kind
    /// and name: `api_key:billing`, `jwt:system:serviceaccount:ns:sa`,
    /// `mtls:spiffe://…`.
    #[garde(dive)]
    pub overrides: BTreeMap<String, Rate>,
    /// All requests toward the upstream, from every caller, on this replica.
    #[garde(dive)]
    pub upstream: Rate,
    /// How long a call may wait for the upstream budget before it is refused.
    #[serde(with = "humantime_serde")]
    pub upstream_max_wait: Duration,
    /// Uploads in progress at once; more are refused at once.
    #[garde(range(min = 1))]
    pub max_concurrent_uploads: u32,
    /// Uploads in progress at once for one caller.
    #[garde(range(min = 1))]
    pub max_concurrent_uploads_per_caller: u32,
    /// Downloads in progress at once; more are refused at once.
    #[garde(range(min = 1))]
    pub max_concurrent_downloads: u32,
    /// Downloads in progress at once for one caller.
    #[garde(range(min = 1))]
    pub max_concurrent_downloads_per_caller: u32,
    /// Upload bytes held in memory at once, over all uploads; a caller past it
    /// waits (HTTP/2 flow control holds it back).
    #[garde(range(max = u64::from(u32::MAX)))]
    pub max_inflight_upload_bytes: u64,
    /// Consecutive upstream 503s that start a cool-down (a 429 starts one at once).
    pub cool_down_after_503s: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_caller: Rate {
                rps: 100,
                burst: 200,
            },
            overrides: BTreeMap::new(),
            upstream: Rate { rps: 50, burst: 50 },
            upstream_max_wait: Duration::from_millis(500),
            max_concurrent_uploads: 64,
            max_concurrent_uploads_per_caller: 8,
            max_concurrent_downloads: 256,
            max_concurrent_downloads_per_caller: 16,
            max_inflight_upload_bytes: 256 * 1024 * 1024,
            cool_down_after_503s: 3,
        }
    }
}

impl RateLimitSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for key in self.overrides.keys() {
            let kind_ok = key.split_once(':').is_some_and(|(kind, name)| {
                matches!(kind, "api_key" | "jwt" | "mtls") && !name.is_empty()
            });
            if !kind_ok {
                return Err(invalid(
                    "rate_limit.overrides",
                    format!(
                        "`{key}` must name the caller with its kind: `api_key:NAME`, `jwt:SUBJECT` or `mtls:IDENTITY` (callers of different kinds may share a name)"
                    ),
                ));
            }
        }
        Ok(())
    }
}
