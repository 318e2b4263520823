//! The writable view: the lower tree with an upper layer on top (copy-on-write).
//!
//! Every inode the kernel knows has an entry in the inode table: where it is in the merged
//! namespace (parent and name), whether it has an upper entry, and which lower node it
//! continues (its data and attributes until copied up, the lower directory merged under an
//! upper directory). A lower node keeps its inode number (`NodeId + 1`) through copy-up and
//! renames; entries born in the upper get numbers from a counter that is never reused.
//!
//! The merged view of a name is computed from the upper directory (a whiteout hides, an
//! opaque directory cuts the lower off, a redirect points a renamed directory at its lower
//! origin) and then the lower tree, as kernel overlayfs does.
//!
//! Locking, in this order: `ns` (one mutex for every change to the namespace or the upper
//! directory, copy-up included, so those never race), then `inodes` (a short-held RwLock),
//! then `handles`. Reads and writes on open files take only `handles`, briefly, and then do
//! their I/O on an `Arc<File>` without any lock.
//! Dependencies: overlay (the lower view), upper, sys, tree.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex, RwLock};

use nix::errno::Errno;

use crate::overlay::{
    Attr, DirListing, OpResult, Overlay, PROVENANCE_XATTR, StatFs, ino_of, io_errno,
};
use crate::sys::{DirFd, FileStat};
use crate::tree::node::{NodeId, NodeKind};
use crate::upper::copy_up::{CopyMode, complete_data, copy_node, copy_up};
use crate::upper::{Upper, UpperEntry, is_private_xattr, remove_tree};

/// The root's inode number, as FUSE requires.
const ROOT: u64 = 1;
/// Deepest directory nesting walked when building a path.
const MAX_DEPTH: usize = 4096;

/// What the inode table knows of one inode.
#[derive(Clone, Debug)]
struct Inode {
    /// Where it is: parent inode and name (the root is its own parent, with an empty name).
    parent: u64,
    name: OsString,
    /// The lower node it continues: its data and attributes until copied up; for a directory,
    /// the lower directory merged under it (`None` when opaque or born in the upper).
    lower: Option<NodeId>,
    /// It has an entry in the upper directory.
    upper: bool,
    /// `S_IFMT` bits.
    file_type: u32,
    /// Kernel references (lookups minus forgets).
    lookups: u64,
    /// Names in the merged view known to lead here (several for a hard link).
    names: u32,
    /// No name leads here any more: the inode lives on only through open files.
    unlinked: bool,
}

#[derive(Debug, Default)]
struct Inodes {
    map: HashMap<u64, Inode>,
    at: HashMap<(u64, OsString), u64>,
    /// Upper inode number of a hard-linked upper file → its inode here, so every name of it
    /// answers one inode, across mounts too.
    by_upper: HashMap<u64, u64>,
    next: u64,
}

impl Inodes {
    /// Makes `key` (parent, name) lead to `ino`; an inode it led to before loses that name.
    fn bind(&mut self, key: (u64, OsString), ino: u64) {
        match self.at.insert(key.clone(), ino) {
            Some(old) if old == ino => return,
            Some(old) => self.lose_name(old, &key),
            None => {}
        }
        if let Some(i) = self.map.get_mut(&ino) {
            i.names += 1;
            if i.unlinked {
                i.unlinked = false;
                (i.parent, i.name) = key;
            }
        }
    }

    /// Removes the name `key`: the inode it led to moves to another of its names, or is
    /// unlinked when it has none left.
    fn unbind(&mut self, key: &(u64, OsString)) {
        if let Some(ino) = self.at.remove(key) {
            self.lose_name(ino, key);
        }
    }

    fn lose_name(&mut self, ino: u64, key: &(u64, OsString)) {
        let Some(i) = self.map.get_mut(&ino) else {
            return;
        };
        i.names = i.names.saturating_sub(1);
        if (i.parent, &i.name) != (key.0, &key.1) {
            return;
        }
        if i.names == 0 {
            i.unlinked = true;
            return;
        }
        // A hard link with other names: rare, so a scan is fine.
        let other = self
            .at
            .iter()
            .find(|(_, v)| **v == ino)
            .map(|(k, _)| k.clone());
        if let (Some((p, n)), Some(i)) = (other, self.map.get_mut(&ino)) {
            i.parent = p;
            i.name = n;
        }
    }
}

/// An open file or directory.
enum Handle {
    /// A file of the upper layer.
    File(Arc<File>),
    /// A directory listing taken at opendir, so offsets stay valid while it changes.
    Dir(Arc<Vec<(OsString, u64, u32)>>),
}

/// The merged child of a directory.
#[derive(Clone, Debug)]
struct Child {
    lower: Option<NodeId>,
    upper: Option<UpperEntry>,
    file_type: u32,
}

/// The writable filesystem.
pub struct Cow {
    ov: Overlay,
    upper: Upper,
    ns: Mutex<()>,
    inodes: RwLock<Inodes>,
    handles: Mutex<(u64, HashMap<u64, Handle>)>,
    /// Link counts of merged directories, computed once (a full listing) and dropped when a
    /// subdirectory comes or goes; creating files leaves them valid.
    dir_nlink: Mutex<HashMap<u64, u32>>,
}

/// Who asks: the caller's ids, for the owner of what it creates.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

fn errno(e: std::io::Error) -> Errno {
    io_errno(&e, "upper layer")
}

fn stat_attr(ino: u64, st: &FileStat) -> Attr {
    Attr {
        ino,
        mode: st.st_mode,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        rdev: st.st_rdev,
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
    }
}

fn meta_attr(ino: u64, m: &std::fs::Metadata) -> Attr {
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
    }
}

fn lock<T>(m: &Mutex<T>) -> OpResult<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| {
        log::error!("a lock was poisoned");
        Errno::EIO
    })
}

impl Cow {
    /// A writable view of `ov` with `upper` on top.
    pub fn new(ov: Overlay, upper: Upper) -> Cow {
        let mut inodes = Inodes {
            next: ov.tree().len() as u64 + 1,
            ..Default::default()
        };
        let root_upper = true;
        inodes.map.insert(
            ROOT,
            Inode {
                parent: ROOT,
                name: OsString::new(),
                lower: None,
                upper: root_upper,
                file_type: libc::S_IFDIR,
                lookups: 1,
                names: 0,
                unlinked: false,
            },
        );
        let cow = Cow {
            ov,
            upper,
            ns: Mutex::new(()),
            inodes: RwLock::new(inodes),
            handles: Mutex::new((1, HashMap::new())),
            dir_nlink: Mutex::new(HashMap::new()),
        };
        // A fresh upper root takes the image root's attributes, so the mount (and kernel
        // overlayfs over the same upper) shows the image's root as it is.
        if let Some(root) = cow.ov.tree().node(crate::tree::LowerTree::ROOT) {
            if let Err(e) = cow.upper.adopt_root(&root.meta, &root.xattrs) {
                log::warn!("upper root: {e}");
            }
        }
        // The root merges the lower root unless the upper root is opaque.
        let opaque = cow
            .upper
            .dir(b"")
            .ok()
            .and_then(|d| cow.upper.classify_self_opaque(&d).ok())
            .unwrap_or(false);
        if let Ok(mut st) = cow.inodes.write() {
            if let Some(r) = st.map.get_mut(&ROOT) {
                r.lower = (!opaque).then_some(crate::tree::LowerTree::ROOT);
            }
        }
        cow
    }

