//! The writable upper layer on disk, in kernel overlayfs's upperdir format, so the same
//! directory works under `mount -t overlay` (Documentation/filesystems/overlayfs.rst):
//!
//! - a deleted lower entry is a whiteout: a 0/0 character device;
//! - a directory that hides its lower children carries `trusted.overlay.opaque=y`;
//! - a lower directory renamed carries `trusted.overlay.redirect=/its/lower/path`;
//! - a metadata-only copy carries `trusted.overlay.metacopy` (its data is still the lower's).
//!
//! Where mknod or `trusted.*` xattrs are not permitted (an unprivileged daemon), the fallback is
//! fuse-overlayfs's: whiteouts are empty `.wh.NAME` files and the xattrs use `user.overlay.`.
//!
//! Every operation goes through [`DirFd`]s opened beneath the upper root with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so nothing planted in the upper directory can make
//! the daemon (root) touch a file outside it. New entries are built in the work directory and
//! renamed into place, so a crash never leaves a partial entry in the upper; stray work files
//! are removed when the upper is opened.
//! Dependencies: sys (DirFd), layer::whiteout.

pub mod copy_up;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::layer::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::sys::DirFd;

/// Which on-disk conventions an upper directory uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Kernel overlayfs: 0/0 character-device whiteouts, `trusted.overlay.*` xattrs.
    Kernel,
    /// Unprivileged fallback: `.wh.NAME` whiteout files, `user.overlay.*` xattrs.
    User,
}

impl Format {
    /// The prefix of the private xattrs.
    pub fn xattr_prefix(self) -> &'static [u8] {
        match self {
            Format::Kernel => b"trusted.overlay.",
            Format::User => b"user.overlay.",
        }
    }

    fn xattr(self, suffix: &str) -> Vec<u8> {
        let mut v = self.xattr_prefix().to_vec();
        v.extend_from_slice(suffix.as_bytes());
        v
    }
}

/// Whether an xattr name is private to an overlay (never shown to users, never copied up).
pub fn is_private_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name == OVERRIDE_STAT
}

/// Where an unprivileged daemon records the owner and mode an entry should show but that it
/// may not set: `uid:gid:mode` (octal), as fuse-overlayfs and containers/storage do.
pub const OVERRIDE_STAT: &[u8] = b"user.containers.override_stat";

/// Parses an `OVERRIDE_STAT` value.
pub fn parse_override(v: &[u8]) -> Option<(u32, u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut it = s.trim().split(':');
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    Some((uid, gid, mode & 0o7777))
}

/// What an upper entry means for the merged view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpperEntry {
    /// No upper entry: the lower one (if any) shows through.
    Absent,
    /// A whiteout: the name is deleted.
    Whiteout,
    /// A directory; `opaque` hides the lower one, `redirect` names the lower directory it
    /// continues (after a rename).
    Dir {
        /// Lower children are hidden.
        opaque: bool,
        /// The lower path it was renamed from, absolute within the image.
        redirect: Option<Vec<u8>>,
    },
    /// Anything else; `metacopy` when its data is still the lower file's.
    Other {
        /// Metadata-only copy.
        metacopy: bool,
        /// `st_mode` of the entry.
        mode: u32,
        /// Inode number in the upper filesystem (hard links share it).
        ino: u64,
        /// Link count in the upper filesystem.
        nlink: u64,
    },
}

/// An opened upper layer: its root and work directories.
#[derive(Debug)]
pub struct Upper {
    root: DirFd,
    work: DirFd,
    /// The upper directory's path, for messages.
    pub path: PathBuf,
    /// The conventions in use.
    pub format: Format,
    temp_counter: AtomicU64,
}

/// Name prefix of the entries being built in the work directory.
const WORK_TEMP_PREFIX: &str = "#rimgfs.";

impl Upper {
    /// Opens (creating if missing) `upper` and `work`, which must be on one filesystem so that
    /// entries built in `work` can be renamed into `upper`. Probes which format may be used
    /// and removes what an interrupted run left in `work`.
    pub fn open(upper: &Path, work: &Path) -> io::Result<Upper> {
        for d in [upper, work] {
            std::fs::create_dir_all(d)?;
        }
        let (mu, mw) = (std::fs::metadata(upper)?, std::fs::metadata(work)?);
        if std::os::unix::fs::MetadataExt::dev(&mu) != std::os::unix::fs::MetadataExt::dev(&mw) {
            return Err(io::Error::other(format!(
                "work directory {} is not on the upper directory's filesystem",
                work.display()
            )));
        }
        let root = DirFd::open_root(upper)?;
        let work_fd = DirFd::open_root(work)?;
        let mut u = Upper {
            root,
            work: work_fd,
            path: upper.to_path_buf(),
            format: Format::Kernel,
            temp_counter: AtomicU64::new(0),
        };
        u.clean_work()?;
        u.format = u.probe_format();
        Ok(u)
    }

