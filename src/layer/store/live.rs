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
///
/// The lock is released by closing the file, not by an explicit unlock: a mount's daemon
/// shares the lock with the process that forked it, and that process's exit must not end
/// the daemon's claim. The list file stays behind and is removed as a dead process's once
/// nobody holds it.
#[derive(Debug)]
pub struct Live {
    _file: std::fs::File,
}

/// Takes an exclusive flock on `f` without waiting; false if another holder has it.
#[allow(deprecated)] // nix's `Flock` unlocks on drop, which a shared lock must not do.
fn try_lock(f: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    match nix::fcntl::flock(f.as_raw_fd(), nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(()) => Ok(true),
        Err(nix::errno::Errno::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e.into()),
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
    // Locked and written under a name readers skip, so no reader sees it unlocked.
    let tmp = d.join(format!(
        ".tmp.{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let mut file = std::fs::File::create(&tmp)?;
    if !try_lock(&file)? {
        return Err(io::Error::other("live list already locked"));
    }
    let mut text = String::new();
    for p in paths {
        text.push_str(&p.to_string_lossy());
        text.push('\n');
    }
    file.write_all(text.as_bytes())?;
    std::fs::rename(&tmp, &path)?;
    Ok(Some(Live { _file: file }))
}

/// The paths named by lists of live processes (removing the lists of dead ones).
pub fn in_use(cache_root: &Path) -> HashSet<PathBuf> {
    let mut used = HashSet::new();
    let Ok(rd) = std::fs::read_dir(dir(cache_root)) else {
        return used;
    };
    for e in rd.flatten() {
        let path = e.path();
        if e.file_name().to_string_lossy().starts_with(".tmp.") {
            continue;
        }
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        match try_lock(&f) {
            // Nobody holds it: its process is gone (or done with those files).
            Ok(true) => {
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
