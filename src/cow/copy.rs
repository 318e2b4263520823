//! Copy-up as the writable view does it: which inodes get an upper copy, in which order, and
//! what the inode table learns. The on-disk protocol (work directory, rename into place) is
//! `upper::copy_up`'s.
//!
//! Parents go first, each parent inode becoming upper too. A copy is made from the lower node
//! the inode continues, which is not necessarily the lower entry at its merged path (below a
//! renamed directory, say). A lower hard link is copied whole, once, and linked under every
//! name the merged view still shows it at.
//!
//! A big lower file's passthrough copy, once finished, is that data copy ([`super::private`]):
//! readers passed through to it then read the upper file.
//!
//! A data copy (the one slow part) is staged in the work directory before `ns` is taken
//! ([`Cow::lock_with_data_up`] for writes, [`Cow::with_data_staged`] for renames and links),
//! under the inode's copy lock only, so racing writers make one copy and the rest of the
//! mount stays usable meanwhile; `ns` is held only to rename the copy into place and record
//! it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::errno::Errno;

use super::inodes::Inode;
use super::{Cow, errno, lock};
use crate::sys::DirFd;
use crate::tree::node::{DataRef, Node, NodeId, NodeKind};
use crate::upper::copy_up::{
    CopyMode, Staged, complete_data, copy_node, copy_up, stage_data, stage_node, stage_node_on,
};
use crate::view::{Ino, OpResult};

