//! Directories held open by descriptor: every operation on the upper and work trees goes
//! through one, by `*at()` calls on single names, so nothing planted in the tree can lead an
//! operation outside it. Extended attributes of entries are in [`super::xattr`].
//! Dependencies: libc, nix.

use std::io;
use std::os::unix::fs::OpenOptionsExt;

use super::{cstr, cvt};

/// A directory held open by descriptor, through which every operation on the upper tree goes.
///
/// Names passed to its methods are single path components; paths of several components are
/// opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so nothing a user plants in
/// the upper directory (a symlink, `..`, a magic link) can lead an operation outside it, even
/// though the daemon runs as root.
#[derive(Debug)]
pub struct DirFd(pub(super) std::os::fd::OwnedFd);

/// What `DirFd::stat` reports about an entry.
pub type FileStat = libc::stat;

/// `name` itself if it is one path component (not empty, `.`, `..`, no `/` or NUL), else
/// `EINVAL`.
pub(super) fn one_component(name: &std::ffi::OsStr) -> io::Result<&std::ffi::OsStr> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(name)
}

/// The longest path opened in one call: below `PATH_MAX` (4096, counting its NUL).
const OPEN_PIECE: usize = 4000;

/// `path` cut at `/` into pieces shorter than `max` bytes each (a single component is at
/// most 255 bytes, so one always fits); empty components are dropped.
fn path_pieces(path: &[u8], max: usize) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut rest = path;
    loop {
        let skip = rest.iter().take_while(|&&c| c == b'/').count();
        rest = &rest[skip..];
        if rest.is_empty() {
            return pieces;
        }
        let cut = match rest.len() < max {
            true => rest.len(),
            // At the last `/` that fits; a component too long for any filesystem is left
            // whole, for the kernel to refuse.
            false => rest[..max]
                .iter()
                .rposition(|&c| c == b'/')
                .or_else(|| rest.iter().position(|&c| c == b'/'))
                .unwrap_or(rest.len()),
        };
        let piece = &rest[..cut];
        let kept = piece.iter().rposition(|&c| c != b'/').map_or(0, |i| i + 1);
        pieces.push(&piece[..kept]);
        rest = &rest[cut..];
    }
}

