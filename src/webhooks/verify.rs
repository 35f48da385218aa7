//! Is a webhook request CorrigoPro's? One of three answers, by `webhooks.verify`:
//!
//! - **signed-token**: CorrigoPro's bearer token is `<data><---->` `<signature>`.
//!   `<data>` is base64url of JSON claims, or of their gzip (`H4sI…`); the claims
//!   name the audience (`Aud`) and the validity (`.issued`, `.expires`, RFC 1123).
//!   `<signature>` is base64url. What exactly is signed, and how, is not public:
//!   by default an RSA PKCS#1 v1.5 SHA-256 signature over the `<data>` text as sent
//!   (`webhooks.signed_part`, `webhooks.signature_algorithm` choose the others).
//!   Checked against the certificate(s) in `webhooks.certificate_file`; a file with
//!   several certificates accepts a signature by any (for rotation).
//! - **shared-secret**: the bearer value equals the secret file's content,
//!   compared in constant time.
//! - **none**: every request passes (warned at start).
//!
//! A refusal names its reason from a fixed set (a metric label); the token itself
//! is never logged or echoed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::config::{SignatureAlgorithm, SignedPart, WebhookSettings, WebhookVerify};
use crate::upstream::json::{get_ci, value_str};

/// The separator of a signed token's two parts.
pub const SEPARATOR: &str = "<---->";

/// Claims larger than this (decompressed) are refused: a gzip bomb stops here.
const MAX_CLAIMS_BYTES: u64 = 64 * 1024;

/// A token longer than this is refused before any decoding.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a request was refused (a metric label, and the 401's body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no bearer credential")]
    Missing,
    #[error("the credential is not a token of the expected shape")]
    Malformed,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is for another audience")]
    WrongAudience,
    #[error("the shared secret does not match")]
    BadSecret,
}

impl Refused {
    /// The metric label of the refusal.
    pub fn label(self) -> &'static str {
        match self {
            Self::Missing => "refused_missing",
            Self::Malformed => "refused_malformed",
            Self::BadSignature => "refused_bad_signature",
            Self::Expired => "refused_expired",
            Self::NotYetValid => "refused_not_yet_valid",
            Self::WrongAudience => "refused_wrong_audience",
            Self::BadSecret => "refused_bad_secret",
        }
    }
}

/// The keys a signed token may be signed with.
struct Keys {
    /// Each certificate's public key (the DER of its subjectPublicKey).
    public_keys: Vec<Vec<u8>>,
}

/// Where the trusted material comes from, and how to check.
enum Mode {
    SignedToken {
        keys: RwLock<Arc<Keys>>,
        source: Option<PathBuf>,
        audience: String,
        part: SignedPart,
        algorithm: &'static dyn VerificationAlgorithm,
        skew: Duration,
    },
    SharedSecret {
        secret: RwLock<Arc<Vec<u8>>>,
        source: PathBuf,
    },
    None,
}

/// Checks webhook requests' credentials.
pub struct Verifier {
    mode: Mode,
}

fn algorithm(a: SignatureAlgorithm) -> &'static dyn VerificationAlgorithm {
    match a {
        SignatureAlgorithm::RsaSha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
        SignatureAlgorithm::RsaSha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
        SignatureAlgorithm::RsaSha1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
    }
}

/// The public keys of every certificate in a PEM text.
fn keys_from_pem(pem: &[u8], what: &str) -> Result<Keys, String> {
    let mut public_keys = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("{what}: not PEM: {e}"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block
            .parse_x509()
            .map_err(|e| format!("{what}: not an X.509 certificate: {e}"))?;
        public_keys.push(cert.public_key().subject_public_key.data.to_vec());
    }
    if public_keys.is_empty() {
        return Err(format!(
            "{what}: no certificate (PEM `CERTIFICATE` block) in it"
        ));
    }
    Ok(Keys { public_keys })
}

fn read_file(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))
}

fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let text = read_file(path, "webhooks.shared_secret_file")?;
    let secret = text
        .strip_suffix(b"\n")
        .map(|t| t.strip_suffix(b"\r").unwrap_or(t))
        .unwrap_or(&text)
        .to_vec();
    if secret.len() < 16 {
        return Err(format!(
            "webhooks.shared_secret_file: {} holds fewer than 16 bytes: too easy to guess",
            path.display()
        ));
    }
    Ok(secret)
}

impl Verifier {
    /// From the settings; `trusted_pem` is a certificate to trust when no file is
    /// set (the sandbox's own).
    pub fn new(w: &WebhookSettings, trusted_pem: Option<&str>) -> Result<Self, String> {
        let mode = match w.verify {
            WebhookVerify::SignedToken => {
                let (keys, source) = match (&w.certificate_file, trusted_pem) {
                    (Some(path), _) => (
                        keys_from_pem(
                            &read_file(path, "webhooks.certificate_file")?,
                            "webhooks.certificate_file",
                        )?,
                        Some(path.clone()),
                    ),
                    (None, Some(pem)) => (keys_from_pem(pem.as_bytes(), "the sandbox")?, None),
                    (None, None) => {
                        return Err(
                            "webhooks.verify = \"signed-token\" needs webhooks.certificate_file"
                                .into(),
                        );
                    }
                };
                Mode::SignedToken {
                    keys: RwLock::new(Arc::new(keys)),
                    source,
                    audience: w.audience.clone(),
                    part: w.signed_part,
                    algorithm: algorithm(w.signature_algorithm),
                    skew: w.clock_skew,
                }
            }
            WebhookVerify::SharedSecret => {
                let Some(path) = &w.shared_secret_file else {
                    return Err(
                        "webhooks.verify = \"shared-secret\" needs webhooks.shared_secret_file"
                            .into(),
                    );
                };
                Mode::SharedSecret {
                    secret: RwLock::new(Arc::new(read_secret(path)?)),
                    source: path.clone(),
                }
            }
            WebhookVerify::None => {
                tracing::warn!(
                    "webhooks.verify = \"none\": webhook requests are not authenticated; anyone who reaches the webhook port can record events"
                );
                Mode::None
            }
        };
        Ok(Self { mode })
    }

    /// Reads the certificate or secret file again (rotation): a file that cannot
    /// be read or parsed keeps the material in use, and says so.
    pub fn reload(&self) {
        match &self.mode {
            Mode::SignedToken {
                keys,
                source: Some(path),
                ..
            } => match read_file(path, "webhooks.certificate_file")
                .and_then(|pem| keys_from_pem(&pem, "webhooks.certificate_file"))
            {
                Ok(k) => {
                    if let Ok(mut g) = keys.write() {
                        *g = Arc::new(k);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook certificate not reloaded: keeping the one in use")
                }
            },
            Mode::SharedSecret { secret, source } => match read_secret(source) {
                Ok(s) => {
                    if let Ok(mut g) = secret.write() {
                        *g = Arc::new(s);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "webhook secret not reloaded: keeping the one in use")
                }
            },
            _ => {}
        }
    }

    /// Checks the `Authorization` header's value (if any) at `now`.
    pub fn check(&self, authorization: Option<&[u8]>, now: SystemTime) -> Result<(), Refused> {
        if matches!(self.mode, Mode::None) {
            return Ok(());
        }
        let value = authorization.ok_or(Refused::Missing)?;
        let token = strip_bearer(value).ok_or(Refused::Missing)?;
        match &self.mode {
            Mode::None => Ok(()),
            Mode::SharedSecret { secret, .. } => {
                let expected = secret
                    .read()
                    .map(|g| Arc::clone(&g))
                    .map_err(|_| Refused::BadSecret)?;
                if bool::from(token.ct_eq(expected.as_slice())) {
                    Ok(())
                } else {
                    Err(Refused::BadSecret)
                }
            }
            Mode::SignedToken {
                keys,
                audience,
                part,
                algorithm,
                skew,
                ..
            } => {
                let keys = keys
                    .read()
                    .map(|g| Arc::clone(&g))
                    .map_err(|_| Refused::BadSignature)?;
                check_signed(token, &keys, audience, *part, *algorithm, *skew, now)
            }
        }
    }
}

/// The credential after `Bearer ` (the scheme's case ignored).
fn strip_bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let rest = rest.trim_ascii();
    (!rest.is_empty()).then_some(rest)
}

