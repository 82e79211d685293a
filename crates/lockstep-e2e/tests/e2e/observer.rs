//! A dashboard-like WebSocket client of one server instance, recording the
//! live readings it hears (and every way it was told it missed some), and the
//! stored rows in the same terms, to compare the two.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::StoredRow;

/// What the WebSocket observer saw: live readings as (VIN, session hex, seq),
/// and every way it was told it missed some.
#[derive(Default)]
pub struct Observed {
    pub readings: Vec<(String, String, u64)>,
    /// `gap` and `lagged` messages.
    pub notices: u32,
    /// Sockets that closed or failed (the client knows it missed what followed).
    pub closes: u32,
    /// Sockets that got their first message (the `history` greeting): from then
    /// on the client hears every commit.
    pub greeted: u32,
}

/// A dashboard-like client of `/ws` on `port`, reconnecting whenever its
/// socket closes, until the returned task is aborted.
pub fn observe(port: u16) -> (Arc<Mutex<Observed>>, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Observed::default()));
    let tally = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let url = format!("ws://127.0.0.1:{port}/ws");
            if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await {
                let mut first = true;
                while let Some(Ok(m)) = ws.next().await {
                    let Message::Text(t) = m else { continue };
                    if std::mem::take(&mut first) {
                        tally.lock().unwrap().greeted += 1;
                    }
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&t) else {
                        continue;
                    };
                    let mut o = tally.lock().unwrap();
                    match v["type"].as_str() {
                        Some("telemetry") => {
                            let d = &v["data"];
                            o.readings.push((
                                d["vehicle_vin"].as_str().unwrap_or_default().to_owned(),
                                d["session_id"].as_str().unwrap_or_default().to_owned(),
                                d["seq"].as_u64().unwrap_or(u64::MAX),
                            ));
                        }
                        Some("gap" | "lagged") => o.notices += 1,
                        _ => {}
                    }
                }
            }
            tally.lock().unwrap().closes += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    (seen, task)
}

/// The stored readings of `vin` as the live stream names them.
pub fn stream_keys(vin: &str, rows: &[StoredRow]) -> HashSet<(String, String, u64)> {
    rows.iter()
        .map(|r| {
            (
                vin.to_owned(),
                format!("{:016x}", r.session_id as u64),
                r.seq as u64,
            )
        })
        .collect()
}

/// Waits (at most 30 s) until every observer has been greeted on its socket.
pub async fn wait_greeted(observers: &[Arc<Mutex<Observed>>]) {
    crate::harness::eventually(
        Duration::from_secs(30),
        "WebSocket observers greeted",
        || async {
            observers
                .iter()
                .all(|o| o.lock().unwrap().greeted > 0)
                .then_some(())
        },
    )
    .await;
}
