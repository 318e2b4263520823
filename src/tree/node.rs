//! Nodes of the merged lower tree, as plain data.
//!
//! One arena holds every node; a directory's children are a contiguous, name-sorted run of
//! `DirEntry`s in a second arena, so lookup is a binary search and readdir a slice. A hard
//! link is two `DirEntry`s naming one `NodeId`, so both names share an inode number and
//! `nlink`. Only directories carry children (the kind says so), and nothing here is mutable
//! after the tree is built.
//!
//! The arenas are stored as fixed-size records ([`NodeRec`], [`DirEntry`]) that are read in
//! place from the tree's flat encoding (see `tree::flat`), a mapped file once it is cached;
//! a [`Node`] is one record decoded, with its symlink target and xattrs copied out.
//! Dependencies: layer::entry.

use crate::layer::entry::{Meta, Xattr};

/// Index of a node in the tree's arena; the root is `NodeId(0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct NodeId(pub u32);

/// Where a regular file's bytes are: `size` bytes at `offset` of the layer's uncompressed tar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataRef {
    /// The layer (index into `LowerTree::data_files`).
    pub layer: u16,
    /// Offset from the start of that layer's tar.
    pub offset: u64,
    /// Length.
    pub size: u64,
}

/// What a node is. Not a layer's `EntryKind`: hard links are gone (two names of one node),
/// a directory's children are a run of the tree's arena, and a file's data may be in any
/// layer. Not the upper's `changes::UpperKind`: no sockets (no layer entry is one), and file
/// data lives in a layer, not in a host file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NodeKind {
    /// A directory whose children are `entries[first..first + len]`.
    Dir {
        /// First child in the entry arena.
        first: u32,
        /// Number of children.
        len: u32,
    },
    /// A regular file.
    File(DataRef),
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
}

impl NodeKind {
    /// The `S_IFMT` bits of this kind.
    pub fn file_type_bits(&self) -> u32 {
        match self {
            NodeKind::Dir { .. } => libc::S_IFDIR,
            NodeKind::File(_) => libc::S_IFREG,
            NodeKind::Symlink(_) => libc::S_IFLNK,
            NodeKind::CharDev { .. } => libc::S_IFCHR,
            NodeKind::BlockDev { .. } => libc::S_IFBLK,
            NodeKind::Fifo => libc::S_IFIFO,
        }
    }

    /// Apparent size: bytes of a file, length of a symlink target, 0 otherwise (directories
    /// report a size computed by the tree).
    pub fn size(&self) -> u64 {
        match self {
            NodeKind::File(d) => d.size,
            NodeKind::Symlink(t) => t.len() as u64,
            _ => 0,
        }
    }

    /// The device number for `st_rdev`.
    pub fn rdev(&self) -> u64 {
        match *self {
            NodeKind::CharDev { major, minor } | NodeKind::BlockDev { major, minor } => {
                libc::makedev(major, minor)
            }
            _ => 0,
        }
    }
}

/// One inode of the lower tree.
#[derive(Clone, Debug)]
pub struct Node {
    /// Mode bits, owner, mtime.
    pub meta: Meta,
    /// The layer that provided this node (bottom = 0).
    pub layer: u16,
    /// Link count: names for non-directories, `2 + subdirectories` for directories.
    pub nlink: u32,
    /// The parent directory (for `..`); the root is its own parent; for a hard-linked
    /// non-directory, the directory of its first name.
    pub parent: NodeId,
    /// Type and payload.
    pub kind: NodeKind,
    /// Extended attributes, sorted by name.
    pub xattrs: Box<[Xattr]>,
}

impl Node {
    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, NodeKind::Dir { .. })
    }

    /// Full `st_mode`. Symlinks are always 0777 on Linux, whatever the tar header says.
    pub fn mode(&self) -> u32 {
        let perm = if matches!(self.kind, NodeKind::Symlink(_)) {
            0o777
        } else {
            self.meta.mode & 0o7777
        };
        self.kind.file_type_bits() | perm
    }

    /// An extended attribute's value.
    pub fn xattr(&self, name: &[u8]) -> Option<&[u8]> {
        self.xattrs
            .iter()
            .find(|(k, _)| &**k == name)
            .map(|(_, v)| &**v)
    }
}

/// A name in a directory. The name's bytes live in the tree's name arena (one allocation
/// for all names: no per-name allocation overhead or heap fragmentation); get them with
/// `LowerTree::name`. Read in place from the flat encoding: `repr(C)`, three `u32`s.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct DirEntry {
    /// Start of the name in the arena.
    pub name_start: u32,
    /// Length of the name (one path component, any bytes but `/` and NUL).
    pub name_len: u32,
    /// The node it names.
    pub node: NodeId,
}

/// A node's stored record: fixed size, integers only, read in place (`repr(C)`, 56 bytes
/// without padding). The payload `a`, `b` depends on the type in `mode`: a directory's
/// first entry and count, a file's offset and size in its layer, a symlink target's offset
/// and length in the extra arena, a device's major and minor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct NodeRec {
    /// Modification time, seconds.
    pub mtime: i64,
    /// First payload word.
    pub a: u64,
    /// Second payload word.
    pub b: u64,
    /// `S_IFMT` type bits and the tar header's permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Nanoseconds of the modification time.
    pub mtime_nsec: u32,
    /// Link count.
    pub nlink: u32,
    /// Parent directory's node number.
    pub parent: u32,
    /// Offset of the xattr block in the extra arena, or [`NodeRec::NO_XATTRS`].
    pub xattrs: u32,
    /// The layer that provided the node.
    pub layer: u16,
    /// Zero (keeps the record free of padding).
    pub pad: u16,
}

impl NodeRec {
    /// `xattrs` of a node without extended attributes.
    pub const NO_XATTRS: u32 = u32::MAX;

    /// The `S_IFMT` bits.
    pub fn file_type_bits(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type_bits() == libc::S_IFDIR
    }

    /// Full `st_mode`, as [`Node::mode`].
    pub fn st_mode(&self) -> u32 {
        match self.file_type_bits() {
            libc::S_IFLNK => libc::S_IFLNK | 0o777,
            t => t | (self.mode & 0o7777),
        }
    }

    /// Mode bits, owner and mtime.
    pub fn meta(&self) -> Meta {
        Meta {
            mode: self.mode & 0o7777,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
            mtime_nsec: self.mtime_nsec,
        }
    }

    /// Apparent size, as [`NodeKind::size`].
    pub fn size(&self) -> u64 {
        match self.file_type_bits() {
            libc::S_IFREG | libc::S_IFLNK => self.b,
            _ => 0,
        }
    }

    /// The device number for `st_rdev`.
    pub fn rdev(&self) -> u64 {
        match self.file_type_bits() {
            libc::S_IFCHR | libc::S_IFBLK => libc::makedev(self.a as u32, self.b as u32),
            _ => 0,
        }
    }

    /// Whether it has extended attributes.
    pub fn has_xattrs(&self) -> bool {
        self.xattrs != Self::NO_XATTRS
    }

    /// A file's data.
    pub fn data(&self) -> Option<DataRef> {
        (self.file_type_bits() == libc::S_IFREG).then_some(DataRef {
            layer: self.layer,
            offset: self.a,
            size: self.b,
        })
    }
}
