//! The changes an overlayfs upper directory makes to an image: the upper read from disk, what
//! each of its entries means, the merged view it gives over the image's lower tree, and the
//! `docker diff`-style change list.
//!
//! The upper is in kernel overlayfs format (`Documentation/filesystems/overlayfs.rst`):
//! - a whiteout is a 0/0 character device, or an empty file or character device carrying
//!   `trusted.overlay.whiteout`; fuse-overlayfs, where it may not `mknod`, writes `.wh.NAME`;
//! - an opaque directory carries `trusted.overlay.opaque=y` (`x` only marks a directory holding
//!   xattr whiteouts), or holds a `.wh..wh..opq` file;
//! - a renamed directory carries `trusted.overlay.redirect`: an absolute path from the root of
//!   the lower layers, or a name in its parent's lower directory; its lower content is there;
//! - a metadata-only copy carries `trusted.overlay.metacopy`: its data is still the lower file
//!   at its own path, or at its redirect.
//!
//! Every `trusted.overlay.*` attribute has a `user.overlay.*` twin (overlayfs `userxattr`,
//! fuse-overlayfs without privileges). Those private attributes are never part of an entry.
//!
//! Reading ([`Upper::scan`]) is separate from meaning ([`classify`], [`view_dir`]) and from
//! merging ([`MergedView`]), so all rules are tested on data built in memory. The scan goes
//! through descriptors opened beneath the upper root with symlinks refused, so nothing outside
//! the upper is ever read. Dependencies: tree, layer (entry, whiteout), sys, error.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{Context, Error, Result};
use crate::layer::entry::{Meta, Xattr, normalize_path};
use crate::layer::whiteout::{Class, OPAQUE_MARKER, classify as classify_name};
use crate::sys::DirFd;
use crate::tree::LowerTree;
use crate::tree::node::{NodeId, NodeKind};

/// Namespaces of overlayfs's private attributes: `trusted.` for the kernel, `user.` with
/// `userxattr` and for fuse-overlayfs without privileges.
const PRIVATE_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];

/// The value of the opaque attribute that makes a directory opaque.
const OPAQUE_YES: &[u8] = b"y";

/// What an upper entry is on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpperKind {
    /// A directory and its entries by name.
    Dir(BTreeMap<Box<[u8]>, UpperNode>),
    /// A regular file of this size.
    File {
        /// Size in bytes.
        size: u64,
    },
    /// A symbolic link and its target.
    Symlink(Box<[u8]>),
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
    /// A socket (no tar form; left out of a commit).
    Socket,
}

/// One entry of the upper directory, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpperNode {
    /// Permission bits, owner, mtime.
    pub meta: Meta,
    /// Type and payload.
    pub kind: UpperKind,
    /// Every extended attribute, sorted by name, overlayfs's private ones included.
    pub xattrs: Vec<Xattr>,
    /// `(st_dev, st_ino)`: names of one inode are hard links.
    pub inode: (u64, u64),
    /// Link count.
    pub nlink: u64,
}

impl UpperNode {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, UpperKind::Dir(_))
    }

    /// The entries of a directory (none for anything else).
    pub fn children(&self) -> Option<&BTreeMap<Box<[u8]>, UpperNode>> {
        match &self.kind {
            UpperKind::Dir(c) => Some(c),
            _ => None,
        }
    }

    /// The extended attributes that belong to the entry (overlayfs's private ones left out).
    pub fn public_xattrs(&self) -> impl Iterator<Item = &Xattr> {
        self.xattrs.iter().filter(|(k, _)| !is_private_xattr(k))
    }
}

/// Whether an attribute is overlayfs bookkeeping rather than part of the entry.
pub fn is_private_xattr(name: &[u8]) -> bool {
    PRIVATE_PREFIXES.iter().any(|p| name.starts_with(p)) || name == crate::upper::OVERRIDE_STAT
}

/// An overlayfs attribute by its name after the namespace (`opaque`, `redirect`...), trusted
/// first.
fn overlay_xattr<'a>(xattrs: &'a [Xattr], key: &[u8]) -> Option<&'a [u8]> {
    PRIVATE_PREFIXES.iter().find_map(|p| {
        xattrs
            .iter()
            .find(|(k, _)| k.len() == p.len() + key.len() && k.starts_with(p) && k.ends_with(key))
            .map(|(_, v)| &**v)
    })
}