fn b64url(text: &[u8]) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD
        .decode(text)
        .or_else(|_| URL_SAFE.decode(text))
        .ok()
}

/// The claims `<data>` decodes to: JSON, or gzip-compressed JSON.
fn claims(decoded: &[u8]) -> Option<serde_json::Map<String, Value>> {
    let json = if decoded.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(decoded)
            .take(MAX_CLAIMS_BYTES + 1)
            .read_to_end(&mut out)
            .ok()?;
        if out.len() as u64 > MAX_CLAIMS_BYTES {
            return None;
        }
        out
    } else {
        decoded.to_vec()
    };
    match serde_json::from_slice::<Value>(&json).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// A claim's date: RFC 1123 (as CorrigoPro sends them), or RFC 3339.
fn date(v: &Value) -> Option<SystemTime> {
    let s = value_str(v)?;
    let s = s.trim();
    httpdate::parse_http_date(s)
        .ok()
        .or_else(|| humantime::parse_rfc3339_weak(s).ok())
}

#[allow(clippy::too_many_arguments)]
fn check_signed(
    token: &[u8],
    keys: &Keys,
    audience: &str,
    part: SignedPart,
    algorithm: &'static dyn VerificationAlgorithm,
    skew: Duration,
    now: SystemTime,
) -> Result<(), Refused> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Refused::Malformed);
    }
    let sep = SEPARATOR.as_bytes();
    let at = token
        .windows(sep.len())
        .position(|w| w == sep)
        .ok_or(Refused::Malformed)?;
    let (data, signature) = (&token[..at], &token[at + sep.len()..]);
    let decoded = b64url(data).ok_or(Refused::Malformed)?;
    let signature = b64url(signature).ok_or(Refused::Malformed)?;
    let signed: &[u8] = match part {
        SignedPart::DataText => data,
        SignedPart::DataBytes => &decoded,
    };
    // The signature first: nothing of an unsigned token is believed.
    let verified = keys.public_keys.iter().any(|k| {
        UnparsedPublicKey::new(algorithm, k)
            .verify(signed, &signature)
            .is_ok()
    });
    if !verified {
        return Err(Refused::BadSignature);
    }
    let claims = claims(&decoded).ok_or(Refused::Malformed)?;
    let aud = get_ci(&claims, &["Aud", "aud", "audience"]).and_then(value_str);
    if aud.as_deref() != Some(audience) {
        return Err(Refused::WrongAudience);
    }
    let expires = get_ci(&claims, &[".expires", "expires", "exp"])
        .and_then(date)
        .ok_or(Refused::Malformed)?;
    if expires.checked_add(skew).is_none_or(|e| now > e) {
        return Err(Refused::Expired);
    }
    if let Some(issued) = get_ci(&claims, &[".issued", "issued", "iat"]).and_then(date)
        && now.checked_add(skew).is_none_or(|n| issued > n)
    {
        return Err(Refused::NotYetValid);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::notifier::Signer;
    use crate::sandbox::{NOTIFIER_CERT_PEM, NOTIFIER_KEY_PEM};

    fn verifier(f: impl FnOnce(&mut WebhookSettings)) -> Verifier {
        let mut w = WebhookSettings::default();
        f(&mut w);
        Verifier::new(&w, Some(NOTIFIER_CERT_PEM)).unwrap()
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    #[test]
    fn a_token_of_the_sandbox_verifies_compressed_or_not() {
        let v = verifier(|_| {});
        let s = Signer::from_pem(NOTIFIER_KEY_PEM).unwrap();
        let now = SystemTime::now();
        for gzip in [false, true] {
            let t = s
                .token("CorrigoProDirect", now, Duration::from_secs(1200), gzip)
                .unwrap();
            assert_eq!(gzip, t.starts_with("H4sI"));
            assert_eq!(v.check(Some(&bearer(&t)), now), Ok(()));
        }
    }

    #[test]
    fn each_fault_is_refused_with_its_reason() {
        let v = verifier(|_| {});
        let s = Signer::from_pem(NOTIFIER_KEY_PEM).unwrap();
        let now = SystemTime::now();
        let ttl = Duration::from_secs(1200);
        let good = s.token("CorrigoProDirect", now, ttl, false).unwrap();
        assert_eq!(v.check(None, now), Err(Refused::Missing));
        assert_eq!(v.check(Some(b"Basic abc"), now), Err(Refused::Missing));
        assert_eq!(
            v.check(Some(&bearer("nonsense")), now),
            Err(Refused::Malformed)
        );
        let (data, sig) = good.split_once(SEPARATOR).unwrap();
        let mut bad = sig.to_string();
        bad.replace_range(0..1, if bad.starts_with('A') { "B" } else { "A" });
        assert_eq!(
            v.check(Some(&bearer(&format!("{data}{SEPARATOR}{bad}"))), now),
            Err(Refused::BadSignature)
        );
        let later = now + ttl + Duration::from_secs(301);
        assert_eq!(v.check(Some(&bearer(&good)), later), Err(Refused::Expired));
        let early = now - Duration::from_secs(600);
        assert_eq!(
            v.check(Some(&bearer(&good)), early),
            Err(Refused::NotYetValid)
        );
        let other = s.token("Someone", now, ttl, true).unwrap();
        assert_eq!(
            v.check(Some(&bearer(&other)), now),
            Err(Refused::WrongAudience)
        );
        // Signed over the decoded bytes: refused unless told so.
        let data_bytes = b64url(data.as_bytes()).unwrap();
        let alt = format!("{data}{SEPARATOR}{}", s.sign(&data_bytes).unwrap());
        assert_eq!(
            v.check(Some(&bearer(&alt)), now),
            Err(Refused::BadSignature)
        );
        let v2 = verifier(|w| w.signed_part = SignedPart::DataBytes);
        assert_eq!(v2.check(Some(&bearer(&alt)), now), Ok(()));
    }

    #[test]
    fn a_gzip_bomb_is_malformed_not_memory() {
        use std::io::Write;
        let s = Signer::from_pem(NOTIFIER_KEY_PEM).unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b' '; 50 * 1024 * 1024]).unwrap();
        let data = URL_SAFE_NO_PAD.encode(enc.finish().unwrap());
        let t = format!("{data}{SEPARATOR}{}", s.sign(data.as_bytes()).unwrap());
        let v = verifier(|_| {});
        assert_eq!(
            v.check(Some(&bearer(&t)), SystemTime::now()),
            Err(Refused::Malformed)
        );
    }

    #[test]
    fn a_shared_secret_matches_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef-secret\n").unwrap();
        let v = verifier(|w| {
            w.verify = WebhookVerify::SharedSecret;
            w.shared_secret_file = Some(path.clone());
        });
        let now = SystemTime::now();
        assert_eq!(
            v.check(Some(b"Bearer 0123456789abcdef-secret"), now),
            Ok(())
        );
        assert_eq!(
            v.check(Some(b"Bearer 0123456789abcdef-secreT"), now),
            Err(Refused::BadSecret)
        );
        assert_eq!(
            v.check(Some(b"Bearer 0123456789abcdef"), now),
            Err(Refused::BadSecret)
        );
        std::fs::write(&path, "short").unwrap();
        v.reload();
        assert_eq!(
            v.check(Some(b"Bearer 0123456789abcdef-secret"), now),
            Ok(())
        );
    }
}
