//! Which bytes of a CorrigoPro token are signed, and how: the readings the
//! gateway may try, the certificates it checks against, the rules a verified
//! token's claims must meet, and a full inspection of one token for operators.

use std::path::Path;
use std::time::{Duration, SystemTime};

use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};

use super::refusal::Refused;
use super::setup::SetupError;
use super::token::{self, Claims, Parts, strip_bearer};
use crate::config::{SignatureAlgorithm, SignedPart, WebhookSettings};

/// What the signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The `<data>` text as sent (base64url).
    DataText,
    /// The bytes `<data>` decodes to.
    DataBytes,
}

/// The hash of the RSA PKCS#1 v1.5 signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    Sha256,
    Sha512,
    Sha1,
}

/// One way of reading a signature: what it covers, and its algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub part: Part,
    pub hash: Hash,
}

impl Reading {
    /// The `webhooks.signed_part` value that pins this reading.
    pub fn part_label(self) -> &'static str {
        match self.part {
            Part::DataText => "data-text",
            Part::DataBytes => "data-bytes",
        }
    }

    /// The `webhooks.signature_algorithm` value that pins this reading.
    pub fn algorithm_label(self) -> &'static str {
        match self.hash {
            Hash::Sha256 => "rsa-sha256",
            Hash::Sha512 => "rsa-sha512",
            Hash::Sha1 => "rsa-sha1",
        }
    }

    fn algorithm(self) -> &'static dyn VerificationAlgorithm {
        match self.hash {
            Hash::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Hash::Sha512 => &signature::RSA_PKCS1_2048_8192_SHA512,
            Hash::Sha1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        }
    }

    fn message<'a>(self, p: &'a Parts<'_>) -> &'a [u8] {
        match self.part {
            Part::DataText => p.data_text,
            Part::DataBytes => &p.data_bytes,
        }
    }
}

/// The readings the settings allow, in the order they are tried (before the one
/// that verified last, which goes first).
pub fn readings(part: SignedPart, algorithm: SignatureAlgorithm) -> Vec<Reading> {
    let parts: &[Part] = match part {
        SignedPart::Auto => &[Part::DataText, Part::DataBytes],
        SignedPart::DataText => &[Part::DataText],
        SignedPart::DataBytes => &[Part::DataBytes],
    };
    let hashes: &[Hash] = match algorithm {
        SignatureAlgorithm::Auto => &[Hash::Sha256, Hash::Sha512],
        SignatureAlgorithm::RsaSha256 => &[Hash::Sha256],
        SignatureAlgorithm::RsaSha512 => &[Hash::Sha512],
        SignatureAlgorithm::RsaSha1 => &[Hash::Sha1],
    };
    hashes
        .iter()
        .flat_map(|&hash| parts.iter().map(move |&part| Reading { part, hash }))
        .collect()
}

/// A certificate a signed token may be signed with.
#[derive(Debug, Clone)]
pub struct Certificate {
    /// The DER of its RSA public key (the subjectPublicKey bits).
    public_key: Vec<u8>,
    /// Its subject, for people.
    pub subject: String,
    /// The end of its validity, in seconds since the Unix epoch.
    pub not_after: i64,
}

/// The certificates of a PEM text (at least one, each with an RSA key).
pub fn certificates_from_pem(pem: &[u8], what: &str) -> Result<Vec<Certificate>, SetupError> {
    let mut certs = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| SetupError::NotPem {
            what: what.into(),
            reason: e.to_string(),
        })?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block.parse_x509().map_err(|e| SetupError::NotX509 {
            what: what.into(),
            reason: e.to_string(),
        })?;
        let spki = cert.public_key();
        if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            return Err(SetupError::NotRsa {
                what: what.into(),
                subject: cert.subject().to_string(),
                algorithm: spki.algorithm.algorithm.to_string(),
            });
        }
        certs.push(Certificate {
            public_key: spki.subject_public_key.data.to_vec(),
            subject: cert.subject().to_string(),
            not_after: cert.validity().not_after.timestamp(),
        });
    }
    if certs.is_empty() {
        return Err(SetupError::NoCertificate { what: what.into() });
    }
    Ok(certs)
}

/// The certificates of a file.
pub fn certificates_from_file(path: &Path) -> Result<Vec<Certificate>, SetupError> {
    let pem = std::fs::read(path).map_err(|source| SetupError::ReadCertificate {
        path: path.to_path_buf(),
        source,
    })?;
    certificates_from_pem(&pem, "webhooks.certificate_file")
}

/// How signed tokens are checked.
pub struct TokenRules {
    pub audience: String,
    pub expected_name: Option<String>,
    pub readings: Vec<Reading>,
    pub skew: Duration,
}

impl TokenRules {
    pub fn from_settings(w: &WebhookSettings) -> Self {
        Self {
            audience: w.audience.clone(),
            expected_name: w.expected_name.clone(),
            readings: readings(w.signed_part, w.signature_algorithm),
            skew: w.clock_skew,
        }
    }

