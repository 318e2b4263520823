//! Conversions between fuser's types and the views' host-side ones, and the replies built
//! from a view's results. Dependencies: view, fuser, libc.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno as FErrno, FileAttr, FileType, Generation, INodeNo, ReplyAttr, ReplyData, ReplyEmpty,
    ReplyEntry, ReplyXattr, Request, TimeOrNow,
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

/// An inode's attributes as fuser's; `EOVERFLOW` for a device number FUSE cannot carry.
pub fn file_attr(a: &Attr) -> OpResult<FileAttr> {
    let rdev = fuse_dev(a).ok_or(Errno::EOVERFLOW)?;
    Ok(with_rdev(a, rdev))
}

/// A listed entry's attributes for readdirplus, and how long the kernel may keep them. A
/// device FUSE cannot number still shows in the listing, with attributes never cached, so a
/// `stat` of it asks again and fails as [`file_attr`] does.
pub fn listed_file_attr(a: &Attr) -> (FileAttr, Duration) {
    match fuse_dev(a) {
        Some(rdev) => (with_rdev(a, rdev), TTL),
        None => (with_rdev(a, 0), Duration::ZERO),
    }
}

/// An inode's device number in FUSE's encoding, logged when it has none.
fn fuse_dev(a: &Attr) -> Option<u32> {
    let dev = encode_dev(a.rdev);
    if dev.is_none() {
        let (major, minor) = (libc::major(a.rdev), libc::minor(a.rdev));
        log::warn!(
            "inode {}: device {major}:{minor} does not fit FUSE's device numbers",
            a.ino
        );
    }
    dev
}

fn with_rdev(a: &Attr, rdev: u32) -> FileAttr {
    let t = time(a.mtime, a.mtime_nsec);
    FileAttr {
        ino: INodeNo(a.ino.0),
        size: a.size,
        blocks: a.blocks,
        atime: time(a.atime, a.atime_nsec),
        mtime: t,
        ctime: time(a.ctime, a.ctime_nsec),
        crtime: t,
        kind: file_type(a.mode),
        perm: (a.mode & 0o7777) as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

/// Bits of a major and a minor number in FUSE's 32-bit device numbers (the kernel's own
/// `dev_t`: `MINORBITS` 20).
const MAJOR_BITS: u32 = 12;
const MINOR_BITS: u32 = 20;

/// A host `dev_t` as FUSE's 32-bit device number, the kernel's `new_encode_dev` (the inverse
/// of [`decode_dev`]). `None` for a major of 4096 or more or a minor of 2^20 or more, which
/// that number cannot hold: the kernel has no such devices, and answers `stat(2)` on one with
/// `EOVERFLOW` (`cp_new_stat`), rather than name another device.
pub fn encode_dev(rdev: u64) -> Option<u32> {
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    if major >= 1 << MAJOR_BITS || minor >= 1 << MINOR_BITS {
        return None;
    }
    Some((minor & 0xff) | (major << 8) | ((minor & !0xff) << 12))
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
    match r.and_then(|a| file_attr(&a)) {
        Ok(a) => reply.entry(&TTL, &a, Generation(0)),
        Err(e) => reply.error(errno(e)),
    }
}

/// Replies to a lookup of a name that is not there with a negative entry (inode 0) the
/// kernel may keep as long as a positive one: only this mount adds names to the tree, and
/// the kernel turns the entry positive itself when it does.
pub fn reply_absent(reply: ReplyEntry) {
    let none = FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    };
    reply.entry(&TTL, &none, Generation(0));
}

/// Replies with attributes (getattr, setattr).
pub fn reply_attr(r: OpResult<Attr>, reply: ReplyAttr) {
    match r.and_then(|a| file_attr(&a)) {
        Ok(a) => reply.attr(&TTL, &a),
        Err(e) => reply.error(errno(e)),
    }
}

/// Replies with bytes (readlink, read).
pub fn reply_data(r: OpResult<Vec<u8>>, reply: ReplyData) {
    match r {
        Ok(data) => reply.data(&data),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_through_fuse() {
        let majors = [0, 1, 8, 255, 256, 259, 4095];
        let minors = [0, 1, 3, 255, 256, 70000, 0xfffff];
        for major in majors {
            for minor in minors {
                let dev = libc::makedev(major, minor);
                let fuse = encode_dev(dev).unwrap_or_else(|| panic!("{major}:{minor}"));
                assert_eq!(decode_dev(fuse), dev, "{major}:{minor}");
            }
        }
        // The kernel's own encoding of a few: 1:3 (/dev/null), 8:0, 259:70000.
        assert_eq!(encode_dev(libc::makedev(1, 3)), Some(0x103));
        assert_eq!(encode_dev(libc::makedev(8, 0)), Some(0x800));
        assert_eq!(
            encode_dev(libc::makedev(259, 70000)),
            Some((70000 & 0xff) | (259 << 8) | ((70000 & !0xff) << 12))
        );
    }

    #[test]
    fn device_numbers_fuse_cannot_hold_are_refused() {
        // A plain cast would show these as other, real devices (4096:1 as 0:1).
        for (major, minor) in [(4096, 1), (1 << 20, 0), (1, 1 << 20), (u32::MAX, u32::MAX)] {
            assert_eq!(
                encode_dev(libc::makedev(major, minor)),
                None,
                "{major}:{minor}"
            );
        }
        let a = Attr {
            ino: Ino(7),
            mode: libc::S_IFCHR | 0o600,
            nlink: 1,
            uid: 0,
            gid: 0,
            size: 0,
            blocks: 0,
            rdev: libc::makedev(4096, 1),
            mtime: 0,
            mtime_nsec: 0,
            atime: 0,
            atime_nsec: 0,
            ctime: 0,
            ctime_nsec: 0,
        };
        assert_eq!(file_attr(&a).err(), Some(Errno::EOVERFLOW));
        let ok = file_attr(&Attr {
            rdev: libc::makedev(4095, 1),
            ..a
        });
        assert_eq!(ok.map(|f| f.rdev), Ok((4095 << 8) | 1));
        // Listed all the same, but never cached.
        let (listed, ttl) = listed_file_attr(&a);
        assert_eq!(
            (listed.ino, listed.rdev, ttl),
            (INodeNo(7), 0, Duration::ZERO)
        );
        assert_eq!(listed_file_attr(&Attr { rdev: 0, ..a }).1, TTL);
    }
}
