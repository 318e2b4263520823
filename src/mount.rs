//! Mounting and unmounting: mount-point checks, the background daemon, signals.
//!
//! `rimgfs mount` prepares everything in the calling process (so errors and the progress bar
//! reach the user's terminal), then forks. The child mounts, and reports over a pipe either
//! `ok` once the kernel handshake is done (the mount is then usable) or the error; the parent
//! exits with that outcome. SIGINT, SIGTERM and SIGHUP make the daemon unmount and exit.
//! Dependencies: fuse, sys, error, nix, fuser.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::sys::signal::{SigSet, Signal};

use crate::error::{Error, Result};
use crate::fuse::Fuse;
use crate::sys::{Forked, fork_single_threaded};

/// Message the daemon sends when the mount is ready.
const READY: &[u8] = b"ok";

/// The mount's type is `fuse.rimgfs` (the kernel's FUSE subtype), the name mount(8) runs
/// `rimgfs` by for `-t fuse.rimgfs`.
pub const FS_NAME: &str = "rimgfs";

/// Validated mount options: what the kernel is asked for, where changes go, how the daemon
/// runs. The command line converts into it (`cli::MountArgs::to_config`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// What the kernel lists as the mount's source (mountinfo's fifth field from the end):
    /// the image argument as given, so that `mount -a` finds an fstab entry already mounted
    /// ([`FS_NAME`] when empty).
    pub source: String,
    /// Honour setuid/setgid bits.
    pub suid: bool,
    /// Allow device nodes to be opened.
    pub dev: bool,
    /// Allow execution.
    pub exec: bool,
    /// Update access times (never stored; only passed to the kernel).
    pub atime: bool,
    /// Let the kernel check permissions against the image's modes.
    pub default_permissions: bool,
    /// Serve big files through kernel passthrough (root only); without it, opens cost no
    /// round trip to the daemon, which favours many small files.
    pub passthrough: bool,
    /// Let other users access the mount.
    pub allow_other: bool,
    /// Let root access the mount.
    pub allow_root: bool,
    /// Read-only.
    pub read_only: bool,
    /// The upper directory of a writable mount (`None` with `read_only`: no upper; `None`
    /// otherwise: an ephemeral one).
    pub upper: Option<PathBuf>,
    /// Its work directory.
    pub work: Option<PathBuf>,
    /// The cache directory `-o cache_dir=` names, over the image options' (an fstab entry
    /// passes `-o` options only).
    pub cache_dir: Option<PathBuf>,
    /// Stay in the foreground.
    pub foreground: bool,
    /// Show layers 0..=N only.
    pub layer: Option<usize>,
    /// Worker threads.
    pub threads: usize,
}

impl Default for MountOptions {
    /// The defaults, which suit untrusted images: writable (changes go to an ephemeral
    /// upper layer, as for a container's root filesystem), nosuid, nodev, noatime,
    /// default_permissions, open to the mounting user only, kernel passthrough where
    /// allowed, 2 serving threads per CPU (at least 4).
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        MountOptions {
            source: String::new(),
            suid: false,
            dev: false,
            exec: true,
            atime: false,
            default_permissions: true,
            passthrough: true,
            allow_other: false,
            allow_root: false,
            read_only: false,
            upper: None,
            work: None,
            cache_dir: None,
            foreground: false,
            layer: None,
            threads: (2 * cpus).max(4),
        }
    }
}

/// Checks that `mnt` is a directory that is not already a mount point, and returns its
/// absolute path.
pub fn check_mountpoint(mnt: &Path) -> Result<PathBuf> {
    let err = |reason: &str| Error::Mount {
        path: mnt.to_path_buf(),
        reason: reason.to_string(),
    };
    let meta = match std::fs::metadata(mnt) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(err("mount point does not exist"));
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(err(
                "mount point is busy: a dead mount is still there; run rimgfs umount on it",
            ));
        }
        Err(e) => return Err(err(&format!("mount point is not usable: {e}"))),
    };
    if !meta.is_dir() {
        return Err(err("mount point is not a directory"));
    }
    let abs = std::fs::canonicalize(mnt).map_err(|e| err(&format!("cannot resolve: {e}")))?;
    if is_mountpoint(&abs) {
        return Err(err(
            "mount point is busy: something is already mounted there",
        ));
    }
    Ok(abs)
}

/// Whether `abs` is listed in `/proc/self/mountinfo` as a mount point.
pub fn is_mountpoint(abs: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = escape_mountinfo(&abs.to_string_lossy());
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn escape_mountinfo(p: &str) -> String {
    let mut s = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            ' ' => s.push_str("\\040"),
            '\t' => s.push_str("\\011"),
            '\n' => s.push_str("\\012"),
            '\\' => s.push_str("\\134"),
            c => s.push(c),
        }
    }
    s
}

