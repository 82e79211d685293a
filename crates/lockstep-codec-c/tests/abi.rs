//! The C ABI as a C caller uses it: the codes and messages of every failure,
//! buffers that are too small, saved encoders that continue bit for bit, and
//! agreement with the Rust codec it wraps.

use std::ffi::{CStr, CString};
use std::ptr;
use std::sync::Arc;

use lockstep_codec::{BatchOutcome, Catalog, CheckedBatch, Encoder, EncoderConfig, Reading, Vin};
use lockstep_codec_c::*;
use lockstep_proto::Message;

const VIN: &CStr = c"5YJ3E1EA000000042";

fn last_error() -> String {
    // SAFETY: the library's thread-local message, valid until the next failed call.
    unsafe { CStr::from_ptr(lockstep_last_error()) }
        .to_string_lossy()
        .into_owned()
}

/// A short deterministic drive: all seven channels, altitude missing now and then.
fn rows(n: usize) -> Vec<[f64; 7]> {
    (0..n)
        .map(|i| {
            let t = i as f64;
            [
                40.0 + 10.0 * (t / 20.0).sin(),
                80.0 - t * 0.01,
                5.0 * (t / 7.0).cos(),
                (t * 2.5) % 360.0,
                34.0 + t * 1e-5,
                -6.8 + t * 2e-5,
                if i % 17 == 3 {
                    f64::NAN
                } else {
                    20.0 + t * 0.05
                },
            ]
        })
        .collect()
}

fn reading(ts: i64, v: &[f64; 7]) -> LockstepReading {
    LockstepReading {
        timestamp_ms: ts,
        present: 0x7f,
        values: v.as_ptr(),
    }
}

fn open(session: u64) -> *mut LockstepEncoder {
    let mut enc = ptr::null_mut();
    // SAFETY: valid VIN string and out-pointer.
    let s = unsafe { lockstep_encoder_open(VIN.as_ptr(), session, ptr::null(), &mut enc) };
    assert_eq!(s, LockstepStatus::Ok, "{}", last_error());
    enc
}

fn cut(enc: *mut LockstepEncoder) -> Vec<u8> {
    let mut buf = LockstepBuffer {
        data: ptr::null_mut(),
        len: 0,
    };
    // SAFETY: live encoder, writable out-pointer; the buffer is copied, then freed once.
    unsafe {
        assert_eq!(
            lockstep_encoder_cut_alloc(enc, &mut buf, ptr::null_mut()),
            LockstepStatus::Ok
        );
        let v = if buf.len == 0 {
            Vec::new()
        } else {
            std::slice::from_raw_parts(buf.data, buf.len).to_vec()
        };
        lockstep_buffer_free(&mut buf);
        assert!(buf.data.is_null());
        v
    }
}

fn save(enc: *mut LockstepEncoder) -> Vec<u8> {
    let mut len = 0;
    // SAFETY: live encoder; cap 0 only asks for the size.
    let s = unsafe { lockstep_encoder_save(enc, ptr::null_mut(), 0, &mut len) };
    assert_eq!(s, LockstepStatus::BufferTooSmall);
    let mut buf = vec![0u8; len];
    // SAFETY: `buf` holds `len` bytes.
    let s = unsafe { lockstep_encoder_save(enc, buf.as_mut_ptr(), buf.len(), &mut len) };
    assert_eq!(s, LockstepStatus::Ok, "{}", last_error());
    buf
}

fn restore(bytes: &[u8]) -> *mut LockstepEncoder {
    let mut enc = ptr::null_mut();
    // SAFETY: `bytes` is readable for its length.
    let s = unsafe { lockstep_encoder_restore(bytes.as_ptr(), bytes.len(), &mut enc) };
    assert_eq!(s, LockstepStatus::Ok, "{}", last_error());
    enc
}

