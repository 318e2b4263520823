//! The passthrough policy: which opens the kernel serves itself from a host file (FUSE
//! passthrough, Linux 6.9+), and the one rule the kernel sets for them, one I/O mode per
//! inode: while any handle of an inode is open, every new open of it must use the same mode
//! (passthrough with the same backing id, or through the daemon).
//!
//! The view names the host file ([`View::backing_file`]); this module decides, keeps the
//! backing ids and counts the opens. Registering a backing file needs CAP_SYS_ADMIN: the first
//! refusal turns passthrough off for the rest of the mount (and tells the view).
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
    /// Each open inode's mode (a backing id for passthrough, `None` through the daemon) and
    /// its open count.
    open: Mutex<HashMap<Ino, (Option<BackingId>, u32)>>,
}

/// The open inodes, locked while a reply borrows a backing id.
pub struct Modes<'a>(MutexGuard<'a, HashMap<Ino, (Option<BackingId>, u32)>>);

impl Modes<'_> {
    /// The backing id to reply with for an open of `ino`, if it is in passthrough mode.
    pub fn id(&self, ino: Ino) -> Option<&BackingId> {
        self.0.get(&ino).and_then(|(id, _)| id.as_ref())
    }
}

impl Backing {
    /// Says whether the kernel agreed to passthrough at init.
    pub fn enable(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Counts an open of `ino` (handle `fh`). The first open of an inode picks its mode: the
    /// view's backing file registered with `register` if it has one, else through the daemon.
    /// Later opens take the mode already picked. The view is asked for its file without the
    /// table locked, so other opens never wait on its I/O.
    pub fn open(
        &self,
        view: &dyn View,
        ino: Ino,
        fh: Fh,
        register: impl FnOnce(&File) -> std::io::Result<BackingId>,
    ) -> Modes<'_> {
        // A poisoned map is still consistent: every update is one insert or counter change.
        let lock = || self.open.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut map = lock();
            if let Some((_, n)) = map.get_mut(&ino) {
                *n += 1;
                return Modes(map);
            }
        }
        let file = match self.enabled.load(Ordering::Relaxed) {
            true => view.backing_file(ino, fh),
            false => None,
        };
        let mut map = lock();
        // Another open of the inode may have picked its mode meanwhile: that one stands.
        if let Some((_, n)) = map.get_mut(&ino) {
            *n += 1;
            return Modes(map);
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
                    view.passthrough_off();
                    None
                }
            },
        };
        map.insert(ino, (id, 1));
        Modes(map)
    }

    /// Counts a close of `ino`; the last one drops its backing id.
    pub fn release(&self, ino: Ino) {
        let mut map = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = map.get_mut(&ino) {
            *n -= 1;
            if *n == 0 {
                map.remove(&ino);
            }
        }
    }
}
