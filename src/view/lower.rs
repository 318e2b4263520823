//! The read-only view: the image's merged lower tree served as it is.
//!
//! Inode numbers are the nodes' ([`Ino::of`]), the same on every mount of the image. Big
//! files may be handed to the kernel (passthrough) from a file holding exactly their bytes:
//! one the layer's source keeps (an engine's extracted layer), else a copy of their own in
//! the cache. That copy is never made in an open: opens are served by reads through the
//! daemon until the file has been read for [`PASSTHROUGH_MIN_SIZE`] bytes and that open is
//! closed (a copy made during the reads would compete with them for the disk), then one
//! background thread copies it, and opens after it is in place (with no handle of the inode
//! left open, as the kernel wants one I/O mode per inode) go to the kernel. Which copies are
//! in place is known in memory (listed at mount, added to as they are made), so opens look
//! nothing up in the cache; another mount's new copy is found when this one would make it,
//! or at the next mount. A file only
//! peeked at (`head`, `file`) costs no copy; disk cost: one copy per big file read in
//! earnest (none where `copy_file_range` reflinks), evictable with the rest of the cache.
//!
//! Locking: the lower tree is immutable and shared without locks, and file data is read
//! through each layer's [`LayerData`], which takes none either, so reads never serialise.
//! Only reads of big files through the daemon count their bytes under a short lock.
//!
//! Never panics: an impossible state answers `EIO` and logs at error.
//! Dependencies: view (shared types), tree, layer (data), nix (Errno).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, mpsc};

use nix::errno::Errno;

use super::{
    Attr, BLOCK_SIZE, Caller, DirListing, Features, Fh, Ino, MAX_NAME_LEN, OpResult,
    PROVENANCE_XATTR, StatFs, View, io_errno,
};
use crate::layer::data::LayerData;
use crate::tree::LowerTree;
use crate::tree::node::{DataRef, NodeId, NodeRec};

/// Files at least this big are read through kernel passthrough from a copy of their own in
/// the cache, once they have been read this much through the daemon: one background copy
/// buys native read speed afterwards. Smaller files are served from the layer by offset,
/// where the copy would cost more than it saves.
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
    /// Big files' bytes read through the daemon, until their copy is queued (`u64::MAX`).
    read_through: Mutex<HashMap<NodeId, u64>>,
    copier: OnceLock<Option<mpsc::Sender<Job>>>,
    /// The copies in place, by layer and offset: listed once when passthrough is enabled and
    /// added to as copies are made, so an open of a file without one looks nothing up in
    /// the cache (a cold open would wait on the disk for it).
    present: Arc<Mutex<HashSet<(u16, u64)>>>,
    /// Whether any entry of the image carries an SELinux label (see [`LowerView::getxattr`]),
    /// found on the first request for one.
    labelled: OnceLock<bool>,
}

/// The SELinux label's attribute.
pub const SELINUX_XATTR: &[u8] = b"security.selinux";

/// What the copying thread is asked to do.
enum Job {
    Copy(CopyJob),
    /// Answer once every copy queued before is done.
    Flush(mpsc::Sender<()>),
}

/// A passthrough copy to make: the file's bytes, and where they go.
struct CopyJob {
    data: LayerData,
    d: DataRef,
    dir: PathBuf,
    path: PathBuf,
    present: Arc<Mutex<HashSet<(u16, u64)>>>,
}