    /// Kernel format if this process may make 0/0 character devices and `trusted.*` xattrs
    /// in the work directory; otherwise the user fallback.
    fn probe_format(&self) -> Format {
        let name = self.temp_name();
        let ok = self.work.mknod(&name, libc::S_IFCHR, 0).is_ok()
            && self
                .work
                .set_xattr(&name, b"trusted.overlay.probe", b"y", 0)
                .is_ok();
        let _ = self.work.unlink(&name, false);
        if ok { Format::Kernel } else { Format::User }
    }

    /// Removes everything rimgfs left half-built in the work directory.
    fn clean_work(&self) -> io::Result<()> {
        for name in self.work.list()? {
            if name.as_bytes().starts_with(WORK_TEMP_PREFIX.as_bytes()) {
                remove_tree(&self.work, &name)?;
            }
        }
        Ok(())
    }

    /// A fresh name for an entry under construction in the work directory.
    pub fn temp_name(&self) -> OsString {
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        OsString::from(format!("{WORK_TEMP_PREFIX}{}.{n}", std::process::id()))
    }

    /// The work directory.
    pub fn work(&self) -> &DirFd {
        &self.work
    }

    /// Opens the upper directory at `path` (components relative to the root; empty = root).
    pub fn dir(&self, path: &[u8]) -> io::Result<DirFd> {
        self.root.open_beneath(Path::new(OsStr::from_bytes(path)))
    }

    /// Gives a fresh, empty upper root the image root's owner, mode, times and xattrs. An
    /// upper root that holds anything keeps its own: it is a mount's earlier state.
    pub fn adopt_root(
        &self,
        meta: &crate::layer::entry::Meta,
        xattrs: &[crate::layer::entry::Xattr],
    ) -> io::Result<()> {
        if !self.root.list()?.is_empty() {
            return Ok(());
        }
        let (parent, name) = self.root_parent()?;
        for (k, v) in xattrs.iter().filter(|(k, _)| !is_private_xattr(k)) {
            parent.set_xattr(name, k, v, 0)?;
        }
        self.set_owner(&parent, name, meta.uid, meta.gid, meta.mode)?;
        parent.chmod(name, meta.mode)?;
        let t = libc::timespec {
            tv_sec: meta.mtime,
            tv_nsec: i64::from(meta.mtime_nsec),
        };
        self.root.set_own_times(&[t, t])
    }

    /// Gives an entry an owner: chown where permitted; an unprivileged daemon records it
    /// (with the mode) in `OVERRIDE_STAT` instead, which the view then shows.
    pub fn set_owner(
        &self,
        dir: &DirFd,
        name: &OsStr,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> io::Result<()> {
        match dir.chown(name, Some(uid), Some(gid)) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && self.format == Format::User => {
                let v = format!("{uid}:{gid}:{:o}", mode & 0o7777);
                match dir.set_xattr(name, OVERRIDE_STAT, v.as_bytes(), 0) {
                    // Symlinks take no user.* attributes; they show the daemon's ids.
                    Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
                    r => r,
                }
            }
            r => r,
        }
    }

    /// The owner and mode an entry shows, when an unprivileged daemon recorded them.
    pub fn owner_override(&self, dir: &DirFd, name: Option<&OsStr>) -> Option<(u32, u32, u32)> {
        if self.format != Format::User {
            return None;
        }
        let v = match name {
            Some(n) => dir.get_xattr(n, OVERRIDE_STAT).ok()?,
            None => {
                let (parent, name) = self.root_parent().ok()?;
                parent.get_xattr(name, OVERRIDE_STAT).ok()?
            }
        };
        parse_override(&v)
    }

    /// The upper root's parent directory and the root's name in it: the one way to name the
    /// root itself to the calls that take a name (`l*xattr`, chown, chmod).
    pub fn root_parent(&self) -> io::Result<(DirFd, &OsStr)> {
        let parent = DirFd::open_root(&self.path.join(".."))?;
        let name = self
            .path
            .file_name()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        Ok((parent, name))
    }

    /// Whether the upper root itself is opaque (then no lower layer shows at all).
    pub fn root_is_opaque(&self) -> io::Result<bool> {
        let (parent, name) = self.root_parent()?;
        Ok(self
            .get_flag(&parent, name, "opaque")?
            .is_some_and(|v| v == b"y"))
    }

