//! The gRPC listener's TLS configuration, from PEM files: the server's certificate
//! chain and key, and for mTLS the CA that client certificates must chain to.
//! HTTP/2 only (ALPN `h2`), the ring provider, TLS 1.2 and 1.3.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

/// Why the gRPC listener's TLS cannot be set up: the setting at fault, and why.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{setting}: cannot read {}: {source}", path.display())]
    Read {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{setting}: {}: {source}", path.display())]
    NotPem {
        setting: &'static str,
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{setting}: {} holds no certificate", path.display())]
    NoCertificate {
        setting: &'static str,
        path: PathBuf,
    },
    #[error("tls.key_file: cannot read a private key from {}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    /// rustls refused the configuration.
    #[error("{setting}: {source}")]
    Config {
        setting: &'static str,
        #[source]
        source: rustls::Error,
    },
    #[error("tls.client_ca_file: {0}")]
    ClientVerifier(#[source] VerifierBuilderError),
}

fn certs(setting: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::Read {
            setting,
            path: path.to_path_buf(),
            source,
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::NotPem {
            setting,
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            setting,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// When the served certificate (the first of `tls.cert_file`) expires, in Unix
/// seconds; `None` when TLS is off or the file cannot be read as a certificate
/// ([`acceptor`] says why).
pub fn certificate_not_after(s: &TlsSettings) -> Option<i64> {
    let leaf = certs("tls.cert_file", s.cert_file.as_ref()?)
        .ok()?
        .into_iter()
        .next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// The acceptor for `s`, or `None` when TLS is off.
pub fn acceptor(s: &TlsSettings) -> Result<Option<TlsAcceptor>, TlsError> {
    let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) else {
        return Ok(None);
    };
    let config = |setting| move |source| TlsError::Config { setting, source };
    let chain = certs("tls.cert_file", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.clone(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(config("TLS"))?;
    let builder = match &s.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("tls.client_ca_file", ca)? {
                roots.add(c).map_err(config("tls.client_ca_file"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(TlsError::ClientVerifier)?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(config("tls.cert_file / tls.key_file"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_served_certificates_expiry_is_read() {
        let dir = tempfile::tempdir().expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).expect("params");
        params.not_after = rcgen::date_time_ymd(2031, 5, 4);
        let leaf = params.self_signed(&key).expect("cert");
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let ca = ca.self_signed(&ca_key).expect("ca");
        let cert_file = dir.path().join("chain.pem");
        // The leaf first, then the rest of the chain (an earlier expiry).
        std::fs::write(&cert_file, format!("{}{}", leaf.pem(), ca.pem())).expect("write");
        let s = TlsSettings {
            cert_file: Some(cert_file),
            ..TlsSettings::default()
        };
        // 2031-05-04T00:00:00Z
        assert_eq!(certificate_not_after(&s), Some(1_935_619_200));
        assert_eq!(certificate_not_after(&TlsSettings::default()), None);
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").expect("write");
        let s = TlsSettings {
            cert_file: Some(garbage),
            ..TlsSettings::default()
        };
        assert_eq!(certificate_not_after(&s), None);
    }
}