/// A data copy made ahead of `ns`, and what it was made for.
pub(super) enum Prepared<'u> {
    /// A full copy of the lower node the inode continued while it had no upper entry.
    Node(NodeId, Staged<'u>),
    /// The lower data of a metadata-only copy.
    Data(DataRef, Staged<'u>),
}

impl Cow {
    /// Takes `ns` with `ino`'s data in the upper, copying it up first where needed; says
    /// whether data was copied (the kernel's cached pages of it then go, see
    /// [`Cow::invalidate`]). The data is copied into the work directory before `ns` is
    /// taken, holding only `ino`'s copy lock: a second writer waits there for the first
    /// one's copy instead of making its own, and every other request goes on meanwhile.
    pub(super) fn lock_with_data_up(&self, ino: Ino) -> OpResult<(MutexGuard<'_, ()>, bool)> {
        let slot = self.copy_slot(ino)?;
        let result = (|| {
            let _copying = lock(&slot)?;
            let prepared = self.prepare_data(ino)?;
            let ns = lock(&self.ns)?;
            let copied = prepared.is_some() || self.needs_data(ino)?;
            self.ensure_upper_with(ino, CopyMode::Full, prepared)?;
            Ok((ns, copied))
        })();
        self.drop_copy_slot(ino, slot);
        result
    }

    /// Runs `f` (which takes `ns` itself) with the data copy a full copy-up of `ino` needs
    /// staged ahead, if any, holding `ino`'s copy lock: a namespace change that copies a
    /// file up whole (a rename, a link) makes the slow copy before taking `ns`, as a write
    /// does ([`Cow::lock_with_data_up`]).
    pub(super) fn with_data_staged<T>(
        &self,
        ino: Ino,
        f: impl FnOnce(Option<Prepared<'_>>) -> OpResult<T>,
    ) -> OpResult<T> {
        let slot = self.copy_slot(ino)?;
        let result = (|| {
            let _copying = lock(&slot)?;
            f(self.prepare_data(ino)?)
        })();
        self.drop_copy_slot(ino, slot);
        result
    }

    /// The copy lock of `ino`, made on first use.
    fn copy_slot(&self, ino: Ino) -> OpResult<Arc<Mutex<()>>> {
        Ok(lock(&self.copying)?.entry(ino).or_default().clone())
    }

    /// Lets go of a copy lock; the last user removes it (every clone is made holding the
    /// map's lock, so two counts, the map's and this one, mean no one else has it).
    fn drop_copy_slot(&self, ino: Ino, slot: Arc<Mutex<()>>) {
        if let Ok(mut m) = self.copying.lock() {
            if Arc::strong_count(&slot) == 2 {
                m.remove(&ino);
            }
        }
    }

    /// Whether a full copy-up of `ino` would copy data: a regular file without an upper
    /// entry, or with a metadata-only one.
    fn needs_data(&self, ino: Ino) -> OpResult<bool> {
        let i = self.inode(ino)?;
        Ok(i.file_type == libc::S_IFREG && (!i.upper || self.is_metacopy(ino)?))
    }

    /// Stages the data copy a full copy-up of `ino` needs, if any. What it reads of the
    /// upper is read with the names still; the copy itself is made without any lock, and
    /// checked again when it is placed.
    fn prepare_data(&self, ino: Ino) -> OpResult<Option<Prepared<'_>>> {
        let plan = self.stable(|| {
            let i = self.inode(ino)?;
            if i.file_type != libc::S_IFREG || i.unlinked {
                return Ok(None);
            }
            if !i.upper {
                return Ok(i.lower.map(|id| (Some(id), None)));
            }
            if !self.is_metacopy(ino)? {
                return Ok(None);
            }
            Ok(Some((None, Some(self.lower_data(&i)?))))
        })?;
        let tree = self.tree();
        Ok(match plan {
            Some((Some(id), _)) => {
                let node = tree.node(id).ok_or(Errno::EIO)?;
                let staged = match self.private_node(&node) {
                    Some(s) => s,
                    None => stage_node(&self.upper, tree, &node, CopyMode::Full),
                };
                Some(Prepared::Node(id, staged.map_err(errno)?))
            }
            Some((None, Some(data))) => {
                let staged = match self.private_data(&data) {
                    Some(staged) => staged,
                    None => stage_data(&self.upper, tree, &data).map_err(errno)?,
                };
                Some(Prepared::Data(data, staged))
            }
            _ => None,
        })
    }

    /// Lower data `data` staged as its passthrough copy, if that is finished (see
    /// [`super::private`]): no data moves.
    fn private_data(&self, data: &DataRef) -> Option<Staged<'_>> {
        self.private
            .take(data)
            .map(|tmp| Staged::adopt(&self.upper, tmp))
    }

    /// A full copy of lower file `node` staged around its passthrough copy, if that is
    /// finished (see [`super::private`]): no data moves, and readers passed through to it see
    /// the upper file's writes.
    fn private_node(&self, node: &Node) -> Option<std::io::Result<Staged<'_>>> {
        let NodeKind::File(d) = &node.kind else {
            return None;
        };
        let tmp = self.private.take(d)?;
        Some(stage_node_on(&self.upper, node, tmp))
    }

    /// Copies an inode up (data too unless `mode` is `MetaOnly`) and marks it upper.
    pub(super) fn ensure_upper(&self, ino: Ino, mode: CopyMode) -> OpResult<()> {
        self.ensure_upper_with(ino, mode, None)
    }

    /// [`Cow::ensure_upper`], using a data copy staged ahead where it still fits (the inode
    /// still continues that lower node, or is still a metadata-only copy of that data).
    pub(super) fn ensure_upper_with(
        &self,
        ino: Ino,
        mode: CopyMode,
        prepared: Option<Prepared<'_>>,
    ) -> OpResult<()> {
        let i = self.inode(ino)?;
        let (mut node_copy, mut data_copy) = match prepared {
            Some(Prepared::Node(id, s)) if !i.upper && i.lower == Some(id) => (Some(s), None),
            Some(Prepared::Data(d, s)) if i.upper => (None, Some((d, s))),
            _ => (None, None),
        };
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
            let node = i.lower.and_then(|id| self.tree().node(id));
            let own = match (mode, node_copy.take(), node) {
                (CopyMode::Full, Some(staged), _) => Some(Ok(staged)),
                (CopyMode::Full, None, Some(n)) => self.private_node(&n),
                _ => None,
            };
            match own {
                Some(staged) => self.place_inode(ino, staged.map_err(errno)?)?,
                None => self.copy_inode(ino, mode)?,
            }
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
                let staged = match data_copy.take() {
                    Some((d, staged)) if d == data => Some(staged),
                    _ => self.private_data(&data),
                };
                match staged {
                    Some(staged) => staged.complete(&dir, name),
                    None => complete_data(&self.upper, self.tree(), &dir, name, &data),
                }
                .map_err(errno)?;
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
        let Some(&top) = chain.last() else {
            return Ok(());
        };
        // Down the chain from one descriptor: each copy opens the next directory beneath the
        // last, so a chain of any depth costs its length, not its square.
        let mut pdir = self.upper_dir(&self.path_of(self.inode(top)?.parent)?)?;
        for ino in chain.into_iter().rev() {
            self.copy_inode_in(ino, &pdir, CopyMode::Full)?;
            let name = self.inode(ino)?.name;
            pdir = Arc::new(
                pdir.open_beneath(std::path::Path::new(&name))
                    .map_err(errno)?,
            );
        }
        Ok(())
    }

    /// Copies one inode (its parent already upper) from the lower node it continues.
    pub(super) fn copy_inode(&self, ino: Ino, mode: CopyMode) -> OpResult<()> {
        let i = self.inode(ino)?;
        let pdir = self.upper_dir(&self.path_of(i.parent)?)?;
        self.copy_inode_in(ino, &pdir, mode)
    }

    /// Copies one inode into `pdir`, its parent's upper directory.
    fn copy_inode_in(&self, ino: Ino, pdir: &DirFd, mode: CopyMode) -> OpResult<()> {
        let i = self.inode(ino)?;
        let tree = self.tree();
        let node = i.lower.and_then(|id| tree.node(id)).ok_or_else(|| {
            log::error!("inode {ino} has neither an upper nor a lower entry");
            Errno::EIO
        })?;
        copy_node(&self.upper, tree, pdir, &i.name, &node, mode).map_err(errno)?;
        self.write_inodes()?.set_upper(ino);
        Ok(())
    }

    /// Renames a copy staged ahead into place as the inode's upper entry (its parent already
    /// upper) and marks it upper.
    fn place_inode(&self, ino: Ino, staged: Staged<'_>) -> OpResult<()> {
        let i = self.inode(ino)?;
        let pdir = self.upper_dir(&self.path_of(i.parent)?)?;
        staged.place(&pdir, &i.name).map_err(errno)?;
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
