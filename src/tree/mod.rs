//! The merged lower tree: every layer applied bottom to top by the rules of the OCI
//! image-spec, `layer.md` (<https://github.com/opencontainers/image-spec/blob/main/layer.md>).
//!
//! Per layer, in two passes:
//! 1. whiteouts: `.wh..wh..opq` empties its directory of lower children and `.wh.NAME` removes
//!    `NAME`, wherever they stand in the tar, and before anything else of the layer, so a
//!    whiteout never hides an entry of its own layer;
//! 2. entries in tar order: a directory over a directory replaces its attributes and keeps its
//!    children; anything else replaces the old path (a file over a directory drops the whole
//!    subtree); missing parents are created (0755, root, mtime 0, as Docker's extraction does;
//!    an existing parent keeps its attributes); a whiteout under a missing parent is a no-op;
//!    hard links name the node their target names at that point, in this layer or a lower one;
//!    of duplicate entries the last wins; the root takes its attributes from a `./` entry.
//!
//! Building uses a mutable arena; `freeze` then renumbers the reachable nodes breadth first
//! (deterministic inode numbers) into the immutable [`LowerTree`], which needs no locks. Its
//! arenas are indexed by `u32` (half the memory of `usize` per entry): a tree past 4 Gi
//! inodes, entries or name bytes is refused at build time, never truncated. The frozen tree is
//! its flat encoding ([`flat`]): records read in place, from memory after a build or from a
//! mapped cache file, so serving a tree costs no per-node allocation.
//! Dependencies: layer (index, entry, whiteout), sys (mapping).

pub mod flat;
pub mod node;

use std::collections::{BTreeMap, VecDeque};

use crate::layer::LayerIndex;
use crate::layer::data::LayerData;
use crate::layer::entry::{EntryKind, LayerEntry, Meta, Xattr, split_parent};
use crate::layer::prepare::PreparedLayer;
use crate::layer::whiteout::{Class, META_PREFIX, classify};
use flat::Flat;
use node::{DataRef, DirEntry, Node, NodeId, NodeKind, NodeRec};

/// Attributes of a directory no layer describes (the root without a `./` entry, implicit
/// parents): what Docker and umoci create.
const IMPLICIT_DIR_MODE: u32 = 0o755;

/// A layer-rule violation (which layer, and what), or a merged tree too large to number.
#[derive(Debug, PartialEq, Eq)]
pub struct TreeError {
    /// Layer index, bottom = 0; `None` when no one layer is at fault (the merged tree is
    /// larger than its 32-bit numbering).
    pub layer: Option<usize>,
    /// The problem, naming the path.
    pub reason: String,
}

/// The merged, immutable view of a layer stack.
#[derive(Debug)]
pub struct LowerTree {
    flat: Flat,
    /// The bytes of each layer, for `DataRef::layer`.
    pub data_files: Vec<LayerData>,
    /// Sum of regular file sizes (each inode once).
    pub total_bytes: u64,
}

