//! The lockstep codec for C and C++: a C ABI over [`lockstep_codec`] with the
//! default signal catalog, for edge loggers that are not written in Rust.
//!
//! Built as `liblockstep_codec_c.a` and `liblockstep_codec_c.so`; the header
//! `include/lockstep_codec.h` is generated from this file by cbindgen (the
//! `header` test fails when it is out of date). `docs/edge-integration.md`
//! shows the call sequence.
//!
//! Rules every function follows:
//! - Fallible functions return a [`LockstepStatus`]; on failure
//!   [`lockstep_last_error`] says why. Out-parameters are written only on
//!   success unless a function says otherwise.
//! - Nothing unwinds into C: every entry point catches panics and returns
//!   [`LockstepStatus::Panic`]; an encoder that panicked is refused from then on.
//! - The library never keeps a pointer it was given beyond the call. It owns
//!   what it returns through `*_open`, `*_restore`, `*_new` and
//!   [`LockstepBuffer`]s, each released by its `*_free` function. Static
//!   strings live as long as the process.
//! - One handle is used by one thread at a time; different handles are independent.

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, OnceLock};

use lockstep_codec::catalog::fnv1a32;
use lockstep_codec::encoder::LOOKAHEAD;
use lockstep_codec::seed::SEED_TOLERANCES;
use lockstep_codec::state::TS_LIMIT;
use lockstep_codec::{Catalog, Encoder, EncoderConfig, Reading, SeedPredictor, SessionState, Vin};
use lockstep_proto::Message;
use lockstep_proto::telemetry::TelemetryReading;

/// The most channels a catalog has; the size of `LockstepFrame.values`.
pub const LOCKSTEP_MAX_CHANNELS: usize = 64;
/// How many following readings the encoder looks at (`lockstep_encoder_push_window`).
pub const LOCKSTEP_LOOKAHEAD: usize = 120;
const _: () = assert!(
    LOCKSTEP_LOOKAHEAD == LOOKAHEAD,
    "the header states the codec's lookahead"
);
/// Fields of the seed form: speed, battery, power, heading.
pub const LOCKSTEP_SEED_FIELDS: usize = 4;

/// What a call did. `LOCKSTEP_STATUS_OK` is 0; every other value is a failure
/// explained by `lockstep_last_error()`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockstepStatus {
    Ok = 0,
    /// A required pointer was NULL.
    NullPointer = 1,
    /// An argument is out of range (a timestamp, a presence bit beyond the catalog, ...).
    InvalidArgument = 2,
    /// The VIN is not 17 characters of the ISO 3779 alphabet.
    InvalidVin = 3,
    /// The caller's buffer is too small; the needed size was written to `*len`
    /// and nothing was lost: call again with a larger buffer.
    BufferTooSmall = 4,
    /// The encoder holds readings not yet cut into a batch (save needs none).
    PendingReadings = 5,
    /// Saved state that cannot be restored: corrupt, another format or another catalog.
    BadState = 6,
    /// Bytes that are not a valid message.
    Malformed = 7,
    /// A bug inside the library; the handle involved must be freed, not used.
    Panic = 8,
}

/// Why a call failed, before it becomes a status and a message.
struct Error {
    status: LockstepStatus,
    message: String,
}

fn fail<T>(status: LockstepStatus, message: impl Into<String>) -> Result<T, Error> {
    Err(Error {
        status,
        message: message.into(),
    })
}

fn null<T>(what: &str) -> Result<T, Error> {
    fail(LockstepStatus::NullPointer, format!("{what} is NULL"))
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

/// The message of the last failed call on this thread ("" if none failed).
/// The string belongs to the library and stays valid until the next failed
/// call on the same thread.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Runs one entry point: errors become a status and the thread's message,
/// panics stop here.
fn guard(f: impl FnOnce() -> Result<(), Error>) -> LockstepStatus {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => LockstepStatus::Ok,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            e.status
        }
        Err(p) => {
            set_last_error(&format!(
                "internal error in lockstep-codec-c: {}",
                panic_text(&*p)
            ));
            LockstepStatus::Panic
        }
    }
}

/// For functions that return a value: `fallback` if `f` panics.
fn value_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(fallback)
}

/// Writes `v` through an optional out-pointer.
///
/// # Safety
/// `out` is NULL or valid for writing one `T`.
unsafe fn put<T>(out: *mut T, v: T) {
    if !out.is_null() {
        // SAFETY: non-null, and valid for a write by the caller's contract.
        unsafe { out.write(v) }
    }
}

/// Writes `v` through a required out-pointer.
///
/// # Safety
/// `out` is NULL or valid for writing one `T`.
unsafe fn put_required<T>(out: *mut T, v: T, what: &str) -> Result<(), Error> {
    if out.is_null() {
        return null(what);
    }
    // SAFETY: non-null, and valid for a write by the caller's contract.
    unsafe { out.write(v) };
    Ok(())
}

/// # Safety
/// `p` is NULL or points to `len` readable bytes.
unsafe fn bytes_in<'a>(p: *const u8, len: usize, what: &str) -> Result<&'a [u8], Error> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return null(what);
    }
    // SAFETY: non-null and `len` readable bytes by the caller's contract; the
    // slice does not outlive the call that received the pointer.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Copies `bytes` into the caller's buffer, or says how large it must be.
