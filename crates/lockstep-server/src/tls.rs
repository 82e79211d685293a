//! TLS for the HTTP/WebSocket listener (rustls, no OpenSSL): the server
//! certificate and key from PEM files, and — with a client CA — mutual TLS
//! where client certificates are requested and, when sent, verified against
//! that CA. Clients that authenticate by token may still connect without one.
//!
//! The names a verified client certificate proves (subject CN and DNS SANs)
//! are read here once per connection and handed to every request of that
//! connection as [`PeerCert`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

pub use crate::http::peer::PeerCert;

/// A TLS file that cannot be used; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{var}={path}: cannot read PEM certificates: {reason}")]
    Certs {
        var: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{var}={path} holds no certificate")]
    NoCert { var: &'static str, path: PathBuf },
    #[error("LOCKSTEP_TLS_KEY={path}: cannot read a PEM private key: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("LOCKSTEP_TLS_CERT and LOCKSTEP_TLS_KEY do not form a usable identity: {0}")]
    Identity(String),
    #[error("LOCKSTEP_TLS_CLIENT_CA={path}: {reason}")]
    ClientCa { path: PathBuf, reason: String },
}

/// The one cryptography provider of the workspace (aws-lc-rs, as reqwest uses).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads every certificate of a PEM file; `var` names the setting in errors.
pub fn read_certs(
    var: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certs {
            var,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert {
            var,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// A root store of every certificate in a PEM file.
pub fn read_roots(var: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(var, path)? {
        roots.add(cert).map_err(|e| TlsError::Certs {
            var,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The listener's TLS configuration: HTTP/1.1 only (WebSocket upgrades are
/// HTTP/1.1), client certificates requested when `client_ca` is given.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certs("LOCKSTEP_TLS_CERT", cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = read_roots("LOCKSTEP_TLS_CLIENT_CA", ca)?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                // Token-authenticated clients connect without a certificate;
                // a certificate that is sent must verify.
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientCa {
                    path: ca.to_owned(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Identity(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Subject CN(s) then DNS SANs of a certificate, in that order, without
/// duplicates; empty if it cannot be parsed (it was verified by rustls already).
pub fn cert_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
    let Ok((_, x509)) = X509Certificate::from_der(cert.as_ref()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = x509
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = x509.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name
                && !names.iter().any(|n| n == dns)
            {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cn_then_dns_sans() {
        let mut params =
            rcgen::CertificateParams::new(vec!["1HGCM82633A004352".into(), "edge.example".into()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "1HGCM82633A004352");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            cert_names(cert.der()),
            vec!["1HGCM82633A004352".to_owned(), "edge.example".to_owned()]
        );
    }

    #[test]
    fn missing_files_name_the_variable() {
        let e = server_config(Path::new("/nonexistent.pem"), Path::new("/k.pem"), None)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("LOCKSTEP_TLS_CERT=/nonexistent.pem"), "{e}");
    }
}
