//! Copy-up: giving a lower entry an upper copy before its first modification.
//!
//! Follows the kernel's protocol (fs/overlayfs/copy_up.c): parents first, each entry built
//! under a temporary name in the work directory with its data, owner, mode, times and xattrs,
//! then renamed into place in one step, so the upper never holds a partial entry. A
//! metadata-only copy (for chmod, chown, utimens, setxattr) gets the lower size as a sparse
//! file and the `metacopy` flag; its data follows on the first write ([`complete_data`]).
//! Data moves with `copy_file_range`, which the kernel turns into a reflink or an in-kernel
//! copy where it can; a data copy is flushed to disk before its rename, as the kernel does.
//! Dependencies: upper, sys (DirFd), tree.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::format::{escape_xattr, is_bookkeeping};
use super::{Flag, OVERRIDE_STAT, Role, Upper, UpperEntry};
use crate::layer::entry::Meta;
use crate::sys::DirFd;
use crate::tree::LowerTree;
use crate::tree::node::{DataRef, Node, NodeKind};

/// How much of a file to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyMode {
    /// Data and metadata.
    Full,
    /// Metadata only; the data stays in the lower layer until the first write.
    MetaOnly,
}

/// Makes sure the lower entry at `path` (merged path, components separated by `/`) has an
/// upper copy, copying its missing parents first. Returns the upper directory holding it and
/// its name. An entry already in the upper is left as it is.
pub fn copy_up(
    upper: &Upper,
    tree: &LowerTree,
    path: &[u8],
    mode: CopyMode,
) -> io::Result<(Arc<DirFd>, std::ffi::OsString)> {
    let comps: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    let Some((last, parents)) = comps.split_last() else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    let mut dir = upper.dir(b"")?;
    let mut lower_path: Vec<u8> = Vec::new();
    // The lower directory at `lower_path`, followed down with it (resolving each prefix
    // from the root again would cost the square of the depth).
    let mut lower_dir = Some(LowerTree::ROOT);
    for comp in parents {
        push_comp(&mut lower_path, comp);
        lower_dir = lower_dir.and_then(|d| tree.lookup(d, comp));
        let name = OsStr::from_bytes(comp);
        match upper.classify(&dir, name)? {
            UpperEntry::Entry {
                role: Role::Dir { .. },
                ..
            } => {}
            UpperEntry::Absent => {
                let node = lower_dir
                    .and_then(|id| tree.node(id))
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
                copy_node(upper, tree, &dir, name, &node, CopyMode::Full)?;
            }
            // A merged path never runs through a whiteout or a non-directory.
            _ => return Err(io::Error::from_raw_os_error(libc::ENOTDIR)),
        }
        dir = Arc::new(dir.open_beneath(std::path::Path::new(name))?);
    }
    push_comp(&mut lower_path, last);
    let name = OsStr::from_bytes(last);
    if upper.classify(&dir, name)? == UpperEntry::Absent {
        let node = lower_node(tree, &lower_path)?;
        copy_node(upper, tree, &dir, name, &node, mode)?;
    }
    Ok((dir, name.to_os_string()))
}

fn push_comp(p: &mut Vec<u8>, comp: &[u8]) {
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(comp);
}

fn lower_node(tree: &LowerTree, path: &[u8]) -> io::Result<Node> {
    tree.resolve(path)
        .and_then(|id| tree.node(id))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
}

/// Copies one lower node to `dir/name` through a temporary entry in the work directory.
pub fn copy_node(
    upper: &Upper,
    tree: &LowerTree,
    dir: &DirFd,
    name: &OsStr,
    node: &Node,
    mode: CopyMode,
) -> io::Result<()> {
    stage_node(upper, tree, node, mode)?.place(dir, name)
}

/// An entry built in the work directory under a temporary name, not yet in place: the slow
/// part of a copy-up (the data, flushed to disk), which needs no lock on the namespace, as
/// nothing else names it. Removed if dropped unplaced.
pub struct Staged<'u> {
    upper: &'u Upper,
    tmp: Option<std::ffi::OsString>,
}

