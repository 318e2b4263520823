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
//! A daemon writes in the one format it may ([`Format`]) and reads both, entry by entry, by
//! the rules of [`format`], which `diff` and `commit` read with too.
//!
//! Every operation goes through [`DirFd`]s opened beneath the upper root with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so nothing planted in the upper directory can make
//! the daemon (root) touch a file outside it; the directories last used stay open, and are
//! all let go whenever one moves or goes. New entries are built in the work directory and
//! renamed into place, so a crash never leaves a partial entry in the upper; stray work files
//! are removed when the upper is opened. Copy-up is [`copy_up`]'s.
//! Dependencies: sys (DirFd), layer (entry, whiteout names).

pub mod copy_up;
pub mod ephemeral;
pub mod format;

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::layer::entry::Xattr;
use crate::layer::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::sys::{DirFd, FileStat};
use format::{EntryStat, Name};
pub use format::{Flag, Format, OVERRIDE_STAT, Role, is_private_xattr};

/// What the upper holds under a name, as the merged view reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpperEntry {
    /// Nothing: the lower entry, if any, shows through.
    Absent,
    /// The name is deleted: by its own entry, or (`beside`) by a `.wh.NAME` file next to it.
    Whiteout {
        /// The whiteout is the `.wh.NAME` file, not an entry of the name itself.
        beside: bool,
    },
    /// An entry of the upper.
    Entry {
        /// What it means (never [`Role::Whiteout`]).
        role: Role,
        /// `st_mode`.
        mode: u32,
        /// Inode number in the upper filesystem (hard links share it).
        ino: u64,
        /// Link count in the upper filesystem.
        nlink: u64,
    },
}

impl UpperEntry {
    /// Whether the entry is a metadata-only copy (its data still the lower file's).
    pub fn is_metacopy(&self) -> bool {
        matches!(
            self,
            UpperEntry::Entry {
                role: Role::Metacopy { .. },
                ..
            }
        )
    }
}

/// An opened upper layer: its root and work directories.
#[derive(Debug)]
pub struct Upper {
    root: Arc<DirFd>,
    work: DirFd,
    /// Upper directories recently opened, by path (see [`Upper::dir`]).
    dirs: Mutex<OpenDirs>,
    /// The upper directory's path, for messages.
    pub path: PathBuf,
    /// The conventions in use.
    pub format: Format,
    temp_counter: AtomicU64,
}

/// Upper directories held open by path, so that a request on a directory's entries opens
/// nothing: each open beneath the root (`openat2`) walks the whole path again.
/// The daemon is the upper's only writer, so a path names another directory only after it
/// moved or removed one, and then it forgets them all ([`Upper::forget_dirs`]).
#[derive(Debug)]
struct OpenDirs {
    /// Moves on at each forget: a directory opened before one is not kept.
    generation: u64,
    open: lru::LruCache<Vec<u8>, Arc<DirFd>>,
}