/// Where a renamed directory (or metacopy file) has its lower content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// A path from the lower root (normalised: no leading `/`).
    Absolute(Vec<u8>),
    /// A name in the parent's lower directory.
    Relative(Vec<u8>),
}

/// What an upper entry means to the merged view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Hides the lower entry of its name.
    Whiteout,
    /// A directory; `opaque` ones show no lower entries, redirected ones merge with the lower
    /// directory the redirect names.
    Dir {
        /// Lower entries are hidden.
        opaque: bool,
        /// The lower directory it merges with, when not the one at its own path.
        redirect: Option<Redirect>,
    },
    /// A regular file whose metadata is here and whose data is the lower file at its own
    /// path, or at its redirect.
    Metacopy {
        /// The lower file, when not the one at its own path.
        redirect: Option<Redirect>,
    },
    /// Anything else: whole in the upper.
    Plain,
}

/// Reads a redirect value: `/a/b` (from the lower root) or `name` (beside the entry).
/// `None` for a value that could climb out or name nothing.
pub fn parse_redirect(v: &[u8]) -> Option<Redirect> {
    if let Some(abs) = v.strip_prefix(b"/") {
        return normalize_path(abs).ok().map(Redirect::Absolute);
    }
    let bad = v.is_empty() || v.contains(&b'/') || v.contains(&0) || v == b"." || v == b"..";
    (!bad).then(|| Redirect::Relative(v.to_vec()))
}

/// What an entry means, from its type and attributes (pure). A directory is opaque by its
/// attribute or by a `.wh..wh..opq` entry.
pub fn classify(node: &UpperNode) -> std::result::Result<Role, String> {
    let x = &node.xattrs;
    let redirect = || match overlay_xattr(x, b"redirect") {
        None => Ok(None),
        Some(v) => parse_redirect(v)
            .map(Some)
            .ok_or_else(|| format!("bad redirect {:?}", String::from_utf8_lossy(v))),
    };
    Ok(match &node.kind {
        UpperKind::CharDev { major: 0, minor: 0 } => Role::Whiteout,
        UpperKind::CharDev { .. } | UpperKind::File { size: 0 }
            if overlay_xattr(x, b"whiteout").is_some() =>
        {
            Role::Whiteout
        }
        UpperKind::Dir(children) => Role::Dir {
            opaque: overlay_xattr(x, b"opaque") == Some(OPAQUE_YES)
                || children.contains_key(OPAQUE_MARKER),
            redirect: redirect()?,
        },
        UpperKind::File { .. } if overlay_xattr(x, b"metacopy").is_some() => Role::Metacopy {
            redirect: redirect()?,
        },
        _ => Role::Plain,
    })
}

/// A directory's entries by the names they stand for, or the entry that is malformed and why.
pub type ViewResult<'a> =
    std::result::Result<BTreeMap<&'a [u8], (&'a UpperNode, Role)>, (Vec<u8>, String)>;

/// An upper directory's entries under the names they stand for (pure): a `.wh.NAME` file is
/// fuse-overlayfs's whiteout of `NAME` (an entry `NAME` beside it wins), and the opaque marker
/// and other `.wh..wh.` names are bookkeeping, not entries.
pub fn view_dir(children: &BTreeMap<Box<[u8]>, UpperNode>) -> ViewResult<'_> {
    let mut out = BTreeMap::new();
    for (name, node) in children {
        let role = classify(node).map_err(|e| (name.to_vec(), e))?;
        match classify_name(name) {
            Class::Normal => {
                out.insert(&**name, (node, role));
            }
            Class::Whiteout(target) if matches!(node.kind, UpperKind::File { .. }) => {
                if !children.contains_key(target) {
                    out.insert(target, (node, Role::Whiteout));
                }
            }
            // A `.wh.` name that is not a file is an ordinary entry to overlayfs.
            Class::Whiteout(_) => {
                out.insert(&**name, (node, role));
            }
            Class::Opaque | Class::Ignored => {}
        }
    }
    Ok(out)
}

/// The upper directory, read whole.
#[derive(Debug)]
pub struct Upper {
    /// Where it is.
    pub path: PathBuf,
    /// Its root directory.
    pub root: UpperNode,
}

