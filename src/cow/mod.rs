//! The writable view: the image's lower tree with an upper layer on top, copy-on-write.
//!
//! Every inode the kernel knows has an entry in the inode table ([`inodes`]): where it is in
//! the merged namespace, whether it has an upper entry, and which lower node it continues. A
//! name resolves by overlayfs's rule over the upper directory and the lower tree
//! ([`lookup`]). A lower entry is copied up before its first change ([`copy`]; the on-disk
//! protocol is `upper::copy_up`). The namespace changes by [`create`], [`remove`] and
//! [`rename`]; [`attr`], [`io`], [`dir`] and [`xattr`] answer the other requests; big lower
//! files are read by the kernel from passthrough copies of the mount's own ([`private`]).
//!
//! Locking, in this order (a thread holding one lock only ever takes those below it):
//! 1. an inode's copy lock (in `copying`, made on first use): held while that inode's data is
//!    copied into the work directory ahead of a copy-up, so racing writers make one copy;
//!    never taken by a thread that holds `ns` or another copy lock;
//! 2. `ns`: one mutex for every change to the namespace or the upper directory, so those
//!    never race one another; a data copy is made before it is taken, and only renamed into
//!    place under it;
//! 3. `inodes`: the inode table, an RwLock held for table updates only, never across I/O;
//! 4. `handles`, `dir_nlink`, `copying`, `private`, and the upper's open directories: open
//!    handles, cached link counts, the copy locks' table, the passthrough copies' states and
//!    the upper directories kept open, each held for one lookup or update.
//!
//! No lock is held across I/O on file contents, and none while the kernel is told to drop a
//! cache ([`Cow::invalidate`]): the kernel may wait for requests in flight first.
//!
//! Reads and writes on open files take only `handles`, briefly, and then do their I/O on an
//! `Arc<File>` without any lock. Requests that only read (lookup, getattr, readlink, reads by
//! inode, xattrs) take no `ns`: they find the upper entry by a path built from the inode
//! table, and check that no name changed meanwhile (`names`, odd while a change is being
//! made, from its first step on disk to its last in the table); if one did, the path may have
//! named another entry, and they run again holding `ns`. Never panics on the request path:
//! an impossible state answers `EIO` and logs at error.
//! Dependencies: view (the lower view, shared types), upper, merge, tree, sys, nix.

mod attr;
mod copy;
mod create;
mod dir;
mod inodes;
mod io;
mod lookup;
mod private;
mod remove;
mod rename;
#[cfg(test)]
mod tests;
mod xattr;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use nix::errno::Errno;

use crate::sys::FileStat;
use crate::tree::LowerTree;
use crate::upper::Upper;
use crate::view::{
    Attr, Caller, DirListing, Features, Fh, Ino, Invalidate, LowerView, OpResult, SetAttr, StatFs,
    View, io_errno,
};
use inodes::Inodes;
use io::Handles;

/// The writable filesystem.
pub struct Cow {
    lower: LowerView,
    upper: Upper,
    ns: Mutex<()>,
    /// Namespace changes made, counted twice each (see the module header).
    names: AtomicU64,
    inodes: RwLock<Inodes>,
    handles: Mutex<Handles>,
    /// Directory listings being read, by the number their offsets carry.
    listings: Mutex<dir::Listings>,
    /// Link counts of merged directories, computed once (a full listing) and dropped when a
    /// subdirectory comes or goes; creating files leaves them valid.
    dir_nlink: Mutex<HashMap<Ino, u32>>,
    /// Copy locks of the inodes whose data is being copied up (see the module header).
    copying: Mutex<HashMap<Ino, Arc<Mutex<()>>>>,
    /// Tells the kernel to drop what it caches of an inode, once the mount runs.
    kernel: OnceLock<Arc<dyn Invalidate>>,
    /// Big lower files' passthrough copies, this mount's own (see [`private`]).
    private: private::PrivateCopies,
}

impl Cow {
    /// A writable view of `lower` with `upper` on top.
    pub fn new(lower: LowerView, upper: Upper) -> Cow {
        let tree = lower.tree();
        // A fresh upper root takes the image root's attributes, so the mount (and kernel
        // overlayfs over the same upper) shows the image's root as it is.
        if let Some(root) = tree.node(LowerTree::ROOT) {
            if let Err(e) = upper.adopt_root(&root.meta, &root.xattrs) {
                log::warn!("upper root: {e}");
            }
        }
        // The root merges the lower root unless the upper root is opaque.
        let opaque = upper.root_is_opaque().unwrap_or(false);
        let inodes = Inodes::new(tree.len() as u64 + 1, (!opaque).then_some(LowerTree::ROOT));
        Cow {
            lower,
            upper,
            ns: Mutex::new(()),
            names: AtomicU64::new(0),
            inodes: RwLock::new(inodes),
            handles: Mutex::new(Handles::default()),
            listings: Mutex::new(dir::Listings::default()),
            dir_nlink: Mutex::new(HashMap::new()),
            copying: Mutex::new(HashMap::new()),
            kernel: OnceLock::new(),
            private: private::PrivateCopies::off(),
        }
    }

