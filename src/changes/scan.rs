//! The upper directory read whole into memory (`diff` and `commit` walk it and compare it
//! with the lower tree many times), and what each entry means by the rules of
//! [`crate::upper::format`], the live mount's rules too.
//!
//! Reading ([`UpperTree::scan`]) is separate from meaning ([`classify`], [`view_dir`]), so all
//! rules are tested on data built in memory. The scan goes through descriptors opened beneath
//! the upper root with symlinks refused, so nothing outside the upper is ever read.
//! Dependencies: upper::format, layer (entry), sys, error.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};
use crate::layer::entry::{Meta, Xattr};
use crate::layer::whiteout::OPAQUE_MARKER;
use crate::sys::DirFd;
use crate::upper::format::{self, EntryStat, Name, OVERRIDE_STAT, Role, parse_override};

/// What an upper entry is on disk.
///
/// Not the lower tree's `NodeKind`, whose directories are runs of an arena and whose files
/// are ranges of a layer tar, nor the layer's `EntryKind`: here a directory owns its entries
/// (the snapshot is a plain tree), a file's bytes are the upper file itself, and a socket can
/// exist (no tar or layer entry can be one).
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

    /// The extended attributes that belong to the entry, by the names the entry has them
    /// under: overlayfs's bookkeeping left out, escaped overlay attributes unescaped.
    pub fn public_xattrs(&self) -> impl Iterator<Item = Xattr> + '_ {
        self.xattrs
            .iter()
            .filter_map(|(k, v)| format::unescape_xattr(k).map(|k| (k.into(), v.clone())))
    }
}

/// What an entry means (pure): the upper format's [`format::classify`] of its type and
/// attributes; a directory is opaque by its attribute or by a `.wh..wh..opq` entry.
pub fn classify(node: &UpperNode) -> std::result::Result<Role, String> {
    format::classify(&entry_stat(node), &node.xattrs)
}

/// What the format looks at of a scanned entry.
fn entry_stat(node: &UpperNode) -> EntryStat {
    let (mode, rdev, size) = match &node.kind {
        UpperKind::Dir(_) => (libc::S_IFDIR, 0, 0),
        UpperKind::File { size } => (libc::S_IFREG, 0, *size),
        UpperKind::Symlink(t) => (libc::S_IFLNK, 0, t.len() as u64),
        UpperKind::CharDev { major, minor } => (libc::S_IFCHR, libc::makedev(*major, *minor), 0),
        UpperKind::BlockDev { major, minor } => (libc::S_IFBLK, libc::makedev(*major, *minor), 0),
        UpperKind::Fifo => (libc::S_IFIFO, 0, 0),
        UpperKind::Socket => (libc::S_IFSOCK, 0, 0),
    };
    EntryStat {
        mode: mode | node.meta.mode,
        rdev,
        size,
        opaque_marker: node
            .children()
            .is_some_and(|c| c.contains_key(OPAQUE_MARKER)),
    }
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
        let is_file = matches!(node.kind, UpperKind::File { .. });
        match format::name(name, is_file) {
            Name::Entry => {
                out.insert(&**name, (node, role));
            }
            Name::WhiteoutOf(target) => {
                if !children.contains_key(target) {
                    out.insert(target, (node, Role::Whiteout));
                }
            }
            Name::Hidden => {}
        }
    }
    Ok(out)
}

/// The upper directory, read whole.
#[derive(Debug)]
pub struct UpperTree {
    /// Where it is.
    pub path: PathBuf,
    /// Its root directory.
    pub root: UpperNode,
}

impl UpperTree {
    /// Reads the upper directory at `path` (which must be a directory; below it nothing is
    /// followed).
    pub fn scan(path: &Path) -> Result<UpperTree> {
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
        Ok(UpperTree {
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
        .find(|(k, _)| &**k == OVERRIDE_STAT)
        .and_then(|(_, v)| parse_override(v));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::changes::fixtures::{dir, file, node, whiteout, x};
    use crate::upper::format::Redirect;

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
}
