//! The overlayfs lookup rule: what a merged directory shows under a name, from the upper's
//! entry of that name and the lower tree. Written once, for the writable view (`cow`, over
//! the live upper directory) and for `changes` (over the upper read whole), as the kernel's
//! `ovl_lookup` applies it:
//! - a whiteout hides the name;
//! - an upper directory merges with the lower directory of its name, unless it is opaque,
//!   which cuts the lower off, or carries a redirect, which re-points it at the lower
//!   directory it was renamed from: an absolute redirect from the lower root (even below an
//!   opaque directory), a relative one in its parent's lower directory;
//! - a metadata-only copy takes its data from the lower file of its name, or of its redirect;
//! - anything else in the upper stands alone;
//! - without an upper entry, the lower tree's entry shows (none below an opaque directory).
//!
//! Pure: what an upper entry is comes from `upper::format`, so this is tested on trees built
//! in memory. Dependencies: tree, upper::format (Role, Redirect).

use crate::tree::LowerTree;
use crate::tree::node::{NodeId, NodeKind};
use crate::upper::format::{Redirect, Role};

/// What a merged directory shows under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Found {
    /// Nothing: no entry anywhere, or the upper's whiteout hides the lower one.
    Nothing,
    /// The upper's entry, with the lower node it takes content from ([`origin`]).
    Upper {
        /// The lower directory merged under it, or a metadata-only copy's data file.
        lower: Option<NodeId>,
    },
    /// The lower entry, as the image has it.
    Lower(NodeId),
}

/// What the merged directory whose lower directory is `dir` (`None` when it has none: opaque,
/// or made in the upper) shows under `name`, given the role of the upper's entry of that name
/// (`None` when the upper has none).
pub fn child(tree: &LowerTree, dir: Option<NodeId>, name: &[u8], upper: Option<&Role>) -> Found {
    match upper {
        Some(Role::Whiteout) => Found::Nothing,
        Some(role) => Found::Upper {
            lower: origin(tree, dir, name, role),
        },
        None => match dir.and_then(|d| tree.lookup(d, name)) {
            Some(id) => Found::Lower(id),
            None => Found::Nothing,
        },
    }
}

/// The lower node an upper entry of `role` named `name` takes content from, in a merged
/// directory whose lower directory is `dir`: a directory's merged lower directory, a
/// metadata-only copy's data file; `None` for anything else, an opaque directory, or an
/// origin that is missing or of another type.
pub fn origin(tree: &LowerTree, dir: Option<NodeId>, name: &[u8], role: &Role) -> Option<NodeId> {
    let is = |id: &NodeId, dir: bool| {
        tree.node(*id).is_some_and(|n| match dir {
            true => n.is_dir(),
            false => matches!(n.kind, NodeKind::File(_)),
        })
    };
    match role {
        Role::Dir {
            opaque: false,
            redirect,
        } => redirected(tree, dir, name, redirect.as_ref()).filter(|id| is(id, true)),
        Role::Metacopy { redirect } => {
            redirected(tree, dir, name, redirect.as_ref()).filter(|id| is(id, false))
        }
        Role::Dir { opaque: true, .. } | Role::Whiteout | Role::Plain => None,
    }
}

/// The lower entry an upper entry named `name` in lower directory `dir` continues: its
/// redirect's, or the one of its own name.
fn redirected(
    tree: &LowerTree,
    dir: Option<NodeId>,
    name: &[u8],
    r: Option<&Redirect>,
) -> Option<NodeId> {
    match r {
        Some(Redirect::Absolute(p)) => tree.resolve(p),
        Some(Redirect::Relative(n)) => tree.lookup(dir?, n),
        None => tree.lookup(dir?, name),
    }
}

/// The lookup rule's cases, one table for every reader of an upper to run: the pure rule
/// here, the upper read whole (`changes`), the live writable view (`cow`).
#[cfg(test)]
pub(crate) mod cases {
    use std::path::PathBuf;

    use super::Found;
    use crate::image::container::BlobLoc;
    use crate::layer::LayerIndex;
    use crate::layer::data::LayerData;
    use crate::layer::entry::{EntryKind, LayerEntry, Meta};
    use crate::layer::prepare::PreparedLayer;
    use crate::tree::LowerTree;
    use crate::upper::format::{Redirect, Role, parse_redirect};

