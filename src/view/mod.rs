//! What the two views of a mount share: the request-path result type, inode and handle
//! numbers, attributes and listings in host terms, and [`View`], the one interface the FUSE
//! adapter drives.
//!
//! A view answers each FUSE request with a plain method returning `Result<_, Errno>`; no fuser
//! type appears here, so views are driven (and tested) without a kernel. [`LowerView`] serves
//! the image alone, read-only; `cow::Cow` puts an upper layer on top of one. Changes are
//! refused by default (`EROFS`): a view without an upper layer has nowhere to write them.
//! Dependencies: tree (node ids), layer (file data), nix (Errno).

pub mod lower;

use std::fs::File;
use std::sync::Arc;

use nix::errno::Errno;

use crate::tree::node::NodeId;
pub use lower::{LowerView, PASSTHROUGH_MIN_SIZE, PassthroughStore};

/// Result of a request-path operation.
pub type OpResult<T> = Result<T, Errno>;

/// The provenance attribute: answered on every entry, never listed.
pub const PROVENANCE_XATTR: &[u8] = b"user.rimgfs.layer";
/// Reported block size; also the unit of `statfs` block counts.
pub const BLOCK_SIZE: u32 = 4096;
/// Longest name a view accepts (as every Linux filesystem).
pub const MAX_NAME_LEN: u32 = 255;

/// An inode number as the kernel knows it. The root is 1, as FUSE requires; a lower node is
/// numbered `NodeId + 1`, the same on every mount of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ino(pub u64);

impl Ino {
    /// The root directory.
    pub const ROOT: Ino = Ino(1);

    /// The number of lower node `id`.
    pub fn of(id: NodeId) -> Ino {
        Ino(u64::from(id.0) + 1)
    }

    /// The lower node this number belongs to, if it is a lower node's number at all.
    pub fn node(self) -> Option<NodeId> {
        self.0
            .checked_sub(1)
            .and_then(|i| u32::try_from(i).ok())
            .map(NodeId)
    }
}

impl std::fmt::Display for Ino {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// An open file or directory handle; [`Fh::NONE`] carries no state (reads go by inode).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fh(pub u64);

impl Fh {
    /// The handle of an open that needs no state.
    pub const NONE: Fh = Fh(0);
}

/// Attributes of an inode, in host terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: Ino,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Device number (a host `dev_t`).
    pub rdev: u64,
    /// mtime seconds.
    pub mtime: i64,
    /// mtime nanoseconds.
    pub mtime_nsec: u32,
    /// atime seconds (a lower entry's is its mtime: layers record only mtime).
    pub atime: i64,
    /// atime nanoseconds.
    pub atime_nsec: u32,
    /// ctime seconds (a lower entry's is its mtime too).
    pub ctime: i64,
    /// ctime nanoseconds.
    pub ctime_nsec: u32,
}

/// One entry of a directory listing, borrowing its name.
#[derive(Clone, Copy, Debug)]
pub struct DirListing<'a> {
    /// Inode number.
    pub ino: Ino,
    /// Offset of the next entry (for the kernel to resume from).
    pub next: u64,
    /// `S_IFMT` bits.
    pub file_type: u32,
    /// Name.
    pub name: &'a [u8],
}

/// Filesystem statistics.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    /// Total blocks of `BLOCK_SIZE`.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
}

/// Who asks: the caller's ids, for the owner of what it creates and for permission checks.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// The attribute changes of one `setattr` request; `None` leaves an attribute as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    /// Permission bits.
    pub mode: Option<u32>,
    /// Owner.
    pub uid: Option<u32>,
    /// Group.
    pub gid: Option<u32>,
    /// Size (truncate or extend).
    pub size: Option<u64>,
    /// atime and mtime, as `utimensat(2)` takes them (`UTIME_OMIT`, `UTIME_NOW` allowed).
    pub times: Option<[libc::timespec; 2]>,
}