    /// What the upper says about `name` in the upper directory `dir`.
    pub fn classify(&self, dir: &DirFd, name: &OsStr) -> io::Result<UpperEntry> {
        if self.format == Format::User && dir.stat(Some(&whiteout_name(name))).is_ok() {
            return Ok(UpperEntry::Whiteout);
        }
        let st = match dir.stat(Some(name)) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(UpperEntry::Absent),
            Err(e) => return Err(e),
        };
        let fmt = st.st_mode & libc::S_IFMT;
        if fmt == libc::S_IFCHR && st.st_rdev == 0 {
            return Ok(UpperEntry::Whiteout);
        }
        if fmt == libc::S_IFDIR {
            let opaque = self
                .get_flag(dir, name, "opaque")?
                .is_some_and(|v| v == b"y")
                || (self.format == Format::User
                    && self.dir_child_exists(dir, name, OsStr::from_bytes(OPAQUE_MARKER)));
            let redirect = self.get_flag(dir, name, "redirect")?;
            return Ok(UpperEntry::Dir { opaque, redirect });
        }
        let metacopy = fmt == libc::S_IFREG && self.get_flag(dir, name, "metacopy")?.is_some();
        Ok(UpperEntry::Other {
            metacopy,
            mode: st.st_mode,
            ino: st.st_ino,
            nlink: st.st_nlink,
        })
    }

    fn dir_child_exists(&self, dir: &DirFd, name: &OsStr, child: &OsStr) -> bool {
        let mut p = name.as_bytes().to_vec();
        p.push(b'/');
        p.extend_from_slice(child.as_bytes());
        dir.open_beneath(Path::new(name))
            .is_ok_and(|d| d.stat(Some(child)).is_ok())
    }

    fn get_flag(&self, dir: &DirFd, name: &OsStr, suffix: &str) -> io::Result<Option<Vec<u8>>> {
        match dir.get_xattr(name, &self.format.xattr(suffix)) {
            Ok(v) => Ok(Some(v)),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODATA) | Some(libc::ENOTSUP)) => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Sets one of the overlay's private flags (`opaque`, `redirect`, `metacopy`) on an entry.
    pub fn set_flag(
        &self,
        dir: &DirFd,
        name: &OsStr,
        suffix: &str,
        value: &[u8],
    ) -> io::Result<()> {
        dir.set_xattr(name, &self.format.xattr(suffix), value, 0)
    }

    /// Removes one of the overlay's private flags, if set.
    pub fn clear_flag(&self, dir: &DirFd, name: &OsStr, suffix: &str) -> io::Result<()> {
        match dir.remove_xattr(name, &self.format.xattr(suffix)) {
            Err(e) if e.raw_os_error() != Some(libc::ENODATA) => Err(e),
            _ => Ok(()),
        }
    }

    /// Marks `name` in `dir` deleted: replaces whatever upper entry it has by a whiteout,
    /// built in the work directory and renamed into place (exchanging with a directory, which
    /// is then removed, so the name is never briefly absent).
    pub fn whiteout(&self, dir: &DirFd, name: &OsStr) -> io::Result<()> {
        match self.format {
            Format::Kernel => {
                let tmp = self.temp_name();
                self.work.mknod(&tmp, libc::S_IFCHR, 0)?;
                let r = self.work.rename(&tmp, dir, name, 0);
                if let Err(e) = r {
                    let _ = self.work.unlink(&tmp, false);
                    if e.raw_os_error() != Some(libc::EISDIR)
                        && e.raw_os_error() != Some(libc::ENOTEMPTY)
                    {
                        return Err(e);
                    }
                    // A directory is in the way: remove it first (its content is the caller's).
                    remove_tree(dir, name)?;
                    self.work.mknod(&tmp, libc::S_IFCHR, 0)?;
                    self.work.rename(&tmp, dir, name, 0)?;
                }
                Ok(())
            }
            Format::User => {
                if dir.stat(Some(name)).is_ok() {
                    remove_tree(dir, name)?;
                }
                let f =
                    dir.open_file(&whiteout_name(name), libc::O_CREAT | libc::O_WRONLY, 0o600)?;
                drop(f);
                Ok(())
            }
        }
    }

    /// Removes a whiteout of `name` (before a new entry takes the name).
    pub fn clear_whiteout(&self, dir: &DirFd, name: &OsStr) -> io::Result<()> {
        let victim = match self.format {
            Format::Kernel => name.to_os_string(),
            Format::User => whiteout_name(name),
        };
        match dir.unlink(&victim, false) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// The names of an upper directory as the merged view sees them: entries and whiteouts,
    /// without the user format's `.wh.` bookkeeping files, which come back as whiteouts.
    pub fn list(&self, dir: &DirFd) -> io::Result<Vec<(OsString, bool)>> {
        let mut out = Vec::new();
        for name in dir.list()? {
            let b = name.as_bytes();
            if self.format == Format::User {
                if b == OPAQUE_MARKER {
                    continue;
                }
                if let Some(target) = b.strip_prefix(WHITEOUT_PREFIX) {
                    out.push((OsString::from_vec(target.to_vec()), true));
                    continue;
                }
            }
            let wh = matches!(self.classify(dir, &name)?, UpperEntry::Whiteout);
            out.push((name, wh));
        }
        Ok(out)
    }
}

