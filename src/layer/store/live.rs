//! Which cache files live processes are using, so eviction never takes them.
//!
//! A process that serves from the cache writes the paths it uses to `live/<pid>.<n>` and holds
//! an exclusive flock on that file while it uses them (a mount's daemon inherits it across
//! the fork). Eviction reads every list whose lock is held; a list whose lock can be
//! taken belongs to a process that is gone and is removed.
//! Dependencies: nix (flock).

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The directory of the lists.
pub fn dir(cache_root: &Path) -> PathBuf {
    cache_root.join("live")
}

/// A list of files in use, held until dropped (or, forgotten, until the process exits).
#[derive(Debug)]
pub struct Live {
    path: PathBuf,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl Drop for Live {
    fn drop(&mut self) {
        // Removed while still locked, so nobody takes it for a dead process's list.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Records that this process uses `paths` while the returned guard lives.
pub fn register(cache_root: &Path, paths: &[PathBuf]) -> io::Result<Option<Live>> {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    if paths.is_empty() {
        return Ok(None);
    }
    let d = dir(cache_root);
    std::fs::create_dir_all(&d)?;
    let name = format!(
        "{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    );
    let path = d.join(name);
    let Some(mut lock) = super::lock_file(&path, false)? else {
        return Err(io::Error::other("live list already locked"));
    };
    let mut text = String::new();
    for p in paths {
        text.push_str(&p.to_string_lossy());
        text.push('\n');
    }
    lock.write_all(text.as_bytes())?;
    Ok(Some(Live { path, _lock: lock }))
}

/// The paths named by lists of live processes (removing the lists of dead ones).
pub fn in_use(cache_root: &Path) -> HashSet<PathBuf> {
    let mut used = HashSet::new();
    let Ok(rd) = std::fs::read_dir(dir(cache_root)) else {
        return used;
    };
    for e in rd.flatten() {
        let path = e.path();
        match super::lock_file(&path, false) {
            // Nobody holds it: its process is gone.
            Ok(Some(_held)) => {
                let _ = std::fs::remove_file(&path);
            }
            _ => {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    used.extend(text.lines().map(PathBuf::from));
                }
            }
        }
    }
    used
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_lists_name_what_this_process_uses() {
        let dir = tempfile::tempdir().unwrap();
        let held = register(dir.path(), &[PathBuf::from("/c/blobs/x.data")]).unwrap();
        let used = in_use(dir.path());
        assert!(used.contains(Path::new("/c/blobs/x.data")));
        drop(held);
        assert!(!in_use(dir.path()).contains(Path::new("/c/blobs/x.data")));
        // A list nobody holds is a dead process's and goes away.
        std::fs::write(super::dir(dir.path()).join("1.0"), "/c/old\n").unwrap();
        assert!(!in_use(dir.path()).contains(Path::new("/c/old")));
        assert!(!super::dir(dir.path()).join("1.0").exists());
    }
}