    /// The lower view.
    pub fn lower(&self) -> &Overlay {
        &self.ov
    }

    fn inode(&self, ino: u64) -> OpResult<Inode> {
        let st = self.inodes.read().map_err(|_| Errno::EIO)?;
        st.map.get(&ino).cloned().ok_or_else(|| {
            log::error!("request for unknown inode {ino}");
            Errno::EIO
        })
    }

    /// The merged path of an inode, components joined by `/` (empty for the root).
    fn path_of(&self, ino: u64) -> OpResult<Vec<u8>> {
        let st = self.inodes.read().map_err(|_| Errno::EIO)?;
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != ROOT {
            let i = st.map.get(&cur).ok_or(Errno::ESTALE)?;
            if i.unlinked {
                return Err(Errno::ESTALE);
            }
            names.push(&i.name);
            cur = i.parent;
            if names.len() > MAX_DEPTH {
                log::error!("inode {ino}: parent chain too deep");
                return Err(Errno::EIO);
            }
        }
        let mut p = Vec::new();
        for n in names.iter().rev() {
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(n.as_bytes());
        }
        Ok(p)
    }

    fn upper_dir(&self, path: &[u8]) -> OpResult<DirFd> {
        self.upper.dir(path).map_err(errno)
    }

    /// Resolves `name` in the directory inode `parent` (at `ppath`).
    fn resolve_child(&self, parent: &Inode, ppath: &[u8], name: &OsStr) -> OpResult<Option<Child>> {
        let tree = self.ov.tree();
        let up = if parent.upper {
            let d = self.upper_dir(ppath)?;
            self.upper.classify(&d, name).map_err(errno)?
        } else {
            UpperEntry::Absent
        };
        let lower_child = parent.lower.and_then(|pl| tree.lookup(pl, name.as_bytes()));
        let lower_type = |id: NodeId| tree.node(id).map(|n| n.kind.file_type_bits());
        Ok(match up {
            UpperEntry::Whiteout => None,
            UpperEntry::Dir { opaque, redirect } => {
                let lower = if opaque {
                    None
                } else if let Some(r) = redirect {
                    if r.starts_with(b"/") {
                        tree.resolve(&r)
                    } else {
                        parent.lower.and_then(|pl| tree.lookup(pl, &r))
                    }
                } else {
                    lower_child
                };
                let lower = lower.filter(|&id| lower_type(id) == Some(libc::S_IFDIR));
                Some(Child {
                    lower,
                    upper: Some(UpperEntry::Dir {
                        opaque,
                        redirect: None,
                    }),
                    file_type: libc::S_IFDIR,
                })
            }
            UpperEntry::Other { mode, .. } => {
                let ft = mode & libc::S_IFMT;
                let lower = lower_child.filter(|&id| lower_type(id) == Some(ft));
                Some(Child {
                    lower,
                    upper: Some(up),
                    file_type: ft,
                })
            }
            UpperEntry::Absent => lower_child.and_then(|id| {
                lower_type(id).map(|ft| Child {
                    lower: Some(id),
                    upper: None,
                    file_type: ft,
                })
            }),
        })
    }

    /// Registers (or refreshes) the inode at `(parent, name)` and counts a lookup if asked.
    fn register(&self, parent: u64, name: &OsStr, c: &Child, count: bool) -> OpResult<u64> {
        let mut st = self.inodes.write().map_err(|_| Errno::EIO)?;
        let key = (parent, name.to_os_string());
        let linked = match &c.upper {
            Some(UpperEntry::Other {
                ino: uino, nlink, ..
            }) if *nlink > 1 => Some(*uino),
            _ => None,
        };
        let known = st.at.get(&key).copied();
        let ino = match known {
            Some(ino) => ino,
            None => {
                let by_upper = linked
                    .and_then(|u| st.by_upper.get(&u).copied())
                    .filter(|i| st.map.contains_key(i));
                let by_lower = c.lower.map(ino_of).filter(|i| !st.map.contains_key(i));
                // A lower hard link seen under a second name shares the inode.
                let shared = c.lower.map(ino_of).filter(|i| {
                    c.file_type != libc::S_IFDIR
                        && st.map.get(i).is_some_and(|n| n.lower == c.lower)
                });
                match by_upper.or(by_lower).or(shared) {
                    Some(i) => i,
                    None => {
                        st.next += 1;
                        st.next - 1
                    }
                }
            }
        };
        let entry = st.map.entry(ino).or_insert_with(|| Inode {
            parent,
            name: name.to_os_string(),
            lower: c.lower,
            upper: c.upper.is_some(),
            file_type: c.file_type,
            lookups: 0,
            names: 0,
            unlinked: false,
        });
        entry.upper = c.upper.is_some();
        entry.lower = c.lower;
        entry.file_type = c.file_type;
        if count {
            entry.lookups += 1;
        }
        if known.is_none() {
            st.bind(key, ino);
        }
        if let Some(u) = linked {
            st.by_upper.insert(u, ino);
        }
        Ok(ino)
    }

