//! Finding things in the writable view: a name in a merged directory, an inode's path and
//! upper entry, and the answers that need nothing more (lookup, getattr, readlink).
//!
//! A name resolves by overlayfs's rule: the upper directory first (a whiteout hides, an
//! opaque directory cuts the lower off, a redirect points a renamed directory at its lower
//! origin), then the lower tree.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use nix::errno::Errno;

use super::inodes::{Child, Inode};
use super::{Cow, errno, join, stat_attr};
use crate::merge::{self, Found};
use crate::sys::DirFd;
use crate::tree::LowerTree;
use crate::tree::node::{NodeId, NodeKind};
use crate::upper::{Role, UpperEntry};
use crate::view::{Attr, Fh, Ino, MAX_NAME_LEN, OpResult};

impl Cow {
    /// A copy of what the table knows of `ino`.
    pub(super) fn inode(&self, ino: Ino) -> OpResult<Inode> {
        self.read_inodes()?.get(ino).cloned().ok_or_else(|| {
            log::error!("request for unknown inode {ino}");
            Errno::EIO
        })
    }

    /// The merged path of an inode, components joined by `/` (empty for the root).
    pub(super) fn path_of(&self, ino: Ino) -> OpResult<Vec<u8>> {
        self.read_inodes()?.path_of(ino)
    }

    /// The upper directory at a merged path.
    pub(super) fn upper_dir(&self, path: &[u8]) -> OpResult<Arc<DirFd>> {
        self.upper.dir(path).map_err(errno)
    }

