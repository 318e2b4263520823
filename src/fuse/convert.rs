//! Conversions between fuser's types and the views' host-side ones, and the replies built
//! from a view's results. Dependencies: view, fuser, libc.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno as FErrno, FileAttr, FileType, Generation, INodeNo, ReplyAttr, ReplyEmpty, ReplyEntry,
    ReplyXattr, Request, TimeOrNow,
};
use nix::errno::Errno;

use crate::view::{Attr, BLOCK_SIZE, Caller, Ino, OpResult};

/// How long the kernel may cache entries and attributes: every change goes through the
/// mount, so the kernel's caches stay right; a day is as good as forever and still bounded.
pub const TTL: Duration = Duration::from_secs(24 * 3600);

/// A view's errno as fuser's.
pub fn errno(e: Errno) -> FErrno {
    FErrno::from_i32(e as i32)
}

/// The kernel's inode number as a view's.
pub fn ino(i: INodeNo) -> Ino {
    Ino(i.0)
}

/// Who sent a request.
pub fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

/// A name for the debug log.
pub fn show(name: &OsStr) -> String {
    String::from_utf8_lossy(name.as_bytes()).into_owned()
}

fn time(secs: i64, nsec: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nsec)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
            + Duration::from_nanos(u64::from(nsec))
    }
}

/// The fuser file type of `S_IFMT` bits.
pub fn file_type(mode: u32) -> FileType {
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

/// An inode's attributes as fuser's.
pub fn file_attr(a: &Attr) -> FileAttr {
    let t = time(a.mtime, a.mtime_nsec);
    FileAttr {
        ino: INodeNo(a.ino.0),
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

/// FUSE's 32-bit device number (the kernel's `new_encode_dev`) as a host `dev_t`.
pub fn decode_dev(rdev: u32) -> u64 {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// A time of a `setattr` request as `utimensat(2)` takes it.
pub fn timespec(t: Option<TimeOrNow>) -> libc::timespec {
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

/// Replies with an entry (lookup, mknod, mkdir, symlink, link).
pub fn reply_entry(r: OpResult<Attr>, reply: ReplyEntry) {
    match r {
        Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

/// Replies with attributes (getattr, setattr).
pub fn reply_attr(r: OpResult<Attr>, reply: ReplyAttr) {
    match r {
        Ok(a) => reply.attr(&TTL, &file_attr(&a)),
        Err(e) => reply.error(errno(e)),
    }
}

/// Replies with success or an error.
pub fn reply_empty(r: OpResult<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// Replies to getxattr/listxattr: the size when asked for it (`size` 0), the value if it
/// fits, else `ERANGE`.
pub fn reply_xattr(value: OpResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() <= size as usize => reply.data(&v),
        Ok(_) => reply.error(FErrno::from_i32(libc::ERANGE)),
        Err(e) => reply.error(errno(e)),
    }
}