    /// The claims' verdict at `now`, once the signature verified.
    pub fn judge(&self, c: &Claims, now: SystemTime) -> Result<(), Refused> {
        if c.audience.as_deref() != Some(self.audience.as_str()) {
            return Err(Refused::WrongAudience);
        }
        if c.expires.checked_add(self.skew).is_none_or(|e| now > e) {
            return Err(Refused::Expired);
        }
        if let Some(issued) = c.issued
            && now.checked_add(self.skew).is_none_or(|n| issued > n)
        {
            return Err(Refused::NotYetValid);
        }
        if let Some(expected) = &self.expected_name
            && c.name.as_deref() != Some(expected.as_str())
        {
            return Err(Refused::WrongName);
        }
        Ok(())
    }
}

/// The reading of `parts` that verifies with one of `certs`, trying
/// `order` in turn; `Some(index in order)`.
pub(crate) fn verifying_reading(
    parts: &Parts<'_>,
    certs: &[Certificate],
    readings: &[Reading],
    first: Option<usize>,
) -> Option<usize> {
    let order = first
        .into_iter()
        .chain((0..readings.len()).filter(move |i| Some(*i) != first));
    for i in order {
        let r = readings[i];
        let message = r.message(parts);
        if certs.iter().any(|c| {
            UnparsedPublicKey::new(r.algorithm(), &c.public_key)
                .verify(message, &parts.signature)
                .is_ok()
        }) {
            return Some(i);
        }
    }
    None
}

/// What a token checker learns of one token: for operators (`webhook-token
/// check`), never for the request path.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The reading that verifies, and the certificate (index) it verifies with.
    pub verified_by: Option<(Reading, usize)>,
    /// The readings tried.
    pub tried: Vec<Reading>,
    /// The claims as the token states them (believed only when `verified_by`).
    pub claims: Result<Claims, Refused>,
    /// The verdict at the time of the check.
    pub verdict: Result<(), Refused>,
}

/// Checks one token (with or without its `Bearer ` scheme) against
/// `certs` under `rules` at `now`, saying everything it finds.
pub fn inspect(
    token: &[u8],
    certs: &[Certificate],
    rules: &TokenRules,
    now: SystemTime,
) -> Inspection {
    let token = token.trim_ascii();
    let token = strip_bearer(token).unwrap_or(token);
    let fail = |r: Refused| Inspection {
        verified_by: None,
        tried: Vec::new(),
        claims: Err(r),
        verdict: Err(r),
    };
    if token.is_empty() {
        return fail(Refused::Missing);
    }
    let parts = match token::parts(token) {
        Ok(p) => p,
        Err(r) => return fail(r),
    };
    let claims = token::claims(&parts.data_bytes);
    let verified_by = rules.readings.iter().find_map(|&r| {
        certs
            .iter()
            .position(|c| {
                UnparsedPublicKey::new(r.algorithm(), &c.public_key)
                    .verify(r.message(&parts), &parts.signature)
                    .is_ok()
            })
            .map(|i| (r, i))
    });
    let verdict = match (&verified_by, &claims) {
        (None, _) => Err(Refused::BadSignature),
        (Some(_), Err(r)) => Err(*r),
        (Some(_), Ok(c)) => rules.judge(c, now),
    };
    Inspection {
        verified_by,
        tried: rules.readings.clone(),
        claims,
        verdict,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sandbox::notifier::{SignHash, SignedOver, Signer, TokenShape};
    use crate::sandbox::{NOTIFIER_CERT_PEM, NOTIFIER_KEY_PEM};

    const TTL: Duration = Duration::from_secs(1200);

    /// The sandbox's own words for a reading (it signs apart from this module).
    pub(crate) fn shape(r: Reading, gzip: bool) -> TokenShape {
        TokenShape {
            gzip,
            signed_over: match r.part {
                Part::DataText => SignedOver::DataText,
                Part::DataBytes => SignedOver::DataBytes,
            },
            hash: match r.hash {
                Hash::Sha256 => SignHash::Sha256,
                _ => SignHash::Sha512,
            },
            ..TokenShape::default()
        }
    }

    #[test]
    fn the_inspection_names_the_reading_and_the_claims() {
        let s = Signer::from_pem(NOTIFIER_KEY_PEM).unwrap();
        let certs = certificates_from_pem(NOTIFIER_CERT_PEM.as_bytes(), "test").unwrap();
        let rules = TokenRules::from_settings(&WebhookSettings::default());
        let now = SystemTime::now();
        let reading = Reading {
            part: Part::DataBytes,
            hash: Hash::Sha512,
        };
        let t = s
            .token_shaped("CorrigoProDirect", now, TTL, &shape(reading, true))
            .unwrap();
        let i = inspect(format!("Bearer {t}\n").as_bytes(), &certs, &rules, now);
        assert_eq!(i.verified_by, Some((reading, 0)));
        assert_eq!(i.verdict, Ok(()));
        let c = i.claims.unwrap();
        assert_eq!(c.audience.as_deref(), Some("CorrigoProDirect"));
        let later = inspect(t.as_bytes(), &certs, &rules, now + TTL * 2);
        assert_eq!(later.verdict, Err(Refused::Expired));
        assert_eq!(
            inspect(b"  ", &certs, &rules, now).verdict,
            Err(Refused::Missing)
        );
    }

    #[test]
    fn a_certificate_without_an_rsa_key_is_refused_at_load() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let e = certificates_from_pem(cert.pem().as_bytes(), "f")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not RSA"), "{e}");
        let certs = certificates_from_pem(NOTIFIER_CERT_PEM.as_bytes(), "f").unwrap();
        assert!(certs[0].not_after > 1_700_000_000);
    }
}