/// What a view asks of the kernel when the mount starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Try kernel passthrough for open files ([`View::backing_file`]).
    pub passthrough: bool,
    /// The view drops set-id bits itself on writes, told per write by the kernel.
    pub kills_privs: bool,
    /// Opens need no state: the kernel may skip open and release altogether.
    pub stateless_open: bool,
    /// Likewise for directories.
    pub stateless_opendir: bool,
    /// File data and listings never change behind the kernel's back, so it may keep them.
    pub keep_cache: bool,
    /// Opens answered with [`Fh::NONE`] read data that never changes (a lower file's), so the
    /// kernel may keep that page cache across opens; the view drops it ([`Invalidate`]) when
    /// the data moves.
    pub keep_handleless_cache: bool,
    /// Directory listings change only through the mount, where the kernel drops its cached
    /// listing itself, so it may keep them across opendirs.
    pub cache_dirs: bool,
    /// The view answers and stores POSIX ACLs as the kernel expects with `FUSE_POSIX_ACL`
    /// (kept as `system.posix_acl_*` attributes), so the kernel may cache and enforce them.
    pub posix_acl: bool,
}

/// Lets a view drop what the kernel caches of an inode, for changes the kernel did not make
/// itself. Must not be called with a lock a request may wait for: the kernel may wait on
/// requests in flight for that inode before it answers.
pub trait Invalidate: Send + Sync {
    /// Drops the kernel's cached attributes and data (page cache, ACLs) of `ino`.
    fn inode(&self, ino: Ino);
}

/// A filesystem view: the FUSE operations as plain methods over host-side types.
///
/// Reads are required; changes default to `EROFS` (and their bookkeeping, such as `forget`
/// and `release`, to nothing), which is all a view without an upper layer can answer.
pub trait View: Send + Sync {
    /// What to ask of the kernel.
    fn features(&self) -> Features;

    /// Hands the view the means to invalidate kernel caches, once the mount runs.
    fn set_invalidator(&self, _inv: Arc<dyn Invalidate>) {}

    /// Looks `name` up in directory `parent`, counting a kernel reference to what it finds.
    fn lookup(&self, parent: Ino, name: &[u8]) -> OpResult<Attr>;

    /// Drops `n` kernel references to `ino`.
    fn forget(&self, _ino: Ino, _n: u64) {}

    /// Attributes of an inode; an open file's handle, if the kernel names one.
    fn getattr(&self, ino: Ino, fh: Option<Fh>) -> OpResult<Attr>;

    /// Target of a symlink.
    fn readlink(&self, ino: Ino) -> OpResult<Vec<u8>>;

    /// Opens a file (`open(2)` flags).
    fn open(&self, ino: Ino, flags: i32, who: Caller) -> OpResult<Fh>;

    /// Reads up to `size` bytes at `offset`.
    fn read(&self, ino: Ino, fh: Fh, offset: u64, size: u32) -> OpResult<Vec<u8>>;

    /// Closes a file or directory handle of `ino`.
    fn release(&self, _ino: Ino, _fh: Fh) {}

    /// A host file holding exactly the data of `ino` as opened by `fh`, for the kernel to do
    /// the I/O itself (passthrough); `None` when this open goes through the daemon.
    fn backing_file(&self, ino: Ino, fh: Fh) -> Option<OpResult<Arc<File>>>;

    /// The kernel does no passthrough on this mount (not offered at init, or a backing file
    /// refused): a view making files for it may stop.
    fn passthrough_off(&self) {}

    /// Opens a directory for listing.
    fn opendir(&self, ino: Ino) -> OpResult<Fh>;

