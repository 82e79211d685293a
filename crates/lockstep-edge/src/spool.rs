//! The on-disk spool: every batch is written here before it is sent and
//! removed when the server acknowledged it, so a server outage or an edge
//! restart loses nothing.
//!
//! One file per batch, `<VIN>_<session hex>_<first seq, 20 digits>.batch`, so
//! a directory listing sorted by name is each session's send order. The seed
//! wire form spools one reading per file under session 0 with the reading's
//! timestamp as its sequence number. A file holds the encoded body *and the
//! raw readings it encodes*: after a resync (or on a restart) the readings are
//! encoded again from a keyframe.
//!
//! Files are written to a temporary name, synced (`fdatasync`) and renamed,
//! and the directory is synced after every rename, create and delete, so a
//! crash of the process or a power loss leaves either the old file or the new
//! one, and an acknowledged batch does not come back. Unreadable files are
//! moved to `corrupt/`, batches the server refuses for good to `rejected/`
//! (with the reason beside them): kept for a human, never silently dropped.
//!
//! File layout (little-endian): `LKSPOOL1`, VIN (u8 length + bytes),
//! session id u64, first seq u64, catalog hash u64, channels u32, readings u32,
//! per reading: timestamp i64, null mask u64, the present values as f64 bits;
//! body length u32 + body; FNV-1a 64 of everything before it.
//!
//! Replays also keep a cursor per VIN (`cursor-<VIN>`: the timestamp of the
//! last reading spooled) so a restarted replay resumes after it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};
use lockstep_codec::Reading;
use lockstep_codec::catalog::fnv1a64;

const MAGIC: &[u8; 8] = b"LKSPOOL1";

/// A batch on its way to the server, with what it encodes.
#[derive(Debug, Clone, PartialEq)]
pub struct SpooledBatch {
    pub vin: String,
    pub session_id: u64,
    pub first_seq: u64,
    pub catalog_hash: u64,
    /// The raw readings of seq `first_seq..first_seq + readings.len()`.
    pub readings: Vec<Reading>,
    /// The encoded `lockstep.v1.Batch`.
    pub body: Vec<u8>,
}

impl SpooledBatch {
    /// The spool file name of this batch.
    pub fn file_name(&self) -> String {
        format!(
            "{}_{:016x}_{:020}.batch",
            self.vin, self.session_id, self.first_seq
        )
    }

    /// Sequence number after the last reading.
    pub fn end_seq(&self) -> u64 {
        self.first_seq + self.readings.len() as u64
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.body.len() + self.readings.len() * 64);
        b.extend_from_slice(MAGIC);
        b.push(self.vin.len() as u8);
        b.extend_from_slice(self.vin.as_bytes());
        b.extend_from_slice(&self.session_id.to_le_bytes());
        b.extend_from_slice(&self.first_seq.to_le_bytes());
        b.extend_from_slice(&self.catalog_hash.to_le_bytes());
        let channels = self.readings.first().map_or(0, |r| r.values.len());
        b.extend_from_slice(&(channels as u32).to_le_bytes());
        b.extend_from_slice(&(self.readings.len() as u32).to_le_bytes());
        for r in &self.readings {
            b.extend_from_slice(&r.timestamp_ms.to_le_bytes());
            let mask = r
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_none())
                .fold(0u64, |m, (i, _)| m | 1 << i);
            b.extend_from_slice(&mask.to_le_bytes());
            for v in r.values.iter().flatten() {
                b.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        b.extend_from_slice(&(self.body.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.body);
        let sum = fnv1a64(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    fn from_bytes(b: &[u8]) -> Result<Self> {
        if b.len() < 16 || &b[..8] != MAGIC {
            bail!("not a spool file");
        }
        let (data, sum) = b.split_at(b.len() - 8);
        if fnv1a64(data).to_le_bytes() != sum {
            bail!("checksum mismatch (torn or damaged file)");
        }
        let mut c = Cursor { b: data, at: 8 };
        let vin_len = c.take(1)?[0] as usize;
        let vin = String::from_utf8(c.take(vin_len)?.to_vec()).context("VIN is not UTF-8")?;
        let session_id = c.u64()?;
        let first_seq = c.u64()?;
        let catalog_hash = c.u64()?;
        let channels = c.u32()? as usize;
        let n = c.u32()? as usize;
        if channels > 64 {
            bail!("{channels} channels");
        }
        let mut readings = Vec::with_capacity(n.min(1 << 16));
        for _ in 0..n {
            let timestamp_ms = c.u64()? as i64;
            let mask = c.u64()?;
            let mut values = Vec::with_capacity(channels);
            for i in 0..channels {
                values.push(if mask >> i & 1 == 1 {
                    None
                } else {
                    Some(f64::from_bits(c.u64()?))
                });
            }
            readings.push(Reading {
                timestamp_ms,
                values,
            });
        }
        let body_len = c.u32()? as usize;
        let body = c.take(body_len)?.to_vec();
        if c.at != data.len() {
            bail!("{} trailing bytes", data.len() - c.at);
        }
        Ok(Self {
            vin,
            session_id,
            first_seq,
            catalog_hash,
            readings,
            body,
        })
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .context("truncated spool file")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
}

/// A spool directory.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
    /// Directory syncs done (a test checks that every change is followed by one).
    dir_syncs: Arc<AtomicU64>,
}

/// Makes the entries of `dir` (names created, renamed, removed) durable.
fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync the directory {}", dir.display()))
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create spool directory {}", dir.display()))?;
        let spool = Self {
            dir,
            dir_syncs: Arc::default(),
        };
        if let Some(parent) = spool.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent)?;
        }
        Ok(spool)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory syncs done by this spool so far.
    pub fn dir_syncs(&self) -> u64 {
        self.dir_syncs.load(Ordering::Relaxed)
    }

