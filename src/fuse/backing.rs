//! The passthrough policy: which opens the kernel serves itself from a host file (FUSE
//! passthrough, Linux 6.9+), and the one rule the kernel sets for them, one I/O mode per
//! inode: while any handle of an inode is open, every new open of it must use the same mode
//! (passthrough with the same backing id, or through the daemon).
//!
//! The view names the host file ([`View::backing_file`]); this module decides, keeps the
//! backing ids and counts the opens. Registering a backing file needs CAP_SYS_ADMIN: the first
//! refusal turns passthrough off for the rest of the mount.
//!
//! A handleless open ([`Fh::NONE`]) reads data that never changes (a lower file's), so its
//! backing file is a copy of that data. While such opens are in passthrough, the inode cannot
//! change data: the kernel keeps their backing file, so a write or truncate would go unseen by
//! them (or, through the same backing file, into the copy). [`Backing::busy`] says so, and
//! such a change answers `ETXTBSY` until they are closed, as writing a running program does.
//! Dependencies: view, fuser.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use fuser::BackingId;

use crate::view::{Fh, Ino, View};

/// Open inodes and their I/O mode.
#[derive(Default)]
pub struct Backing {
    /// Whether passthrough may be tried: the kernel offered it and no backing open has been
    /// refused.
    enabled: AtomicBool,
    /// Each open inode's mode and open count.
    open: Mutex<HashMap<Ino, Mode>>,
}

/// How an open inode's I/O is done.
struct Mode {
    /// A backing id for passthrough, `None` through the daemon.
    id: Option<BackingId>,
    /// Opens counted.
    opens: u32,
    /// The mode was picked by a handleless open: the backing file holds unchanging data.
    handleless: bool,
}

impl Mode {
    /// Whether data changes must wait (see the module header).
    fn busy(&self) -> bool {
        self.handleless && self.id.is_some()
    }
}

/// The open inodes, locked while a reply borrows a backing id.
pub struct Modes<'a>(MutexGuard<'a, HashMap<Ino, Mode>>);

impl Modes<'_> {
    /// The backing id to reply with for an open of `ino`, if it is in passthrough mode.
    pub fn id(&self, ino: Ino) -> Option<&BackingId> {
        self.0.get(&ino).and_then(|m| m.id.as_ref())
    }
}

impl Backing {
    /// Says whether the kernel agreed to passthrough at init.
    pub fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Whether `ino` is open by handleless opens in passthrough, so its data may not change
    /// now.
    pub fn busy(&self, ino: Ino) -> bool {
        let map = self.open.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&ino).is_some_and(Mode::busy)
    }

    /// Counts an open of `ino` (handle `fh`; `writing`: it may change the data). The first
    /// open of an inode picks its mode: the view's backing file registered with `register` if
    /// it has one, else through the daemon. Later opens take the mode already picked, except
    /// that a writing open is refused (`None`, nothing counted) while [`Backing::busy`]. A
    /// reading one may join: nothing can have changed the data since. The view is asked for
    /// its file without the table locked, so other opens never wait on its I/O.
    pub fn open(
        &self,
        view: &dyn View,
        ino: Ino,
        fh: Fh,
        writing: bool,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Option<Modes<'_>> {
        // A poisoned map is still consistent: every update is one insert or counter change.
        let lock = || self.open.lock().unwrap_or_else(|p| p.into_inner());
        let join = |map: &mut HashMap<Ino, Mode>| match map.get_mut(&ino) {
            Some(m) if writing && m.busy() => Some(false),
            Some(m) => {
                m.opens += 1;
                Some(true)
            }
            None => None,
        };
        {
            let mut map = lock();
            if let Some(joined) = join(&mut map) {
                return joined.then_some(Modes(map));
            }
        }
        let file = match self.enabled.load(Ordering::Relaxed) {
            true => view.backing_file(ino, fh),
            false => None,
        };
        let mut map = lock();
        // Another open of the inode may have picked its mode meanwhile: that one stands.
        if let Some(joined) = join(&mut map) {
            return joined.then_some(Modes(map));
        }
        let id = match file {
            None => None,
            Some(Err(e)) => {
                log::warn!("passthrough for inode {ino} unavailable ({e}); serving by reads");
                None
            }
            Some(Ok(f)) => match register(&f) {
                Ok(id) => Some(id),
                Err(e) => {
                    log::info!("kernel passthrough refused ({e}); I/O goes through the daemon");
                    self.enabled.store(false, Ordering::Relaxed);
                    None
                }
            },
        };
        let handleless = fh == Fh::NONE;
        map.insert(
            ino,
            Mode {
                id,
                opens: 1,
                handleless,
            },
        );
        Some(Modes(map))
    }

    /// Counts a close of `ino`; the last one drops its backing id.
    pub fn release(&self, ino: Ino) {
        let mut map = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = map.get_mut(&ino) {
            m.opens -= 1;
            if m.opens == 0 {
                map.remove(&ino);
            }
        }
    }
}