impl<'u> Staged<'u> {
    /// A copy about to be built under a fresh name in `upper`'s work directory.
    fn new(upper: &'u Upper) -> Staged<'u> {
        Staged {
            upper,
            tmp: Some(upper.temp_name()),
        }
    }

    /// A file of lower data already built in `upper`'s work directory under `tmp` (one of
    /// [`Upper::temp_name`]'s names), flushed to disk: it is taken as a copy-up's data, for
    /// [`stage_node_on`] or [`Staged::complete`], and removed if dropped unplaced.
    pub fn adopt(upper: &'u Upper, tmp: std::ffi::OsString) -> Staged<'u> {
        Staged {
            upper,
            tmp: Some(tmp),
        }
    }

    /// Renames the entry into place as `dir/name`, unless something is there already (another
    /// request copied it up meanwhile: theirs stands, this one is dropped). Copy-up must not
    /// show as a change of the parent: its times are put back after the rename, as the
    /// kernel's copy-up does.
    pub fn place(mut self, dir: &DirFd, name: &OsStr) -> io::Result<()> {
        let Some(tmp) = self.tmp.take() else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let work = self.upper.work();
        let parent = dir.stat(None)?;
        match work.rename(&tmp, dir, name, libc::RENAME_NOREPLACE) {
            Ok(()) => dir.set_own_times(&[
                libc::timespec {
                    tv_sec: parent.st_atime,
                    tv_nsec: parent.st_atime_nsec,
                },
                libc::timespec {
                    tv_sec: parent.st_mtime,
                    tv_nsec: parent.st_mtime_nsec,
                },
            ]),
            Err(e) => {
                let _ = super::remove_tree(work, &tmp);
                if e.raw_os_error() == Some(libc::EEXIST) {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Gives the metadata-only copy `dir/name` the data staged by [`stage_data`]: the staged
    /// file takes the copy's current size, attributes, owner, mode and times, and replaces
    /// it in one rename, without the `metacopy` flag. Quick: no data moves.
    pub fn complete(mut self, dir: &DirFd, name: &OsStr) -> io::Result<()> {
        let Some(tmp) = self.tmp.take() else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        let (upper, work) = (self.upper, self.upper.work());
        let built = (|| {
            let st = dir.stat(Some(name))?;
            let out = work.open_file(&tmp, libc::O_WRONLY, 0)?;
            // A truncate through the metadata-only copy may have changed the size.
            out.set_len(st.st_size as u64)?;
            for k in dir.list_xattr(name)?.iter().filter(|k| !is_bookkeeping(k)) {
                work.set_xattr(&tmp, k, &dir.get_xattr(name, k)?, 0)?;
            }
            // The owner it shows: an unprivileged daemon's copy records the one it could not
            // set.
            let shown = upper.owner_override(dir, Some(name));
            let (uid, gid, mode) = shown.unwrap_or((st.st_uid, st.st_gid, st.st_mode & 0o7777));
            let meta = Meta {
                mode,
                uid,
                gid,
                mtime: st.st_mtime,
                mtime_nsec: st.st_mtime_nsec as u32,
            };
            set_meta(upper, work, &tmp, &meta, st.st_mode)
        })();
        let done = built.and_then(|()| work.rename(&tmp, dir, name, 0));
        if done.is_err() {
            let _ = work.unlink(&tmp, false);
        }
        done
    }
}

impl Drop for Staged<'_> {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = super::remove_tree(self.upper.work(), &tmp);
        }
    }
}

/// Builds a copy of lower node `node` (data too unless `mode` is `MetaOnly`) in the work
/// directory, for [`Staged::place`].
pub fn stage_node<'u>(
    upper: &'u Upper,
    tree: &LowerTree,
    node: &Node,
    mode: CopyMode,
) -> io::Result<Staged<'u>> {
    let work = upper.work();
    let staged = Staged::new(upper);
    let tmp = staged.tmp.as_deref().unwrap_or_default();
    match &node.kind {
        NodeKind::Dir { .. } => work.mkdir(tmp, 0o700)?,
        NodeKind::File(d) => match mode {
            CopyMode::Full => write_durable(work, tmp, tree, d)?,
            CopyMode::MetaOnly => {
                let out = work.open_file(tmp, NEW_FILE, 0o600)?;
                out.set_len(d.size)?;
                upper.set_flag(work, tmp, Flag::Metacopy, b"")?;
            }
        },
        NodeKind::Symlink(t) => work.symlink(OsStr::from_bytes(t), tmp)?,
        NodeKind::CharDev { .. } | NodeKind::BlockDev { .. } | NodeKind::Fifo => {
            work.mknod(tmp, node.mode(), node.kind.rdev())?
        }
    }
    set_node_meta(upper, tmp, node)?;
    Ok(staged)
}

/// A full copy of lower file `node` whose data is already staged (see [`Staged::adopt`]):
/// what [`stage_node`] would build, without copying the data again.
pub fn stage_node_on<'u>(
    upper: &'u Upper,
    node: &Node,
    data: std::ffi::OsString,
) -> io::Result<Staged<'u>> {
    let staged = Staged::adopt(upper, data);
    set_node_meta(upper, staged.tmp.as_deref().unwrap_or_default(), node)?;
    Ok(staged)
}

