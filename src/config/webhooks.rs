//! The `webhooks` section: the listener for CorrigoPro's notifications.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::checks::{ConfigError, at_most_an_hour, https_or_loopback, invalid, nonzero};
use super::rate_limit::Rate;

/// How webhook requests prove they come from CorrigoPro.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebhookVerify {
    /// CorrigoPro's signed token, checked against `webhooks.certificate_file`.
    SignedToken,
    /// The bearer value equals the content of `webhooks.shared_secret_file`
    /// (for a proxy of the operator's in front).
    SharedSecret,
    /// No check at all (warned at start): only behind something that checks.
    None,
}

/// What a signed token's signature covers (unconfirmed upstream; see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignedPart {
    /// Each of the others, the one that verified last first.
    Auto,
    /// The `<data>` part as sent (its base64url text).
    DataText,
    /// The bytes `<data>` decodes to.
    DataBytes,
}

/// The signature algorithm of signed tokens (unconfirmed upstream; see README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SignatureAlgorithm {
    /// RSA with SHA-256 and with SHA-512 (never SHA-1 unless named), the one
    /// that verified last first.
    Auto,
    RsaSha256,
    RsaSha512,
    /// Legacy; only if CorrigoPro turns out to use it.
    RsaSha1,
}

/// The webhook listener: CorrigoPro's notifications in.
#[derive(Debug, Clone, Serialize, Deserialize, garde::Validate)]
#[serde(default, deny_unknown_fields)]
#[garde(allow_unvalidated)]
pub struct WebhookSettings {
    /// Where the webhook listener listens (path `/webhooks/corrigopro`); off when unset.
    pub listen: Option<SocketAddr>,
    pub verify: WebhookVerify,
    /// CorrigoPro's certificate (PEM), for `verify = "signed-token"`.
    pub certificate_file: Option<PathBuf>,
    /// The expected bearer value, for `verify = "shared-secret"`.
    pub shared_secret_file: Option<PathBuf>,
    /// The audience (`Aud` claim) a signed token must name.
    pub audience: String,
    /// The name claim a signed token must carry: CorrigoPro's identifier of
    /// this integration. Unset: a token signed for any integration verifies
    /// (warned at start; the first verified name is logged).
    #[garde(custom(expected_name_rule))]
    pub expected_name: Option<String>,
    pub signed_part: SignedPart,
    pub signature_algorithm: SignatureAlgorithm,
    /// Tolerance on `.issued` / `.expires`, for clocks that disagree (at most 1h).
    #[serde(with = "humantime_serde")]
    #[garde(custom(at_most_an_hour))]
    pub clock_skew: Duration,
    /// Failed credential checks allowed (per source address and in all) before
    /// requests are refused (429) without a check.
    #[garde(dive)]
    pub failed_checks: Rate,
    /// A request body larger than this is refused (413).
    #[garde(range(min = 1024, max = 16 * 1024 * 1024))]
    pub max_body_bytes: u64,
    /// Headers must arrive within this.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub header_timeout: Duration,
    /// The whole request (body included) must arrive within this.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub idle_timeout: Duration,
    /// Open connections at most; more wait in the kernel's backlog.
    #[garde(range(min = 1))]
    pub max_connections: u32,
    /// Where notifications that are not about attachments go, unchanged (their
    /// outcome is CorrigoPro's answer). Unset: they are acknowledged and counted.
    pub forward_url: Option<String>,
    /// How long a forward may take.
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub forward_timeout: Duration,
    /// A redelivered notification (same `Header.MessageId`) within this is
    /// acknowledged and recorded once. Covers CorrigoPro's retries (~8.3 days).
    #[serde(with = "humantime_serde")]
    #[garde(custom(nonzero))]
    pub dedupe_ttl: Duration,
    /// Message ids remembered at most (the oldest go first).
    #[garde(range(min = 1))]
    pub max_dedupe_keys: u32,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            listen: None,
            verify: WebhookVerify::SignedToken,
            certificate_file: None,
            shared_secret_file: None,
            audience: "CorrigoProDirect".into(),
            expected_name: None,
            signed_part: SignedPart::Auto,
            signature_algorithm: SignatureAlgorithm::Auto,
            clock_skew: Duration::from_secs(300),
            failed_checks: Rate {
                rps: 1000,
                burst: 2000,
            },
            max_body_bytes: 1024 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(120),
            max_connections: 256,
            forward_url: None,
            forward_timeout: Duration::from_secs(10),
            dedupe_ttl: Duration::from_secs(9 * 24 * 3600),
            max_dedupe_keys: 200_000,
        }
    }
}

impl WebhookSettings {
    /// The forward target and the audience (how requests are verified depends
    /// on the sandbox too: see `Settings::validate`).
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.forward_url {
            https_or_loopback("webhooks.forward_url", url, None)?;
        }
        if self.audience.trim().is_empty() {
            return Err(invalid("webhooks.audience", "must not be empty"));
        }
        Ok(())
    }
}

/// An expected name claim: not blank, at most 256 characters.
fn expected_name_rule(n: &Option<String>, _: &()) -> garde::Result {
    match n {
        Some(n) if n.trim().is_empty() => Err(garde::Error::new("must not be blank when set")),
        Some(n) if n.chars().count() > 256 => {
            Err(garde::Error::new("must be at most 256 characters"))
        }
        _ => Ok(()),
    }
}
