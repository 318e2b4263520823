//! Shared locks on a store's lock files, the kind containers/storage takes.
//!
//! containers/storage (`internal/rawfilelock`) locks `images.lock` and `layers.lock` with
//! `fcntl(F_SETLKW)` whole-file record locks: `F_RDLCK` to read its JSON files and big data,
//! `F_WRLCK` to change them. rimgfs takes `F_RDLCK` the same way, through the open-file
//! description variant (`F_OFD_SETLKW`): the kernel makes the two kinds conflict with each
//! other exactly as record locks do among themselves, and an OFD lock is not dropped when
//! some other descriptor of the same file in this process is closed, as a classic record
//! lock would be. The lock files are opened read-only and never created: rimgfs writes
//! nothing into a store. Dependencies: nix.

use std::fs::File;
use std::io;
use std::path::Path;

/// A shared lock, held until dropped (closing the descriptor releases it).
#[derive(Debug)]
pub struct SharedLock {
    _file: File,
}

impl SharedLock {
    /// Waits for and takes a shared lock on `path`.
    pub fn acquire(path: &Path) -> io::Result<SharedLock> {
        use nix::fcntl::{FcntlArg, fcntl};
        let file = File::open(path)?;
        let whole_file = libc::flock {
            l_type: libc::F_RDLCK as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            // 0: to the end of the file, however it grows (what containers/storage locks).
            l_len: 0,
            // OFD locks require 0 here.
            l_pid: 0,
        };
        loop {
            match fcntl(&file, FcntlArg::F_OFD_SETLKW(&whole_file)) {
                Ok(_) => return Ok(SharedLock { _file: file }),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::fcntl::{FcntlArg, fcntl};

    /// Asks the kernel whether a lock of `kind` could be placed now.
    fn would_block(path: &Path, kind: i32) -> bool {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut probe = libc::flock {
            l_type: kind as libc::c_short,
            l_whence: libc::SEEK_SET as libc::c_short,
            l_start: 0,
            l_len: 0,
            l_pid: 0,
        };
        fcntl(&f, FcntlArg::F_OFD_GETLK(&mut probe)).unwrap();
        probe.l_type != libc::F_UNLCK as libc::c_short
    }

    #[test]
    fn shared_lock_excludes_writers_not_readers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("layers.lock");
        std::fs::write(&p, b"").unwrap();
        let held = SharedLock::acquire(&p).unwrap();
        assert!(would_block(&p, libc::F_WRLCK));
        assert!(!would_block(&p, libc::F_RDLCK));
        // Closing another descriptor of the file does not drop the lock.
        drop(File::open(&p).unwrap());
        assert!(would_block(&p, libc::F_WRLCK));
        drop(held);
        assert!(!would_block(&p, libc::F_WRLCK));
        assert!(SharedLock::acquire(&dir.path().join("missing")).is_err());
    }
}
