//! The emulator's notifications: signed as CorrigoPro signs them (as far as is
//! known: a claims identity, plain base64url JSON, RSA SHA-256 over the `<data>`
//! text; see [`TokenShape`] for the other readings tests sign with), delivered to the gateway's webhook listener, and delivered again on
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
/// A token with less than this left is not sent: a fresh one is made.
const TOKEN_RENEW_BEFORE: Duration = Duration::from_secs(120);
/// The audience of the tokens.
pub const AUDIENCE: &str = "CorrigoProDirect";

/// The wait before try `n` (2 ≤ n), in "minutes".
pub fn wait_minutes(n: u32) -> u32 {
    SCHEDULE_MINUTES
        .get(n.saturating_sub(2) as usize)
        .copied()
        .unwrap_or(60)
}

/// The name claim of the sandbox's tokens: CorrigoPro's identifier of the
/// integration a token was issued for (redacted in the public example).
pub const INTEGRATION_NAME: &str = "sandbox-integration-0001";

/// The name claim's type, as CorrigoPro's identities name it.
const NAME_CLAIM: &str = "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name";

/// What a signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignedOver {
    /// The `<data>` text (base64url), as the sandbox signs by default.
    DataText,
    /// The bytes `<data>` decodes to.
    DataBytes,
}

/// The hash of the RSA PKCS#1 v1.5 signature (SHA-1 signing is not offered by
/// the crypto library, on purpose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignHash {
    Sha256,
    Sha512,
}

/// How a token is made: what the sandbox emits by default is plain JSON (the
/// public webhook example's `eyJ…`), signed over the `<data>` text with SHA-256,
/// for [`INTEGRATION_NAME`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenShape {
    /// Gzip the JSON before base64url (the OAuth example's `H4sI…`).
    pub gzip: bool,
    pub signed_over: SignedOver,
    pub hash: SignHash,
    /// The name claim (`None`: no name claim at all).
    pub name: Option<String>,
}

impl Default for TokenShape {
    fn default() -> Self {
        Self {
            gzip: false,
            signed_over: SignedOver::DataText,
            hash: SignHash::Sha256,
            name: Some(INTEGRATION_NAME.into()),
        }
    }
}

