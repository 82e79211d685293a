//! Replays of a recorded Twizy trip: every reading stored exactly once and
//! within the catalog's tolerance of what the edge replayed — also when the
//! server is SIGKILLed in the middle and started again.

use std::time::Duration;

use crate::harness::*;

/// Replays [`SHORT_TRIP`] as fast as the server acknowledges and checks the store.
async fn replay_lands_exactly_once(db: Db) {
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let server = Server::start(&db.url(), &[]).await;
    let mut edge = Edge::replay(&server.base(), SHORT_TRIP, &["--as-fast-as-possible"]);
    let summary = edge.finish(Duration::from_secs(60)).await;
    println!("{}", summary.text);
    assert_eq!(summary.produced, trip.readings.len() as u64);
    assert_eq!(summary.acknowledged, summary.produced);
    assert_eq!((summary.spool_left, summary.rejected), (0, 0));

    let stored = db.rows_of(&vin).await;
    assert_exactly_once_within_tolerance(&trip.readings, &stored);
    assert_eq!(
        db.readings().await,
        stored.len() as i64,
        "only this vehicle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_postgres() {
    replay_lands_exactly_once(Db::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    replay_lands_exactly_once(Db::sqlite(dir.path())).await;
}

/// SIGKILL the server while a replay is under way (twice: at 200 and at 600
/// committed readings), start it again on the same database and port each
/// time: the edge's spool, the server's persisted session state and its dedupe
/// still give every reading exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sigkill_mid_replay_loses_and_repeats_nothing() {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let total = trip.readings.len() as i64;
    let mut server = Server::start(&db.url(), &[]).await;
    // 1049 s of recording at 100× ≈ 10.5 s, in batches of 20 readings: rows arrive steadily.
    let mut edge = Edge::replay(
        &server.base(),
        SHORT_TRIP,
        &[
            "--speed",
            "100",
            "--batch-readings",
            "20",
            "--batch-delay-ms",
            "200",
        ],
    );
    let mut counts = Vec::new();
    for (kill, at) in [200, 600].into_iter().enumerate() {
        eventually(
            Duration::from_secs(30),
            &format!("{at} readings committed"),
            || async { (db.readings().await >= at).then_some(()) },
        )
        .await;
        server.kill().await;
        let before_kill = db.readings().await;
        assert!(
            before_kill < total,
            "the replay finished before the kill ({before_kill} of {total}): slow it down"
        );
        // The edge notices: its requests fail and it backs off ("… retrying.").
        eventually(
            Duration::from_secs(20),
            "the edge to see the server gone",
            || async { (edge.stderr().matches("retrying").count() > kill).then_some(()) },
        )
        .await;
        let while_down = db.readings().await;
        assert_eq!(
            while_down, before_kill,
            "nothing is stored while the server is dead"
        );

        server.spawn().await;
        let after_restart = db.readings().await;
        counts.push(format!(
            "kill {}: rows before kill {before_kill}, after restart {after_restart}",
            kill + 1
        ));
    }
    let summary = edge.finish(Duration::from_secs(90)).await;
    let final_count = db.readings().await;
    println!("{}", summary.text);
    println!(
        "kill test: {}; final {final_count} (of {total}); edge retries {}, resyncs {}, duplicates acknowledged {}",
        counts.join("; "),
        summary.retries,
        summary.resyncs,
        summary.duplicates
    );
    assert!(
        summary.retries >= 2,
        "the edge retried while the server was down"
    );
    assert_eq!(summary.acknowledged, total as u64);
    assert_eq!(summary.spool_left, 0);

    let stored = db.rows_of(&vin).await;
    assert_exactly_once_within_tolerance(&trip.readings, &stored);
    assert_eq!(final_count, total);
}