impl DirFd {
    /// Opens the root of a tree (the one path the user named; it may be a symlink).
    pub fn open_root(path: &std::path::Path) -> io::Result<DirFd> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        Ok(DirFd(f.into()))
    }

    /// A second descriptor of the same directory, for a thread of its own.
    pub fn try_clone(&self) -> io::Result<DirFd> {
        Ok(DirFd(self.0.try_clone()?))
    }

    /// Opens the directory at `rel` (components separated by `/`) beneath this one, refusing
    /// symlinks and `..` anywhere on the way. A path of any length: one longer than the kernel
    /// takes at once is opened a piece at a time, each piece beneath the directory the one
    /// before it opened.
    pub fn open_beneath(&self, rel: &std::path::Path) -> io::Result<DirFd> {
        use std::os::unix::ffi::OsStrExt;
        let b = rel.as_os_str().as_bytes();
        if b.len() < OPEN_PIECE {
            return self.open_piece(rel);
        }
        let mut dir: Option<DirFd> = None;
        for piece in path_pieces(b, OPEN_PIECE) {
            let p = std::path::Path::new(std::ffi::OsStr::from_bytes(piece));
            dir = Some(dir.as_ref().unwrap_or(self).open_piece(p)?);
        }
        dir.map_or_else(|| self.open_piece(std::path::Path::new("")), Ok)
    }

    fn open_piece(&self, rel: &std::path::Path) -> io::Result<DirFd> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let rel = if rel.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            rel
        };
        Ok(DirFd(openat2(&self.0, rel, how).map_err(io::Error::from)?))
    }

    /// Opens a file entry of this directory (never through a symlink).
    pub fn open_file(
        &self,
        name: &std::ffi::OsStr,
        flags: i32,
        mode: u32,
    ) -> io::Result<std::fs::File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let c = cstr(one_component(name)?)?;
        let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: `c` is a valid C string and the descriptor is owned by `self`; openat
        // returns a new descriptor that the File takes ownership of.
        let fd = cvt(unsafe { libc::openat(self.0.as_raw_fd(), c.as_ptr(), flags, mode) })?;
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        Ok(unsafe { std::fs::File::from_raw_fd(fd) })
    }

    /// `fstatat` without following a symlink; `None` for the directory itself.
    pub fn stat(&self, name: Option<&std::ffi::OsStr>) -> io::Result<FileStat> {
        use std::os::fd::AsRawFd;
        let (c, flags) = match name {
            Some(n) => (cstr(one_component(n)?)?, libc::AT_SYMLINK_NOFOLLOW),
            None => (cstr(std::ffi::OsStr::new(""))?, libc::AT_EMPTY_PATH),
        };
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        // SAFETY: `st` is a valid out-pointer for a `struct stat`; fstatat fully initialises it
        // on success, which is the only case where it is read.
        cvt(unsafe { libc::fstatat(self.0.as_raw_fd(), c.as_ptr(), st.as_mut_ptr(), flags) })?;
        // SAFETY: fstatat succeeded, so `st` is initialised.
        Ok(unsafe { st.assume_init() })
    }

    /// Creates a directory.
    pub fn mkdir(&self, name: &std::ffi::OsStr, mode: u32) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let c = cstr(one_component(name)?)?;
        // SAFETY: valid descriptor and C string.
        cvt(unsafe { libc::mkdirat(self.0.as_raw_fd(), c.as_ptr(), mode) }).map(drop)
    }

    /// Creates a device, fifo or socket node (`mode` carries the type bits).
    pub fn mknod(&self, name: &std::ffi::OsStr, mode: u32, rdev: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let c = cstr(one_component(name)?)?;
        // SAFETY: valid descriptor and C string.
        cvt(unsafe { libc::mknodat(self.0.as_raw_fd(), c.as_ptr(), mode, rdev) }).map(drop)
    }

    /// Creates a symlink `name` → `target`.
    pub fn symlink(&self, target: &std::ffi::OsStr, name: &std::ffi::OsStr) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let t = cstr(target)?;
        let c = cstr(one_component(name)?)?;
        // SAFETY: valid descriptor and C strings.
        cvt(unsafe { libc::symlinkat(t.as_ptr(), self.0.as_raw_fd(), c.as_ptr()) }).map(drop)
    }

    /// Reads a symlink's target.
    pub fn readlink(&self, name: &std::ffi::OsStr) -> io::Result<std::ffi::OsString> {
        let c = one_component(name)?;
        nix::fcntl::readlinkat(&self.0, c).map_err(io::Error::from)
    }

    /// Creates a hard link `self/name` to `from/old`.
    pub fn link(
        &self,
        from: &DirFd,
        old: &std::ffi::OsStr,
        name: &std::ffi::OsStr,
    ) -> io::Result<()> {
        nix::unistd::linkat(
            &from.0,
            one_component(old)?,
            &self.0,
            one_component(name)?,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(io::Error::from)
    }

    /// Removes an entry (`dir` for a directory).
    pub fn unlink(&self, name: &std::ffi::OsStr, dir: bool) -> io::Result<()> {
        let flag = if dir {
            nix::unistd::UnlinkatFlags::RemoveDir
        } else {
            nix::unistd::UnlinkatFlags::NoRemoveDir
        };
        nix::unistd::unlinkat(&self.0, one_component(name)?, flag).map_err(io::Error::from)
    }

    /// `renameat2` between two directories, with `RENAME_NOREPLACE`/`RENAME_EXCHANGE` flags.
    pub fn rename(
        &self,
        name: &std::ffi::OsStr,
        to: &DirFd,
        new_name: &std::ffi::OsStr,
        flags: u32,
    ) -> io::Result<()> {
        let flags = nix::fcntl::RenameFlags::from_bits_truncate(flags);
        nix::fcntl::renameat2(
            &self.0,
            one_component(name)?,
            &to.0,
            one_component(new_name)?,
            flags,
        )
        .map_err(io::Error::from)
    }

    /// Changes owner of an entry (never through a symlink).
    pub fn chown(
        &self,
        name: &std::ffi::OsStr,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> io::Result<()> {
        nix::unistd::fchownat(
            &self.0,
            one_component(name)?,
            uid.map(nix::unistd::Uid::from_raw),
            gid.map(nix::unistd::Gid::from_raw),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io::Error::from)
    }
    /// Sets the permission bits of an entry that is not a symlink (symlinks have none).
    pub fn chmod(&self, name: &std::ffi::OsStr, mode: u32) -> io::Result<()> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let c = cstr(one_component(name)?)?;
        // Pin the entry itself (never a symlink's target) with an O_PATH descriptor, check it,
        // then change the mode through that descriptor's /proc link: a symlink swapped in
        // after the check cannot redirect the chmod anywhere.
        let flags = libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        // SAFETY: valid descriptor and C string; the new descriptor is owned below.
        let fd = cvt(unsafe { libc::openat(self.0.as_raw_fd(), c.as_ptr(), flags) })?;
        // SAFETY: `fd` was just returned by openat and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        let empty = cstr(std::ffi::OsStr::new(""))?;
        // SAFETY: valid descriptor, C string and out-pointer; read only on success.
        cvt(unsafe {
            libc::fstatat(
                fd.as_raw_fd(),
                empty.as_ptr(),
                st.as_mut_ptr(),
                libc::AT_EMPTY_PATH,
            )
        })?;
        // SAFETY: fstatat succeeded.
        if unsafe { st.assume_init() }.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        super::file::chmod_fd(&fd, mode)
    }

    /// Sets access and modification times of an entry, not following a symlink.
    pub fn utimens(&self, name: &std::ffi::OsStr, times: &[libc::timespec; 2]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let c = cstr(one_component(name)?)?;
        // SAFETY: valid descriptor, C string and a pointer to two timespecs.
        cvt(unsafe {
            libc::utimensat(
                self.0.as_raw_fd(),
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        })
        .map(drop)
    }

    /// Flushes this directory to disk.
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(&self.0).map_err(io::Error::from)
    }

    /// Sets this directory's own access and modification times.
    pub fn set_own_times(&self, times: &[libc::timespec; 2]) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: valid descriptor and a pointer to two timespecs.
        cvt(unsafe { libc::futimens(self.0.as_raw_fd(), times.as_ptr()) }).map(drop)
    }

    /// The names in this directory (without `.` and `..`).
    pub fn list(&self) -> io::Result<Vec<std::ffi::OsString>> {
        let d = nix::dir::Dir::openat(
            &self.0,
            ".",
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let mut out = Vec::new();
        for e in d {
            let e = e.map_err(io::Error::from)?;
            let n = e.file_name().to_bytes();
            if n != b"." && n != b".." {
                use std::os::unix::ffi::OsStrExt;
                out.push(std::ffi::OsStr::from_bytes(n).to_os_string());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn path_pieces_cut_at_slashes_below_the_limit() {
        assert_eq!(path_pieces(b"", 8), Vec::<&[u8]>::new());
        assert_eq!(path_pieces(b"a/b", 8), vec![&b"a/b"[..]]);
        assert_eq!(
            path_pieces(b"aa/bb/cc/dd/ee", 6),
            vec![&b"aa/bb"[..], b"cc/dd", b"ee"]
        );
        assert_eq!(path_pieces(b"/aa//bb/", 4), vec![&b"aa"[..], b"bb"]);
        assert_eq!(path_pieces(b"abcdefgh/a", 4), vec![&b"abcdefgh"[..], b"a"]);
    }

    #[test]
    fn dirfd_opens_paths_longer_than_path_max_beneath() {
        let t = tempfile::tempdir().unwrap();
        let name = "d".repeat(200);
        let mut rel = String::new();
        // 30 levels of 201 bytes: past PATH_MAX from the root, each level made relative to
        // the one above (no absolute path this long can be used).
        let mut d = DirFd::open_root(t.path()).unwrap();
        for _ in 0..30 {
            d.mkdir(OsStr::new(&name), 0o755).unwrap();
            d = d.open_beneath(std::path::Path::new(&name)).unwrap();
            rel.push_str(&name);
            rel.push('/');
        }
        d.mkdir(OsStr::new("end"), 0o755).unwrap();
        rel.push_str("end");
        assert!(rel.len() > 4096);
        let root = DirFd::open_root(t.path()).unwrap();
        let end = root.open_beneath(std::path::Path::new(&rel)).unwrap();
        assert!(end.list().unwrap().is_empty());
        // Still beneath: a `..` climbing out is refused.
        let bad = format!("{rel}{}", "/..".repeat(40));
        assert!(root.open_beneath(std::path::Path::new(&bad)).is_err());
    }

    #[test]
    fn dirfd_rejects_paths_that_are_not_one_component() {
        let t = tempfile::tempdir().unwrap();
        let d = DirFd::open_root(t.path()).unwrap();
        for bad in ["", ".", "..", "a/b", "/abs"] {
            let e = d.mkdir(OsStr::new(bad), 0o755).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad:?}");
        }
    }

    #[test]
    fn dirfd_never_follows_a_planted_symlink_out_of_the_tree() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        let root = t.path().join("upper");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("evil_dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("evil_file")).unwrap();
        std::os::unix::fs::symlink("..", root.join("real/up")).unwrap();
        let d = DirFd::open_root(&root).unwrap();

        // Directory walks refuse symlinks and `..` on the way.
        for rel in [
            "evil_dir",
            "real/up",
            "real/up/outside",
            "../outside",
            "real/../..",
        ] {
            assert!(
                d.open_beneath(std::path::Path::new(rel)).is_err(),
                "{rel} opened"
            );
        }
        assert!(d.open_beneath(std::path::Path::new("real")).is_ok());
        // Opening, chmod, chown and xattrs act on the link itself or fail.
        let e = d
            .open_file(OsStr::new("evil_file"), libc::O_WRONLY | libc::O_TRUNC, 0)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(d.chmod(OsStr::new("evil_file"), 0o777).is_err());
        d.chown(OsStr::new("evil_file"), Some(1234), Some(1234))
            .unwrap();
        let _ = d.set_xattr(OsStr::new("evil_file"), b"trusted.test", b"x", 0);
        let _ = d.set_xattr(OsStr::new("evil_dir"), b"user.test", b"x", 0);
        d.unlink(OsStr::new("evil_dir"), false).unwrap();
        // The outside is untouched.
        let m = std::fs::metadata(outside.join("secret")).unwrap();
        assert_ne!(m.uid(), 1234);
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"s");
        assert!(xattr_names(&outside.join("secret")).is_empty());
        assert!(xattr_names(&outside).is_empty());
        assert!(outside.is_dir());
    }

    fn xattr_names(p: &std::path::Path) -> Vec<Vec<u8>> {
        let d = DirFd::open_root(p.parent().unwrap()).unwrap();
        d.list_xattr(p.file_name().unwrap()).unwrap()
    }

    #[test]
    fn dirfd_entry_operations() {
        let t = tempfile::tempdir().unwrap();
        let d = DirFd::open_root(t.path()).unwrap();
        d.mkdir(OsStr::new("sub"), 0o700).unwrap();
        let sub = d.open_beneath(std::path::Path::new("sub")).unwrap();
        let mut f = sub
            .open_file(OsStr::new("f"), libc::O_CREAT | libc::O_WRONLY, 0o640)
            .unwrap();
        std::io::Write::write_all(&mut f, b"data").unwrap();
        sub.link(&sub, OsStr::new("f"), OsStr::new("g")).unwrap();
        assert_eq!(sub.stat(Some(OsStr::new("g"))).unwrap().st_nlink, 2);
        sub.symlink(OsStr::new("f"), OsStr::new("l")).unwrap();
        assert_eq!(sub.readlink(OsStr::new("l")).unwrap(), "f");
        sub.set_xattr(OsStr::new("f"), b"user.k", b"", 0).unwrap();
        assert_eq!(sub.get_xattr(OsStr::new("f"), b"user.k").unwrap(), b"");
        assert_eq!(
            sub.list_xattr(OsStr::new("f")).unwrap(),
            vec![b"user.k".to_vec()]
        );
        sub.remove_xattr(OsStr::new("f"), b"user.k").unwrap();
        sub.chmod(OsStr::new("f"), 0o4755).unwrap();
        assert_eq!(
            sub.stat(Some(OsStr::new("f"))).unwrap().st_mode & 0o7777,
            0o4755
        );
        let times = [
            libc::timespec {
                tv_sec: 5,
                tv_nsec: 0,
            },
            libc::timespec {
                tv_sec: -7,
                tv_nsec: 9,
            },
        ];
        sub.utimens(OsStr::new("l"), &times).unwrap();
        assert_eq!(sub.stat(Some(OsStr::new("l"))).unwrap().st_mtime, -7);
        sub.rename(
            OsStr::new("g"),
            &d,
            OsStr::new("moved"),
            libc::RENAME_NOREPLACE,
        )
        .unwrap();
        let e = d
            .rename(
                OsStr::new("moved"),
                &sub,
                OsStr::new("f"),
                libc::RENAME_NOREPLACE,
            )
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        d.rename(
            OsStr::new("moved"),
            &sub,
            OsStr::new("f"),
            libc::RENAME_EXCHANGE,
        )
        .unwrap();
        if nix::unistd::geteuid().is_root() {
            // The kernel overlayfs whiteout: a 0/0 character device.
            sub.mknod(OsStr::new("wh"), libc::S_IFCHR, 0).unwrap();
            assert_eq!(sub.stat(Some(OsStr::new("wh"))).unwrap().st_rdev, 0);
        }
        let mut names = sub.list().unwrap();
        names.sort();
        let want: Vec<&str> = if nix::unistd::geteuid().is_root() {
            vec!["f", "l", "wh"]
        } else {
            vec!["f", "l"]
        };
        assert_eq!(names, want);
        sub.unlink(OsStr::new("l"), false).unwrap();
        d.unlink(OsStr::new("moved"), false).unwrap();
    }
}
