//! The FUSE adapter: a switchboard from fuser 0.18 requests to [`Overlay`] methods.
//!
//! Each method decodes its arguments, logs them at debug, calls one method and replies. The
//! only fuser types in the crate live here. Lower layers never change under a mount, so
//! entries and attributes are cached by the kernel for a long time and file pages are kept
//! (`FOPEN_KEEP_CACHE`, `FOPEN_CACHE_DIR`). Dependencies: overlay, fuser.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    AccessFlags, BackingId, Errno as FErrno, FileAttr, FileHandle, FileType, Filesystem,
    FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags, ReplyAttr,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyXattr, Request,
};
use log::debug;
use nix::errno::Errno;

use crate::overlay::{Attr, BLOCK_SIZE, MAX_NAME_LEN, Overlay};

/// How long the kernel may cache entries and attributes: the lower tree never changes while
/// mounted, so a day is as good as forever and still bounded.
const TTL: Duration = Duration::from_secs(24 * 3600);
/// Largest read the kernel is asked to send at once (with `FUSE_MAX_PAGES`).
const MAX_READAHEAD: u32 = 1 << 20;

/// The filesystem handed to fuser.
pub struct Fuse {
    ov: Overlay,
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
}

impl Fuse {
    /// Wraps an overlay.
    pub fn new(ov: Overlay) -> Fuse {
        Fuse {
            ov,
            passthrough: AtomicBool::new(false),
            no_opendir: AtomicBool::new(false),
            no_open: AtomicBool::new(false),
            backing: Mutex::new(HashMap::new()),
        }
    }

    /// Opens `ino` in passthrough mode if it qualifies; gives the reply back otherwise.
    fn open_passthrough(&self, ino: u64, reply: ReplyOpen) -> Option<ReplyOpen> {
        if !self.passthrough.load(Ordering::Relaxed) || !self.ov.wants_passthrough(ino) {
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
        let file = match self.ov.backing_file(ino) {
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
        if !self.ov.passthrough_enabled() {
            let no = config
                .add_capabilities(InitFlags::FUSE_NO_OPEN_SUPPORT)
                .is_ok();
            self.no_open.store(no, Ordering::Relaxed);
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        debug!("lookup(parent={}, name={:?})", parent.0, show(name));
        match self.ov.lookup(parent.0, name.as_bytes()) {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        debug!("getattr(ino={})", ino.0);
        match self.ov.getattr(ino.0) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        debug!("readlink(ino={})", ino.0);
        match self.ov.readlink(ino.0) {
            Ok(t) => reply.data(t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        debug!("open(ino={}, flags={:#o})", ino.0, flags.0);
        match self.ov.open(ino.0, flags.0) {
            Ok(()) if self.no_open.load(Ordering::Relaxed) => reply.error(FErrno::ENOSYS),
            Ok(()) => {
                if let Some(reply) = self.open_passthrough(ino.0, reply) {
                    reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE);
                }
            }
            Err(e) => reply.error(errno(e)),
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
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        debug!("read(ino={}, offset={offset}, size={size})", ino.0);
        match self.ov.read(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        debug!("opendir(ino={})", ino.0);
        match self.ov.opendir(ino.0) {
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
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        debug!("readdir(ino={}, offset={offset})", ino.0);
        let r = self.ov.readdir(ino.0, offset, |l| {
            reply.add(
                INodeNo(l.ino),
                l.next,
                file_type(l.file_type),
                OsStr::from_bytes(l.name),
            )
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        debug!("readdirplus(ino={}, offset={offset})", ino.0);
        let mut failed = None;
        let r = self
            .ov
            .readdir(ino.0, offset, |l| match self.ov.getattr(l.ino) {
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
            });
        match r.and(failed.map_or(Ok(()), Err)) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        debug!("statfs()");
        let s = self.ov.statfs();
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

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        debug!(
            "getxattr(ino={}, name={:?}, size={size})",
            ino.0,
            show(name)
        );
        reply_xattr(self.ov.getxattr(ino.0, name.as_bytes()), size, reply);
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        debug!("listxattr(ino={}, size={size})", ino.0);
        reply_xattr(self.ov.listxattr(ino.0), size, reply);
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        debug!("access(ino={}, mask={:#o})", ino.0, mask.bits());
        match self.ov.access(ino.0, mask.bits(), req.uid(), req.gid()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }
}
