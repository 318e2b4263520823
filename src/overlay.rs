//! Filesystem operations on the merged view, as plain methods returning `Result<_, Errno>`.
//!
//! This is where a FUSE request is answered; `fuse.rs` only decodes and replies. Inode numbers
//! are `NodeId + 1` (the root is 1, as FUSE requires), stable across mounts of the same image.
//!
//! Locking: none. The lower tree is immutable and shared without locks, and file data is read
//! through each layer's [`LayerData`], which takes none either, so reads never serialise.
//!
//! Never panics: an impossible state answers `EIO` and logs at error.
//! Dependencies: tree, layer (entry, data), nix (Errno).

use std::fs::File;
use std::sync::Arc;

use nix::errno::Errno;

use crate::layer::data::LayerData;
use crate::tree::LowerTree;
use crate::tree::node::{DataRef, Node, NodeId, NodeKind};

/// Result of a request-path operation.
pub type OpResult<T> = Result<T, Errno>;

/// The provenance attribute: answered on every entry, never listed.
pub const PROVENANCE_XATTR: &[u8] = b"user.rimgfs.layer";
/// Reported block size; also the unit of `statfs` block counts.
pub const BLOCK_SIZE: u32 = 4096;
/// Longest name the view accepts (as every Linux filesystem).
pub const MAX_NAME_LEN: u32 = 255;
/// Files at least this big are read through kernel passthrough from a copy of their own in
/// the cache: one copy on first open buys native read speed afterwards. Smaller files are
/// served from the layer by offset, where the copy would cost more than it saves.
pub const PASSTHROUGH_MIN_SIZE: u64 = 1 << 20;

/// Attributes of an inode, in host terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    /// Inode number.
    pub ino: u64,
    /// `st_mode` (type and permission bits).
    pub mode: u32,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Device number.
    pub rdev: u64,
    /// mtime seconds (also used for atime and ctime: layers record only mtime).
    pub mtime: i64,
    /// mtime nanoseconds.
    pub mtime_nsec: u32,
}

/// One entry of a directory listing, borrowing its name from the tree.
#[derive(Clone, Copy, Debug)]
pub struct DirListing<'a> {
    /// Inode number.
    pub ino: u64,
    /// Offset of the next entry (for the kernel to resume from).
    pub next: u64,
    /// `S_IFMT` bits.
    pub file_type: u32,
    /// Name.
    pub name: &'a [u8],
}

/// Filesystem statistics.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    /// Total blocks of `BLOCK_SIZE`.
    pub blocks: u64,
    /// Free blocks.
    pub bfree: u64,
    /// Blocks available to unprivileged users.
    pub bavail: u64,
    /// Inodes.
    pub files: u64,
    /// Free inodes.
    pub ffree: u64,
}

/// Where big files get a file of their own for kernel passthrough:
/// `<dir>/<layer key>/<offset>`, the key being the layer's diff_id hex.
#[derive(Clone, Debug)]
pub struct PassthroughStore {
    /// The directory (in the cache).
    pub dir: std::path::PathBuf,
    /// One key per layer.
    pub layer_keys: Vec<String>,
}

/// The merged filesystem.
pub struct Overlay {
    tree: Arc<LowerTree>,
    /// `"<index> <digest>"` per layer, for the provenance attribute.
    pub layer_labels: Vec<String>,
    passthrough: Option<PassthroughStore>,
}

/// `ino` of a node.
pub fn ino_of(id: NodeId) -> u64 {
    u64::from(id.0) + 1
}

impl Overlay {
    /// A view of `tree`.
    pub fn new(tree: Arc<LowerTree>, layer_labels: Vec<String>) -> Overlay {
        Overlay {
            tree,
            layer_labels,
            passthrough: None,
        }
    }

    /// Enables backing files for passthrough reads of big files.
    pub fn with_passthrough(mut self, store: PassthroughStore) -> Overlay {
        self.passthrough = Some(store);
        self
    }

