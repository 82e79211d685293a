//! No panic crosses the C boundary, whatever a caller restores: saved states
//! with arbitrary bytes (their checksum made to fit) are refused, or restored
//! and then encode, or stop with `LOCKSTEP_STATUS_PANIC` and refuse the handle
//! from then on. An unwinding panic into C, or an abort, fails the test.

use std::ptr;

use lockstep_codec::catalog::fnv1a32;
use lockstep_codec_c::*;
use proptest::prelude::*;

fn valid_saved_state() -> Vec<u8> {
    let mut enc = ptr::null_mut();
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // SAFETY: valid strings, readings and buffers; the handle is released once.
    unsafe {
        assert_eq!(
            lockstep_encoder_open(c"5YJ3E1EA000000042".as_ptr(), 3, ptr::null(), &mut enc),
            LockstepStatus::Ok
        );
        for i in 0..30 {
            let v = [
                40.0 + i as f64,
                80.0,
                2.0,
                10.0 * i as f64,
                34.0,
                -6.8,
                20.0,
            ];
            let r = LockstepReading {
                timestamp_ms: 1_000 * i,
                present: 0x7f,
                values: v.as_ptr(),
            };
            assert_eq!(
                lockstep_encoder_push(enc, &r, ptr::null_mut()),
                LockstepStatus::Ok
            );
        }
        let mut info = LockstepBatchInfo::default();
        assert_eq!(
            lockstep_encoder_cut(enc, buf.as_mut_ptr(), buf.len(), &mut len, &mut info),
            LockstepStatus::Ok
        );
        assert_eq!(
            lockstep_encoder_save(enc, buf.as_mut_ptr(), buf.len(), &mut len),
            LockstepStatus::Ok
        );
        lockstep_encoder_free(enc);
    }
    buf.truncate(len);
    buf
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn hostile_saved_states_are_refused_or_contained(
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..12),
        extremes in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..4),
        dt in prop_oneof![Just(1_000i64), any::<i64>()],
    ) {
        let mut b = valid_saved_state();
        let body = b.len() - 4;
        // Past the magic; every other byte is fair game.
        for (i, v) in edits {
            b[4 + i.index(body - 4)] = v;
        }
        // Extreme 64-bit values where the state keeps integers.
        for (i, max) in extremes {
            let at = 4 + i.index(body - 12);
            let x = if max { i64::MAX } else { i64::MIN };
            b[at..at + 8].copy_from_slice(&x.to_le_bytes());
        }
        let sum = fnv1a32(&b[..body]);
        b[body..].copy_from_slice(&sum.to_le_bytes());

        let mut enc = ptr::null_mut();
        // SAFETY: `b` is readable for its length; the handle is released once.
        let s = unsafe { lockstep_encoder_restore(b.as_ptr(), b.len(), &mut enc) };
        prop_assert!(matches!(s, LockstepStatus::Ok | LockstepStatus::BadState), "{s:?}");
        if s == LockstepStatus::Ok {
            let mut poisoned = false;
            let mut ts = 30_000i64;
            for i in 0..20 {
                ts = ts.wrapping_add(dt).clamp(-(1 << 50), 1 << 50);
                let v = [1e6 * i as f64, -1e9, 1e12, 720.0, 89.9, 179.9, -1e5];
                let r = LockstepReading { timestamp_ms: ts, present: 0x7f, values: v.as_ptr() };
                let mut len = 0;
                let mut buf = [0u8; 4096];
                // SAFETY: a live handle, a valid reading and buffer.
                let (p, c) = unsafe {
                    (
                        lockstep_encoder_push(enc, &r, ptr::null_mut()),
                        lockstep_encoder_cut(enc, buf.as_mut_ptr(), buf.len(), &mut len, ptr::null_mut()),
                    )
                };
                for st in [p, c] {
                    prop_assert!(matches!(st, LockstepStatus::Ok | LockstepStatus::Panic), "{st:?}");
                    prop_assert!(!(poisoned && st == LockstepStatus::Ok), "a poisoned handle is refused");
                    poisoned |= st == LockstepStatus::Panic;
                }
            }
            // SAFETY: released once.
            unsafe { lockstep_encoder_free(enc) };
        }
    }
}

#[test]
fn a_damaged_saved_state_is_refused() {
    let mut b = valid_saved_state();
    let mut enc = ptr::null_mut();
    let n = b.len();
    b[n / 2] ^= 1;
    // SAFETY: `b` is readable for its length.
    let s = unsafe { lockstep_encoder_restore(b.as_ptr(), b.len(), &mut enc) };
    assert_eq!(s, LockstepStatus::BadState);
    assert!(enc.is_null());
}
