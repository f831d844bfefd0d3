//! The rustls client configuration for security profiles 2 and 3 (Security
//! Whitepaper ed. 2 §2.4–2.5): the CSMS is verified against the configured
//! trust store only, TLS 1.2 or 1.3, and profile 3 presents the station's
//! certificate. Files are read at every connection so that certificates
//! renewed by the CSMS (SignCertificate, InstallCertificate) take effect on
//! the next reconnect.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use super::{TransportConfig, TransportError};

/// Builds the client configuration; `cfg` has passed `validate`.
pub(super) fn client_config(cfg: &TransportConfig) -> Result<Arc<ClientConfig>, TransportError> {
    let ca_file = cfg
        .ca_file
        .as_deref()
        .ok_or_else(|| TransportError::config("ocpp.ca_file", "wss:// needs a CA file"))?;
    let mut roots = RootCertStore::empty();
    for cert in certificates("ocpp.ca_file", ca_file)? {
        roots.add(cert).map_err(|e| {
            TransportError::config("ocpp.ca_file", format!("{}: {e}", ca_file.display()))
        })?;
    }

    // ring, never aws-lc: the crate must cross-compile without a C toolchain for aws-lc.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TransportError::Tls)?
        .with_root_certificates(roots);

    let config = if cfg.security_profile == 3 {
        let (Some(cert_file), Some(key_file)) = (&cfg.client_cert, &cfg.client_key) else {
            return Err(TransportError::config(
                "ocpp.client_cert",
                "security profile 3 needs a client certificate and key",
            ));
        };
        let chain = certificates("ocpp.client_cert", cert_file)?;
        let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
            TransportError::config("ocpp.client_key", format!("{}: {e}", key_file.display()))
        })?;
        builder.with_client_auth_cert(chain, key).map_err(|e| {
            TransportError::config("ocpp.client_key", format!("{}: {e}", key_file.display()))
        })?
    } else {
        builder.with_no_client_auth()
    };
    Ok(Arc::new(config))
}

/// All certificates of a PEM file, at least one.
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bad =
        |e: &dyn std::fmt::Display| TransportError::config(key, format!("{}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no PEM certificate in the file"));
    }
    Ok(certs)
}