///
/// # Safety
/// `buf` is NULL or valid for `cap` bytes; `len` is NULL or valid for a write.
unsafe fn copy_out(bytes: &[u8], buf: *mut u8, cap: usize, len: *mut usize) -> Result<(), Error> {
    // SAFETY: forwarded contract.
    unsafe { put_required(len, bytes.len(), "len")? };
    if bytes.len() > cap {
        return fail(
            LockstepStatus::BufferTooSmall,
            format!("the buffer holds {cap} bytes, {} are needed", bytes.len()),
        );
    }
    if !bytes.is_empty() {
        if buf.is_null() {
            return null("buf");
        }
        // SAFETY: `buf` is valid for `cap >= bytes.len()` bytes and cannot
        // overlap `bytes`, which the library owns.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, bytes.len()) };
    }
    Ok(())
}

/// # Safety
/// `s` is NULL or a NUL-terminated string.
unsafe fn vin_in(s: *const c_char) -> Result<Vin, Error> {
    if s.is_null() {
        return null("vin");
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(s) };
    let s = s
        .to_str()
        .or_else(|_| fail(LockstepStatus::InvalidVin, "the VIN is not UTF-8"))?;
    Vin::parse(s).or_else(|e| fail(LockstepStatus::InvalidVin, e.to_string()))
}

// ------------------------------------------------------------------ catalog

struct Statics {
    catalog: Arc<Catalog>,
    text: CString,
    names: Vec<CString>,
    units: Vec<CString>,
    batch_content_type: CString,
    seed_content_type: CString,
}

fn statics() -> &'static Statics {
    static S: OnceLock<Statics> = OnceLock::new();
    S.get_or_init(|| {
        let catalog = Arc::new(Catalog::default_v1());
        let c = |s: &str| CString::new(s).expect("no NUL in catalog text");
        Statics {
            text: c(&catalog.canonical_text()),
            names: catalog.signals().iter().map(|s| c(&s.name)).collect(),
            units: catalog.signals().iter().map(|s| c(&s.unit)).collect(),
            batch_content_type: c(lockstep_proto::CONTENT_TYPE_BATCH),
            seed_content_type: c(lockstep_proto::CONTENT_TYPE_SEED),
            catalog,
        }
    })
}

const VERSION: &CStr = match CStr::from_bytes_with_nul(
    concat!(
        "lockstep-codec ",
        env!("CARGO_PKG_VERSION"),
        " protocol v1\0"
    )
    .as_bytes(),
) {
    Ok(c) => c,
    Err(_) => panic!("the version string has one NUL, at the end"),
};

/// The library's version and protocol, e.g. "lockstep-codec 0.1.0 protocol v1" (static).
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_version() -> *const c_char {
    VERSION.as_ptr()
}

/// FNV-1a 64 of the default catalog's canonical text: the `catalog_hash`
/// every batch carries, and the server must use the same.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_catalog_hash() -> u64 {
    value_or(0, || statics().catalog.hash())
}

/// The default catalog's canonical text (static, NUL-terminated).
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_catalog_text() -> *const c_char {
    value_or(std::ptr::null(), || statics().text.as_ptr())
}

/// Channels of the default catalog (7: speed, battery, power, heading,
/// latitude, longitude, altitude). Readings carry this many values.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_channel_count() -> usize {
    value_or(0, || statics().catalog.len())
}

/// Entry `ch` of a per-channel list of static strings, or NULL beyond it.
fn channel_str(list: fn(&'static Statics) -> &'static [CString], ch: usize) -> *const c_char {
    value_or(std::ptr::null(), || {
        list(statics())
            .get(ch)
            .map_or(std::ptr::null(), |n| n.as_ptr())
    })
}

/// The name of channel `ch` (static; the CSV column and JSON key), or NULL
/// beyond the catalog.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_channel_name(ch: usize) -> *const c_char {
    channel_str(|s| &s.names, ch)
}

/// The unit of channel `ch` (static), or NULL beyond the catalog.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_channel_unit(ch: usize) -> *const c_char {
    channel_str(|s| &s.units, ch)
}

/// The tolerance of channel `ch` in its unit (metres of 2-D distance for the
/// position), or NaN beyond the catalog.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_channel_tolerance(ch: usize) -> f64 {
    value_or(f64::NAN, || {
        statics()
            .catalog
            .signals()
            .get(ch)
            .map_or(f64::NAN, |s| s.tolerance())
    })
}

/// `Content-Type` of a lockstep batch POST (static).
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_batch_content_type() -> *const c_char {
    value_or(std::ptr::null(), || statics().batch_content_type.as_ptr())
}

/// `Content-Type` of a seed `TelemetryReading` POST (static).
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_seed_content_type() -> *const c_char {
    value_or(std::ptr::null(), || statics().seed_content_type.as_ptr())
}

// ------------------------------------------------------------------ encoder

/// Encoder settings that need not match the cloud's.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LockstepEncoderConfig {
    /// A keyframe at least this often (reading time, ms); 0 = only the first.
    pub keyframe_interval_ms: i64,
    /// Put the state checksum in every batch (lets the cloud detect a divergence).
    pub checksum: bool,
}