impl LowerTree {
    /// Applies `layers` bottom to top.
    pub fn build(layers: &[PreparedLayer]) -> Result<LowerTree, TreeError> {
        let mut indexes = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            indexes.push(l.index().map_err(|reason| TreeError {
                layer: Some(i),
                reason,
            })?);
        }
        let refs: Vec<&LayerIndex> = indexes.iter().map(|i| &**i).collect();
        let bytes = Self::encode(&refs)?;
        let flat = Flat::from_bytes(&bytes).ok_or_else(|| TreeError {
            layer: None,
            reason: "the merged tree does not decode".into(),
        })?;
        Ok(Self::from_flat(
            flat,
            layers.iter().map(|l| l.data.clone()).collect(),
        ))
    }

    /// The flat encoding of the tree `indexes` make, bottom to top (see [`flat`]).
    pub fn encode(indexes: &[&LayerIndex]) -> Result<Vec<u8>, TreeError> {
        let mut b = Builder::new();
        for (i, index) in indexes.iter().enumerate() {
            let layer = u16::try_from(i).map_err(|_| TreeError {
                layer: Some(i),
                reason: "too many layers".into(),
            })?;
            b.apply(layer, &index.entries).map_err(|reason| TreeError {
                layer: Some(i),
                reason,
            })?;
        }
        b.freeze().map_err(|reason| TreeError {
            layer: None,
            reason,
        })
    }

    /// The tree a decoded encoding holds, reading file data from `data_files`.
    pub fn from_flat(flat: Flat, data_files: Vec<LayerData>) -> LowerTree {
        LowerTree {
            total_bytes: flat.total_bytes,
            flat,
            data_files,
        }
    }

    /// An empty tree (just a root directory).
    pub fn empty() -> LowerTree {
        match Self::encode(&[]).ok().and_then(|b| Flat::from_bytes(&b)) {
            Some(flat) => Self::from_flat(flat, Vec::new()),
            None => unreachable!("an empty tree always encodes"),
        }
    }

    /// The root directory.
    pub const ROOT: NodeId = NodeId(0);

    /// Number of nodes (inodes).
    pub fn len(&self) -> usize {
        self.flat.node_recs().len()
    }

    /// Never true: there is always a root.
    pub fn is_empty(&self) -> bool {
        self.flat.node_recs().is_empty()
    }

    /// Whether the tree is served from a mapped cache file.
    pub fn is_mapped(&self) -> bool {
        self.flat.is_mapped()
    }

    /// A node's record, read in place; `None` for an id not of this tree.
    pub fn rec(&self, id: NodeId) -> Option<&NodeRec> {
        self.flat.node_recs().get(id.0 as usize)
    }

    /// A node, decoded (its symlink target and xattrs copied out); `None` for an id not of
    /// this tree. For attributes alone, [`LowerTree::rec`] copies nothing.
    pub fn node(&self, id: NodeId) -> Option<Node> {
        let r = self.rec(id)?;
        let wide = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        let kind = match r.file_type_bits() {
            libc::S_IFDIR => NodeKind::Dir {
                first: wide(r.a),
                len: wide(r.b),
            },
            libc::S_IFREG => NodeKind::File(DataRef {
                layer: r.layer,
                offset: r.a,
                size: r.b,
            }),
            libc::S_IFLNK => NodeKind::Symlink(self.target(id).unwrap_or_default().into()),
            libc::S_IFCHR => NodeKind::CharDev {
                major: wide(r.a),
                minor: wide(r.b),
            },
            libc::S_IFBLK => NodeKind::BlockDev {
                major: wide(r.a),
                minor: wide(r.b),
            },
            _ => NodeKind::Fifo,
        };
        Some(Node {
            meta: r.meta(),
            layer: r.layer,
            nlink: r.nlink,
            parent: NodeId(r.parent),
            kind,
            xattrs: self.xattrs(id).map(|(k, v)| (k.into(), v.into())).collect(),
        })
    }

    /// A symlink's target, in place.
    pub fn target(&self, id: NodeId) -> Option<&[u8]> {
        let r = self.rec(id)?;
        if r.file_type_bits() != libc::S_IFLNK {
            return None;
        }
        let start = usize::try_from(r.a).ok()?;
        self.flat
            .extra()
            .get(start..start.checked_add(usize::try_from(r.b).ok()?)?)
    }

    /// A node's extended attributes, sorted by name, in place.
    pub fn xattrs(&self, id: NodeId) -> impl Iterator<Item = (&[u8], &[u8])> {
        let at = self.rec(id).map_or(NodeRec::NO_XATTRS, |r| r.xattrs);
        flat::xattrs(self.flat.extra(), at)
    }

    /// One extended attribute's value.
    pub fn xattr(&self, id: NodeId, name: &[u8]) -> Option<&[u8]> {
        self.xattrs(id).find(|(k, _)| *k == name).map(|(_, v)| v)
    }

    /// The children of a directory, sorted by name (empty for non-directories).
    pub fn children(&self, dir: NodeId) -> &[DirEntry] {
        let Some(r) = self.rec(dir).filter(|r| r.is_dir()) else {
            return &[];
        };
        let (Ok(first), Ok(len)) = (usize::try_from(r.a), usize::try_from(r.b)) else {
            return &[];
        };
        first
            .checked_add(len)
            .and_then(|end| self.flat.entries().get(first..end))
            .unwrap_or_default()
    }

    /// The name of a directory entry.
    pub fn name(&self, e: &DirEntry) -> &[u8] {
        let start = e.name_start as usize;
        self.flat
            .names()
            .get(start..start + e.name_len as usize)
            .unwrap_or_default()
    }

    /// Looks a name up in a directory.
    pub fn lookup(&self, dir: NodeId, name: &[u8]) -> Option<NodeId> {
        let kids = self.children(dir);
        kids.binary_search_by(|e| self.name(e).cmp(name))
            .ok()
            .and_then(|i| kids.get(i))
            .map(|e| e.node)
    }

    /// Resolves a path relative to the root without following symlinks (`""` is the root).
    pub fn resolve(&self, path: &[u8]) -> Option<NodeId> {
        let mut cur = Self::ROOT;
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            cur = self.lookup(cur, comp)?;
        }
        Some(cur)
    }

    /// Bytes of the tree's encoding: nodes, directory entries, names, symlink targets and
    /// xattrs (what the tree costs per entry once every page of it is touched).
    pub fn heap_bytes(&self) -> usize {
        self.flat.len()
    }

    /// Number of directory entries, counting every name of a hard link.
    pub fn entry_count(&self) -> usize {
        self.flat.entries().len() + 1
    }

    /// Every path naming `id` (several for a hard link), found by a full walk: for the rare
    /// copy-up of a hard-linked file.
    pub fn paths_of(&self, id: NodeId) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        self.walk(|p, n| {
            if n == id {
                out.push(p.to_vec());
            }
        });
        out
    }

    /// Visits every path depth first in name order: `(path, node)`, the root as `""`.
    pub fn walk(&self, mut f: impl FnMut(&[u8], NodeId)) {
        let mut path = Vec::new();
        f(&path, Self::ROOT);
        self.walk_dir(Self::ROOT, &mut path, &mut f, 0);
    }

    fn walk_dir(
        &self,
        dir: NodeId,
        path: &mut Vec<u8>,
        f: &mut impl FnMut(&[u8], NodeId),
        depth: usize,
    ) {
        // A damaged encoding could make a directory its own descendant; real trees are far
        // shallower than this (a path holds at most PATH_MAX / 2 components).
        if depth > 4096 {
            return;
        }
        for e in self.children(dir) {
            let len = path.len();
            if len > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(self.name(e));
            f(path, e.node);
            if self.rec(e.node).is_some_and(NodeRec::is_dir) {
                self.walk_dir(e.node, path, f, depth + 1);
            }
            path.truncate(len);
        }
    }
}