impl Upper {
    /// Reads the upper directory at `path` (which must be a directory; below it nothing is
    /// followed).
    pub fn scan(path: &Path) -> Result<Upper> {
        let abs = std::fs::canonicalize(path).ctx("open", path)?;
        let fd = DirFd::open_root(&abs).ctx("open", path)?;
        let st = fd.stat(None).ctx("stat", path)?;
        // The root's own attributes come through its parent, the one way to name it to the
        // `l*xattr` calls.
        let xattrs = match (abs.parent(), abs.file_name()) {
            (Some(parent), Some(name)) => {
                let pfd = DirFd::open_root(parent).ctx("open", parent)?;
                read_xattrs(&pfd, name, path)?
            }
            _ => Vec::new(),
        };
        let mut root = node_from_stat(&st, Vec::new(), xattrs);
        root.kind = UpperKind::Dir(scan_dir(&fd, path)?);
        Ok(Upper {
            path: path.to_path_buf(),
            root,
        })
    }

    /// Opens a regular file of the upper by its path (`a/b/c`), beneath the root and through
    /// no symlink.
    pub fn open_file(&self, rel: &[u8]) -> Result<std::fs::File> {
        let host = self.path.join(OsStr::from_bytes(rel));
        let (parent, name) = match rel.iter().rposition(|&b| b == b'/') {
            Some(i) => (&rel[..i], &rel[i + 1..]),
            None => (&b""[..], rel),
        };
        let root = DirFd::open_root(&self.path).ctx("open", &self.path)?;
        let dir = root
            .open_beneath(Path::new(OsStr::from_bytes(parent)))
            .ctx("open", &host)?;
        dir.open_file(OsStr::from_bytes(name), libc::O_RDONLY, 0)
            .ctx("open", &host)
    }
}

fn scan_dir(fd: &DirFd, host: &Path) -> Result<BTreeMap<Box<[u8]>, UpperNode>> {
    let mut out = BTreeMap::new();
    for name in fd.list().ctx("read directory", host)? {
        let path = host.join(&name);
        let st = fd.stat(Some(&name)).ctx("stat", &path)?;
        let xattrs = read_xattrs(fd, &name, &path)?;
        let target = match st.st_mode & libc::S_IFMT {
            libc::S_IFLNK => fd.readlink(&name).ctx("read link", &path)?.into_vec(),
            _ => Vec::new(),
        };
        let mut node = node_from_stat(&st, target, xattrs);
        if node.is_dir() {
            let child = fd
                .open_beneath(Path::new(&name))
                .ctx("open directory", &path)?;
            node.kind = UpperKind::Dir(scan_dir(&child, &path)?);
        }
        out.insert(name.into_vec().into_boxed_slice(), node);
    }
    Ok(out)
}

fn read_xattrs(fd: &DirFd, name: &OsStr, path: &Path) -> Result<Vec<Xattr>> {
    let names = match fd.list_xattr(name) {
        Ok(n) => n,
        // A file system without extended attributes has none to read.
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e).ctx("list attributes", path),
    };
    let mut out = Vec::with_capacity(names.len());
    for k in names {
        match fd.get_xattr(name, &k) {
            Ok(v) => out.push((k.into_boxed_slice(), v.into_boxed_slice())),
            // Removed since it was listed.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e).ctx("read attribute", path),
        }
    }
    out.sort();
    Ok(out)
}

fn node_from_stat(st: &libc::stat, target: Vec<u8>, xattrs: Vec<Xattr>) -> UpperNode {
    let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFDIR => UpperKind::Dir(BTreeMap::new()),
        libc::S_IFLNK => UpperKind::Symlink(target.into_boxed_slice()),
        libc::S_IFCHR => UpperKind::CharDev { major, minor },
        libc::S_IFBLK => UpperKind::BlockDev { major, minor },
        libc::S_IFIFO => UpperKind::Fifo,
        libc::S_IFSOCK => UpperKind::Socket,
        _ => UpperKind::File {
            size: st.st_size as u64,
        },
    };
    // An unprivileged daemon records the owner and mode it could not set.
    let shown = xattrs
        .iter()
        .find(|(k, _)| &**k == crate::upper::OVERRIDE_STAT)
        .and_then(|(_, v)| crate::upper::parse_override(v));
    let (uid, gid, mode) = shown.unwrap_or((st.st_uid, st.st_gid, st.st_mode & 0o7777));
    UpperNode {
        meta: Meta {
            mode,
            uid,
            gid,
            mtime: st.st_mtime,
            mtime_nsec: st.st_mtime_nsec as u32,
        },
        kind,
        xattrs,
        inode: (st.st_dev, st.st_ino),
        nlink: st.st_nlink,
    }
}

