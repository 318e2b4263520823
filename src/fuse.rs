//! The FUSE adapter: a switchboard from fuser 0.18 requests to [`Overlay`] (read-only) or
//! [`Cow`] (writable) methods.
//!
//! Each method decodes its arguments, logs them at debug, calls one method and replies. The
//! only fuser types in the crate live here. Every change goes through this mount, so the
//! kernel's own caches stay right: entries and attributes are cached for a long time. A
//! read-only mount also keeps file pages and listings (`FOPEN_KEEP_CACHE`, `FOPEN_CACHE_DIR`)
//! and skips opendir (and open, without passthrough) round trips; a writable one hands open
//! upper files to the kernel (passthrough), one I/O mode per inode.
//! Dependencies: overlay, cow, fuser.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, BsdFileFlags, Errno as FErrno, FileAttr, FileHandle, FileType,
    Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use log::debug;
use nix::errno::Errno;

use crate::cow::{Caller, Cow};
use crate::overlay::{Attr, BLOCK_SIZE, DirListing, MAX_NAME_LEN, Overlay};

/// How long the kernel may cache entries and attributes: the lower tree never changes while
/// mounted, so a day is as good as forever and still bounded.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest read the kernel is asked to send at once (with `FUSE_MAX_PAGES`).
const MAX_READAHEAD: u32 = 1 << 20;

/// The filesystem handed to fuser.
pub struct Fuse {
    /// What is served.
    view: View,
    /// Whether passthrough may be tried: the kernel offered it and no backing open has been
    /// refused (it needs CAP_SYS_ADMIN).
    passthrough: AtomicBool,
    /// The kernel supports skipping opendir: the first `ENOSYS` reply turns every later
    /// opendir/releasedir round trip off, with directory listings still cached.
    no_opendir: AtomicBool,
    /// Likewise for files, used when passthrough is off: opens then cost nothing.
    no_open: AtomicBool,
    /// Backing ids of inodes open in passthrough mode, with their open counts: the kernel
    /// wants one id per inode for as long as any handle is open.
    backing: Mutex<HashMap<u64, (BackingId, u32)>>,
    /// Writable view: the I/O mode of each open inode (a backing id for passthrough, `None`
    /// for cached) and its open count; the kernel refuses to mix the modes on one inode.
    cow_io: Mutex<HashMap<u64, (Option<BackingId>, u32)>>,
}

/// A read-only view of the image, or the writable one (which holds its own lower view).
enum View {
    ReadOnly(Overlay),
    Writable(Box<Cow>),
}

impl Fuse {
    /// The writable view, when the mount has an upper layer.
    fn cow(&self) -> Option<&Cow> {
        match &self.view {
            View::Writable(c) => Some(c),
            View::ReadOnly(_) => None,
        }
    }

    /// The lower (image) view.
    fn ov(&self) -> &Overlay {
        match &self.view {
            View::ReadOnly(o) => o,
            View::Writable(c) => c.lower(),
        }
    }

    /// Wraps a read-only overlay.
    pub fn new(ov: Overlay) -> Fuse {
        Fuse::build(View::ReadOnly(ov))
    }

    /// Wraps a writable view.
    pub fn writable(cow: Cow) -> Fuse {
        Fuse::build(View::Writable(Box::new(cow)))
    }

    fn build(view: View) -> Fuse {
        Fuse {
            view,
            passthrough: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            no_open: AtomicBool::new(false),
            backing: Mutex::new(HashMap::new()),
            cow_io: Mutex::new(HashMap::new()),
        }
    }

