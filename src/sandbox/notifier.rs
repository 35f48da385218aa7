//! The emulator's notifications: signed as CorrigoPro signs them (as far as is
//! known), delivered to the gateway's webhook listener, and delivered again on
//! CorrigoPro's schedule when that fails: after 5, 10, 20, 40 and 60 "minutes",
//! then every "hour", up to 200 tries. How long a "minute" lasts is the setting
//! `sandbox.notification_retry_minute` (1s by default: a person trying the
//! sandbox sees retries in seconds, not hours).
//!
//! The signing here is the emulator's own, apart from the gateway's verification
//! (`webhooks::verify`), so a misreading the two shared would not go unnoticed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature;
use serde::Serialize;
use serde_json::Value;

/// Tries at most, as CorrigoPro.
pub const MAX_TRIES: u32 = 200;
/// Waits before the 2nd to 6th tries, in "minutes"; then every 60.
const SCHEDULE_MINUTES: [u32; 5] = [5, 10, 20, 40, 60];
/// Deliveries listed by `GET /sandbox/notifications` (the newest).
const KEPT: usize = 200;
/// A delivery attempt's timeout.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a token is valid (CorrigoPro's are 20 minutes).
const TOKEN_TTL: Duration = Duration::from_secs(20 * 60);
/// The audience of the tokens.
pub const AUDIENCE: &str = "CorrigoProDirect";

/// The wait before try `n` (2 ≤ n), in "minutes".
pub fn wait_minutes(n: u32) -> u32 {
    SCHEDULE_MINUTES
        .get(n.saturating_sub(2) as usize)
        .copied()
        .unwrap_or(60)
}

/// Signs tokens of the shape `<data><---->` `<signature>`.
pub struct Signer {
    key: ring::rsa::KeyPair,
    rng: ring::rand::SystemRandom,
}

impl Signer {
    /// From a PKCS#8 RSA private key in PEM.
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        use rustls::pki_types::PrivatePkcs8KeyDer;
        use rustls::pki_types::pem::PemObject;
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| format!("not a PKCS#8 PEM key: {e}"))?;
        let key = ring::rsa::KeyPair::from_pkcs8(der.secret_pkcs8_der())
            .map_err(|e| format!("not an RSA key: {e}"))?;
        Ok(Self {
            key,
            rng: ring::rand::SystemRandom::new(),
        })
    }

    /// A token for `audience`, issued at `issued` and valid for `ttl`: claims as
    /// JSON, gzip-compressed or not, base64url; signed (RSA PKCS#1 SHA-256) over
    /// that text.
    pub fn token(
        &self,
        audience: &str,
        issued: SystemTime,
        ttl: Duration,
        gzip: bool,
    ) -> Result<String, String> {
        let claims = serde_json::json!({
            "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name": "sandbox",
            "Scope": "Notifications",
            "Aud": audience,
            ".issued": httpdate::fmt_http_date(issued),
            ".expires": httpdate::fmt_http_date(issued + ttl),
        });
        let json = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
        let raw = if gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&json).map_err(|e| e.to_string())?;
            enc.finish().map_err(|e| e.to_string())?
        } else {
            json
        };
        let data = URL_SAFE_NO_PAD.encode(raw);
        Ok(format!("{data}<---->{}", self.sign(data.as_bytes())?))
    }

    /// The base64url (unpadded) RSA PKCS#1 SHA-256 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, String> {
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut sig)
            .map_err(|_| "signing failed".to_string())?;
        Ok(URL_SAFE_NO_PAD.encode(sig))
    }
}

/// One notification's delivery, as `GET /sandbox/notifications` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Delivery {
    pub id: u64,
    pub action: String,
    pub work_order_id: i64,
    pub message_id: String,
    pub tries: u32,
    pub delivered: bool,
    /// The last try's outcome: the HTTP status, or why it failed.
    pub last_outcome: String,
}

/// Delivers notifications to the gateway.
pub struct Notifier {
    signer: Signer,
    target: RwLock<Option<String>>,
    client: reqwest::Client,
    minute: Duration,
    next_id: AtomicU64,
    deliveries: Mutex<VecDeque<Delivery>>,
}

impl Notifier {
    pub fn new(key_pem: &str, minute: Duration) -> Result<Self, String> {
        crate::upstream::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(ATTEMPT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            signer: Signer::from_pem(key_pem)?,
            target: RwLock::new(None),
            client,
            minute,
            next_id: AtomicU64::new(1),
            deliveries: Mutex::new(VecDeque::new()),
        })
    }

    /// Where notifications go from now on (the gateway's webhook URL).
    pub fn deliver_to(&self, url: String) {
        if let Ok(mut t) = self.target.write() {
            *t = Some(url);
        }
    }

    /// The deliveries so far, newest last.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut Delivery)) {
        if let Ok(mut d) = self.deliveries.lock()
            && let Some(x) = d.iter_mut().find(|x| x.id == id)
        {
            f(x);
        }
    }

    /// Sends `body` (a notification with its `Header`), trying again on the
    /// schedule until it is acknowledged (any 2xx) or the tries run out.
    pub fn notify(self: &Arc<Self>, body: Value) {
        let header = body.get("Header");
        let action = header
            .and_then(|h| h.get("Action"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let delivery = Delivery {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            action: action.clone(),
            work_order_id: header
                .and_then(|h| h.get("WorkOrderId"))
                .and_then(Value::as_i64)
                .unwrap_or_default(),
            message_id: header
                .and_then(|h| h.get("MessageId"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            tries: 0,
            delivered: false,
            last_outcome: "pending".into(),
        };
        let id = delivery.id;
        if let Ok(mut d) = self.deliveries.lock() {
            d.push_back(delivery);
            while d.len() > KEPT {
                d.pop_front();
            }
        }
        let this = Arc::clone(self);
        let bytes = body.to_string();
        tokio::spawn(async move {
            for n in 1..=MAX_TRIES {
                if n > 1 {
                    tokio::time::sleep(this.minute * wait_minutes(n)).await;
                }
                let outcome = this.attempt(&action, &bytes, n).await;
                let delivered = outcome.as_ref().is_ok();
                let text = match &outcome {
                    Ok(s) | Err(s) => s.clone(),
                };
                this.update(id, |d| {
                    d.tries = n;
                    d.delivered = delivered;
                    d.last_outcome = text;
                });
                if delivered {
                    return;
                }
            }
        });
    }

    /// One try: `Ok` when acknowledged.
    async fn attempt(&self, action: &str, body: &str, n: u32) -> Result<String, String> {
        let target = self.target.read().ok().and_then(|t| t.clone());
        let Some(url) = target else {
            return Err("no webhook receiver set".into());
        };
        // Both token shapes CorrigoPro's examples show: plain and gzip claims.
        let token = self
            .signer
            .token(AUDIENCE, SystemTime::now(), TOKEN_TTL, n % 2 == 1)?;
        let sent = self
            .client
            .post(url)
            .header("content-type", "application/json; charset=utf-8")
            .header("authorization", format!("Bearer {token}"))
            .header("event-type", action)
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Ok(r.status().as_u16().to_string()),
            Ok(r) => Err(r.status().as_u16().to_string()),
            Err(e) => Err(format!("cannot deliver: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_corrigopros() {
        let waits: Vec<u32> = (2..=8).map(wait_minutes).collect();
        assert_eq!(waits, [5, 10, 20, 40, 60, 60, 60]);
    }
}
