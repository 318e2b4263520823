//! Extended attributes in the writable view: the image's until an entry is copied up, the
//! upper copy's after (the image's overlay-namespaced ones stored escaped, read back by their
//! own names); overlayfs's bookkeeping never shows; `user.rimgfs.layer` tells where an entry
//! comes from. Setting or removing one copies the entry up, metadata only.

use std::ffi::OsStr;

use nix::errno::Errno;

use super::{Cow, errno, lock};
use crate::sys::DirFd;
use crate::upper::copy_up::CopyMode;
use crate::upper::format::{escape_xattr, unescape_xattr};
use crate::upper::{OVERRIDE_STAT, is_private_xattr};
use crate::view::{Ino, OpResult, PROVENANCE_XATTR, View};

impl Cow {
    /// An extended attribute (the image's, or the upper copy's once copied up).
    pub(super) fn getxattr(&self, ino: Ino, name: &[u8]) -> OpResult<Vec<u8>> {
        self.stable(|| self.getxattr_now(ino, name))
    }

    fn getxattr_now(&self, ino: Ino, name: &[u8]) -> OpResult<Vec<u8>> {
        // `ls -l` asks this of every entry (security.selinux): read what it needs of the
        // table without copying the inode, and answer a lower entry from the image alone.
        let (upper, lower, is_dir) = {
            let t = self.read_inodes()?;
            let i = t.get(ino).ok_or_else(|| {
                log::error!("request for unknown inode {ino}");
                Errno::EIO
            })?;
            (i.upper, i.lower, i.is_dir())
        };
        if name == PROVENANCE_XATTR {
            // A directory merged with a lower one still comes from that layer; anything
            // copied up or created since comes from the upper layer.
            return match lower {
                Some(id) if !upper || is_dir => self.lower.getxattr(Ino::of(id), name),
                _ if upper => Ok(b"upper".to_vec()),
                _ => Err(Errno::ENODATA),
            };
        }
        if name == OVERRIDE_STAT {
            return Err(Errno::ENODATA);
        }
        if upper {
            // The entry's own attributes are stored escaped where they would be bookkeeping.
            let path = self.path_of(ino)?;
            let stored = escape_xattr(name);
            return self
                .on_upper_entry(&path, |d, n| d.get_xattr(n, &stored))?
                .map_err(|e| {
                    if e.raw_os_error() == Some(libc::ENODATA) {
                        Errno::ENODATA
                    } else {
                        errno(e)
                    }
                });
        }
        match lower {
            Some(id) => self.lower.getxattr(Ino::of(id), name),
            None => Err(Errno::ENODATA),
        }
    }

    /// Runs `f` on the upper entry at `path` as (directory, name): its parent and its name,
    /// or for the root, the upper root's own parent and name (the one way to name it to the
    /// `l*xattr` calls).
    fn on_upper_entry<T>(
        &self,
        path: &[u8],
        f: impl FnOnce(&DirFd, &OsStr) -> std::io::Result<T>,
    ) -> OpResult<std::io::Result<T>> {
        let (dir, name) = self.split(path)?;
        Ok(match name {
            Some(n) => f(&dir, n),
            None => self.upper.root_parent().and_then(|(p, n)| f(&p, n)),
        })
    }

    /// The attribute names, NUL-terminated, without the overlay's private ones.
    pub(super) fn listxattr(&self, ino: Ino) -> OpResult<Vec<u8>> {
        self.stable(|| self.listxattr_now(ino))
    }

    fn listxattr_now(&self, ino: Ino) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if !i.upper {
            return match i.lower {
                Some(id) => self.lower.listxattr(Ino::of(id)),
                None => Ok(Vec::new()),
            };
        }
        let path = self.path_of(ino)?;
        let names = self
            .on_upper_entry(&path, |d, n| d.list_xattr(n))?
            .map_err(errno)?;
        let mut out = Vec::new();
        for k in names.iter().filter_map(|k| unescape_xattr(k)) {
            out.extend_from_slice(&k);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets an extended attribute (a metadata-only copy-up first).
    pub(super) fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> OpResult<()> {
        if is_private_xattr(name) || name == PROVENANCE_XATTR {
            return Err(Errno::EOPNOTSUPP);
        }
        let _ns = lock(&self.ns)?;
        self.ensure_upper(ino, CopyMode::MetaOnly)?;
        let path = self.path_of(ino)?;
        self.on_upper_entry(&path, |d, n| d.set_xattr(n, name, value, flags))?
            .map_err(errno)
    }

    /// Removes an extended attribute (a metadata-only copy-up first).
    pub(super) fn removexattr(&self, ino: Ino, name: &[u8]) -> OpResult<()> {
        if is_private_xattr(name) || name == PROVENANCE_XATTR {
            return Err(Errno::EOPNOTSUPP);
        }
        let _ns = lock(&self.ns)?;
        self.getxattr(ino, name)?;
        self.ensure_upper(ino, CopyMode::MetaOnly)?;
        let path = self.path_of(ino)?;
        self.on_upper_entry(&path, |d, n| d.remove_xattr(n, name))?
            .map_err(errno)
    }
}
