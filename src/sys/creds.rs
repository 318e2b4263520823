//! Making an entry as the request's caller: for one call, the calling thread takes the
//! caller's file-system uid and gid and no umask, and keeps the daemon's capabilities, as
//! kernel overlayfs creates upper entries. The new entry is then born with its final owner,
//! group (the parent's under setgid, by the upper filesystem's own rule) and mode, in one
//! call. Dependencies: libc.

use std::cell::Cell;
use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: capability sets of two 32-bit words.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

type Caps = [CapData; 2];

fn capget() -> io::Result<Caps> {
    let mut h = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut d = Caps::default();
    // SAFETY: a version-3 header and room for its two data words.
    super::cvt(unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } as i32)?;
    Ok(d)
}

fn capset(d: &Caps) -> io::Result<()> {
    let mut h = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    // SAFETY: a version-3 header and its two data words, read only.
    super::cvt(unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) } as i32).map(drop)
}

/// `setfsuid`/`setfsgid` answer the previous id and never fail; asking with -1 (never a
/// valid id) changes nothing and tells whether a change took.
fn set_fs_ids(uid: u32, gid: u32) -> Option<(u32, u32)> {
    // SAFETY: plain calls on the calling thread's credentials.
    unsafe {
        let old_gid = libc::setfsgid(gid) as u32;
        let old_uid = libc::setfsuid(uid) as u32;
        let took = libc::setfsuid(u32::MAX) as u32 == uid && libc::setfsgid(u32::MAX) as u32 == gid;
        if took {
            return Some((old_uid, old_gid));
        }
        libc::setfsuid(old_uid);
        libc::setfsgid(old_gid);
        None
    }
}

thread_local! {
    /// Whether this thread has a umask of its own (`unshare(CLONE_FS)`): `None` not tried.
    static OWN_UMASK: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Gives the thread a umask of its own, once, so clearing it leaves other threads' alone.
fn own_umask() -> bool {
    OWN_UMASK.with(|c| match c.get() {
        Some(ok) => ok,
        None => {
            // SAFETY: unshares only this thread's cwd, root and umask; nothing in the daemon
            // depends on them being shared.
            let ok = unsafe { libc::unshare(libc::CLONE_FS) } == 0;
            c.set(Some(ok));
            ok
        }
    })
}

/// The daemon's effective uid and gid, which a thread's file-system ids follow outside
/// [`as_caller`]; read once, since the daemon never changes them.
fn daemon_ids() -> (u32, u32) {
    static IDS: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    // SAFETY: reading this process's effective ids.
    *IDS.get_or_init(|| unsafe { (libc::geteuid(), libc::getegid()) })
}

/// Runs `make` as the caller `uid`:`gid` with no umask and the daemon's capabilities;
/// `None` (and `make` not run) where the thread cannot take those credentials, as without
/// privileges: the caller then makes the entry another way.
pub fn as_caller<T>(
    uid: u32,
    gid: u32,
    make: impl FnOnce() -> io::Result<T>,
) -> Option<io::Result<T>> {
    if !own_umask() {
        return None;
    }
    // From here on the thread is restored however `make` ends, a panic included.
    let mut guard = Restore {
        ids: None,
        umask: None,
    };
    let own = (uid, gid) == daemon_ids();
    // The daemon's own ids (root making an entry as root) are kept as they are: seven
    // credential calls fewer on each such create.
    if !own {
        let caps = capget().ok()?;
        let (old_uid, old_gid) = set_fs_ids(uid, gid)?;
        guard.ids = Some((old_uid, old_gid, caps));
        // A file-system uid other than 0 drops the file capabilities from the effective set
        // (capabilities(7)); the entry is made with the daemon's, as overlayfs makes it
        // with the mounter's.
        capset(&caps).ok()?;
    }
    // SAFETY: this thread's own umask (see `own_umask`).
    guard.umask = Some(unsafe { libc::umask(0) });
    let r = make();
    drop(guard);
    Some(r)
}

/// What a thread had before [`as_caller`], given back when dropped: its umask, and the
/// file-system ids and capabilities it changed, if it changed them.
struct Restore {
    ids: Option<(u32, u32, Caps)>,
    umask: Option<libc::mode_t>,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(m) = self.umask {
            // SAFETY: the calling thread's own umask.
            unsafe { libc::umask(m) };
        }
        if let Some((uid, gid, caps)) = &self.ids {
            // SAFETY: plain calls on the calling thread's own credentials.
            unsafe {
                libc::setfsuid(*uid);
                libc::setfsgid(*gid);
            }
            // Back to exactly what the thread had: going back to uid 0 raises what was
            // dropped.
            let _ = capset(caps);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn entries_are_born_with_the_callers_owner_and_exact_mode() {
        let t = tempfile::tempdir().unwrap();
        // SAFETY: reading and restoring this thread's umask.
        let umask = || unsafe {
            let m = libc::umask(0o022);
            libc::umask(m);
            m
        };
        let mask = umask();
        // SAFETY: reading the ids of this process.
        let own = unsafe { (libc::geteuid(), libc::getegid()) };
        // Another caller's ids, then the daemon's own (which are not switched at all).
        for (i, (uid, gid)) in [(4321, 8765), own].into_iter().enumerate() {
            let f = t.path().join(format!("f{i}"));
            let r = as_caller(uid, gid, || {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o666)
                    .open(&f)
            });
            let Some(r) = r else {
                // Without privileges nothing is made, and the caller takes its other way.
                assert!(!f.exists());
                assert_ne!((uid, gid), own, "the daemon's own ids need no privileges");
                continue;
            };
            r.unwrap();
            let m = std::fs::metadata(&f).unwrap();
            assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (uid, gid, 0o666));
            // The thread is itself again: its own ids and umask.
            let g = t.path().join(format!("g{i}"));
            std::fs::write(&g, "").unwrap();
            let m = std::fs::metadata(&g).unwrap();
            assert_eq!((m.uid(), m.gid()), own);
            assert_eq!(umask(), mask);
        }
    }
}