    /// Attributes of every lower entry.
    pub const META: Meta = Meta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: 100,
        mtime_nsec: 0,
    };

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
        let layer = PreparedLayer::new(
            LayerIndex {
                entries,
                tar_size: 0,
            },
            LayerData::host(BlobLoc {
                file: PathBuf::new(),
                offset: 0,
                len: 0,
            }),
        );
        LowerTree::build(&[layer]).unwrap()
    }

    /// The lower tree of every case.
    pub const LOWER: &[(&str, bool)] = &[
        ("a", true),
        ("a/f", false),
        ("a/sub", true),
        ("a/sub/g", false),
        ("b", true),
        ("b/h", false),
        ("top", false),
    ];

    /// The upper's entry of the name looked up.
    #[derive(Clone, Copy, Debug)]
    pub enum Up {
        /// None.
        Nothing,
        /// A whiteout.
        Whiteout,
        /// A directory: opaque, and its redirect.
        Dir(bool, Option<&'static str>),
        /// A metadata-only copy and its redirect.
        Metacopy(Option<&'static str>),
        /// A file whole in the upper.
        File,
    }

    /// What shows: nothing, the upper entry with the lower path it takes content from, or
    /// the lower entry at a path.
    #[derive(Clone, Copy, Debug)]
    pub enum Want {
        /// Nothing.
        Nothing,
        /// The upper entry, over this lower path.
        Upper(Option<&'static str>),
        /// The lower entry at this path.
        Lower(&'static str),
    }

    /// One case: `name` looked up in the merged directory at `dir` (the root is `""`), which
    /// is in the upper, opaque or not.
    #[derive(Clone, Copy, Debug)]
    pub struct Case {
        pub dir: &'static str,
        pub opaque: bool,
        pub name: &'static str,
        pub up: Up,
        pub want: Want,
    }

    const fn case(dir: &'static str, opaque: bool, name: &'static str, up: Up, want: Want) -> Case {
        Case {
            dir,
            opaque,
            name,
            up,
            want,
        }
    }

    use Up as U;
    use Want as W;

    /// The table.
    pub const CASES: &[Case] = &[
        // No upper entry: the lower one shows, if there is one.
        case("", false, "a", U::Nothing, W::Lower("a")),
        case("a", false, "f", U::Nothing, W::Lower("a/f")),
        case("", false, "nope", U::Nothing, W::Nothing),
        // A whiteout hides, also where nothing is below.
        case("", false, "a", U::Whiteout, W::Nothing),
        case("", false, "nope", U::Whiteout, W::Nothing),
        // An upper directory merges with the lower one of its name...
        case("", false, "a", U::Dir(false, None), W::Upper(Some("a"))),
        case(
            "a",
            false,
            "sub",
            U::Dir(false, None),
            W::Upper(Some("a/sub")),
        ),
        // ...unless opaque, or that is no directory...
        case("", false, "a", U::Dir(true, None), W::Upper(None)),
        case("", false, "top", U::Dir(false, None), W::Upper(None)),
        // ...or a redirect points elsewhere: from the root, or beside.
        case(
            "",
            false,
            "c",
            U::Dir(false, Some("/a")),
            W::Upper(Some("a")),
        ),
        case(
            "a",
            false,
            "c",
            U::Dir(false, Some("/b")),
            W::Upper(Some("b")),
        ),
        case(
            "",
            false,
            "c",
            U::Dir(false, Some("b")),
            W::Upper(Some("b")),
        ),
        case(
            "",
            false,
            "b",
            U::Dir(false, Some("a")),
            W::Upper(Some("a")),
        ),
        case("", false, "c", U::Dir(false, Some("/top")), W::Upper(None)),
        case("", false, "c", U::Dir(false, Some("/nope")), W::Upper(None)),
        // Opaque wins over a redirect.
        case("", false, "c", U::Dir(true, Some("/a")), W::Upper(None)),
        // Below an opaque directory nothing of the lower shows, but an absolute redirect
        // still starts from the lower root.
        case("a", true, "sub", U::Nothing, W::Nothing),
        case("a", true, "f", U::Nothing, W::Nothing),
        case(
            "a",
            true,
            "d",
            U::Dir(false, Some("/b")),
            W::Upper(Some("b")),
        ),
        case("a", true, "d", U::Dir(false, Some("sub")), W::Upper(None)),
        // A metadata-only copy takes its data from the lower file of its name or redirect.
        case("", false, "top", U::Metacopy(None), W::Upper(Some("top"))),
        case(
            "",
            false,
            "x",
            U::Metacopy(Some("/a/f")),
            W::Upper(Some("a/f")),
        ),
        case("", false, "a", U::Metacopy(None), W::Upper(None)),
        case("", false, "x", U::Metacopy(None), W::Upper(None)),
        // Anything else stands alone.
        case("", false, "top", U::File, W::Upper(None)),
        case("", false, "a", U::File, W::Upper(None)),
    ];

    /// The role of the upper's entry (`None` when it has none).
    pub fn role(up: Up) -> Option<Role> {
        let redirect = |r: Option<&str>| r.map(|r| parse_redirect(r.as_bytes()).unwrap());
        match up {
            Up::Nothing => None,
            Up::Whiteout => Some(Role::Whiteout),
            Up::Dir(opaque, r) => Some(Role::Dir {
                opaque,
                redirect: redirect(r),
            }),
            Up::Metacopy(r) => Some(Role::Metacopy {
                redirect: redirect(r),
            }),
            Up::File => Some(Role::Plain),
        }
    }

    /// What the case wants, in `tree`'s node ids.
    pub fn want(tree: &LowerTree, w: Want) -> Found {
        let id = |p: &str| tree.resolve(p.as_bytes()).expect("in the lower tree");
        match w {
            Want::Nothing => Found::Nothing,
            Want::Upper(p) => Found::Upper { lower: p.map(id) },
            Want::Lower(p) => Found::Lower(id(p)),
        }
    }

    /// A redirect's value as written on disk.
    pub fn redirect_value(r: &Redirect) -> Vec<u8> {
        match r {
            Redirect::Absolute(p) => [b"/", &p[..]].concat(),
            Redirect::Relative(n) => n.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cases::{CASES, LOWER, lower, role, want};
    use super::*;

    #[test]
    fn merge_rule_table() {
        let tree = lower(LOWER);
        for c in CASES {
            let dir = match c.opaque {
                true => None,
                false => tree.resolve(c.dir.as_bytes()),
            };
            let got = child(&tree, dir, c.name.as_bytes(), role(c.up).as_ref());
            assert_eq!(got, want(&tree, c.want), "{c:?}");
        }
    }
}