/// The claims identity CorrigoPro serializes into a token (the shape of the
/// public example, field for field).
pub fn identity(audience: &str, name: Option<&str>, issued: SystemTime, ttl: Duration) -> Value {
    let claim = |t: &str, v: &str| {
        serde_json::json!({
            "Type": t, "Value": v,
            "ValueType": "http://www.w3.org/2001/XMLSchema#string",
            "Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY"
        })
    };
    let mut claims = Vec::new();
    if let Some(n) = name {
        claims.push(claim(NAME_CLAIM, n));
    }
    claims.push(claim("urn:oauth:scope", ""));
    claims.push(claim("Aud", audience));
    serde_json::json!({
        "AuthenticationType": "Bearer",
        "NameClaimType": NAME_CLAIM,
        "RoleClaimType": NAME_CLAIM,
        "Claims": claims,
        "Properties": {"Dictionary": {
            ".issued": httpdate::fmt_http_date(issued),
            ".expires": httpdate::fmt_http_date(issued + ttl),
        }}
    })
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

    /// A token for `audience`, issued at `issued` and valid for `ttl`, in
    /// CorrigoPro's shape (a claims identity), gzip-compressed or not.
    pub fn token(
        &self,
        audience: &str,
        issued: SystemTime,
        ttl: Duration,
        gzip: bool,
    ) -> Result<String, String> {
        let shape = TokenShape {
            gzip,
            ..TokenShape::default()
        };
        self.token_shaped(audience, issued, ttl, &shape)
    }

    /// A token made as `shape` says.
    pub fn token_shaped(
        &self,
        audience: &str,
        issued: SystemTime,
        ttl: Duration,
        shape: &TokenShape,
    ) -> Result<String, String> {
        let json = serde_json::to_vec(&identity(audience, shape.name.as_deref(), issued, ttl))
            .map_err(|e| e.to_string())?;
        let raw = if shape.gzip {
            use std::io::Write;
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(&json).map_err(|e| e.to_string())?;
            enc.finish().map_err(|e| e.to_string())?
        } else {
            json
        };
        self.seal(&raw, shape.signed_over, shape.hash)
    }

    /// A token whose `<data>` is exactly `raw` (any claims, any shape: for
    /// tests of what the gateway refuses), signed over its text with SHA-256.
    pub fn sign_claims(&self, raw: &[u8]) -> Result<String, String> {
        self.seal(raw, SignedOver::DataText, SignHash::Sha256)
    }

    fn seal(&self, raw: &[u8], over: SignedOver, hash: SignHash) -> Result<String, String> {
        let data = URL_SAFE_NO_PAD.encode(raw);
        let message = match over {
            SignedOver::DataText => data.as_bytes(),
            SignedOver::DataBytes => raw,
        };
        Ok(format!("{data}<---->{}", self.sign_with(message, hash)?))
    }

    /// The base64url (unpadded) RSA PKCS#1 SHA-256 signature of `message`.
    pub fn sign(&self, message: &[u8]) -> Result<String, String> {
        self.sign_with(message, SignHash::Sha256)
    }

    fn sign_with(&self, message: &[u8], hash: SignHash) -> Result<String, String> {
        let alg: &'static dyn signature::RsaEncoding = match hash {
            SignHash::Sha256 => &signature::RSA_PKCS1_SHA256,
            SignHash::Sha512 => &signature::RSA_PKCS1_SHA512,
        };
        let mut sig = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(alg, &self.rng, message, &mut sig)
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
    /// The token in use, and when it expires.
    token: Mutex<Option<(String, SystemTime)>>,
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
            token: Mutex::new(None),
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
                let outcome = this.attempt(&action, &bytes).await;
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

    /// The token deliveries carry: a bearer token is used until shortly before
    /// it expires, as an access token is (CorrigoPro's tokens live 20 minutes;
    /// whether it sends one per delivery or reuses it is not public, and the
    /// gateway accepts either).
    /// An access token for the API, in the shape CorrigoPro's OAuth tokens
    /// have (`H4sI…<---->…`: a gzip-compressed claims identity, signed), so
    /// every call through the sandbox carries one like it.
    pub fn access_token(&self, ttl: Duration) -> Result<String, String> {
        self.signer.token(AUDIENCE, SystemTime::now(), ttl, true)
    }

    fn current_token(&self) -> Result<String, String> {
        let now = SystemTime::now();
        let mut current = self
            .token
            .lock()
            .map_err(|_| "token lock poisoned".to_string())?;
        if let Some((t, until)) = current.as_ref()
            && now + TOKEN_RENEW_BEFORE < *until
        {
            return Ok(t.clone());
        }
        let t = self.signer.token(AUDIENCE, now, TOKEN_TTL, false)?;
        *current = Some((t.clone(), now + TOKEN_TTL));
        Ok(t)
    }

    /// One try: `Ok` when acknowledged.
    async fn attempt(&self, action: &str, body: &str) -> Result<String, String> {
        let target = self.target.read().ok().and_then(|t| t.clone());
        let Some(url) = target else {
            return Err("no webhook receiver set".into());
        };
        let token = self.current_token()?;
        let sent = self
            .client
            .post(url)
            // The headers CorrigoPro's deliveries are seen with, these two
            // included: the receiver must answer 100-continue (or the whole
            // request) and keep the connection.
            .header("Content-Type", "application/json; charset=utf-8")
            .header("Authorization", format!("Bearer {token}"))
            .header("Event-Type", action)
            .header("Expect", "100-continue")
            .header("Connection", "Keep-Alive")
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
