//! What each predictor model buys, on small hand-made drives.

use std::sync::Arc;

use lockstep_codec::{Catalog, Encoder, EncoderConfig, Reading, Vin};

const SPEED: usize = 0;
const BATTERY: usize = 1;
const HEADING: usize = 3;
const LAT: usize = 4;

fn encoder() -> Encoder {
    let config = EncoderConfig {
        keyframe_interval_ms: 0,
        checksum: true,
    };
    Encoder::new(
        Arc::new(Catalog::default_v1()),
        Vin::parse("5YJ3E1EA000000001").unwrap(),
        1,
        config,
    )
}

fn reading(t: i64, values: [Option<f64>; 7]) -> Reading {
    Reading {
        timestamp_ms: t * 1000,
        values: values.to_vec(),
    }
}

/// Number of readings in which channel `ch` was transmitted.
fn sent(frames: &[lockstep_codec::Frame], ch: usize) -> usize {
    frames
        .iter()
        .filter(|f| f.transmitted & (1 << ch) != 0)
        .count()
}

#[test]
fn heading_wraps_around_north() {
    let mut enc = encoder();
    // 359° ↔ 1° back and forth: 2° apart on the circle, within the ±2° tolerance.
    let frames: Vec<_> = (0..40)
        .map(|t| {
            enc.push(&reading(
                t,
                [
                    None,
                    None,
                    None,
                    Some(if t % 2 == 0 { 359.0 } else { 1.0 }),
                    None,
                    None,
                    None,
                ],
            ))
        })
        .collect();
    assert_eq!(sent(&frames, HEADING), 1, "only the first heading is sent");
    for f in &frames {
        let h = f.values[HEADING].unwrap();
        assert!(
            (0..36_000).contains(&h),
            "reconstructed heading {h} stays in [0, 360)"
        );
    }
}

#[test]
fn slope_follows_a_draining_battery() {
    let mut enc = encoder();
    // 0.02 % per second for 10 minutes: hold would resend every 15 s or so.
    let frames: Vec<_> = (0..600)
        .map(|t| {
            enc.push(&reading(
                t,
                [
                    None,
                    Some(90.0 - 0.02 * t as f64),
                    None,
                    None,
                    None,
                    None,
                    None,
                ],
            ))
        })
        .collect();
    let n = sent(&frames, BATTERY);
    assert!(
        n <= 4,
        "slope extrapolates a steady drain: {n} sends (two points, then max silence)"
    );
}

#[test]
fn dead_reckoning_follows_a_straight_drive() {
    let mut enc = encoder();
    // 36 km/h = 10 m/s due east at 34° N for 5 minutes.
    let (lat, lon0) = (34.0f64, -6.8f64);
    let m_per_deg_lon = 111_320.0 * lat.to_radians().cos();
    let frames: Vec<_> = (0..300)
        .map(|t| {
            let lon = lon0 + 10.0 * t as f64 / m_per_deg_lon;
            enc.push(&reading(
                t,
                [
                    Some(36.0),
                    None,
                    None,
                    Some(90.0),
                    Some(lat),
                    Some(lon),
                    None,
                ],
            ))
        })
        .collect();
    let n = sent(&frames, LAT);
    assert!(
        n <= 10,
        "dead reckoning predicts a constant course: position sent {n} times in 300 s"
    );
    assert_eq!(
        sent(&frames, SPEED),
        5,
        "speed: first value, then once a minute (max silence)"
    );
}

#[test]
fn hold_position_when_the_fix_does_not_move() {
    let mut enc = encoder();
    // A GPS that holds its fix while the vehicle moves (as in the Twizy logs):
    // the adaptive position model learns to hold.
    let frames: Vec<_> = (0..240)
        .map(|t| {
            let fix = (t / 12) as f64 * 1e-4;
            enc.push(&reading(
                t,
                [
                    Some(30.0),
                    None,
                    None,
                    Some(0.0),
                    Some(34.0 + fix),
                    Some(-6.8),
                    None,
                ],
            ))
        })
        .collect();
    let n = sent(&frames, LAT);
    assert!(
        n <= 30,
        "about one send per GPS update (20) plus a few while learning: {n}"
    );
}
