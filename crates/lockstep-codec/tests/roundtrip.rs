//! Encode → bytes → decode round trips, the error bound, edge/cloud state
//! equality, and detection of every injected loss, duplicate, reorder,
//! restart and hostile batch — as property tests over arbitrary drives.
//!
//! The drives reach what a fleet meets: hours-long drives with mid-stream
//! keyframes, the antimeridian and the poles, NaN, infinities and values
//! beyond the wire's range, repeated and backward timestamps, timestamps
//! near the protocol's limit. Each property runs 128 cases by default (the
//! suite's budget); a long run outside CI sets the count, in an optimised
//! build that keeps the overflow checks (the bugs these tests find):
//!
//! ```sh
//! CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true \
//!   PROPTEST_CASES=20000 cargo nextest run --release -p lockstep-codec --test roundtrip
//! ```

use std::sync::Arc;

use lockstep_codec::state::{LAT_LIMIT, LON_LIMIT, TS_LIMIT, VALUE_LIMIT};
use lockstep_codec::{
    BatchOutcome, Catalog, CheckedBatch, DecodeError, DecodedReading, Encoder, EncoderConfig,
    MAX_SEQ_JUMP, Reading, SessionState, UnknownReason, Vin,
};
use lockstep_proto::Message;
use lockstep_proto::v1::Batch;
use proptest::prelude::*;

const VIN: &str = "5YJ3E1EA000000001";

fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::default_v1())
}

/// `PROPTEST_CASES` if set (the long run), else `default`.
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        // Some properties reject short drives (`prop_assume!`); a long run
        // rejects more than the default 1,024 in all.
        max_global_rejects: cases.max(1024),
        ..ProptestConfig::default()
    }
}

/// Time steps: mostly 1 s, some irregular, repeated (0), backward, and
/// stops of up to two hours (past the 30-minute keyframe interval).
fn time_step() -> impl Strategy<Value = i64> {
    prop_oneof![
        40 => Just(1000i64),
        8 => 1i64..5000,
        1 => Just(0i64),
        1 => -5000i64..0,
        1 => 60_000i64..7_200_000,
    ]
}

/// Where a drive starts, in degrees: anywhere, beside the antimeridian, or
/// beside a pole; and how far it drifts per reading (so it crosses them).
fn place() -> impl Strategy<Value = ((f64, f64), (f64, f64))> {
    let start = prop_oneof![
        2 => (-80.0f64..80.0, -180.0f64..180.0),
        1 => (-80.0f64..80.0, prop_oneof![179.995f64..180.0, -180.0f64..-179.995]),
        1 => (prop_oneof![89.995f64..90.0, -90.0f64..-89.995], -180.0f64..180.0),
    ];
    (start, (-5e-5f64..5e-5, -5e-5f64..5e-5))
}

/// Input the edge must survive: not finite, beyond the wire's range, huge
/// but encodable, or signed zero.
fn extreme() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(-0.0),
        1e13f64..1e300,
        -1e300f64..-1e13,
        -1e9f64..1e9,
    ]
}

/// Where a drive starts in time: now-ish, or next to ±2^50 ms (the
/// protocol's limit), leaving room for the drive itself.
fn start_time() -> impl Strategy<Value = i64> {
    let room = 3_000_000_000i64;
    prop_oneof![
        6 => 1_600_000_000_000i64..1_700_000_000_000,
        1 => (TS_LIMIT - 2 * room)..(TS_LIMIT - room),
        1 => (-TS_LIMIT + room)..(-TS_LIMIT + 2 * room),
    ]
}

