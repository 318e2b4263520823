//! The changes an upper directory makes to an image: the upper read whole ([`scan`]), the
//! merged view it gives over the image's lower tree ([`MergedView`], by overlayfs's lookup
//! rule), and the `docker diff`-style change list ([`diff`]) that `commit` turns into a layer.
//!
//! What an upper entry means is [`crate::upper::format`]'s to say, for the live mount and
//! for these alike: an upper written by any daemon (a root one in kernel overlayfs's format,
//! an unprivileged one in the fallback format) reads the same here as mounted.
//! Dependencies: upper::format, merge, tree, layer (entry), sys, error.

pub mod diff;
pub mod scan;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use crate::error::{Error, Result};
use crate::merge;
use crate::tree::LowerTree;
use crate::tree::node::NodeId;
use crate::upper::format::Role;
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
            if *role == Role::Whiteout {
                out.whiteouts.push((name.to_vec(), *child));
                continue;
            }
            let origin = merge::origin(self.tree, lower, name, role);
            let metacopy = matches!(role, Role::Metacopy { .. });
            if metacopy && origin.is_none() {
                return Err(self.bad(
                    &join(path, name),
                    "metadata-only copy without a lower file to take its data from",
                ));
            }
            let merged = Merged::Upper {
                node: child,
                lower: origin,
                metacopy,
            };
            out.entries.insert(name.to_vec(), merged);
        }
        // Names the upper leaves alone show the lower entry.
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
    use super::{UpperKind, UpperNode};
    use crate::layer::entry::Xattr;
    pub use crate::merge::cases::{META, lower};

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
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::fixtures::{dir, file, node, whiteout, x};
    use super::*;
    use crate::merge::cases::{CASES, Case, LOWER, Up, Want, lower, redirect_value, role};

    /// A case's upper, read whole: the root, the case's directory, the entry.
    fn upper_of(c: &Case) -> UpperTree {
        let flag = |k: &str, v: Vec<u8>| (format!("trusted.overlay.{k}").into_bytes(), v);
        let mut xattrs = Vec::new();
        if let Some(Role::Dir { opaque: true, .. }) = role(c.up) {
            xattrs.push(flag("opaque", b"y".to_vec()));
        }
        if let Some(Role::Dir { redirect, .. } | Role::Metacopy { redirect }) = role(c.up) {
            if let Some(r) = redirect {
                xattrs.push(flag("redirect", redirect_value(&r)));
            }
        }
        let xattrs: Vec<_> = xattrs
            .into_iter()
            .map(|(k, v)| (k.into_boxed_slice(), v.into_boxed_slice()))
            .collect();
        let entry = match c.up {
            Up::Nothing => None,
            Up::Whiteout => Some(whiteout()),
            Up::Dir(..) => Some(dir(&[], xattrs)),
            Up::Metacopy(_) => {
                let mut xattrs = xattrs;
                xattrs.push(x("trusted.overlay.metacopy", ""));
                Some(node(UpperKind::File { size: 0 }, xattrs))
            }
            Up::File => Some(file(1)),
        };
        let kids: Vec<(&str, UpperNode)> = entry.into_iter().map(|e| (c.name, e)).collect();
        let root = match c.dir {
            "" => dir(&kids, vec![]),
            d => {
                let opaque = match c.opaque {
                    true => vec![x("user.overlay.opaque", "y")],
                    false => vec![],
                };
                dir(&[(d, dir(&kids, opaque))], vec![])
            }
        };
        UpperTree {
            path: PathBuf::from("/upper"),
            root,
        }
    }

    /// The merge rule's table, through the upper read whole.
    #[test]
    fn merged_view_follows_the_merge_table() {
        let tree = lower(LOWER);
        for c in CASES {
            let upper = upper_of(c);
            let view = MergedView::new(&tree, &upper);
            let root = view.root().unwrap();
            let parent = match c.dir {
                "" => root,
                d => view.dir(b"", &root).unwrap().entries[d.as_bytes()],
            };
            let listed = view.dir(c.dir.as_bytes(), &parent);
            let id = |p: &str| tree.resolve(p.as_bytes());
            match (c.want, role(c.up)) {
                // diff and commit cannot do without a metadata-only copy's data.
                (Want::Upper(None), Some(Role::Metacopy { .. })) => {
                    assert!(listed.is_err(), "{c:?}");
                }
                (Want::Nothing, _) => {
                    let entries = listed.unwrap().entries;
                    assert!(!entries.contains_key(c.name.as_bytes()), "{c:?}");
                }
                (Want::Lower(p), _) => {
                    let got = listed.unwrap().entries[c.name.as_bytes()];
                    assert!(matches!(got, Merged::Lower(l) if Some(l) == id(p)), "{c:?}");
                }
                (Want::Upper(origin), _) => {
                    let got = listed.unwrap().entries[c.name.as_bytes()];
                    let want = origin.and_then(id);
                    assert!(
                        matches!(got, Merged::Upper { lower, .. } if lower == want),
                        "{c:?}: {got:?}"
                    );
                }
            }
        }
    }
}