#[test]
fn batches_are_the_rust_encoders_bytes_and_decode_to_the_frames() {
    let data = rows(130);
    let catalog = Arc::new(Catalog::default_v1());
    let mut rust = Encoder::new(
        catalog.clone(),
        Vin::parse(VIN.to_str().unwrap()).unwrap(),
        7,
        EncoderConfig::default(),
    );
    let enc = open(7);
    let mut state = None;
    for chunk in data.chunks(40).enumerate() {
        let (k, rows) = chunk;
        let base = k as i64 * 40_000;
        let rs: Vec<LockstepReading> = rows
            .iter()
            .enumerate()
            .map(|(j, v)| reading(1_700_000_000_000 + base + j as i64 * 1000, v))
            .collect();
        let mut frames = vec![
            LockstepFrame {
                seq: 0,
                timestamp_ms: 0,
                keyframe: false,
                transmitted: 0,
                nulls: 0,
                values: [0.0; LOCKSTEP_MAX_CHANNELS],
            };
            rs.len()
        ];
        // SAFETY: `rs` and `frames` hold `rs.len()` elements; values point into `data`.
        let s = unsafe {
            lockstep_encoder_push_window(enc, rs.as_ptr(), rs.len(), rs.len(), frames.as_mut_ptr())
        };
        assert_eq!(s, LockstepStatus::Ok, "{}", last_error());
        let rust_rows: Vec<Reading> = rs
            .iter()
            .zip(rows)
            .map(|(r, v)| Reading {
                timestamp_ms: r.timestamp_ms,
                values: v.iter().map(|x| Some(*x)).collect(),
            })
            .collect();
        for j in 0..rust_rows.len() {
            rust.push_with_lookahead(&rust_rows[j], &rust_rows[j + 1..]);
        }
        let bytes = cut(enc);
        assert_eq!(bytes, rust.take_batch().unwrap().encode_to_vec());
        // What the cloud decodes is what the frames said.
        let cb = CheckedBatch::parse(&catalog, &bytes).unwrap();
        let BatchOutcome::Fresh { readings, state: s } =
            cb.decode(&catalog, state.as_ref()).unwrap()
        else {
            panic!("fresh batch")
        };
        state = Some(s);
        for (d, f) in readings.iter().zip(&frames) {
            assert_eq!(
                (d.seq, d.timestamp_ms, d.transmitted),
                (f.seq, f.timestamp_ms, f.transmitted)
            );
            for (ch, v) in d.values.iter().enumerate() {
                match v {
                    Some(v) => assert_eq!(v.to_bits(), f.values[ch].to_bits()),
                    None => assert!(f.values[ch].is_nan()),
                }
            }
        }
    }
    // SAFETY: live encoder.
    let checksum = unsafe { lockstep_encoder_state_checksum(enc) };
    assert_eq!(checksum, state.unwrap().checksum());
    // SAFETY: released once.
    unsafe { lockstep_encoder_free(enc) };
}

#[test]
fn a_restored_encoder_continues_bit_for_bit() {
    let data = rows(200);
    let (plain, mut restarted) = (open(99), open(99));
    let mut a = Vec::new();
    let mut b = Vec::new();
    for (i, v) in data.iter().enumerate() {
        let r = reading(1_600_000_000_000 + i as i64 * 1000, v);
        // SAFETY: live encoders, a valid reading, no frame wanted.
        unsafe {
            assert_eq!(
                lockstep_encoder_push(plain, &r, ptr::null_mut()),
                LockstepStatus::Ok
            );
            assert_eq!(
                lockstep_encoder_push(restarted, &r, ptr::null_mut()),
                LockstepStatus::Ok
            );
        }
        if i % 25 == 24 {
            a.push(cut(plain));
            b.push(cut(restarted));
            let saved = save(restarted);
            // SAFETY: released once, replaced by the restored handle.
            unsafe { lockstep_encoder_free(restarted) };
            restarted = restore(&saved);
        }
    }
    assert_eq!(a.len(), 8);
    assert_eq!(a, b);
    // SAFETY: released once each.
    unsafe {
        assert_eq!(
            lockstep_encoder_session_id(restarted),
            lockstep_encoder_session_id(plain)
        );
        lockstep_encoder_free(plain);
        lockstep_encoder_free(restarted);
    }
}

