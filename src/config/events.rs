//! The `events` section: the event log's retention and the watches.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, at_least_a_second, invalid, nonzero};

/// The event log and `WatchAttachments` subscribers.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct EventSettings {
    /// Events the in-process log keeps at most (the oldest go first).
    #[garde(range(min = 1, max = 10_000_000))]
    pub max_events: u32,
    /// Bytes of recorded events the in-process log keeps at most (the oldest go
    /// first): bounds the log whatever the notifications' size.
    #[garde(range(min = 1024 * 1024))]
    pub max_bytes: u64,
    /// Events older than this are dropped from the in-process log.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub max_age: Duration,
    /// A watch with no event for this long gets a heartbeat (keeps idle streams
    /// alive through proxies, and carries the cursor).
    #[serde(with = "humantime_serde")]
    #[garde(custom(at_least_a_second))]
    pub heartbeat_interval: Duration,
    /// Messages buffered toward one subscriber.
    #[garde(range(min = 1, max = 4096))]
    pub subscriber_buffer: u32,
    /// A subscriber whose buffer stays full this long is ended (ABORTED, with the
    /// event id to resume after).
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub subscriber_stall_timeout: Duration,
    /// Open watches at most, in all.
    #[garde(range(min = 1))]
    pub max_subscribers: u32,
    /// Open watches at most, per caller.
    #[garde(range(min = 1))]
    pub max_subscribers_per_caller: u32,
}

impl Default for EventSettings {
    fn default() -> Self {
        Self {
            max_events: 100_000,
            max_bytes: 128 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            heartbeat_interval: Duration::from_secs(15),
            subscriber_buffer: 64,
            subscriber_stall_timeout: Duration::from_secs(30),
            max_subscribers: 10_000,
            max_subscribers_per_caller: 1_000,
        }
    }
}

impl EventSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_subscribers_per_caller > self.max_subscribers {
            return Err(invalid(
                "events.max_subscribers_per_caller",
                "must be at most events.max_subscribers",
            ));
        }
        Ok(())
    }
}