impl CopyJob {
    /// Copies into a temporary name renamed into place, so a partial copy is never used.
    fn run(self) {
        let tmp = self
            .dir
            .join(format!(".tmp.{}.{}", std::process::id(), self.d.offset));
        let copy = || -> std::io::Result<()> {
            if self.path.metadata().is_ok_and(|m| m.len() == self.d.size) {
                return Ok(());
            }
            std::fs::create_dir_all(&self.dir)?;
            let mut out = File::create(&tmp)?;
            self.data.copy_to(self.d.offset, self.d.size, &mut out)?;
            // Durable before it is visible: after a crash, a file of the right size must
            // also hold the right bytes.
            out.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        match copy() {
            Ok(()) => {
                let mut p = self.present.lock().unwrap_or_else(|p| p.into_inner());
                p.insert((self.d.layer, self.d.offset));
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                log::warn!("{}: passthrough copy failed: {e}", self.path.display());
            }
        }
    }
}

impl LowerView {
    /// A view of `tree`.
    pub fn new(tree: Arc<LowerTree>, layer_labels: Vec<String>) -> LowerView {
        LowerView {
            tree,
            layer_labels,
            passthrough: None,
            read_through: Mutex::new(HashMap::new()),
            copier: OnceLock::new(),
            present: Arc::default(),
            labelled: OnceLock::new(),
        }
    }

    /// Whether any entry of the image has an SELinux label: one pass over the nodes, once.
    fn labelled(&self) -> bool {
        *self.labelled.get_or_init(|| {
            let t = &self.tree;
            (0..t.len() as u32).any(|i| {
                let id = NodeId(i);
                t.rec(id).is_some_and(NodeRec::has_xattrs) && t.xattr(id, SELINUX_XATTR).is_some()
            })
        })
    }

    /// Enables backing files for passthrough reads of big files, noting the copies the cache
    /// already holds for the image's layers (one directory read when there are none).
    pub fn with_passthrough(mut self, store: PassthroughStore) -> LowerView {
        let mut present = HashSet::new();
        let made: HashSet<_> = std::fs::read_dir(&store.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        for (layer, key) in store.layer_keys.iter().enumerate() {
            let Ok(layer) = u16::try_from(layer) else {
                break;
            };
            if !made.contains(std::ffi::OsStr::new(key)) {
                continue;
            }
            let names = std::fs::read_dir(store.dir.join(key)).into_iter().flatten();
            for e in names.flatten() {
                // Temporary copies are dot names, which parse as no offset.
                if let Some(off) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                    present.insert((layer, off));
                }
            }
        }
        self.present = Arc::new(Mutex::new(present));
        self.passthrough = Some(store);
        self
    }

    /// Whether `ino` should be opened in passthrough mode. The answer depends only on the
    /// inode, as the kernel requires every open of an inode to use the same mode.
    fn wants_passthrough(&self, ino: Ino) -> bool {
        self.passthrough.is_some()
            && self
                .node(ino)
                .is_ok_and(|(_, n)| n.data().is_some_and(|d| d.size >= PASSTHROUGH_MIN_SIZE))
    }

    /// Where a big file's passthrough copy goes: its directory and path.
    fn copy_path(&self, d: &DataRef) -> OpResult<(PathBuf, PathBuf)> {
        let store = self.passthrough.as_ref().ok_or(Errno::EINVAL)?;
        let key = store
            .layer_keys
            .get(usize::from(d.layer))
            .ok_or(Errno::EIO)?;
        let dir = store.dir.join(key);
        let path = dir.join(d.offset.to_string());
        Ok((dir, path))
    }

    /// A file holding exactly the bytes of `ino`, if one exists now: the source's own, or a
    /// finished copy in the cache. Never copies (see the module header).
    fn passthrough_file(&self, ino: Ino) -> Option<OpResult<File>> {
        let (_, n) = self.node(ino).ok()?;
        let d = n.data()?;
        let data = self.layer_data(&d).ok()?;
        if let Some(own) = data.own_file(d.offset, d.size) {
            return Some(own.map_err(|e| io_errno(&e, "open layer file")));
        }
        let known = {
            let p = self.present.lock().unwrap_or_else(|p| p.into_inner());
            p.contains(&(d.layer, d.offset))
        };
        if !known {
            return None;
        }
        let (_, path) = match self.copy_path(&d) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        // Gone if the cache was trimmed meanwhile: then through the daemon again.
        let f = File::open(&path).ok()?;
        f.metadata()
            .is_ok_and(|m| m.len() == d.size)
            .then_some(Ok(f))
    }

