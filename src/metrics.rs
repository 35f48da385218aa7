//! Prometheus metrics, served on the admin HTTP port at `/metrics` (see [`crate::admin`]).
//!
//! The gateway's own metrics are named `attachment_gateway_*`; the process's CPU
//! time, memory and file descriptors are the conventional `process_*` (see
//! [`process`]). The alerts in `deploy/prometheus/alerts.yaml` and the dashboard
//! in `deploy/grafana/` use only what is registered here.

mod process;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub method: String,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub call: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabel {
    pub call: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UseLabel {
    /// One of a fixed set of names.
    pub r#use: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

/// How a webhook token's signature verified (fixed names).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadingLabels {
    pub part: &'static str,
    pub algorithm: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// No labels: a [`Family`] of one series that exists only once it is set (a
/// plain gauge would say 0, which reads as a date in 1970).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Unlabelled;

impl EncodeLabelSet for Unlabelled {
    fn encode(&self, _: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        Ok(())
    }
}

/// Why a watch ended before its caller ended it: `stalled` (the caller stopped
/// reading), `cursor_expired` (its cursor is older than the events kept, at open
/// or under way), `interrupted` (the event log could not be read).
pub const WATCH_END_REASONS: [&str; 3] = ["stalled", "cursor_expired", "interrupted"];

/// The outcomes of a write with a message id, as its record ends.
pub const WRITE_OUTCOMES: [&str; 4] = ["ok", "failed", "outcome_unknown", "reconciled"];

/// The uses of the shared Redis (see `shared_state_failures`).
const SHARED_STATE_USES: [&str; 4] = [
    "write_records",
    "upstream_budget",
    "caller_rate",
    "event_log",
];

/// Webhook outcomes the alerts count, present from the start (at 0) when the
/// listener is on, so the first one after a start is counted too: a
/// notification recorded, and every way the credential check refuses one.
const WEBHOOK_OUTCOMES_AT_START: [&str; 9] = [
    "recorded",
    "refused_missing",
    "refused_malformed",
    "refused_bad_signature",
    "refused_expired",
    "refused_not_yet_valid",
    "refused_wrong_audience",
    "refused_bad_secret",
    "throttled",
];

/// A bearer token or API key, checked (`checked`) or answered from the cache of
/// recent outcomes (`cached`), with the outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CheckLabel {
    pub how: String,
    pub result: String,
}

impl CheckLabel {
    pub fn checked(result: &str) -> Self {
        Self {
            how: "checked".into(),
            result: result.into(),
        }
    }

    pub fn cached(result: &str) -> Self {
        Self {
            how: "cached".into(),
            result: result.into(),
        }
    }
}

/// An HTTP status as a label value, from a bounded set: the statuses the gateway
/// tells apart, else the class (`4xx`). The upstream's answers are outside data.
pub fn http_status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        409 => "409",
        410 => "410",
        413 => "413",
        429 => "429",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        100..=199 => "1xx",
        201..=299 => "2xx",
        300..=399 => "3xx",
        402..=499 => "4xx",
        505..=599 => "5xx",
        _ => "other",
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Counts one in a gauge while alive (an upload in progress, a write settling).
pub struct Counted<'a>(&'a Gauge);

