//! Copy-up as the writable view does it: which inodes get an upper copy, in which order, and
//! what the inode table learns. The on-disk protocol (work directory, rename into place) is
//! `upper::copy_up`'s.
//!
//! Parents go first, each parent inode becoming upper too. A copy is made from the lower node
//! the inode continues, which is not necessarily the lower entry at its merged path (below a
//! renamed directory, say). A lower hard link is copied whole, once, and linked under every
//! name the merged view still shows it at.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;

use super::inodes::Inode;
use super::{Cow, errno};
use crate::tree::node::{DataRef, NodeId};
use crate::upper::copy_up::{CopyMode, complete_data, copy_node, copy_up};
use crate::view::{Ino, OpResult};

impl Cow {
    /// Copies an inode up (data too unless `mode` is `MetaOnly`) and marks it upper.
    pub(super) fn ensure_upper(&self, ino: Ino, mode: CopyMode) -> OpResult<()> {
        let i = self.inode(ino)?;
        let path = self.path_of(ino)?;
        if !i.upper {
            self.mark_parents_upper(i.parent)?;
            let linked = i
                .lower
                .and_then(|id| self.tree().node(id))
                .is_some_and(|n| !n.is_dir() && n.nlink > 1);
            // A hard-linked file is copied whole and linked under all its names at once, so a
            // write through one name shows through the others (a later data copy would
            // replace the inode of one name only).
            let mode = if linked { CopyMode::Full } else { mode };
            self.copy_inode(ino, mode)?;
            if let (true, Some(id)) = (linked, i.lower) {
                self.link_other_names(id, &path)?;
            }
        }
        if mode == CopyMode::Full && i.file_type == libc::S_IFREG {
            let (dir, name) = self.split(&path)?;
            let name = name.ok_or(Errno::EINVAL)?;
            if self
                .upper
                .classify(&dir, name)
                .map_err(errno)?
                .is_metacopy()
            {
                let data = self.lower_data(&i)?;
                complete_data(&self.upper, self.tree(), &dir, name, &data).map_err(errno)?;
            }
        }
        Ok(())
    }

    /// After the copy-up of lower node `id` at `done`, gives every other name of it that the
    /// merged view still shows a hard link to the upper copy.
    fn link_other_names(&self, id: NodeId, done: &[u8]) -> OpResult<()> {
        let (sdir, sname) = self.split(done)?;
        let sname = sname.ok_or(Errno::EIO)?.to_os_string();
        for other in self.tree().paths_of(id) {
            if other == done {
                continue;
            }
            let still_lower = self
                .merged_child_at(&other)?
                .is_some_and(|c| !c.upper && c.lower == Some(id));
            if !still_lower {
                continue;
            }
            let (parent, name) = match other.iter().rposition(|&b| b == b'/') {
                Some(k) => (&other[..k], &other[k + 1..]),
                None => (&b""[..], &other[..]),
            };
            if !parent.is_empty() {
                copy_up(&self.upper, self.tree(), parent, CopyMode::Full).map_err(errno)?;
            }
            self.write_inodes()?.mark_path_upper(parent);
            let pdir = self.upper_dir(parent)?;
            let times = pdir.stat(None).map_err(errno)?;
            pdir.link(&sdir, &sname, OsStr::from_bytes(name))
                .map_err(errno)?;
            // A copy-up shows as no change of the parent: its times are put back.
            pdir.set_own_times(&[
                libc::timespec {
                    tv_sec: times.st_atime,
                    tv_nsec: times.st_atime_nsec,
                },
                libc::timespec {
                    tv_sec: times.st_mtime,
                    tv_nsec: times.st_mtime_nsec,
                },
            ])
            .map_err(errno)?;
        }
        Ok(())
    }

    /// The lower data of a file inode.
    pub(super) fn lower_data(&self, i: &Inode) -> OpResult<DataRef> {
        let id = i.lower.ok_or(Errno::EIO)?;
        match self.tree().rec(id).and_then(|r| r.data()) {
            Some(d) => Ok(d),
            _ => Err(Errno::EIO),
        }
    }

    /// Copies up every directory above `ino` that is not upper yet, topmost first.
    pub(super) fn mark_parents_upper(&self, mut ino: Ino) -> OpResult<()> {
        let mut chain = Vec::new();
        while ino != Ino::ROOT {
            let i = self.inode(ino)?;
            if i.upper {
                break;
            }
            chain.push(ino);
            ino = i.parent;
        }
        for ino in chain.into_iter().rev() {
            self.copy_inode(ino, CopyMode::Full)?;
        }
        Ok(())
    }

    /// Copies one inode (its parent already upper) from the lower node it continues.
    pub(super) fn copy_inode(&self, ino: Ino, mode: CopyMode) -> OpResult<()> {
        let i = self.inode(ino)?;
        let tree = self.tree();
        let node = i.lower.and_then(|id| tree.node(id)).ok_or_else(|| {
            log::error!("inode {ino} has neither an upper nor a lower entry");
            Errno::EIO
        })?;
        let pdir = self.upper_dir(&self.path_of(i.parent)?)?;
        copy_node(&self.upper, tree, &pdir, &i.name, &node, mode).map_err(errno)?;
        self.write_inodes()?.set_upper(ino);
        Ok(())
    }

    /// Whether an inode's upper entry is a metadata-only copy (its data still the lower's).
    pub(super) fn is_metacopy(&self, ino: Ino) -> OpResult<bool> {
        let path = self.path_of(ino)?;
        let (dir, name) = self.split(&path)?;
        match name {
            Some(n) => Ok(self.upper.classify(&dir, n).map_err(errno)?.is_metacopy()),
            None => Ok(false),
        }
    }
}