/// A node while layers are being applied.
struct BNode {
    meta: Meta,
    layer: u16,
    kind: BKind,
    xattrs: Vec<Xattr>,
}

enum BKind {
    Dir(BTreeMap<Box<[u8]>, usize>),
    Leaf(NodeKind),
}

struct Builder {
    nodes: Vec<BNode>,
}

impl Builder {
    fn new() -> Builder {
        Builder {
            nodes: vec![implicit_dir(0)],
        }
    }

    fn children_mut(&mut self, dir: usize) -> Option<&mut BTreeMap<Box<[u8]>, usize>> {
        match &mut self.nodes[dir].kind {
            BKind::Dir(c) => Some(c),
            BKind::Leaf(_) => None,
        }
    }

    fn child(&self, dir: usize, name: &[u8]) -> Option<usize> {
        match &self.nodes[dir].kind {
            BKind::Dir(c) => c.get(name).copied(),
            BKind::Leaf(_) => None,
        }
    }

    fn is_dir(&self, n: usize) -> bool {
        matches!(self.nodes[n].kind, BKind::Dir(_))
    }

    /// Walks to the directory at `path`, creating missing components as implicit directories
    /// of `layer`. `Ok(None)` when a component exists but is not a directory.
    fn ensure_dir(&mut self, path: &[u8], layer: u16) -> Option<usize> {
        let mut cur = 0;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = match self.child(cur, comp) {
                Some(n) if self.is_dir(n) => n,
                Some(_) => return None,
                None => {
                    let n = self.push(implicit_dir(layer));
                    self.children_mut(cur)?.insert(comp.into(), n);
                    n
                }
            };
        }
        Some(cur)
    }

    fn lookup_path(&self, path: &[u8]) -> Option<usize> {
        let mut cur = 0;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            cur = self.child(cur, comp)?;
        }
        Some(cur)
    }

    fn push(&mut self, n: BNode) -> usize {
        self.nodes.push(n);
        self.nodes.len() - 1
    }

    fn apply(&mut self, layer: u16, entries: &[LayerEntry]) -> Result<(), String> {
        // Pass 1: whiteouts and opaque markers, which only ever hide lower layers' entries.
        for e in entries {
            let Some((parent, name)) = split_parent(&e.path) else {
                continue;
            };
            let class = classify(name);
            if matches!(class, Class::Normal | Class::Ignored) || in_aufs_meta(parent) {
                continue;
            }
            // Under a missing path or a non-directory there is nothing to hide, and the
            // whiteout creates nothing: extraction semantics, as `umoci unpack` (overlay-based
            // engines would leave an empty directory behind; see the man page).
            let Some(dir) = self.lookup_path(parent).filter(|&d| self.is_dir(d)) else {
                continue;
            };
            let Some(kids) = self.children_mut(dir) else {
                continue;
            };
            match class {
                Class::Opaque => kids.clear(),
                Class::Whiteout(target) => {
                    kids.remove(target);
                }
                Class::Normal | Class::Ignored => {}
            }
        }
        // Pass 2: everything else, in archive order.
        for e in entries {
            let shown = || String::from_utf8_lossy(&e.path).into_owned();
            let Some((parent, name)) = split_parent(&e.path) else {
                // The root's own entry: only a directory can describe it.
                if e.kind == EntryKind::Dir {
                    let root = &mut self.nodes[0];
                    root.meta = e.meta;
                    root.xattrs = sorted_xattrs(&e.xattrs);
                    root.layer = layer;
                }
                continue;
            };
            if classify(name) != Class::Normal || in_aufs_meta(parent) {
                continue;
            }
            let dir = self
                .ensure_dir(parent, layer)
                .ok_or_else(|| format!("{}: a parent is not a directory", shown()))?;
            let existing = self.child(dir, name);
            let node = match &e.kind {
                EntryKind::Dir => {
                    if let Some(n) = existing.filter(|&n| self.is_dir(n)) {
                        let node = &mut self.nodes[n];
                        node.meta = e.meta;
                        node.xattrs = sorted_xattrs(&e.xattrs);
                        node.layer = layer;
                        continue;
                    }
                    self.push(BNode {
                        meta: e.meta,
                        layer,
                        kind: BKind::Dir(BTreeMap::new()),
                        xattrs: sorted_xattrs(&e.xattrs),
                    })
                }
                EntryKind::HardLink(target) => {
                    let shown_t = String::from_utf8_lossy(target);
                    let t = self
                        .lookup_path(target)
                        .ok_or_else(|| format!("{}: hard link to missing {shown_t}", shown()))?;
                    if self.is_dir(t) {
                        return Err(format!("{}: hard link to directory {shown_t}", shown()));
                    }
                    t
                }
                other => {
                    let kind = match other {
                        EntryKind::File { offset, size } => NodeKind::File(DataRef {
                            layer,
                            offset: *offset,
                            size: *size,
                        }),
                        EntryKind::Symlink(t) => NodeKind::Symlink(t.clone()),
                        EntryKind::CharDev { major, minor } => NodeKind::CharDev {
                            major: *major,
                            minor: *minor,
                        },
                        EntryKind::BlockDev { major, minor } => NodeKind::BlockDev {
                            major: *major,
                            minor: *minor,
                        },
                        EntryKind::Fifo => NodeKind::Fifo,
                        EntryKind::Dir | EntryKind::HardLink(_) => continue,
                    };
                    self.push(BNode {
                        meta: e.meta,
                        layer,
                        kind: BKind::Leaf(kind),
                        xattrs: sorted_xattrs(&e.xattrs),
                    })
                }
            };
            if let Some(kids) = self.children_mut(dir) {
                kids.insert(name.into(), node);
            }
        }
        Ok(())
    }

    /// Renumbers reachable nodes breadth first and lays children out contiguously, into the
    /// flat encoding; an error if the result is too large for its 32-bit indexes.
    fn freeze(mut self) -> Result<Vec<u8>, String> {
        const NONE: u32 = u32::MAX;
        let count = self.nodes.len();
        let mut new_id: Vec<u32> = vec![NONE; count];
        let mut order: Vec<usize> = vec![0];
        new_id[0] = 0;
        let mut entries: Vec<DirEntry> = Vec::new();
        let mut names: Vec<u8> = Vec::new();
        let mut ranges: Vec<(u32, u32)> = vec![(0, 0); count];
        let mut nlink: Vec<u32> = vec![2];
        let mut parent: Vec<u32> = vec![0];
        let mut queue = VecDeque::from([0usize]);
        while let Some(d) = queue.pop_front() {
            let BKind::Dir(kids) =
                std::mem::replace(&mut self.nodes[d].kind, BKind::Dir(BTreeMap::new()))
            else {
                continue;
            };
            let first = arena_index(entries.len(), ENTRIES)?;
            let new_id_d = new_id[d];
            let mut subdirs: u32 = 0;
            for (name, child) in kids {
                let child_is_dir = matches!(self.nodes[child].kind, BKind::Dir(_));
                let id = match new_id[child] {
                    NONE => {
                        let id = arena_index(order.len(), INODES)?;
                        if id == NONE {
                            return Err(format!(
                                "the merged tree is too large: more than {} {INODES}",
                                NONE - 1
                            ));
                        }
                        new_id[child] = id;
                        order.push(child);
                        nlink.push(0);
                        parent.push(new_id_d);
                        if child_is_dir {
                            queue.push_back(child);
                        }
                        id
                    }
                    known => known,
                };
                // Link counts are bounded by the entry count; saturating keeps an absurd one
                // from wrapping.
                if child_is_dir {
                    subdirs = subdirs.saturating_add(1);
                    nlink[id as usize] = 2;
                } else {
                    nlink[id as usize] = nlink[id as usize].saturating_add(1);
                }
                entries.push(DirEntry {
                    name_start: arena_index(names.len(), NAME_BYTES)?,
                    name_len: arena_index(name.len(), NAME_BYTES)?,
                    node: NodeId(id),
                });
                names.extend_from_slice(&name);
            }
            nlink[new_id_d as usize] = subdirs.saturating_add(2);
            let len = arena_index(entries.len() - first as usize, ENTRIES)?;
            ranges[d] = (first, len);
        }
        // Directories were emptied above; their runs come from `ranges`.
        let mut total_bytes = 0;
        let mut extra: Vec<u8> = Vec::new();
        let mut recs = Vec::with_capacity(order.len());
        for (i, &old) in order.iter().enumerate() {
            let b = &mut self.nodes[old];
            let (ty, a, bb) = match std::mem::replace(&mut b.kind, BKind::Dir(BTreeMap::new())) {
                BKind::Dir(_) => {
                    let (first, len) = ranges[old];
                    (libc::S_IFDIR, u64::from(first), u64::from(len))
                }
                BKind::Leaf(k) => match k {
                    NodeKind::File(d) => {
                        total_bytes += d.size;
                        (libc::S_IFREG, d.offset, d.size)
                    }
                    NodeKind::Symlink(t) => {
                        let at = extra.len() as u64;
                        extra.extend_from_slice(&t);
                        (libc::S_IFLNK, at, t.len() as u64)
                    }
                    NodeKind::CharDev { major, minor } => {
                        (libc::S_IFCHR, u64::from(major), u64::from(minor))
                    }
                    NodeKind::BlockDev { major, minor } => {
                        (libc::S_IFBLK, u64::from(major), u64::from(minor))
                    }
                    NodeKind::Fifo => (libc::S_IFIFO, 0, 0),
                    NodeKind::Dir { .. } => (libc::S_IFDIR, 0, 0),
                },
            };
            let xattrs = match b.xattrs.is_empty() {
                true => NodeRec::NO_XATTRS,
                false => {
                    let at = arena_index(extra.len(), EXTRA_BYTES)?;
                    flat::put_xattrs(&mut extra, b.xattrs.iter().map(|(k, v)| (&**k, &**v)));
                    at
                }
            };
            recs.push(NodeRec {
                mtime: b.meta.mtime,
                a,
                b: bb,
                mode: ty | (b.meta.mode & 0o7777),
                uid: b.meta.uid,
                gid: b.meta.gid,
                mtime_nsec: b.meta.mtime_nsec,
                nlink: nlink[i],
                parent: parent[i],
                xattrs,
                layer: b.layer,
                pad: 0,
            });
        }
        arena_index(extra.len(), EXTRA_BYTES)?;
        Ok(flat::encode(&flat::Parts {
            nodes: &recs,
            entries: &entries,
            names: &names,
            extra: &extra,
            total_bytes,
        }))
    }
}