/// Gives the work directory's `tmp` lower node `node`'s attributes, owner, mode and times.
fn set_node_meta(upper: &Upper, tmp: &OsStr, node: &Node) -> io::Result<()> {
    let work = upper.work();
    // The image's own attributes, overlay-namespaced ones escaped (never bookkeeping).
    for (k, v) in node.xattrs.iter().filter(|(k, _)| **k != *OVERRIDE_STAT) {
        work.set_xattr(tmp, &escape_xattr(k), v, 0)?;
    }
    set_meta(upper, work, tmp, &node.meta, node.mode())
}

/// Copies a metadata-only copy's lower data into the work directory, flushed to disk, for
/// [`Staged::complete`].
pub fn stage_data<'u>(
    upper: &'u Upper,
    tree: &LowerTree,
    data: &DataRef,
) -> io::Result<Staged<'u>> {
    let staged = Staged::new(upper);
    let tmp = staged.tmp.as_deref().unwrap_or_default();
    write_durable(upper.work(), tmp, tree, data)?;
    Ok(staged)
}

/// Flags of a file made in the work directory: a fresh name, written only.
const NEW_FILE: i32 = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;

/// Writes `d`'s bytes to a new file `tmp` of `work`, flushed before it is renamed into place,
/// as the kernel's copy-up: after a power loss the name shows old or new data, never none.
fn write_durable(work: &DirFd, tmp: &OsStr, tree: &LowerTree, d: &DataRef) -> io::Result<()> {
    let mut out = work.open_file(tmp, NEW_FILE, 0o600)?;
    copy_data(tree, d, &mut out)?;
    out.sync_data()
}

/// Owner, then mode (chown clears setuid bits), then times; symlinks have no mode to set.
fn set_meta(upper: &Upper, dir: &DirFd, name: &OsStr, meta: &Meta, st_mode: u32) -> io::Result<()> {
    upper.set_owner(dir, name, meta.uid, meta.gid, meta.mode)?;
    if st_mode & libc::S_IFMT != libc::S_IFLNK {
        dir.chmod(name, meta.mode)?;
    }
    let t = libc::timespec {
        tv_sec: meta.mtime,
        tv_nsec: i64::from(meta.mtime_nsec),
    };
    dir.utimens(name, &[t, t])
}

/// Copies a file's bytes from its layer into `out`.
fn copy_data(tree: &LowerTree, d: &DataRef, out: &mut File) -> io::Result<()> {
    tree.data_files
        .get(usize::from(d.layer))
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))?
        .copy_to(d.offset, d.size, out)
}

