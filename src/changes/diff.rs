//! The `docker diff`-style change list of a merged view against the image: each path of
//! one compared with the same path of the other.
//! Dependencies: changes (the merged view), tree, error.

use std::collections::BTreeMap;

use super::{Merged, MergedView, UpperNode, join};
use crate::error::{Error, Result};
use crate::tree::LowerTree;
use crate::tree::node::NodeId;

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
        && u.public_xattrs().eq(n.xattrs.iter().cloned())
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
    use std::path::PathBuf;

    use super::*;
    use crate::changes::UpperKind;
    use crate::changes::UpperTree;
    use crate::changes::fixtures::{dir, file, lower, node, whiteout, x};
    use crate::merge::cases::LOWER;

    fn changes(tree: &LowerTree, root: UpperNode) -> Vec<String> {
        let upper = UpperTree {
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
        // a/ (f, sub/g), b/ (h), top
        let tree = lower(LOWER);
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
        let upper = UpperTree {
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