impl From<LockstepEncoderConfig> for EncoderConfig {
    fn from(c: LockstepEncoderConfig) -> Self {
        Self {
            keyframe_interval_ms: c.keyframe_interval_ms,
            checksum: c.checksum,
        }
    }
}

/// The defaults: a keyframe every 30 minutes, checksums on.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_encoder_config_default() -> LockstepEncoderConfig {
    let d = EncoderConfig::default();
    LockstepEncoderConfig {
        keyframe_interval_ms: d.keyframe_interval_ms,
        checksum: d.checksum,
    }
}

/// One reading as measured.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LockstepReading {
    /// Unix epoch, milliseconds; strictly increasing within a session.
    pub timestamp_ms: i64,
    /// Bit i set = channel i was measured (`values[i]` is read); a clear bit
    /// or a non-finite value is "not measured".
    pub present: u64,
    /// `lockstep_channel_count()` values in the channels' units (km/h, %, kW,
    /// degrees, metres); borrowed for the call only. May be NULL when `present` is 0.
    pub values: *const f64,
}

/// What the cloud will reconstruct for one encoded reading.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct LockstepFrame {
    pub seq: u64,
    pub timestamp_ms: i64,
    pub keyframe: bool,
    /// Bit i set = channel i was transmitted (else predicted, or null).
    pub transmitted: u64,
    /// Bit i set = channel i is null.
    pub nulls: u64,
    /// The reconstructed value per channel, in its unit; NaN where null.
    /// Exactly the doubles the server stores.
    pub values: [f64; LOCKSTEP_MAX_CHANNELS],
}

/// Size and position of a batch that was cut.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct LockstepBatchInfo {
    /// Sequence number of its first reading.
    pub first_seq: u64,
    /// Readings in it (0 = nothing was pending, no batch).
    pub count: u32,
}

/// Bytes owned by the library (a batch, a saved state), released with
/// `lockstep_buffer_free`.
#[repr(C)]
#[derive(Debug)]
pub struct LockstepBuffer {
    pub data: *mut u8,
    pub len: usize,
}

/// Releases a buffer filled by the library and sets it to {NULL, 0}. NULL and
/// an empty buffer are accepted.
///
/// # Safety
/// `buf` is NULL or points to a `LockstepBuffer` last filled by this library
/// (or set to {NULL, 0}) and not released since.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_buffer_free(buf: *mut LockstepBuffer) {
    // SAFETY: NULL or a valid LockstepBuffer, by the contract above.
    let Some(b) = (unsafe { buf.as_mut() }) else {
        return;
    };
    if !b.data.is_null() {
        // SAFETY: `data`/`len` came from `Box<[u8]>::into_raw` in `give` and
        // were not released (contract above); rebuilding the box frees it once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(b.data, b.len)) });
    }
    b.data = std::ptr::null_mut();
    b.len = 0;
}

/// Hands `bytes` to the caller as a [`LockstepBuffer`].
fn give(bytes: Vec<u8>) -> LockstepBuffer {
    if bytes.is_empty() {
        return LockstepBuffer {
            data: std::ptr::null_mut(),
            len: 0,
        };
    }
    let b = bytes.into_boxed_slice();
    let len = b.len();
    LockstepBuffer {
        data: Box::into_raw(b).cast::<u8>(),
        len,
    }
}

/// One vehicle session's encoder (opaque).
pub struct LockstepEncoder {
    enc: Encoder,
    /// A batch that was cut but did not fit the caller's buffer yet.
    cut: Option<(Vec<u8>, LockstepBatchInfo)>,
    /// A panic left the encoder in an unknown state.
    poisoned: bool,
}

/// Runs `f` on an encoder handle, refusing NULL and poisoned handles.
///
/// # Safety
/// `enc` is NULL or a live handle from `lockstep_encoder_open`/`_restore`,
/// not used by another thread during the call.
unsafe fn with_encoder(
    enc: *mut LockstepEncoder,
    f: impl FnOnce(&mut LockstepEncoder) -> Result<(), Error>,
) -> LockstepStatus {
    guard(|| {
        // SAFETY: NULL or live and unshared, by the contract above.
        let Some(e) = (unsafe { enc.as_mut() }) else {
            return null("enc");
        };
        if e.poisoned {
            return fail(
                LockstepStatus::Panic,
                "this encoder hit an internal error earlier; free it and restore from a saved state",
            );
        }
        match catch_unwind(AssertUnwindSafe(|| f(e))) {
            Ok(r) => r,
            Err(p) => {
                e.poisoned = true;
                resume_unwind(p)
            }
        }
    })
}

/// Reads an encoder handle for a getter; `None` for NULL.
///
/// # Safety
/// As [`with_encoder`].
unsafe fn encoder_ref<'a>(enc: *const LockstepEncoder) -> Option<&'a LockstepEncoder> {
    // SAFETY: NULL or live, by the contract above.
    unsafe { enc.as_ref() }
}

fn new_handle(enc: Encoder) -> *mut LockstepEncoder {
    Box::into_raw(Box::new(LockstepEncoder {
        enc,
        cut: None,
        poisoned: false,
    }))
}

