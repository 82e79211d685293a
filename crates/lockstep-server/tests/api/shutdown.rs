//! Graceful shutdown: WebSocket clients get a Close frame, acknowledged
//! readings are in the store, `run` returns in time.

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
}
