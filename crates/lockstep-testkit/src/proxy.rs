//! A loopback TCP proxy a test puts in front of a service (PostgreSQL, the
//! server) to stage outages and lost responses.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A loopback TCP proxy to `target`, owned by the test. It can drop every open
/// connection and refuse new ones (`close`) until `reopen`; drop every open
/// connection but accept new ones (`reset`); stop forwarding in both
/// directions while keeping every socket open (`black_hole`, a network path
/// that silently loses everything) until `restore`; and it can lose
/// responses: the next `n` chunks coming back from the target are not
/// forwarded, their connection is dropped instead (the request was served, the
/// client never hears of it).
pub struct Proxy {
    pub addr: String,
    open: Arc<watch::Sender<bool>>,
    hole: Arc<watch::Sender<bool>>,
    resets: Arc<watch::Sender<u64>>,
    to_lose: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let open = Arc::new(watch::Sender::new(true));
        let hole = Arc::new(watch::Sender::new(false));
        let resets = Arc::new(watch::Sender::new(0u64));
        let (to_lose, lost) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (gate, l, d) = (open.clone(), to_lose.clone(), lost.clone());
        let (h, r) = (hole.clone(), resets.clone());
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !*gate.borrow() {
                    drop(inbound); // refused: closed at once
                    continue;
                }
                let faults = Faults {
                    cut: gate.subscribe(),
                    hole: h.subscribe(),
                    reset: r.subscribe(),
                    to_lose: l.clone(),
                    lost: d.clone(),
                };
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(&target).await {
                        pipe(inbound, outbound, faults).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            open,
            hole,
            resets,
            to_lose,
            lost,
            task,
        }
    }

    /// Drops every connection and refuses new ones.
    pub fn close(&self) {
        self.open.send_replace(false);
    }

    pub fn reopen(&self) {
        self.open.send_replace(true);
    }

    /// Drops every open connection (both sides see it closed); new ones are accepted.
    pub fn reset(&self) {
        self.resets.send_modify(|g| *g += 1);
    }

    /// Stops forwarding in both directions, keeping every socket open, new
    /// ones included: whatever is sent waits, unanswered, until [`Proxy::restore`].
    pub fn black_hole(&self) {
        self.hole.send_replace(true);
    }

    /// Forwards again after [`Proxy::black_hole`].
    pub fn restore(&self) {
        self.hole.send_replace(false);
    }

    /// Loses the next `n` responses (see the type's documentation).
    pub fn lose_responses(&self, n: usize) {
        self.to_lose.fetch_add(n, Ordering::SeqCst);
    }

    /// Responses lost so far.
    pub fn lost(&self) -> usize {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one connection watches for.
struct Faults {
    cut: watch::Receiver<bool>,
    hole: watch::Receiver<bool>,
    reset: watch::Receiver<u64>,
    to_lose: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
}

/// Forwards both ways until either side ends, the proxy closes or resets, or a
/// response is lost; then both sockets are dropped. While black-holed nothing
/// is forwarded (what was read waits in the buffer).
async fn pipe(inbound: TcpStream, outbound: TcpStream, f: Faults) {
    let Faults {
        mut cut,
        hole,
        mut reset,
        to_lose,
        lost,
    } = f;
    let (mut client_rx, mut client_tx) = inbound.into_split();
    let (mut target_rx, mut target_tx) = outbound.into_split();
    let up = async {
        let mut hole = hole.clone();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            hole.wait_for(|h| !h).await.ok();
            let n = client_rx.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            hole.wait_for(|h| !h).await.ok();
            target_tx.write_all(&buf[..n]).await?;
        }
    };
    let down = async {
        let mut hole = hole.clone();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            hole.wait_for(|h| !h).await.ok();
            let n = target_rx.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            if to_lose
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |k| k.checked_sub(1))
                .is_ok()
            {
                lost.fetch_add(1, Ordering::SeqCst);
                return Ok(());
            }
            hole.wait_for(|h| !h).await.ok();
            client_tx.write_all(&buf[..n]).await?;
        }
    };
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.wait_for(|open| !open) => {}
        _ = reset.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// An echo server; returns its address.
    async fn echo() -> String {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        c.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        c.read_exact(&mut buf).await?;
        Ok(buf)
    }

    #[tokio::test]
    async fn black_hole_holds_data_until_restored_and_reset_closes() {
        let proxy = Proxy::start(echo().await).await;
        let mut c = TcpStream::connect(&proxy.addr).await.unwrap();
        assert_eq!(round_trip(&mut c, b"one").await.unwrap(), b"one");

        proxy.black_hole();
        c.write_all(b"two").await.unwrap();
        let mut buf = [0u8; 3];
        // Nothing comes back while black-holed (a bounded look, not a timing assertion
        // on success: the data must then arrive once restored).
        let held = tokio::time::timeout(Duration::from_millis(300), c.read_exact(&mut buf)).await;
        assert!(held.is_err(), "nothing is forwarded through a black hole");
        proxy.restore();
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"two", "held data arrives once restored");

        proxy.reset();
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest))
            .await
            .expect("a reset connection is closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without data");
        // New connections are accepted after a reset.
        let mut c2 = TcpStream::connect(&proxy.addr).await.unwrap();
        assert_eq!(round_trip(&mut c2, b"three").await.unwrap(), b"three");
    }
}
