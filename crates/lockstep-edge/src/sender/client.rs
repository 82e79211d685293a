//! The HTTP client (device token, TLS through rustls with an optional custom
//! CA and client certificate) and the classification of its answers.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

use super::{Reply, SenderConfig};

/// Builds the client every vehicle shares. Certificates are read here, so a
/// missing or malformed file stops the run before it starts.
pub fn build(config: &SenderConfig) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(config.request_timeout)
        .user_agent(concat!("lockstep-edge/", env!("CARGO_PKG_VERSION")));
    if let Some(token) = &config.token {
        let mut v = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .context("the device token has characters that cannot go in an HTTP header")?;
        v.set_sensitive(true);
        b = b.default_headers(HeaderMap::from_iter([(AUTHORIZATION, v)]));
    }
    let tls = &config.tls;
    if let Some(path) = &tls.ca_cert {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read the CA certificate {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("{} is not a PEM certificate", path.display()))?;
        ensure!(
            !certs.is_empty(),
            "{} holds no PEM certificate",
            path.display()
        );
        b = b.tls_certs_merge(certs);
    }
    match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => {
            let mut pem = std::fs::read(cert).with_context(|| {
                format!("cannot read the client certificate {}", cert.display())
            })?;
            pem.push(b'\n');
            pem.extend(
                std::fs::read(key)
                    .with_context(|| format!("cannot read the client key {}", key.display()))?,
            );
            let id = reqwest::Identity::from_pem(&pem).with_context(|| {
                format!(
                    "{} and {} are not a PEM certificate and its private key",
                    cert.display(),
                    key.display()
                )
            })?;
            b = b.identity(id);
        }
        (None, None) => {}
        _ => anyhow::bail!("a client certificate needs both --client-cert and --client-key"),
    }
    Ok(b.build()?)
}

/// Classifies an answer.
pub async fn classify(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let text = resp.text().await.unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
    let message = json
        .get("error")
        .and_then(|e| e.as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| text.chars().take(200).collect());
    match status.as_u16() {
        200..=299 => Reply::Ack {
            duplicate: json
                .get("duplicate")
                .and_then(|d| d.as_bool())
                .unwrap_or(false),
        },
        409 if json.get("resync_required").and_then(|v| v.as_bool()) == Some(true) => {
            Reply::Resync {
                kind: json
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or("unknown")
                    .to_owned(),
                next_seq: json.get("next_seq").and_then(|n| n.as_u64()),
            }
        }
        // Asked to slow down: the same server, later.
        408 | 429 => Reply::Retry {
            after: retry_after,
            why: format!("HTTP {status}: {message}"),
            failover: false,
        },
        500..=599 => Reply::Retry {
            after: retry_after,
            why: format!("HTTP {status}: {message}"),
            failover: true,
        },
        413 => Reply::TooLarge { message },
        401 | 403 => Reply::Fatal {
            why: format!(
                "the server refused this device (HTTP {status}: {message}); check --token (LOCKSTEP_DEVICE_TOKEN) or the client certificate"
            ),
        },
        s => Reply::Reject { status: s, message },
    }
}

/// Classifies a request that got no answer: retried (and failed over),
/// except a certificate the edge does not trust, which retrying cannot fix.
pub fn classify_error(url: &str, e: &reqwest::Error) -> Reply {
    let chain = error_chain(e);
    if chain.contains("certificate") || chain.contains("Certificate") {
        return Reply::Fatal {
            why: format!(
                "the TLS handshake with {url} failed ({chain}); if the server's certificate is signed by a private CA, trust it with --ca-cert (LOCKSTEP_CA_CERT)"
            ),
        };
    }
    Reply::Retry {
        after: None,
        why: format!("request failed: {chain}"),
        failover: true,
    }
}

/// `e` and its causes, joined with ": " (reqwest's own text says only "error
/// sending request").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}
