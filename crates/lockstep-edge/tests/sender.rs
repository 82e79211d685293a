//! The sender against a tiny in-test server that runs the real decoder and
//! misbehaves on purpose: 503/429 with Retry-After, a lost acknowledgement, a
//! forgotten session (409 resync), 413, 401, an outage across an edge
//! restart, a server that goes away (failover). Whatever happens, every
//! reading must be stored exactly once, within tolerance, and a resync must
//! re-send from a keyframe.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lockstep_codec::Catalog;
use lockstep_edge::app::{self, Fleet};
use lockstep_edge::sender::{DeviceToken, SenderConfig};
use lockstep_edge::sim::{Vehicle, sim_vin};
use lockstep_edge::sources::{self, Format};
use lockstep_edge::spool::Spool;
use support::*;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_through_503_lost_acks_and_resyncs() {
    let (url, srv, _h) = spawn_server(|n, _| match n {
        2 | 9 => Fault::Unavailable,
        4 => Fault::LostAck,
        6 | 13 => Fault::ForgetSession,
        _ => Fault::None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let (vehicles, seconds) = (2usize, 300usize);
    let sh = shared(config(&url), dir.path(), CancellationToken::new());
    let fleet = Fleet::Simulate {
        vehicles,
        rate_hz: 1.0,
        duration_s: Some(seconds as f64),
        rng_seed: 11,
    };
    let summary = tokio::time::timeout(Duration::from_secs(60), app::run(sh, fleet, true, 1.0))
        .await
        .expect("finishes")
        .unwrap();
    println!("{summary}");

    let g = srv.inner.lock().unwrap();
    assert_eq!(g.double_stores, 0);
    assert_eq!(summary.stats.readings, (vehicles * seconds) as u64);
    assert_eq!(summary.stats.readings_acked, (vehicles * seconds) as u64);
    assert_eq!(summary.spool_left, 0);
    assert!(summary.stats.retries >= 3, "{:?}", summary.stats);
    assert!(summary.stats.resyncs >= 2, "{:?}", summary.stats);
    assert!(
        summary.stats.duplicates >= 1,
        "the lost ack came back as a duplicate: {:?}",
        summary.stats
    );
    assert!(g.conflicts >= 2);
    assert!(
        !g.resync_checks.is_empty() && g.resync_checks.iter().all(|&ok| ok),
        "resyncs restart at the first unacknowledged seq with a keyframe: {:?}",
        g.resync_checks
    );
    assert_retry_after_honoured(&g, 2);

    // Every reading exactly once, in tolerance of what the simulator produced.
    let catalog = Catalog::default_v1();
    for i in 0..vehicles {
        let vin = sim_vin(11, i).to_string();
        let rows: Vec<_> = g.stored.iter().filter(|(k, _)| k.0 == vin).collect();
        assert_eq!(
            rows.len(),
            seconds,
            "{vin}: one session, every reading once"
        );
        let mut v = Vehicle::new(11, i, 0, 1000);
        for (seq, (k, (_, got))) in rows.into_iter().enumerate() {
            assert_eq!(k.2, seq as u64);
            assert_within_tolerance(&catalog, &v.next_reading().values, got);
        }
    }
    assert_eq!(g.stored.len(), vehicles * seconds);
    // The spool is empty once everything is acknowledged.
    assert_eq!(Spool::open(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_across_an_edge_restart_loses_nothing() {
    // A recorded drive, written as a generic CSV.
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("drive.csv");
    let mut v = Vehicle::new(5, 0, 1_600_000_000_000, 1000);
    let readings: Vec<_> = (0..250).map(|_| v.next_reading()).collect();
    let mut text =
        String::from("timestamp_ms,speed,battery,power,heading,latitude,longitude,altitude\n");
    for r in &readings {
        let cells: Vec<String> = r
            .values
            .iter()
            .map(|x| x.map_or(String::new(), |x| format!("{x}")))
            .collect();
        text += &format!("{},{}\n", r.timestamp_ms, cells.join(","));
    }
    std::fs::write(&csv_path, text).unwrap();
    let trip = sources::load(Format::Csv, &csv_path).unwrap();
    assert_eq!(trip.readings.len(), 250);
    let spool_dir = dir.path().join("spool");

    // Run 1: nobody listens on this port. The edge retries, spools, and is stopped.
    let dead_url = dead_url();
    let cancel = CancellationToken::new();
    let sh = shared(config(&dead_url), &spool_dir, cancel.clone());
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        c2.cancel();
    });
    let s1 = replay(sh, &trip).await;
    println!("run 1:\n{s1}");
    assert!(s1.cancelled);
    assert_eq!(s1.stats.readings_acked, 0);
    assert!(s1.spool_left > 0, "batches stay spooled");
    assert!(s1.stats.retries > 0);
    let spooled_readings: usize = Spool::open(&spool_dir)
        .unwrap()
        .load_all()
        .unwrap()
        .0
        .iter()
        .map(|b| b.readings.len())
        .sum();
    assert_eq!(
        spooled_readings as u64, s1.stats.readings,
        "everything produced is spooled"
    );

    // Run 2: a server now (which loses the session's state once, while the
    // spooled batches of run 1 are delivered); the same replay is started again.
    let (url, srv, _h) = spawn_server(|n, _| {
        if n == 2 {
            Fault::ForgetSession
        } else {
            Fault::None
        }
    })
    .await;
    let sh = shared(config(&url), &spool_dir, CancellationToken::new());
    let s2 = replay(sh, &trip).await;
    println!("run 2:\n{s2}");
    assert_eq!(
        s2.recovered.readings_acked, s1.stats.readings,
        "the spool is delivered first"
    );
    assert_eq!(
        s2.resumed.len(),
        1,
        "the replay resumes after the spooled readings"
    );
    assert_eq!(s2.stats.readings + s1.stats.readings, 250);
    assert_eq!(s2.spool_left, 0);
    assert_eq!(
        s2.recovered.resyncs, 1,
        "a spooled session resyncs from its raw readings"
    );

    let g = srv.inner.lock().unwrap();
    assert_eq!(g.double_stores, 0);
    assert_eq!(
        g.resync_checks,
        vec![true],
        "re-sent from a keyframe at the first unacknowledged seq"
    );
    // Two sessions (one per run) of the same VIN: together, every recorded reading exactly once.
    assert_eq!(g.stored.len(), 250);
    let sessions: std::collections::BTreeSet<u64> = g.stored.keys().map(|k| k.1).collect();
    assert_eq!(sessions.len(), 2);
    let by_ts: BTreeMap<i64, &Vec<Option<f64>>> =
        g.stored.values().map(|(ts, v)| (*ts, v)).collect();
    assert_eq!(by_ts.len(), 250, "no timestamp stored twice");
    let catalog = Catalog::default_v1();
    for r in &readings {
        let got = by_ts
            .get(&r.timestamp_ms)
            .unwrap_or_else(|| panic!("reading at {} missing", r.timestamp_ms));
        assert_within_tolerance(&catalog, &r.values, got);
    }
}

/// The seed form: one `TelemetryReading` per POST, reconstructed with a
/// per-vehicle seed predictor; a 503 on the way must not lose a reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_wire_sends_every_reading_once() {
    let (url, state) = spawn_seed_server(vec![3]).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = SenderConfig {
        seed_wire: true,
        ..config(&url)
    };
    let sh = shared(cfg, dir.path(), CancellationToken::new());
    let summary = run_fleet(sh, simulated(2, 60, 4)).await.unwrap();
    println!("{summary}");
    assert_eq!(summary.stats.readings_acked, 120);
    assert!(summary.stats.retries >= 1);
    assert_eq!(Spool::open(dir.path()).unwrap().count(), 0);
    let g = state.lock().unwrap();
    assert_eq!(g.stored.len(), 120);
    let catalog = Catalog::default_v1();
    for i in 0..2 {
        let vin = sim_vin(4, i).to_string();
        let mut v = Vehicle::new(4, i, 0, 1000);
        let rows: Vec<_> = g
            .stored
            .iter()
            .filter(|(k, _)| k.0 == vin)
            .map(|(_, v)| v)
            .collect();
        assert_eq!(rows.len(), 60);
        for got in rows {
            let r = v.next_reading();
            for (c, g) in got.iter().enumerate() {
                let (a, b) = (r.values[c].unwrap(), g.unwrap());
                assert!(
                    (a - b).abs() <= catalog.signals()[c].tolerance() + 1e-9,
                    "{c}: {a} vs {b}"
                );
            }
        }
    }
}

/// The seed form spools like batches: an outage, a stop and a restart lose
/// no reading (each is spooled before it is posted, removed after a 2xx).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_wire_outage_across_a_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let trip = sources::Trip {
        name: "seed-drive.csv".into(),
        readings: (0..40)
            .scan(Vehicle::new(6, 0, 1_600_000_000_000, 1000), |v, _| {
                Some(v.next_reading())
            })
            .collect(),
        repairs: Default::default(),
    };
    let seed_cfg = |url: &str| SenderConfig {
        seed_wire: true,
        ..config(url)
    };
    // Run 1: nobody listens. Readings are spooled, one file each, until the stop.
    let cancel = CancellationToken::new();
    let sh = shared(seed_cfg(&dead_url()), dir.path(), cancel.clone());
    let stopper = {
        let dir = dir.path().to_owned();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            while spooled_readings(&dir) < 3 {
                assert!(Instant::now() < deadline, "nothing spooled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            cancel.cancel();
        })
    };
    let s1 = replay(sh, &trip).await;
    stopper.await.unwrap();
    println!("run 1:\n{s1}");
    assert_eq!(s1.stats.readings_acked, 0);
    assert!(s1.stats.readings > 0);
    assert_eq!(
        spooled_readings(dir.path()) as u64,
        s1.stats.readings,
        "every reading produced is spooled"
    );

    // Run 2: the server is up; the spool goes first, the replay resumes after it.
    let (url, state) = spawn_seed_server(vec![]).await;
    let s2 = replay(
        shared(seed_cfg(&url), dir.path(), CancellationToken::new()),
        &trip,
    )
    .await;
    println!("run 2:\n{s2}");
    assert_eq!(s2.recovered.readings_acked, s1.stats.readings);
    assert_eq!(s1.stats.readings + s2.stats.readings, 40);
    assert_eq!(s2.spool_left, 0);
    let g = state.lock().unwrap();
    let stored: Vec<i64> = g.stored.keys().map(|k| k.1).collect();
    let recorded: Vec<i64> = trip.readings.iter().map(|r| r.timestamp_ms).collect();
    assert_eq!(stored, recorded, "every reading once, in order");
}

