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
//! inodes, entries or name bytes is refused at build time, never truncated.
//! Dependencies: layer (index, entry, whiteout), image::container (BlobLoc).

pub mod node;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::layer::data::LayerData;
use crate::layer::entry::{EntryKind, LayerEntry, Meta, Xattr, split_parent};
use crate::layer::prepare::PreparedLayer;
use crate::layer::whiteout::{Class, META_PREFIX, classify};
use node::{DataRef, DirEntry, Node, NodeId, NodeKind};

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
    nodes: Vec<Node>,
    entries: Vec<DirEntry>,
    names: Vec<u8>,
    /// The bytes of each layer, for `DataRef::layer`.
    pub data_files: Vec<LayerData>,
    /// Sum of regular file sizes (each inode once).
    pub total_bytes: u64,
}

impl LowerTree {
    /// Applies `layers` bottom to top.
    pub fn build(layers: &[PreparedLayer]) -> Result<LowerTree, TreeError> {
        let mut b = Builder::new();
        for (i, l) in layers.iter().enumerate() {
            let layer = u16::try_from(i).map_err(|_| TreeError {
                layer: Some(i),
                reason: "too many layers".into(),
            })?;
            b.apply(layer, &l.index.entries)
                .map_err(|reason| TreeError {
                    layer: Some(i),
                    reason,
                })?;
        }
        let mut tree = b.freeze().map_err(|reason| TreeError {
            layer: None,
            reason,
        })?;
        tree.data_files = layers.iter().map(|l| l.data.clone()).collect();
        Ok(tree)
    }

    /// An empty tree (just a root directory).
    pub fn empty() -> LowerTree {
        let root = implicit_dir(0);
        LowerTree {
            nodes: vec![Node {
                meta: root.meta,
                layer: root.layer,
                nlink: 2,
                parent: Self::ROOT,
                kind: NodeKind::Dir { first: 0, len: 0 },
                xattrs: Box::default(),
            }],
            entries: Vec::new(),
            names: Vec::new(),
            data_files: Vec::new(),
            total_bytes: 0,
        }
    }

    /// The root directory.
    pub const ROOT: NodeId = NodeId(0);