/// Mounts `ov` on `mnt` (already checked) and serves it; in the background unless
/// `opts.foreground`.
pub fn mount(
    fs: Fuse,
    mnt: &Path,
    opts: &MountOptions,
    verbose: bool,
    scratch: Option<PathBuf>,
) -> Result<()> {
    if opts.foreground {
        return serve(fs, mnt, opts, None, scratch);
    }
    let err = |reason: String| Error::Mount {
        path: mnt.to_path_buf(),
        reason,
    };
    // Indexing threads are joined by now, but the kernel may count an exiting thread for a
    // moment after its join returns; fork only once this process is single-threaded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while crate::sys::thread_count().is_some_and(|n| n > 1) {
        if std::time::Instant::now() > deadline {
            return Err(err(
                "internal error: cannot start the daemon from a multi-threaded process".into(),
            ));
        }
        std::thread::yield_now();
    }
    let (rx, tx) = nix::unistd::pipe().map_err(|e| err(format!("pipe: {e}")))?;
    match fork_single_threaded().map_err(|e| err(format!("fork: {e}")))? {
        Forked::Parent(_) => {
            drop(tx);
            let mut msg = Vec::new();
            let _ = std::fs::File::from(rx).read_to_end(&mut msg);
            if msg == READY {
                Ok(())
            } else if msg.is_empty() {
                Err(err("the daemon exited before the mount was ready".into()))
            } else {
                Err(err(String::from_utf8_lossy(&msg).into_owned()))
            }
        }
        Forked::Child => {
            drop(rx);
            let _ = nix::unistd::setsid();
            detach_stdio(verbose);
            let code = match serve(fs, mnt, opts, Some(tx), scratch) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
    }
}

/// Points stdin and stdout (and stderr unless logging) at /dev/null, so the daemon holds no
/// terminal. They are replaced, not closed: fuser insists its /dev/fuse fd is above 2.
fn detach_stdio(keep_stderr: bool) {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        return;
    };
    let mut targets = vec![libc::STDIN_FILENO, libc::STDOUT_FILENO];
    if !keep_stderr {
        targets.push(libc::STDERR_FILENO);
    }
    for fd in targets {
        let _ = crate::sys::redirect_fd(&null, fd);
    }
}

/// Mounts and runs the session until unmounted or signalled.
fn serve(
    fs: Fuse,
    mnt: &Path,
    opts: &MountOptions,
    ready: Option<OwnedFd>,
    scratch: Option<PathBuf>,
) -> Result<()> {
    // Block the signals before any thread starts, so every thread inherits the mask and only
    // the signal thread below receives them.
    let mut sigs = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        sigs.add(s);
    }
    let _ = sigs.thread_block();
    crate::sys::tune_allocator();
    crate::sys::raise_fd_limit();
    let report = |ready: Option<OwnedFd>, msg: &[u8]| {
        if let Some(fd) = ready {
            let _ = std::fs::File::from(fd).write_all(msg);
        }
    };
    let config = fuser_config(opts);
    // Root mounts with mount(2); anyone else through the setuid fusermount3 (which opens
    // /dev/fuse with the caller's rights, so /dev/fuse must be 0666, Debian's default).
    let privileged = nix::unistd::geteuid().is_root();
    let notifier = fs.notifier_slot();
    let session = if privileged {
        fuser::Session::new(fs, mnt, &config)
    } else {
        crate::sys::fusermount(mnt, &fusermount_options(opts))
            .and_then(|fd| fuser::Session::from_fd(fs, fd, config.acl, config.clone()))
    };
    let session = match session {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("mount failed: {e}");
            report(ready, msg.as_bytes());
            return Err(Error::Mount {
                path: mnt.to_path_buf(),
                reason: msg,
            });
        }
    };
    let _ = notifier.set(session.notifier());
    let target = mnt.to_path_buf();
    // A signal detaches the mount (as libfuse does): it leaves the namespace at once, even
    // if a file is still open on it (EBUSY would otherwise keep it mounted), and the session
    // ends when the last such file is closed. A failure is retried on the next signal.
    std::thread::spawn(move || {
        while let Ok(sig) = sigs.wait() {
            log::info!("{sig}: unmounting {}", target.display());
            let r = if privileged {
                nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH)
                    .map_err(std::io::Error::from)
            } else {
                crate::sys::fuse_unmount(&target, true)
            };
            match r {
                Ok(()) => break,
                Err(e) => log::warn!(
                    "unmounting {}: {e}; send the signal again to retry",
                    target.display()
                ),
            }
        }
    });
    report(ready, READY);
    // Only now (in the daemon, mounted): fetch the rest of lazily read layers.
    crate::layer::lazy::fill::start();
    let result = session.run().map_err(|e| Error::Mount {
        path: mnt.to_path_buf(),
        reason: format!("session: {e}"),
    });
    // An ephemeral upper layer ends with its mount.
    if let Some(dir) = scratch {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            log::warn!("removing {}: {e}", dir.display());
        }
    }
    result
}

impl MountOptions {
    /// The source the kernel lists.
    fn fs_source(&self) -> &str {
        if self.source.is_empty() {
            FS_NAME
        } else {
            &self.source
        }
    }
}

