//! Notifications as CorrigoPro sends them: signed by the sandbox's notifier
//! key, posted to a webhook listener.

use std::time::{Duration, SystemTime};

use attachment_gateway::sandbox::NOTIFIER_KEY_PEM;
use attachment_gateway::sandbox::notifier::{AUDIENCE, Signer};
use serde_json::{Value, json};

use super::Hooked;

pub fn signer() -> Signer {
    Signer::from_pem(NOTIFIER_KEY_PEM).expect("key")
}

pub fn token(audience: &str, issued: SystemTime) -> String {
    signer()
        .token(audience, issued, Duration::from_secs(1200), true)
        .expect("token")
}

pub fn added(work_order_id: i64, attachment_id: &str, message_id: &str) -> Value {
    json!({
        "AttachmentId": attachment_id, "Name": "test.doc", "MimeType": "application/msword",
        "Size": 234256, "Subtype": "x",
        "Header": {"WorkOrderId": work_order_id, "BranchId": 492042,
            "Sender": {"Name": "Jon Snow", "Phone": "+12025550141", "Type": "CorrigoPro"},
            "Action": "AttachmentAdded", "ActionDate": "2017-10-04T08:28:36.9484279Z",
            "ApiVersion": "1.0", "MessageId": message_id}
    })
}

pub fn http() -> reqwest::Client {
    attachment_gateway::upstream::install_crypto_provider();
    reqwest::Client::new()
}

/// Posts a notification with `authorization` (none when `None`).
pub async fn post(url: &str, authorization: Option<String>, body: &Value) -> reqwest::Response {
    let mut r = http()
        .post(url)
        .header("content-type", "application/json; charset=utf-8")
        .header(
            "event-type",
            body["Header"]["Action"].as_str().unwrap_or_default(),
        )
        .body(body.to_string());
    if let Some(a) = authorization {
        r = r.header("authorization", a);
    }
    r.send().await.expect("post")
}

pub fn bearer(t: &str) -> Option<String> {
    Some(format!("Bearer {t}"))
}

/// A key that is not the sandbox's (`tests/fixtures/webhooks/`).
pub const OTHER_KEY_PEM: &str = include_str!("../fixtures/webhooks/other-key.pem");

/// A token of the right shape and claims whose signature does not verify: signed
/// by another key. Each call makes another (a flood of distinct credentials).
pub fn forged_token() -> String {
    static FORGER: std::sync::OnceLock<Signer> = std::sync::OnceLock::new();
    // Each one unique (issued a second earlier than the one before): a forged
    // token sent again is refused from memory, without a check.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 600;
    FORGER
        .get_or_init(|| Signer::from_pem(OTHER_KEY_PEM).expect("other key"))
        .token(
            AUDIENCE,
            SystemTime::now() - Duration::from_secs(n),
            Duration::from_secs(1200),
            false,
        )
        .expect("token")
}

/// A metric's value, by the start of its line without the common prefix.
pub fn metric(h: &Hooked, line_start: &str) -> u64 {
    let line_start = format!("attachment_gateway_{line_start}");
    h.metrics
        .render()
        .lines()
        .find(|l| l.starts_with(&line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}
