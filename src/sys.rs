//! Every `unsafe` host call of rimgfs, behind safe wrappers.
//!
//! SAFETY (module-wide): each wrapper documents the condition its unsafe call needs; callers
//! get a safe function whose contract is stated in its doc comment.
//! Dependencies: libc, nix.
#![allow(unsafe_code)]

pub mod zlib;

use std::io;
use std::os::unix::fs::OpenOptionsExt;

/// Which side of a fork we are on.
pub enum Forked {
    /// The original process; the child's pid.
    Parent(nix::unistd::Pid),
    /// The new process.
    Child,
}

/// Forks the process.
///
/// Must be called while the process has a single thread (before any worker thread is
/// started, after scoped threads were joined), so the child inherits no lock held by a thread
/// that does not exist in it.
pub fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded, which is the condition
    // under which fork(2) leaves the child in a consistent state.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Number of threads of this process, from `/proc/self/status` (`None` if unreadable).
pub fn thread_count() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Makes the standard descriptor `target` (0, 1 or 2) refer to `file`.
pub fn redirect_fd(file: &std::fs::File, target: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if !(0..=2).contains(&target) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: both descriptors are valid for the duration of the call (`file` is borrowed,
    // `target` is a standard descriptor); dup2 only replaces what `target` refers to.
    let r = unsafe { libc::dup2(file.as_raw_fd(), target) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Keeps the daemon's resident memory to what it uses: returns memory freed after indexing to
/// the kernel, and pins glibc's mmap threshold so the large per-thread FUSE request buffers
/// are always fresh, lazily-touched mappings (glibc's dynamic threshold would otherwise move
/// them onto the heap after the first one is freed, where calloc must zero every page).
pub fn tune_allocator() {
    /// Allocations from this size on get their own mapping.
    const MMAP_THRESHOLD: i32 = 1 << 20;
    // SAFETY: mallopt and malloc_trim only adjust glibc allocator state; they are safe to call
    // at any time from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::malloc_trim(0);
    }
}

/// The setuid helper that mounts FUSE for users who may not call mount(2).
pub const FUSERMOUNT: &str = "fusermount3";

/// Mounts a FUSE filesystem on `mnt` through `fusermount3 -o OPTIONS -- MNT` and returns the
/// `/dev/fuse` descriptor it passes back over a socket (libfuse's `_FUSE_COMMFD` protocol).
/// This works where the caller cannot even open `/dev/fuse` (mode 0600).
pub fn fusermount(mnt: &std::path::Path, options: &str) -> io::Result<std::os::fd::OwnedFd> {
    use std::io::IoSliceMut;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    use nix::fcntl::{FcntlArg, FdFlag, fcntl};
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};

    let (ours, theirs) = UnixStream::pair()?;
    // The helper must inherit its end; std creates both ends close-on-exec.
    fcntl(&theirs, FcntlArg::F_SETFD(FdFlag::empty())).map_err(io::Error::from)?;
    let child = Command::new(FUSERMOUNT)
        .arg("-o")
        .arg(options)
        .arg("--")
        .arg(mnt)
        .env("_FUSE_COMMFD", theirs.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{FUSERMOUNT}: {e}")))?;
    drop(theirs);
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!(std::os::fd::RawFd);
    let received: Option<OwnedFd> = loop {
        match recvmsg::<()>(
            ours.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        ) {
            Ok(msg) => {
                let mut fd = None;
                for c in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: SCM_RIGHTS installed `raw` as a new descriptor of this
                            // process that nothing else owns; wrapping it makes it closed once.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            fd.get_or_insert(owned);
                        }
                    }
                }
                break fd;
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break None,
        }
    };
    drop(ours);
    let out = child.wait_with_output()?;
    match received {
        Some(fd) => {
            fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
            Ok(fd)
        }
        None => {
            let msg = String::from_utf8_lossy(&out.stderr);
            let msg = msg.trim().trim_start_matches("fusermount3: ");
            Err(io::Error::other(
                if msg.is_empty() {
                    "fusermount3 failed"
                } else {
                    msg
                }
                .to_string(),
            ))
        }
    }
}