    /// Counts `len` bytes of a big file read through the daemon.
    fn count_read(&self, id: NodeId, d: &DataRef, len: u64) {
        if self.passthrough.is_none() || d.size < PASSTHROUGH_MIN_SIZE {
            return;
        }
        let mut m = self.read_through.lock().unwrap_or_else(|p| p.into_inner());
        let seen = m.entry(id).or_insert(0);
        if *seen != u64::MAX {
            *seen = seen.saturating_add(len).min(u64::MAX - 1);
        }
    }

    /// An open of `ino` was closed: past the threshold, queues its passthrough copy (once).
    fn closed(&self, ino: Ino) {
        if self.passthrough.is_none() {
            return;
        }
        let Ok((id, n)) = self.node(ino) else {
            return;
        };
        let Some(d) = n.data() else {
            return;
        };
        {
            let mut m = self.read_through.lock().unwrap_or_else(|p| p.into_inner());
            match m.get_mut(&id) {
                Some(seen) if *seen >= PASSTHROUGH_MIN_SIZE && *seen != u64::MAX => {
                    *seen = u64::MAX;
                }
                _ => return,
            }
        }
        let (Ok((dir, path)), Ok(data)) = (self.copy_path(&d), self.layer_data(&d)) else {
            return;
        };
        let job = CopyJob {
            data: data.clone(),
            d,
            dir,
            path,
            present: self.present.clone(),
        };
        self.send(Job::Copy(job));
    }

