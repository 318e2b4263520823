//! The FUSE adapter: a switchboard from fuser 0.18 requests to one [`View`], read-only or
//! writable alike.
//!
//! Each method decodes its arguments, logs them at debug, calls one view method and replies.
//! The only fuser types in the crate live in this module. What differs between views is the
//! view's answer, or what it asks of the kernel at init ([`crate::view::Features`]); which
//! opens the kernel serves itself is the passthrough policy of [`backing`].
//! Dependencies: view, fuser.

mod backing;
mod convert;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use fuser::{
    AccessFlags, BsdFileFlags, Errno as FErrno, FileHandle, Filesystem, FopenFlags, Generation,
    INodeNo, InitFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::debug;

use crate::view::{
    BLOCK_SIZE, DirListing, Features, Fh, Ino, Invalidate, MAX_NAME_LEN, SetAttr, View,
};
use backing::Backing;
use convert::{
    TTL, caller, decode_dev, errno, file_attr, file_type, ino, listed_file_attr, reply_absent,
    reply_attr, reply_data, reply_empty, reply_entry, reply_xattr, show, timespec,
};

/// Largest read the kernel is asked to send at once (with `FUSE_MAX_PAGES`).
const MAX_READAHEAD: u32 = 1 << 20;

/// The filesystem handed to fuser.
pub struct Fuse {
    /// What is served.
    view: Box<dyn View>,
    /// What the view asks of the kernel.
    features: Features,
    /// Which opens are passed through to the kernel.
    backing: Backing,
    /// The kernel agreed to skip opendir (the view needs no directory handles): the first
    /// `ENOSYS` reply turns every later opendir/releasedir round trip off, with directory
    /// listings still cached.
    no_opendir: AtomicBool,
    /// Likewise for files: opens then cost nothing.
    no_open: AtomicBool,
    /// The session's notifier, once the mount runs.
    notifier: Arc<OnceLock<Notifier>>,
}

/// Cache invalidations the view asks for, sent through the session's notifier.
struct KernelCache(Arc<OnceLock<Notifier>>);

impl Invalidate for KernelCache {
    fn inode(&self, ino: Ino) {
        if let Some(n) = self.0.get() {
            // ENOENT (the kernel holds no such inode) is no failure; fuser passes it as Ok.
            if let Err(e) = n.inval_inode(INodeNo(ino.0), 0, -1) {
                log::warn!("invalidating inode {ino}: {e}");
            }
        }
    }
}

impl Fuse {
    /// Serves `view`.
    pub fn new(view: impl View + 'static) -> Fuse {
        let notifier = Arc::new(OnceLock::new());
        view.set_invalidator(Arc::new(KernelCache(notifier.clone())));
        Fuse {
            features: view.features(),
            view: Box::new(view),
            backing: Backing::default(),
            no_opendir: AtomicBool::new(false),
            no_open: AtomicBool::new(false),
            notifier,
        }
    }

