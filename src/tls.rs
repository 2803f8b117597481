//! DICOM TLS: the Basic TLS Secure Transport Connection Profile (PS3.15 Annex B.1) with rustls.
//!
//! Builds the rustls configurations of the receive listener (`[receive.tls]`) and of TLS
//! destinations (`[[destinations]] tls = {…}`) from PEM files, and reads the subject of a
//! peer certificate for logs.
//!
//! - Protocol versions: TLS 1.2 and 1.3 only (rustls implements nothing older; PS3.15 B.1
//!   allows TLS 1.2 or later, B.9 "BCP 195" profiles recommend the same).
//! - Crypto provider: rustls' `ring` provider, passed explicitly to every configuration
//!   ([`provider`]) and installed as the process default by [`install_default_provider`], so
//!   nothing depends on which providers other crates enable. `ring` needs only a C compiler;
//!   the default `aws-lc-rs` would need cmake.
//! - Client authentication: with `client_ca` set, the listener requires a client certificate
//!   that chains to one of its certificates ([`rustls::server::WebPkiClientVerifier`]); without
//!   it, no client certificate is requested.
//! - Server authentication (sending): the destination's certificate must chain to `ca` and be
//!   valid for `server_name` (DNS name or IP address; default: the destination's `host`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// Errors building a TLS configuration; each names the configuration key at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read (missing, permissions).
    #[error("configuration key `{key}`: cannot read {}: {source}", path.display())]
    Read {
        /// Configuration key, e.g. `receive.tls.certificate`.
        key: String,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate / private key, or the material is rejected.
    #[error("configuration key `{key}`: {message}")]
    Invalid {
        /// Configuration key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: &str, message: impl Into<String>) -> TlsError {
    TlsError::Invalid { key: key.to_string(), message: message.into() }
}

/// The crypto provider of every TLS configuration: rustls' `ring` provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Install [`provider`] as rustls' process-wide default (for code that builds configurations
/// with `ClientConfig::builder()`); does nothing if a default is already installed.
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The protocol versions offered and accepted: TLS 1.3 and TLS 1.2.
const VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { key: key.to_string(), path: path.to_path_buf(), source })
}

/// Read every `CERTIFICATE` block of a PEM file (a chain: leaf first, then intermediates).
///
/// # Errors
/// [`TlsError::Read`] if the file cannot be read; [`TlsError::Invalid`] if a block is
/// malformed or there is no certificate in it.
pub fn load_certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, format!("{}: bad PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(key, format!("{}: no CERTIFICATE block in the PEM file", path.display())));
    }
    Ok(certs)
}

/// Read the first private key (PKCS#8, PKCS#1 RSA or SEC1 EC) of a PEM file.
///
/// # Errors
/// [`TlsError::Read`] if the file cannot be read; [`TlsError::Invalid`] if it holds no key.
pub fn load_private_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| invalid(key, format!("{}: no usable private key: {e}", path.display())))
}

/// A root store holding every certificate of the PEM file at `path` (trust anchors).
fn root_store(key: &str, path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for (i, c) in load_certificates(key, path)?.into_iter().enumerate() {
        roots.add(c).map_err(|e| invalid(key, format!("{}: certificate {i} is not a usable trust anchor: {e}", path.display())))?;
    }
    Ok(roots)
}

