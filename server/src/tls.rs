//! The optional HTTPS listener's TLS settings: rustls with the `ring` provider (the one
//! crypto provider of the binary), a PEM certificate chain and a PEM private key.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;

/// `ring`'s provider, named in this one place. rustls 0.23.48 deprecates the function for
/// lacking post-quantum key exchange (ring has none); the lockfile pins 0.23.46, and
/// `ring` stays the binary's one provider (aws-lc-rs would add a C and CMake build), so
/// a dependency update does not turn this into a build failure under `-D warnings`.
#[allow(deprecated)]
fn ring_provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The process-wide provider: `ring`.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring_provider())
}

/// Makes `ring` the process default, so that any rustls user in the binary (e.g. an HTTP
/// client) gets it without naming it. A second call is harmless.
pub fn install_default_provider() {
    let _ = ring_provider().install_default();
}

fn invalid(key: &'static str, msg: String) -> ConfigError {
    ConfigError::Invalid { key, msg }
}

/// Builds the acceptor from the PEM files at `cert` (the chain, leaf first) and `key`.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, ConfigError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid("tls_cert", format!("{}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid("tls_cert", format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            "tls_cert",
            format!("{}: no PEM certificate in the file", cert.display()),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid("tls_key", format!("{}: {e}", key.display())))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls_cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private)
        .map_err(|e| invalid("tls_key", format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