/// Opens an encoder for a new session of `vin` with the default catalog.
/// `session_id` must be random and non-zero (a new one per session: the
/// server tells sessions apart by it); `config` NULL = the defaults. The
/// first reading is a keyframe with sequence number 0. On success `*out`
/// owns a handle to release with `lockstep_encoder_free`.
///
/// # Safety
/// `vin` is NULL or NUL-terminated; `config` is NULL or valid; `out` is
/// NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_open(
    vin: *const c_char,
    session_id: u64,
    config: *const LockstepEncoderConfig,
    out: *mut *mut LockstepEncoder,
) -> LockstepStatus {
    guard(|| {
        if out.is_null() {
            return null("out");
        }
        // SAFETY: NULL or NUL-terminated, by the contract above.
        let vin = unsafe { vin_in(vin)? };
        if session_id == 0 {
            return fail(
                LockstepStatus::InvalidArgument,
                "session_id must be non-zero (and random)",
            );
        }
        // SAFETY: NULL or a valid config, by the contract above.
        let config = unsafe { config.as_ref() }
            .copied()
            .unwrap_or_else(|| lockstep_encoder_config_default());
        if config.keyframe_interval_ms < 0 {
            return fail(
                LockstepStatus::InvalidArgument,
                "keyframe_interval_ms is negative",
            );
        }
        let enc = Encoder::new(statics().catalog.clone(), vin, session_id, config.into());
        // SAFETY: `out` is non-null and writable, by the contract above.
        unsafe { out.write(new_handle(enc)) };
        Ok(())
    })
}

/// Releases an encoder (NULL is accepted). Pending readings are dropped.
///
/// # Safety
/// `enc` is NULL or a handle from this library not released before; it is
/// not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_free(enc: *mut LockstepEncoder) {
    if !enc.is_null() {
        // SAFETY: a handle made by `Box::into_raw` in `new_handle`, released once.
        drop(unsafe { Box::from_raw(enc) });
    }
}

/// Sequence number the next pushed reading gets (0 for NULL).
///
/// # Safety
/// `enc` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_next_seq(enc: *const LockstepEncoder) -> u64 {
    // SAFETY: forwarded contract.
    unsafe { encoder_ref(enc) }.map_or(0, |e| e.enc.next_seq())
}

/// The session id the encoder was opened with (0 for NULL).
///
/// # Safety
/// `enc` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_session_id(enc: *const LockstepEncoder) -> u64 {
    // SAFETY: forwarded contract.
    unsafe { encoder_ref(enc) }.map_or(0, |e| e.enc.session_id())
}

/// Readings encoded but not yet handed out by a cut (0 for NULL).
///
/// # Safety
/// `enc` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_pending(enc: *const LockstepEncoder) -> usize {
    // SAFETY: forwarded contract.
    unsafe { encoder_ref(enc) }.map_or(0, |e| {
        e.enc.pending() + e.cut.as_ref().map_or(0, |(_, i)| i.count as usize)
    })
}

/// FNV-1a 32 of the predictor state after the last pushed reading: what the
/// cloud's state checksum will be once it has decoded the same readings.
///
/// # Safety
/// `enc` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_state_checksum(enc: *const LockstepEncoder) -> u32 {
    // SAFETY: forwarded contract.
    unsafe { encoder_ref(enc) }.map_or(0, |e| value_or(0, || e.enc.state().checksum()))
}

/// Converts a C reading, checking it against the catalog.
///
/// # Safety
/// `r.values` is NULL or points to `channels` doubles.
unsafe fn reading_in(r: &LockstepReading, channels: usize) -> Result<Reading, Error> {
    if !(-TS_LIMIT..=TS_LIMIT).contains(&r.timestamp_ms) {
        return fail(
            LockstepStatus::InvalidArgument,
            format!(
                "timestamp {} ms is beyond ±2^50 ms of the epoch",
                r.timestamp_ms
            ),
        );
    }
    if channels < 64 && r.present >> channels != 0 {
        return fail(
            LockstepStatus::InvalidArgument,
            format!(
                "present mask {:#x} names a channel beyond the catalog's {channels}",
                r.present
            ),
        );
    }
    if r.present == 0 {
        return Ok(Reading {
            timestamp_ms: r.timestamp_ms,
            values: vec![None; channels],
        });
    }
    if r.values.is_null() {
        return null("values (with a non-zero present mask)");
    }
    // SAFETY: non-null and `channels` readable doubles by the contract above.
    let v = unsafe { std::slice::from_raw_parts(r.values, channels) };
    Ok(Reading {
        timestamp_ms: r.timestamp_ms,
        values: (0..channels)
            .map(|i| (r.present & (1 << i) != 0).then_some(v[i]))
            .collect(),
    })
}

fn frame_out(catalog: &Catalog, f: &lockstep_codec::Frame) -> LockstepFrame {
    let mut values = [f64::NAN; LOCKSTEP_MAX_CHANNELS];
    for ((out, q), sig) in values.iter_mut().zip(&f.values).zip(catalog.signals()) {
        if let Some(q) = q {
            *out = sig.dequantise(*q);
        }
    }
    LockstepFrame {
        seq: f.seq,
        timestamp_ms: f.timestamp_ms,
        keyframe: f.keyframe,
        transmitted: f.transmitted,
        nulls: f.nulls,
        values,
    }
}

