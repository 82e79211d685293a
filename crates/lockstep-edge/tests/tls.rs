//! Device authentication over HTTPS against an in-test TLS server (rustls,
//! certificates made here with rcgen): the bearer token arrives on every
//! request, a custom CA verifies, an unknown CA fails with a clear error, and
//! a client certificate is presented for mutual TLS.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use lockstep_edge::sender::{DeviceToken, SenderConfig, TlsFiles};
use lockstep_edge::sim::sim_vin;
use lockstep_edge::spool::Spool;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use support::*;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_util::sync::CancellationToken;

/// A CA and what it signed, as PEM files in `dir`.
struct Pki {
    ca: rcgen::Certificate,
    ca_pem: PathBuf,
    server: rcgen::Certificate,
    server_key: KeyPair,
    client_pem: PathBuf,
    client_key_pem: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let mut p = CertificateParams::new(Vec::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert, Issuer::new(p, key))
}

fn pki(dir: &Path, name: &str) -> Pki {
    let (ca, issuer) = ca(name);
    let mut sp = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    sp.extended_key_usages
        .push(ExtendedKeyUsagePurpose::ServerAuth);
    let server_key = KeyPair::generate().unwrap();
    let server = sp.signed_by(&server_key, &issuer).unwrap();
    let mut cp = CertificateParams::new(Vec::new()).unwrap();
    cp.distinguished_name.push(DnType::CommonName, "device-1");
    cp.extended_key_usages
        .push(ExtendedKeyUsagePurpose::ClientAuth);
    let client_key = KeyPair::generate().unwrap();
    let client = cp.signed_by(&client_key, &issuer).unwrap();
    let write = |file: &str, pem: String| {
        let p = dir.join(format!("{name}-{file}"));
        std::fs::write(&p, pem).unwrap();
        p
    };
    Pki {
        ca_pem: write("ca.pem", ca.pem()),
        client_pem: write("client.pem", client.pem()),
        client_key_pem: write("client-key.pem", client_key.serialize_pem()),
        ca,
        server,
        server_key,
    }
}

/// What the TLS server saw per accepted connection: how many certificates
/// the client presented (`None`: none), or the handshake error.
type Handshakes = Arc<Mutex<Vec<Result<Option<usize>, String>>>>;

/// The test server behind TLS with `pki`'s server certificate; with
/// `require_client_cert`, only clients with a certificate of that CA get in.
async fn https_server(
    pki: &Pki,
    require_client_cert: bool,
) -> (String, Arc<TestServer>, Handshakes) {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = RootCertStore::empty();
        roots.add(pki.ca.der().clone()).unwrap();
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.server_key.serialize_der()));
    let config = builder
        .with_single_cert(vec![pki.server.der().clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let srv = test_server(|_, _| Fault::None);
    let app = router(srv.clone(), 0);
    let handshakes = Handshakes::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let seen = handshakes.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, app, seen) = (acceptor.clone(), app.clone(), seen.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        seen.lock().unwrap().push(Err(e.to_string()));
                        return;
                    }
                };
                let presented = tls.get_ref().1.peer_certificates().map(<[_]>::len);
                seen.lock().unwrap().push(Ok(presented));
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    (url, srv, handshakes)
}

fn https_config(url: &str, token: Option<&str>, tls: TlsFiles) -> SenderConfig {
    SenderConfig {
        token: token.map(DeviceToken::new),
        tls,
        ..config(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_ca_verifies_and_every_request_carries_the_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "private");
    let (url, srv, _) = https_server(&pki, false).await;
    let tls = TlsFiles {
        ca_cert: Some(pki.ca_pem.clone()),
        ..TlsFiles::default()
    };
    let spool = dir.path().join("spool");
    let sh = shared(
        https_config(&url, Some("s3cret-device-token"), tls),
        &spool,
        CancellationToken::new(),
    );
    let summary = run_fleet(sh, simulated(1, 60, 5)).await.unwrap();
    assert_eq!(summary.stats.readings_acked, 60);
    let g = srv.inner.lock().unwrap();
    assert_eq!(g.stored.len(), 60);
    assert!(g.requests >= 3);
    assert!(
        g.auth
            .iter()
            .all(|a| a.as_deref() == Some("Bearer s3cret-device-token")),
        "{:?}",
        g.auth
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_ca_fails_with_a_clear_error_and_keeps_the_spool() {
    let dir = tempfile::tempdir().unwrap();
    let server_pki = pki(dir.path(), "server-side");
    let other = pki(dir.path(), "other");
    let (url, srv, handshakes) = https_server(&server_pki, false).await;
    let tls = TlsFiles {
        ca_cert: Some(other.ca_pem.clone()),
        ..TlsFiles::default()
    };
    let spool = dir.path().join("spool");
    let sh = shared(
        https_config(&url, None, tls),
        &spool,
        CancellationToken::new(),
    );
    let err = run_fleet(sh, simulated(1, 30, 6)).await.unwrap_err();
    let text = format!("{err:#}");
    println!("{text}");
    assert!(
        text.contains(sim_vin(6, 0).as_str())
            && text.contains("certificate")
            && text.contains("--ca-cert"),
        "{text}"
    );
    assert_eq!(srv.inner.lock().unwrap().requests, 0);
    // The server notes the failed handshake on its own task: wait for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while handshakes.lock().unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the edge never tried");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(Spool::open(&spool).unwrap().count() > 0, "nothing dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_presented_for_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path(), "mtls");
    let (url, srv, handshakes) = https_server(&pki, true).await;
    let tls = TlsFiles {
        ca_cert: Some(pki.ca_pem.clone()),
        client_cert: Some(pki.client_pem.clone()),
        client_key: Some(pki.client_key_pem.clone()),
    };
    let spool = dir.path().join("spool");
    let sh = shared(
        https_config(&url, None, tls),
        &spool,
        CancellationToken::new(),
    );
    let summary = run_fleet(sh, simulated(1, 30, 7)).await.unwrap();
    assert_eq!(summary.stats.readings_acked, 30);
    assert_eq!(srv.inner.lock().unwrap().stored.len(), 30);
    let seen = handshakes.lock().unwrap();
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|h| *h == Ok(Some(1))),
        "every connection presented the client certificate: {seen:?}"
    );
}