    fn sync(&self, dir: &Path) -> Result<()> {
        sync_dir(dir)?;
        self.dir_syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes (or replaces) `batch` durably.
    pub fn write(&self, batch: &SpooledBatch) -> Result<()> {
        self.write_file(&batch.file_name(), &batch.to_bytes())
    }

    fn write_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_data()?;
        drop(f);
        fs::rename(&tmp, &path)
            .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))?;
        self.sync(&self.dir)
    }

    /// Removes an acknowledged batch (missing already is fine).
    pub fn remove(&self, batch: &SpooledBatch) -> Result<()> {
        self.remove_file(&batch.file_name())
            .context("cannot remove a spooled batch")
    }

    fn remove_file(&self, name: &str) -> Result<()> {
        match fs::remove_file(self.dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            Err(_) => Ok(()),
            Ok(()) => self.sync(&self.dir),
        }
    }

    /// A subdirectory (`rejected`, `corrupt`), created durably if missing.
    fn subdir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join(name);
        if !dir.is_dir() {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            self.sync(&self.dir)?;
        }
        Ok(dir)
    }

    /// Moves a batch the server refused for good to `rejected/`, with the reason beside it.
    pub fn reject(&self, batch: &SpooledBatch, why: &str) -> Result<()> {
        let dir = self.subdir("rejected")?;
        let name = batch.file_name();
        let mut f = fs::File::create(dir.join(format!("{name}.reason.txt")))?;
        f.write_all(why.as_bytes())?;
        f.sync_data()?;
        if fs::rename(self.dir.join(&name), dir.join(&name)).is_err() {
            let mut f = fs::File::create(dir.join(&name))?;
            f.write_all(&batch.to_bytes())?;
            f.sync_data()?;
        }
        // The new name first: a power loss in between leaves the batch in both places, not none.
        self.sync(&dir)?;
        self.sync(&self.dir)
    }

    /// Every spooled batch, in send order (by VIN, session, first seq).
    /// Unreadable files are moved to `corrupt/` and reported in the second value.
    pub fn load_all(&self) -> Result<(Vec<SpooledBatch>, Vec<String>)> {
        let mut names: Vec<String> = fs::read_dir(&self.dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".batch") && !n.starts_with('.'))
            .collect();
        names.sort();
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for n in names {
            let path = self.dir.join(&n);
            match fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| SpooledBatch::from_bytes(&b))
            {
                Ok(b) if b.file_name() == n => out.push(b),
                Ok(_) => bad.push(format!("{n}: name does not match content")),
                Err(e) => {
                    let dir = self.subdir("corrupt")?;
                    fs::rename(&path, dir.join(&n))?;
                    self.sync(&dir)?;
                    self.sync(&self.dir)?;
                    bad.push(format!("{n}: {e:#}"));
                }
            }
        }
        Ok((out, bad))
    }

    /// Number of batches waiting in the spool.
    pub fn count(&self) -> usize {
        fs::read_dir(&self.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".batch"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// The replay cursor of `vin`: timestamp of the last reading spooled.
    pub fn cursor(&self, vin: &str) -> Option<i64> {
        fs::read_to_string(self.dir.join(format!("cursor-{vin}")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn set_cursor(&self, vin: &str, timestamp_ms: i64) -> Result<()> {
        self.write_file(
            &format!("cursor-{vin}"),
            timestamp_ms.to_string().as_bytes(),
        )
    }

    /// Forgets the cursor of `vin` (its replay finished and everything was acknowledged).
    pub fn clear_cursor(&self, vin: &str) {
        let _ = self.remove_file(&format!("cursor-{vin}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(session: u64, first: u64) -> SpooledBatch {
        SpooledBatch {
            vin: "LKS0123456789ABCD".into(),
            session_id: session,
            first_seq: first,
            catalog_hash: 42,
            readings: vec![
                Reading {
                    timestamp_ms: 1000,
                    values: vec![
                        Some(1.5),
                        None,
                        Some(-0.1 + 0.2),
                        None,
                        Some(33.9),
                        Some(-6.8),
                        Some(f64::MIN_POSITIVE),
                    ],
                },
                Reading {
                    timestamp_ms: 2000,
                    values: vec![None; 7],
                },
            ],
            body: vec![1, 2, 3, 255],
        }
    }

    #[test]
    fn write_read_remove_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let b1 = batch(7, 10);
        let b0 = batch(7, 8);
        let b2 = batch(3, 0);
        {
            let s = Spool::open(dir.path()).unwrap();
            for b in [&b1, &b0, &b2] {
                s.write(b).unwrap();
            }
            assert_eq!(s.count(), 3);
        }
        // A new process opens the same directory.
        let s = Spool::open(dir.path()).unwrap();
        let (all, bad) = s.load_all().unwrap();
        assert!(bad.is_empty());
        assert_eq!(
            all,
            vec![b2.clone(), b0.clone(), b1.clone()],
            "bit-exact, in send order"
        );
        s.remove(&b0).unwrap();
        s.remove(&b0).unwrap();
        assert_eq!(s.load_all().unwrap().0, vec![b2, b1]);
    }

    #[test]
    fn damaged_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let b = batch(1, 0);
        s.write(&b).unwrap();
        let path = dir.path().join(b.file_name());
        let mut bytes = fs::read(&path).unwrap();
        bytes[20] ^= 1;
        fs::write(&path, bytes).unwrap();
        let (all, bad) = s.load_all().unwrap();
        assert!(all.is_empty());
        assert_eq!(bad.len(), 1);
        assert!(dir.path().join("corrupt").join(b.file_name()).exists());
    }

    #[test]
    fn cursors_and_rejects() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        assert_eq!(s.cursor("V"), None);
        s.set_cursor("V", 12345).unwrap();
        assert_eq!(Spool::open(dir.path()).unwrap().cursor("V"), Some(12345));
        s.clear_cursor("V");
        assert_eq!(s.cursor("V"), None);
        let b = batch(1, 0);
        s.write(&b).unwrap();
        s.reject(&b, "422 bad VIN").unwrap();
        assert_eq!(s.count(), 0);
        assert!(dir.path().join("rejected").join(b.file_name()).exists());
    }

    /// Power-loss safety: every create, rename and delete is followed by a
    /// sync of the directory that holds the name.
    #[test]
    fn every_change_of_a_name_syncs_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path().join("spool")).unwrap();
        let b = batch(1, 0);
        let mut before = s.dir_syncs();
        let mut step = |what: &str, f: &dyn Fn()| {
            f();
            let now = s.dir_syncs();
            assert!(now > before, "{what} synced no directory");
            before = now;
        };
        step("write", &|| s.write(&b).unwrap());
        step("remove", &|| s.remove(&b).unwrap());
        step("set_cursor", &|| s.set_cursor("V", 1).unwrap());
        step("clear_cursor", &|| s.clear_cursor("V"));
        s.write(&b).unwrap();
        let before_reject = s.dir_syncs();
        s.reject(&b, "413").unwrap();
        assert!(
            s.dir_syncs() >= before_reject + 3,
            "rejected/ created, the batch's new and old directory"
        );
        // Removing what is not there changes nothing and syncs nothing.
        let n = s.dir_syncs();
        s.remove(&b).unwrap();
        assert_eq!(s.dir_syncs(), n);
    }
}