/// `.wh.NAME`.
fn whiteout_name(name: &OsStr) -> OsString {
    let mut v = WHITEOUT_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    OsString::from_vec(v)
}

/// Removes `name` in `dir` and, for a directory, everything below it, through descriptors.
pub fn remove_tree(dir: &DirFd, name: &OsStr) -> io::Result<()> {
    let st = match dir.stat(Some(name)) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = dir.open_beneath(Path::new(name))?;
        for child in sub.list()? {
            remove_tree(&sub, &child)?;
        }
        dir.unlink(name, true)
    } else {
        dir.unlink(name, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper() -> (tempfile::TempDir, Upper) {
        let t = tempfile::tempdir().unwrap();
        let u = Upper::open(&t.path().join("upper"), &t.path().join("work")).unwrap();
        (t, u)
    }

    #[test]
    fn upper_format_matches_privileges() {
        let (_t, u) = upper();
        let want = if nix::unistd::geteuid().is_root() {
            Format::Kernel
        } else {
            Format::User
        };
        assert_eq!(u.format, want);
    }

    #[test]
    fn upper_whiteout_replaces_entries_and_is_classified() {
        let (_t, u) = upper();
        let root = u.dir(b"").unwrap();
        let n = OsStr::new;
        assert_eq!(u.classify(&root, n("f")).unwrap(), UpperEntry::Absent);
        root.open_file(n("f"), libc::O_CREAT | libc::O_WRONLY, 0o644)
            .unwrap();
        u.whiteout(&root, n("f")).unwrap();
        assert_eq!(u.classify(&root, n("f")).unwrap(), UpperEntry::Whiteout);
        root.mkdir(n("d"), 0o755).unwrap();
        let d = u.dir(b"d").unwrap();
        d.open_file(n("inner"), libc::O_CREAT | libc::O_WRONLY, 0o644)
            .unwrap();
        u.whiteout(&root, n("d")).unwrap();
        assert_eq!(u.classify(&root, n("d")).unwrap(), UpperEntry::Whiteout);
        let mut listed = u.list(&root).unwrap();
        listed.sort();
        assert_eq!(
            listed,
            [(OsString::from("d"), true), (OsString::from("f"), true)]
        );
        u.clear_whiteout(&root, n("f")).unwrap();
        assert_eq!(u.classify(&root, n("f")).unwrap(), UpperEntry::Absent);
    }

    #[test]
    fn upper_dir_flags() {
        let (_t, u) = upper();
        let root = u.dir(b"").unwrap();
        let n = OsStr::new;
        root.mkdir(n("d"), 0o755).unwrap();
        assert_eq!(
            u.classify(&root, n("d")).unwrap(),
            UpperEntry::Dir {
                opaque: false,
                redirect: None
            }
        );
        u.set_flag(&root, n("d"), "opaque", b"y").unwrap();
        u.set_flag(&root, n("d"), "redirect", b"/old/d").unwrap();
        assert_eq!(
            u.classify(&root, n("d")).unwrap(),
            UpperEntry::Dir {
                opaque: true,
                redirect: Some(b"/old/d".to_vec())
            }
        );
        u.clear_flag(&root, n("d"), "opaque").unwrap();
        u.clear_flag(&root, n("d"), "opaque").unwrap();
        assert!(matches!(
            u.classify(&root, n("d")).unwrap(),
            UpperEntry::Dir { opaque: false, .. }
        ));
    }

    #[test]
    fn upper_open_cleans_stray_work_entries() {
        let t = tempfile::tempdir().unwrap();
        let work = t.path().join("work");
        std::fs::create_dir_all(work.join("#rimgfs.1.2/deep")).unwrap();
        std::fs::write(work.join("#rimgfs.1.3"), "partial").unwrap();
        std::fs::write(work.join("other"), "kept").unwrap();
        let _u = Upper::open(&t.path().join("upper"), &work).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(&work)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(left, ["other"]);
    }
}
