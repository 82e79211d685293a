//! The HTTP/1.1 listener (hyper directly, so that every connection is
//! bounded): at most `max_connections` sockets at once — WebSockets included,
//! the permit lives as long as the socket — a further one is closed at once;
//! the TLS handshake and each request head must arrive within
//! `header_timeout`, which also closes keep-alive connections idle that long;
//! a request body that stalls for `body_timeout` is abandoned. With TLS, a
//! verified client certificate's names reach every request as [`PeerCert`],
//! and the peer address as axum's `ConnectInfo<SocketAddr>` either way.
//!
//! On shutdown it stops accepting, lets in-flight requests finish (each
//! connection closes after its current response) and returns when they have;
//! upgraded WebSockets are not waited for here (their tasks close them).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::http::peer::PeerCert;
use crate::tls::cert_names;

/// How the listener bounds its connections.
#[derive(Clone)]
pub struct ListenConfig {
    /// Open sockets at most (HTTP and WebSocket); further ones are closed at once.
    pub max_connections: usize,
    /// TLS handshake, each request head, and keep-alive idleness.
    pub header_timeout: Duration,
    /// Longest pause while a request body arrives.
    pub body_timeout: Duration,
    /// HTTPS/WSS when set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Counters of the listener, for `/status` and logs.
#[derive(Debug, Default)]
pub struct ListenStats {
    /// Connections closed at once because `max_connections` were open.
    pub refused: AtomicU64,
    full: AtomicBool,
}

/// Serves `router` on `listener` until `shutdown`, then drains (see the module doc).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ListenConfig,
    stats: Arc<ListenStats>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let conns = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: do not spin; the cap normally keeps us below the limit.
                    tracing::warn!(error = %e, "Accepting a connection failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if !stats.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    max = config.max_connections,
                    "Connection limit reached (LOCKSTEP_MAX_CONNECTIONS): new connections are closed until some end."
                );
            }
            drop(stream);
            continue;
        };
        stats.full.store(false, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let config = config.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        conns.spawn(async move {
            let Some(tls) = tls else {
                let io = Capped {
                    io: stream,
                    _permit: permit,
                };
                return connection(io, peer, None, router, &config, shutdown).await;
            };
            let accepted = tokio::time::timeout(config.header_timeout, tls.accept(stream)).await;
            let stream = match accepted {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed.");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out.");
                    return;
                }
            };
            let cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| PeerCert {
                    names: cert_names(c),
                });
            let io = Capped {
                io: stream,
                _permit: permit,
            };
            connection(io, peer, cert, router, &config, shutdown).await;
        });
    }
    conns.close();
    conns.wait().await;
}

/// Serves one connection until it ends, or ends it gracefully on shutdown.
async fn connection<IO>(
    io: IO,
    peer: SocketAddr,
    cert: Option<PeerCert>,
    router: Router,
    config: &ListenConfig,
    shutdown: CancellationToken,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = ServiceBuilder::new()
        .layer(RequestBodyTimeoutLayer::new(config.body_timeout))
        .map_request(move |mut req: Request<_>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            if let Some(c) = &cert {
                req.extensions_mut().insert(c.clone());
            }
            req
        })
        .service(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc))
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "Connection ended with an error.");
    }
}

/// A socket that holds its connection slot for as long as it lives (through
/// a WebSocket upgrade too).
struct Capped<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Capped<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Capped<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