    /// The I/O mode for a new open of `ino` (with handle `fh`) in the writable view: the mode
    /// of its other opens if it has any; else passthrough to the upper file if `fh` holds one;
    /// else cached. `register` makes the backing id. Returns whether to reply passthrough,
    /// with the map locked so the id can be borrowed for the reply.
    fn cow_mode<'a>(
        &'a self,
        ino: u64,
        fh: u64,
        register: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> std::sync::MutexGuard<'a, HashMap<u64, (Option<BackingId>, u32)>> {
        let mut map = match self.cow_io.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if let Some((_, n)) = map.get_mut(&ino) {
            *n += 1;
            return map;
        }
        let file = (self.passthrough.load(Ordering::Relaxed) && fh != 0)
            .then(|| {
                let c = self.cow()?;
                c.may_pass_through(fh).then(|| c.handle_file(fh)).flatten()
            })
            .flatten();
        let id = file.and_then(|f| match register(&f) {
            Ok(id) => Some(id),
            Err(e) => {
                log::info!("kernel passthrough refused ({e}); writes go through the daemon");
                self.passthrough.store(false, Ordering::Relaxed);
                None
            }
        });
        map.insert(ino, (id, 1));
        map
    }

    /// Counts a close in the writable view.
    fn cow_release(&self, ino: u64) {
        if let Ok(mut map) = self.cow_io.lock() {
            if let Some((_, n)) = map.get_mut(&ino) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ino);
                }
            }
        }
    }

    /// Opens `ino` in passthrough mode if it qualifies; gives the reply back otherwise.
    fn open_passthrough(&self, ino: u64, reply: ReplyOpen) -> Option<ReplyOpen> {
        if !self.passthrough.load(Ordering::Relaxed) || !self.ov().wants_passthrough(ino) {
            return Some(reply);
        }
        let Ok(mut map) = self.backing.lock() else {
            return Some(reply);
        };
        if let Some((id, count)) = map.get_mut(&ino) {
            *count += 1;
            reply.opened_passthrough(FileHandle(ino), FopenFlags::empty(), id);
            return None;
        }
        let file = match self.ov().backing_file(ino) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("passthrough for inode {ino} unavailable ({e}); serving by reads");
                return Some(reply);
            }
        };
        match reply.open_backing(&file) {
            Ok(id) => {
                reply.opened_passthrough(FileHandle(ino), FopenFlags::empty(), &id);
                map.insert(ino, (id, 1));
                None
            }
            Err(e) => {
                log::info!("kernel passthrough refused ({e}); reads go through the daemon");
                self.passthrough.store(false, Ordering::Relaxed);
                Some(reply)
            }
        }
    }
}

fn errno(e: Errno) -> FErrno {
    FErrno::from_i32(e as i32)
}

fn time(secs: i64, nsec: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(u64::from(nsec))
    }
}

