//! The changes an upper directory makes to an image: the upper read whole ([`scan`]), the
//! merged view it gives over the image's lower tree ([`MergedView`], by overlayfs's lookup
//! rule), and the `docker diff`-style change list ([`diff`]) that `commit` turns into a layer.
//!
//! What an upper entry means is [`crate::upper::format`]'s to say, for the live mount and
//! for these alike: an upper written by any daemon (a root one in kernel overlayfs's format,
//! an unprivileged one in the fallback format) reads the same here as mounted.
//! Dependencies: upper::format, tree, layer (entry), sys, error.

pub mod diff;
pub mod scan;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, Result};
use crate::tree::LowerTree;
use crate::tree::node::{NodeId, NodeKind};
use crate::upper::format::{Redirect, Role};
pub use diff::{Change, ChangeKind, diff, print};
pub use scan::{UpperKind, UpperNode, UpperTree, classify, view_dir};

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
    pub upper: &'a UpperTree,
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
    pub fn new(tree: &'a LowerTree, upper: &'a UpperTree) -> MergedView<'a> {
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

/// Upper and lower trees built in memory, for the tests of this module and its users.
#[cfg(test)]
pub(crate) mod fixtures {
    use std::path::PathBuf;

    use super::{UpperKind, UpperNode};
    use crate::image::container::BlobLoc;
    use crate::layer::LayerIndex;
    use crate::layer::data::LayerData;
    use crate::layer::entry::{EntryKind, LayerEntry, Meta, Xattr};
    use crate::layer::prepare::PreparedLayer;
    use crate::tree::LowerTree;

    /// Attributes of every entry.
    pub const META: Meta = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 100,
        mtime_nsec: 0,
    };

    pub fn x(k: &str, v: &str) -> Xattr {
        (k.as_bytes().into(), v.as_bytes().into())
    }

    pub fn node(kind: UpperKind, xattrs: Vec<Xattr>) -> UpperNode {
        UpperNode {
            meta: META,
            kind,
            xattrs,
            inode: (1, 1),
            nlink: 1,
        }
    }

    pub fn file(size: u64) -> UpperNode {
        node(UpperKind::File { size }, vec![])
    }

    pub fn dir(kids: &[(&str, UpperNode)], xattrs: Vec<Xattr>) -> UpperNode {
        let map = kids
            .iter()
            .map(|(n, c)| (n.as_bytes().into(), c.clone()))
            .collect();
        node(UpperKind::Dir(map), xattrs)
    }

    pub fn whiteout() -> UpperNode {
        node(UpperKind::CharDev { major: 0, minor: 0 }, vec![])
    }

    /// A one-layer lower tree: `(path, is a directory)`; files are empty.
    pub fn lower(entries: &[(&str, bool)]) -> LowerTree {
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
}