/// A drive: random walks with occasional jumps, nulls, extreme values and
/// irregular time steps; positions wrap over the antimeridian and the poles.
fn drive() -> impl Strategy<Value = Vec<Reading>> {
    let step = (
        time_step(),
        prop::collection::vec(prop_oneof![20 => -3.0f64..3.0, 1 => -500.0f64..500.0], 7),
        prop::collection::vec(prop::bool::weighted(0.03), 7),
        prop::collection::vec(prop::option::weighted(0.01, extreme()), 7),
    );
    (start_time(), place(), prop::collection::vec(step, 1..300)).prop_map(
        |(t0, ((lat0, lon0), (dlat, dlon)), steps)| {
            let mut t = t0;
            let mut x = [50.0, 80.0, 10.0, 180.0, lat0, lon0, 20.0];
            steps
                .into_iter()
                .map(|(dt, d, nulls, odd)| {
                    t += dt;
                    x[0] = (x[0] + d[0]).clamp(0.0, 200.0);
                    x[1] = (x[1] + d[1] * 0.01).clamp(0.0, 100.0);
                    x[2] += d[2];
                    x[3] = (x[3] + d[3] * 10.0).rem_euclid(360.0);
                    (x[4], x[5]) = wrap(x[4] + dlat + d[4] * 1e-5, x[5] + dlon + d[5] * 1e-5);
                    x[6] += d[6];
                    let values = (0..7)
                        .map(|i| (!nulls[i]).then_some(odd[i].unwrap_or(x[i])))
                        .collect();
                    Reading {
                        timestamp_ms: t,
                        values,
                    }
                })
                .collect()
        },
    )
}

/// A position moved past a pole or the antimeridian, back on the globe.
fn wrap(mut lat: f64, mut lon: f64) -> (f64, f64) {
    if lat.abs() > 90.0 {
        lat = lat.signum() * 180.0 - lat;
        lon += 180.0;
    }
    if lon >= 180.0 {
        lon -= 360.0;
    } else if lon < -180.0 {
        lon += 360.0;
    }
    (lat, lon)
}

