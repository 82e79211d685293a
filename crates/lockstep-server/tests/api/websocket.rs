//! WebSocket: history on connect, live telemetry after commit, statistics,
//! the VIN filter, and isolation from a client that never reads.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::both_stores;
use crate::helpers::*;

both_stores!(
    history_then_live_telemetry_and_stats,
    a_full_history_arrives_in_small_chunks,
    every_new_client_history_holds_every_acknowledged_reading,
    subscribe_filters_by_vin,
    a_client_that_never_reads_stalls_neither_ingest_nor_others,
);

const T0: i64 = 1_764_000_000_000;
const WAIT: Duration = Duration::from_secs(10);

async fn history_then_live_telemetry_and_stats(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(4);
    let mut enc = encoder(&v, 0xabc);
    assert_eq!(
        app.post_batch(&batch(&mut enc, 0..5, T0)).await.status(),
        200
    );

    let mut ws = app.ws().await;
    let history = ws.next_json(WAIT).await;
    assert_eq!(history["type"], "history");
    let items = history["data"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert_eq!(items[0]["seq"], 0, "oldest first");
    assert_eq!(items[4]["seq"], 4);
    assert_eq!(items[0]["vehicle_vin"], v.as_str());
    assert_eq!(items[0]["timestamp"], T0);
    assert_eq!(items[0]["session_id"], "0000000000000abc");
    assert!(
        items[0]["transmitted"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == "speed")
    );

    assert_eq!(
        app.post_batch(&batch(&mut enc, 5..8, T0)).await.status(),
        200
    );
    let t = ws.until(WAIT, "telemetry", |_| true).await;
    assert_eq!(t["data"]["seq"], 5);
    assert_eq!(t["data"]["timestamp"], T0 + 5000);
    for key in [
        "speed",
        "battery",
        "power",
        "heading",
        "latitude",
        "longitude",
        "altitude",
        "transmitted",
        "predicted_fields",
    ] {
        assert!(t["data"].get(key).is_some(), "telemetry lacks {key}");
    }
    let t = ws.until(WAIT, "telemetry", |_| true).await;
    assert_eq!(t["data"]["seq"], 6, "in order");

    // An earlier tick may report the first 5 readings; the statistics converge on 8.
    let s = ws
        .until(WAIT, "compression_stats", |m| {
            m["data"]["vehicles"][&v]["readings"] == 8
        })
        .await;
    let c = &s["data"]["vehicles"][&v];
    assert_eq!(
        c["fields_total"].as_u64().unwrap(),
        c["fields_transmitted"].as_u64().unwrap() + c["fields_skipped"].as_u64().unwrap()
    );
    assert!(c["bytes_received"].as_u64().unwrap() > 0);
    assert!(s["data"]["total_readings"].as_u64().unwrap() > 0);
    assert_eq!(app.status().await["ws_clients"], 1);
}

/// The history (100 readings by default) comes as consecutive `history`
/// messages of at most 3 KiB, oldest first, every reading once.
async fn a_full_history_arrives_in_small_chunks(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(6);
    let mut enc = encoder(&v, 0x6);
    app.post_readings(&mut enc, 0..150, T0).await;

    let mut ws = app.ws().await;
    let (mut seqs, mut chunks) = (Vec::new(), 0);
    let next = loop {
        let m = tokio::time::timeout(WAIT, ws.stream.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("ok");
        let Message::Text(t) = m else { continue };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        if v["type"] != "history" {
            break v;
        }
        assert!(
            t.len() <= 3 * 1024,
            "a history message of {} bytes",
            t.len()
        );
        chunks += 1;
        seqs.extend(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seq"].as_u64().unwrap()),
        );
    };
    assert!(chunks > 1, "{chunks} history message(s)");
    assert_eq!(
        seqs,
        (50..150).collect::<Vec<u64>>(),
        "the latest 100, oldest first"
    );
    assert_eq!(
        next["type"], "compression_stats",
        "statistics follow the history"
    );
}

async fn subscribe_filters_by_vin(backend: Backend) {
    let app = spawn_app(backend).await;
    let (a, b) = (vin(10), vin(11));
    let mut ws = app.ws().await;
    assert_eq!(ws.next_json(WAIT).await["type"], "history");
    ws.send_json(json!({"type": "subscribe", "vins": [a]}))
        .await;
    // Client messages are handled in order: once the answer to an unknown
    // message arrives, the subscription is in force.
    barrier(&mut ws).await;

    let mut enc_a = encoder(&a, 1);
    let mut enc_b = encoder(&b, 2);
    assert_eq!(
        app.post_batch(&batch(&mut enc_b, 0..20, T0)).await.status(),
        200
    );
    assert_eq!(
        app.post_batch(&batch(&mut enc_a, 0..20, T0)).await.status(),
        200
    );
    for seq in 0..20u64 {
        let m = ws.until(WAIT, "telemetry", |_| true).await;
        assert_eq!(
            m["data"]["vehicle_vin"],
            a.as_str(),
            "a telemetry message of an unsubscribed vehicle arrived"
        );
        assert_eq!(m["data"]["seq"], seq);
    }

    // Empty list = all vehicles again.
    ws.send_json(json!({"type": "subscribe", "vins": []})).await;
    barrier(&mut ws).await;
    assert_eq!(
        app.post_batch(&batch(&mut enc_b, 20..21, T0))
            .await
            .status(),
        200
    );
    let m = ws.until(WAIT, "telemetry", |_| true).await;
    assert_eq!(m["data"]["vehicle_vin"], b.as_str());
}

/// Sends an unknown message and waits for the server's answer to it.
async fn barrier(ws: &mut Ws) {
    ws.send_json(json!({"type": "dance"})).await;
    let log = ws
        .until(WAIT, "log", |m| {
            m["data"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("unrecognised")
        })
        .await;
    assert_eq!(log["data"]["level"], "warn");
}

async fn a_client_that_never_reads_stalls_neither_ingest_nor_others(backend: Backend) {
    let db = std::sync::Arc::new(TestDb::new(backend).await);
    let app = spawn_app_with(db, &["--ws-queue", "64"]).await;
    // The stuck client: a raw TCP socket with a tiny receive buffer that never reads.
    let stuck = {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let tcp = sock
            .connect(format!("127.0.0.1:{}", app.port).parse().unwrap())
            .await
            .unwrap();
        let (ws, _) = tokio_tungstenite::client_async(
            format!("ws://127.0.0.1:{}/ws", app.port),
            tokio_tungstenite::MaybeTlsStream::Plain(tcp),
        )
        .await
        .unwrap();
        ws
    };
    let mut good = app.ws().await;
    assert_eq!(good.next_json(WAIT).await["type"], "history");
    eventually(WAIT, "both clients registered", || async {
        (app.status().await["ws_clients"] == 2).then_some(())
    })
    .await;

    // ~3 MB of telemetry messages: far beyond the stuck client's buffers and queue.
    let v = vin(20);
    let mut enc = encoder(&v, 3);
    let n = 10_000usize;
    let started = Instant::now();
    // The reading client's progress, so the test can send at its pace.
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen = progress.clone();
    let mut reader = tokio::spawn(async move {
        let (mut last, mut received, mut lagged) = (0u64, 0u64, 0u64);
        while last + 1 < n as u64 {
            let m = good.next_json(WAIT).await;
            match m["type"].as_str() {
                Some("telemetry") => {
                    last = m["data"]["seq"].as_u64().unwrap();
                    received += 1;
                    seen.store(received, std::sync::atomic::Ordering::SeqCst);
                }
                Some("lagged") => lagged += m["data"]["dropped"].as_u64().unwrap(),
                _ => {}
            }
        }
        (last, received, lagged)
    });
    // Batches of 50 readings, each sent once the reading client has the one
    // before: its queue (64) never holds more than one commit, so it must
    // lose nothing however slow the machine, while the stuck client's
    // queue overflows. (With 500-reading commits, larger than the queue, the
    // reading client lost ~8,700 of 10,000 messages: every client lags then.)
    let per_batch = 50;
    for b in 0..(n / per_batch) {
        let resp = app
            .post_batch(&batch(&mut enc, b * per_batch..(b + 1) * per_batch, T0))
            .await;
        assert_eq!(resp.status(), 200);
        let want = ((b + 1) * per_batch) as u64;
        eventually(WAIT, "the reading client to get the batch", || async {
            (progress.load(std::sync::atomic::Ordering::SeqCst) >= want).then_some(())
        })
        .await;
    }
    let ingest = started.elapsed();
    assert!(ingest < Duration::from_secs(30), "ingest took {ingest:?}");
    let (last, received, lagged) = tokio::time::timeout(WAIT, &mut reader)
        .await
        .expect("the reading client got the last reading in time")
        .unwrap();
    assert_eq!(last, n as u64 - 1);
    assert_eq!(
        lagged, 0,
        "the reading client lost messages to the stuck one"
    );
    assert_eq!(
        received, n as u64,
        "the reading client got every reading once"
    );
    assert_eq!(
        app.db.count("SELECT COUNT(*) FROM telemetry_data").await,
        n as i64
    );
    // The stuck client lost its oldest messages instead of holding anyone
    // up: once it reads, a `lagged` message says how many. (The server counts
    // them in `ws_dropped_messages` only then, not while the client is stuck.)
    let mut stuck = Ws { stream: stuck };
    let dropped = stuck
        .until(WAIT, "lagged", |m| m["data"]["dropped"].as_u64() > Some(0))
        .await["data"]["dropped"]
        .as_u64()
        .unwrap();
    let status = app.status().await;
    assert!(
        status["ws_dropped_messages"].as_u64() >= Some(dropped),
        "{dropped} dropped for the stuck client: {status}"
    );
}

/// A client that stops reading is disconnected once a burst stays unwritten
/// for the send timeout (its socket buffers are full), counted in `/status`;
/// the messages it lost are counted while it is stuck, not when it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected() {
    let db = std::sync::Arc::new(TestDb::new(Backend::Sqlite).await);
    let app = spawn_app_with(
        db,
        &[
            "--ws-queue",
            "64",
            "--ws-send-timeout-s",
            "1",
            "--device-readings-per-s",
            "0",
            "--ip-requests-per-s",
            "0",
        ],
    )
    .await;
    let mut stuck = stuck_client(app.port).await;
    eventually(WAIT, "the client registered", || async {
        (app.status().await["ws_clients"] == 1).then_some(())
    })
    .await;
    // Readings until the kernel's socket buffers (several MB) are full and a
    // burst stays unwritten for the 1 s send timeout.
    let mut enc = encoder(&vin(21), 4);
    let mut status = serde_json::Value::Null;
    for b in 0..400 {
        let resp = app
            .post_batch(&batch(&mut enc, b * 500..(b + 1) * 500, T0))
            .await;
        assert_eq!(resp.status(), 200);
        status = app.status().await;
        if status["ws_slow_disconnects"] == 1 {
            break;
        }
    }
    assert_eq!(status["ws_slow_disconnects"], 1, "{status}");
    eventually(WAIT, "the client gone", || async {
        (app.status().await["ws_clients"] == 0).then_some(())
    })
    .await;
    assert!(
        status["ws_dropped_messages"].as_u64().unwrap() > 0,
        "{status}"
    );
    // What was buffered can still be read, then the connection ends.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(Ok(_)) = stuck.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the server closed the connection");
}

/// While readings stream in, a client's writes are kept `--ws-linger-ms`
/// apart: readings committed one by one right after a write wait for the
/// next one, and arrive there in order, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_readings_wait_for_the_next_paced_write() {
    let db = std::sync::Arc::new(TestDb::new(Backend::Sqlite).await);
    let linger = Duration::from_millis(1000);
    let app = spawn_app_with(
        db,
        &[
            "--ws-linger-ms",
            "1000",
            "--device-requests-per-s",
            "0",
            "--ip-requests-per-s",
            "0",
        ],
    )
    .await;
    let mut ws = app.ws().await;
    barrier(&mut ws).await;
    let mut enc = encoder(&vin(22), 7);
    assert_eq!(
        app.post_batch(&batch(&mut enc, 0..1, T0)).await.status(),
        200
    );
    let first = ws.until(WAIT, "telemetry", |_| true).await;
    let written = Instant::now();
    assert_eq!(first["data"]["seq"], 0);
    // Three commits, each published on its own, inside the pause.
    for s in 1..4 {
        assert_eq!(
            app.post_batch(&batch(&mut enc, s..s + 1, T0))
                .await
                .status(),
            200
        );
    }
    let mut seqs = Vec::new();
    while seqs.len() < 3 {
        let m = ws.until(WAIT, "telemetry", |_| true).await;
        if seqs.is_empty() {
            // Half the pause: the first write's own delivery may have been late.
            assert!(
                written.elapsed() >= linger / 2,
                "written {:?} after the previous one",
                written.elapsed()
            );
        }
        seqs.push(m["data"]["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [1, 2, 3]);
}

/// A client message over 64 KiB is answered with close code 1009, not 1001.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_client_message_is_closed_with_1009() {
    let app = spawn_app(Backend::Sqlite).await;
    let mut ws = app.ws().await;
    assert_eq!(ws.next_json(WAIT).await["type"], "history");
    let big = format!(
        r#"{{"type":"subscribe","vins":["{}"]}}"#,
        "X".repeat(70 * 1024)
    );
    ws.stream.send(Message::Text(big.into())).await.unwrap();
    let code = tokio::time::timeout(WAIT, async {
        loop {
            match ws.stream.next().await {
                Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("a close in time");
    assert_eq!(code, Some(1009));
}

/// A WebSocket client on a raw TCP socket with a tiny receive buffer, for a
/// client that never reads.
async fn stuck_client(port: u16) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let tcp = sock
        .connect(format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://127.0.0.1:{port}/ws"), tcp)
        .await
        .unwrap();
    ws
}

/// The `seq`s of the `history` messages a new client gets first.
async fn history_seqs(ws: &mut Ws) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        let m = ws.next_json(WAIT).await;
        if m["type"] != "history" {
            return seqs;
        }
        seqs.extend(
            m["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["seq"].as_u64().unwrap()),
        );
    }
}

/// The history is read once and shared by the clients that connect until
/// the next commit; a client connecting right after an acknowledgement still
/// finds that reading in it, and clients connecting together all do. The
/// readings are sent while no client is connected, so no live copy of them
/// is published: only the commit itself can renew the shared history.
async fn every_new_client_history_holds_every_acknowledged_reading(backend: Backend) {
    let app = spawn_app(backend).await;
    let v = vin(7);
    let mut enc = encoder(&v, 0x7);
    assert_eq!(
        app.post_batch(&batch(&mut enc, 0..5, T0)).await.status(),
        200
    );
    let mut first = app.ws().await;
    assert_eq!(history_seqs(&mut first).await, (0..5).collect::<Vec<u64>>());
    let mut clients = vec![first];
    for n in 5..8 {
        for mut ws in clients.drain(..) {
            ws.stream.close(None).await.unwrap();
        }
        eventually(WAIT, "no client connected", || async {
            (app.status().await["ws_clients"] == 0).then_some(())
        })
        .await;
        assert_eq!(
            app.post_batch(&batch(&mut enc, n..n + 1, T0))
                .await
                .status(),
            200
        );
        clients = futures_util::future::join_all((0..4).map(|_| app.ws())).await;
        for ws in &mut clients {
            assert_eq!(
                history_seqs(ws).await,
                (0..=n as u64).collect::<Vec<u64>>(),
                "a client connecting after reading {n} was acknowledged"
            );
        }
    }
}
