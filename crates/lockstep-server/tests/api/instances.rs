//! Two server instances on ONE database, as behind a load balancer without
//! stickiness: a property test over random interleavings of which instance
//! gets each request (and retries of acknowledged requests on the other one,
//! as after a lost answer) for two vehicles at once, one in each wire form,
//! replaying a recorded Twizy trip. Whatever the interleaving: every request
//! is acknowledged (no 409, no resync), every reading is stored exactly once,
//! and every stored value is exactly what ONE instance decoding the same
//! requests in order would store.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use lockstep_codec::seed::{SEED_FIELDS, SEED_TOLERANCES, SeedPredictor};
use lockstep_codec::{BatchOutcome, Catalog, CheckedBatch, Encoder, EncoderConfig, Reading, Vin};
use lockstep_proto::Message as _;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::helpers::*;

/// Readings of the recorded trip replayed per case.
const READINGS: usize = 60;

/// The first [`READINGS`] readings of a recorded Twizy trip, as the edge reads them.
fn recorded() -> Vec<Reading> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/twizy-ev/T3_04_22_2021_1.csv");
    let trip = lockstep_edge::sources::load(lockstep_edge::sources::Format::Twizy, &path)
        .expect("the trip loads");
    // Skip the standstill at the start: values that change.
    trip.readings[200..200 + READINGS].to_vec()
}

/// One case: for each request, which instance gets it and whether it is
/// sent again to the other one after its acknowledgement; batch sizes.
#[derive(Debug, Clone)]
struct Plan {
    seed: Vec<(bool, bool)>,
    batch: Vec<(bool, bool, usize)>,
}

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::collection::vec((any::<bool>(), prop::bool::weighted(0.15)), READINGS),
        prop::collection::vec(
            (any::<bool>(), prop::bool::weighted(0.15), 1usize..12),
            READINGS,
        ),
    )
        .prop_map(|(seed, batch)| Plan { seed, batch })
}

#[test]
fn two_instances_store_what_one_would_postgres() {
    interleavings(Backend::Postgres, 12);
}

#[test]
fn two_instances_store_what_one_would_sqlite() {
    interleavings(Backend::Sqlite, 8);
}

fn interleavings(backend: Backend, cases: u32) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let trip = recorded();
    let (a, b) = rt.block_on(async {
        let db = Arc::new(TestDb::new(backend).await);
        let a = spawn_app_with(db.clone(), &[]).await;
        let b = spawn_app_with(db, &[]).await;
        (a, b)
    });
    let next = AtomicU32::new(1);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&plan(), |p| {
            let n = next.fetch_add(2, Ordering::SeqCst);
            rt.block_on(one_case(&a, &b, &trip, &p, n));
            Ok(())
        })
        .unwrap();
    let retries = rt.block_on(async {
        let mut sum = 0.0;
        for app in [&a, &b] {
            let text = app.get("/metrics").await.text().await.unwrap();
            sum += metric(&text, "lockstep_session_retries_total");
        }
        sum
    });
    println!(
        "{cases} interleavings on {backend:?}: {retries} requests decoded again after the other instance advanced their state"
    );
    rt.block_on(async move {
        let db = a.db.clone();
        a.stop().await;
        b.stop().await;
        drop(db);
    });
}