    /// Passes big lower files through to the kernel from copies of this mount's own, made in
    /// the background once they have been read through the daemon (see [`private`]).
    pub fn with_passthrough_copies(mut self) -> Cow {
        match self.upper.work().try_clone() {
            Ok(work) => self.private = private::PrivateCopies::new(work),
            Err(e) => log::warn!("no passthrough for lower files: {e}"),
        }
        self
    }

    /// Drops the kernel's cached pages and attributes of `ino`, whose data just moved to
    /// the upper (see [`Invalidate`]: call it holding no lock).
    fn invalidate(&self, ino: Ino) {
        if let Some(k) = self.kernel.get() {
            k.inode(ino);
        }
    }

    /// The lower view.
    pub fn lower(&self) -> &LowerView {
        &self.lower
    }

    fn tree(&self) -> &LowerTree {
        self.lower.tree()
    }

    /// Takes `ns` for a namespace change (a name made, removed or moved), marked as under
    /// way until the guard drops.
    fn change_names(&self) -> OpResult<NameChange<'_>> {
        let ns = lock(&self.ns)?;
        self.names.fetch_add(1, Ordering::SeqCst);
        Ok(NameChange {
            names: &self.names,
            _ns: ns,
        })
    }

    /// Runs `op`, which reads the upper directory by paths built from the inode table,
    /// without `ns`; runs it again holding `ns` if a name changed meanwhile. A caller that
    /// holds `ns` (not for a name change of its own, which would wait for itself) runs it
    /// once: no change can be under way.
    fn stable<T>(&self, op: impl Fn() -> OpResult<T>) -> OpResult<T> {
        let before = self.names.load(Ordering::SeqCst);
        if before % 2 == 0 {
            let r = op();
            if self.names.load(Ordering::SeqCst) == before {
                return r;
            }
        }
        let _ns = lock(&self.ns)?;
        op()
    }

    fn read_inodes(&self) -> OpResult<std::sync::RwLockReadGuard<'_, Inodes>> {
        self.inodes.read().map_err(|_| poisoned())
    }

    fn write_inodes(&self) -> OpResult<std::sync::RwLockWriteGuard<'_, Inodes>> {
        self.inodes.write().map_err(|_| poisoned())
    }
}

/// A namespace change under way, holding `ns` (see [`Cow::change_names`]). The count moves
/// on before `ns` is released: fields drop after `drop` runs.
struct NameChange<'a> {
    names: &'a AtomicU64,
    _ns: std::sync::MutexGuard<'a, ()>,
}

impl Drop for NameChange<'_> {
    fn drop(&mut self) {
        self.names.fetch_add(1, Ordering::SeqCst);
    }
}

fn poisoned() -> Errno {
    log::error!("a lock was poisoned");
    Errno::EIO
}

fn lock<T>(m: &Mutex<T>) -> OpResult<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| poisoned())
}

fn errno(e: std::io::Error) -> Errno {
    io_errno(&e, "upper layer")
}

fn stat_attr(ino: Ino, st: &FileStat) -> Attr {
    Attr {
        ino,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        rdev: st.st_rdev,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        atime: st.st_atime,
        atime_nsec: st.st_atime_nsec as u32,
        ctime: st.st_ctime,
        ctime_nsec: st.st_ctime_nsec as u32,
    }
}

/// `a/b` + `c` → `a/b/c` (the root is the empty path).
fn join(dir: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p
}

impl View for Cow {
    fn features(&self) -> Features {
        Features {
            // Open upper files are handed to the kernel where it may; registering them needs
            // CAP_SYS_ADMIN.
            passthrough: nix::unistd::geteuid().is_root(),
            // The daemon drops set-id bits itself (it is told when, per write): without this
            // the kernel asks for security.capability before every single write.
            kills_privs: true,
            // File handles carry the upper files.
            stateless_open: false,
            // Listing snapshots are found by the number their offsets carry, not by handle
            // (see `dir`): a walk costs no opendir and releasedir round trips, and the
            // kernel still caches listings.
            stateless_opendir: true,
            keep_cache: false,
            // Handleless opens read a lower file's data, which never changes; its pages go
            // when it is copied up.
            keep_handleless_cache: true,
            // Every change of a listing is made through the mount.
            cache_dirs: true,
            // ACLs are attributes of the entries like any other, copied up with them; the
            // upper filesystem keeps mode and ACL in step on chmod and setxattr.
            posix_acl: true,
        }
    }

