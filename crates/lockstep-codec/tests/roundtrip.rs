//! Encode → bytes → decode round trips, the error bound, edge/cloud state
//! equality, and detection of every injected loss, duplicate, reorder and
//! restart — as property tests over arbitrary reading sequences.

use std::sync::Arc;

use lockstep_codec::{
    BatchOutcome, Catalog, CheckedBatch, DecodeError, DecodedReading, Encoder, EncoderConfig,
    Reading, SessionState, Vin,
};
use lockstep_proto::Message;
use lockstep_proto::v1::Batch;
use proptest::prelude::*;

const VIN: &str = "5YJ3E1EA000000001";

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::default_v1())
}

/// A drive: random walks with occasional jumps, nulls and irregular time steps.
fn drive() -> impl Strategy<Value = Vec<Reading>> {
    let step = (
        prop_oneof![9 => Just(1000i64), 1 => 0i64..5000],
        prop::collection::vec(prop_oneof![20 => -3.0f64..3.0, 1 => -500.0f64..500.0], 7),
        prop::collection::vec(prop::bool::weighted(0.03), 7),
    );
    (
        1_600_000_000_000i64..1_700_000_000_000,
        prop::collection::vec(step, 1..300),
    )
        .prop_map(|(t0, steps)| {
            let mut t = t0;
            let mut x = [50.0, 80.0, 10.0, 180.0, 34.0, -6.8, 20.0];
            steps
                .into_iter()
                .map(|(dt, d, nulls)| {
                    t += dt.max(1);
                    x[0] = (x[0] + d[0]).clamp(0.0, 200.0);
                    x[1] = (x[1] + d[1] * 0.01).clamp(0.0, 100.0);
                    x[2] += d[2];
                    x[3] = (x[3] + d[3] * 10.0).rem_euclid(360.0);
                    x[4] = (x[4] + d[4] * 1e-5).clamp(-89.0, 89.0);
                    x[5] = (x[5] + d[5] * 1e-5).clamp(-179.0, 179.0);
                    x[6] += d[6];
                    let values = x
                        .iter()
                        .zip(&nulls)
                        .map(|(v, n)| (!n).then_some(*v))
                        .collect();
                    Reading {
                        timestamp_ms: t,
                        values,
                    }
                })
                .collect()
        })
}

/// Encodes `readings` in batches of `batch` readings.
fn encode(readings: &[Reading], batch: usize, config: EncoderConfig) -> (Encoder, Vec<Batch>) {
    let mut enc = Encoder::new(catalog(), Vin::parse(VIN).unwrap(), 0xfeed, config);
    let mut out = Vec::new();
    for (i, r) in readings.iter().enumerate() {
        // Lookahead on odd batch sizes, so both paths are exercised.
        let future = if batch % 2 == 1 {
            &readings[i + 1..]
        } else {
            &[][..]
        };
        enc.push_with_lookahead(r, future);
        if enc.pending() >= batch {
            out.extend(enc.take_batch());
        }
    }
    out.extend(enc.take_batch());
    (enc, out)
}

fn decode(
    c: &Catalog,
    state: Option<&SessionState>,
    b: &Batch,
) -> Result<BatchOutcome, DecodeError> {
    CheckedBatch::parse(c, &b.encode_to_vec())?.decode(c, state)
}

/// Decodes every batch in order, returning the readings and the final state.
fn decode_all(batches: &[Batch]) -> (Vec<DecodedReading>, SessionState) {
    let c = catalog();
    let mut state: Option<SessionState> = None;
    let mut all = Vec::new();
    for b in batches {
        match decode(&c, state.as_ref(), b).expect("in-order batches decode") {
            BatchOutcome::Fresh { readings, state: s } => {
                all.extend(readings);
                state = Some(s);
            }
            BatchOutcome::Duplicate => panic!("no duplicates were sent"),
        }
    }
    (all, state.expect("at least one batch"))
}