    /// Number of nodes (inodes).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Never true: there is always a root.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A node; `None` for an id not of this tree.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.0 as usize)
    }

    /// The children of a directory, sorted by name (empty for non-directories).
    pub fn children(&self, dir: NodeId) -> &[DirEntry] {
        match self.node(dir).map(|n| &n.kind) {
            Some(NodeKind::Dir { first, len }) => {
                let first = *first as usize;
                self.entries
                    .get(first..first + *len as usize)
                    .unwrap_or_default()
            }
            _ => &[],
        }
    }

    /// The name of a directory entry.
    pub fn name(&self, e: &DirEntry) -> &[u8] {
        let start = e.name_start as usize;
        self.names
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

    /// Bytes of heap the tree holds: nodes, directory entries, names, symlink targets and
    /// xattrs (what a mount costs per entry, without the allocator's own overhead).
    pub fn heap_bytes(&self) -> usize {
        let extra: usize = self
            .nodes
            .iter()
            .map(|n| {
                let target = match &n.kind {
                    NodeKind::Symlink(t) => t.len(),
                    _ => 0,
                };
                target
                    + n.xattrs
                        .iter()
                        .map(|(k, v)| 32 + k.len() + v.len())
                        .sum::<usize>()
            })
            .sum();
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.entries.capacity() * std::mem::size_of::<DirEntry>()
            + self.names.capacity()
            + extra
    }

    /// Number of directory entries, counting every name of a hard link.
    pub fn entry_count(&self) -> usize {
        self.entries.len() + 1
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
        self.walk_dir(Self::ROOT, &mut path, &mut f);
    }

    fn walk_dir(&self, dir: NodeId, path: &mut Vec<u8>, f: &mut impl FnMut(&[u8], NodeId)) {
        for e in self.children(dir) {
            let len = path.len();
            if len > 0 {
                path.push(b'/');
            }
            path.extend_from_slice(self.name(e));
            f(path, e.node);
            if self.node(e.node).is_some_and(Node::is_dir) {
                self.walk_dir(e.node, path, f);
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

    /// Renumbers reachable nodes breadth first and lays children out contiguously; an error
    /// if the result is too large for the arenas' 32-bit indexes.
    fn freeze(mut self) -> Result<LowerTree, String> {
        let mut new_id: HashMap<usize, u32> = HashMap::new();
        let mut order: Vec<usize> = vec![0];
        new_id.insert(0, 0);
        let mut entries: Vec<DirEntry> = Vec::new();
        let mut names: Vec<u8> = Vec::new();
        let mut ranges: HashMap<usize, (u32, u32)> = HashMap::new();
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
            let new_id_d = new_id[&d];
            let mut subdirs: u32 = 0;
            for (name, child) in kids {
                let id = match new_id.entry(child) {
                    Entry::Occupied(known) => *known.get(),
                    Entry::Vacant(new) => {
                        let id = arena_index(order.len(), INODES)?;
                        new.insert(id);
                        order.push(child);
                        nlink.push(0);
                        parent.push(new_id_d);
                        if matches!(self.nodes[child].kind, BKind::Dir(_)) {
                            queue.push_back(child);
                        }
                        id
                    }
                };
                // Link counts are bounded by the entry count; saturating keeps an absurd one
                // from wrapping.
                if matches!(self.nodes[child].kind, BKind::Dir(_)) {
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
            let id = new_id[&d] as usize;
            nlink[id] = subdirs.saturating_add(2);
            let len = arena_index(entries.len() - first as usize, ENTRIES)?;
            ranges.insert(d, (first, len));
        }
        // Directories were emptied above; their kind is rebuilt from `ranges`.
        let mut total_bytes = 0;
        let mut nodes = Vec::with_capacity(order.len());
        for (i, &old) in order.iter().enumerate() {
            let b = &mut self.nodes[old];
            let kind = match std::mem::replace(&mut b.kind, BKind::Dir(BTreeMap::new())) {
                BKind::Dir(_) => {
                    let (first, len) = ranges.get(&old).copied().unwrap_or((0, 0));
                    NodeKind::Dir { first, len }
                }
                BKind::Leaf(k) => k,
            };
            total_bytes += kind.size() * u64::from(matches!(kind, NodeKind::File(_)));
            nodes.push(Node {
                meta: b.meta,
                layer: b.layer,
                nlink: nlink[i],
                parent: NodeId(parent[i]),
                kind,
                xattrs: std::mem::take(&mut b.xattrs).into_boxed_slice(),
            });
        }
        names.shrink_to_fit();
        Ok(LowerTree {
            nodes,
            entries,
            names,
            data_files: Vec::new(),
            total_bytes,
        })
    }
}

/// What [`arena_index`] counts, for its error.
const INODES: &str = "inodes";
const ENTRIES: &str = "directory entries";
const NAME_BYTES: &str = "bytes of names";

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
        assert_eq!(format!("{:?}", empty.nodes), format!("{:?}", built.nodes));
        assert!(empty.children(LowerTree::ROOT).is_empty());
        assert_eq!(empty.entry_count(), 1);
    }

    #[test]
    fn children_out_of_the_entry_arena_are_none() {
        for (first, len) in [(5, 3), (0, 1), (u32::MAX, u32::MAX)] {
            let mut t = LowerTree::empty();
            t.nodes[0].kind = NodeKind::Dir { first, len };
            assert!(t.children(LowerTree::ROOT).is_empty(), "{first}+{len}");
            assert_eq!(t.lookup(LowerTree::ROOT, b"x"), None);
            assert_eq!(t.resolve(b"/x"), None);
        }
    }
}
