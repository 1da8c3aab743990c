//! TLS termination in Ghostkey (rustls, TLS 1.2 and 1.3, ring). Certificates are read at
//! start-up; to take a renewed certificate, restart the service (systemd: `systemctl
//! restart ghostkey`; the stop drains in-flight requests first).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Builds the server's TLS configuration from the PEM files `config` names; errors name
/// the key and the file.
pub fn server_config(config: &TlsConfig) -> Result<rustls::ServerConfig, String> {
    let pem = std::fs::read(&config.cert_file)
        .map_err(|e| format!("`server.tls.cert_file` {}: {e}", config.cert_file.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("`server.tls.cert_file` {}: {e}", config.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "`server.tls.cert_file` {}: no certificate in it",
            config.cert_file.display()
        ));
    }
    let pem = std::fs::read(&config.key_file)
        .map_err(|e| format!("`server.tls.key_file` {}: {e}", config.key_file.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| format!("`server.tls.key_file` {}: {e}", config.key_file.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!("`server.tls`: the key does not fit the certificate, or is unusable: {e}")
        })
}
