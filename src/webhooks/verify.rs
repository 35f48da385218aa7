//! Is a webhook request CorrigoPro's? One of three answers, by `webhooks.verify`:
//!
//! - **signed-token**: CorrigoPro's bearer token (see [`super::token`] for its
//!   shape), its RSA PKCS#1 v1.5 signature checked against the certificate(s) in
//!   `webhooks.certificate_file` (several certificates: any of them, for rotation).
//!   What exactly is signed, and with which hash, is not public: by default
//!   (`auto`) the gateway tries SHA-256 and SHA-512 over the `<data>` text and
//!   over the bytes it decodes to, the reading that verified last first; the
//!   readings that verify are counted and each is logged once, so an operator can
//!   pin one (`webhooks.signed_part`, `webhooks.signature_algorithm`). SHA-1 is
//!   tried only when named. Once the signature verifies, the claims must name
//!   `webhooks.audience`, be within their validity (± `webhooks.clock_skew`), and,
//!   when `webhooks.expected_name` is set, be issued for that integration.
//! - **shared-secret**: the bearer value equals the secret file's content,
//!   compared in constant time.
//! - **none**: every request passes (warned at start).
//!
//! A refusal names its reason from a fixed set (a metric label); the token itself
//! is never logged or echoed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use subtle::ConstantTimeEq;

pub use super::refusal::{Refusal, Refused};
use super::setup::SetupError;
use super::signature::{
    Certificate, Reading, TokenRules, certificates_from_file, certificates_from_pem,
    verifying_reading,
};
use super::token::{self, strip_bearer};
use crate::config::{WebhookSettings, WebhookVerify};

/// The shared secret's bytes (trailing line ends dropped), at least 16 of them.
fn read_secret(path: &Path) -> Result<Vec<u8>, SetupError> {
    let secret = crate::secret::Secret::from_file(path).map_err(SetupError::ReadSecret)?;
    let secret = secret.expose().as_bytes().to_vec();
    if secret.len() < 16 {
        return Err(SetupError::WeakSecret {
            path: path.to_path_buf(),
        });
    }
    Ok(secret)
}

/// Where the trusted material comes from, and how to check.
enum Mode {
    SignedToken {
        certs: RwLock<Arc<Vec<Certificate>>>,
        source: Option<PathBuf>,
        rules: TokenRules,
        /// The index (in `rules.readings`) of the reading that verified last.
        learned: AtomicUsize,
        /// Which readings were logged already (each once).
        logged: Vec<AtomicBool>,
        /// Whether the first verified name was logged (when none is expected).
        name_logged: AtomicBool,
    },
    SharedSecret {
        secret: RwLock<Arc<Vec<u8>>>,
        source: PathBuf,
    },
    None,
}

/// A request that passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// The reading its signature verified with (signed tokens).
    pub reading: Option<Reading>,
    /// Until when the credential is valid, when it says (its `.expires` plus the
    /// clock skew).
    pub valid_until: Option<SystemTime>,
    /// Who the token was issued for (its name claim), when it says.
    pub name: Option<String>,
}

/// Checks webhook requests' credentials.
pub struct Verifier {
    mode: Mode,
}