/// Encodes one reading without looking ahead. `frame` (NULL = not wanted)
/// receives what the cloud will reconstruct.
///
/// # Safety
/// `enc` is NULL or a live handle; `reading` is NULL or valid, its `values`
/// as documented; `frame` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_push(
    enc: *mut LockstepEncoder,
    reading: *const LockstepReading,
    frame: *mut LockstepFrame,
) -> LockstepStatus {
    // SAFETY: the same contract, for a window of one reading.
    unsafe { lockstep_encoder_push_window(enc, reading, 1, 1, frame) }
}

/// Encodes `readings[0..count)`, each looking at the readings that follow it
/// in `readings[0..total)` (up to `LOCKSTEP_LOOKAHEAD`): where a value will
/// be held, the encoder sends the middle of what comes, so it is held longer
/// (same error bound). An edge that cuts a batch of n readings calls this
/// with count = total = n. `frames` (NULL = not wanted) receives `count`
/// frames. Every reading is checked before any is encoded: on failure the
/// encoder is unchanged.
///
/// # Safety
/// `enc` is NULL or a live handle; `readings` is NULL or points to `total`
/// valid readings; `frames` is NULL or writable for `count` frames.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_push_window(
    enc: *mut LockstepEncoder,
    readings: *const LockstepReading,
    count: usize,
    total: usize,
    frames: *mut LockstepFrame,
) -> LockstepStatus {
    let run = |e: &mut LockstepEncoder| {
        if count > total {
            return fail(
                LockstepStatus::InvalidArgument,
                format!("count {count} exceeds total {total}"),
            );
        }
        if count == 0 {
            return Ok(());
        }
        if readings.is_null() {
            return null("readings");
        }
        let used = total.min(count.saturating_add(LOOKAHEAD));
        // SAFETY: non-null, and `total >= used` valid readings by the contract.
        let raw = unsafe { std::slice::from_raw_parts(readings, used) };
        let channels = e.enc.catalog().len();
        let rs = raw
            .iter()
            // SAFETY: each reading's `values` is NULL or `channels` doubles by the contract.
            .map(|r| unsafe { reading_in(r, channels) })
            .collect::<Result<Vec<_>, _>>()?;
        for j in 0..count {
            let f = e.enc.push_with_lookahead(&rs[j], &rs[j + 1..]);
            if !frames.is_null() {
                // SAFETY: non-null and writable for `count > j` frames by the contract.
                unsafe { frames.add(j).write(frame_out(e.enc.catalog(), &f)) };
            }
        }
        Ok(())
    };
    // SAFETY: `enc` is NULL or a live, unshared handle by the contract.
    unsafe { with_encoder(enc, run) }
}

/// Takes the pending readings as one encoded `lockstep.v1.Batch`, or the
/// batch an earlier call could not hand out.
fn take_cut(e: &mut LockstepEncoder) -> Option<&(Vec<u8>, LockstepBatchInfo)> {
    if e.cut.is_none()
        && let Some(b) = e.enc.take_batch()
    {
        let info = LockstepBatchInfo {
            first_seq: b.first_seq,
            count: b.count,
        };
        e.cut = Some((b.encode_to_vec(), info));
    }
    e.cut.as_ref()
}

/// Cuts the pending readings into one batch, the body of a POST to
/// `/api/telemetry`, written to `buf` (`cap` bytes; the caller owns it).
/// `*len` receives the batch's size: 0 when nothing was pending. When `cap`
/// is too small the call fails with `LOCKSTEP_STATUS_BUFFER_TOO_SMALL`, `*len`
/// is the size needed and the batch is kept for the next cut (call with
/// `cap` 0 to ask the size). `info` (NULL = not wanted) receives the batch's
/// first sequence number and count.
///
/// # Safety
/// `enc` is NULL or a live handle; `buf` is NULL or writable for `cap`
/// bytes; `len` and `info` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_cut(
    enc: *mut LockstepEncoder,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
    info: *mut LockstepBatchInfo,
) -> LockstepStatus {
    let run = |e: &mut LockstepEncoder| {
        if len.is_null() {
            return null("len");
        }
        let Some((bytes, i)) = take_cut(e) else {
            // SAFETY: `info` is NULL or writable, `len` non-null and writable, by the contract.
            unsafe {
                put(info, LockstepBatchInfo::default());
                len.write(0);
            }
            return Ok(());
        };
        let i = *i;
        // SAFETY: `buf` is NULL or writable for `cap` bytes, `len` writable, by the contract.
        unsafe { copy_out(bytes, buf, cap, len)? };
        // SAFETY: `info` is NULL or writable by the contract.
        unsafe { put(info, i) };
        e.cut = None;
        Ok(())
    };
    // SAFETY: `enc` is NULL or a live, unshared handle by the contract.
    unsafe { with_encoder(enc, run) }
}

