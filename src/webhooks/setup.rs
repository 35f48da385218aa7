//! Why the webhook listener cannot start: each cause named with the setting it
//! comes from, and the underlying error kept.

use std::path::PathBuf;

use crate::secret::SecretFileError;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("webhooks.certificate_file: cannot read {}: {source}", path.display())]
    ReadCertificate {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: not PEM: {reason}")]
    NotPem { what: String, reason: String },
    #[error("{what}: not an X.509 certificate: {reason}")]
    NotX509 { what: String, reason: String },
    #[error(
        "{what}: the certificate of `{subject}` holds a key that is not RSA ({algorithm}): CorrigoPro's tokens carry RSA signatures"
    )]
    NotRsa {
        what: String,
        subject: String,
        algorithm: String,
    },
    #[error("{what}: no certificate (PEM `CERTIFICATE` block) in it")]
    NoCertificate { what: String },
    #[error("webhooks.verify = \"signed-token\" needs webhooks.certificate_file")]
    NeedsCertificate,
    #[error("webhooks.verify = \"shared-secret\" needs webhooks.shared_secret_file")]
    NeedsSecretFile,
    #[error("webhooks.shared_secret_file: {0}")]
    ReadSecret(#[source] SecretFileError),
    #[error(
        "webhooks.shared_secret_file: {} holds fewer than 16 bytes: too easy to guess",
        path.display()
    )]
    WeakSecret { path: PathBuf },
    #[error("webhooks.forward_url: {0}")]
    ForwardUrl(String),
    #[error("webhooks.forward_url: cannot build its HTTP client: {0}")]
    ForwardClient(#[source] reqwest::Error),
}
