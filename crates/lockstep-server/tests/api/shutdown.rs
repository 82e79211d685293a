//! Graceful shutdown: WebSocket clients get a Close frame, acknowledged
//! readings and their statistics are in the store, `run` returns in time.

use std::time::Duration;

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::both_stores;
use crate::helpers::*;

both_stores!(shutdown_closes_websockets_and_keeps_acknowledged_readings,);

async fn shutdown_closes_websockets_and_keeps_acknowledged_readings(backend: Backend) {
    let app = spawn_app(backend).await;
    let mut ws = app.ws().await;
    assert_eq!(
        ws.next_json(Duration::from_secs(5)).await["type"],
        "history"
    );
    let mut enc = encoder(&vin(30), 9);
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert_eq!(
        app.post_batch(&batch(&mut enc, 0..100, 1_764_000_000_000))
            .await
            .status(),
        200
    );

    let db = app.stop().await;
    // The client sees a Close frame (possibly after queued messages), not a reset.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = ws.stream.next().await {
            match m {
                Ok(Message::Close(Some(f))) => return Some(f.code),
                Ok(Message::Close(None)) => return None,
                Ok(_) => continue,
                Err(e) => panic!("the socket broke instead of closing: {e}"),
            }
        }
        panic!("the socket ended without a Close frame")
    })
    .await
    .expect("a Close frame in time");
    assert_eq!(closed.map(u16::from), Some(1001));
    assert_eq!(db.count("SELECT COUNT(*) FROM telemetry_data").await, 100);
    // Statistics and receipt times are written once a second, and once
    // more when the writer stops: none are left in memory.
    assert_eq!(
        db.count("SELECT SUM(readings) FROM compression_stats")
            .await,
        100
    );
    let last_seen = db
        .count(&format!(
            "SELECT last_seen FROM vehicles WHERE vin = '{}'",
            vin(30)
        ))
        .await;
    assert!(last_seen >= sent_at, "last_seen {last_seen} < {sent_at}");
}

both_stores!(last_seen_and_statistics_follow_later_readings,);

/// A vehicle's `last_seen` rises with later readings and its statistics
/// add up, while the server runs (written once a second).
async fn last_seen_and_statistics_follow_later_readings(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(31);
    let mut enc = encoder(&v, 4);
    app.post_readings(&mut enc, 0..10, 1_764_000_000_000).await;
    app.stats_written().await;
    let seen = async || {
        app.db
            .count(&format!("SELECT last_seen FROM vehicles WHERE vin = '{v}'"))
            .await
    };
    let first = seen().await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    app.post_readings(&mut enc, 10..25, 1_764_000_000_000).await;
    app.stats_written().await;
    assert!(seen().await > first, "last_seen did not rise");
    assert_eq!(
        app.db
            .count("SELECT SUM(readings) FROM compression_stats")
            .await,
        25
    );
}
