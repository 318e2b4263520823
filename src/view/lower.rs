//! The read-only view: the image's merged lower tree served as it is.
//!
//! Inode numbers are the nodes' ([`Ino::of`]), the same on every mount of the image. Big
//! files may be handed to the kernel (passthrough) from a copy of their own in the cache.
//!
//! Locking: none. The lower tree is immutable and shared without locks, and file data is read
//! through each layer's [`LayerData`], which takes none either, so reads never serialise.
//!
//! Never panics: an impossible state answers `EIO` and logs at error.
//! Dependencies: view (shared types), tree, layer (data), nix (Errno).

use std::fs::File;
use std::sync::Arc;

use nix::errno::Errno;

use super::{
    Attr, BLOCK_SIZE, Caller, DirListing, Features, Fh, Ino, MAX_NAME_LEN, OpResult,
    PROVENANCE_XATTR, StatFs, View, io_errno,
};
use crate::layer::data::LayerData;
use crate::tree::LowerTree;
use crate::tree::node::{DataRef, Node, NodeId, NodeKind};

/// Files at least this big are read through kernel passthrough from a copy of their own in
/// the cache: one copy on first open buys native read speed afterwards. Smaller files are
/// served from the layer by offset, where the copy would cost more than it saves.
pub const PASSTHROUGH_MIN_SIZE: u64 = 1 << 20;

/// Where big files get a file of their own for kernel passthrough:
/// `<dir>/<layer key>/<offset>`, the key being the layer's diff_id hex.
#[derive(Clone, Debug)]
pub struct PassthroughStore {
    /// The directory (in the cache).
    pub dir: std::path::PathBuf,
    /// One key per layer.
    pub layer_keys: Vec<String>,
}

/// The image's merged tree, served read-only.
pub struct LowerView {
    tree: Arc<LowerTree>,
    /// `"<index> <digest>"` per layer, for the provenance attribute.
    pub layer_labels: Vec<String>,
    passthrough: Option<PassthroughStore>,
}

impl LowerView {
    /// A view of `tree`.
    pub fn new(tree: Arc<LowerTree>, layer_labels: Vec<String>) -> LowerView {
        LowerView {
            tree,
            layer_labels,
            passthrough: None,
        }
    }

    /// Enables backing files for passthrough reads of big files.
    pub fn with_passthrough(mut self, store: PassthroughStore) -> LowerView {
        self.passthrough = Some(store);
        self
    }

    /// Whether `ino` should be opened in passthrough mode. The answer depends only on the
    /// inode, as the kernel requires every open of an inode to use the same mode.
    fn wants_passthrough(&self, ino: Ino) -> bool {
        self.passthrough.is_some()
            && self.node(ino).is_ok_and(|(_, n)| {
                n.kind.size() >= PASSTHROUGH_MIN_SIZE && matches!(n.kind, NodeKind::File(_))
            })
    }