    fn set_invalidator(&self, inv: Arc<dyn Invalidate>) {
        let _ = self.kernel.set(inv);
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> OpResult<Attr> {
        Cow::lookup(self, parent, name)
    }

    fn forget(&self, ino: Ino, n: u64) {
        Cow::forget(self, ino, n);
    }

    fn getattr(&self, ino: Ino, fh: Option<Fh>) -> OpResult<Attr> {
        Cow::getattr(self, ino, fh)
    }

    fn readlink(&self, ino: Ino) -> OpResult<Vec<u8>> {
        Cow::readlink(self, ino)
    }

    fn open(&self, ino: Ino, flags: i32, who: Caller) -> OpResult<Fh> {
        Cow::open(self, ino, flags, who)
    }

    fn read(&self, ino: Ino, fh: Fh, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        Cow::read(self, ino, fh, offset, size)
    }

    fn release(&self, ino: Ino, fh: Fh) {
        Cow::release(self, fh);
        if fh == Fh::NONE {
            self.lower_closed(ino);
        }
    }

    fn backing_file(&self, ino: Ino, fh: Fh) -> Option<OpResult<Arc<File>>> {
        if fh == Fh::NONE {
            return self.lower_backing(ino);
        }
        let passable = self.may_pass_through(fh);
        passable.then(|| self.handle_file(fh)).flatten().map(Ok)
    }

    fn passthrough_off(&self) {
        self.private.stop();
    }

    fn opendir(&self, ino: Ino) -> OpResult<Fh> {
        Cow::opendir(self, ino)
    }

    fn readdir(
        &self,
        ino: Ino,
        fh: Fh,
        offset: u64,
        add: &mut dyn FnMut(DirListing<'_>) -> bool,
    ) -> OpResult<()> {
        Cow::readdir(self, ino, fh, offset, add)
    }

    fn listed_attr(&self, parent: Ino, l: &DirListing<'_>) -> OpResult<Attr> {
        Cow::listed_attr(self, parent, l)
    }

    fn getxattr(&self, ino: Ino, name: &[u8]) -> OpResult<Vec<u8>> {
        Cow::getxattr(self, ino, name)
    }

    fn listxattr(&self, ino: Ino) -> OpResult<Vec<u8>> {
        Cow::listxattr(self, ino)
    }

    /// Writable mounts use `default_permissions`: the kernel checks before asking.
    fn access(&self, _ino: Ino, _mask: i32, _who: Caller) -> OpResult<()> {
        Ok(())
    }

    fn statfs(&self) -> OpResult<StatFs> {
        Cow::statfs(self)
    }

    fn setattr(&self, ino: Ino, set: &SetAttr, fh: Option<Fh>, who: Caller) -> OpResult<Attr> {
        Cow::setattr(self, ino, set, fh, who)
    }

    fn mknod(&self, parent: Ino, name: &[u8], mode: u32, rdev: u64, who: Caller) -> OpResult<Attr> {
        Cow::mknod(self, parent, name, mode, rdev, who)
    }

    fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, who: Caller) -> OpResult<Attr> {
        Cow::mkdir(self, parent, name, mode, who)
    }

    fn unlink(&self, parent: Ino, name: &[u8]) -> OpResult<()> {
        Cow::unlink(self, parent, name)
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> OpResult<()> {
        Cow::rmdir(self, parent, name)
    }

    fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], who: Caller) -> OpResult<Attr> {
        Cow::symlink(self, parent, name, target, who)
    }

    fn rename(&self, p: Ino, name: &[u8], np: Ino, newname: &[u8], flags: u32) -> OpResult<()> {
        Cow::rename(self, p, name, np, newname, flags)
    }

    fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> OpResult<Attr> {
        Cow::link(self, ino, newparent, newname)
    }

    fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> OpResult<(Attr, Fh)> {
        Cow::create(self, parent, name, mode, flags, who)
    }

    fn write(&self, fh: Fh, offset: u64, data: &[u8], append: bool, kill: bool) -> OpResult<u32> {
        Cow::write(self, fh, offset, data, append, kill)
    }

    fn fsync(&self, fh: Fh, datasync: bool) -> OpResult<()> {
        Cow::fsync(self, fh, datasync)
    }

    fn fallocate(&self, fh: Fh, offset: u64, length: u64, mode: i32) -> OpResult<()> {
        Cow::fallocate(self, fh, offset, length, mode)
    }

    fn fsyncdir(&self, ino: Ino) -> OpResult<()> {
        Cow::fsyncdir(self, ino)
    }

    fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> OpResult<()> {
        Cow::setxattr(self, ino, name, value, flags)
    }

    fn removexattr(&self, ino: Ino, name: &[u8]) -> OpResult<()> {
        Cow::removexattr(self, ino, name)
    }
}
