//! What the logger the server spawns may touch: replay files only from the
//! configured directory (regular files, resolved through symlinks, never
//! outside it), a clean environment, and a bounded load.

use std::path::{Component, Path, PathBuf};

/// Variables the child inherits from the server; everything else (tokens,
/// keys, `DATABASE_URL`) stays behind.
pub const CHILD_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "RUST_LOG",
    "RUST_BACKTRACE",
];

/// Most simulated readings per second the server's logger may produce
/// (vehicles × rate): enough for the dashboard and tests, too little to
/// turn the server against itself.
pub const MAX_SIM_READINGS_PER_S: f64 = 2_000.0;

/// Resolves a replay file named by a client inside `dir` (already
/// canonical). Refuses `..`, paths that resolve (through symlinks) outside
/// the directory, and anything that is not a regular file (`/dev/zero`,
/// FIFOs, directories). An absolute path is accepted only if it lies inside.
pub fn resolve_replay(dir: Option<&Path>, name: &str) -> Result<PathBuf, String> {
    let Some(dir) = dir else {
        return Err(
            "replay through the server is off: set LOCKSTEP_REPLAY_DIR to the directory of recorded files"
                .into(),
        );
    };
    let requested = Path::new(name);
    if name.is_empty() || requested.components().any(|c| c == Component::ParentDir) {
        return Err(format!("replay file {name:?} must not contain \"..\""));
    }
    let joined = if requested.is_absolute() {
        requested.to_owned()
    } else {
        dir.join(requested)
    };
    let real = joined
        .canonicalize()
        .map_err(|_| format!("replay file {name:?} does not exist in the replay directory"))?;
    if !real.starts_with(dir) {
        return Err(format!(
            "replay file {name:?} is outside the replay directory"
        ));
    }
    let meta =
        std::fs::metadata(&real).map_err(|_| format!("replay file {name:?} cannot be read"))?;
    if !meta.file_type().is_file() {
        return Err(format!("replay file {name:?} is not a regular file"));
    }
    Ok(real)
}

/// Canonicalises `LOCKSTEP_REPLAY_DIR` at start; the message names the variable.
pub fn replay_dir(dir: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    dir.map(|d| {
        let real = d
            .canonicalize()
            .map_err(|e| anyhow::anyhow!("LOCKSTEP_REPLAY_DIR={}: {e}", d.display()))?;
        anyhow::ensure!(
            real.is_dir(),
            "LOCKSTEP_REPLAY_DIR={} is not a directory",
            d.display()
        );
        Ok(real)
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_stays_inside_its_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("replays");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("trip.csv"), "x").unwrap();
        std::fs::write(tmp.path().join("secret.txt"), "x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret.txt"), dir.join("link.csv")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero.csv")).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        let dir = dir.canonicalize().unwrap();
        let d = Some(dir.as_path());

        assert_eq!(resolve_replay(d, "trip.csv").unwrap(), dir.join("trip.csv"));
        let abs = dir.join("trip.csv").display().to_string();
        assert!(resolve_replay(d, &abs).is_ok());
        for bad in [
            "../secret.txt",
            "link.csv",
            "zero.csv",
            "/etc/passwd",
            "/proc/self/environ",
            "sub",
            "missing.csv",
            "",
        ] {
            assert!(resolve_replay(d, bad).is_err(), "{bad}");
        }
        assert!(
            resolve_replay(None, "trip.csv")
                .unwrap_err()
                .contains("LOCKSTEP_REPLAY_DIR")
        );
    }
}