/// How many upper directories stay open: a working set of directories, well within any
/// descriptor limit.
const OPEN_DIRS: usize = 256;

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
            root: Arc::new(root),
            work: work_fd,
            dirs: Mutex::new(OpenDirs {
                generation: 0,
                open: lru::LruCache::new(
                    std::num::NonZeroUsize::new(OPEN_DIRS).unwrap_or(std::num::NonZeroUsize::MIN),
                ),
            }),
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

    /// The upper directory at `path` (components relative to the root; empty = root), held
    /// open: one opened since the last [`Upper::forget_dirs`] is used again.
    pub fn dir(&self, path: &[u8]) -> io::Result<Arc<DirFd>> {
        if path.is_empty() {
            return Ok(self.root.clone());
        }
        let generation = {
            let mut d = self.open_dirs()?;
            if let Some(dir) = d.open.get(path) {
                return Ok(dir.clone());
            }
            d.generation
        };
        let dir = Arc::new(self.root.open_beneath(Path::new(OsStr::from_bytes(path)))?);
        let mut d = self.open_dirs()?;
        // Opened before a move or removal finished: it may be another directory by now.
        if d.generation == generation {
            d.open.put(path.to_vec(), dir.clone());
        }
        Ok(dir)
    }

    /// Forgets the directories held open: called right after a directory moved or went
    /// away, before anything else looks one up.
    pub fn forget_dirs(&self) {
        if let Ok(mut d) = self.open_dirs() {
            d.generation += 1;
            d.open.clear();
        }
    }

    fn open_dirs(&self) -> io::Result<std::sync::MutexGuard<'_, OpenDirs>> {
        self.dirs
            .lock()
            .map_err(|_| io::Error::other("upper directory table poisoned"))
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
        for (k, v) in xattrs.iter().filter(|(k, _)| **k != *OVERRIDE_STAT) {
            parent.set_xattr(name, &format::escape_xattr(k), v, 0)?;
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
    /// (with the mode) in [`OVERRIDE_STAT`] instead, which the view then shows. An entry that
    /// already carries a recorded owner gets the new one recorded too, since that is what
    /// every reader shows.
    pub fn set_owner(
        &self,
        dir: &DirFd,
        name: &OsStr,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> io::Result<()> {
        let record = || {
            let v = format::override_value(uid, gid, mode);
            match dir.set_xattr(name, OVERRIDE_STAT, v.as_bytes(), 0) {
                // Symlinks take no user.* attributes; they show the daemon's ids.
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(()),
                r => r,
            }
        };
        match dir.chown(name, Some(uid), Some(gid)) {
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && self.format == Format::User => {
                record()
            }
            Ok(()) if dir.get_xattr(name, OVERRIDE_STAT).is_ok() => record(),
            r => r,
        }
    }

    /// The owner and mode an entry shows, when an unprivileged daemon recorded them.
    pub fn owner_override(&self, dir: &DirFd, name: Option<&OsStr>) -> Option<(u32, u32, u32)> {
        let v = match name {
            Some(n) => dir.get_xattr(n, OVERRIDE_STAT).ok()?,
            None => {
                let (parent, name) = self.root_parent().ok()?;
                parent.get_xattr(name, OVERRIDE_STAT).ok()?
            }
        };
        format::parse_override(&v)
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
        let st = self.root.stat(None)?;
        let (parent, name) = self.root_parent()?;
        let marker = self
            .root
            .stat(Some(OsStr::from_bytes(OPAQUE_MARKER)))
            .is_ok();
        let facts = entry_stat(&st, marker);
        let role = format::classify(&facts, &self.private_xattrs(&parent, name)?);
        Ok(matches!(role, Ok(Role::Dir { opaque: true, .. })))
    }

    /// What the upper holds under `name` in the upper directory `dir`. An entry the format
    /// cannot read (a redirect that climbs out) is an `InvalidData` error naming it.
    pub fn classify(&self, dir: &DirFd, name: &OsStr) -> io::Result<UpperEntry> {
        let st = match dir.stat(Some(name)) {
            Ok(st) => st,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(match self.has_whiteout_file(dir, name)? {
                    true => UpperEntry::Whiteout { beside: true },
                    false => UpperEntry::Absent,
                });
            }
            Err(e) => return Err(e),
        };
        let is_file = st.st_mode & libc::S_IFMT == libc::S_IFREG;
        if format::name(name.as_bytes(), is_file) != Name::Entry {
            // Bookkeeping of the format, never an entry of its own name.
            return Ok(UpperEntry::Absent);
        }
        let marker = st.st_mode & libc::S_IFMT == libc::S_IFDIR && self.holds_marker(dir, name)?;
        let facts = entry_stat(&st, marker);
        let xattrs = match facts.reads_xattrs() {
            true => self.private_xattrs(dir, name)?,
            false => Vec::new(),
        };
        match format::classify(&facts, &xattrs) {
            Ok(Role::Whiteout) => Ok(UpperEntry::Whiteout { beside: false }),
            Ok(role) => Ok(UpperEntry::Entry {
                role,
                mode: st.st_mode,
                ino: st.st_ino,
                nlink: st.st_nlink,
            }),
            Err(reason) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {reason}", self.path.join(name).display()),
            )),
        }
    }

    /// Whether `.wh.NAME` beside `name` is a whiteout file.
    fn has_whiteout_file(&self, dir: &DirFd, name: &OsStr) -> io::Result<bool> {
        match dir.stat(Some(&whiteout_name(name))) {
            Ok(st) => Ok(st.st_mode & libc::S_IFMT == libc::S_IFREG),
            // `.wh.` + a 252-byte or longer name is beyond what any name can be.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENAMETOOLONG)) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the directory `dir/name` holds the opaque marker (of any type): one
    /// `openat2` beneath `dir`, which fails with `ENOTDIR` (or `ELOOP` for a symlink) on a
    /// marker that exists and is not a directory.
    fn holds_marker(&self, dir: &DirFd, name: &OsStr) -> io::Result<bool> {
        let marker = Path::new(name).join(OsStr::from_bytes(OPAQUE_MARKER));
        match dir.open_beneath(&marker) {
            Ok(_) => Ok(true),
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOTDIR | libc::ELOOP) => Ok(true),
                Some(libc::ENOENT) => Ok(false),
                _ => Err(e),
            },
        }
    }

    /// The overlay's private attributes of an entry, with their values.
    fn private_xattrs(&self, dir: &DirFd, name: &OsStr) -> io::Result<Vec<Xattr>> {
        let names = match dir.list_xattr(name) {
            Ok(n) => n,
            // A filesystem without extended attributes has none to read.
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for k in names.into_iter().filter(|k| format::is_bookkeeping(k)) {
            match dir.get_xattr(name, &k) {
                Ok(v) => out.push((k.into_boxed_slice(), v.into_boxed_slice())),
                // Removed since it was listed.
                Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Sets one of the overlay's private flags on an entry, in this daemon's format.
    pub fn set_flag(&self, dir: &DirFd, name: &OsStr, flag: Flag, value: &[u8]) -> io::Result<()> {
        dir.set_xattr(name, &self.format.xattr(flag), value, 0)
    }

    /// Removes one of the overlay's private flags, in either format, if set.
    pub fn clear_flag(&self, dir: &DirFd, name: &OsStr, flag: Flag) -> io::Result<()> {
        for f in [Format::Kernel, Format::User] {
            match dir.remove_xattr(name, &f.xattr(flag)) {
                Err(e) if !matches!(e.raw_os_error(), Some(libc::ENODATA | libc::EPERM)) => {
                    return Err(e);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Marks `name` in `dir` deleted: a name without an upper entry gets its whiteout in
    /// place, in one call; whatever upper entry a name has is replaced by a whiteout built in
    /// the work directory and renamed over it (exchanged with a directory, which is then
    /// removed).
    pub fn whiteout(&self, dir: &DirFd, name: &OsStr) -> io::Result<()> {
        match self.format {
            Format::Kernel => {
                match dir.mknod(name, libc::S_IFCHR, 0) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    r => return r,
                }
                let tmp = self.temp_name();
                self.work.mknod(&tmp, libc::S_IFCHR, 0)?;
                let mut e = match self.work.rename(&tmp, dir, name, 0) {
                    Ok(()) => return Ok(()),
                    Err(e) => e,
                };
                if matches!(e.raw_os_error(), Some(libc::EISDIR | libc::ENOTEMPTY)) {
                    // A directory is in the way: exchanged for the whiteout, then removed
                    // from the work directory, so the name never shows the lower entry.
                    match self.work.rename(&tmp, dir, name, libc::RENAME_EXCHANGE) {
                        Ok(()) => return remove_tree(&self.work, &tmp),
                        Err(x) => e = x,
                    }
                }
                let _ = self.work.unlink(&tmp, false);
                Err(e)
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

    /// Removes a whiteout of `name` (before a new entry takes the name): the entry of the
    /// name itself, or with `beside`, the `.wh.NAME` file.
    pub fn clear_whiteout(&self, dir: &DirFd, name: &OsStr, beside: bool) -> io::Result<()> {
        let victim = match beside {
            false => name.to_os_string(),
            true => whiteout_name(name),
        };
        match dir.unlink(&victim, false) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        }
    }

    /// The names of an upper directory as the merged view sees them, each with whether it is
    /// a whiteout; the format's bookkeeping names are left out.
    pub fn list(&self, dir: &DirFd) -> io::Result<Vec<(OsString, bool)>> {
        let names = dir.list()?;
        let present: std::collections::HashSet<&[u8]> =
            names.iter().map(|n| n.as_bytes()).collect();
        let mut out = Vec::new();
        for name in &names {
            let st = match dir.stat(Some(name)) {
                Ok(st) => st,
                // Gone since it was listed.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let is_file = st.st_mode & libc::S_IFMT == libc::S_IFREG;
            match format::name(name.as_bytes(), is_file) {
                Name::Hidden => {}
                Name::WhiteoutOf(target) if !present.contains(target) => {
                    out.push((OsString::from_vec(target.to_vec()), true));
                }
                Name::WhiteoutOf(_) => {}
                Name::Entry => {
                    // Only whether it is a whiteout matters here; most entries cannot be.
                    let facts = entry_stat(&st, false);
                    let xattrs = match facts.reads_xattrs() {
                        true => self.private_xattrs(dir, name)?,
                        false => Vec::new(),
                    };
                    let wh = facts.may_be_whiteout()
                        && matches!(format::classify(&facts, &xattrs), Ok(Role::Whiteout));
                    out.push((name.clone(), wh));
                }
            }
        }
        Ok(out)
    }
}

/// What the format looks at of an entry's `stat`.
fn entry_stat(st: &FileStat, opaque_marker: bool) -> EntryStat {
    EntryStat {
        mode: st.st_mode,
        rdev: st.st_rdev,
        size: st.st_size as u64,
        opaque_marker,
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

    /// The role of a classified entry, or of what is not one.
    fn role(e: UpperEntry) -> Option<Role> {
        match e {
            UpperEntry::Entry { role, .. } => Some(role),
            UpperEntry::Whiteout { .. } => Some(Role::Whiteout),
            UpperEntry::Absent => None,
        }
    }

    #[test]
    fn upper_whiteout_replaces_entries_and_is_classified() {
        let (_t, u) = upper();
        let root = u.dir(b"").unwrap();
        let n = OsStr::new;
        // The whiteout this daemon writes: in place, or a `.wh.` file beside.
        let beside = u.format == Format::User;
        assert_eq!(u.classify(&root, n("f")).unwrap(), UpperEntry::Absent);
        root.open_file(n("f"), libc::O_CREAT | libc::O_WRONLY, 0o644)
            .unwrap();
        u.whiteout(&root, n("f")).unwrap();
        assert_eq!(
            u.classify(&root, n("f")).unwrap(),
            UpperEntry::Whiteout { beside }
        );
        root.mkdir(n("d"), 0o755).unwrap();
        let d = u.dir(b"d").unwrap();
        d.open_file(n("inner"), libc::O_CREAT | libc::O_WRONLY, 0o644)
            .unwrap();
        u.whiteout(&root, n("d")).unwrap();
        assert_eq!(
            u.classify(&root, n("d")).unwrap(),
            UpperEntry::Whiteout { beside }
        );
        // A name without an upper entry gets one too.
        u.whiteout(&root, n("g")).unwrap();
        assert_eq!(
            u.classify(&root, n("g")).unwrap(),
            UpperEntry::Whiteout { beside }
        );
        let left = u.work().list().unwrap();
        assert!(
            !left
                .iter()
                .any(|w| w.as_bytes().starts_with(WORK_TEMP_PREFIX.as_bytes())),
            "left in the work directory: {left:?}"
        );
        let mut listed = u.list(&root).unwrap();
        listed.sort();
        assert_eq!(
            listed,
            [
                (OsString::from("d"), true),
                (OsString::from("f"), true),
                (OsString::from("g"), true)
            ]
        );
        u.clear_whiteout(&root, n("f"), beside).unwrap();
        assert_eq!(u.classify(&root, n("f")).unwrap(), UpperEntry::Absent);
    }

    #[test]
    fn upper_dir_flags() {
        let (_t, u) = upper();
        let root = u.dir(b"").unwrap();
        let n = OsStr::new;
        root.mkdir(n("d"), 0o755).unwrap();
        let dir = |opaque, redirect| Some(Role::Dir { opaque, redirect });
        assert_eq!(role(u.classify(&root, n("d")).unwrap()), dir(false, None));
        u.set_flag(&root, n("d"), Flag::Opaque, b"y").unwrap();
        u.set_flag(&root, n("d"), Flag::Redirect, b"/old/d")
            .unwrap();
        let old = Some(format::Redirect::Absolute(b"old/d".to_vec()));
        assert_eq!(role(u.classify(&root, n("d")).unwrap()), dir(true, old));
        u.clear_flag(&root, n("d"), Flag::Opaque).unwrap();
        u.clear_flag(&root, n("d"), Flag::Opaque).unwrap();
        assert!(matches!(
            role(u.classify(&root, n("d")).unwrap()),
            Some(Role::Dir { opaque: false, .. })
        ));
        // A redirect that climbs out is refused, naming the entry.
        u.set_flag(&root, n("d"), Flag::Redirect, b"/../etc")
            .unwrap();
        let e = u.classify(&root, n("d")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("upper/d: bad redirect"), "{e}");
    }

    /// Whatever format this daemon writes, it reads entries written in the unprivileged one
    /// exactly as `diff` does (the kernel's `trusted.*` ones need root to be seen at all).
    #[test]
    fn upper_reads_the_fallback_format_whatever_it_writes() {
        let (t, u) = upper();
        let up = t.path().join("upper");
        let n = OsStr::new;
        let x = |p: &str, k: &str, v: &[u8]| {
            u.dir(b"")
                .unwrap()
                .set_xattr(n(p), k.as_bytes(), v, 0)
                .unwrap()
        };
        std::fs::write(up.join(".wh.gone"), "").unwrap();
        std::fs::write(up.join("back"), "b").unwrap();
        std::fs::write(up.join(".wh.back"), "").unwrap();
        std::fs::create_dir(up.join(".wh.notfile")).unwrap();
        for d in ["opq", "marked", "moved"] {
            std::fs::create_dir(up.join(d)).unwrap();
        }
        x("opq", "user.overlay.opaque", b"y");
        std::fs::write(up.join("marked/.wh..wh..opq"), "").unwrap();
        x("moved", "user.overlay.redirect", b"/from");
        std::fs::write(up.join("meta"), "").unwrap();
        x("meta", "user.overlay.metacopy", b"");
        std::fs::write(up.join(".wh..wh.plnk"), "").unwrap();
        let root = u.dir(b"").unwrap();
        let dir = |opaque, redirect| Some(Role::Dir { opaque, redirect });
        let cases = [
            ("gone", Some(Role::Whiteout)),
            // An entry beside its `.wh.` file wins.
            ("back", Some(Role::Plain)),
            (".wh.notfile", dir(false, None)),
            ("opq", dir(true, None)),
            ("marked", dir(true, None)),
            (
                "moved",
                dir(false, Some(format::Redirect::Absolute(b"from".to_vec()))),
            ),
            ("meta", Some(Role::Metacopy { redirect: None })),
            // Bookkeeping names are no entries.
            (".wh.gone", None),
            (".wh..wh.plnk", None),
            (".wh..wh..opq", None),
            ("nothing", None),
        ];
        for (name, want) in cases {
            assert_eq!(role(u.classify(&root, n(name)).unwrap()), want, "{name}");
        }
        assert_eq!(
            u.classify(&root, n("gone")).unwrap(),
            UpperEntry::Whiteout { beside: true }
        );
        let mut listed = u.list(&root).unwrap();
        listed.sort();
        let want: Vec<(OsString, bool)> = [
            (".wh.notfile", false),
            ("back", false),
            ("gone", true),
            ("marked", false),
            ("meta", false),
            ("moved", false),
            ("opq", false),
        ]
        .iter()
        .map(|(k, wh)| (OsString::from(k), *wh))
        .collect();
        assert_eq!(listed, want);
        // The root is opaque by the marker too.
        assert!(!u.root_is_opaque().unwrap());
        std::fs::write(up.join(".wh..wh..opq"), "").unwrap();
        assert!(u.root_is_opaque().unwrap());
    }

    #[test]
    fn upper_set_owner_keeps_a_recorded_owner_true() {
        let (t, u) = upper();
        let root = u.dir(b"").unwrap();
        let f = OsStr::new("f");
        std::fs::write(t.path().join("upper/f"), "").unwrap();
        root.set_xattr(f, OVERRIDE_STAT, b"0:0:644", 0).unwrap();
        let me = (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        );
        // Owners this process may give: itself.
        u.set_owner(&root, f, me.0, me.1, 0o600).unwrap();
        assert_eq!(u.owner_override(&root, Some(f)), Some((me.0, me.1, 0o600)));
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
