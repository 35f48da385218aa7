//! Notifications that are not about attachments, sent on unchanged to
//! `webhooks.forward_url`: the same body bytes, `Content-Type` and `Event-Type`.
//! Never a credential: CorrigoPro's token does not cover the body and stays valid
//! for its 20 minutes, so whoever holds it could post notifications of their own;
//! the receiver trusts the gateway (its network path) instead. The forward's
//! outcome is CorrigoPro's answer: a receiver that is down gets the notification
//! again on CorrigoPro's retry schedule.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;

use super::answer;
use crate::metrics::Metrics;

pub struct Forwarder {
    client: reqwest::Client,
    url: reqwest::Url,
}

impl Forwarder {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, super::SetupError> {
        let url =
            reqwest::Url::parse(url).map_err(|e| super::SetupError::ForwardUrl(e.to_string()))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            // The target is the operator's; a redirect elsewhere is not followed.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(super::SetupError::ForwardClient)?;
        Ok(Self { client, url })
    }

    pub async fn forward(&self, m: &Metrics, headers: &HeaderMap, body: Bytes) -> Response {
        let mut req = self.client.post(self.url.clone()).body(body);
        if let Some(v) = headers.get(header::CONTENT_TYPE) {
            req = req.header(header::CONTENT_TYPE, v.clone());
        }
        if let Some(v) = headers.get("event-type") {
            req = req.header("event-type", v.clone());
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => answer(m, StatusCode::OK, "forwarded", "forwarded"),
            Ok(r) => {
                let status = r.status();
                tracing::warn!(%status, "the forward target refused a notification: CorrigoPro will deliver it again");
                let code = StatusCode::from_u16(status.as_u16())
                    .ok()
                    .filter(|s| s.is_client_error() || s.is_server_error())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                answer(
                    m,
                    code,
                    "forward_refused",
                    &format!("the forward target answered {}", status.as_u16()),
                )
            }
            Err(e) => {
                let timeout = e.is_timeout();
                // The URL may carry a credential in its query: never logged.
                let e = e.without_url();
                tracing::warn!(error = %e, "the forward target cannot be reached: CorrigoPro will deliver it again");
                if timeout {
                    answer(
                        m,
                        StatusCode::GATEWAY_TIMEOUT,
                        "forward_failed",
                        "the forward target did not answer in time",
                    )
                } else {
                    answer(
                        m,
                        StatusCode::BAD_GATEWAY,
                        "forward_failed",
                        "the forward target cannot be reached",
                    )
                }
            }
        }
    }
}
