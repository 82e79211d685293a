//! Waiting for a spawned `lockstep-server` to answer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// Polls `GET /status` at `addr` every 50 ms until it answers 2xx. `exited`
/// reports whether the process ended meanwhile (its exit status as text), so
/// a server that dies at start-up is reported at once, not after `within`.
pub async fn wait_for_status(
    addr: SocketAddr,
    within: Duration,
    mut exited: impl FnMut() -> Option<String>,
) -> Result<(), String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = exited() {
            return Err(format!("lockstep-server exited during start-up ({status})"));
        }
        if let Ok(Ok(true)) = timeout(Duration::from_secs(2), status_ok(addr)).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "lockstep-server did not answer GET /status within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `GET /status` over plain HTTP/1.1: whether the status line says 2xx.
async fn status_ok(addr: SocketAddr) -> std::io::Result<bool> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await?;
    Ok(head.starts_with(b"HTTP/1.1 2"))
}