/// 413: the batch is sent again in halves, down to single readings; only a
/// single reading the server still refuses goes to `rejected/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_413_splits_the_batch_and_rejects_only_the_single_reading_refused() {
    // More than 4 readings is too large; the reading at seq 37 always is.
    let (url, srv, _stop) = spawn_server(|_, cb| {
        if cb.len() > 4 || (cb.first_seq()..=cb.last_seq()).contains(&37) {
            Fault::TooLarge
        } else {
            Fault::None
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sh = shared(config(&url), dir.path(), CancellationToken::new());
    let summary = run_fleet(sh, simulated(1, 100, 8)).await.unwrap();
    println!("{summary}");
    assert!(summary.stats.splits >= 5, "{:?}", summary.stats);
    assert_eq!(summary.stats.rejected, 1, "only the one reading");
    assert_eq!(summary.stats.readings_acked, 99);
    assert_eq!(summary.spool_left, 0);
    let rejected: Vec<_> = std::fs::read_dir(dir.path().join("rejected"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".batch"))
        .collect();
    assert_eq!(rejected.len(), 1);
    let (kept, _) = Spool::open(dir.path().join("rejected"))
        .unwrap()
        .load_all()
        .unwrap();
    assert_eq!((kept[0].first_seq, kept[0].readings.len()), (37, 1));
    let g = srv.inner.lock().unwrap();
    assert!(g.too_large.contains(&20), "{:?}", g.too_large);
    assert_eq!(g.double_stores, 0);
    let seqs: Vec<u64> = g.stored.keys().map(|k| k.2).collect();
    let expected: Vec<u64> = (0..100).filter(|&q| q != 37).collect();
    assert_eq!(seqs, expected, "every other reading exactly once");
}

/// 429 is honoured like 503: Retry-After waited, the batch kept, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_retry_after_and_loses_nothing() {
    let (url, srv, _stop) = spawn_server(|n, _| match n {
        2 | 5 => Fault::TooMany,
        _ => Fault::None,
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let sh = shared(config(&url), dir.path(), CancellationToken::new());
    let summary = run_fleet(sh, simulated(1, 120, 9)).await.unwrap();
    assert_eq!(summary.stats.retries, 2);
    assert_eq!(summary.stats.readings_acked, 120);
    assert_eq!(summary.spool_left, 0);
    let g = srv.inner.lock().unwrap();
    assert_eq!(g.stored.len(), 120);
    assert_eq!(g.double_stores, 0);
    assert_retry_after_honoured(&g, 2);
}

/// 401/403: retrying cannot help. The run stops with an error naming the
/// vehicle and the status; the readings stay spooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_fatal_names_the_vehicle_and_keeps_the_spool() {
    let (url, srv, _stop) = spawn_server(|_, _| Fault::Unauthorized).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = SenderConfig {
        token: Some(DeviceToken::new("wrong-token")),
        ..config(&url)
    };
    let sh = shared(cfg, dir.path(), CancellationToken::new());
    let err = run_fleet(sh, simulated(1, 30, 3)).await.unwrap_err();
    let text = format!("{err:#}");
    let vin = sim_vin(3, 0).to_string();
    assert!(text.contains(&vin) && text.contains("401"), "{text}");
    assert!(
        spooled_readings(dir.path()) > 0,
        "the readings stay spooled"
    );
    let g = srv.inner.lock().unwrap();
    assert_eq!(g.requests, 1, "not retried");
    assert_eq!(g.auth, vec![Some("Bearer wrong-token".to_owned())]);
}

/// Two servers sharing one store; the first goes away mid-run. The edge
/// moves to the second and every reading is stored (and acknowledged) once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_second_server_loses_nothing() {
    let srv = test_server(|_, _| Fault::None);
    let (first, stop_first) = spawn_endpoint(srv.clone(), 0).await;
    let (second, _stop_second) = spawn_endpoint(srv.clone(), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = SenderConfig {
        servers: vec![first, second],
        max_batch_readings: 10,
        ..config("unused")
    };
    let sh = shared(cfg, dir.path(), CancellationToken::new());
    // Real time, 40 Hz: 4 s of readings, so the first server goes while they flow.
    let fleet = Fleet::Simulate {
        vehicles: 2,
        rate_hz: 40.0,
        duration_s: Some(4.0),
        rng_seed: 12,
    };
    let run = tokio::spawn(app::run(sh, fleet, false, 1.0));
    let deadline = Instant::now() + Duration::from_secs(20);
    while srv.inner.lock().unwrap().requests < 4 {
        assert!(Instant::now() < deadline, "the first server got no batches");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop_first.cancel();
    let summary = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("finishes")
        .unwrap()
        .unwrap();
    println!("{summary}");
    let g = srv.inner.lock().unwrap();
    assert!(
        g.by_endpoint.get(&1).is_some_and(|&n| n > 0),
        "{:?}",
        g.by_endpoint
    );
    assert_eq!(g.double_stores, 0);
    assert_eq!(summary.stats.readings, 320);
    assert_eq!(summary.stats.readings_acked, 320);
    assert_eq!(g.stored.len(), 320, "every reading stored once");
    assert_eq!(summary.spool_left, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_mismatch_is_fatal_and_keeps_the_spool() {
    let (url, _srv, _h) = spawn_server(|_, _| Fault::CatalogMismatch).await;
    let dir = tempfile::tempdir().unwrap();
    let sh = shared(config(&url), dir.path(), CancellationToken::new());
    let fleet = Fleet::Simulate {
        vehicles: 1,
        rate_hz: 1.0,
        duration_s: Some(30.0),
        rng_seed: 2,
    };
    let err = tokio::time::timeout(Duration::from_secs(30), app::run(sh, fleet, true, 1.0))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("different signal catalog"),
        "{err:#}"
    );
    assert!(
        Spool::open(dir.path()).unwrap().count() > 0,
        "nothing acknowledged, nothing dropped"
    );
}

/// A vehicle with no readings at all (`--duration 0`) finishes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_source_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let sh = shared(config(&dead_url()), dir.path(), CancellationToken::new());
    let summary = run_fleet(sh, simulated(2, 0, 1)).await.unwrap();
    assert_eq!((summary.vehicles, summary.stats.readings), (2, 0));
    assert_eq!(summary.spool_left, 0);
}