    /// Attributes of an inode from its current state.
    fn attr(&self, ino: u64, i: &Inode, path: &[u8]) -> OpResult<Attr> {
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
            if i.file_type == libc::S_IFDIR && i.lower.is_some() {
                // A merged directory's subdirectories are spread over layers: count them in
                // the merged view, so its link count is what the image alone would give.
                a.nlink = self.cached_nlink(ino)?;
            }
            return Ok(a);
        }
        match i.lower {
            Some(id) => self.ov.lower_attr(id, ino),
            None if ino == ROOT => self.ov.lower_attr(crate::tree::LowerTree::ROOT, ino),
            None => Err(Errno::ENOENT),
        }
    }

    /// The upper directory holding `path`'s entry, and the entry's name (`None` for the root).
    fn split<'p>(&self, path: &'p [u8]) -> OpResult<(DirFd, Option<&'p OsStr>)> {
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
    fn dir_for(&self, parent: u64, name: &[u8]) -> OpResult<(Inode, Vec<u8>)> {
        let p = self.inode(parent)?;
        if p.file_type != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > crate::overlay::MAX_NAME_LEN as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        let ppath = self.path_of(parent)?;
        Ok((p, ppath))
    }

    /// Looks `name` up in `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> OpResult<Attr> {
        let (p, ppath) = self.dir_for(parent, name)?;
        let name = OsStr::from_bytes(name);
        let c = self.resolve_child(&p, &ppath, name)?.ok_or(Errno::ENOENT)?;
        let ino = self.register(parent, name, &c, true)?;
        let i = self.inode(ino)?;
        self.attr(ino, &i, &join(&ppath, name))
    }

    /// Drops `n` kernel references; a deleted inode with none left is forgotten.
    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        if let Ok(mut st) = self.inodes.write() {
            let gone = match st.map.get_mut(&ino) {
                Some(i) => {
                    i.lookups = i.lookups.saturating_sub(n);
                    i.lookups == 0
                }
                None => false,
            };
            if gone {
                let located = st.map.get(&ino).map(|i| (i.parent, i.name.clone()));
                let still_named = located.as_ref().is_some_and(|k| st.at.get(k) == Some(&ino));
                if !still_named {
                    st.map.remove(&ino);
                }
            }
        }
    }

    /// Attributes of an inode.
    pub fn getattr(&self, ino: u64, fh: Option<u64>) -> OpResult<Attr> {
        // An open upper file answers for itself, whatever became of its names.
        if let Some(f) = fh.and_then(|h| self.handle_file(h)) {
            let m = f.metadata().map_err(errno)?;
            return Ok(meta_attr(ino, &m));
        }
        let i = self.inode(ino)?;
        if i.unlinked {
            // Only open descriptors still reach it: a lower file no name shows any more.
            let id = i.lower.ok_or(Errno::ESTALE)?;
            return Ok(Attr {
                nlink: 0,
                ..self.ov.lower_attr(id, ino)?
            });
        }
        let path = self.path_of(ino)?;
        self.attr(ino, &i, &path)
    }

    /// Target of a symlink.
    pub fn readlink(&self, ino: u64) -> OpResult<Vec<u8>> {
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
        match &self.ov.tree().node(id).ok_or(Errno::EIO)?.kind {
            NodeKind::Symlink(t) => Ok(t.to_vec()),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Copies an inode up (data too unless `mode` is `MetaOnly`) and marks it upper.
    fn ensure_upper(&self, ino: u64, mode: CopyMode) -> OpResult<()> {
        let i = self.inode(ino)?;
        let path = self.path_of(ino)?;
        if !i.upper {
            // Parents first: each parent inode becomes upper too.
            self.mark_parents_upper(i.parent)?;
            let tree = self.ov.tree();
            let linked = i
                .lower
                .and_then(|id| tree.node(id))
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
            if let UpperEntry::Other { metacopy: true, .. } =
                self.upper.classify(&dir, name).map_err(errno)?
            {
                let data = self.lower_data(&i)?;
                complete_data(&self.upper, self.ov.tree(), &dir, name, &data).map_err(errno)?;
            }
        }
        Ok(())
    }

    /// After the copy-up of lower node `id` at `done`, gives every other name of it that the
    /// merged view still shows a hard link to the upper copy.
    fn link_other_names(&self, id: NodeId, done: &[u8]) -> OpResult<()> {
        let (sdir, sname) = self.split(done)?;
        let sname = sname.ok_or(Errno::EIO)?.to_os_string();
        for other in self.ov.tree().paths_of(id) {
            if other == done {
                continue;
            }
            let still_lower = self
                .merged_child_at(&other)?
                .is_some_and(|c| c.upper.is_none() && c.lower == Some(id));
            if !still_lower {
                continue;
            }
            let (parent, name) = match other.iter().rposition(|&b| b == b'/') {
                Some(k) => (&other[..k], &other[k + 1..]),
                None => (&b""[..], &other[..]),
            };
            if !parent.is_empty() {
                copy_up(&self.upper, self.ov.tree(), parent, CopyMode::Full).map_err(errno)?;
            }
            self.mark_path_upper(parent)?;
            let pdir = self.upper_dir(parent)?;
            let times = pdir.stat(None).map_err(errno)?;
            pdir.link(&sdir, &sname, OsStr::from_bytes(name))
                .map_err(errno)?;
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

    /// The merged child at a path, resolved from the root.
    fn merged_child_at(&self, path: &[u8]) -> OpResult<Option<Child>> {
        let mut cur = self.inode(ROOT)?;
        let mut cur_path: Vec<u8> = Vec::new();
        let mut last = None;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let name = OsStr::from_bytes(comp);
            let Some(c) = self.resolve_child(&cur, &cur_path, name)? else {
                return Ok(None);
            };
            cur = Inode {
                parent: 0,
                name: name.to_os_string(),
                lower: c.lower,
                upper: c.upper.is_some(),
                file_type: c.file_type,
                lookups: 0,
                names: 0,
                unlinked: false,
            };
            cur_path = join(&cur_path, name);
            last = Some(c);
        }
        Ok(last)
    }

    /// Marks the known inodes along `path` (directories just copied up) as upper.
    fn mark_path_upper(&self, path: &[u8]) -> OpResult<()> {
        let mut st = self.inodes.write().map_err(|_| Errno::EIO)?;
        let mut cur = ROOT;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let Some(&next) = st.at.get(&(cur, OsStr::from_bytes(comp).to_os_string())) else {
                break;
            };
            if let Some(n) = st.map.get_mut(&next) {
                n.upper = true;
            }
            cur = next;
        }
        Ok(())
    }

    fn lower_data(&self, i: &Inode) -> OpResult<crate::tree::node::DataRef> {
        let id = i.lower.ok_or(Errno::EIO)?;
        match self.ov.tree().node(id).map(|n| &n.kind) {
            Some(NodeKind::File(d)) => Ok(*d),
            _ => Err(Errno::EIO),
        }
    }

    fn mark_parents_upper(&self, mut ino: u64) -> OpResult<()> {
        let mut chain = Vec::new();
        while ino != ROOT {
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

    /// Copies one inode (its parent already upper) from the lower node it continues, which is
    /// not necessarily the lower entry at its merged path (below a renamed directory, say).
    fn copy_inode(&self, ino: u64, mode: CopyMode) -> OpResult<()> {
        let i = self.inode(ino)?;
        let tree = self.ov.tree();
        let node = i.lower.and_then(|id| tree.node(id)).ok_or_else(|| {
            log::error!("inode {ino} has neither an upper nor a lower entry");
            Errno::EIO
        })?;
        let pdir = self.upper_dir(&self.path_of(i.parent)?)?;
        copy_node(&self.upper, tree, &pdir, &i.name, node, mode).map_err(errno)?;
        self.set_upper(ino, true)
    }

    fn set_upper(&self, ino: u64, upper: bool) -> OpResult<()> {
        let mut st = self.inodes.write().map_err(|_| Errno::EIO)?;
        if let Some(i) = st.map.get_mut(&ino) {
            i.upper = upper;
        }
        Ok(())
    }

    /// Opens a file; writing (or truncating) copies it up first.
    pub fn open(&self, ino: u64, flags: i32, who: Caller) -> OpResult<u64> {
        let i = self.inode(ino)?;
        if i.file_type == libc::S_IFDIR {
            return Err(Errno::EISDIR);
        }
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if i.unlinked {
            // Reopened through /proc after its last name went: a lower file can no longer be
            // copied up (EEXIST, as kernel overlayfs answers); read-only opens still read it.
            return match (writing, i.upper, i.lower) {
                (false, _, Some(_)) if !i.upper => Ok(0),
                (true, false, _) => Err(Errno::EEXIST),
                _ => Err(Errno::ESTALE),
            };
        }
        // The namespace lock is held until the upper file is open, so an unlink or rename
        // in between cannot leave the path naming a whiteout or another file.
        let _ns = lock(&self.ns)?;
        if writing {
            self.ensure_upper(ino, CopyMode::Full)?;
        } else if !i.upper || self.is_metacopy(ino)? {
            // Read from the lower layer by inode (fh 0): reads follow the inode if it is
            // copied up later, so this descriptor keeps seeing one file.
            return Ok(0);
        }
        let path = self.path_of(ino)?;
        let (dir, name) = self.split(&path)?;
        let name = name.ok_or(Errno::EISDIR)?;
        let keep = flags & (libc::O_ACCMODE | libc::O_TRUNC | libc::O_APPEND);
        // O_NONBLOCK: opening a fifo or device here must never wait or reach a driver.
        let f = dir
            .open_file(name, (keep & !libc::O_APPEND) | libc::O_NONBLOCK, 0)
            .map_err(errno)?;
        if flags & libc::O_TRUNC != 0 && who.uid != 0 {
            kill_privs(&f)?;
        }
        self.new_handle(Handle::File(Arc::new(f)))
    }

    /// Whether an open handle may be given to the kernel (passthrough): not for set-id or
    /// capability-carrying files, whose privileges a write by a user must drop, which the
    /// kernel's passthrough write (done with the daemon's rights) would not do.
    pub fn may_pass_through(&self, fh: u64) -> bool {
        self.handle_file(fh).is_some_and(|f| {
            f.metadata().is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.mode() & (libc::S_ISUID | libc::S_ISGID) == 0
            }) && !crate::sys::has_xattr(&f, CAPABILITY_XATTR)
        })
    }

    fn is_metacopy(&self, ino: u64) -> OpResult<bool> {
        let path = self.path_of(ino)?;
        let (dir, name) = self.split(&path)?;
        match name {
            Some(n) => Ok(matches!(
                self.upper.classify(&dir, n).map_err(errno)?,
                UpperEntry::Other { metacopy: true, .. }
            )),
            None => Ok(false),
        }
    }

    fn new_handle(&self, h: Handle) -> OpResult<u64> {
        let mut hs = lock(&self.handles)?;
        let fh = hs.0;
        hs.0 += 1;
        hs.1.insert(fh, h);
        Ok(fh)
    }

    /// The upper file behind an open handle, if it is one.
    pub fn handle_file(&self, fh: u64) -> Option<Arc<File>> {
        self.file_handle(fh).ok().flatten()
    }

    fn file_handle(&self, fh: u64) -> OpResult<Option<Arc<File>>> {
        let hs = lock(&self.handles)?;
        match hs.1.get(&fh) {
            Some(Handle::File(f)) => Ok(Some(f.clone())),
            Some(Handle::Dir(_)) => Err(Errno::EISDIR),
            None => Ok(None),
        }
    }

    /// Closes a handle.
    pub fn release(&self, fh: u64) {
        if let Ok(mut hs) = self.handles.lock() {
            hs.1.remove(&fh);
        }
    }

    /// Reads from an open file (or, for fh 0, from wherever the inode's data is now).
    pub fn read(&self, ino: u64, fh: u64, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        if let Some(f) = self.file_handle(fh)? {
            return pread(&f, offset, size);
        }
        let i = self.inode(ino)?;
        if i.upper && !i.unlinked && !self.is_metacopy(ino)? {
            let path = self.path_of(ino)?;
            let (dir, name) = self.split(&path)?;
            let f = dir
                .open_file(name.ok_or(Errno::EISDIR)?, libc::O_RDONLY, 0)
                .map_err(errno)?;
            return pread(&f, offset, size);
        }
        let data = self.lower_data(&i)?;
        self.ov.read_data(&data, offset, size)
    }

    /// Writes to an open file.
    /// `kill` (the kernel's `FUSE_WRITE_KILL_SUIDGID`): the writer may not keep set-id bits.
    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        append: bool,
        kill: bool,
    ) -> OpResult<u32> {
        let f = self.file_handle(fh)?.ok_or(Errno::EBADF)?;
        if kill {
            kill_privs(&f)?;
        }
        let offset = if append {
            f.metadata().map_err(errno)?.len()
        } else {
            offset
        };
        f.write_all_at(data, offset).map_err(errno)?;
        Ok(data.len() as u32)
    }

    /// Flushes an open file to disk.
    pub fn fsync(&self, fh: u64, datasync: bool) -> OpResult<()> {
        match self.file_handle(fh)? {
            Some(f) if datasync => f.sync_data().map_err(errno),
            Some(f) => f.sync_all().map_err(errno),
            None => Ok(()),
        }
    }

    /// Preallocates or punches space in an open file.
    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> OpResult<()> {
        let f = self.file_handle(fh)?.ok_or(Errno::EBADF)?;
        crate::sys::fallocate(&f, mode, offset, length).map_err(errno)
    }

    /// Changes attributes; a lower entry is copied up first, metadata only when the data
    /// does not change.
    #[allow(clippy::too_many_arguments)]
    pub fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        times: Option<[libc::timespec; 2]>,
        fh: Option<u64>,
        who: Caller,
    ) -> OpResult<Attr> {
        let _ns = lock(&self.ns)?;
        let i = self.inode(ino)?;
        let copy = if size.is_some() || i.file_type != libc::S_IFREG {
            CopyMode::Full
        } else {
            CopyMode::MetaOnly
        };
        self.ensure_upper(ino, copy)?;
        let path = self.path_of(ino)?;
        let (dir, name) = self.split(&path)?;
        let own;
        let (dir, name): (&DirFd, &OsStr) = match name {
            Some(n) => (&dir, n),
            None => {
                own = self.upper_dir(b"")?;
                // The root's own attributes: act on it through its parent-less descriptor.
                return self.setattr_root(&own, mode, uid, gid, times);
            }
        };
        let shown = self.upper.owner_override(dir, Some(name));
        if uid.is_some() || gid.is_some() || (shown.is_some() && mode.is_some()) {
            let st = dir.stat(Some(name)).map_err(errno)?;
            let (cu, cg, cm) = shown.unwrap_or((st.st_uid, st.st_gid, st.st_mode & 0o7777));
            let (u, g, m) = (uid.unwrap_or(cu), gid.unwrap_or(cg), mode.unwrap_or(cm));
            self.upper.set_owner(dir, name, u, g, m).map_err(errno)?;
        }
        if let Some(m) = mode {
            dir.chmod(name, m).map_err(errno)?;
        }
        if let Some(sz) = size {
            let f = match fh.map(|h| self.file_handle(h)).transpose()?.flatten() {
                Some(f) => f,
                None => Arc::new(dir.open_file(name, libc::O_WRONLY, 0).map_err(errno)?),
            };
            f.set_len(sz).map_err(errno)?;
            // Truncation by a user drops set-id bits, as the kernel would for a local file.
            if who.uid != 0 {
                kill_privs(&f)?;
            }
        }
        if let Some(t) = times {
            dir.utimens(name, &t).map_err(errno)?;
        }
        let st = dir.stat(Some(name)).map_err(errno)?;
        Ok(stat_attr(ino, &st))
    }

    fn setattr_root(
        &self,
        root: &DirFd,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        times: Option<[libc::timespec; 2]>,
    ) -> OpResult<Attr> {
        let parent = DirFd::open_root(&self.upper.path.join("..")).map_err(errno)?;
        let name = self.upper.path.file_name().ok_or(Errno::EINVAL)?;
        if uid.is_some() || gid.is_some() {
            parent.chown(name, uid, gid).map_err(errno)?;
        }
        if let Some(m) = mode {
            parent.chmod(name, m).map_err(errno)?;
        }
        if let Some(t) = times {
            root.set_own_times(&t).map_err(errno)?;
        }
        Ok(stat_attr(ROOT, &root.stat(None).map_err(errno)?))
    }

    /// Prepares `parent` for a new entry `name`: the parent copied up, the name free in the
    /// merged view (`EEXIST` otherwise). Returns the parent's upper directory and whether a
    /// lower entry of that name is hidden by a whiteout (a new directory there is opaque).
    fn prepare_new(&self, parent: u64, name: &OsStr) -> OpResult<(DirFd, Vec<u8>, bool)> {
        let (p, ppath) = self.dir_for(parent, name.as_bytes())?;
        if self.resolve_child(&p, &ppath, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        if !p.upper {
            self.ensure_upper(parent, CopyMode::Full)?;
        }
        let dir = self.upper_dir(&ppath)?;
        let hidden_lower = p
            .lower
            .and_then(|pl| self.ov.tree().lookup(pl, name.as_bytes()))
            .is_some();
        Ok((dir, ppath, hidden_lower))
    }

    /// Owner and group of a new entry: the caller's, or the parent's group under setgid.
    fn new_owner(&self, dir: &DirFd, who: Caller) -> OpResult<(u32, u32, bool)> {
        let st = dir.stat(None).map_err(errno)?;
        let sgid = st.st_mode & libc::S_ISGID != 0;
        Ok((who.uid, if sgid { st.st_gid } else { who.gid }, sgid))
    }

    /// Builds a new entry in the work directory with `make`, owns it, and moves it to
    /// `dir/name` (over a whiteout if there is one).
    fn install(
        &self,
        dir: &DirFd,
        name: &OsStr,
        who: Caller,
        opaque: bool,
        make: impl FnOnce(&DirFd, &OsStr) -> std::io::Result<()>,
    ) -> OpResult<()> {
        let work = self.upper.work();
        let tmp = self.upper.temp_name();
        let (uid, gid, sgid) = self.new_owner(dir, who)?;
        let built = (|| {
            make(work, &tmp)?;
            work.chown(&tmp, Some(uid), Some(gid))?;
            let st = work.stat(Some(&tmp))?;
            if sgid && st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                work.chmod(&tmp, (st.st_mode & 0o7777) | libc::S_ISGID)?;
            }
            if opaque {
                self.upper.set_flag(work, &tmp, "opaque", b"y")?;
            }
            Ok(())
        })();
        let moved = built.and_then(|()| {
            match self.upper.classify(dir, name)? {
                UpperEntry::Whiteout if self.upper.format == crate::upper::Format::Kernel => {
                    // Exchange with the whiteout, then drop it: the name never shows empty.
                    work.rename(&tmp, dir, name, libc::RENAME_EXCHANGE)?;
                    work.unlink(&tmp, false)
                }
                UpperEntry::Whiteout => {
                    work.rename(&tmp, dir, name, libc::RENAME_NOREPLACE)?;
                    self.upper.clear_whiteout(dir, name)
                }
                _ => work.rename(&tmp, dir, name, libc::RENAME_NOREPLACE),
            }
        });
        if let Err(e) = moved {
            let _ = remove_tree(work, &tmp);
            return Err(errno(e));
        }
        Ok(())
    }

    fn created(&self, parent: u64, name: &OsStr, ft: u32, dir: &DirFd) -> OpResult<Attr> {
        let c = Child {
            lower: None,
            upper: Some(UpperEntry::Absent),
            file_type: ft,
        };
        {
            // A fresh inode, even where a deleted lower entry had a number.
            let mut st = self.inodes.write().map_err(|_| Errno::EIO)?;
            st.unbind(&(parent, name.to_os_string()));
        }
        let ino = self.register_new(parent, name, &c)?;
        let st = dir.stat(Some(name)).map_err(errno)?;
        Ok(stat_attr(ino, &st))
    }

    fn register_new(&self, parent: u64, name: &OsStr, c: &Child) -> OpResult<u64> {
        let mut st = self.inodes.write().map_err(|_| Errno::EIO)?;
        st.next += 1;
        let ino = st.next - 1;
        st.map.insert(
            ino,
            Inode {
                parent,
                name: name.to_os_string(),
                lower: None,
                upper: true,
                file_type: c.file_type,
                lookups: 1,
                names: 0,
                unlinked: false,
            },
        );
        st.bind((parent, name.to_os_string()), ino);
        Ok(ino)
    }

    /// Creates and opens a regular file.
    pub fn create(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> OpResult<(Attr, u64)> {
        let name = OsStr::from_bytes(name);
        let _ns = lock(&self.ns)?;
        let (dir, _, _) = self.prepare_new(parent, name)?;
        self.install(&dir, name, who, false, |w, tmp| {
            w.open_file(
                tmp,
                libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                mode & 0o7777,
            )
            .map(drop)
        })?;
        let attr = self.created(parent, name, libc::S_IFREG, &dir)?;
        let keep = flags & (libc::O_ACCMODE | libc::O_TRUNC);
        let f = dir.open_file(name, keep, 0).map_err(errno)?;
        Ok((attr, self.new_handle(Handle::File(Arc::new(f)))?))
    }

    /// Creates a directory (opaque where it replaces a deleted lower entry).
    pub fn mkdir(&self, parent: u64, name: &[u8], mode: u32, who: Caller) -> OpResult<Attr> {
        let name = OsStr::from_bytes(name);
        let _ns = lock(&self.ns)?;
        let (dir, _, hidden) = self.prepare_new(parent, name)?;
        self.install(&dir, name, who, hidden, |w, tmp| {
            w.mkdir(tmp, mode & 0o7777)
        })?;
        self.dirs_changed(parent);
        self.created(parent, name, libc::S_IFDIR, &dir)
    }

    /// Creates a device, fifo, socket or regular file node.
    pub fn mknod(
        &self,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u64,
        who: Caller,
    ) -> OpResult<Attr> {
        let name = OsStr::from_bytes(name);
        let _ns = lock(&self.ns)?;
        let (dir, _, _) = self.prepare_new(parent, name)?;
        self.install(&dir, name, who, false, |w, tmp| w.mknod(tmp, mode, rdev))?;
        self.created(parent, name, mode & libc::S_IFMT, &dir)
    }

    /// Creates a symlink.
    pub fn symlink(&self, parent: u64, name: &[u8], target: &[u8], who: Caller) -> OpResult<Attr> {
        let name = OsStr::from_bytes(name);
        let _ns = lock(&self.ns)?;
        let (dir, _, _) = self.prepare_new(parent, name)?;
        self.install(&dir, name, who, false, |w, tmp| {
            w.symlink(OsStr::from_bytes(target), tmp)
        })?;
        self.created(parent, name, libc::S_IFLNK, &dir)
    }

    /// Makes a hard link to `ino` (copied up first) as `newparent/newname`.
    pub fn link(&self, ino: u64, newparent: u64, newname: &[u8], who: Caller) -> OpResult<Attr> {
        let newname = OsStr::from_bytes(newname);
        let _ns = lock(&self.ns)?;
        let i = self.inode(ino)?;
        if i.file_type == libc::S_IFDIR {
            return Err(Errno::EPERM);
        }
        self.ensure_upper(ino, CopyMode::Full)?;
        let src_path = self.path_of(ino)?;
        let (sdir, sname) = self.split(&src_path)?;
        let sname = sname.ok_or(Errno::EPERM)?.to_os_string();
        let (dir, _, _) = self.prepare_new(newparent, newname)?;
        self.install(&dir, newname, who, false, |w, tmp| {
            w.link(&sdir, &sname, tmp)
        })?;
        let ust = dir.stat(Some(newname)).map_err(errno)?;
        {
            let mut st = self.inodes.write().map_err(|_| Errno::EIO)?;
            st.bind((newparent, newname.to_os_string()), ino);
            st.by_upper.insert(ust.st_ino, ino);
            if let Some(n) = st.map.get_mut(&ino) {
                n.lookups += 1;
            }
        }
        Ok(stat_attr(ino, &ust))
    }

    /// Whether a merged directory has no entries.
    fn is_empty_dir(&self, ino: u64) -> OpResult<bool> {
        let mut empty = true;
        self.merged_listing(ino, |_, _, _| {
            empty = false;
            true
        })?;
        Ok(empty)
    }

    /// Removes a non-directory.
    pub fn unlink(&self, parent: u64, name: &[u8]) -> OpResult<()> {
        self.remove(parent, OsStr::from_bytes(name), false)
    }

    /// Removes an empty directory (whiteouts do not count as entries).
    pub fn rmdir(&self, parent: u64, name: &[u8]) -> OpResult<()> {
        self.remove(parent, OsStr::from_bytes(name), true)
    }

    fn remove(&self, parent: u64, name: &OsStr, want_dir: bool) -> OpResult<()> {
        let _ns = lock(&self.ns)?;
        let p = self.inode(parent)?;
        let ppath = self.path_of(parent)?;
        let c = self.resolve_child(&p, &ppath, name)?.ok_or(Errno::ENOENT)?;
        let is_dir = c.file_type == libc::S_IFDIR;
        if want_dir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !want_dir && is_dir {
            return Err(Errno::EISDIR);
        }
        let ino = self.register(parent, name, &c, false)?;
        if is_dir && !self.is_empty_dir(ino)? {
            return Err(Errno::ENOTEMPTY);
        }
        if !p.upper {
            self.ensure_upper(parent, CopyMode::Full)?;
        }
        let hard_linked = c.upper.is_none()
            && c.lower
                .and_then(|id| self.ov.tree().node(id))
                .is_some_and(|n| !is_dir && n.nlink > 1);
        if hard_linked {
            // Its other names must count one link less: copy it up under all of them, so the
            // upper's link count is the truth once this name goes (kernel overlayfs without
            // index=on keeps reporting the lower count).
            self.ensure_upper(ino, CopyMode::Full)?;
        }
        let dir = self.upper_dir(&ppath)?;
        let lower_here = p
            .lower
            .and_then(|pl| self.ov.tree().lookup(pl, name.as_bytes()))
            .is_some();
        if lower_here {
            self.upper.whiteout(&dir, name).map_err(errno)?;
        } else if c.upper.is_some() {
            // Only whiteouts can be left in an empty merged directory's upper copy.
            remove_tree(&dir, name).map_err(errno)?;
        }
        if is_dir {
            self.dirs_changed(parent);
        }
        let mut st = self.inodes.write().map_err(|_| Errno::EIO)?;
        st.unbind(&(parent, name.to_os_string()));
        Ok(())
    }

    /// Renames, with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`. A lower directory moves with a
    /// redirect to its lower path, so renaming it works (no `EXDEV`).
    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        flags: u32,
    ) -> OpResult<()> {
        let (name, newname) = (OsStr::from_bytes(name), OsStr::from_bytes(newname));
        let _ns = lock(&self.ns)?;
        let (p, np) = (self.inode(parent)?, self.inode(newparent)?);
        let (ppath, nppath) = (self.path_of(parent)?, self.path_of(newparent)?);
        let src = self.resolve_child(&p, &ppath, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.resolve_child(&np, &nppath, newname)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & libc::RENAME_NOREPLACE != 0 && dst.is_some() {
            return Err(Errno::EEXIST);
        }
        if exchange && dst.is_none() {
            return Err(Errno::ENOENT);
        }
        let sino = self.register(parent, name, &src, false)?;
        if parent == newparent && name == newname {
            return Ok(());
        }
        // Moving a directory into itself.
        if src.file_type == libc::S_IFDIR && self.is_ancestor(sino, newparent)? {
            return Err(Errno::EINVAL);
        }
        let dino = match &dst {
            Some(d) => Some(self.register(newparent, newname, d, false)?),
            None => None,
        };
        if let (Some(d), false) = (&dst, exchange) {
            match (src.file_type == libc::S_IFDIR, d.file_type == libc::S_IFDIR) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.is_empty_dir(dino.unwrap_or(0))? => {
                    return Err(Errno::ENOTEMPTY);
                }
                _ => {}
            }
        }
        // Copy up both ends' parents and the moving entries themselves.
        self.ensure_upper(parent, CopyMode::Full)?;
        self.ensure_upper(newparent, CopyMode::Full)?;
        self.prepare_move(sino, &src)?;
        if let (true, Some(d)) = (exchange, dino) {
            if let Some(dc) = &dst {
                self.prepare_move(d, dc)?;
            }
        }
        let (sdir, ddir) = (self.upper_dir(&ppath)?, self.upper_dir(&nppath)?);
        let lower_at_src = p
            .lower
            .and_then(|pl| self.ov.tree().lookup(pl, name.as_bytes()))
            .is_some();
        let lower_at_dst = np
            .lower
            .and_then(|pl| self.ov.tree().lookup(pl, newname.as_bytes()))
            .is_some();
        if exchange {
            sdir.rename(name, &ddir, newname, libc::RENAME_EXCHANGE)
                .map_err(errno)?;
            // Directories now stand where the other's lower entry is: keep each merged with its
            // own lower directory (redirect) or cut off from the new place's one (opaque).
            self.fix_moved_dir(&ddir, newname, &src, lower_at_dst)?;
            if let Some(dc) = &dst {
                self.fix_moved_dir(&sdir, name, dc, lower_at_src)?;
            }
        } else {
            if let Some(d) = &dst {
                if d.upper.is_some() && d.file_type == libc::S_IFDIR {
                    // An empty merged directory's upper copy holds only whiteouts.
                    remove_tree(&ddir, newname).map_err(errno)?;
                }
            }
            let over_whiteout = matches!(
                self.upper.classify(&ddir, newname).map_err(errno)?,
                UpperEntry::Whiteout
            );
            if over_whiteout && src.file_type == libc::S_IFDIR {
                // rename(2) cannot put a directory over a character device.
                self.upper.clear_whiteout(&ddir, newname).map_err(errno)?;
            }
            sdir.rename(name, &ddir, newname, 0).map_err(errno)?;
            if self.upper.format == crate::upper::Format::User {
                self.upper.clear_whiteout(&ddir, newname).map_err(errno)?;
            }
            self.fix_moved_dir(&ddir, newname, &src, lower_at_dst)?;
            if lower_at_src {
                self.upper.whiteout(&sdir, name).map_err(errno)?;
            }
        }
        let mut st = self.inodes.write().map_err(|_| Errno::EIO)?;
        let (from, to) = (
            (parent, name.to_os_string()),
            (newparent, newname.to_os_string()),
        );
        // The moving inode leaves its old name without being unlinked by it.
        st.at.remove(&from);
        if let Some(n) = st.map.get_mut(&sino) {
            n.names = n.names.saturating_sub(1);
            (n.parent, n.name) = to.clone();
            n.upper = true;
        }
        match (exchange, dino) {
            (true, Some(d)) => {
                st.at.insert(to.clone(), sino);
                st.at.insert(from.clone(), d);
                if let Some(n) = st.map.get_mut(&sino) {
                    n.names += 1;
                }
                if let Some(n) = st.map.get_mut(&d) {
                    (n.parent, n.name) = from;
                    n.upper = true;
                }
            }
            // Whatever the new name led to loses it (unlinked unless it has other names).
            _ => st.bind(to, sino),
        }
        drop(st);
        let dir_moved = src.file_type == libc::S_IFDIR
            || dst.as_ref().is_some_and(|d| d.file_type == libc::S_IFDIR);
        if dir_moved {
            self.dirs_changed(parent);
            self.dirs_changed(newparent);
        }
        Ok(())
    }

    fn is_ancestor(&self, anc: u64, mut ino: u64) -> OpResult<bool> {
        let st = self.inodes.read().map_err(|_| Errno::EIO)?;
        for _ in 0..MAX_DEPTH {
            if ino == anc {
                return Ok(true);
            }
            if ino == ROOT {
                return Ok(false);
            }
            ino = st.map.get(&ino).map_or(ROOT, |i| i.parent);
        }
        Ok(false)
    }

    /// Copies up an entry about to move: files fully (a metadata-only copy's data is found by
    /// its path, which is about to change), directories alone (their children stay below).
    fn prepare_move(&self, ino: u64, c: &Child) -> OpResult<()> {
        if c.file_type != libc::S_IFDIR {
            // Whole, and under all its names if it is a lower hard link.
            return self.ensure_upper(ino, CopyMode::Full);
        }
        if c.upper.is_none() {
            self.mark_parents_upper(self.inode(ino)?.parent)?;
            self.copy_inode(ino, CopyMode::Full)?;
        }
        Ok(())
    }

    /// After a directory moved to `dir/name`: it keeps its own lower directory through a
    /// redirect to that directory's path, and one without a lower directory becomes opaque
    /// where a lower entry of its new name would otherwise merge in.
    fn fix_moved_dir(
        &self,
        dir: &DirFd,
        name: &OsStr,
        c: &Child,
        lower_at_new: bool,
    ) -> OpResult<()> {
        if c.file_type != libc::S_IFDIR {
            return Ok(());
        }
        match c.lower {
            Some(id) => {
                let path = self.lower_path(id)?;
                let mut abs = b"/".to_vec();
                abs.extend_from_slice(&path);
                self.upper
                    .set_flag(dir, name, "redirect", &abs)
                    .map_err(errno)
            }
            None if lower_at_new => self
                .upper
                .set_flag(dir, name, "opaque", b"y")
                .map_err(errno),
            None => Ok(()),
        }
    }

    /// The lower path of a lower directory node.
    fn lower_path(&self, id: NodeId) -> OpResult<Vec<u8>> {
        let tree = self.ov.tree();
        let mut names = Vec::new();
        let mut cur = id;
        while cur != crate::tree::LowerTree::ROOT {
            let n = tree.node(cur).ok_or(Errno::EIO)?;
            let parent = n.parent;
            let e = tree
                .children(parent)
                .iter()
                .find(|e| e.node == cur)
                .ok_or(Errno::EIO)?;
            names.push(tree.name(e).to_vec());
            cur = parent;
            if names.len() > MAX_DEPTH {
                return Err(Errno::EIO);
            }
        }
        names.reverse();
        Ok(names.join(&b'/'))
    }

    /// Visits the merged entries of a directory, sorted by name: `f(name, lower, upper)`
    /// returns true to stop.
    fn merged_listing(
        &self,
        ino: u64,
        mut f: impl FnMut(&OsStr, Option<NodeId>, bool) -> bool,
    ) -> OpResult<()> {
        let i = self.inode(ino)?;
        let mut names: std::collections::BTreeMap<OsString, (Option<NodeId>, bool, bool)> =
            Default::default();
        let tree = self.ov.tree();
        if let Some(l) = i.lower {
            for e in tree.children(l) {
                names.insert(
                    OsStr::from_bytes(tree.name(e)).to_os_string(),
                    (Some(e.node), false, false),
                );
            }
        }
        if i.upper {
            let path = self.path_of(ino)?;
            let d = self.upper_dir(&path)?;
            for (n, wh) in self.upper.list(&d).map_err(errno)? {
                let slot = names.entry(n).or_insert((None, false, false));
                slot.1 = !wh;
                slot.2 = wh;
            }
        }
        for (n, (lower, up, wh)) in &names {
            if *wh {
                continue;
            }
            if f(n, if *up { None } else { *lower }, *up) {
                break;
            }
        }
        Ok(())
    }

    fn cached_nlink(&self, ino: u64) -> OpResult<u32> {
        if let Some(n) = lock(&self.dir_nlink)?.get(&ino) {
            return Ok(*n);
        }
        let n = self.merged_nlink(ino)?;
        lock(&self.dir_nlink)?.insert(ino, n);
        Ok(n)
    }

    /// Forgets the cached link count of a directory whose subdirectories changed.
    fn dirs_changed(&self, dir: u64) {
        if let Ok(mut m) = self.dir_nlink.lock() {
            m.remove(&dir);
        }
    }

    /// `2 + subdirectories` of a merged directory.
    fn merged_nlink(&self, ino: u64) -> OpResult<u32> {
        let i = self.inode(ino)?;
        let path = self.path_of(ino)?;
        let tree = self.ov.tree();
        let mut n = 2u32;
        let mut err = None;
        self.merged_listing(ino, |name, lower, upper| {
            let is_dir = if upper {
                match self.resolve_child(&i, &path, name) {
                    Ok(c) => c.is_some_and(|c| c.file_type == libc::S_IFDIR),
                    Err(e) => {
                        err = Some(e);
                        return true;
                    }
                }
            } else {
                lower
                    .and_then(|id| tree.node(id))
                    .is_some_and(|n| n.is_dir())
            };
            n += u32::from(is_dir);
            false
        })?;
        err.map_or(Ok(n), Err)
    }

    /// Takes a snapshot of a directory's merged listing.
    pub fn opendir(&self, ino: u64) -> OpResult<u64> {
        // The snapshot is taken with the namespace still: a directory renamed or removed
        // meanwhile is simply gone (ENOENT), as on kernel overlayfs.
        let _ns = lock(&self.ns)?;
        let i = self.inode(ino)?;
        if i.file_type != libc::S_IFDIR {
            return Err(Errno::ENOTDIR);
        }
        let path = self
            .path_of(ino)
            .map_err(|e| if e == Errno::ESTALE { Errno::ENOENT } else { e })?;
        let mut items = Vec::new();
        let mut err = None;
        self.merged_listing(ino, |name, _, _| {
            match self.resolve_child(&i, &path, name) {
                Ok(Some(c)) => match self.register(ino, name, &c, false) {
                    Ok(cino) => items.push((name.to_os_string(), cino, c.file_type)),
                    Err(e) => err = Some(e),
                },
                Ok(None) => {}
                Err(e) => err = Some(e),
            }
            err.is_some()
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        self.new_handle(Handle::Dir(Arc::new(items)))
    }

    /// Lists an opened directory from `offset` (`.` 0→1, `..` 1→2, entries after).
    pub fn readdir(
        &self,
        ino: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(DirListing<'_>) -> bool,
    ) -> OpResult<()> {
        let items = match lock(&self.handles)?.1.get(&fh) {
            Some(Handle::Dir(items)) => items.clone(),
            _ => return Err(Errno::EBADF),
        };
        let parent = self.inode(ino)?.parent;
        if offset == 0
            && add(DirListing {
                ino,
                next: 1,
                file_type: libc::S_IFDIR,
                name: b".",
            })
        {
            return Ok(());
        }
        if offset <= 1
            && add(DirListing {
                ino: parent,
                next: 2,
                file_type: libc::S_IFDIR,
                name: b"..",
            })
        {
            return Ok(());
        }
        for (k, (name, cino, ft)) in items
            .iter()
            .enumerate()
            .skip(offset.saturating_sub(2) as usize)
        {
            if add(DirListing {
                ino: *cino,
                next: k as u64 + 3,
                file_type: *ft,
                name: name.as_bytes(),
            }) {
                break;
            }
        }
        Ok(())
    }

    /// For readdirplus: counts a lookup of a listed entry and returns its attributes.
    pub fn listed_attr(&self, parent: u64, l: &DirListing<'_>) -> OpResult<Attr> {
        if l.name == b"." || l.name == b".." {
            return self.getattr(l.ino, None);
        }
        self.lookup(parent, l.name)
    }

    /// Syncs a directory's upper copy.
    pub fn fsyncdir(&self, ino: u64) -> OpResult<()> {
        let i = self.inode(ino)?;
        if !i.upper {
            return Ok(());
        }
        let d = self.upper_dir(&self.path_of(ino)?)?;
        d.sync().map_err(errno)
    }

    /// An extended attribute (the image's, or the upper copy's once copied up).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if name == PROVENANCE_XATTR {
            // A directory merged with a lower one still comes from that layer; anything
            // copied up or created since comes from the upper layer.
            return match i.lower {
                Some(id) if !i.upper || i.file_type == libc::S_IFDIR => {
                    self.ov.getxattr(ino_of(id), name)
                }
                _ if i.upper => Ok(b"upper".to_vec()),
                _ => Err(Errno::ENODATA),
            };
        }
        if is_private_xattr(name) {
            return Err(Errno::ENODATA);
        }
        if i.upper {
            let path = self.path_of(ino)?;
            let (dir, n) = self.split(&path)?;
            return match n {
                Some(n) => dir.get_xattr(n, name),
                None => self.root_xattr(|p, n| p.get_xattr(n, name)),
            }
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::ENODATA) {
                    Errno::ENODATA
                } else {
                    errno(e)
                }
            });
        }
        match i.lower {
            Some(id) => self.ov.getxattr(ino_of(id), name),
            None => Err(Errno::ENODATA),
        }
    }

    fn root_xattr<T>(
        &self,
        f: impl FnOnce(&DirFd, &OsStr) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let parent = DirFd::open_root(&self.upper.path.join(".."))?;
        let name = self
            .upper
            .path
            .file_name()
            .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        f(&parent, name)
    }

    /// The attribute names, NUL-terminated, without the overlay's private ones.
    pub fn listxattr(&self, ino: u64) -> OpResult<Vec<u8>> {
        let i = self.inode(ino)?;
        if !i.upper {
            return match i.lower {
                Some(id) => self.ov.listxattr(ino_of(id)),
                None => Ok(Vec::new()),
            };
        }
        let path = self.path_of(ino)?;
        let (dir, n) = self.split(&path)?;
        let names = match n {
            Some(n) => dir.list_xattr(n),
            None => self.root_xattr(|p, n| p.list_xattr(n)),
        }
        .map_err(errno)?;
        let mut out = Vec::new();
        for k in names.iter().filter(|k| !is_private_xattr(k)) {
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    /// Sets an extended attribute (a metadata-only copy-up first).
    pub fn setxattr(&self, ino: u64, name: &[u8], value: &[u8], flags: i32) -> OpResult<()> {
        if is_private_xattr(name) || name == PROVENANCE_XATTR {
            return Err(Errno::EOPNOTSUPP);
        }
        let _ns = lock(&self.ns)?;
        self.ensure_upper(ino, CopyMode::MetaOnly)?;
        let path = self.path_of(ino)?;
        let (dir, n) = self.split(&path)?;
        match n {
            Some(n) => dir.set_xattr(n, name, value, flags),
            None => self.root_xattr(|p, n| p.set_xattr(n, name, value, flags)),
        }
        .map_err(errno)
    }

    /// Removes an extended attribute (a metadata-only copy-up first).
    pub fn removexattr(&self, ino: u64, name: &[u8]) -> OpResult<()> {
        if is_private_xattr(name) || name == PROVENANCE_XATTR {
            return Err(Errno::EOPNOTSUPP);
        }
        let _ns = lock(&self.ns)?;
        self.getxattr(ino, name)?;
        self.ensure_upper(ino, CopyMode::MetaOnly)?;
        let path = self.path_of(ino)?;
        let (dir, n) = self.split(&path)?;
        match n {
            Some(n) => dir.remove_xattr(n, name),
            None => self.root_xattr(|p, n| p.remove_xattr(n, name)),
        }
        .map_err(errno)
    }

    /// Space of the upper filesystem, inodes of the image plus the upper's.
    pub fn statfs(&self) -> OpResult<StatFs> {
        let s = nix::sys::statvfs::statvfs(&self.upper.path)
            .map_err(|e| e as i32)
            .map_err(Errno::from_raw)?;
        let lower = self.ov.statfs();
        let scale = s.fragment_size().max(1) / u64::from(crate::overlay::BLOCK_SIZE).max(1);
        let scale = scale.max(1);
        Ok(StatFs {
            blocks: lower.blocks + s.blocks() * scale,
            bfree: s.blocks_free() * scale,
            bavail: s.blocks_available() * scale,
            files: lower.files + s.files(),
            ffree: s.files_free(),
        })
    }
}

/// The file capability attribute, dropped with set-id bits on writes by users.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// Drops setuid (and setgid, when group-executable) and file capabilities, as the kernel
/// does when an unprivileged writer changes a file; the daemon writes as root, so it must.
fn kill_privs(f: &File) -> OpResult<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = f.metadata().map_err(errno)?.mode();
    let mut new = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        new &= !libc::S_ISGID;
    }
    if new != mode {
        f.set_permissions(std::fs::Permissions::from_mode(new & 0o7777))
            .map_err(errno)?;
    }
    match crate::sys::remove_xattr_fd(f, CAPABILITY_XATTR) {
        // An unprivileged daemon may not touch security.* (and cannot have set it either).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EOPNOTSUPP)) => Ok(()),
        r => r.map_err(errno),
    }
}

fn join(dir: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p
}

fn pread(f: &File, offset: u64, size: u32) -> OpResult<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(errno(e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}