/// What [`arena_index`] counts, for its error.
const INODES: &str = "inodes";
const ENTRIES: &str = "directory entries";
const NAME_BYTES: &str = "bytes of names";
const EXTRA_BYTES: &str = "bytes of symlink targets and xattrs";

/// A position or length in one of the tree's arenas as the `u32` the arena stores.
fn arena_index(n: usize, what: &str) -> Result<u32, String> {
    u32::try_from(n).map_err(|_| {
        format!(
            "the merged tree is too large: more than {} {what}",
            u32::MAX
        )
    })
}

/// Whether a parent path lies inside AUFS metadata (`.wh..wh.plnk/...`): like the
/// metadata entry itself, everything under it is not part of the image (Docker's
/// `UnpackLayer` skips the whole subtree).
fn in_aufs_meta(parent: &[u8]) -> bool {
    parent
        .split(|&b| b == b'/')
        .any(|c| c.starts_with(META_PREFIX))
}

fn implicit_dir(layer: u16) -> BNode {
    BNode {
        meta: Meta {
            mode: IMPLICIT_DIR_MODE,
            uid: 0,
            gid: 0,
            mtime: 0,
            mtime_nsec: 0,
        },
        layer,
        kind: BKind::Dir(BTreeMap::new()),
        xattrs: Vec::new(),
    }
}

