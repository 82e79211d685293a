//! Replays of a recorded Twizy trip: every reading stored exactly once and
//! within the catalog's tolerance of what the edge replayed — also when the
//! server is SIGKILLed in the middle and started again.

use std::time::Duration;

use crate::harness::*;

/// Replays `file` as fast as the server acknowledges and checks the store.
async fn replay_lands_exactly_once(db: Db, file: &str) -> Summary {
    let (vin, trip) = expected_trip(file);
    let server = Server::start(&db.url(), &[]).await;
    let mut edge = Edge::replay(&server.base(), file, &["--as-fast-as-possible"]);
    let summary = edge.finish(Duration::from_secs(60)).await;
    println!("{}", summary.text);
    assert_eq!(summary.produced, trip.readings.len() as u64);
    assert_eq!(summary.acknowledged, summary.produced);
    assert_eq!((summary.spool_left, summary.rejected), (0, 0));

    assert_trip_stored(&db, &vin, &trip).await;
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_postgres() {
    replay_lands_exactly_once(Db::postgres().await, SHORT_TRIP).await;
}

/// Two trips in one replay: two vehicles (VINs derived from the file names),
/// sent concurrently, each stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_trips_replay_as_two_vehicles() {
    const SECOND: &str = "T3_06_07_2021.csv";
    let db = Db::postgres().await;
    let trips = [expected_trip(SHORT_TRIP), expected_trip(SECOND)];
    assert_ne!(trips[0].0, trips[1].0, "one VIN per file");
    let server = Server::start(&db.url(), &[]).await;
    let second = testdata(&format!("twizy-ev/{SECOND}"));
    let mut edge = Edge::replay(
        &server.base(),
        SHORT_TRIP,
        &["--as-fast-as-possible", second.to_str().unwrap()],
    );
    let summary = edge.finish(Duration::from_secs(60)).await;
    assert!(summary.text.contains("vehicles: 2"), "{}", summary.text);
    let total: usize = trips.iter().map(|(_, t)| t.readings.len()).sum();
    assert_eq!(summary.acknowledged, total as u64);
    assert_trips_stored(&db, &trips).await;
}

/// On SQLite, a longer trip (5200 rows) whose log has 34 corrupt dates: the
/// repaired rows land once each, at the timestamps the edge rebuilt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_on_sqlite_with_corrupt_dates() {
    let dir = tempfile::tempdir().unwrap();
    let summary = replay_lands_exactly_once(Db::sqlite(dir.path()), REPAIRED_TRIP).await;
    assert!(
        summary.text.contains("34 corrupt timestamps repaired"),
        "the summary reports the repairs:\n{}",
        summary.text
    );
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
    let mut edge = Edge::replay(&server.base(), SHORT_TRIP, &PACE_100);
    let mut counts = Vec::new();
    for (kill, at) in [200, 600].into_iter().enumerate() {
        wait_for_readings(&db, at).await;
        server.kill();
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

    assert_trip_stored(&db, &vin, &trip).await;
    assert_eq!(final_count, total);
}

/// SIGKILL the edge in the middle of a replay and start a new one on the same
/// spool: it sends what the killed one left spooled, resumes the file after its
/// cursor, and the server's dedupe absorbs batches that were committed but whose
/// acknowledgement the killed edge never saw. Every reading exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_sigkill_mid_replay_resumes_from_its_spool() {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let total = trip.readings.len() as i64;
    let server = Server::start(&db.url(), &[]).await;
    let spool = tempfile::tempdir().unwrap();
    // Small batches at 200×: a request is in flight much of the time.
    let args = PACE_200;
    let mut first = Edge::replay_spooled(&server.base(), SHORT_TRIP, Some(spool.path()), &args);
    wait_for_readings(&db, 300).await;
    first.kill();
    let at_kill = db.readings().await;
    assert!(
        at_kill < total,
        "the replay finished before the kill ({at_kill} of {total}): slow it down"
    );

    let mut second = Edge::replay_spooled(&server.base(), SHORT_TRIP, Some(spool.path()), &args);
    let summary = second.finish(Duration::from_secs(60)).await;
    let final_count = db.readings().await;
    println!("{}", summary.text);
    println!(
        "edge kill test: rows at the kill {at_kill}, final {final_count} (of {total}); \
         the second edge produced {} readings, duplicates acknowledged {}",
        summary.produced, summary.duplicates
    );
    assert!(
        summary.text.contains("resumed "),
        "the second edge resumed after the first one's cursor"
    );
    assert!(summary.produced < total as u64, "it did not start over");
    assert_eq!(summary.spool_left, 0);

    assert_trip_stored(&db, &vin, &trip).await;
    assert_eq!(final_count, total);
}

/// A batch is committed but its acknowledgement never reaches the edge (a
/// proxy between edge and server drops the response): the edge sends it again
/// and the server acknowledges it as a duplicate without storing it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acknowledgement_is_deduplicated() {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let server = Server::start(&db.url(), &[]).await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", server.port)).await;
    let mut edge = Edge::replay(&format!("http://{}", proxy.addr), SHORT_TRIP, &PACE_200);
    wait_for_readings(&db, 200).await;
    proxy.lose_responses(1);
    eventually(Duration::from_secs(20), "a response lost", || async {
        (proxy.lost() == 1).then_some(())
    })
    .await;
    let summary = edge.finish(Duration::from_secs(60)).await;
    println!("{}", summary.text);
    println!(
        "lost-ack test: {} responses lost; edge retries {}, duplicates acknowledged {}",
        proxy.lost(),
        summary.retries,
        summary.duplicates
    );
    assert_eq!(
        (summary.retries, summary.duplicates),
        (1, 1),
        "the batch whose acknowledgement was lost is sent once more and acknowledged as a duplicate"
    );
    assert_trip_stored(&db, &vin, &trip).await;
}

/// Replays [`SHORT_TRIP`] in the seed wire form (`--seed-wire`: one
/// `TelemetryReading` per POST, speed/battery/power/heading only).
async fn seed_wire_replay() -> SeedCheck {
    let db = Db::postgres().await;
    let (vin, trip) = expected_trip(SHORT_TRIP);
    let server = Server::start(&db.url(), &[]).await;
    let mut edge = Edge::replay(
        &server.base(),
        SHORT_TRIP,
        &["--as-fast-as-possible", "--seed-wire"],
    );
    let summary = edge.finish(Duration::from_secs(60)).await;
    println!("{}", summary.text);
    assert_eq!(summary.acknowledged, trip.readings.len() as u64);
    let stored = db.rows_of(&vin).await;
    let check = check_seed_rows(&trip.readings, &stored);
    println!(
        "seed wire: {} readings exactly once; {} recorded values out of the seed tolerance; \
         {} values absent from the recording stored as numbers (first: {:?})",
        stored.len(),
        check.out_of_tolerance.len(),
        check.invented.len(),
        check.invented.first()
    );
    check
}

/// The seed form: every reading exactly once, every recorded value within the
/// seed tolerance, and a value the recording does not have (the Twizy's power,
/// heading before the first GPS movement) stored as null, not invented
/// (finding F1, fixed in the edge by `SeedPredictor::encode_partial`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_wire_replay_on_postgres() {
    let check = seed_wire_replay().await;
    assert!(
        check.out_of_tolerance.is_empty(),
        "out of the seed tolerance: {:?}",
        &check.out_of_tolerance[..check.out_of_tolerance.len().min(10)]
    );
    assert!(
        check.invented.is_empty(),
        "{} absent values stored as numbers, e.g. {:?}",
        check.invented.len(),
        &check.invented[..check.invented.len().min(5)]
    );
}