fn file_type(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let t = time(a.mtime, a.mtime_nsec);
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.blocks,
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: file_type(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev as u32,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

fn show(name: &OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

fn reply_xattr(value: Result<Vec<u8>, Errno>, size: u32, reply: ReplyXattr) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(FErrno::from_i32(libc::ERANGE)),
        Err(e) => reply.error(errno(e)),
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
        if self.cow().is_some() {
            // Directory handles carry listing snapshots and file handles the upper files;
            // open upper files are handed to the kernel (passthrough) where it may.
            let pt = nix::unistd::geteuid().is_root()
                && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
                && config.set_max_stack_depth(1).is_ok();
            self.passthrough.store(pt, Ordering::Relaxed);
            // The daemon drops set-id bits itself (it is told when, per write): without this
            // the kernel asks for security.capability before every single write.
            let _ = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2);
            return Ok(());
        }
        // Depth 1: backing files live on a plain filesystem (the cache), and this mount may
        // itself be stacked under overlayfs.
        let pt = config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(1).is_ok();
        self.passthrough.store(pt, Ordering::Relaxed);
        // Opening a directory needs no state here; the kernel's no-opendir mode saves two
        // round trips per directory of a walk.
        let nod = config
            .add_capabilities(InitFlags::FUSE_NO_OPENDIR_SUPPORT)
            .is_ok();
        self.no_opendir.store(nod, Ordering::Relaxed);
        // Without passthrough an open needs no state either (reads are by inode), so the
        // kernel may skip open and release altogether, keeping the page cache.
        if !self.ov().passthrough_enabled() {
            let no = config
                .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
                .is_ok();
            self.no_open.store(no, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        debug!("lookup(parent={}, name={:?})", parent.0, show(name));
        let r = match self.cow() {
            Some(c) => c.lookup(parent.0, name.as_bytes()),
            None => self.ov().lookup(parent.0, name.as_bytes()),
        };
        reply_entry(r, reply);
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Some(c) = self.cow() {
            c.forget(ino.0, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        debug!("getattr(ino={})", ino.0);
        let r = match self.cow() {
            Some(c) => c.getattr(ino.0, fh.map(|h| h.0)),
            None => self.ov().getattr(ino.0),
        };
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
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
            ino.0
        );
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        let times =
            (atime.is_some() || mtime.is_some()).then(|| [timespec(atime), timespec(mtime)]);
        match c.setattr(
            ino.0,
            mode,
            uid,
            gid,
            size,
            times,
            fh.map(|h| h.0),
            caller(req),
        ) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        debug!("readlink(ino={})", ino.0);
        let r = match self.cow() {
            Some(c) => c.readlink(ino.0),
            None => self.ov().readlink(ino.0).map(<[u8]>::to_vec),
        };
        match r {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
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
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        reply_entry(
            c.mknod(
                parent.0,
                name.as_bytes(),
                mode,
                decode_dev(rdev),
                caller(req),
            ),
            reply,
        );
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
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        reply_entry(c.mkdir(parent.0, name.as_bytes(), mode, caller(req)), reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!("unlink(parent={}, name={:?})", parent.0, show(name));
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        reply_empty(c.unlink(parent.0, name.as_bytes()), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!("rmdir(parent={}, name={:?})", parent.0, show(name));
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        reply_empty(c.rmdir(parent.0, name.as_bytes()), reply);
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
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        let t = target.as_os_str().as_bytes();
        reply_entry(
            c.symlink(parent.0, link_name.as_bytes(), t, caller(req)),
            reply,
        );
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
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        if flags.bits() & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 {
            return reply.error(errno(Errno::EINVAL));
        }
        reply_empty(
            c.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            ),
            reply,
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        debug!(
            "link(ino={}, newparent={}, newname={:?})",
            ino.0,
            newparent.0,
            show(newname)
        );
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        reply_entry(
            c.link(ino.0, newparent.0, newname.as_bytes(), caller(req)),
            reply,
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        debug!("open(ino={}, flags={:#o})", ino.0, flags.0);
        if let Some(c) = self.cow() {
            let fh = match c.open(ino.0, flags.0, caller(req)) {
                Ok(fh) => fh,
                Err(e) => return reply.error(errno(e)),
            };
            let map = self.cow_mode(ino.0, fh, |f| reply.open_backing(f));
            return match map.get(&ino.0) {
                Some((Some(id), _)) => {
                    reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), id)
                }
                // Not FOPEN_KEEP_CACHE: writes through a passthrough open bypass this inode's
                // page cache, so a later cached open must not trust pages kept from before.
                _ => reply.opened(FileHandle(fh), FopenFlags::empty()),
            };
        }
        match self.ov().open(ino.0, flags.0) {
            Ok(()) if self.no_open.load(Ordering::Relaxed) => reply.error(FErrno::ENOSYS),
            Ok(()) => {
                if let Some(reply) = self.open_passthrough(ino.0, reply) {
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
                }
            }
            Err(e) => reply.error(errno(e)),
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
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        let (a, fh) = match c.create(parent.0, name.as_bytes(), mode, flags, caller(req)) {
            Ok(x) => x,
            Err(e) => return reply.error(errno(e)),
        };
        let map = self.cow_mode(a.ino, fh, |f| reply.open_backing(f));
        let (attr, fh) = (file_attr(&a), FileHandle(fh));
        match map.get(&a.ino) {
            Some((Some(id), _)) => {
                reply.created_passthrough(&TTL, &attr, Generation(0), fh, FopenFlags::empty(), id)
            }
            _ => reply.created(&TTL, &attr, Generation(0), fh, FopenFlags::empty()),
        }
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        debug!("release(ino={}, fh={})", ino.0, fh.0);
        if let Some(c) = self.cow() {
            c.release(fh.0);
            self.cow_release(ino.0);
            return reply.ok();
        }
        // A passthrough handle carries its inode as fh; the last release drops the backing id.
        if fh.0 != 0 {
            if let Ok(mut map) = self.backing.lock() {
                if let Some((_, count)) = map.get_mut(&ino.0) {
                    *count -= 1;
                    if *count == 0 {
                        map.remove(&ino.0);
                    }
                }
            }
        }
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        debug!(
            "read(ino={}, fh={}, offset={offset}, size={size})",
            ino.0, fh.0
        );
        let r = match self.cow() {
            Some(c) => c.read(ino.0, fh.0, offset, size),
            None => self.ov().read(ino.0, offset, size),
        };
        match r {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
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
            ino.0,
            fh.0,
            data.len()
        );
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        match c.write(fh.0, offset, data, flags.0 & libc::O_APPEND != 0, kill) {
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
        // Writes go straight to the upper file; there is nothing buffered to flush.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        debug!("fsync(ino={}, fh={}, datasync={datasync})", ino.0, fh.0);
        match self.cow() {
            Some(c) => reply_empty(c.fsync(fh.0, datasync), reply),
            None => reply.ok(),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        debug!(
            "fallocate(ino={}, fh={}, offset={offset}, length={length}, mode={mode})",
            ino.0, fh.0
        );
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        reply_empty(c.fallocate(fh.0, offset, length, mode), reply);
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        debug!("opendir(ino={})", ino.0);
        if let Some(c) = self.cow() {
            return match c.opendir(ino.0) {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(errno(e)),
            };
        }
        match self.ov().opendir(ino.0) {
            Ok(()) if self.no_opendir.load(Ordering::Relaxed) => reply.error(FErrno::ENOSYS),
            Ok(()) => reply.opened(
                FileHandle(0),
                FopenFlags::FOPEN_CACHE_DIR | FopenFlags::FOPEN_KEEP_CACHE,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        debug!("readdir(ino={}, offset={offset})", ino.0);
        let add = |l: DirListing<'_>| {
            reply.add(
                INodeNo(l.ino),
                l.next,
                file_type(l.file_type),
                OsStr::from_bytes(l.name),
            )
        };
        let r = match self.cow() {
            Some(c) => c.readdir(ino.0, fh.0, offset, add),
            None => self.ov().readdir(ino.0, offset, add),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        debug!("readdirplus(ino={}, offset={offset})", ino.0);
        let mut failed = None;
        let mut add = |l: DirListing<'_>, a: Result<Attr, Errno>| match a {
            Ok(a) => {
                let name = OsStr::from_bytes(l.name);
                reply.add(
                    INodeNo(l.ino),
                    l.next,
                    name,
                    &TTL,
                    &file_attr(&a),
                    Generation(0),
                )
            }
            Err(e) => {
                failed = Some(e);
                true
            }
        };
        let r = match self.cow() {
            Some(c) => c.readdir(ino.0, fh.0, offset, |l| add(l, c.listed_attr(ino.0, &l))),
            None => self
                .ov()
                .readdir(ino.0, offset, |l| add(l, self.ov().getattr(l.ino))),
        };
        match r.and(failed.map_or(Ok(()), Err)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        if let Some(c) = self.cow() {
            c.release(fh.0);
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.cow() {
            Some(c) => reply_empty(c.fsyncdir(ino.0), reply),
            None => reply.ok(),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        debug!("statfs()");
        let s = match self.cow() {
            Some(c) => match c.statfs() {
                Ok(s) => s,
                Err(e) => return reply.error(errno(e)),
            },
            None => self.ov().statfs(),
        };
        reply.statfs(
            s.blocks,
            s.bfree,
            s.bavail,
            s.files,
            s.ffree,
            BLOCK_SIZE,
            MAX_NAME_LEN,
            BLOCK_SIZE,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        debug!(
            "setxattr(ino={}, name={:?}, flags={flags})",
            ino.0,
            show(name)
        );
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        reply_empty(c.setxattr(ino.0, name.as_bytes(), value, flags), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        debug!(
            "getxattr(ino={}, name={:?}, size={size})",
            ino.0,
            show(name)
        );
        let r = match self.cow() {
            Some(c) => c.getxattr(ino.0, name.as_bytes()),
            None => self.ov().getxattr(ino.0, name.as_bytes()),
        };
        reply_xattr(r, size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        debug!("listxattr(ino={}, size={size})", ino.0);
        let r = match self.cow() {
            Some(c) => c.listxattr(ino.0),
            None => self.ov().listxattr(ino.0),
        };
        reply_xattr(r, size, reply);
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        debug!("removexattr(ino={}, name={:?})", ino.0, show(name));
        let Some(c) = self.cow() else {
            return reply.error(errno(Errno::EROFS));
        };
        reply_empty(c.removexattr(ino.0, name.as_bytes()), reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        debug!("access(ino={}, mask={:#o})", ino.0, mask.bits());
        if self.cow().is_some() {
            // Writable mounts use default_permissions; the kernel checks before asking.
            return reply.ok();
        }
        match self.ov().access(ino.0, mask.bits(), req.uid(), req.gid()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}

fn reply_entry(r: Result<Attr, Errno>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

fn reply_empty(r: Result<(), Errno>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// FUSE's 32-bit device number (the kernel's `new_encode_dev`) as a host `dev_t`.
fn decode_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
    match t {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(st)) => match st.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: i64::from(d.subsec_nanos()),
            },
            Err(e) => {
                // Before the epoch: negative seconds with a positive nanosecond part.
                let d = e.duration();
                let (mut s, mut ns) = (-(d.as_secs() as i64), -i64::from(d.subsec_nanos()));
                if ns < 0 {
                    s -= 1;
                    ns += 1_000_000_000;
                }
                libc::timespec {
                    tv_sec: s,
                    tv_nsec: ns,
                }
            }
        },
    }
}