/// Sorted by name, last value of a repeated name winning (as setxattr in archive order would).
fn sorted_xattrs(x: &[Xattr]) -> Vec<Xattr> {
    let mut m: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
    for (k, v) in x {
        m.insert(k, v);
    }
    m.into_iter().map(|(k, v)| (k.into(), v.into())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_index_refuses_what_u32_cannot_hold() {
        let max = u32::MAX as usize;
        assert_eq!(arena_index(max, INODES), Ok(u32::MAX));
        let e = arena_index(max + 1, INODES).unwrap_err();
        assert_eq!(
            e,
            "the merged tree is too large: more than 4294967295 inodes"
        );
        assert!(!e.contains('\n'));
    }

    #[test]
    fn empty_tree_is_the_root_an_empty_stack_builds() {
        let built = LowerTree::build(&[]).unwrap();
        let empty = LowerTree::empty();
        assert_eq!(empty.len(), 1);
        assert_eq!(
            format!("{:?}", empty.node(LowerTree::ROOT)),
            format!("{:?}", built.node(LowerTree::ROOT))
        );
        assert!(empty.children(LowerTree::ROOT).is_empty());
        assert_eq!(empty.entry_count(), 1);
        assert_eq!(
            empty.rec(LowerTree::ROOT).map(NodeRec::st_mode),
            Some(libc::S_IFDIR | 0o755)
        );
    }

    #[test]
    fn children_out_of_the_entry_arena_are_none() {
        for (first, len) in [
            (5, 3),
            (0, 1),
            (u64::from(u32::MAX), u64::MAX),
            (u64::MAX, 1),
        ] {
            let root = NodeRec {
                mode: libc::S_IFDIR | 0o755,
                a: first,
                b: len,
                xattrs: 9,
                ..NodeRec::default()
            };
            let bytes = flat::encode(&flat::Parts {
                nodes: &[root],
                entries: &[],
                names: b"",
                extra: b"",
                total_bytes: 0,
            });
            let t = LowerTree::from_flat(Flat::from_bytes(&bytes).unwrap(), Vec::new());
            assert!(t.children(LowerTree::ROOT).is_empty(), "{first}+{len}");
            assert_eq!(t.lookup(LowerTree::ROOT, b"x"), None);
            assert_eq!(t.resolve(b"/x"), None);
            assert_eq!(t.xattrs(LowerTree::ROOT).count(), 0);
            assert!(t.node(LowerTree::ROOT).is_some());
        }
    }

    fn layer(entries: Vec<LayerEntry>) -> LayerIndex {
        LayerIndex {
            entries,
            tar_size: 0,
        }
    }

    fn entry(path: &str, mode: u32, kind: EntryKind, xattrs: Vec<Xattr>) -> LayerEntry {
        LayerEntry {
            path: path.as_bytes().into(),
            meta: Meta {
                mode,
                uid: 1,
                gid: 2,
                mtime: 3,
                mtime_nsec: 4,
            },
            kind,
            xattrs,
        }
    }

    #[test]
    fn every_kind_survives_the_encoding() {
        let x: Vec<Xattr> = vec![
            (b"user.b"[..].into(), b"2"[..].into()),
            (b"user.a"[..].into(), b""[..].into()),
        ];
        let l = layer(vec![
            entry("d", 0o700, EntryKind::Dir, x.clone()),
            entry(
                "d/f",
                0o4755,
                EntryKind::File {
                    offset: 512,
                    size: 9,
                },
                vec![],
            ),
            entry("d/h", 0, EntryKind::HardLink(b"d/f"[..].into()), vec![]),
            entry("l", 0o644, EntryKind::Symlink(b"d/f"[..].into()), x.clone()),
            entry(
                "c",
                0o600,
                EntryKind::CharDev {
                    major: 259,
                    minor: 70000,
                },
                vec![],
            ),
            entry(
                "b",
                0o660,
                EntryKind::BlockDev { major: 8, minor: 1 },
                vec![],
            ),
            entry("p", 0o620, EntryKind::Fifo, vec![]),
        ]);
        let bytes = LowerTree::encode(&[&l]).unwrap();
        let t = LowerTree::from_flat(Flat::from_bytes(&bytes).unwrap(), Vec::new());
        let get = |p: &str| t.node(t.resolve(p.as_bytes()).unwrap()).unwrap();
        let d = get("d");
        assert!(d.is_dir());
        assert_eq!(
            (d.nlink, d.meta.mode, d.meta.uid, d.meta.mtime_nsec),
            (2, 0o700, 1, 4)
        );
        let names: Vec<_> = d.xattrs.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(
            names,
            [(&b"user.a"[..], &b""[..]), (&b"user.b"[..], &b"2"[..])]
        );
        let f = get("d/f");
        assert_eq!(
            f.kind,
            NodeKind::File(DataRef {
                layer: 0,
                offset: 512,
                size: 9
            })
        );
        assert_eq!((f.nlink, f.mode()), (2, libc::S_IFREG | 0o4755));
        assert_eq!(t.resolve(b"d/h"), t.resolve(b"d/f"));
        let s = get("l");
        assert_eq!(s.kind, NodeKind::Symlink(b"d/f"[..].into()));
        assert_eq!(s.mode(), libc::S_IFLNK | 0o777);
        assert_eq!(s.xattr(b"user.b"), Some(&b"2"[..]));
        let id = t.resolve(b"l").unwrap();
        assert_eq!(t.xattr(id, b"user.b"), Some(&b"2"[..]));
        assert_eq!(t.target(id), Some(&b"d/f"[..]));
        assert_eq!(get("c").kind.rdev(), libc::makedev(259, 70000));
        assert_eq!(get("b").kind, NodeKind::BlockDev { major: 8, minor: 1 });
        assert_eq!(get("p").kind, NodeKind::Fifo);
        assert_eq!(t.total_bytes, 9);
        // The root is its own parent; children name their directory.
        assert_eq!(get("").parent, LowerTree::ROOT);
        assert_eq!(get("d/f").parent, t.resolve(b"d").unwrap());
        // Encoding is deterministic.
        assert_eq!(LowerTree::encode(&[&l]).unwrap(), bytes);
    }
}
