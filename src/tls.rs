//! The gRPC listener's TLS configuration, from PEM files: the server's certificate
//! chain and key, and for mTLS the CA that client certificates must chain to.
//! HTTP/2 only (ALPN `h2`), the ring provider, TLS 1.2 and 1.3.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsSettings;

fn certs(setting: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{setting}: cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{setting}: {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{setting}: {} holds no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// The acceptor for `s`, or `None` when TLS is off.
pub fn acceptor(s: &TlsSettings) -> Result<Option<TlsAcceptor>, String> {
    let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) else {
        return Ok(None);
    };
    let chain = certs("tls.cert_file", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "tls.key_file: cannot read a private key from {}: {e}",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &s.client_ca_file {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("tls.client_ca_file", ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.client_ca_file: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("tls.client_ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls.cert_file / tls.key_file: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Some(TlsAcceptor::from(Arc::new(config))))
}