/// The listener configuration of `[receive.tls]`: our certificate chain and key, TLS 1.2+,
/// and — when `client_ca` is set — a required client certificate issued by that CA.
///
/// # Errors
/// [`TlsError`] naming `receive.tls.certificate`, `receive.tls.private_key` or
/// `receive.tls.client_ca` for a missing/unreadable file, bad PEM, or a key that does not
/// match the certificate.
pub fn server_config(cfg: &crate::config::ReceiveTlsConfig) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = load_certificates("receive.tls.certificate", &cfg.certificate)?;
    let key = load_private_key("receive.tls.private_key", &cfg.private_key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| invalid("receive.tls", e.to_string()))?;
    let builder = match &cfg.client_ca {
        Some(ca) if !ca.as_os_str().is_empty() => {
            let roots = root_store("receive.tls.client_ca", ca)?;
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| invalid("receive.tls.client_ca", e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid("receive.tls.private_key", format!("certificate/key rejected: {e}")))?;
    Ok(Arc::new(config))
}

/// The client configuration of a TLS destination: trust anchors from `ca`, TLS 1.2+, and a
/// client certificate when `cert` and `key` are both set. `key_prefix` names the table in
/// errors, e.g. `destinations[0].tls`.
///
/// # Errors
/// [`TlsError`] naming `<key_prefix>.ca|cert|key`: unreadable file, bad PEM, only one of
/// cert/key set, key not matching the certificate.
pub fn client_config(key_prefix: &str, cfg: &crate::config::DestinationTlsConfig) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let k = |field: &str| format!("{key_prefix}.{field}");
    let roots = root_store(&k("ca"), &cfg.ca)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| invalid(&k("ca"), e.to_string()))?
        .with_root_certificates(roots);
    let set = |p: &Option<PathBuf>| p.as_ref().filter(|p| !p.as_os_str().is_empty()).cloned();
    let config = match (set(&cfg.cert), set(&cfg.key)) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = load_certificates(&k("cert"), &cert)?;
            let key = load_private_key(&k("key"), &key)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid(&k("key"), format!("certificate/key rejected: {e}")))?
        }
        (Some(_), None) => return Err(invalid(&k("key"), "`cert` is set but `key` is not")),
        (None, Some(_)) => return Err(invalid(&k("cert"), "`key` is set but `cert` is not")),
    };
    Ok(Arc::new(config))
}

/// Check that `name` is usable as the TLS server name (DNS name or IP address).
///
/// # Errors
/// [`TlsError::Invalid`] naming `key`.
pub fn check_server_name(key: &str, name: &str) -> Result<(), TlsError> {
    ServerName::try_from(name.to_string()).map(|_| ()).map_err(|e| invalid(key, format!("`{name}` is not a DNS name or IP address: {e}")))
}

/// The subject distinguished name of the first (leaf) certificate, RFC 4514 style
/// (e.g. `CN=scanner1, O=Hospital`); `None` without certificates or if it does not parse.
pub fn certificate_subject(certs: &[CertificateDer<'_>]) -> Option<String> {
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(cert.subject().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{DestinationTlsConfig, ReceiveTlsConfig};

    #[test]
    fn errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a PEM file\n").unwrap();
        let missing = dir.path().join("missing.pem");
        let cfg = ReceiveTlsConfig { enabled: true, certificate: missing.clone(), private_key: junk.clone(), ..Default::default() };
        let e = server_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("receive.tls.certificate") && e.contains("missing.pem"), "{e}");
        let cfg = ReceiveTlsConfig { certificate: junk.clone(), ..cfg };
        let e = server_config(&cfg).unwrap_err().to_string();
        assert!(e.contains("receive.tls.certificate") && e.contains("no CERTIFICATE"), "{e}");

        let d = DestinationTlsConfig { ca: junk.clone(), ..Default::default() };
        let e = client_config("destinations[2].tls", &d).unwrap_err().to_string();
        assert!(e.contains("destinations[2].tls.ca"), "{e}");
        let d = DestinationTlsConfig { ca: missing, ..Default::default() };
        let e = client_config("destinations[0].tls", &d).unwrap_err().to_string();
        assert!(e.contains("destinations[0].tls.ca") && e.contains("cannot read"), "{e}");
        assert!(check_server_name("k", "pacs.example.org").is_ok());
        assert!(check_server_name("k", "10.0.0.1").is_ok());
        assert!(check_server_name("k", "not a name!").unwrap_err().to_string().contains("`k`"));
    }

    #[test]
    fn no_subject_without_certificate() {
        assert_eq!(certificate_subject(&[]), None);
        assert_eq!(certificate_subject(&[CertificateDer::from(vec![1u8, 2, 3])]), None);
    }
}
