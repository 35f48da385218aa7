//! Notifications as CorrigoPro sends them: signed by the sandbox's notifier
//! key, posted to a webhook listener.

use std::time::{Duration, SystemTime};

use attachment_gateway::sandbox::NOTIFIER_KEY_PEM;
use attachment_gateway::sandbox::notifier::Signer;
use serde_json::{Value, json};

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