/// Checks the error bound of every decoded value against the actual reading.
fn assert_within_tolerance(c: &Catalog, actual: &[Reading], decoded: &[DecodedReading]) {
    assert_eq!(actual.len(), decoded.len());
    let pos = c.position().unwrap();
    for (a, d) in actual.iter().zip(decoded) {
        assert_eq!(a.timestamp_ms, d.timestamp_ms);
        for (i, sig) in c.signals().iter().enumerate() {
            if i == pos.lat || i == pos.lon {
                continue;
            }
            match (a.values[i], d.values[i]) {
                (None, None) => {}
                (Some(x), Some(y)) => {
                    // Against the raw value and against its quantised form.
                    for actual in [x, sig.dequantise(sig.quantise(x))] {
                        let mut err = (actual - y).abs();
                        if sig.model == lockstep_codec::Model::Angle {
                            err %= 360.0;
                            err = err.min(360.0 - err);
                        }
                        assert!(
                            err <= sig.tolerance() + 1e-9,
                            "seq {} {}: actual {actual} decoded {y}",
                            d.seq,
                            sig.name
                        );
                    }
                }
                other => panic!("seq {} {}: null mismatch {other:?}", d.seq, sig.name),
            }
        }
        match (
            a.values[pos.lat].zip(a.values[pos.lon]),
            d.values[pos.lat].zip(d.values[pos.lon]),
        ) {
            (None, None) => {}
            (Some(x), Some(y)) => {
                let q = |v: f64| (v * 1e7).round() as i64;
                let d2 = lockstep_codec::fixed::dist2_mm((q(x.0), q(x.1)), (q(y.0), q(y.1)));
                let tol = i128::from(c.signals()[pos.lat].tolerance_q);
                assert!(
                    d2 <= tol * tol,
                    "seq {}: position off by {} mm",
                    d.seq,
                    (d2 as f64).sqrt()
                );
            }
            other => panic!("seq {}: position null mismatch {other:?}", d.seq),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn every_value_is_within_tolerance_and_states_agree(readings in drive(), batch in 1usize..80) {
        let (enc, batches) = encode(&readings, batch, EncoderConfig::default());
        let (decoded, cloud) = decode_all(&batches);
        assert_within_tolerance(&catalog(), &readings, &decoded);
        prop_assert_eq!(enc.state(), &cloud);
        prop_assert_eq!(decoded.last().unwrap().seq + 1, cloud.next_seq());
    }

    #[test]
    fn a_lost_batch_is_a_gap(readings in drive(), batch in 1usize..20, lost in any::<prop::sample::Index>()) {
        let (_, batches) = encode(&readings, batch, EncoderConfig { keyframe_interval_ms: 0, checksum: true });
        prop_assume!(batches.len() >= 3);
        let lost = 1 + lost.index(batches.len() - 2);
        let c = catalog();
        let mut state = None;
        for (i, b) in batches.iter().enumerate() {
            if i == lost { continue; }
            match decode(&c, state.as_ref(), b) {
                Ok(BatchOutcome::Fresh { state: s, .. }) => { prop_assert!(i < lost); state = Some(s); }
                Err(DecodeError::Gap { expected, got }) => {
                    prop_assert_eq!(i, lost + 1);
                    prop_assert_eq!(expected, batches[lost].first_seq);
                    prop_assert_eq!(got, b.first_seq);
                    return Ok(());
                }
                other => prop_assert!(false, "batch {i}: {other:?}"),
            }
        }
        prop_assert!(false, "the gap went unnoticed");
    }

    #[test]
    fn duplicates_and_reordering_are_detected(readings in drive(), batch in 1usize..20) {
        let (_, batches) = encode(&readings, batch, EncoderConfig { keyframe_interval_ms: 0, checksum: true });
        prop_assume!(batches.len() >= 3);
        let c = catalog();
        let s1 = match decode(&c, None, &batches[0]).unwrap() { BatchOutcome::Fresh { state, .. } => state, _ => unreachable!() };
        let s2 = match decode(&c, Some(&s1), &batches[1]).unwrap() { BatchOutcome::Fresh { state, .. } => state, _ => unreachable!() };
        // A retry of an accepted batch: acknowledged again, nothing new.
        prop_assert_eq!(decode(&c, Some(&s2), &batches[0]).unwrap(), BatchOutcome::Duplicate);
        prop_assert_eq!(decode(&c, Some(&s2), &batches[1]).unwrap(), BatchOutcome::Duplicate);
        // Reordered: batch 2 before batch 1 is a gap.
        let is_gap = matches!(decode(&c, Some(&s1), &batches[2]), Err(DecodeError::Gap { .. }));
        prop_assert!(is_gap);
        // Re-cut batches that straddle the accepted range are an overlap.
        let mut straddle = batches[1].clone();
        prop_assume!(straddle.count >= 2);
        straddle.first_seq = s2.next_seq() - 1;
        straddle.keyframes.clear();
        let is_overlap = matches!(decode(&c, Some(&s2), &straddle), Err(DecodeError::Overlap { .. }));
        prop_assert!(is_overlap);
    }

    #[test]
    fn restarts_and_resyncs_heal(readings in drive(), cut in any::<prop::sample::Index>()) {
        prop_assume!(readings.len() >= 4);
        let cut = 1 + cut.index(readings.len() - 2);
        let c = catalog();
        let (_, first) = encode(&readings[..cut], 1000, EncoderConfig::default());
        let (_, state) = decode_all(&first);
        // Edge restart: a new session must start with a keyframe; the cloud
        // takes it as a fresh session.
        let mut enc = Encoder::new(c.clone(), Vin::parse(VIN).unwrap(), 0xbeef, EncoderConfig::default());
        for r in &readings[cut..] { enc.push(r); }
        let b = enc.take_batch().unwrap();
        let is_fresh = matches!(decode(&c, None, &b), Ok(BatchOutcome::Fresh { .. }));
        prop_assert!(is_fresh);
        // Cloud restart without state: a non-keyframe batch is an unknown session.
        let (mut enc, _) = encode(&readings[..cut], 1000, EncoderConfig::default());
        for r in &readings[cut..] { enc.push(r); }
        let b = enc.take_batch().unwrap();
        let is_unknown = matches!(decode(&c, None, &b), Err(DecodeError::UnknownSession { .. }));
        prop_assert!(is_unknown);
        // ...and the edge rewinds to a keyframe: accepted, within tolerance.
        enc.rewind(b.first_seq);
        for r in &readings[cut..] { enc.push(r); }
        let b = enc.take_batch().unwrap();
        match decode(&c, Some(&state), &b).unwrap() {
            BatchOutcome::Fresh { readings: got, .. } => assert_within_tolerance(&c, &readings[cut..], &got),
            BatchOutcome::Duplicate => prop_assert!(false, "not a duplicate"),
        }
    }

    #[test]
    fn a_diverged_state_is_a_checksum_mismatch(readings in drive()) {
        prop_assume!(readings.len() >= 3);
        let (_, batches) = encode(&readings, 1, EncoderConfig { keyframe_interval_ms: 0, checksum: true });
        let c = catalog();
        let (_, state) = decode_all(&batches[..1]);
        // Tamper with a transmitted value of the second reading.
        let mut b = batches[1].clone();
        prop_assume!(!b.values.is_empty());
        b.values[0] += 1_000_000;
        let is_mismatch = matches!(decode(&c, Some(&state), &b), Err(DecodeError::ChecksumMismatch { .. }));
        prop_assert!(is_mismatch);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let c = catalog();
        if let Ok(b) = CheckedBatch::parse(&c, &bytes) {
            let _ = b.decode(&c, None);
            let _ = b.decode(&c, Some(&SessionState::new(&c, 0)));
        }
    }

    #[test]
    fn decoding_mutated_batches_never_panics(readings in drive(), flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let (_, batches) = encode(&readings, 50, EncoderConfig::default());
        let c = catalog();
        let mut bytes = batches[0].encode_to_vec();
        for (i, x) in flips { let i = i.index(bytes.len()); bytes[i] ^= x; }
        if let Ok(b) = CheckedBatch::parse(&c, &bytes) {
            let _ = b.decode(&c, None);
        }
    }

    #[test]
    fn decoding_hostile_batches_never_panics(
        first_seq in any::<u64>(),
        count in 1u32..40,
        t0 in any::<i64>(),
        dods in prop::collection::vec(any::<i64>(), 39),
        tx in prop::collection::vec(any::<u64>(), 40),
        values in prop::collection::vec(prop_oneof![any::<i64>(), -1000i64..1000], 0..300),
        keyframes in prop::collection::vec(0u32..40, 0..4),
    ) {
        // A well-formed header (right VIN and catalog), arbitrary contents.
        let c = catalog();
        let n = count as usize;
        let mut keyframes = keyframes;
        keyframes.sort_unstable();
        keyframes.dedup();
        keyframes.retain(|&k| k < count);
        let b = Batch {
            vehicle_vin: VIN.into(),
            session_id: 7,
            catalog_hash: c.hash(),
            first_seq: first_seq / 2,
            count,
            first_timestamp_ms: t0,
            timestamp_dod: dods[..n - 1].to_vec(),
            transmitted: tx[..n].iter().map(|m| m & 0x7f).collect(),
            nulls: Vec::new(),
            values,
            keyframes,
            state_checksum: None,
        };
        if let Ok(cb) = CheckedBatch::check(&c, b) {
            let _ = cb.decode(&c, None);
            let _ = cb.decode(&c, Some(&SessionState::new(&c, cb.first_seq())));
        }
    }

    #[test]
    fn state_bytes_round_trip(readings in drive()) {
        let (enc, _) = encode(&readings, 10, EncoderConfig::default());
        let c = catalog();
        let back = SessionState::from_bytes(&c, &enc.state().to_bytes());
        prop_assert_eq!(back.as_ref(), Some(enc.state()));
    }
}

#[test]
fn mutated_well_formed_fields_are_rejected_not_misread() {
    let c = catalog();
    let r = Reading {
        timestamp_ms: 1,
        values: vec![Some(1.0); 7],
    };
    let (_, batches) = encode(&[r.clone(), r], 10, EncoderConfig::default());
    let mut b = batches[0].clone();
    b.catalog_hash ^= 1;
    assert!(matches!(
        decode(&c, None, &b),
        Err(DecodeError::CatalogMismatch { .. })
    ));
    let mut b = batches[0].clone();
    b.vehicle_vin = "NOTAVIN".into();
    assert!(matches!(decode(&c, None, &b), Err(DecodeError::Vin(_))));
    let mut b = batches[0].clone();
    b.values.push(5);
    assert!(matches!(
        decode(&c, None, &b),
        Err(DecodeError::Malformed(_))
    ));
    let mut b = batches[0].clone();
    b.transmitted[0] |= 1 << 40;
    assert!(matches!(
        decode(&c, None, &b),
        Err(DecodeError::Malformed(_))
    ));
}
