//! A TCP proxy that can black-hole its target: [`StallProxy::stall`] stops
//! forwarding in both directions WITHOUT closing anything — connections stay
//! open, new ones are accepted and left waiting — as a database behind a
//! dead network path looks. [`StallProxy::resume`] forwards again, data held
//! meanwhile included.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A loopback proxy to `target`, running until dropped.
pub struct StallProxy {
    /// The proxy's address, `127.0.0.1:PORT`.
    pub addr: String,
    flowing: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StallProxy {
    pub async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (flowing, _) = watch::channel(true);
        let tx = flowing.clone();
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut gate = tx.subscribe();
                let target = target.clone();
                tokio::spawn(async move {
                    if gate.wait_for(|f| *f).await.is_err() {
                        return;
                    }
                    let Ok(server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, gate.clone()), pump(sr, cw, gate),);
                });
            }
        });
        Self {
            addr,
            flowing,
            task,
        }
    }

    /// Stops forwarding; nothing is closed.
    pub fn stall(&self) {
        self.flowing.send_replace(false);
    }

    /// Forwards again.
    pub fn resume(&self) {
        self.flowing.send_replace(true);
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies while the gate is open; holds what it read while it is shut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if gate.wait_for(|f| *f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            r = from.read(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            // Stalled while waiting to read: stop reading too.
            _ = gate.wait_for(|f| !*f) => continue,
        };
        if gate.wait_for(|f| *f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
