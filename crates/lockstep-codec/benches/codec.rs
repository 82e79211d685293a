//! Encode and decode+reconstruct throughput, readings per second on one core.
//! `cargo bench -p lockstep-codec` prints criterion's figures; the throughput
//! line ("thrpt") is in readings/s.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lockstep_codec::{BatchOutcome, Catalog, CheckedBatch, Encoder, EncoderConfig, Reading, Vin};
use lockstep_proto::Message;

const READINGS: usize = 10_000;
const BATCH: usize = 100;

/// A deterministic synthetic drive at 1 Hz: smooth speed with stops, falling
/// SoC, noisy power, slowly turning heading, moving position.
fn drive() -> Vec<Reading> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut noise = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x % 1000) as f64 / 1000.0 - 0.5
    };
    let (mut lat, mut lon, mut heading) = (34.0, -6.8, 90.0f64);
    (0..READINGS)
        .map(|i| {
            let t = i as f64;
            let speed = (50.0 + 30.0 * (t / 120.0).sin()).max(0.0) + noise();
            heading = (heading + 0.5 * (t / 60.0).cos() + noise()).rem_euclid(360.0);
            lat += speed / 3.6 * heading.to_radians().cos() / 111_320.0;
            lon += speed / 3.6 * heading.to_radians().sin() / (111_320.0 * lat.to_radians().cos());
            Reading {
                timestamp_ms: 1_700_000_000_000 + i as i64 * 1000,
                values: vec![
                    Some(speed),
                    Some(90.0 - t * 0.001),
                    Some(speed * 0.2 + noise() * 4.0),
                    Some(heading),
                    Some(lat),
                    Some(lon),
                    Some(20.0 + (t / 300.0).sin() * 5.0),
                ],
            }
        })
        .collect()
}

fn encode_all(catalog: &Arc<Catalog>, rows: &[Reading]) -> Vec<Vec<u8>> {
    let mut enc = Encoder::new(
        catalog.clone(),
        Vin::parse("5YJ3E1EA000000001").unwrap(),
        42,
        EncoderConfig::default(),
    );
    let mut out = Vec::new();
    for r in rows {
        enc.push(r);
        if enc.pending() == BATCH {
            out.push(enc.take_batch().unwrap().encode_to_vec());
        }
    }
    out.extend(enc.take_batch().map(|b| b.encode_to_vec()));
    out
}

fn bench(c: &mut Criterion) {
    let catalog = Arc::new(Catalog::default_v1());
    let rows = drive();
    let batches = encode_all(&catalog, &rows);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(READINGS as u64));
    g.bench_function("encode", |b| {
        b.iter(|| black_box(encode_all(&catalog, black_box(&rows))))
    });
    g.bench_function("decode_reconstruct", |b| {
        b.iter(|| {
            let mut state = None;
            let mut n = 0;
            for bytes in &batches {
                let cb = CheckedBatch::parse(&catalog, black_box(bytes)).unwrap();
                match cb.decode(&catalog, state.as_ref()).unwrap() {
                    BatchOutcome::Fresh { readings, state: s } => {
                        n += readings.len();
                        state = Some(s);
                    }
                    BatchOutcome::Duplicate => unreachable!(),
                }
            }
            assert_eq!(n, READINGS);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