impl Verifier {
    /// From the settings; `trusted_pem` is a certificate to trust when no file is
    /// set (the sandbox's own).
    pub fn new(w: &WebhookSettings, trusted_pem: Option<&str>) -> Result<Self, SetupError> {
        let mode = match w.verify {
            WebhookVerify::SignedToken => {
                let (certs, source) = match (&w.certificate_file, trusted_pem) {
                    (Some(path), _) => (certificates_from_file(path)?, Some(path.clone())),
                    (None, Some(pem)) => {
                        (certificates_from_pem(pem.as_bytes(), "the sandbox")?, None)
                    }
                    (None, None) => return Err(SetupError::NeedsCertificate),
                };
                if w.expected_name.is_none() {
                    tracing::warn!(
                        "webhooks.expected_name is not set: a token CorrigoPro signed for any integration verifies here; the first verified token's name claim is logged, set webhooks.expected_name to it"
                    );
                }
                let rules = TokenRules::from_settings(w);
                let logged = rules
                    .readings
                    .iter()
                    .map(|_| AtomicBool::new(false))
                    .collect();
                Mode::SignedToken {
                    certs: RwLock::new(Arc::new(certs)),
                    source,
                    rules,
                    learned: AtomicUsize::new(usize::MAX),
                    logged,
                    name_logged: AtomicBool::new(false),
                }
            }
            WebhookVerify::SharedSecret => {
                let Some(path) = &w.shared_secret_file else {
                    return Err(SetupError::NeedsSecretFile);
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

    /// The earliest end of validity of the trusted certificates (seconds since
    /// the Unix epoch), for signed tokens.
    pub fn certificates_not_after(&self) -> Option<i64> {
        match &self.mode {
            Mode::SignedToken { certs, .. } => certs
                .read()
                .ok()
                .and_then(|c| c.iter().map(|c| c.not_after).min()),
            _ => None,
        }
    }

    /// Reads the certificate or secret file again (rotation): a file that cannot
    /// be read or parsed keeps the material in use, and says so.
    pub fn reload(&self) {
        match &self.mode {
            Mode::SignedToken {
                certs,
                source: Some(path),
                ..
            } => match certificates_from_file(path) {
                Ok(c) => {
                    if let Ok(mut g) = certs.write() {
                        *g = Arc::new(c);
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
    pub fn check(
        &self,
        authorization: Option<&[u8]>,
        now: SystemTime,
    ) -> Result<Verified, Refusal> {
        if matches!(self.mode, Mode::None) {
            return Ok(Verified::default());
        }
        let token = authorization
            .and_then(strip_bearer)
            .ok_or(Refusal::cheap(Refused::Missing))?;
        match &self.mode {
            Mode::None => Ok(Verified::default()),
            Mode::SharedSecret { secret, .. } => {
                let expected = secret
                    .read()
                    .map(|g| Arc::clone(&g))
                    .map_err(|_| Refusal::checked(Refused::BadSecret))?;
                if bool::from(token.ct_eq(expected.as_slice())) {
                    Ok(Verified::default())
                } else {
                    Err(Refusal::checked(Refused::BadSecret))
                }
            }
            Mode::SignedToken {
                certs,
                rules,
                learned,
                logged,
                name_logged,
                ..
            } => {
                let parts = token::parts(token).map_err(Refusal::cheap)?;
                let certs = certs
                    .read()
                    .map(|g| Arc::clone(&g))
                    .map_err(|_| Refusal::checked(Refused::BadSignature))?;
                // The signature first: nothing of an unsigned token is believed.
                let first = Some(learned.load(Ordering::Relaxed)).filter(|i| *i != usize::MAX);
                let i = verifying_reading(&parts, &certs, &rules.readings, first)
                    .ok_or(Refusal::checked(Refused::BadSignature))?;
                learned.store(i, Ordering::Relaxed);
                let reading = rules.readings[i];
                if !logged[i].swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        signed_part = reading.part_label(),
                        signature_algorithm = reading.algorithm_label(),
                        "a webhook token verified with this reading (set webhooks.signed_part and webhooks.signature_algorithm to it to try only this one)"
                    );
                }
                let claims = token::claims(&parts.data_bytes).map_err(Refusal::checked)?;
                rules.judge(&claims, now).map_err(Refusal::checked)?;
                if rules.expected_name.is_none() && !name_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        name = claims.name.as_deref().unwrap_or("(none)"),
                        "the first verified webhook token names this integration: set webhooks.expected_name to it so tokens for other integrations are refused"
                    );
                }
                Ok(Verified {
                    reading: Some(reading),
                    valid_until: claims.expires.checked_add(rules.skew),
                    name: claims.name,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{SignatureAlgorithm, SignedPart};
    use crate::sandbox::notifier::{Signer, TokenShape};
    use crate::sandbox::{NOTIFIER_CERT_PEM, NOTIFIER_KEY_PEM};
    use crate::webhooks::signature::tests::shape;
    use crate::webhooks::signature::{Hash, Part, readings};
    use std::time::Duration;

    fn verifier(f: impl FnOnce(&mut WebhookSettings)) -> Verifier {
        let mut w = WebhookSettings::default();
        f(&mut w);
        Verifier::new(&w, Some(NOTIFIER_CERT_PEM)).unwrap()
    }

    fn bearer(t: &str) -> Vec<u8> {
        format!("Bearer {t}").into_bytes()
    }

    fn reason(r: Result<Verified, Refusal>) -> Result<Option<Reading>, Refused> {
        r.map(|v| v.reading).map_err(|r| r.reason)
    }

    const TTL: Duration = Duration::from_secs(1200);

    #[test]
    fn every_reading_of_corrigopros_shape_verifies_under_auto_plain_or_gzip() {
        let v = verifier(|_| {});
        let s = Signer::from_pem(NOTIFIER_KEY_PEM).unwrap();
        let now = SystemTime::now();
        for reading in readings(SignedPart::Auto, SignatureAlgorithm::Auto) {
            for gzip in [false, true] {
                let t = s
                    .token_shaped("CorrigoProDirect", now, TTL, &shape(reading, gzip))
                    .unwrap();
                assert_eq!(gzip, t.starts_with("H4sI"), "{t}");
                assert_eq!(!gzip, t.starts_with("eyJ"), "{t}");
                assert_eq!(reason(v.check(Some(&bearer(&t)), now)), Ok(Some(reading)));
            }
        }
    }

    #[test]
    fn a_pinned_reading_tries_only_itself_and_sha1_only_when_named() {
        let s = Signer::from_pem(NOTIFIER_KEY_PEM).unwrap();
        let now = SystemTime::now();
        let shaped = |part, hash| {
            s.token_shaped(
                "CorrigoProDirect",
                now,
                TTL,
                &shape(Reading { part, hash }, false),
            )
            .unwrap()
        };
        let bytes512 = shaped(Part::DataBytes, Hash::Sha512);
        let pinned = verifier(|w| {
            w.signed_part = SignedPart::DataText;
            w.signature_algorithm = SignatureAlgorithm::RsaSha256;
        });
        assert_eq!(
            reason(pinned.check(Some(&bearer(&bytes512)), now)),
            Err(Refused::BadSignature)
        );
        let pinned_bytes = verifier(|w| {
            w.signed_part = SignedPart::DataBytes;
            w.signature_algorithm = SignatureAlgorithm::RsaSha512;
        });
        assert!(pinned_bytes.check(Some(&bearer(&bytes512)), now).is_ok());
        // SHA-1 is tried only when named.
        let auto = readings(SignedPart::Auto, SignatureAlgorithm::Auto);
        assert_eq!(auto.len(), 4);
        assert!(auto.iter().all(|r| r.hash != Hash::Sha1));
        let named = readings(SignedPart::Auto, SignatureAlgorithm::RsaSha1);
        assert!(named.iter().all(|r| r.hash == Hash::Sha1) && named.len() == 2);
    }

    #[test]
    fn each_fault_is_refused_with_its_reason_and_its_cost() {
        let v =
            verifier(|w| w.expected_name = Some(crate::sandbox::notifier::INTEGRATION_NAME.into()));
        let s = Signer::from_pem(NOTIFIER_KEY_PEM).unwrap();
        let now = SystemTime::now();
        let good = s.token("CorrigoProDirect", now, TTL, false).unwrap();
        assert!(v.check(Some(&bearer(&good)), now).is_ok());
        let cheap = |r| Err(Refusal::cheap(r));
        assert_eq!(v.check(None, now), cheap(Refused::Missing));
        assert_eq!(v.check(Some(b"Basic abc"), now), cheap(Refused::Missing));
        assert_eq!(
            v.check(Some(&bearer("nonsense")), now),
            cheap(Refused::Malformed)
        );
        let (data, sig) = good.split_once(token::SEPARATOR).unwrap();
        let mut bad = sig.to_string();
        bad.replace_range(0..1, if bad.starts_with('A') { "B" } else { "A" });
        assert_eq!(
            v.check(
                Some(&bearer(&format!("{data}{}{bad}", token::SEPARATOR))),
                now
            ),
            Err(Refusal::checked(Refused::BadSignature))
        );
        let later = now + TTL + Duration::from_secs(301);
        assert_eq!(
            reason(v.check(Some(&bearer(&good)), later)),
            Err(Refused::Expired)
        );
        let early = now - Duration::from_secs(600);
        assert_eq!(
            reason(v.check(Some(&bearer(&good)), early)),
            Err(Refused::NotYetValid)
        );
        let other = s.token("Someone", now, TTL, true).unwrap();
        assert_eq!(
            reason(v.check(Some(&bearer(&other)), now)),
            Err(Refused::WrongAudience)
        );
        let other_name = TokenShape {
            name: Some("another-integration".into()),
            ..TokenShape::default()
        };
        let foreign = s
            .token_shaped("CorrigoProDirect", now, TTL, &other_name)
            .unwrap();
        assert_eq!(
            reason(v.check(Some(&bearer(&foreign)), now)),
            Err(Refused::WrongName)
        );
        // Without an expected name, any integration's token verifies.
        let open = verifier(|_| {});
        assert!(open.check(Some(&bearer(&foreign)), now).is_ok());
    }

    #[test]
    fn a_valid_signature_over_unreadable_claims_is_malformed() {
        let s = Signer::from_pem(NOTIFIER_KEY_PEM).unwrap();
        let v = verifier(|_| {});
        let now = SystemTime::now();
        for body in [
            &br#"{"Claims": [{"Type": "Aud", "Value": "CorrigoProDirect"}]}"#[..],
            br#"{"Claims": [{"Type": "Aud", "Value": "CorrigoProDirect"},
                 {"Type": "aud", "Value": "Other"}],
                 "Properties": {"Dictionary": {".expires": "Wed, 28 Feb 2124 02:23:24 GMT"}}}"#,
            br#"{"Aud": "CorrigoProDirect", ".expires": "soon"}"#,
        ] {
            let t = s.sign_claims(body).unwrap();
            assert_eq!(
                v.check(Some(&bearer(&t)), now),
                Err(Refusal::checked(Refused::Malformed)),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // The flat shape, signed and current, is still read.
        let flat = format!(
            r#"{{"Aud": "CorrigoProDirect", ".expires": "{}"}}"#,
            httpdate::fmt_http_date(now + TTL)
        );
        let t = s.sign_claims(flat.as_bytes()).unwrap();
        assert!(v.check(Some(&bearer(&t)), now).is_ok());
    }

    #[test]
    fn a_gzip_bomb_is_malformed_not_memory() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b' '; 50 * 1024 * 1024]).unwrap();
        let s = Signer::from_pem(NOTIFIER_KEY_PEM).unwrap();
        let t = s.sign_claims(&enc.finish().unwrap()).unwrap();
        let v = verifier(|_| {});
        assert_eq!(
            reason(v.check(Some(&bearer(&t)), SystemTime::now())),
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
        assert!(
            v.check(Some(b"Bearer 0123456789abcdef-secret"), now)
                .is_ok()
        );
        assert_eq!(
            reason(v.check(Some(b"Bearer 0123456789abcdef-secreT"), now)),
            Err(Refused::BadSecret)
        );
        assert_eq!(
            reason(v.check(Some(b"Bearer 0123456789abcdef"), now)),
            Err(Refused::BadSecret)
        );
        std::fs::write(&path, "short").unwrap();
        v.reload();
        assert!(
            v.check(Some(b"Bearer 0123456789abcdef-secret"), now)
                .is_ok()
        );
    }
}