/// An encoder configuration: keyframes only first, often (many mid-stream),
/// or every 30 minutes; checksums on or off.
fn encoder_config() -> impl Strategy<Value = EncoderConfig> {
    (
        prop_oneof![Just(0i64), 1000i64..120_000, Just(1_800_000)],
        any::<bool>(),
    )
        .prop_map(|(keyframe_interval_ms, checksum)| EncoderConfig {
            keyframe_interval_ms,
            checksum,
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

/// What the edge can encode of `v` on `sig`: nothing for NaN, infinities
/// and values beyond ±2^52 quanta (the edge sends them as missing).
fn encodable(sig: &lockstep_codec::Signal, v: Option<f64>) -> Option<f64> {
    v.filter(|v| v.is_finite() && (-VALUE_LIMIT..=VALUE_LIMIT).contains(&sig.quantise(*v)))
}

/// Checks the documented bound of every decoded value against the actual
/// reading: `|reconstructed − actual| ≤ tolerance`, against the raw value
/// and its quantised form (angles on the circle), the position as a 2-D
/// distance within its tolerance. The only slack is the rounding of the
/// comparison's own subtraction (4 ulp of the operands), not of the codec.
fn assert_within_tolerance(c: &Catalog, actual: &[Reading], decoded: &[DecodedReading]) {
    assert_eq!(actual.len(), decoded.len());
    let pos = c.position().unwrap();
    for (a, d) in actual.iter().zip(decoded) {
        assert_eq!(a.timestamp_ms, d.timestamp_ms);
        for (i, sig) in c.signals().iter().enumerate() {
            if i == pos.lat || i == pos.lon {
                continue;
            }
            match (encodable(sig, a.values[i]), d.values[i]) {
                (None, None) => {}
                (Some(x), Some(y)) => {
                    for actual in [x, sig.dequantise(sig.quantise(x))] {
                        let mut err = (actual - y).abs();
                        if sig.model == lockstep_codec::Model::Angle {
                            err %= 360.0;
                            err = err.min(360.0 - err);
                        }
                        let rounding = 4.0 * f64::EPSILON * actual.abs().max(y.abs());
                        assert!(
                            err <= sig.tolerance() + rounding,
                            "seq {} {}: actual {actual} decoded {y}",
                            d.seq,
                            sig.name
                        );
                    }
                }
                other => panic!(
                    "seq {} {}: actual {:?}, decoded {other:?}",
                    d.seq, sig.name, a.values[i]
                ),
            }
        }
        let q = |v: f64| (v * 1e7).round() as i64;
        let position = a.values[pos.lat]
            .zip(a.values[pos.lon])
            .filter(|(la, lo)| la.is_finite() && lo.is_finite())
            .map(|(la, lo)| (q(la), q(lo)))
            .filter(|(la, lo)| {
                (-LAT_LIMIT..=LAT_LIMIT).contains(la) && (-LON_LIMIT..=LON_LIMIT).contains(lo)
            });
        match (position, d.values[pos.lat].zip(d.values[pos.lon])) {
            (None, None) => {}
            (Some(x), Some(y)) => {
                let d2 = lockstep_codec::fixed::dist2_mm(x, (q(y.0), q(y.1)));
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

/// Cases per property in the default run (see the module doc).
const CASES: u32 = 128;

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn every_value_is_within_tolerance_and_states_agree(
        readings in drive(),
        batch in 1usize..80,
        config in encoder_config(),
    ) {
        let (enc, batches) = encode(&readings, batch, config);
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
        // Cloud restart without state: a non-keyframe batch is an unknown
        // session (no periodic keyframe, so the batch cannot start with one).
        let only_first = EncoderConfig { keyframe_interval_ms: 0, checksum: true };
        let (mut enc, _) = encode(&readings[..cut], 1000, only_first);
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
        // Tamper with a transmitted value of the second reading: the states
        // differ, or the value leaves the protocol's range.
        let mut b = batches[1].clone();
        prop_assume!(!b.values.is_empty());
        b.values[0] = b.values[0].wrapping_add(1_000_000);
        let detected = matches!(
            decode(&c, Some(&state), &b),
            Err(DecodeError::ChecksumMismatch { .. } | DecodeError::Malformed(_))
        );
        prop_assert!(detected);
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

    /// A hostile batch (another sender's, a replay, or one claiming any
    /// sequence number, with or without a keyframe) sent between two genuine
    /// batches of the same session: every genuine batch is then stored as the
    /// genuine sender encoded it, or refused with a resync — never
    /// acknowledged as a duplicate without having been stored.
    #[test]
    fn a_hostile_batch_never_gets_genuine_readings_dropped(
        genuine in drive(),
        other in drive(),
        batch in 1usize..40,
        hostile_batch in 1usize..40,
        at in any::<prop::sample::Index>(),
        pick in any::<prop::sample::Index>(),
        claim in claim(),
        keyframe_first in any::<bool>(),
        hostile_checksum in any::<bool>(),
        replay in prop::bool::weighted(0.15),
    ) {
        let c = catalog();
        let (_, sent) = encode(&genuine, batch, EncoderConfig::default());
        let reference = decode_each(&sent);
        let at = at.index(sent.len());
        let mut state: Option<SessionState> = None;
        let mut hostile_stored = None;
        for (i, g) in sent.iter().enumerate() {
            if i == at {
                let n = state.as_ref().map_or(0, SessionState::next_seq);
                let h = if replay {
                    sent[pick.index(sent.len())].clone()
                } else {
                    let config = EncoderConfig { keyframe_interval_ms: 0, checksum: hostile_checksum };
                    let (_, theirs) = encode(&other, hostile_batch, config);
                    let mut h = theirs[pick.index(theirs.len())].clone();
                    h.first_seq = claim.from(n);
                    if !keyframe_first {
                        h.keyframes.retain(|&k| k != 0);
                    } else if h.keyframes.first() != Some(&0) {
                        h.keyframes.insert(0, 0);
                    }
                    h
                };
                if let Ok(BatchOutcome::Fresh { state: s, .. }) = decode(&c, state.as_ref(), &h) {
                    state = Some(s);
                    hostile_stored = Some(h);
                }
            }
            match decode(&c, state.as_ref(), g) {
                Ok(BatchOutcome::Fresh { readings, state: s }) => {
                    prop_assert_eq!(&readings, &reference[i], "batch {} stored other values", i);
                    state = Some(s);
                }
                Ok(BatchOutcome::Duplicate) => {
                    prop_assert_eq!(hostile_stored.as_ref(), Some(g), "batch {} acknowledged but not stored", i);
                }
                Err(e) => {
                    // Told to resync: the sender keeps its readings and resends them.
                    prop_assert!(e.resync_required(), "batch {}: {:?}", i, e);
                    return Ok(());
                }
            }
        }
    }
}

/// Where a hostile batch claims to start, relative to the cloud's next
/// expected sequence number.
#[derive(Debug, Clone, Copy)]
enum Claim {
    Exact,
    Ahead(u64),
    Behind(u64),
    Far(u64),
}

impl Claim {
    fn from(self, next: u64) -> u64 {
        match self {
            Claim::Exact => next,
            Claim::Ahead(k) | Claim::Far(k) => next.saturating_add(k),
            Claim::Behind(k) => next.saturating_sub(k),
        }
    }
}

fn claim() -> impl Strategy<Value = Claim> {
    prop_oneof![
        3 => Just(Claim::Exact),
        2 => (1u64..200).prop_map(Claim::Ahead),
        2 => (1u64..200).prop_map(Claim::Behind),
        1 => prop_oneof![
            Just(MAX_SEQ_JUMP),
            Just(MAX_SEQ_JUMP + 1),
            Just(1u64 << 63),
            MAX_SEQ_JUMP..u64::MAX / 2,
        ]
        .prop_map(Claim::Far),
    ]
}

/// The readings of each batch, decoded in order from an empty state.
fn decode_each(batches: &[Batch]) -> Vec<Vec<DecodedReading>> {
    let c = catalog();
    let mut state = None;
    batches
        .iter()
        .map(|b| match decode(&c, state.as_ref(), b) {
            Ok(BatchOutcome::Fresh { readings, state: s }) => {
                state = Some(s);
                readings
            }
            other => panic!("in-order batches decode: {other:?}"),
        })
        .collect()
}

/// A steady drive of `n` readings, 1 s apart.
fn steady(n: usize) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            timestamp_ms: 1_700_000_000_000 + 1000 * i as i64,
            values: vec![
                Some(20.0 + i as f64),
                Some(80.0),
                Some(1.0),
                Some(90.0),
                Some(34.0),
                Some(-6.8),
                Some(20.0),
            ],
        })
        .collect()
}

fn fresh(r: Result<BatchOutcome, DecodeError>) -> SessionState {
    match r {
        Ok(BatchOutcome::Fresh { state, .. }) => state,
        other => panic!("expected fresh readings, got {other:?}"),
    }
}

#[test]
fn a_keyframe_may_jump_ahead_by_at_most_max_seq_jump() {
    let c = catalog();
    let (_, batches) = encode(&steady(20), 10, EncoderConfig::default());
    let s1 = fresh(decode(&c, None, &batches[0]));
    let n = s1.next_seq();
    // A keyframe batch from another drive, claiming sequence numbers ahead.
    let (_, other) = encode(&steady(5), 5, EncoderConfig::default());
    // The checksum covers `next_seq`: a moved batch carries none.
    let at = |first_seq| Batch {
        first_seq,
        state_checksum: None,
        ..other[0].clone()
    };
    for far in [n + MAX_SEQ_JUMP + 1, 1 << 63, u64::MAX / 2] {
        assert_eq!(
            decode(&c, Some(&s1), &at(far)),
            Err(DecodeError::Gap {
                expected: n,
                got: far
            })
        );
    }
    // The genuine stream goes on.
    fresh(decode(&c, Some(&s1), &batches[1]));
    // At the bound the readings in between are taken as lost.
    let jumped = fresh(decode(&c, Some(&s1), &at(n + MAX_SEQ_JUMP)));
    assert_eq!(jumped.next_seq(), n + MAX_SEQ_JUMP + 5);
}

#[test]
fn retries_stay_duplicates_and_other_batches_are_refused_after_a_restart() {
    let c = catalog();
    let (enc, batches) = encode(&steady(30), 10, EncoderConfig::default());
    let s1 = fresh(decode(&c, None, &batches[0]));
    let s2 = fresh(decode(&c, Some(&s1), &batches[1]));
    // The record is the cloud's own: not in the checksum, not in equality.
    let (edge, _) = encode(&steady(20), 10, EncoderConfig::default());
    assert_eq!(edge.state(), &s2);
    assert_eq!(edge.state().checksum(), s2.checksum());
    assert_ne!(edge.state().to_bytes(), s2.to_bytes());
    // A server restart: the state comes back from its bytes.
    let s2 = SessionState::from_bytes(&c, &s2.to_bytes()).expect("state round trip");
    assert_eq!(
        decode(&c, Some(&s2), &batches[1]),
        Ok(BatchOutcome::Duplicate)
    );
    assert_eq!(
        decode(&c, Some(&s2), &batches[0]),
        Ok(BatchOutcome::Duplicate)
    );
    // Another batch over the last batch's sequence numbers is not a duplicate.
    let mut other = batches[1].clone();
    other.first_timestamp_ms += 1;
    assert_eq!(
        decode(&c, Some(&s2), &other),
        Err(DecodeError::UnknownSession {
            session_id: 0xfeed,
            reason: UnknownReason::NotARepeat
        })
    );
    fresh(decode(&c, Some(&s2), &batches[2]));
    assert_eq!(enc.state().next_seq(), 30);
}

#[test]
fn batches_before_a_jump_are_refused_not_acknowledged() {
    let c = catalog();
    let (_, batches) = encode(&steady(30), 10, EncoderConfig::default());
    let s1 = fresh(decode(&c, None, &batches[0]));
    // A keyframe 100 readings ahead (another sender, or a cloud that lost readings).
    let (_, other) = encode(&steady(5), 5, EncoderConfig::default());
    let jump = Batch {
        first_seq: 110,
        state_checksum: None,
        ..other[0].clone()
    };
    let s = fresh(decode(&c, Some(&s1), &jump));
    // The genuine next batch lies before the jump: refused with a resync.
    let e = decode(&c, Some(&s), &batches[1]).unwrap_err();
    assert_eq!(
        e,
        DecodeError::UnknownSession {
            session_id: 0xfeed,
            reason: UnknownReason::BeforeRun
        }
    );
    assert!(e.resync_required());
    // A retry of the jump itself is still a duplicate.
    assert_eq!(decode(&c, Some(&s), &jump), Ok(BatchOutcome::Duplicate));
}

#[test]
fn a_state_persisted_before_the_acceptance_record_still_answers_duplicates() {
    let c = catalog();
    let (_, batches) = encode(&steady(20), 10, EncoderConfig::default());
    let s1 = fresh(decode(&c, None, &batches[0]));
    let bytes = s1.to_bytes();
    // The record is the last 25 bytes: u8 1 and three u64.
    let old = SessionState::from_bytes(&c, &bytes[..bytes.len() - 25]).expect("old format");
    assert_eq!(old.checksum(), s1.checksum());
    assert_eq!(
        decode(&c, Some(&old), &batches[0]),
        Ok(BatchOutcome::Duplicate)
    );
    fresh(decode(&c, Some(&old), &batches[1]));
}

/// Found by `decode_batch` (fuzz/regressions/decode_batch/crash-5165…): a
/// wire value that is, or wraps to, i64::MIN made the range check's `abs()`
/// overflow — a panic on the server for one hostile request.
#[test]
fn a_wire_value_of_i64_min_is_refused_not_a_panic() {
    let c = catalog();
    let (_, batches) = encode(&steady(1), 1, EncoderConfig::default());
    for (transmitted, values) in [
        (1u64, vec![i64::MIN]),         // speed
        (0b11_0000, vec![i64::MIN, 0]), // latitude
        (0b11_0000, vec![0, i64::MIN]), // longitude
    ] {
        // The other channels null, so the batch is otherwise well formed.
        let b = Batch {
            transmitted: vec![transmitted],
            nulls: vec![!transmitted & 0x7f],
            values,
            state_checksum: None,
            ..batches[0].clone()
        };
        let e = decode(&c, None, &b);
        assert!(matches!(e, Err(DecodeError::Malformed(_))), "{e:?}");
    }
    let b = Batch {
        first_timestamp_ms: i64::MIN,
        ..batches[0].clone()
    };
    assert!(matches!(
        decode(&c, None, &b),
        Err(DecodeError::Malformed(_))
    ));
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