    fn send(&self, job: Job) {
        let copier = self.copier.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            // One copy at a time: they compete for the same disk.
            std::thread::Builder::new()
                .name("passthrough-copy".into())
                .spawn(move || {
                    for job in rx {
                        match job {
                            Job::Copy(c) => c.run(),
                            Job::Flush(done) => drop(done.send(())),
                        }
                    }
                })
                .map_err(|e| log::warn!("no passthrough copies: {e}"))
                .ok()
                .map(|_| tx)
        });
        if let Some(tx) = copier {
            let _ = tx.send(job);
        }
    }

    /// Waits until the passthrough copies queued so far are finished.
    pub fn flush_copies(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Job::Flush(tx));
        let _ = rx.recv();
    }

    /// The tree being served.
    pub fn tree(&self) -> &LowerTree {
        &self.tree
    }

    fn node(&self, ino: Ino) -> OpResult<(NodeId, &NodeRec)> {
        match ino.node().and_then(|id| self.tree.rec(id).map(|n| (id, n))) {
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
        let (id, n) = self.node(ino)?;
        let data = match n.data() {
            Some(d) => d,
            None if n.is_dir() => return Err(Errno::EISDIR),
            None => return Err(Errno::EINVAL),
        };
        let out = self.read_data(&data, offset, size)?;
        self.count_read(id, &data, out.len() as u64);
        Ok(out)
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

fn attr_of(id: NodeId, n: &NodeRec) -> Attr {
    // Directories report a size like ext4's smallest: one block.
    let size = match n.is_dir() {
        true => u64::from(BLOCK_SIZE),
        false => n.size(),
    };
    Attr {
        ino: Ino::of(id),
        mode: n.st_mode(),
        nlink: n.nlink,
        uid: n.uid,
        gid: n.gid,
        size,
        blocks: size.div_ceil(512),
        rdev: n.rdev(),
        mtime: n.mtime,
        mtime_nsec: n.mtime_nsec,
        atime: n.mtime,
        atime_nsec: n.mtime_nsec,
        ctime: n.mtime,
        ctime_nsec: n.mtime_nsec,
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
            // The kernel then caches the image's ACLs, which never change, and checks them
            // with `default_permissions` (without it, the kernel leaves access to the view,
            // as before).
            posix_acl: true,
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
            b".." => NodeId(p.parent),
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
        let (id, _) = self.node(ino)?;
        self.tree
            .target(id)
            .map(<[u8]>::to_vec)
            .ok_or(Errno::EINVAL)
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

    fn release(&self, ino: Ino, _fh: Fh) {
        self.closed(ino);
    }

    fn backing_file(&self, ino: Ino, _fh: Fh) -> Option<OpResult<Arc<File>>> {
        self.wants_passthrough(ino)
            .then(|| self.passthrough_file(ino))
            .flatten()
            .map(|f| f.map(Arc::new))
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
        if offset <= 1 && add(dot(b"..", NodeId(n.parent), 2)) {
            return Ok(());
        }
        let skip = offset.saturating_sub(2) as usize;
        for (i, e) in self.tree.children(id).iter().enumerate().skip(skip) {
            let (_, child) = self.node(Ino::of(e.node))?;
            let full = add(DirListing {
                ino: Ino::of(e.node),
                next: i as u64 + 3,
                file_type: child.file_type_bits(),
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

    /// `user.rimgfs.layer` answers the provenance. An image without any SELinux label answers
    /// `security.selinux` as a filesystem without labels does (`EOPNOTSUPP`, not `ENODATA`),
    /// which tells `ls -l` and the like to stop asking it of every other entry; an image with
    /// labels answers `ENODATA` for its unlabelled entries.
    fn getxattr(&self, ino: Ino, name: &[u8]) -> OpResult<Vec<u8>> {
        let (id, n) = self.node(ino)?;
        if name == PROVENANCE_XATTR {
            let label = self
                .layer_labels
                .get(usize::from(n.layer))
                .ok_or(Errno::ENODATA)?;
            return Ok(label.as_bytes().to_vec());
        }
        let found = match n.has_xattrs() {
            true => self.tree.xattr(id, name),
            false => None,
        };
        match found {
            Some(v) => Ok(v.to_vec()),
            None if name == SELINUX_XATTR && !self.labelled() => Err(Errno::EOPNOTSUPP),
            None => Err(Errno::ENODATA),
        }
    }

    /// The image's own attribute names (the provenance one is not listed, so copies and
    /// comparisons see exactly the image).
    fn listxattr(&self, ino: Ino) -> OpResult<Vec<u8>> {
        let (id, _) = self.node(ino)?;
        let mut out = Vec::new();
        for (k, _) in self.tree.xattrs(id) {
            out.extend_from_slice(k);
            out.push(0);
        }
        Ok(out)
    }

    /// Against the image's owners and modes; writing is refused: the lower tree is read-only.
    fn access(&self, ino: Ino, mask: i32, who: Caller) -> OpResult<()> {
        let (_, n) = self.node(ino)?;
        let (is_dir, meta) = (n.is_dir(), n.meta());
        if mask & libc::W_OK != 0 {
            return Err(Errno::EROFS);
        }
        if mask == libc::F_OK
            || who.uid == 0 && (mask & libc::X_OK == 0 || meta.mode & 0o111 != 0 || is_dir)
        {
            return Ok(());
        }
        let bits = if who.uid == meta.uid {
            (meta.mode >> 6) & 7
        } else if who.gid == meta.gid {
            (meta.mode >> 3) & 7
        } else {
            meta.mode & 7
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::container::BlobLoc;
    use crate::layer::LayerIndex;
    use crate::layer::entry::{EntryKind, LayerEntry, Meta};
    use crate::layer::prepare::PreparedLayer;

    /// A view of one layer holding `big` (2 MiB + 7 bytes) and `small` (4 KiB), with its
    /// passthrough store under `dir`.
    fn view(dir: &std::path::Path) -> (LowerView, Vec<u8>) {
        let big: Vec<u8> = (0..(2 << 20) + 7).map(|i| (i % 251) as u8).collect();
        let mut data = vec![7u8; 4096];
        data.extend_from_slice(&big);
        let file = dir.join("layer.tar");
        std::fs::write(&file, &data).unwrap();
        let e = |path: &str, offset: u64, size: u64| LayerEntry {
            path: path.as_bytes().into(),
            meta: Meta {
                mode: 0o644,
                ..Meta::default()
            },
            kind: EntryKind::File { offset, size },
            xattrs: Vec::new(),
        };
        let index = LayerIndex {
            entries: vec![e("small", 0, 4096), e("big", 4096, big.len() as u64)],
            tar_size: data.len() as u64,
        };
        let loc = BlobLoc {
            file,
            offset: 0,
            len: data.len() as u64,
        };
        let tree = LowerTree::build(&[PreparedLayer::new(index, LayerData::host(loc))]).unwrap();
        let store = PassthroughStore {
            dir: dir.join("passthrough"),
            layer_keys: vec!["layer".into()],
        };
        let v = LowerView::new(Arc::new(tree), vec!["0 x".into()]).with_passthrough(store);
        (v, big)
    }

    fn ino(v: &LowerView, name: &[u8]) -> Ino {
        Ino::of(v.tree().lookup(LowerTree::ROOT, name).unwrap())
    }

    #[test]
    fn big_files_are_copied_in_the_background_once_read_and_never_in_an_open() {
        let dir = tempfile::tempdir().unwrap();
        let (v, big) = view(dir.path());
        let (b, s) = (ino(&v, b"big"), ino(&v, b"small"));
        let copy = dir.path().join("passthrough/layer/4096");
        // An open of a file not yet copied goes through the daemon, and copies nothing.
        assert!(v.backing_file(b, Fh::NONE).is_none());
        assert!(v.backing_file(s, Fh::NONE).is_none());
        // A peek is not enough to copy.
        assert_eq!(View::read(&v, b, Fh::NONE, 0, 4096).unwrap(), big[..4096]);
        v.flush_copies();
        assert!(!copy.exists());
        // Nor is a close after it.
        View::release(&v, b, Fh::NONE);
        v.flush_copies();
        assert!(!copy.exists());
        // Reading on, then closing, queues the copy (not while the reads go on); opens after
        // it is done go to the kernel.
        let mut off = 4096;
        while off < PASSTHROUGH_MIN_SIZE {
            let got = View::read(&v, b, Fh::NONE, off, 128 << 10).unwrap();
            assert_eq!(got, big[off as usize..off as usize + got.len()]);
            off += got.len() as u64;
        }
        v.flush_copies();
        assert!(!copy.exists());
        View::release(&v, b, Fh::NONE);
        v.flush_copies();
        assert_eq!(std::fs::read(&copy).unwrap(), big);
        let f = v.backing_file(b, Fh::NONE).unwrap().unwrap();
        assert_eq!(f.metadata().unwrap().len(), big.len() as u64);
        // Small files never are.
        for _ in 0..300 {
            View::read(&v, s, Fh::NONE, 0, 4096).unwrap();
        }
        View::release(&v, s, Fh::NONE);
        v.flush_copies();
        assert!(v.backing_file(s, Fh::NONE).is_none());
        // A copy of the wrong size (another tree's, a crash's) is not used.
        std::fs::write(&copy, b"short").unwrap();
        assert!(v.backing_file(b, Fh::NONE).is_none());
    }

    #[test]
    fn a_new_view_uses_a_copy_already_made() {
        let dir = tempfile::tempdir().unwrap();
        let (v, big) = view(dir.path());
        let copy = dir.path().join("passthrough/layer/4096");
        std::fs::create_dir_all(copy.parent().unwrap()).unwrap();
        std::fs::write(&copy, &big).unwrap();
        // The view made before knows of no copy, and never looks for one in an open.
        assert!(v.backing_file(ino(&v, b"big"), Fh::NONE).is_none());
        let (v, _) = view(dir.path());
        assert!(v.backing_file(ino(&v, b"big"), Fh::NONE).unwrap().is_ok());
    }
}