/// Like `lockstep_encoder_cut`, into a buffer the library allocates:
/// `*out` receives it ({NULL, 0} when nothing was pending); release it with
/// `lockstep_buffer_free`.
///
/// # Safety
/// `enc` is NULL or a live handle; `out` and `info` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_cut_alloc(
    enc: *mut LockstepEncoder,
    out: *mut LockstepBuffer,
    info: *mut LockstepBatchInfo,
) -> LockstepStatus {
    let run = |e: &mut LockstepEncoder| {
        if out.is_null() {
            return null("out");
        }
        take_cut(e);
        let (bytes, i) = e.cut.take().unwrap_or_default();
        // SAFETY: `out` is non-null and writable, `info` NULL or writable, by the contract.
        unsafe {
            out.write(give(bytes));
            put(info, i);
        }
        Ok(())
    };
    // SAFETY: `enc` is NULL or a live, unshared handle by the contract.
    unsafe { with_encoder(enc, run) }
}

/// Rewinds to `seq`, dropping pending readings and any batch not handed out:
/// the next reading gets `seq` and is a keyframe. On a 409 `resync_required`
/// answer the edge rewinds to the first reading the server does not have
/// (its `next_seq` when given, else the first unacknowledged one) and pushes
/// the readings from there again.
///
/// # Safety
/// `enc` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_rewind(
    enc: *mut LockstepEncoder,
    seq: u64,
) -> LockstepStatus {
    let run = |e: &mut LockstepEncoder| {
        e.cut = None;
        e.enc.rewind(seq);
        Ok(())
    };
    // SAFETY: `enc` is NULL or a live, unshared handle by the contract.
    unsafe { with_encoder(enc, run) }
}

/// The next reading will be a keyframe (nothing else changes).
///
/// # Safety
/// `enc` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_request_keyframe(
    enc: *mut LockstepEncoder,
) -> LockstepStatus {
    let run = |e: &mut LockstepEncoder| {
        e.enc.request_keyframe();
        Ok(())
    };
    // SAFETY: `enc` is NULL or a live, unshared handle by the contract.
    unsafe { with_encoder(enc, run) }
}

/// Saved encoder layout, version 1 (all integers little-endian):
/// magic `LSE1`, catalog hash u64, session id u64, VIN 17 bytes,
/// keyframe interval i64, checksum u8, keyframe due u8, last keyframe i64,
/// then the predictor state as `SessionState::to_bytes` (docs/protocol.md),
/// then FNV-1a 32 of everything before it (a damaged spool file is refused,
/// not restored into a state the server would not share).
const SAVE_MAGIC: &[u8; 4] = b"LSE1";

fn save_bytes(e: &LockstepEncoder) -> Result<Vec<u8>, Error> {
    if e.enc.pending() > 0 || e.cut.is_some() {
        return fail(
            LockstepStatus::PendingReadings,
            "readings are pending: cut them into a batch before saving",
        );
    }
    let enc = &e.enc;
    let (due, last_kf) = enc.keyframe_schedule();
    let config = enc.config();
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(SAVE_MAGIC);
    b.extend_from_slice(&enc.catalog().hash().to_le_bytes());
    b.extend_from_slice(&enc.session_id().to_le_bytes());
    b.extend_from_slice(enc.vin().as_str().as_bytes());
    b.extend_from_slice(&config.keyframe_interval_ms.to_le_bytes());
    b.push(u8::from(config.checksum));
    b.push(u8::from(due));
    b.extend_from_slice(&last_kf.to_le_bytes());
    b.extend_from_slice(&enc.state().to_bytes());
    let sum = fnv1a32(&b);
    b.extend_from_slice(&sum.to_le_bytes());
    Ok(b)
}

fn restore_bytes(bytes: &[u8]) -> Result<Encoder, Error> {
    let bad = |why: &str| fail(LockstepStatus::BadState, format!("saved encoder: {why}"));
    let Some((body, sum)) = bytes.split_last_chunk::<4>() else {
        return bad("truncated");
    };
    if fnv1a32(body) != u32::from_le_bytes(*sum) {
        return bad("checksum mismatch (damaged or cut short)");
    }
    let mut r = body;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (h, t) = r.split_at_checked(n)?;
        r = t;
        Some(h)
    };
    let mut fields = || -> Option<_> {
        let magic = take(4)?;
        let hash = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let session = u64::from_le_bytes(take(8)?.try_into().ok()?);
        let vin = take(17)?.to_vec();
        let interval = i64::from_le_bytes(take(8)?.try_into().ok()?);
        let checksum = take(1)?[0];
        let due = take(1)?[0];
        let last_kf = i64::from_le_bytes(take(8)?.try_into().ok()?);
        Some((
            magic.to_vec(),
            hash,
            session,
            vin,
            interval,
            checksum,
            due,
            last_kf,
        ))
    };
    let Some((magic, hash, session, vin, interval, checksum, due, last_kf)) = fields() else {
        return bad("truncated");
    };
    if magic != SAVE_MAGIC {
        return bad("not a saved lockstep encoder (format LSE1)");
    }
    let catalog = &statics().catalog;
    if hash != catalog.hash() {
        return bad(&format!(
            "saved with catalog {hash:016x}, this library uses {:016x}",
            catalog.hash()
        ));
    }
    let Some(vin) = std::str::from_utf8(&vin)
        .ok()
        .and_then(|v| Vin::parse(v).ok())
    else {
        return bad("invalid VIN");
    };
    if session == 0 || interval < 0 || checksum > 1 || due > 1 {
        return bad("invalid settings");
    }
    let Some(state) = SessionState::from_bytes(catalog, r) else {
        return bad("predictor state does not fit the catalog");
    };
    Ok(Encoder::resume(
        catalog.clone(),
        vin,
        session,
        EncoderConfig {
            keyframe_interval_ms: interval,
            checksum: checksum == 1,
        },
        state,
        (due == 1, last_kf),
    ))
}

