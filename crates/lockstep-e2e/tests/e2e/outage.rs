//! PostgreSQL cut off from the server in the middle of a replay, by a TCP
//! proxy owned by the test (the machine's PostgreSQL is never touched): the
//! server answers 503 and says `degraded`, the edge backs off and keeps its
//! batches spooled, and once the proxy reopens everything lands exactly once.

use std::time::Duration;

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_cut_off_mid_replay_gives_503_then_catches_up() {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let total = trip.readings.len() as i64;
    let proxy = Proxy::start(PG_ADDR.to_owned()).await;
    // At debug level the server logs every 503 it answers ("Answering 503: …").
    let server = Server::start_logging(
        &db.url_via(&proxy.addr),
        &["--retry-after-s", "1"],
        "info,lockstep_server=debug",
    )
    .await;
    let answered_503 = |s: &Server| s.log().matches("Answering 503").count();
    let mut edge = Edge::replay(&server.base(), SHORT_TRIP, &PACE_100);
    wait_for_readings(&db, 200).await;

    proxy.close();
    // The server notices at its next commit and says so; the edge gets 503s.
    let status = eventually(Duration::from_secs(20), "/status degraded", || async {
        server.status().await.filter(|s| s["status"] == "degraded")
    })
    .await;
    assert_eq!(status["store"]["healthy"], false, "{status}");
    let at_cut = db.readings().await;
    assert!(
        at_cut < total,
        "the replay finished before the cut: slow it down"
    );
    eventually(Duration::from_secs(20), "the edge to get a 503", || async {
        edge.stderr().contains("HTTP 503").then_some(())
    })
    .await;
    // Keep the database away while the edge retries (Retry-After: 1 s) a few times.
    eventually(Duration::from_secs(30), "three 503 answers", || async {
        (answered_503(&server) >= 3).then_some(())
    })
    .await;
    let degraded = server.status().await.unwrap();
    assert_eq!(degraded["status"], "degraded", "still degraded: {degraded}");
    let at_reopen = db.readings().await;
    assert_eq!(
        at_reopen, at_cut,
        "nothing is stored while the database is cut off"
    );

    proxy.reopen();
    eventually(Duration::from_secs(30), "/status healthy again", || async {
        server
            .status()
            .await
            .filter(|s| s["status"] == "healthy")
            .map(drop)
    })
    .await;
    let summary = edge.finish(Duration::from_secs(90)).await;
    let final_count = db.readings().await;
    let n503 = answered_503(&server);
    println!("{}", summary.text);
    println!(
        "PostgreSQL cut test: rows at the cut {at_cut}, when reopened {at_reopen}, final {final_count} \
         (of {total}); 503 answers logged by the server {n503}; edge retries {}, resyncs {}, duplicates acknowledged {}",
        summary.retries, summary.resyncs, summary.duplicates,
    );
    assert!(
        summary.retries >= 3,
        "the edge retried each 503 it got ({} retries)",
        summary.retries
    );
    assert_eq!(summary.acknowledged, total as u64);
    assert_eq!(summary.spool_left, 0);

    assert_trip_stored(&db, &vin, &trip).await;
    assert_eq!(final_count, total);
}