#[test]
fn failures_have_codes_and_messages_and_change_nothing() {
    let mut enc = ptr::null_mut();
    let bad = CString::new("5YJ3E1EA00000000I").unwrap();
    // SAFETY: valid strings and out-pointers throughout; handles released once.
    unsafe {
        assert_eq!(
            lockstep_encoder_open(bad.as_ptr(), 1, ptr::null(), &mut enc),
            LockstepStatus::InvalidVin
        );
        assert!(last_error().contains("position 16"), "{}", last_error());
        assert_eq!(
            lockstep_encoder_open(VIN.as_ptr(), 0, ptr::null(), &mut enc),
            LockstepStatus::InvalidArgument
        );
        assert_eq!(
            lockstep_encoder_open(ptr::null(), 1, ptr::null(), &mut enc),
            LockstepStatus::NullPointer
        );
        assert!(enc.is_null(), "nothing is written on failure");

        let enc = open(5);
        let v = rows(3);
        let mut r = reading(1_000, &v[0]);
        assert_eq!(
            lockstep_encoder_push(enc, &r, ptr::null_mut()),
            LockstepStatus::Ok
        );
        // Saving needs the readings cut first.
        let mut len = 0;
        assert_eq!(
            lockstep_encoder_save(enc, ptr::null_mut(), 0, &mut len),
            LockstepStatus::PendingReadings
        );
        // A presence bit beyond the catalog, a NULL values pointer, a wild timestamp: refused, nothing encoded.
        r.present = 1 << 7;
        assert_eq!(
            lockstep_encoder_push(enc, &r, ptr::null_mut()),
            LockstepStatus::InvalidArgument
        );
        r.present = 1;
        r.values = ptr::null();
        assert_eq!(
            lockstep_encoder_push(enc, &r, ptr::null_mut()),
            LockstepStatus::NullPointer
        );
        let far = reading(1 << 51, &v[1]);
        assert_eq!(
            lockstep_encoder_push(enc, &far, ptr::null_mut()),
            LockstepStatus::InvalidArgument
        );
        let window = [reading(2_000, &v[1]), far];
        assert_eq!(
            lockstep_encoder_push_window(enc, window.as_ptr(), 2, 2, ptr::null_mut()),
            LockstepStatus::InvalidArgument
        );
        assert_eq!(
            lockstep_encoder_next_seq(enc),
            1,
            "no reading was half encoded"
        );
        assert_eq!(lockstep_encoder_pending(enc), 1);

        // A buffer that is too small says the size and keeps the batch.
        let mut small = [0u8; 4];
        let mut info = LockstepBatchInfo::default();
        assert_eq!(
            lockstep_encoder_cut(enc, small.as_mut_ptr(), small.len(), &mut len, &mut info),
            LockstepStatus::BufferTooSmall
        );
        assert!(len > 4 && last_error().contains("needed"));
        let mut buf = vec![0u8; len];
        assert_eq!(
            lockstep_encoder_cut(enc, buf.as_mut_ptr(), buf.len(), &mut len, &mut info),
            LockstepStatus::Ok
        );
        assert_eq!((info.first_seq, info.count, len), (0, 1, buf.len()));
        assert_eq!(
            lockstep_encoder_cut(enc, buf.as_mut_ptr(), buf.len(), &mut len, &mut info),
            LockstepStatus::Ok
        );
        assert_eq!((len, info.count), (0, 0), "nothing pending: no batch");

        // Rewind: the next reading gets that seq and is a keyframe.
        assert_eq!(lockstep_encoder_rewind(enc, 0), LockstepStatus::Ok);
        let mut f = std::mem::zeroed::<LockstepFrame>();
        let r = reading(1_000, &v[0]);
        assert_eq!(lockstep_encoder_push(enc, &r, &mut f), LockstepStatus::Ok);
        assert!(f.keyframe && f.seq == 0);
        lockstep_encoder_free(enc);

        // Saved state from another format, or cut short.
        let mut out = ptr::null_mut();
        assert_eq!(
            lockstep_encoder_restore(b"LSE2xxxxxxxx".as_ptr(), 12, &mut out),
            LockstepStatus::BadState
        );
        let h = open(9);
        let good = save(h);
        lockstep_encoder_free(h);
        assert_eq!(
            lockstep_encoder_restore(good.as_ptr(), good.len() - 1, &mut out),
            LockstepStatus::BadState
        );
        assert!(out.is_null());
        assert_eq!(
            lockstep_encoder_restore(good.as_ptr(), good.len(), ptr::null_mut()),
            LockstepStatus::NullPointer
        );

        // NULL handles are refused, not dereferenced.
        assert_eq!(
            lockstep_encoder_push(ptr::null_mut(), &r, ptr::null_mut()),
            LockstepStatus::NullPointer
        );
        assert_eq!(lockstep_encoder_next_seq(ptr::null()), 0);
        lockstep_encoder_free(ptr::null_mut());
    }
}

