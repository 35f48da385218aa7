//! Prometheus metrics, served on the admin HTTP port at `/metrics` (see [`crate::admin`]).

use prometheus_client::encoding::EncodeLabelSet;
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

pub struct Metrics {
    registry: Registry,
    pub rpc_requests: Family<RpcLabels, Counter>,
    pub rpc_duration: HistogramFamily<MethodLabel>,
    pub upload_bytes: Counter,
    pub uploads_in_flight: Gauge,
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
    pub webhook_certificate_not_after: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("attachment_gateway");
        let m = Self {
            rpc_requests: Family::default(),
            rpc_duration: Family::new_with_constructor(latency_histogram),
            upload_bytes: Counter::default(),
            uploads_in_flight: Gauge::default(),
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
            webhook_certificate_not_after: Gauge::default(),
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
            "webhook_certificate_not_after_seconds",
            "The earliest end of validity (Unix seconds) of the certificates webhook tokens are checked against",
            m.webhook_certificate_not_after.clone(),
        );
        Self { registry, ..m }
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

    /// The earliest `not_after` of the webhook certificates (Unix seconds).
    pub fn webhook_certificate_not_after(&self, unix_secs: i64) {
        self.webhook_certificate_not_after.set(unix_secs);
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
}