/// Unmounts a FUSE mount through `fusermount3 -u` (`-z` for lazy).
pub fn fuse_unmount(mnt: &std::path::Path, lazy: bool) -> io::Result<()> {
    let mut cmd = std::process::Command::new(FUSERMOUNT);
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg(mnt)
        .output()
        .map_err(|e| io::Error::new(e.kind(), format!("{FUSERMOUNT}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr);
    Err(io::Error::other(
        msg.trim().trim_start_matches("fusermount3: ").to_string(),
    ))
}

/// `fallocate(2)` on an open file (`mode`: `FALLOC_FL_*`).
pub fn fallocate(f: &std::fs::File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (off, len) = match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(o), Ok(l)) => (o, l),
        _ => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
    };
    // SAFETY: a valid descriptor borrowed from `f`; fallocate takes no pointers.
    cvt(unsafe { libc::fallocate(f.as_raw_fd(), mode, off, len) }).map(drop)
}

/// Whether an open file has the extended attribute `name` (errors count as no).
pub fn has_xattr(f: &std::fs::File, name: &[u8]) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(n) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: valid descriptor and C string; a null buffer of size 0 asks for the size only.
    unsafe { libc::fgetxattr(f.as_raw_fd(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Removes the extended attribute `name` of an open file, if it has it.
pub fn remove_xattr_fd(f: &std::fs::File, name: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let n = std::ffi::CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: valid descriptor and C string.
    match cvt(unsafe { libc::fremovexattr(f.as_raw_fd(), n.as_ptr()) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        r => r.map(drop),
    }
}

/// A directory held open by descriptor, through which every operation on the upper tree goes.
///
/// Names passed to its methods are single path components; paths of several components are
/// opened with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so nothing a user plants in
/// the upper directory (a symlink, `..`, a magic link) can lead an operation outside it, even
/// though the daemon runs as root.
#[derive(Debug)]
pub struct DirFd(std::os::fd::OwnedFd);

/// What `DirFd::stat` reports about an entry.
pub type FileStat = libc::stat;

fn one_component(name: &std::ffi::OsStr) -> io::Result<&std::ffi::OsStr> {
    use std::os::unix::ffi::OsStrExt;
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(name)
}

fn cstr(name: &std::ffi::OsStr) -> io::Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
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

    /// Opens the directory at `rel` (components separated by `/`) beneath this one, refusing
    /// symlinks and `..` anywhere on the way.
    pub fn open_beneath(&self, rel: &std::path::Path) -> io::Result<DirFd> {
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

    /// The path of an entry through this directory's descriptor, for the calls that have no
    /// `*at()` form (`l*xattr`, chmod of a non-directory): `/proc/self/fd/N/name` resolves the
    /// descriptor itself, and the `l*` calls do not follow the final component.
    fn proc_path(&self, name: &std::ffi::OsStr) -> io::Result<std::ffi::CString> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let mut p = format!("/proc/self/fd/{}/", self.0.as_raw_fd()).into_bytes();
        p.extend_from_slice(one_component(name)?.as_bytes());
        std::ffi::CString::new(p).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    /// Reads an extended attribute of an entry, not following a symlink.
    pub fn get_xattr(&self, name: &std::ffi::OsStr, attr: &[u8]) -> io::Result<Vec<u8>> {
        let p = self.proc_path(name)?;
        let a =
            std::ffi::CString::new(attr).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        loop {
            // SAFETY: valid C strings; a null buffer with size 0 asks for the size only.
            let size = cvt_size(unsafe {
                libc::lgetxattr(p.as_ptr(), a.as_ptr(), std::ptr::null_mut(), 0)
            })?;
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` is writable for `buf.len()` bytes.
            match cvt_size(unsafe {
                libc::lgetxattr(p.as_ptr(), a.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            }) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                // Grew between the two calls: ask again.
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Sets an extended attribute of an entry (`flags`: `XATTR_CREATE`/`XATTR_REPLACE`).
    pub fn set_xattr(
        &self,
        name: &std::ffi::OsStr,
        attr: &[u8],
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        let p = self.proc_path(name)?;
        let a =
            std::ffi::CString::new(attr).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid C strings; `value` is readable for its length.
        cvt(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                a.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    /// Removes an extended attribute of an entry.
    pub fn remove_xattr(&self, name: &std::ffi::OsStr, attr: &[u8]) -> io::Result<()> {
        let p = self.proc_path(name)?;
        let a =
            std::ffi::CString::new(attr).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid C strings.
        cvt(unsafe { libc::lremovexattr(p.as_ptr(), a.as_ptr()) }).map(drop)
    }

    /// Lists the extended attribute names of an entry.
    pub fn list_xattr(&self, name: &std::ffi::OsStr) -> io::Result<Vec<Vec<u8>>> {
        let p = self.proc_path(name)?;
        loop {
            // SAFETY: valid C string; a null buffer with size 0 asks for the size only.
            let size = cvt_size(unsafe { libc::llistxattr(p.as_ptr(), std::ptr::null_mut(), 0) })?;
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` is writable for `buf.len()` bytes.
            match cvt_size(unsafe {
                libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len())
            }) {
                Ok(n) => {
                    buf.truncate(n);
                    return Ok(buf
                        .split(|&b| b == 0)
                        .filter(|s| !s.is_empty())
                        .map(<[u8]>::to_vec)
                        .collect());
                }
                Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
                Err(e) => return Err(e),
            }
        }
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
        let p = std::ffi::CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: valid C string naming the pinned inode.
        cvt(unsafe { libc::chmod(p.as_ptr(), mode & 0o7777) }).map(drop)
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