    /// The upper directory holding `path`'s entry, and the entry's name (`None` for the root).
    pub(super) fn split<'p>(&self, path: &'p [u8]) -> OpResult<(Arc<DirFd>, Option<&'p OsStr>)> {
        match path.iter().rposition(|&b| b == b'/') {
            _ if path.is_empty() => Ok((self.upper_dir(b"")?, None)),
            Some(i) => Ok((
                self.upper_dir(&path[..i])?,
                Some(OsStr::from_bytes(&path[i + 1..])),
            )),
            None => Ok((self.upper_dir(b"")?, Some(OsStr::from_bytes(path)))),
        }
    }

    /// The directory inode `parent` and its path, for an operation on `name` in it.
    pub(super) fn dir_for(&self, parent: Ino, name: &[u8]) -> OpResult<(Inode, Vec<u8>)> {
        let p = self.dir_inode(parent, name)?;
        let ppath = self.path_of(parent)?;
        Ok((p, ppath))
    }

    /// The directory inode `parent`, for an operation on `name` in it.
    fn dir_inode(&self, parent: Ino, name: &[u8]) -> OpResult<Inode> {
        let p = self.inode(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > MAX_NAME_LEN as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        Ok(p)
    }

    /// The merged path of `ino` if it has an upper entry (the only use of its path), else
    /// empty: building it costs the inode's depth.
    fn upper_path_of(&self, ino: Ino, i: &Inode) -> OpResult<Vec<u8>> {
        match i.upper {
            true => self.path_of(ino),
            false => Ok(Vec::new()),
        }
    }

    /// The lower entry named `name` in `parent`'s lower directory.
    pub(super) fn lower_child(&self, parent: &Inode, name: &OsStr) -> Option<NodeId> {
        parent
            .lower
            .and_then(|pl| self.tree().lookup(pl, name.as_bytes()))
    }

    /// Resolves `name` in the directory inode `parent` (at `ppath`), by the merge rule.
    pub(super) fn resolve_child(
        &self,
        parent: &Inode,
        ppath: &[u8],
        name: &OsStr,
    ) -> OpResult<Option<Child>> {
        let dir = match parent.upper {
            true => Some(self.upper_dir(ppath)?),
            false => None,
        };
        self.resolve_child_in(parent, dir.as_deref(), name)
    }

    /// [`Cow::resolve_child`] with the parent's upper directory already open (`None` when
    /// the parent has no upper entry).
    pub(super) fn resolve_child_in(
        &self,
        parent: &Inode,
        dir: Option<&DirFd>,
        name: &OsStr,
    ) -> OpResult<Option<Child>> {
        let tree = self.tree();
        let up = match dir {
            Some(d) if parent.upper => self.upper.classify(d, name).map_err(errno)?,
            _ => UpperEntry::Absent,
        };
        let whiteout = Role::Whiteout;
        let (role, stat) = match &up {
            UpperEntry::Absent => (None, None),
            UpperEntry::Whiteout { .. } => (Some(&whiteout), None),
            UpperEntry::Entry {
                role,
                mode,
                ino,
                nlink,
            } => (Some(role), Some((*mode & libc::S_IFMT, *ino, *nlink))),
        };
        let type_of = |id: NodeId| tree.node(id).map(|n| n.kind.file_type_bits());
        Ok(
            match merge::child(tree, parent.lower, name.as_bytes(), role) {
                Found::Nothing => None,
                Found::Lower(id) => type_of(id).map(|ft| Child {
                    lower: Some(id),
                    upper: false,
                    linked: None,
                    file_type: ft,
                }),
                Found::Upper { lower } => {
                    let (ft, ino, nlink) = stat.ok_or(Errno::EIO)?;
                    // A non-directory copied up whole still is the lower entry of its name and
                    // type, for its inode number and its hard links.
                    let lower = match ft == libc::S_IFDIR {
                        true => lower,
                        false => lower.or_else(|| {
                            self.lower_child(parent, name)
                                .filter(|&id| type_of(id) == Some(ft))
                        }),
                    };
                    Some(Child {
                        lower,
                        upper: true,
                        linked: (ft != libc::S_IFDIR && nlink > 1).then_some(ino),
                        file_type: ft,
                    })
                }
            },
        )
    }

    /// Registers (or refreshes) the inode at `(parent, name)` and counts a lookup if asked.
    pub(super) fn register(
        &self,
        parent: Ino,
        name: &OsStr,
        c: &Child,
        count: bool,
    ) -> OpResult<Ino> {
        Ok(self.write_inodes()?.register(parent, name, c, count))
    }

    /// The merged child at a path, resolved from the root.
    pub(super) fn merged_child_at(&self, path: &[u8]) -> OpResult<Option<Child>> {
        let mut cur = self.inode(Ino::ROOT)?;
        let mut cur_path: Vec<u8> = Vec::new();
        let mut last = None;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let name = OsStr::from_bytes(comp);
            let Some(c) = self.resolve_child(&cur, &cur_path, name)? else {
                return Ok(None);
            };
            cur = Inode::at(Ino(0), name, &c);
            cur_path = join(&cur_path, name);
            last = Some(c);
        }
        Ok(last)
    }

    /// Attributes of an inode from its current state.
    pub(super) fn attr(&self, ino: Ino, i: &Inode, path: &[u8]) -> OpResult<Attr> {
        if i.upper {
            let (dir, name) = self.split(path)?;
            let st = match name {
                Some(n) => dir.stat(Some(n)),
                None => dir.stat(None),
            }
            .map_err(errno)?;
            let mut a = stat_attr(ino, &st);
            if let Some((uid, gid, mode)) = self.upper.owner_override(&dir, name) {
                (a.uid, a.gid, a.mode) = (uid, gid, (a.mode & libc::S_IFMT) | mode);
            }
            if i.is_dir() && i.lower.is_some() {
                // A merged directory's subdirectories are spread over layers: count them in
                // the merged view, so its link count is what the image alone would give.
                a.nlink = self.cached_nlink(ino)?;
            }
            return Ok(a);
        }
        match i.lower {
            Some(id) => self.lower.lower_attr(id, ino),
            None if ino == Ino::ROOT => self.lower.lower_attr(LowerTree::ROOT, ino),
            None => Err(Errno::ENOENT),
        }
    }

    /// Looks `name` up in `parent`.
    pub(super) fn lookup(&self, parent: Ino, name: &[u8]) -> OpResult<Attr> {
        if let Some(found) = self.lookup_in_lower(parent, name)? {
            return Ok(found);
        }
        let name_os = OsStr::from_bytes(name);
        let c = self.stable(|| {
            let p = self.dir_inode(parent, name)?;
            self.resolve_child(&p, &self.upper_path_of(parent, &p)?, name_os)
        })?;
        // Registered by the parent's inode and the name, which a rename of the parent (or of
        // a directory above it) since then leaves right.
        let ino = self.register(parent, name_os, &c.ok_or(Errno::ENOENT)?, true)?;
        self.stable(|| {
            let i = self.inode(ino)?;
            self.attr(ino, &i, &self.upper_path_of(ino, &i)?)
        })
    }

    /// A lookup in a directory with no upper entry, which the lower tree alone answers
    /// (nearly every lookup of a walk): no upper path, and one hold of the table lock for
    /// the parent and the child. `None` for every other directory. The table changes a
    /// directory's `upper` before anything under it changes in the view, so a directory
    /// without it still shows its lower children.
    fn lookup_in_lower(&self, parent: Ino, name: &[u8]) -> OpResult<Option<Attr>> {
        let mut t = self.write_inodes()?;
        let Some(p) = t.get(parent) else {
            return Ok(None);
        };
        let Some(pl) = p.lower.filter(|_| !p.upper && !p.unlinked) else {
            return Ok(None);
        };
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > MAX_NAME_LEN as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        let tree = self.tree();
        let found = tree
            .lookup(pl, name)
            .and_then(|id| Some((id, tree.node(id)?.kind.file_type_bits())));
        let (id, file_type) = found.ok_or(Errno::ENOENT)?;
        let c = Child {
            lower: Some(id),
            upper: false,
            linked: None,
            file_type,
        };
        let ino = t.register(parent, OsStr::from_bytes(name), &c, true);
        drop(t);
        self.lower.lower_attr(id, ino).map(Some)
    }

    /// Drops `n` kernel references; a deleted inode with none left is forgotten.
    pub(super) fn forget(&self, ino: Ino, n: u64) {
        if let Ok(mut st) = self.inodes.write() {
            st.forget(ino, n);
        }
    }

    /// Attributes of an inode.
    pub(super) fn getattr(&self, ino: Ino, fh: Option<Fh>) -> OpResult<Attr> {
        // An open upper file answers for itself, whatever became of its names.
        if let Some(f) = fh.and_then(|h| self.handle_file(h)) {
            let m = f.metadata().map_err(errno)?;
            return Ok(meta_attr(ino, &m));
        }
        self.stable(|| {
            let i = self.inode(ino)?;
            if i.unlinked {
                // Only open descriptors still reach it: it answers as its entry was when it
                // went, or as the lower node it still is.
                if let Some(last) = &i.last {
                    // The file itself while it can be reached: writes through open
                    // descriptors still change it.
                    if let Some(m) = last.file.as_ref().and_then(|f| f.metadata().ok()) {
                        return Ok(meta_attr(ino, &m));
                    }
                    return Ok(Attr { ino, ..last.attr });
                }
                let id = i.lower.ok_or(Errno::ESTALE)?;
                return Ok(Attr {
                    nlink: 0,
                    ..self.lower.lower_attr(id, ino)?
                });
            }
            self.attr(ino, &i, &self.upper_path_of(ino, &i)?)
        })
    }

    /// Target of a symlink.
    pub(super) fn readlink(&self, ino: Ino) -> OpResult<Vec<u8>> {
        self.stable(|| self.readlink_now(ino))
    }

    fn readlink_now(&self, ino: Ino) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if i.file_type != libc::S_IFLNK {
            return Err(Errno::EINVAL);
        }
        if i.upper {
            let path = self.path_of(ino)?;
            let (dir, name) = self.split(&path)?;
            let name = name.ok_or(Errno::EINVAL)?;
            return dir
                .readlink(name)
                .map(|t| t.as_bytes().to_vec())
                .map_err(errno);
        }
        let id = i.lower.ok_or(Errno::EIO)?;
        match &self.tree().node(id).ok_or(Errno::EIO)?.kind {
            NodeKind::Symlink(t) => Ok(t.to_vec()),
            _ => Err(Errno::EINVAL),
        }
    }
}

/// Attributes of an open file, from its descriptor.
pub(super) fn meta_attr(ino: Ino, m: &std::fs::Metadata) -> Attr {
    use std::os::unix::fs::MetadataExt;
    Attr {
        ino,
        mode: m.mode(),
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        size: m.size(),
        blocks: m.blocks(),
        rdev: m.rdev(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec() as u32,
        atime: m.atime(),
        atime_nsec: m.atime_nsec() as u32,
        ctime: m.ctime(),
        ctime_nsec: m.ctime_nsec() as u32,
    }
}