    /// Lists an opened directory from `offset` (`.` 0→1, `..` 1→2, entries after), handing
    /// each entry to `add` until it returns true (the reply is full).
    fn readdir(
        &self,
        ino: Ino,
        fh: Fh,
        offset: u64,
        add: &mut dyn FnMut(DirListing<'_>) -> bool,
    ) -> OpResult<()>;

    /// For readdirplus: a listed entry's attributes, counting a reference as a lookup does.
    fn listed_attr(&self, parent: Ino, l: &DirListing<'_>) -> OpResult<Attr>;

    /// An extended attribute's value.
    fn getxattr(&self, ino: Ino, name: &[u8]) -> OpResult<Vec<u8>>;

    /// The extended attribute names, NUL-terminated.
    fn listxattr(&self, ino: Ino) -> OpResult<Vec<u8>>;

    /// `access(2)`, for mounts where the kernel does not check permissions itself.
    fn access(&self, ino: Ino, mask: i32, who: Caller) -> OpResult<()>;

    /// Filesystem statistics.
    fn statfs(&self) -> OpResult<StatFs>;

    /// Changes attributes.
    fn setattr(&self, _ino: Ino, _set: &SetAttr, _fh: Option<Fh>, _who: Caller) -> OpResult<Attr> {
        Err(Errno::EROFS)
    }

    /// Creates a device, fifo, socket or regular file node.
    fn mknod(&self, _p: Ino, _name: &[u8], _mode: u32, _rdev: u64, _who: Caller) -> OpResult<Attr> {
        Err(Errno::EROFS)
    }

    /// Creates a directory.
    fn mkdir(&self, _parent: Ino, _name: &[u8], _mode: u32, _who: Caller) -> OpResult<Attr> {
        Err(Errno::EROFS)
    }

    /// Removes a non-directory.
    fn unlink(&self, _parent: Ino, _name: &[u8]) -> OpResult<()> {
        Err(Errno::EROFS)
    }

    /// Removes an empty directory.
    fn rmdir(&self, _parent: Ino, _name: &[u8]) -> OpResult<()> {
        Err(Errno::EROFS)
    }

    /// Creates a symlink to `target`.
    fn symlink(&self, _parent: Ino, _name: &[u8], _target: &[u8], _who: Caller) -> OpResult<Attr> {
        Err(Errno::EROFS)
    }

    /// Renames (`flags`: `RENAME_NOREPLACE`, `RENAME_EXCHANGE`).
    fn rename(
        &self,
        _p: Ino,
        _name: &[u8],
        _np: Ino,
        _newname: &[u8],
        _flags: u32,
    ) -> OpResult<()> {
        Err(Errno::EROFS)
    }

    /// Makes a hard link to `ino` as `newparent/newname`.
    fn link(&self, _ino: Ino, _newparent: Ino, _newname: &[u8]) -> OpResult<Attr> {
        Err(Errno::EROFS)
    }

    /// Creates and opens a regular file.
    fn create(
        &self,
        _parent: Ino,
        _name: &[u8],
        _mode: u32,
        _flags: i32,
        _who: Caller,
    ) -> OpResult<(Attr, Fh)> {
        Err(Errno::EROFS)
    }

    /// Writes to an open file: at `offset`, or at its end when `append`; `kill` says the
    /// writer may not keep set-id bits (the kernel's `FUSE_WRITE_KILL_SUIDGID`).
    fn write(
        &self,
        _fh: Fh,
        _offset: u64,
        _data: &[u8],
        _append: bool,
        _kill: bool,
    ) -> OpResult<u32> {
        Err(Errno::EROFS)
    }

    /// Flushes an open file to disk.
    fn fsync(&self, _fh: Fh, _datasync: bool) -> OpResult<()> {
        Ok(())
    }

    /// Preallocates or punches space in an open file.
    fn fallocate(&self, _fh: Fh, _offset: u64, _length: u64, _mode: i32) -> OpResult<()> {
        Err(Errno::EROFS)
    }

    /// Flushes a directory to disk.
    fn fsyncdir(&self, _ino: Ino) -> OpResult<()> {
        Ok(())
    }

    /// Sets an extended attribute (`flags`: `XATTR_CREATE`, `XATTR_REPLACE`).
    fn setxattr(&self, _ino: Ino, _name: &[u8], _value: &[u8], _flags: i32) -> OpResult<()> {
        Err(Errno::EROFS)
    }

    /// Removes an extended attribute.
    fn removexattr(&self, _ino: Ino, _name: &[u8]) -> OpResult<()> {
        Err(Errno::EROFS)
    }
}

/// Maps a host I/O error to an errno; an error without one becomes `EIO`, logged.
pub fn io_errno(e: &std::io::Error, op: &str) -> Errno {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code),
        None => {
            log::warn!("{op}: {e}");
            Errno::EIO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ino_numbers_lower_nodes_from_one() {
        assert_eq!(Ino::of(NodeId(0)), Ino::ROOT);
        assert_eq!(Ino::of(NodeId(41)), Ino(42));
        assert_eq!(Ino(42).node(), Some(NodeId(41)));
        assert_eq!(Ino(0).node(), None);
        assert_eq!(Ino(u64::from(u32::MAX) + 2).node(), None);
    }
}