impl<'a> Counted<'a> {
    pub fn new(gauge: &'a Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub struct Metrics {
    registry: Registry,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_duration: HistogramFamily<MethodLabel>,
    pub upload_bytes: Counter,
    pub uploads_in_flight: Gauge,
    pub writes_settling: Gauge,
    pub download_bytes: Counter,
    pub upstream_requests: Family<UpstreamLabels, Counter>,
    pub upstream_duration: HistogramFamily<CallLabel>,
    pub token_refreshes: Counter,
    pub refusals: Family<LimitLabel, Counter>,
    pub auth_failures: Family<ReasonLabel, Counter>,
    pub credential_checks: Family<CheckLabel, Counter>,
    pub connections_refused: Family<ListenerLabel, Counter>,
    pub events_recorded: Family<SourceLabel, Counter>,
    pub event_record_failures: Family<SourceLabel, Counter>,
    pub shared_state_failures: Family<UseLabel, Counter>,
    pub event_subscribers: Gauge,
    pub event_subscriber_lag: Histogram,
    pub webhook_requests: Family<OutcomeLabel, Counter>,
    pub connections_timed_out: Family<ListenerLabel, Counter>,
    pub api_key_reload_failures: Counter,
    pub api_key_file_stale_seconds: Gauge,
    pub connections_shed: Family<ListenerLabel, Counter>,
    pub webhook_token_readings: Family<ReadingLabels, Counter>,
    pub token_fetch_failures: Counter,
    pub events_delivered: Counter,
    pub watches_ended: Family<ReasonLabel, Counter>,
    pub write_outcomes: Family<OutcomeLabel, Counter>,
    pub tls_certificate_not_after: Family<Unlabelled, Gauge>,
    pub webhook_certificate_not_after: Family<Unlabelled, Gauge>,
    pub shared_state_configured: Gauge,
    pub webhook_listener_enabled: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector::new()));
        let registry = root.sub_registry_with_prefix("attachment_gateway");
        let m = Self {
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(latency_histogram),
            upload_bytes: Counter::default(),
            uploads_in_flight: Gauge::default(),
            writes_settling: Gauge::default(),
            download_bytes: Counter::default(),
            upstream_requests: Family::default(),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            token_refreshes: Counter::default(),
            refusals: Family::default(),
            auth_failures: Family::default(),
            credential_checks: Family::default(),
            connections_refused: Family::default(),
            events_recorded: Family::default(),
            event_record_failures: Family::default(),
            shared_state_failures: Family::default(),
            event_subscribers: Gauge::default(),
            event_subscriber_lag: Histogram::new(exponential_buckets(1.0, 4.0, 10)),
            webhook_requests: Family::default(),
            connections_timed_out: Family::default(),
            api_key_reload_failures: Counter::default(),
            api_key_file_stale_seconds: Gauge::default(),
            connections_shed: Family::default(),
            webhook_token_readings: Family::default(),
            token_fetch_failures: Counter::default(),
            events_delivered: Counter::default(),
            watches_ended: Family::default(),
            write_outcomes: Family::default(),
            tls_certificate_not_after: Family::default(),
            webhook_certificate_not_after: Family::default(),
            shared_state_configured: Gauge::default(),
            webhook_listener_enabled: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "grpc_requests",
            "gRPC calls by method and status code",
            m.rpc_requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "gRPC call latency, to the last byte of the answer",
            m.rpc_duration.clone(),
        );
        registry.register(
            "upload_bytes",
            "File bytes received from callers and sent upstream",
            m.upload_bytes.clone(),
        );
        registry.register(
            "uploads_in_flight",
            "Uploads in progress",
            m.uploads_in_flight.clone(),
        );
        registry.register(
            "writes_settling",
            "Writes whose answer was lost, waiting to ask the upstream what became of them",
            m.writes_settling.clone(),
        );
        registry.register(
            "download_bytes",
            "File bytes streamed to callers",
            m.download_bytes.clone(),
        );
        registry.register(
            "upstream_requests",
            "Upstream HTTP requests by call and HTTP status (or error class)",
            m.upstream_requests.clone(),
        );
        registry.register(
            "upstream_request_duration_seconds",
            "Upstream HTTP latency, to the answer's headers",
            m.upstream_duration.clone(),
        );
        registry.register(
            "upstream_token_refreshes",
            "Access tokens fetched from the token endpoint",
            m.token_refreshes.clone(),
        );
        registry.register(
            "rate_limit_refusals",
            "Calls refused by a limit, by limit",
            m.refusals.clone(),
        );
        registry.register(
            "auth_failures",
            "Calls refused by authentication or authorization, by reason",
            m.auth_failures.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at once because the listener's cap was reached",
            m.connections_refused.clone(),
        );
        registry.register(
            "events_recorded",
            "Attachment events recorded in the event log, by source (gateway, corrigopro)",
            m.events_recorded.clone(),
        );
        registry.register(
            "event_record_failures",
            "Attachment events the event log could not take, by source",
            m.event_record_failures.clone(),
        );
        registry.register(
            "shared_state_failures",
            "Commands to the shared Redis that failed or timed out, by use (write_records: writes with a message id refused retry-safe; upstream_budget and caller_rate: each replica's own limits apply meanwhile; event_log: webhooks answered 503, watches interrupted)",
            m.shared_state_failures.clone(),
        );
        registry.register(
            "event_subscribers",
            "WatchAttachments streams open",
            m.event_subscribers.clone(),
        );
        registry.register(
            "event_subscriber_lag_events",
            "How many events a watch was behind the log's head when it read",
            m.event_subscriber_lag.clone(),
        );
        registry.register(
            "webhook_requests",
            "Requests to the webhook listener, by outcome",
            m.webhook_requests.clone(),
        );
        registry.register(
            "connections_timed_out",
            "Connections closed for saying nothing: no TLS handshake, no first bytes, or idle",
            m.connections_timed_out.clone(),
        );
        registry.register(
            "auth_credential_checks",
            "Bearer tokens and API keys: checked, or answered from the cache of recent outcomes, by result",
            m.credential_checks.clone(),
        );
        registry.register(
            "api_key_file_reload_failures",
            "Failed reloads of the API key file (unreadable or invalid)",
            m.api_key_reload_failures.clone(),
        );
        registry.register(
            "api_key_file_stale_seconds",
            "Seconds since the API key file was last loaded, while it fails to load (0 when it loads)",
            m.api_key_file_stale_seconds.clone(),
        );
        registry.register(
            "connections_shed",
            "Connections closed at an HTTP/1 listener's cap to admit a new one (the idlest, with no request in progress)",
            m.connections_shed.clone(),
        );
        registry.register(
            "webhook_token_readings",
            "Webhook tokens whose signature verified, by what it covers (part) and its algorithm",
            m.webhook_token_readings.clone(),
        );
        registry.register(
            "upstream_token_fetch_failures",
            "Access token requests that failed: refused credentials, an error answer, no answer in time, or an unreadable one",
            m.token_fetch_failures.clone(),
        );
        registry.register(
            "events_delivered",
            "Events sent to WatchAttachments subscribers (one per event and subscriber)",
            m.events_delivered.clone(),
        );
        registry.register(
            "watches_ended",
            "WatchAttachments streams the gateway ended, by reason (stalled: the caller stopped reading; cursor_expired: its cursor is older than the events kept, at open or under way; interrupted: the event log could not be read)",
            m.watches_ended.clone(),
        );
        registry.register(
            "write_outcomes",
            "Writes with a message id, by how their record ended (ok, failed, outcome_unknown, reconciled)",
            m.write_outcomes.clone(),
        );
        registry.register(
            "tls_certificate_not_after_seconds",
            "When the gRPC port's TLS certificate (the first of tls.cert_file) expires, in Unix seconds; absent without TLS",
            m.tls_certificate_not_after.clone(),
        );
        registry.register(
            "webhook_certificate_not_after_seconds",
            "When the earliest certificate of webhooks.certificate_file expires, in Unix seconds; absent without one",
            m.webhook_certificate_not_after.clone(),
        );
        registry.register(
            "shared_state_configured",
            "1 when this replica shares its state through Redis (shared_state.redis_url), 0 when its state is its own",
            m.shared_state_configured.clone(),
        );
        registry.register(
            "webhook_listener_enabled",
            "1 when this replica listens for CorrigoPro's notifications, else 0",
            m.webhook_listener_enabled.clone(),
        );
        // Series the alerts need from the start, at 0: a counter's first
        // increment is only seen by rate() and increase() against a sample
        // before it.
        for reason in WATCH_END_REASONS {
            drop(m.watches_ended.get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            }));
        }
        for outcome in WRITE_OUTCOMES {
            drop(m.write_outcomes.get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            }));
        }
        for source in ["gateway", "corrigopro"] {
            drop(m.event_record_failures.get_or_create(&SourceLabel {
                source: source.to_string(),
            }));
        }
        drop(m.refusals.get_or_create(&LimitLabel {
            limit: "upstream_circuit_open".to_string(),
        }));
        Self {
            registry: root,
            ..m
        }
    }

    pub fn connection_shed(&self, listener: &str) {
        self.connections_shed
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .inc();
    }

    /// A webhook token verified with this reading.
    pub fn webhook_token_reading(&self, part: &'static str, algorithm: &'static str) {
        self.webhook_token_readings
            .get_or_create(&ReadingLabels { part, algorithm })
            .inc();
    }

    /// The registry in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    pub fn events_recorded(&self, source: &str, n: u64) {
        self.events_recorded
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .inc_by(n);
    }

    /// A command to the shared Redis failed, for `purpose` (a fixed name).
    pub fn shared_state_failed(&self, purpose: &'static str) {
        self.shared_state_failures
            .get_or_create(&UseLabel { r#use: purpose })
            .inc();
    }

    pub fn event_record_failed(&self, source: &str) {
        self.event_record_failures
            .get_or_create(&SourceLabel {
                source: source.to_string(),
            })
            .inc();
    }

    /// A webhook request's outcome (one of a fixed set of names).
    pub fn webhook(&self, outcome: &'static str) {
        self.webhook_requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn connection_refused(&self, listener: &str) {
        self.connections_refused
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .inc();
    }

    pub fn connection_timed_out(&self, listener: &str) {
        self.connections_timed_out
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .inc();
    }

    /// Whether this replica's state is shared through Redis (set once, at start).
    pub fn shared_state_configured(&self, configured: bool) {
        self.shared_state_configured.set(i64::from(configured));
        if configured {
            for purpose in SHARED_STATE_USES {
                drop(
                    self.shared_state_failures
                        .get_or_create(&UseLabel { r#use: purpose }),
                );
            }
        }
    }

    /// Whether the webhook listener is on (set once, at start).
    pub fn webhook_listener_enabled(&self, enabled: bool) {
        self.webhook_listener_enabled.set(i64::from(enabled));
        if enabled {
            for outcome in WEBHOOK_OUTCOMES_AT_START {
                drop(self.webhook_requests.get_or_create(&OutcomeLabel {
                    outcome: outcome.to_string(),
                }));
            }
        }
    }

    /// The gRPC port's TLS certificate expires at `unix_secs`.
    pub fn tls_certificate_not_after(&self, unix_secs: i64) {
        self.tls_certificate_not_after
            .get_or_create(&Unlabelled)
            .set(unix_secs);
    }

    /// The earliest certificate of `webhooks.certificate_file` expires at
    /// `unix_secs` (set at each read of the file).
    pub fn webhook_certificate_not_after(&self, unix_secs: i64) {
        self.webhook_certificate_not_after
            .get_or_create(&Unlabelled)
            .set(unix_secs);
    }

    /// A write's record ended with `outcome` (one of [`WRITE_OUTCOMES`]).
    pub fn write_outcome(&self, outcome: &'static str) {
        self.write_outcomes
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The gateway ended a watch, for `reason` (one of [`WATCH_END_REASONS`]).
    pub fn watch_ended(&self, reason: &'static str) {
        self.watches_ended
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    pub fn refused(&self, limit: &str) {
        self.refusals
            .get_or_create(&LimitLabel {
                limit: limit.to_string(),
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_state_failures_are_labelled_by_use() {
        let m = super::Metrics::new();
        m.shared_state_failed("upstream_budget");
        m.shared_state_failed("upstream_budget");
        let text = m.render();
        assert!(
            text.contains(
                "attachment_gateway_shared_state_failures_total{use=\"upstream_budget\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn certificate_expiries_exist_only_once_known() {
        let m = super::Metrics::new();
        let text = m.render();
        assert!(!text.contains("certificate_not_after_seconds "), "{text}");
        m.tls_certificate_not_after(1_900_000_000);
        m.webhook_certificate_not_after(1_800_000_000);
        let text = m.render();
        assert!(
            text.contains("\nattachment_gateway_tls_certificate_not_after_seconds 1900000000\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "\nattachment_gateway_webhook_certificate_not_after_seconds 1800000000\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn series_the_alerts_count_exist_from_the_start() {
        let m = super::Metrics::new();
        let text = m.render();
        for line in [
            "attachment_gateway_watches_ended_total{reason=\"stalled\"} 0",
            "attachment_gateway_watches_ended_total{reason=\"cursor_expired\"} 0",
            "attachment_gateway_write_outcomes_total{outcome=\"outcome_unknown\"} 0",
            "attachment_gateway_rate_limit_refusals_total{limit=\"upstream_circuit_open\"} 0",
            "attachment_gateway_upstream_token_fetch_failures_total 0",
            "attachment_gateway_shared_state_configured 0",
            "attachment_gateway_webhook_listener_enabled 0",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
        // Only the uses and outcomes that can happen.
        assert!(!text.contains("shared_state_failures_total{"), "{text}");
        assert!(!text.contains("webhook_requests_total{"), "{text}");
        m.shared_state_configured(true);
        m.webhook_listener_enabled(true);
        m.write_outcome("outcome_unknown");
        m.watch_ended("stalled");
        let text = m.render();
        for line in [
            "attachment_gateway_shared_state_configured 1",
            "attachment_gateway_shared_state_failures_total{use=\"event_log\"} 0",
            "attachment_gateway_webhook_listener_enabled 1",
            "attachment_gateway_webhook_requests_total{outcome=\"refused_bad_signature\"} 0",
            "attachment_gateway_webhook_requests_total{outcome=\"recorded\"} 0",
            "attachment_gateway_write_outcomes_total{outcome=\"outcome_unknown\"} 1",
            "attachment_gateway_watches_ended_total{reason=\"stalled\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
    }
}