/// The `-o` list for fusermount3 (which adds user_id, group_id and rootmode itself).
fn fusermount_options(opts: &MountOptions) -> String {
    // fusermount3 reads a backslash as escaping the next byte of `fsname=`, so a comma in an
    // image name does not end the option.
    let mut fsname = String::from("fsname=");
    for c in opts.fs_source().chars() {
        if c == ',' || c == '\\' {
            fsname.push('\\');
        }
        fsname.push(c);
    }
    let subtype = format!("subtype={FS_NAME}");
    let mut o = vec![fsname.as_str(), subtype.as_str()];
    o.push(if opts.read_only { "ro" } else { "rw" });
    o.push(if opts.suid { "suid" } else { "nosuid" });
    o.push(if opts.dev { "dev" } else { "nodev" });
    o.push(if opts.exec { "exec" } else { "noexec" });
    o.push(if opts.atime { "atime" } else { "noatime" });
    if opts.default_permissions {
        o.push("default_permissions");
    }
    if opts.allow_other {
        o.push("allow_other");
    } else if opts.allow_root {
        o.push("allow_root");
    }
    o.join(",")
}

fn fuser_config(opts: &MountOptions) -> fuser::Config {
    use fuser::MountOption as M;
    // fuser's own mount(2) (root) makes FSName the source but calls the type plain `fuse`,
    // dropping Subtype, which only fusermount reads. The kernel takes the subtype as a mount
    // option of its own (fs/fuse/inode.c, `subtype=`), and then lists `fuse.rimgfs`.
    let mut mo = vec![
        M::FSName(opts.fs_source().into()),
        M::CUSTOM(format!("subtype={FS_NAME}")),
    ];
    mo.push(if opts.read_only { M::RO } else { M::RW });
    mo.push(if opts.suid { M::Suid } else { M::NoSuid });
    mo.push(if opts.dev { M::Dev } else { M::NoDev });
    mo.push(if opts.exec { M::Exec } else { M::NoExec });
    mo.push(if opts.atime { M::Atime } else { M::NoAtime });
    if opts.default_permissions {
        mo.push(M::DefaultPermissions);
    }
    let mut c = fuser::Config::default();
    c.mount_options = mo;
    c.acl = if opts.allow_other {
        fuser::SessionACL::All
    } else if opts.allow_root {
        fuser::SessionACL::RootAndOwner
    } else {
        fuser::SessionACL::Owner
    };
    c.n_threads = Some(opts.threads);
    c.clone_fd = true;
    c
}

/// Unmounts `mnt`: umount2(2) as root, else `fusermount3 -u`. Works on a mount whose daemon
/// died (the kernel then answers ENOTCONN to everything but unmount).
pub fn umount(mnt: &Path, lazy: bool) -> Result<()> {
    let err = |reason: String| Error::Mount {
        path: mnt.to_path_buf(),
        reason,
    };
    if nix::unistd::geteuid().is_root() {
        let flags = if lazy {
            nix::mount::MntFlags::MNT_DETACH
        } else {
            nix::mount::MntFlags::empty()
        };
        return nix::mount::umount2(mnt, flags).map_err(|e| match e {
            nix::errno::Errno::EINVAL => err("not a mount point".into()),
            nix::errno::Errno::ENOENT => err("does not exist".into()),
            nix::errno::Errno::EBUSY => {
                err("busy: files are open on it (use --lazy to detach)".into())
            }
            e => err(format!("umount: {e}")),
        });
    }
    crate::sys::fuse_unmount(mnt, lazy).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> MountOptions {
        MountOptions {
            source: r"docker-archive:/srv/a,b\c.tar".into(),
            allow_other: true,
            read_only: true,
            ..MountOptions::default()
        }
    }

    #[test]
    fn mount_source_and_type_reach_both_mount_paths() {
        use fuser::MountOption as M;
        let o = options();
        assert_eq!(
            fusermount_options(&o),
            r"fsname=docker-archive:/srv/a\,b\\c.tar,subtype=rimgfs,ro,nosuid,nodev,exec,noatime,default_permissions,allow_other"
        );
        let c = fuser_config(&o);
        assert!(c.mount_options.contains(&M::FSName(o.source.clone())));
        assert!(
            c.mount_options
                .contains(&M::CUSTOM("subtype=rimgfs".into()))
        );
        assert_eq!(c.acl, fuser::SessionACL::All);
        let unnamed = MountOptions {
            source: String::new(),
            ..options()
        };
        assert!(fusermount_options(&unnamed).starts_with("fsname=rimgfs,"));
    }

    #[test]
    fn mountinfo_escaping() {
        assert_eq!(escape_mountinfo("/a b\\c"), "/a\\040b\\134c");
    }

    #[test]
    fn check_mountpoint_errors() {
        let e = check_mountpoint(Path::new("/nonexistent/rimgfs/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let e = check_mountpoint(Path::new("/etc/hostname"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a directory"), "{e}");
        let e = check_mountpoint(Path::new("/proc"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("busy"), "{e}");
    }
}
