//! The setuid `fusermount3` helper: mounting and unmounting FUSE for users who may not call
//! mount(2) themselves. Dependencies: nix.

use std::io;

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
            let msg = helper_message(&out.stderr);
            Err(io::Error::other(if msg.is_empty() {
                "fusermount3 failed".to_string()
            } else {
                msg
            }))
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
    Err(io::Error::other(helper_message(&out.stderr)))
}

/// What the helper printed, without its `fusermount3: ` prefix (the error names it already).
fn helper_message(stderr: &[u8]) -> String {
    let msg = String::from_utf8_lossy(stderr);
    msg.trim().trim_start_matches("fusermount3: ").to_string()
}