    /// Whether big files may be served through passthrough at all.
    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.is_some()
    }

    /// Whether `ino` should be opened in passthrough mode. The answer depends only on the
    /// inode, as the kernel requires every open of an inode to use the same mode.
    pub fn wants_passthrough(&self, ino: u64) -> bool {
        self.passthrough.is_some()
            && self.node(ino).is_ok_and(|(_, n)| {
                n.kind.size() >= PASSTHROUGH_MIN_SIZE && matches!(n.kind, NodeKind::File(_))
            })
    }

    /// A file holding exactly the bytes of `ino`, made on first use by copying its range out
    /// of the layer (`copy_file_range`, a reflink where the filesystem can), into a
    /// temporary name that is renamed into place, so a partial copy is never used.
    pub fn backing_file(&self, ino: u64) -> OpResult<File> {
        let (_, n) = self.node(ino)?;
        let (NodeKind::File(d), Some(store)) = (&n.kind, &self.passthrough) else {
            return Err(Errno::EINVAL);
        };
        let key = store
            .layer_keys
            .get(usize::from(d.layer))
            .ok_or(Errno::EIO)?;
        let dir = store.dir.join(key);
        let path = dir.join(d.offset.to_string());
        if let Ok(f) = File::open(&path) {
            if f.metadata().is_ok_and(|m| m.len() == d.size) {
                return Ok(f);
            }
        }
        let data = self.layer_data(d)?;
        if let Some(own) = data.own_file(d.offset, d.size) {
            return own.map_err(|e| io_errno(&e, "open layer file"));
        }
        std::fs::create_dir_all(&dir).map_err(|e| io_errno(&e, "create passthrough dir"))?;
        let tmp = dir.join(format!(".tmp.{}.{}", std::process::id(), d.offset));
        let copy = || -> std::io::Result<()> {
            let mut out = File::create(&tmp)?;
            data.copy_to(d.offset, d.size, &mut out)?;
            // Durable before it is visible: after a crash, a file of the right size must
            // also hold the right bytes.
            out.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = copy() {
            let _ = std::fs::remove_file(&tmp);
            return Err(io_errno(&e, "copy file for passthrough"));
        }
        File::open(&path).map_err(|e| io_errno(&e, "open passthrough file"))
    }

    /// The tree being served.
    pub fn tree(&self) -> &LowerTree {
        &self.tree
    }

    fn node(&self, ino: u64) -> OpResult<(NodeId, &Node)> {
        let id = ino
            .checked_sub(1)
            .and_then(|i| u32::try_from(i).ok())
            .map(NodeId);
        match id.and_then(|id| self.tree.node(id).map(|n| (id, n))) {
            Some(x) => Ok(x),
            None => {
                log::error!("request for unknown inode {ino}");
                Err(Errno::EIO)
            }
        }
    }

    /// Attributes of a lower node, under inode number `ino`.
    pub fn lower_attr(&self, id: NodeId, ino: u64) -> OpResult<Attr> {
        let (_, n) = self.node(ino_of(id))?;
        Ok(Attr {
            ino,
            ..self.attr_of(id, n)
        })
    }

    fn attr_of(&self, id: NodeId, n: &Node) -> Attr {
        let size = match &n.kind {
            // Directories report a size like ext4's smallest: one block.
            NodeKind::Dir { .. } => u64::from(BLOCK_SIZE),
            k => k.size(),
        };
        Attr {
            ino: ino_of(id),
            mode: n.mode(),
            nlink: n.nlink,
            uid: n.meta.uid,
            gid: n.meta.gid,
            size,
            blocks: size.div_ceil(512),
            rdev: n.kind.rdev(),
            mtime: n.meta.mtime,
            mtime_nsec: n.meta.mtime_nsec,
        }
    }

    /// Looks `name` up in directory `parent`.
    pub fn lookup(&self, parent: u64, name: &[u8]) -> OpResult<Attr> {
        let (pid, p) = self.node(parent)?;
        if !p.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if name.len() > MAX_NAME_LEN as usize {
            return Err(Errno::ENAMETOOLONG);
        }
        let id = match name {
            b"." => pid,
            b".." => p.parent,
            _ => self.tree.lookup(pid, name).ok_or(Errno::ENOENT)?,
        };
        let (_, n) = self.node(ino_of(id))?;
        Ok(self.attr_of(id, n))
    }

    /// Attributes of an inode.
    pub fn getattr(&self, ino: u64) -> OpResult<Attr> {
        let (id, n) = self.node(ino)?;
        Ok(self.attr_of(id, n))
    }

    /// Target of a symlink.
    pub fn readlink(&self, ino: u64) -> OpResult<&[u8]> {
        match &self.node(ino)?.1.kind {
            NodeKind::Symlink(t) => Ok(t),
            _ => Err(Errno::EINVAL),
        }
    }

    /// Checks that an inode can be opened with `flags` (`open(2)` flags).
    pub fn open(&self, ino: u64, flags: i32) -> OpResult<()> {
        let (_, n) = self.node(ino)?;
        if n.is_dir() {
            return Err(Errno::EISDIR);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        Ok(())
    }

    /// Checks that an inode is a directory that can be listed.
    pub fn opendir(&self, ino: u64) -> OpResult<()> {
        if self.node(ino)?.1.is_dir() {
            Ok(())
        } else {
            Err(Errno::ENOTDIR)
        }
    }

    /// Reads up to `size` bytes at `offset`.
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        let (_, n) = self.node(ino)?;
        let data = match &n.kind {
            NodeKind::File(d) => *d,
            NodeKind::Dir { .. } => return Err(Errno::EISDIR),
            _ => return Err(Errno::EINVAL),
        };
        self.read_data(&data, offset, size)
    }

    /// Reads up to `size` bytes at `offset` of a lower file's data.
    pub fn read_data(&self, data: &DataRef, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        let data = *data;
        if offset >= data.size {
            return Ok(Vec::new());
        }
        let len = (data.size - offset).min(u64::from(size)) as usize;
        let mut buf = vec![0u8; len];
        self.layer_data(&data)?
            .read_exact_at(&mut buf, data.offset + offset)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    log::error!("layer {}: {e}", data.layer);
                    Errno::EIO
                } else {
                    io_errno(&e, "read layer data")
                }
            })?;
        Ok(buf)
    }

    fn layer_data(&self, d: &DataRef) -> OpResult<&LayerData> {
        self.tree
            .data_files
            .get(usize::from(d.layer))
            .ok_or_else(|| {
                log::error!("no data for layer {}", d.layer);
                Errno::EIO
            })
    }

    /// Lists a directory from `offset` on, handing each entry to `add` until it returns
    /// true (the reply buffer is full): `.` is offset 0→1, `..` 1→2, children after. Nothing
    /// is allocated, so listing a huge directory in many calls stays linear.
    pub fn readdir(
        &self,
        ino: u64,
        offset: u64,
        mut add: impl FnMut(DirListing<'_>) -> bool,
    ) -> OpResult<()> {
        let (id, n) = self.node(ino)?;
        if !n.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let dot = |name: &'static [u8], target: NodeId, next| DirListing {
            ino: ino_of(target),
            next,
            file_type: libc::S_IFDIR,
            name,
        };
        if offset == 0 && add(dot(b".", id, 1)) {
            return Ok(());
        }
        if offset <= 1 && add(dot(b"..", n.parent, 2)) {
            return Ok(());
        }
        let skip = offset.saturating_sub(2) as usize;
        for (i, e) in self.tree.children(id).iter().enumerate().skip(skip) {
            let (_, child) = self.node(ino_of(e.node))?;
            let full = add(DirListing {
                ino: ino_of(e.node),
                next: i as u64 + 3,
                file_type: child.kind.file_type_bits(),
                name: self.tree.name(e),
            });
            if full {
                break;
            }
        }
        Ok(())
    }

    /// An extended attribute's value; `user.rimgfs.layer` answers the provenance.
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> OpResult<Vec<u8>> {
        let (_, n) = self.node(ino)?;
        if name == PROVENANCE_XATTR {
            let label = self
                .layer_labels
                .get(usize::from(n.layer))
                .ok_or(Errno::ENODATA)?;
            return Ok(label.as_bytes().to_vec());
        }
        n.xattr(name).map(<[u8]>::to_vec).ok_or(Errno::ENODATA)
    }

    /// The image's own attribute names, NUL-terminated (the provenance one is not listed, so
    /// copies and comparisons see exactly the image).
    pub fn listxattr(&self, ino: u64) -> OpResult<Vec<u8>> {
        let (_, n) = self.node(ino)?;
        let mut out = Vec::new();
        for (k, _) in n.xattrs.iter() {
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    /// `access(2)` against the image's owners and modes (used when the kernel does not check
    /// permissions itself). Writing is refused: the lower tree is read-only.
    pub fn access(&self, ino: u64, mask: i32, uid: u32, gid: u32) -> OpResult<()> {
        let (_, n) = self.node(ino)?;
        if mask & libc::W_OK != 0 {
            return Err(Errno::EROFS);
        }
        if mask == libc::F_OK
            || uid == 0 && (mask & libc::X_OK == 0 || n.meta.mode & 0o111 != 0 || n.is_dir())
        {
            return Ok(());
        }
        let bits = if uid == n.meta.uid {
            (n.meta.mode >> 6) & 7
        } else if gid == n.meta.gid {
            (n.meta.mode >> 3) & 7
        } else {
            n.meta.mode & 7
        };
        let want = (mask & 7) as u32;
        if bits & want == want {
            Ok(())
        } else {
            Err(Errno::EACCES)
        }
    }

    /// Filesystem statistics: the image's size and inode count, nothing free.
    pub fn statfs(&self) -> StatFs {
        StatFs {
            blocks: self.tree.total_bytes.div_ceil(u64::from(BLOCK_SIZE)),
            bfree: 0,
            bavail: 0,
            files: self.tree.len() as u64,
            ffree: 0,
        }
    }
}

/// Maps a host I/O error to an errno; an error without one becomes `EIO`, logged.
pub fn io_errno(e: &std::io::Error, op: &str) -> Errno {
    match e.raw_os_error() {
        Some(code) => Errno::from_raw(code),
        None => {
            log::warn!("{op}: {e}");
            Errno::EIO
        }
    }
}