/// Gives a metadata-only copy `dir/name` its data: a full copy with the upper entry's current
/// metadata replaces it in one rename, without the `metacopy` flag.
pub fn complete_data(
    upper: &Upper,
    tree: &LowerTree,
    dir: &DirFd,
    name: &OsStr,
    data: &DataRef,
) -> io::Result<()> {
    stage_data(upper, tree, data)?.complete(dir, name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::image::container::BlobLoc;
    use crate::layer::LayerIndex;
    use crate::layer::data::LayerData;
    use crate::layer::entry::{EntryKind, LayerEntry};
    use crate::layer::prepare::PreparedLayer;

    const DATA: &[u8] = b"hello world";

    fn tree(dir: &std::path::Path) -> LowerTree {
        let data = dir.join("layer.data");
        std::fs::write(&data, DATA).unwrap();
        let m = |mode, uid, mtime| Meta {
            mode,
            uid,
            gid: uid + 1,
            mtime,
            mtime_nsec: 5,
        };
        let e = |path: &str, meta, kind| LayerEntry {
            path: path.as_bytes().into(),
            meta,
            kind,
            xattrs: vec![],
        };
        let mut entries = vec![
            e("etc", m(0o750, 3, 100), EntryKind::Dir),
            e("etc/sub", m(0o700, 4, 200), EntryKind::Dir),
            e(
                "etc/sub/f",
                m(0o4755, 7, 1234),
                EntryKind::File { offset: 6, size: 5 },
            ),
            e(
                "etc/l",
                m(0o777, 9, -3),
                EntryKind::Symlink(b"sub/f"[..].into()),
            ),
            e("etc/p", m(0o640, 2, 7), EntryKind::Fifo),
        ];
        entries[2]
            .xattrs
            .push((b"user.k"[..].into(), b"v"[..].into()));
        let layer = PreparedLayer::new(
            LayerIndex {
                entries,
                tar_size: DATA.len() as u64,
            },
            LayerData::host(BlobLoc {
                file: data,
                offset: 0,
                len: DATA.len() as u64,
            }),
        );
        LowerTree::build(&[layer]).unwrap()
    }

    fn setup() -> (tempfile::TempDir, Upper, LowerTree) {
        let t = tempfile::tempdir().unwrap();
        let u = Upper::open(&t.path().join("upper"), &t.path().join("work")).unwrap();
        let tr = tree(t.path());
        (t, u, tr)
    }

    #[test]
    fn copy_up_file_copies_parents_data_and_metadata() {
        if !nix::unistd::geteuid().is_root() {
            return; // chown to other owners needs root
        }
        let (t, u, tr) = setup();
        copy_up(&u, &tr, b"etc/sub/f", CopyMode::Full).unwrap();
        let up = t.path().join("upper");
        let f = std::fs::symlink_metadata(up.join("etc/sub/f")).unwrap();
        assert_eq!(
            (f.mode() & 0o7777, f.uid(), f.gid(), f.mtime()),
            (0o4755, 7, 8, 1234)
        );
        assert_eq!(std::fs::read(up.join("etc/sub/f")).unwrap(), b"world");
        let d = std::fs::metadata(up.join("etc/sub")).unwrap();
        assert_eq!((d.mode() & 0o7777, d.uid(), d.mtime()), (0o700, 4, 200));
        let d = std::fs::metadata(up.join("etc")).unwrap();
        assert_eq!((d.mode() & 0o7777, d.uid(), d.mtime()), (0o750, 3, 100));
        let sub = u.dir(b"etc/sub").unwrap();
        assert_eq!(sub.get_xattr(OsStr::new("f"), b"user.k").unwrap(), b"v");
        // Nothing left in the work directory, and a second copy-up changes nothing.
        assert_eq!(std::fs::read_dir(t.path().join("work")).unwrap().count(), 0);
        std::fs::write(up.join("etc/sub/f"), "changed").unwrap();
        copy_up(&u, &tr, b"etc/sub/f", CopyMode::Full).unwrap();
        assert_eq!(std::fs::read(up.join("etc/sub/f")).unwrap(), b"changed");
    }

    #[test]
    fn copy_up_symlink_and_fifo() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (t, u, tr) = setup();
        copy_up(&u, &tr, b"etc/l", CopyMode::Full).unwrap();
        copy_up(&u, &tr, b"etc/p", CopyMode::Full).unwrap();
        let up = t.path().join("upper");
        assert_eq!(
            std::fs::read_link(up.join("etc/l")).unwrap(),
            std::path::Path::new("sub/f")
        );
        let l = std::fs::symlink_metadata(up.join("etc/l")).unwrap();
        assert_eq!((l.uid(), l.mtime()), (9, -3));
        let p = std::fs::symlink_metadata(up.join("etc/p")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_fifo(&p.file_type()));
        assert_eq!(p.mode() & 0o7777, 0o640);
    }

    #[test]
    fn copy_up_metadata_only_then_data() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let (t, u, tr) = setup();
        let (dir, name) = copy_up(&u, &tr, b"etc/sub/f", CopyMode::MetaOnly).unwrap();
        let path = t.path().join("upper/etc/sub/f");
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.len(), m.blocks()), (5, 0), "sparse, lower size");
        assert!(u.classify(&dir, &name).unwrap().is_metacopy());
        dir.chmod(&name, 0o600).unwrap();
        let NodeKind::File(d) = &tr.node(tr.resolve(b"etc/sub/f").unwrap()).unwrap().kind else {
            panic!("not a file")
        };
        complete_data(&u, &tr, &dir, &name, d).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"world");
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o600, 7));
        assert!(matches!(
            u.classify(&dir, &name).unwrap(),
            UpperEntry::Entry {
                role: Role::Plain,
                ..
            }
        ));
        assert_eq!(dir.get_xattr(&name, b"user.k").unwrap(), b"v");
    }

    #[test]
    fn copy_up_of_missing_path_fails_cleanly() {
        let (t, u, tr) = setup();
        let e = copy_up(&u, &tr, b"etc/nope", CopyMode::Full).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(std::fs::read_dir(t.path().join("work")).unwrap().count(), 0);
    }
}