    /// A file holding exactly the bytes of `ino`, made on first use by copying its range out
    /// of the layer (`copy_file_range`, a reflink where the filesystem can), into a
    /// temporary name that is renamed into place, so a partial copy is never used.
    fn passthrough_file(&self, ino: Ino) -> OpResult<File> {
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

    fn node(&self, ino: Ino) -> OpResult<(NodeId, &Node)> {
        match ino
            .node()
            .and_then(|id| self.tree.node(id).map(|n| (id, n)))
        {
            Some(x) => Ok(x),
            None => {
                log::error!("request for unknown inode {ino}");
                Err(Errno::EIO)
            }
        }
    }

    /// Attributes of a lower node, under inode number `ino`.
    pub fn lower_attr(&self, id: NodeId, ino: Ino) -> OpResult<Attr> {
        let (_, n) = self.node(Ino::of(id))?;
        Ok(Attr {
            ino,
            ..attr_of(id, n)
        })
    }

    /// Reads up to `size` bytes at `offset` of a file.
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> OpResult<Vec<u8>> {
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
}

fn attr_of(id: NodeId, n: &Node) -> Attr {
    let size = match &n.kind {
        // Directories report a size like ext4's smallest: one block.
        NodeKind::Dir { .. } => u64::from(BLOCK_SIZE),
        k => k.size(),
    };
    Attr {
        ino: Ino::of(id),
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

impl View for LowerView {
    fn features(&self) -> Features {
        Features {
            // Depth 1 either way: backing files live on a plain filesystem (the cache), and
            // the mount may itself be stacked under overlayfs.
            passthrough: true,
            kills_privs: false,
            // Without passthrough an open needs no state (reads are by inode), so the kernel
            // may skip open and release altogether, keeping the page cache.
            stateless_open: self.passthrough.is_none(),
            // Listing needs no state either; skipping opendir saves two round trips per
            // directory of a walk.
            stateless_opendir: true,
            keep_cache: true,
            keep_handleless_cache: true,
            cache_dirs: true,
            // Access is checked by the view itself (no `default_permissions`), which
            // `FUSE_POSIX_ACL` would turn on.
            posix_acl: false,
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> OpResult<Attr> {
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
        let (_, n) = self.node(Ino::of(id))?;
        Ok(attr_of(id, n))
    }

    fn getattr(&self, ino: Ino, _fh: Option<Fh>) -> OpResult<Attr> {
        let (id, n) = self.node(ino)?;
        Ok(attr_of(id, n))
    }

    fn readlink(&self, ino: Ino) -> OpResult<Vec<u8>> {
        match &self.node(ino)?.1.kind {
            NodeKind::Symlink(t) => Ok(t.to_vec()),
            _ => Err(Errno::EINVAL),
        }
    }

    fn open(&self, ino: Ino, flags: i32, _who: Caller) -> OpResult<Fh> {
        let (_, n) = self.node(ino)?;
        if n.is_dir() {
            return Err(Errno::EISDIR);
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0 {
            return Err(Errno::EROFS);
        }
        Ok(Fh::NONE)
    }

    fn read(&self, ino: Ino, _fh: Fh, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        LowerView::read(self, ino, offset, size)
    }

    fn backing_file(&self, ino: Ino, _fh: Fh) -> Option<OpResult<Arc<File>>> {
        self.wants_passthrough(ino)
            .then(|| self.passthrough_file(ino).map(Arc::new))
    }

    fn opendir(&self, ino: Ino) -> OpResult<Fh> {
        if self.node(ino)?.1.is_dir() {
            Ok(Fh::NONE)
        } else {
            Err(Errno::ENOTDIR)
        }
    }

    /// Nothing is allocated, so listing a huge directory in many calls stays linear.
    fn readdir(
        &self,
        ino: Ino,
        _fh: Fh,
        offset: u64,
        add: &mut dyn FnMut(DirListing<'_>) -> bool,
    ) -> OpResult<()> {
        let (id, n) = self.node(ino)?;
        if !n.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        let dot = |name: &'static [u8], target: NodeId, next| DirListing {
            ino: Ino::of(target),
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
            let (_, child) = self.node(Ino::of(e.node))?;
            let full = add(DirListing {
                ino: Ino::of(e.node),
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

    fn listed_attr(&self, _parent: Ino, l: &DirListing<'_>) -> OpResult<Attr> {
        self.getattr(l.ino, None)
    }

    /// `user.rimgfs.layer` answers the provenance.
    fn getxattr(&self, ino: Ino, name: &[u8]) -> OpResult<Vec<u8>> {
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

    /// The image's own attribute names (the provenance one is not listed, so copies and
    /// comparisons see exactly the image).
    fn listxattr(&self, ino: Ino) -> OpResult<Vec<u8>> {
        let (_, n) = self.node(ino)?;
        let mut out = Vec::new();
        for (k, _) in n.xattrs.iter() {
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    /// Against the image's owners and modes; writing is refused: the lower tree is read-only.
    fn access(&self, ino: Ino, mask: i32, who: Caller) -> OpResult<()> {
        let (_, n) = self.node(ino)?;
        if mask & libc::W_OK != 0 {
            return Err(Errno::EROFS);
        }
        if mask == libc::F_OK
            || who.uid == 0 && (mask & libc::X_OK == 0 || n.meta.mode & 0o111 != 0 || n.is_dir())
        {
            return Ok(());
        }
        let bits = if who.uid == n.meta.uid {
            (n.meta.mode >> 6) & 7
        } else if who.gid == n.meta.gid {
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

    /// The image's size and inode count, nothing free.
    fn statfs(&self) -> OpResult<StatFs> {
        Ok(StatFs {
            blocks: self.tree.total_bytes.div_ceil(u64::from(BLOCK_SIZE)),
            bfree: 0,
            bavail: 0,
            files: self.tree.len() as u64,
            ffree: 0,
        })
    }
}