/// An entry of the merged view: from the upper (with the lower node it takes content from),
/// or a lower node the upper leaves alone.
#[derive(Clone, Copy, Debug)]
pub enum Merged<'a> {
    /// An upper entry.
    Upper {
        /// The entry.
        node: &'a UpperNode,
        /// For a directory, the lower directory merged into it; for a metacopy file, the lower
        /// file holding its data; otherwise `None`.
        lower: Option<NodeId>,
        /// The entry is a metacopy file.
        metacopy: bool,
    },
    /// A lower node shown as it is.
    Lower(NodeId),
}

/// The merged view of an upper over a lower tree, as kernel overlayfs shows it.
pub struct MergedView<'a> {
    /// The lower tree.
    pub tree: &'a LowerTree,
    /// The upper directory.
    pub upper: &'a Upper,
}

/// A merged directory's entries by name, and the names its upper whites out.
pub struct MergedDir<'a> {
    /// Entries by name.
    pub entries: BTreeMap<Vec<u8>, Merged<'a>>,
    /// Whiteouts of the upper directory, by the name they hide, with their own entry.
    pub whiteouts: Vec<(Vec<u8>, &'a UpperNode)>,
}

impl<'a> MergedView<'a> {
    /// The view of `upper` over `tree`.
    pub fn new(tree: &'a LowerTree, upper: &'a Upper) -> MergedView<'a> {
        MergedView { tree, upper }
    }

    fn bad(&self, path: &[u8], reason: impl std::fmt::Display) -> Error {
        Error::BadUpper {
            path: self.upper.path.join(OsStr::from_bytes(path)),
            reason: reason.to_string(),
        }
    }

    /// The root: the upper root over the lower root.
    pub fn root(&self) -> Result<Merged<'a>> {
        let node = &self.upper.root;
        let role = classify(node).map_err(|e| self.bad(b"", e))?;
        let opaque = matches!(role, Role::Dir { opaque: true, .. });
        Ok(Merged::Upper {
            node,
            lower: (!opaque).then_some(LowerTree::ROOT),
            metacopy: false,
        })
    }

    fn is_dir(&self, id: NodeId) -> bool {
        self.tree.node(id).is_some_and(|n| n.is_dir())
    }

    fn is_file(&self, id: NodeId) -> bool {
        self.tree
            .node(id)
            .is_some_and(|n| matches!(n.kind, NodeKind::File(_)))
    }

    /// The lower node an upper entry named `name` in a directory whose lower directory is
    /// `parent` takes content from, as overlayfs's lookup finds it: an absolute redirect
    /// starts again from the lower root, even below an opaque directory.
    fn origin(&self, parent: Option<NodeId>, name: &[u8], r: Option<&Redirect>) -> Option<NodeId> {
        match r {
            Some(Redirect::Absolute(p)) => self.tree.resolve(p),
            Some(Redirect::Relative(n)) => self.tree.lookup(parent?, n),
            None => self.tree.lookup(parent?, name),
        }
    }

    /// The entries of a merged directory (`path` only names it in errors); empty for a
    /// non-directory.
    pub fn dir(&self, path: &[u8], m: &Merged<'a>) -> Result<MergedDir<'a>> {
        let mut out = MergedDir {
            entries: BTreeMap::new(),
            whiteouts: Vec::new(),
        };
        let (node, lower) = match *m {
            Merged::Lower(id) => {
                for e in self.tree.children(id) {
                    out.entries
                        .insert(self.tree.name(e).to_vec(), Merged::Lower(e.node));
                }
                return Ok(out);
            }
            Merged::Upper { node, lower, .. } => (node, lower),
        };
        let Some(children) = node.children() else {
            return Ok(out);
        };
        let view = view_dir(children).map_err(|(name, e)| self.bad(&join(path, &name), e))?;
        for (name, (child, role)) in &view {
            let merged = match role {
                Role::Whiteout => {
                    out.whiteouts.push((name.to_vec(), *child));
                    continue;
                }
                Role::Dir { opaque, redirect } => Merged::Upper {
                    node: child,
                    lower: self
                        .origin(lower, name, redirect.as_ref())
                        .filter(|&id| !opaque && self.is_dir(id)),
                    metacopy: false,
                },
                Role::Metacopy { redirect } => {
                    let data = self
                        .origin(lower, name, redirect.as_ref())
                        .filter(|&id| self.is_file(id));
                    if data.is_none() {
                        return Err(self.bad(
                            &join(path, name),
                            "metadata-only copy without a lower file to take its data from",
                        ));
                    }
                    Merged::Upper {
                        node: child,
                        lower: data,
                        metacopy: true,
                    }
                }
                Role::Plain => Merged::Upper {
                    node: child,
                    lower: None,
                    metacopy: false,
                },
            };
            out.entries.insert(name.to_vec(), merged);
        }
        if let Some(d) = lower {
            for e in self.tree.children(d) {
                let name = self.tree.name(e);
                if !view.contains_key(name) {
                    out.entries.insert(name.to_vec(), Merged::Lower(e.node));
                }
            }
        }
        Ok(out)
    }

    /// Whether a merged entry is a directory.
    pub fn is_merged_dir(&self, m: &Merged<'_>) -> bool {
        match m {
            Merged::Upper { node, .. } => node.is_dir(),
            Merged::Lower(id) => self.is_dir(*id),
        }
    }
}