/// Saves everything the encoder needs to continue after a restart (VIN,
/// session, settings, predictor state) into `buf` (`cap` bytes; sizes as in
/// `lockstep_encoder_cut`). Only between batches: with readings pending it
/// fails with `LOCKSTEP_STATUS_PENDING_READINGS`. An encoder restored from
/// these bytes encodes the next readings exactly as this one would.
///
/// # Safety
/// `enc` is NULL or a live handle; `buf` is NULL or writable for `cap`
/// bytes; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_save(
    enc: *mut LockstepEncoder,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> LockstepStatus {
    let run = |e: &mut LockstepEncoder| {
        let bytes = save_bytes(e)?;
        // SAFETY: `buf` is NULL or writable for `cap` bytes, `len` NULL or writable, by the contract.
        unsafe { copy_out(&bytes, buf, cap, len) }
    };
    // SAFETY: `enc` is NULL or a live, unshared handle by the contract.
    unsafe { with_encoder(enc, run) }
}

/// Like `lockstep_encoder_save`, into a buffer the library allocates
/// (release it with `lockstep_buffer_free`).
///
/// # Safety
/// `enc` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_save_alloc(
    enc: *mut LockstepEncoder,
    out: *mut LockstepBuffer,
) -> LockstepStatus {
    let run = |e: &mut LockstepEncoder| {
        if out.is_null() {
            return null("out");
        }
        let bytes = save_bytes(e)?;
        // SAFETY: `out` is non-null and writable by the contract.
        unsafe { out.write(give(bytes)) };
        Ok(())
    };
    // SAFETY: `enc` is NULL or a live, unshared handle by the contract.
    unsafe { with_encoder(enc, run) }
}

/// Opens an encoder from bytes `lockstep_encoder_save` wrote (possibly by
/// another process, on another platform). On success `*out` owns a handle
/// to release with `lockstep_encoder_free`.
///
/// # Safety
/// `bytes` is NULL or readable for `len` bytes; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_encoder_restore(
    bytes: *const u8,
    len: usize,
    out: *mut *mut LockstepEncoder,
) -> LockstepStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let bytes = unsafe { bytes_in(bytes, len, "bytes")? };
        if out.is_null() {
            return null("out");
        }
        let enc = restore_bytes(bytes)?;
        // SAFETY: `out` is non-null and writable by the contract.
        unsafe { out.write(new_handle(enc)) };
        Ok(())
    })
}

// --------------------------------------------------------------------- seed

/// The seed form's predictor for one vehicle (opaque): for loggers that post
/// one `telemetry.TelemetryReading` per request.
pub struct LockstepSeedPredictor {
    pred: SeedPredictor,
}

/// A new seed predictor (empty state), released with `lockstep_seed_free`.
#[unsafe(no_mangle)]
pub extern "C" fn lockstep_seed_new() -> *mut LockstepSeedPredictor {
    Box::into_raw(Box::new(LockstepSeedPredictor {
        pred: SeedPredictor::default(),
    }))
}

/// Releases a seed predictor (NULL is accepted).
///
/// # Safety
/// `p` is NULL or from `lockstep_seed_new`/`_restore`, not released before.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_seed_free(p: *mut LockstepSeedPredictor) {
    if !p.is_null() {
        // SAFETY: made by `Box::into_raw`, released once.
        drop(unsafe { Box::from_raw(p) });
    }
}

/// # Safety
/// `p` is NULL or points to 4 readable doubles.
unsafe fn four_in(p: *const f64, what: &str) -> Result<[f64; 4], Error> {
    if p.is_null() {
        return null(what);
    }
    // SAFETY: non-null, 4 readable doubles by the contract above.
    Ok(unsafe { p.cast::<[f64; 4]>().read_unaligned() })
}

