//! TLS towards PostgreSQL with libpq's meaning of `sslmode` and `sslrootcert`
//! in `DATABASE_URL` (tokio-postgres parses only `disable|prefer|require`
//! and no root certificate, so both are taken out of the URL here):
//!
//! | sslmode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (default) | if the server offers it | no (as libpq without a root certificate) |
//! | `require` | yes | no, unless `sslrootcert` is given: then as `verify-ca` (as libpq) |
//! | `verify-ca` | yes | chain to `sslrootcert` |
//! | `verify-full` | yes | chain to `sslrootcert` and the host name (or IP) of the URL |
//!
//! `verify-ca`/`verify-full` need `sslrootcert` (a PEM file): a managed
//! database such as Supabase publishes its CA certificate for this.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::tls::{provider, read_roots};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS options of a `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// A TLS option that cannot work; the message names it.
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error(
        "DATABASE_URL: sslmode={0:?} is not one of disable, prefer, require, verify-ca, verify-full"
    )]
    Mode(String),
    #[error(
        "DATABASE_URL: sslmode={0} needs sslrootcert=<PEM file with the server's CA certificate>"
    )]
    NoRootCert(&'static str),
    #[error("DATABASE_URL: {0}")]
    RootCert(#[from] crate::tls::TlsError),
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query.
/// Returns the URL tokio-postgres can parse and the TLS options.
pub fn split_url(url: &str) -> Result<(String, PgTls), PgTlsError> {
    let mut tls = PgTls {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), tls));
    };
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                tls.mode = match percent_decode(v).as_str() {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => return Err(PgTlsError::Mode(other.to_owned())),
                }
            }
            "sslrootcert" => tls.root_cert = Some(PathBuf::from(percent_decode(v))),
            _ => kept.push(pair),
        }
    }
    let url = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((url, tls))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl PgTls {
    /// The tokio-postgres mode: encrypt or not; verification is the connector's.
    pub fn pg_mode(&self) -> PgSslMode {
        match self.mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => PgSslMode::Require,
        }
    }

    /// The connector that checks the server as the mode says.
    pub fn connector(&self) -> Result<MakeRustlsConnect, PgTlsError> {
        let roots = match (&self.root_cert, self.mode) {
            (Some(path), _) => Some(Arc::new(read_roots("DATABASE_URL sslrootcert", path)?)),
            (None, SslMode::VerifyCa) => return Err(PgTlsError::NoRootCert("verify-ca")),
            (None, SslMode::VerifyFull) => return Err(PgTlsError::NoRootCert("verify-full")),
            (None, _) => None,
        };
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the default provider supports the default versions");
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            // Encryption without authentication: what libpq's require/prefer do
            // without a root certificate.
            None => Arc::new(AnyServer(provider())),
            Some(roots) => {
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| {
                        PgTlsError::RootCert(crate::tls::TlsError::ClientCa {
                            path: self.root_cert.clone().unwrap_or_default(),
                            reason: e.to_string(),
                        })
                    })?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ChainOnly(webpki))
                }
            }
        };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(MakeRustlsConnect::new(config))
    }
}

/// Accepts any server certificate, but still checks that the server holds its key.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the root certificate; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_options_leave_the_url() {
        let (url, tls) = split_url(
            "postgres://u:p@db.example:5432/postgres?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(
            url,
            "postgres://u:p@db.example:5432/postgres?application_name=x"
        );
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        let (url, tls) = split_url("postgres://h/db").unwrap();
        assert_eq!(
            (url.as_str(), tls.mode),
            ("postgres://h/db", SslMode::Prefer)
        );
        assert!(split_url("postgres://h/db?sslmode=bogus").is_err());
        let (_, tls) = split_url("postgres://h/db?sslmode=verify-ca").unwrap();
        assert!(
            tls.connector()
                .err()
                .unwrap()
                .to_string()
                .contains("needs sslrootcert")
        );
    }

    /// The machine's PostgreSQL has SSL on with Debian's self-signed "snakeoil"
    /// certificate (CN and DNS SAN `localhost`).
    const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

    /// Connects with the URL's TLS options; `Ok(ssl)` = whether the session is encrypted.
    async fn connect(url: &str) -> Result<bool, String> {
        let (url, tls) = split_url(url).map_err(|e| e.to_string())?;
        let mut cfg: tokio_postgres::Config = url.parse().unwrap();
        cfg.ssl_mode(tls.pg_mode());
        cfg.connect_timeout(std::time::Duration::from_secs(10));
        let (client, conn) = cfg
            .connect(tls.connector().map_err(|e| e.to_string())?)
            .await
            .map_err(|e| format!("{e:?}"))?;
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(row.get(0))
    }

    #[tokio::test]
    async fn machine_postgres_over_tls_by_sslmode() {
        let base = "postgres://postgres@127.0.0.1:5432/test";
        assert_eq!(connect(&format!("{base}?sslmode=require")).await, Ok(true));
        assert_eq!(connect(&format!("{base}?sslmode=disable")).await, Ok(false));
        assert_eq!(
            connect(&format!("{base}?sslmode=verify-ca&sslrootcert={SNAKEOIL}")).await,
            Ok(true),
            "the chain leads to the given root; the IP is not checked"
        );
        let refused = connect(&format!(
            "{base}?sslmode=verify-full&sslrootcert={SNAKEOIL}"
        ))
        .await
        .expect_err("the certificate names localhost, not 127.0.0.1");
        assert!(refused.contains("NotValidForName"), "{refused}");
        assert_eq!(
            connect(&format!(
                "postgres://postgres@localhost:5432/test?sslmode=verify-full&sslrootcert={SNAKEOIL}"
            ))
            .await,
            Ok(true)
        );
        // A root that did not sign the server's certificate is refused in verify-ca too.
        let other = tempfile::NamedTempFile::new().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let ca = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(other.path(), ca.pem()).unwrap();
        let refused = connect(&format!(
            "{base}?sslmode=verify-ca&sslrootcert={}",
            other.path().display()
        ))
        .await
        .expect_err("an unrelated root");
        assert!(
            refused.contains("UnknownIssuer") || refused.contains("BadSignature"),
            "{refused}"
        );
    }
}