    /// Where to put the session's notifier once mounted, for the view's invalidations.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Open flags for handles that do not pass through: a view whose data never changes
    /// behind the kernel's back lets it keep the page cache across opens. A writable view
    /// does so only for handleless opens (data still in a lower layer): writes through a
    /// passthrough open bypass this inode's page cache, so a later open of an upper file must
    /// not trust pages kept from before.
    fn cached_open(&self, fh: Fh) -> FopenFlags {
        let f = self.features;
        match f.keep_cache || (f.keep_handleless_cache && fh == Fh::NONE) {
            true => FopenFlags::FOPEN_KEEP_CACHE,
            false => FopenFlags::empty(),
        }
    }
}

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Optional capabilities: the kernel may lack some, which is fine.
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
            InitFlags::FUSE_AUTO_INVAL_DATA,
        ] {
            let _ = config.add_capabilities(cap);
        }
        let _ = config.set_max_readahead(MAX_READAHEAD);
        let f = self.features;
        // The kernel then caches ACLs (and checks them, with `default_permissions`), so
        // `ls -l` stops asking for `system.posix_acl_access` of every entry.
        if f.posix_acl {
            let _ = config.add_capabilities(InitFlags::FUSE_POSIX_ACL);
        }
        // Depth 1: backing files live on a plain filesystem (the cache, the upper directory),
        // and this mount may itself be stacked under overlayfs.
        let pt = f.passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.backing.enable(pt);
        if !pt {
            self.view.passthrough_off();
        }
        if f.kills_privs {
            let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
        }
        if f.stateless_opendir {
            let ok = config
                .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
                .is_ok();
            self.no_opendir.store(ok, Ordering::Relaxed);
        }
        if f.stateless_open {
            let ok = config
                .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
                .is_ok();
            self.no_open.store(ok, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        debug!("lookup(parent={}, name={:?})", parent.0, show(name));
        match self.view.lookup(ino(parent), name.as_bytes()) {
            Err(nix::errno::Errno::ENOENT) => reply_absent(reply),
            r => reply_entry(r, reply),
        }
    }

    fn forget(&self, _req: &Request, i: INodeNo, nlookup: u64) {
        self.view.forget(ino(i), nlookup);
    }

    fn getattr(&self, _req: &Request, i: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        debug!("getattr(ino={})", i.0);
        reply_attr(self.view.getattr(ino(i), fh.map(|h| Fh(h.0))), reply);
    }

    fn setattr(
        &self,
        req: &Request,
        i: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        debug!(
            "setattr(ino={}, mode={mode:?}, uid={uid:?}, gid={gid:?}, size={size:?})",
            i.0
        );
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            times: (atime.is_some() || mtime.is_some()).then(|| [timespec(atime), timespec(mtime)]),
        };
        let fh = fh.map(|h| Fh(h.0));
        reply_attr(self.view.setattr(ino(i), &set, fh, caller(req)), reply);
    }

    fn readlink(&self, _req: &Request, i: INodeNo, reply: ReplyData) {
        debug!("readlink(ino={})", i.0);
        reply_data(self.view.readlink(ino(i)), reply);
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        debug!(
            "mknod(parent={}, name={:?}, mode={mode:#o}, rdev={rdev})",
            parent.0,
            show(name)
        );
        let (p, n, dev) = (ino(parent), name.as_bytes(), decode_dev(rdev));
        reply_entry(self.view.mknod(p, n, mode, dev, caller(req)), reply);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        debug!(
            "mkdir(parent={}, name={:?}, mode={mode:#o})",
            parent.0,
            show(name)
        );
        let r = self
            .view
            .mkdir(ino(parent), name.as_bytes(), mode, caller(req));
        reply_entry(r, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!("unlink(parent={}, name={:?})", parent.0, show(name));
        reply_empty(self.view.unlink(ino(parent), name.as_bytes()), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!("rmdir(parent={}, name={:?})", parent.0, show(name));
        reply_empty(self.view.rmdir(ino(parent), name.as_bytes()), reply);
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        debug!("symlink(parent={}, name={:?})", parent.0, show(link_name));
        let (n, t) = (link_name.as_bytes(), target.as_os_str().as_bytes());
        reply_entry(self.view.symlink(ino(parent), n, t, caller(req)), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        debug!(
            "rename(parent={}, name={:?}, newparent={}, newname={:?}, flags={flags})",
            parent.0,
            show(name),
            newparent.0,
            show(newname)
        );
        let (n, nn) = (name.as_bytes(), newname.as_bytes());
        let r = self
            .view
            .rename(ino(parent), n, ino(newparent), nn, flags.bits());
        reply_empty(r, reply);
    }

    fn link(
        &self,
        _req: &Request,
        i: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        debug!(
            "link(ino={}, newparent={}, newname={:?})",
            i.0,
            newparent.0,
            show(newname)
        );
        let r = self.view.link(ino(i), ino(newparent), newname.as_bytes());
        reply_entry(r, reply);
    }

    fn open(&self, req: &Request, i: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        debug!("open(ino={}, flags={:#o})", i.0, flags.0);
        let fh = match self.view.open(ino(i), flags.0, caller(req)) {
            Ok(fh) => fh,
            Err(e) => return reply.error(errno(e)),
        };
        if self.no_open.load(Ordering::Relaxed) {
            return reply.error(FErrno::ENOSYS);
        }
        let modes = self
            .backing
            .open(&*self.view, ino(i), fh, |f| reply.open_backing(f));
        match modes.id(ino(i)) {
            Some(id) => reply.opened_passthrough(FileHandle(fh.0), FopenFlags::empty(), id),
            None => {
                // The open table is held only while a reply borrows a backing id: a reply
                // without one goes out after it, so closes and other opens need not wait.
                drop(modes);
                reply.opened(FileHandle(fh.0), self.cached_open(fh))
            }
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        debug!(
            "create(parent={}, name={:?}, mode={mode:#o}, flags={flags:#o})",
            parent.0,
            show(name)
        );
        let created = self
            .view
            .create(ino(parent), name.as_bytes(), mode, flags, caller(req));
        let (a, fh) = match created {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        let attr = match file_attr(&a) {
            Ok(attr) => attr,
            Err(e) => {
                self.view.release(a.ino, fh);
                return reply.error(errno(e));
            }
        };
        let modes = self
            .backing
            .open(&*self.view, a.ino, fh, |f| reply.open_backing(f));
        let (h, g) = (FileHandle(fh.0), Generation(0));
        match modes.id(a.ino) {
            Some(id) => reply.created_passthrough(&TTL, &attr, g, h, FopenFlags::empty(), id),
            None => {
                drop(modes);
                reply.created(&TTL, &attr, g, h, self.cached_open(fh))
            }
        }
    }

    fn release(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        debug!("release(ino={}, fh={})", i.0, fh.0);
        self.view.release(ino(i), Fh(fh.0));
        self.backing.release(ino(i));
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        debug!(
            "read(ino={}, fh={}, offset={offset}, size={size})",
            i.0, fh.0
        );
        reply_data(self.view.read(ino(i), Fh(fh.0), offset, size), reply);
    }

    fn write(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        debug!(
            "write(ino={}, fh={}, offset={offset}, len={})",
            i.0,
            fh.0,
            data.len()
        );
        let append = flags.0 & libc::O_APPEND != 0;
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match self.view.write(Fh(fh.0), offset, data, append, kill) {
            Ok(n) => reply.written(n),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Writes go straight to the upper file, so nothing is buffered to flush, and no
        // POSIX locks are kept here to drop at close: ENOSYS turns flush off for the rest
        // of the mount, saving a round trip on every close.
        reply.error(FErrno::ENOSYS);
    }

    fn fsync(&self, _req: &Request, i: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        debug!("fsync(ino={}, fh={}, datasync={datasync})", i.0, fh.0);
        reply_empty(self.view.fsync(Fh(fh.0), datasync), reply);
    }

    fn fallocate(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        debug!(
            "fallocate(ino={}, fh={}, offset={offset}, length={length}, mode={mode})",
            i.0, fh.0
        );
        let r = self.view.fallocate(Fh(fh.0), offset, length, mode);
        reply_empty(r, reply);
    }

    fn opendir(&self, _req: &Request, i: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        debug!("opendir(ino={})", i.0);
        let cached = match self.features.keep_cache || self.features.cache_dirs {
            true => FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            false => FopenFlags::empty(),
        };
        match self.view.opendir(ino(i)) {
            Ok(_) if self.no_opendir.load(Ordering::Relaxed) => reply.error(FErrno::ENOSYS),
            Ok(fh) => reply.opened(FileHandle(fh.0), cached),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        debug!("readdir(ino={}, offset={offset})", i.0);
        let mut add = |l: DirListing<'_>| {
            let name = OsStr::from_bytes(l.name);
            reply.add(INodeNo(l.ino.0), l.next, file_type(l.file_type), name)
        };
        match self.view.readdir(ino(i), Fh(fh.0), offset, &mut add) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        debug!("readdirplus(ino={}, offset={offset})", i.0);
        let mut failed = None;
        let mut add = |l: DirListing<'_>| match self.view.listed_attr(ino(i), &l) {
            Ok(a) => {
                let (attr, ttl) = listed_file_attr(&a);
                let name = OsStr::from_bytes(l.name);
                reply.add(INodeNo(l.ino.0), l.next, name, &ttl, &attr, Generation(0))
            }
            Err(e) => {
                failed = Some(e);
                true
            }
        };
        let r = self.view.readdir(ino(i), Fh(fh.0), offset, &mut add);
        match r.and(failed.map_or(Ok(()), Err)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        i: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.view.release(ino(i), Fh(fh.0));
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        i: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(self.view.fsyncdir(ino(i)), reply);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        debug!("statfs()");
        match self.view.statfs() {
            Ok(s) => reply.statfs(
                s.blocks,
                s.bfree,
                s.bavail,
                s.files,
                s.ffree,
                BLOCK_SIZE,
                MAX_NAME_LEN,
                BLOCK_SIZE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        i: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        debug!(
            "setxattr(ino={}, name={:?}, flags={flags})",
            i.0,
            show(name)
        );
        let r = self.view.setxattr(ino(i), name.as_bytes(), value, flags);
        reply_empty(r, reply);
    }

    fn getxattr(&self, _req: &Request, i: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        debug!("getxattr(ino={}, name={:?}, size={size})", i.0, show(name));
        reply_xattr(self.view.getxattr(ino(i), name.as_bytes()), size, reply);
    }

    fn listxattr(&self, _req: &Request, i: INodeNo, size: u32, reply: ReplyXattr) {
        debug!("listxattr(ino={}, size={size})", i.0);
        reply_xattr(self.view.listxattr(ino(i)), size, reply);
    }

    fn removexattr(&self, _req: &Request, i: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!("removexattr(ino={}, name={:?})", i.0, show(name));
        reply_empty(self.view.removexattr(ino(i), name.as_bytes()), reply);
    }

    fn access(&self, req: &Request, i: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        debug!("access(ino={}, mask={:#o})", i.0, mask.bits());
        reply_empty(self.view.access(ino(i), mask.bits(), caller(req)), reply);
    }
}