/// Sum of a counter family's samples in a Prometheus text page.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn one_case(a: &TestApp, b: &TestApp, trip: &[Reading], p: &Plan, n: u32) {
    let seed_vin = vin(700_000 + n);
    let batch_vin = vin(700_001 + n);
    let apps = |first: bool| if first { (a, b) } else { (b, a) };
    let seed = async {
        let mut edge = SeedPredictor::default();
        let mut sent = Vec::new();
        for (r, &(first, again)) in trip.iter().zip(&p.seed) {
            let msg =
                edge.encode_partial(&seed_vin, r.timestamp_ms, seed_values(r), SEED_TOLERANCES);
            let (to, other) = apps(first);
            let resp = to.post_seed(&msg).await;
            assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
            if again {
                let resp = other.post_seed(&msg).await;
                assert_eq!(
                    resp.status(),
                    200,
                    "a retry on the other instance: {:?}",
                    resp.text().await
                );
            }
            sent.push(msg);
        }
        sent
    };
    let batches = async {
        let mut enc = Encoder::new(
            Arc::new(Catalog::default_v1()),
            Vin::parse(&batch_vin).unwrap(),
            0x5ca1e + u64::from(n),
            EncoderConfig::default(),
        );
        let mut sent = Vec::new();
        let mut k = 0;
        for &(first, again, size) in &p.batch {
            if k >= trip.len() {
                break;
            }
            let end = (k + size).min(trip.len());
            for r in &trip[k..end] {
                enc.push(r);
            }
            k = end;
            let body = enc.take_batch().expect("a batch");
            let (to, other) = apps(first);
            let resp = to.post_batch(&body).await;
            assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
            if again {
                let resp = other.post_batch(&body).await;
                assert_eq!(
                    resp.status(),
                    200,
                    "a retry on the other instance: {:?}",
                    resp.text().await
                );
                let ack: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(ack["duplicate"], true, "{ack}");
            }
            sent.push(body.encode_to_vec());
        }
        assert_eq!(k, trip.len(), "the plan covers the trip");
        sent
    };
    let (seed_sent, batches_sent) = tokio::join!(seed, batches);

    let catalog = Catalog::default_v1();
    // One instance decoding the same requests in order.
    let mut server = SeedPredictor::default();
    let want_seed: Vec<(i64, Vec<Option<f64>>)> = seed_sent
        .iter()
        .map(|m| (m.timestamp, server.reconstruct(m).values.to_vec()))
        .collect();
    let mut state = None;
    let mut want_batch: Vec<(i64, Vec<Option<f64>>)> = Vec::new();
    for body in &batches_sent {
        let cb = CheckedBatch::parse(&catalog, body).unwrap();
        match cb.decode(&catalog, state.as_ref()).unwrap() {
            BatchOutcome::Fresh { readings, state: s } => {
                want_batch.extend(readings.into_iter().map(|r| (r.seq as i64, r.values)));
                state = Some(s);
            }
            BatchOutcome::Duplicate => panic!("the reference saw a duplicate"),
        }
    }

    let db = &a.db;
    let seed_cols = SEED_FIELDS.map(|f| format!("t.\"{f}\"")).join(", ");
    let got_seed = rows(db, &seed_vin, &seed_cols).await;
    assert_eq!(
        got_seed.len(),
        want_seed.len(),
        "seed readings stored exactly once"
    );
    for ((seq, got), (ts, want)) in got_seed.iter().zip(&want_seed) {
        assert_eq!(seq, ts);
        assert_eq!(
            got, want,
            "seed reading at {ts}: stored {got:?}, one instance stores {want:?}"
        );
    }
    let cols = catalog
        .signals()
        .iter()
        .map(|s| format!("t.\"{}\"", s.name))
        .collect::<Vec<_>>()
        .join(", ");
    let got_batch = rows(db, &batch_vin, &cols).await;
    assert_eq!(
        got_batch.len(),
        want_batch.len(),
        "batch readings stored exactly once"
    );
    for ((seq, got), (want_seq, want)) in got_batch.iter().zip(&want_batch) {
        assert_eq!(seq, want_seq);
        assert_eq!(
            got, want,
            "batch reading {seq}: stored {got:?}, one instance stores {want:?}"
        );
    }
    for v in [&seed_vin, &batch_vin] {
        let resyncs = db
            .count(&format!("SELECT resyncs FROM vehicles WHERE vin = '{v}'"))
            .await;
        assert_eq!(resyncs, 0, "no resync without a loss");
    }
}

/// The four seed fields of a recorded reading.
fn seed_values(r: &Reading) -> [Option<f64>; 4] {
    let catalog = Catalog::default_v1();
    SEED_FIELDS.map(|f| r.values[catalog.index_of(f).unwrap()])
}

/// (seq, values of `cols`) of one vehicle's stored rows, in seq order.
async fn rows(db: &TestDb, vin: &str, cols: &str) -> Vec<(i64, Vec<Option<f64>>)> {
    db.query(&format!(
        "SELECT t.seq, {cols} FROM telemetry_data t JOIN vehicles v ON v.id = t.vehicle_id WHERE v.vin = '{vin}' ORDER BY t.seq"
    ))
    .await
    .into_iter()
    .map(|r| {
        (
            r[0].as_deref().unwrap().parse().unwrap(),
            r[1..]
                .iter()
                .map(|v| v.as_deref().map(|s| s.parse().unwrap()))
                .collect(),
        )
    })
    .collect()
}