/// `a/b` + `c` → `a/b/c` (the root is the empty path).
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    p.extend_from_slice(parent);
    if !parent.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// How a path differs between the image and the merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Only in the merged view.
    Added,
    /// In both, different, or a directory with a change below it.
    Changed,
    /// Only in the image.
    Deleted,
}

impl ChangeKind {
    /// `A`, `C` or `D`, as `docker diff` prints them.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path (image-absolute: `/etc/hosts`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The path, starting with `/`.
    pub path: Vec<u8>,
    /// What happened to it.
    pub kind: ChangeKind,
}

/// The changes the upper makes to the image, sorted by path.
///
/// Each path of the merged view is compared with the same path of the image: only in the
/// view is `A` (with everything below it), only in the image is `D` (its subtree is not
/// listed), both is `C` when it is a non-directory the upper holds (copy-up means it was
/// written to), a directory whose owner, mode, mtime or attributes differ, or a different
/// lower node (below a renamed directory). Every directory above a change is `C` too, as
/// `docker diff` shows a directory something below it changed in.
pub fn diff(view: &MergedView<'_>) -> Result<Vec<Change>> {
    let mut found: BTreeMap<Vec<u8>, ChangeKind> = BTreeMap::new();
    let root = view.root()?;
    diff_dir(view, b"", &root, Some(LowerTree::ROOT), &mut found)?;
    let changed: Vec<Vec<u8>> = found.keys().cloned().collect();
    for p in changed {
        let mut cur = &p[..];
        while let Some(i) = cur.iter().rposition(|&b| b == b'/') {
            cur = &cur[..i];
            found.entry(cur.to_vec()).or_insert(ChangeKind::Changed);
        }
    }
    Ok(found
        .into_iter()
        .map(|(p, kind)| Change {
            path: [&b"/"[..], &p].concat(),
            kind,
        })
        .collect())
}