/// Edge side of the seed form: the `TelemetryReading` body for one reading,
/// omitting each field the cloud predicts within `tolerance`. `values` are
/// speed, battery, power, heading; bit i of `present` says `values[i]` was
/// measured (an absent or non-finite value is left out: the cloud stores
/// null while that field was never sent, its prediction afterwards).
/// `tolerance` NULL = the seed tolerances (1 km/h, 0.3 %, 2 kW, 2°). The body
/// goes to `buf` as in `lockstep_encoder_cut`; on any failure the predictor
/// is unchanged. `sent` (NULL = not wanted) receives the transmitted fields' bits.
///
/// # Safety
/// `p` is NULL or live; `vin` NULL or NUL-terminated; `values` NULL or 4
/// doubles; `tolerance` NULL or 4 doubles; `buf` NULL or writable for `cap`
/// bytes; `len` and `sent` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_seed_encode(
    p: *mut LockstepSeedPredictor,
    vin: *const c_char,
    timestamp_ms: i64,
    values: *const f64,
    present: u8,
    tolerance: *const f64,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
    sent: *mut u8,
) -> LockstepStatus {
    guard(|| {
        // SAFETY: NULL or live, by the contract.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return null("p");
        };
        // SAFETY: forwarded contract for each pointer.
        let vin = unsafe { vin_in(vin)? };
        // SAFETY: as above.
        let v = unsafe { four_in(values, "values")? };
        let tol = if tolerance.is_null() {
            SEED_TOLERANCES
        } else {
            // SAFETY: as above.
            unsafe { four_in(tolerance, "tolerance")? }
        };
        let actual = std::array::from_fn(|i| (present & (1 << i) != 0).then_some(v[i]));
        let mut next = p.pred;
        let msg = next.encode_partial(vin.as_str(), timestamp_ms, actual, tol);
        // SAFETY: as above.
        unsafe { copy_out(&msg.encode_to_vec(), buf, cap, len)? };
        p.pred = next;
        let mask = [msg.speed, msg.battery, msg.power, msg.heading]
            .iter()
            .enumerate()
            .fold(0u8, |m, (i, v)| m | (u8::from(v.is_some()) << i));
        // SAFETY: as above.
        unsafe { put(sent, mask) };
        Ok(())
    })
}

/// Cloud side of the seed form (what the server stores for one body):
/// `values` receives speed, battery, power, heading (NaN = null), then the
/// predictor learns the transmitted fields. `transmitted` and `timestamp_ms`
/// (NULL = not wanted) receive their bits and the reading's time. The server also drops a reading whose timestamp is
/// not later than the last one of that VIN; this function does not.
///
/// # Safety
/// `p` is NULL or live; `body` NULL or readable for `len` bytes; `values`
/// NULL or writable for 4 doubles; `transmitted` and `timestamp_ms` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_seed_reconstruct(
    p: *mut LockstepSeedPredictor,
    body: *const u8,
    len: usize,
    values: *mut f64,
    transmitted: *mut u8,
    timestamp_ms: *mut i64,
) -> LockstepStatus {
    guard(|| {
        // SAFETY: NULL or live, by the contract.
        let Some(p) = (unsafe { p.as_mut() }) else {
            return null("p");
        };
        if values.is_null() {
            return null("values");
        }
        // SAFETY: forwarded contract.
        let body = unsafe { bytes_in(body, len, "body")? };
        let msg = TelemetryReading::decode(body)
            .or_else(|e| fail(LockstepStatus::Malformed, format!("seed body: {e}")))?;
        let rec = p.pred.reconstruct(&msg);
        let out = rec.values.map(|v| v.unwrap_or(f64::NAN));
        // SAFETY: `values` is non-null and writable for 4 doubles by the contract.
        unsafe { values.cast::<[f64; 4]>().write_unaligned(out) };
        // SAFETY: forwarded contract.
        unsafe { put(transmitted, rec.transmitted) };
        // SAFETY: forwarded contract.
        unsafe { put(timestamp_ms, msg.timestamp) };
        Ok(())
    })
}

/// The predictor's state, to keep across restarts: the smoothed value of
/// speed, battery, power, heading (NaN = no value yet) into `state`.
///
/// # Safety
/// `p` is NULL or live; `state` NULL or writable for 4 doubles.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_seed_save(
    p: *const LockstepSeedPredictor,
    state: *mut f64,
) -> LockstepStatus {
    guard(|| {
        // SAFETY: NULL or live, by the contract.
        let Some(p) = (unsafe { p.as_ref() }) else {
            return null("p");
        };
        if state.is_null() {
            return null("state");
        }
        let s: [f64; 4] = std::array::from_fn(|i| p.pred.predict(i).unwrap_or(f64::NAN));
        // SAFETY: non-null, writable for 4 doubles by the contract.
        unsafe { state.cast::<[f64; 4]>().write_unaligned(s) };
        Ok(())
    })
}

/// A seed predictor continuing from `lockstep_seed_save`'s four values
/// (NaN = no value yet); `*out` is released with `lockstep_seed_free`.
///
/// # Safety
/// `state` is NULL or readable for 4 doubles; `out` NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn lockstep_seed_restore(
    state: *const f64,
    out: *mut *mut LockstepSeedPredictor,
) -> LockstepStatus {
    guard(|| {
        // SAFETY: forwarded contract.
        let s = unsafe { four_in(state, "state")? };
        let mut pred = SeedPredictor::default();
        for (i, v) in s.into_iter().enumerate() {
            // The first value a field learns is taken as is: its state becomes exactly `v`.
            if v.is_finite() {
                pred.update(i, v);
            }
        }
        if out.is_null() {
            return null("out");
        }
        let h = Box::into_raw(Box::new(LockstepSeedPredictor { pred }));
        // SAFETY: `out` is non-null and writable by the contract.
        unsafe { out.write(h) };
        Ok(())
    })
}