#[test]
fn catalog_and_version_are_the_codecs() {
    let c = Catalog::default_v1();
    assert_eq!(lockstep_catalog_hash(), c.hash());
    assert_eq!(lockstep_channel_count(), 7);
    // SAFETY: static NUL-terminated strings.
    unsafe {
        assert_eq!(
            CStr::from_ptr(lockstep_catalog_text()).to_str().unwrap(),
            c.canonical_text()
        );
        assert_eq!(
            CStr::from_ptr(lockstep_channel_name(4)).to_str().unwrap(),
            "latitude"
        );
        assert_eq!(
            CStr::from_ptr(lockstep_channel_unit(0)).to_str().unwrap(),
            "km/h"
        );
        assert!(
            CStr::from_ptr(lockstep_version())
                .to_str()
                .unwrap()
                .ends_with("protocol v1")
        );
    }
    assert!(lockstep_channel_name(7).is_null());
    assert_eq!(lockstep_channel_tolerance(4), 5.0);
    assert!(lockstep_channel_tolerance(64).is_nan());
}

#[test]
fn seed_predictor_round_trips_and_survives_a_restart() {
    let vin = c"5YJ3E1EA000000001";
    // SAFETY: handles from the library, released once; buffers sized as passed.
    unsafe {
        let edge = lockstep_seed_new();
        let cloud = lockstep_seed_new();
        let mut body = [0u8; 128];
        let (mut len, mut sent) = (0usize, 0u8);
        for k in 0..50 {
            let v = [30.0 + k as f64, 80.0, 1.5, 90.0];
            let s = lockstep_seed_encode(
                edge,
                vin.as_ptr(),
                k,
                v.as_ptr(),
                0b0111,
                ptr::null(),
                body.as_mut_ptr(),
                body.len(),
                &mut len,
                &mut sent,
            );
            assert_eq!(s, LockstepStatus::Ok, "{}", last_error());
            assert_eq!(sent & 0b1000, 0, "heading was not measured");
            let mut rec = [0.0; 4];
            let (mut tx, mut ts) = (0u8, 0i64);
            let s = lockstep_seed_reconstruct(
                cloud,
                body.as_ptr(),
                len,
                rec.as_mut_ptr(),
                &mut tx,
                &mut ts,
            );
            assert_eq!(s, LockstepStatus::Ok);
            assert_eq!((tx, ts), (sent, k));
            assert!(rec[3].is_nan());
            for i in 0..3 {
                assert!((rec[i] - v[i]).abs() <= [1.0, 0.3, 2.0][i]);
            }
        }
        // Too small a buffer leaves the predictor as it was.
        let mut before = [0.0; 4];
        lockstep_seed_save(edge, before.as_mut_ptr());
        let v = [500.0, 1.0, 1.0, 1.0];
        let s = lockstep_seed_encode(
            edge,
            vin.as_ptr(),
            99,
            v.as_ptr(),
            0b1111,
            ptr::null(),
            body.as_mut_ptr(),
            2,
            &mut len,
            ptr::null_mut(),
        );
        assert_eq!(s, LockstepStatus::BufferTooSmall);
        let mut after = [0.0; 4];
        lockstep_seed_save(edge, after.as_mut_ptr());
        assert_eq!(before.map(f64::to_bits), after.map(f64::to_bits));
        // Restored from its four values, it predicts like the original.
        let mut copy = ptr::null_mut();
        assert_eq!(
            lockstep_seed_restore(after.as_ptr(), &mut copy),
            LockstepStatus::Ok
        );
        let mut again = [0.0; 4];
        lockstep_seed_save(copy, again.as_mut_ptr());
        assert_eq!(after.map(f64::to_bits), again.map(f64::to_bits));
        let garbage = [0xffu8; 3];
        let mut rec = [0.0; 4];
        assert_eq!(
            lockstep_seed_reconstruct(
                cloud,
                garbage.as_ptr(),
                3,
                rec.as_mut_ptr(),
                ptr::null_mut(),
                ptr::null_mut()
            ),
            LockstepStatus::Malformed
        );
        lockstep_seed_free(edge);
        lockstep_seed_free(cloud);
        lockstep_seed_free(copy);
    }
}