fn diff_dir(
    view: &MergedView<'_>,
    path: &[u8],
    m: &Merged<'_>,
    same: Option<NodeId>,
    out: &mut BTreeMap<Vec<u8>, ChangeKind>,
) -> Result<()> {
    let merged = view.dir(path, m)?.entries;
    let lower: BTreeMap<&[u8], NodeId> = same
        .map(|d| {
            view.tree
                .children(d)
                .iter()
                .map(|e| (view.tree.name(e), e.node))
                .collect()
        })
        .unwrap_or_default();
    for name in lower.keys() {
        if !merged.contains_key(*name) {
            out.insert(join(path, name), ChangeKind::Deleted);
        }
    }
    for (name, m) in &merged {
        let p = join(path, name);
        let Some(&l) = lower.get(&name[..]) else {
            add_all(view, &p, m, out)?;
            continue;
        };
        let l_dir = view.is_dir(l);
        match m {
            Merged::Lower(id) if *id == l => {}
            Merged::Lower(id) if l_dir && view.is_dir(*id) => {
                if !same_lower_attrs(view.tree, *id, l) {
                    out.insert(p.clone(), ChangeKind::Changed);
                }
                diff_dir(view, &p, m, Some(l), out)?;
            }
            Merged::Upper { node, .. } if node.is_dir() && l_dir => {
                if !same_dir_attrs(view.tree, node, l) {
                    out.insert(p.clone(), ChangeKind::Changed);
                }
                diff_dir(view, &p, m, Some(l), out)?;
            }
            _ => {
                out.insert(p.clone(), ChangeKind::Changed);
                // A directory where the image has a non-directory: all below it is new.
                if view.is_merged_dir(m) {
                    for (name, c) in view.dir(&p, m)?.entries {
                        add_all(view, &join(&p, &name), &c, out)?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn add_all(
    view: &MergedView<'_>,
    path: &[u8],
    m: &Merged<'_>,
    out: &mut BTreeMap<Vec<u8>, ChangeKind>,
) -> Result<()> {
    out.insert(path.to_vec(), ChangeKind::Added);
    if view.is_merged_dir(m) {
        for (name, c) in view.dir(path, m)?.entries {
            add_all(view, &join(path, &name), &c, out)?;
        }
    }
    Ok(())
}

/// Whether an upper directory has the lower directory's attributes (a copy-up leaves them).
fn same_dir_attrs(tree: &LowerTree, u: &UpperNode, l: NodeId) -> bool {
    let Some(n) = tree.node(l) else {
        return false;
    };
    let m = &u.meta;
    (m.mode, m.uid, m.gid, m.mtime, m.mtime_nsec)
        == (
            n.meta.mode & 0o7777,
            n.meta.uid,
            n.meta.gid,
            n.meta.mtime,
            n.meta.mtime_nsec,
        )
        && u.public_xattrs().eq(n.xattrs.iter())
}

fn same_lower_attrs(tree: &LowerTree, a: NodeId, b: NodeId) -> bool {
    match (tree.node(a), tree.node(b)) {
        (Some(x), Some(y)) => x.meta == y.meta && x.xattrs == y.xattrs,
        _ => false,
    }
}

/// Writes the change list: `A /path` lines, or a JSON list of `{"path","kind"}`. Paths that
/// are not UTF-8 are written as they are in text, and with replacement characters in JSON.
pub fn print(changes: &[Change], json: bool, out: &mut dyn std::io::Write) -> Result<()> {
    let w = |e| Error::Io {
        op: "write",
        path: "stdout".into(),
        source: e,
    };
    if json {
        let list: Vec<_> = changes
            .iter()
            .map(|c| {
                serde_json::json!({
                    "path": String::from_utf8_lossy(&c.path),
                    "kind": c.kind.letter().to_string(),
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&list).unwrap_or_default();
        return writeln!(out, "{text}").map_err(w);
    }
    for c in changes {
        let mut line = vec![c.kind.letter() as u8, b' '];
        line.extend_from_slice(&c.path);
        line.push(b'\n');
        out.write_all(&line).map_err(w)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::container::BlobLoc;
    use crate::layer::LayerIndex;
    use crate::layer::data::LayerData;
    use crate::layer::entry::{EntryKind, LayerEntry};
    use crate::layer::prepare::PreparedLayer;

    const META: Meta = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 100,
        mtime_nsec: 0,
    };

    fn x(k: &str, v: &str) -> Xattr {
        (k.as_bytes().into(), v.as_bytes().into())
    }

    fn node(kind: UpperKind, xattrs: Vec<Xattr>) -> UpperNode {
        UpperNode {
            meta: META,
            kind,
            xattrs,
            inode: (1, 1),
            nlink: 1,
        }
    }

    fn file(size: u64) -> UpperNode {
        node(UpperKind::File { size }, vec![])
    }

    fn dir(kids: &[(&str, UpperNode)], xattrs: Vec<Xattr>) -> UpperNode {
        let map = kids
            .iter()
            .map(|(n, c)| (n.as_bytes().into(), c.clone()))
            .collect();
        node(UpperKind::Dir(map), xattrs)
    }

    fn whiteout() -> UpperNode {
        node(UpperKind::CharDev { major: 0, minor: 0 }, vec![])
    }

    #[test]
    fn classify_table() {
        let abs = || Some(Redirect::Absolute(b"a/b".to_vec()));
        let cases: Vec<(UpperNode, Role)> = vec![
            (whiteout(), Role::Whiteout),
            (
                node(UpperKind::CharDev { major: 1, minor: 3 }, vec![]),
                Role::Plain,
            ),
            (
                node(
                    UpperKind::File { size: 0 },
                    vec![x("trusted.overlay.whiteout", "")],
                ),
                Role::Whiteout,
            ),
            (
                node(
                    UpperKind::File { size: 0 },
                    vec![x("user.overlay.whiteout", "")],
                ),
                Role::Whiteout,
            ),
            (
                node(
                    UpperKind::File { size: 3 },
                    vec![x("user.overlay.whiteout", "")],
                ),
                Role::Plain,
            ),
            (file(3), Role::Plain),
            (
                dir(&[], vec![]),
                Role::Dir {
                    opaque: false,
                    redirect: None,
                },
            ),
            (
                dir(&[], vec![x("trusted.overlay.opaque", "y")]),
                Role::Dir {
                    opaque: true,
                    redirect: None,
                },
            ),
            (
                dir(&[], vec![x("user.overlay.opaque", "y")]),
                Role::Dir {
                    opaque: true,
                    redirect: None,
                },
            ),
            // `x` marks a directory holding xattr whiteouts, not an opaque one.
            (
                dir(&[], vec![x("trusted.overlay.opaque", "x")]),
                Role::Dir {
                    opaque: false,
                    redirect: None,
                },
            ),
            (
                dir(&[(".wh..wh..opq", file(0))], vec![]),
                Role::Dir {
                    opaque: true,
                    redirect: None,
                },
            ),
            (
                dir(&[], vec![x("trusted.overlay.redirect", "/a/b")]),
                Role::Dir {
                    opaque: false,
                    redirect: abs(),
                },
            ),
            (
                dir(&[], vec![x("user.overlay.redirect", "old")]),
                Role::Dir {
                    opaque: false,
                    redirect: Some(Redirect::Relative(b"old".to_vec())),
                },
            ),
            (
                node(
                    UpperKind::File { size: 0 },
                    vec![x("trusted.overlay.metacopy", "")],
                ),
                Role::Metacopy { redirect: None },
            ),
            (
                node(
                    UpperKind::File { size: 0 },
                    vec![
                        x("user.overlay.metacopy", ""),
                        x("user.overlay.redirect", "/a/b"),
                    ],
                ),
                Role::Metacopy { redirect: abs() },
            ),
            (
                node(UpperKind::Symlink(b"t".as_slice().into()), vec![]),
                Role::Plain,
            ),
            (node(UpperKind::Fifo, vec![]), Role::Plain),
        ];
        for (n, want) in cases {
            assert_eq!(classify(&n), Ok(want), "{n:?}");
        }
        let bad = dir(&[], vec![x("trusted.overlay.redirect", "/../etc")]);
        assert!(classify(&bad).is_err());
    }

    #[test]
    fn parse_redirect_table() {
        let cases: &[(&[u8], Option<Redirect>)] = &[
            (b"/a//b/", Some(Redirect::Absolute(b"a/b".to_vec()))),
            (b"/", Some(Redirect::Absolute(Vec::new()))),
            (b"name", Some(Redirect::Relative(b"name".to_vec()))),
            (b"a/b", None),
            (b"..", None),
            (b"", None),
            (b"/a/../b", None),
        ];
        for (v, want) in cases {
            assert_eq!(&parse_redirect(v), want, "{v:?}");
        }
    }

    #[test]
    fn private_xattrs_table() {
        assert!(is_private_xattr(b"trusted.overlay.origin"));
        assert!(is_private_xattr(b"user.overlay.impure"));
        assert!(!is_private_xattr(b"user.overlayx"));
        assert!(!is_private_xattr(b"security.capability"));
    }

    #[test]
    fn view_dir_names_fallback_whiteouts() {
        let d = dir(
            &[
                (".wh.gone", file(0)),
                (".wh.back", file(0)),
                ("back", file(1)),
                (".wh..wh..opq", file(0)),
                ("dev", whiteout()),
                ("keep", file(2)),
            ],
            vec![],
        );
        let v = view_dir(d.children().unwrap()).unwrap();
        let roles: Vec<(&[u8], &Role)> = v.iter().map(|(k, (_, r))| (*k, r)).collect();
        assert_eq!(
            roles,
            [
                (&b"back"[..], &Role::Plain),
                (b"dev", &Role::Whiteout),
                (b"gone", &Role::Whiteout),
                (b"keep", &Role::Plain),
            ]
        );
    }

    /// A one-layer lower tree: `(path, Some(dir?))`; files are empty.
    fn lower(entries: &[(&str, bool)]) -> LowerTree {
        let entries = entries
            .iter()
            .map(|(p, is_dir)| LayerEntry {
                path: p.as_bytes().into(),
                meta: META,
                kind: if *is_dir {
                    EntryKind::Dir
                } else {
                    EntryKind::File { offset: 0, size: 0 }
                },
                xattrs: Vec::new(),
            })
            .collect();
        let layer = PreparedLayer {
            index: LayerIndex {
                entries,
                tar_size: 0,
            },
            data: LayerData::host(BlobLoc {
                file: PathBuf::new(),
                offset: 0,
                len: 0,
            }),
        };
        LowerTree::build(&[layer]).unwrap()
    }

    fn changes(tree: &LowerTree, root: UpperNode) -> Vec<String> {
        let upper = Upper {
            path: PathBuf::from("/upper"),
            root,
        };
        diff(&MergedView::new(tree, &upper))
            .unwrap()
            .iter()
            .map(|c| format!("{} {}", c.kind.letter(), String::from_utf8_lossy(&c.path)))
            .collect()
    }

    #[test]
    fn diff_rules() {
        let tree = lower(&[
            ("a", true),
            ("a/f", false),
            ("a/sub", true),
            ("a/sub/g", false),
            ("b", true),
            ("b/h", false),
            ("top", false),
        ]);
        // Nothing in the upper but a copied-up root: no change.
        assert!(changes(&tree, dir(&[], vec![])).is_empty());
        // A deep new file: its parents are changed.
        let up = dir(
            &[(
                "a",
                dir(&[("sub", dir(&[("new", file(1))], vec![]))], vec![]),
            )],
            vec![],
        );
        assert_eq!(changes(&tree, up), ["C /a", "C /a/sub", "A /a/sub/new"]);
        // A deleted directory is one D; a modified file is C.
        let up = dir(&[("a", whiteout()), ("top", file(4))], vec![]);
        assert_eq!(changes(&tree, up), ["D /a", "C /top"]);
        // An opaque directory: its lower children are deleted.
        let up = dir(
            &[(
                "a",
                dir(&[("f", file(1))], vec![x("trusted.overlay.opaque", "y")]),
            )],
            vec![],
        );
        assert_eq!(changes(&tree, up), ["C /a", "C /a/f", "D /a/sub"]);
        // A rename: the new path and all below it are added, the old path deleted.
        let up = dir(
            &[
                ("a", whiteout()),
                ("c", dir(&[], vec![x("trusted.overlay.redirect", "/a")])),
            ],
            vec![],
        );
        assert_eq!(
            changes(&tree, up),
            ["D /a", "A /c", "A /c/f", "A /c/sub", "A /c/sub/g"]
        );
        // A rename over an existing directory compares node by node.
        let up = dir(
            &[
                ("a", whiteout()),
                ("b", dir(&[], vec![x("user.overlay.redirect", "a")])),
            ],
            vec![],
        );
        assert_eq!(
            changes(&tree, up),
            ["D /a", "C /b", "A /b/f", "D /b/h", "A /b/sub", "A /b/sub/g"]
        );
        // A directory replacing a file: changed, its content added.
        let up = dir(&[("top", dir(&[("k", file(0))], vec![]))], vec![]);
        assert_eq!(changes(&tree, up), ["C /top", "A /top/k"]);
        // A changed mode on a copied-up directory.
        let mut d = dir(&[], vec![]);
        d.meta.mode = 0o700;
        assert_eq!(changes(&tree, dir(&[("b", d)], vec![])), ["C /b"]);
    }

    #[test]
    fn metacopy_without_lower_data_is_an_error() {
        let tree = lower(&[("a", true)]);
        let mc = node(
            UpperKind::File { size: 0 },
            vec![x("trusted.overlay.metacopy", "")],
        );
        let upper = Upper {
            path: PathBuf::from("/upper"),
            root: dir(&[("nothing", mc)], vec![]),
        };
        let err = diff(&MergedView::new(&tree, &upper))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/upper/nothing: metadata-only copy"),
            "{err}"
        );
    }
}
