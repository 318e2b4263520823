//! Every `unsafe` host call of rimgfs, behind safe wrappers.
//!
//! SAFETY (module-wide): each wrapper documents the condition its unsafe call needs; callers
//! get a safe function whose contract is stated in its doc comment.
//! Dependencies: libc, nix.
#![allow(unsafe_code)]

use std::io;

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
