//! A minimal HTTP/1.1 client over one hand-held connection (hyper's
//! low-level `conn` API): the harness decides exactly how many connections
//! exist and what each one carries; no pool sits in between.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderValue;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Why a request got no HTTP answer.
#[derive(Debug)]
pub enum HttpError {
    /// TCP connect or HTTP handshake failed.
    Connect(String),
    /// No answer within the timeout (the connection is dropped).
    Timeout,
    /// The connection broke mid-request.
    Io(String),
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "connect failed: {e}"),
            Self::Timeout => write!(f, "timed out"),
            Self::Io(e) => write!(f, "connection error: {e}"),
        }
    }
}

impl std::error::Error for HttpError {}

impl HttpError {
    /// Short label for the error table.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::Io(_) => "io",
        }
    }
}

/// An answer: status, `Retry-After` seconds if any, body.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub retry_after_s: Option<u64>,
    pub body: Bytes,
}

/// One HTTP/1.1 connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
    authorization: Option<HeaderValue>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Self, HttpError> {
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Err(_) => return Err(HttpError::Connect("TCP connect timed out".into())),
            Ok(r) => r.map_err(|e| HttpError::Connect(e.to_string()))?,
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| HttpError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Self {
            sender,
            host: addr.to_string(),
            authorization: None,
        })
    }

    /// Sends `Authorization: Bearer <token>` with every request from now on.
    pub fn with_bearer(mut self, token: Option<&str>) -> Result<Self, HttpError> {
        self.authorization = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {t}")))
            .transpose()
            .map_err(|_| HttpError::Connect("the token is not a valid header value".into()))?;
        Ok(self)
    }

    /// Sends one request and reads the whole answer, within `timeout`.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Answer, HttpError> {
        match tokio::time::timeout(
            timeout,
            self.request_inner(method, path, content_type, body),
        )
        .await
        {
            Err(_) => Err(HttpError::Timeout),
            Ok(r) => r,
        }
    }

    async fn request_inner(
        &mut self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<Answer, HttpError> {
        self.sender
            .ready()
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host);
        if let Some(ct) = content_type {
            req = req.header(hyper::header::CONTENT_TYPE, ct);
        }
        if let Some(auth) = &self.authorization {
            req = req.header(hyper::header::AUTHORIZATION, auth.clone());
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| HttpError::Io(e.to_string()))?;
        let resp = self
            .sender
            .send_request(req)
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?;
        let status = resp.status();
        let retry_after_s = resp
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| HttpError::Io(e.to_string()))?
            .to_bytes();
        Ok(Answer {
            status,
            retry_after_s,
            body,
        })
    }
}

/// One GET on a fresh connection, answer body as JSON (for `/status`).
pub async fn get_json(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(StatusCode, serde_json::Value), HttpError> {
    let mut c = Conn::connect(addr, timeout).await?;
    let a = c.request("GET", path, None, Bytes::new(), timeout).await?;
    let v = serde_json::from_slice(&a.body).unwrap_or(serde_json::Value::Null);
    Ok((a.status, v))
}
