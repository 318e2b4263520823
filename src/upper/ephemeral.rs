//! Ephemeral upper layers: the upper and work directories of a writable mount made without
//! `--upper`, in the cache's `ephemeral/` directory, one directory per mount.
//!
//! The daemon removes its own when the mount ends. One whose daemon was killed first is
//! recognised by its lock: every ephemeral directory holds a lock file that its daemon keeps
//! locked (flock, inherited across the daemon's fork) for its whole life, so a lock that can
//! be taken marks a directory nobody uses, removed by the next mount.
//! Dependencies: cache, error, nix.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};

use crate::cache::Cache;
use crate::error::{Error, Result};

/// Lock file of an ephemeral upper layer: held (flock) by its daemon for its whole life.
const EPHEMERAL_LOCK: &str = "lock";

/// A new ephemeral upper layer's directories.
#[derive(Debug)]
pub struct Ephemeral {
    /// The directory holding all of it: removed when the mount ends.
    pub dir: PathBuf,
    /// The upper directory in it.
    pub upper: PathBuf,
    /// The work directory in it.
    pub work: PathBuf,
}

/// Makes a fresh ephemeral upper layer in `cache`, locked by this process until it exits;
/// first removes those whose daemon is gone.
pub fn create(cache: &Cache) -> Result<Ephemeral> {
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let eph = cache.root().join("ephemeral");
    remove_dead(&eph);
    let base = eph.join(format!("{}.{stamp}", std::process::id()));
    let err = |e: std::io::Error| Error::Mount {
        path: base.clone(),
        reason: e.to_string(),
    };
    fs::create_dir_all(&base).map_err(err)?;
    let lock = File::create(base.join(EPHEMERAL_LOCK)).map_err(err)?;
    let held =
        Flock::lock(lock, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| err(e.into()))?;
    // Held until the daemon (which inherits it across the fork) exits.
    std::mem::forget(held);
    Ok(Ephemeral {
        upper: base.join("upper"),
        work: base.join("work"),
        dir: base,
    })
}

/// Removes ephemeral upper layers whose daemon is gone (killed before it could clean up):
/// those whose lock nobody holds.
fn remove_dead(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(f) = File::open(e.path().join(EPHEMERAL_LOCK)) else {
            continue;
        };
        if Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok() {
            if let Err(err) = fs::remove_dir_all(e.path()) {
                log::warn!("removing stale {}: {err}", e.path().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_create_removes_only_layers_whose_lock_is_free() {
        let t = tempfile::tempdir().unwrap();
        let cache = Cache::new(t.path().to_path_buf());
        let live = create(&cache).unwrap();
        assert!(live.dir.join(EPHEMERAL_LOCK).is_file());
        assert_eq!(live.upper, live.dir.join("upper"));
        assert_eq!(live.work, live.dir.join("work"));
        // A daemon killed before cleaning up: its lock file is there, nobody holds it.
        let dead = t.path().join("ephemeral/1.1");
        fs::create_dir_all(dead.join("upper/etc")).unwrap();
        File::create(dead.join(EPHEMERAL_LOCK)).unwrap();
        // Not an ephemeral layer at all (no lock file): left alone.
        let other = t.path().join("ephemeral/other");
        fs::create_dir_all(&other).unwrap();

        let next = create(&cache).unwrap();
        assert!(!dead.exists(), "dead layer kept");
        assert!(live.dir.is_dir(), "live layer removed");
        assert!(other.is_dir());
        assert_ne!(next.dir, live.dir);
        // The live one's lock is held: nobody else can take it.
        let f = File::open(live.dir.join(EPHEMERAL_LOCK)).unwrap();
        assert!(Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err());
    }
}
