//! Running the `rimgfs` binary: one-shot CLI commands, and real FUSE mounts with a guard
//! that always cleans up.
//!
//! Readiness is polled in `/proc/self/mountinfo` against a deadline, never waited for with a
//! fixed sleep. Teardown unmounts with retries, waits for the daemon with a timeout and then
//! kills it, shows the daemon's stderr only when the test failed, and leaks the temporary
//! mount point rather than deleting through a live mount.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a mount may take to appear (indexing a multi-MB layer in a debug build).
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long unmounting may keep failing with EBUSY before the guard gives up.
pub const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon may take to exit once unmounted.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a one-shot command may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval between polls.
const POLL: Duration = Duration::from_millis(10);

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rimgfs")
}

/// Whether the environment says this is CI, where FUSE tests must never be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Whether FUSE can be used here; the reason when it cannot.
pub fn fuse_available() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map(drop)
        .map_err(|e| format!("cannot open /dev/fuse: {e}"))
}

/// Skips (prints and returns false) when FUSE is unavailable, except under `CI=true`, where
/// that is a failure.
pub fn require_fuse() -> bool {
    match fuse_available() {
        Ok(()) => true,
        Err(reason) => skip(&reason),
    }
}

/// Reports a skip, or fails under CI.
pub fn skip(reason: &str) -> bool {
    assert!(!in_ci(), "FUSE is required under CI=true: {reason}");
    eprintln!("skipped: {reason}");
    false
}

/// Undoes mountinfo's octal escapes (`\040` for space, ...).
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|o| u8::from_str_radix(o, 8).ok());
            if let Some(v) = v {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The mountinfo line of `mnt` (the last one, if stacked), if mounted.
pub fn mount_entry(mnt: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mnt.as_os_str().as_bytes();
    info.lines()
        .rfind(|l| l.split(' ').nth(4).map(unescape_mountinfo).as_deref() == Some(want))
        .map(str::to_string)
}

/// Whether `mnt` is a mount point now.
pub fn is_mounted(mnt: &Path) -> bool {
    mount_entry(mnt).is_some()
}

/// What a finished command printed and returned.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None` when killed by a signal).
    pub code: Option<i32>,
    /// stdout, decoded lossily (see `stdout_bytes` for the exact bytes).
    pub stdout: String,
    pub stdout_bytes: Vec<u8>,
    pub stderr: String,
}

impl Output {
    /// Panics with both streams unless the exit code is 0.
    #[track_caller]
    pub fn success(self) -> Output {
        assert_eq!(
            self.code,
            Some(0),
            "command failed:\nstderr: {}\nstdout: {}",
            self.stderr,
            self.stdout
        );
        self
    }
}

/// Runs a prepared command to completion (killing it after [`COMMAND_TIMEOUT`]), capturing
/// its output through files so a chatty child never blocks on a full pipe.
pub fn run_command(mut cmd: Command) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut status = None;
    let finished = poll_until(COMMAND_TIMEOUT, || {
        status = child.try_wait().unwrap();
        status.is_some()
    });
    if !finished {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {COMMAND_TIMEOUT:?}");
    }
    let stdout_bytes = std::fs::read(&out).unwrap();
    Output {
        code: status.and_then(|s| s.code()),
        stdout: String::from_utf8_lossy(&stdout_bytes).into_owned(),
        stdout_bytes,
        stderr: String::from_utf8_lossy(&std::fs::read(&err).unwrap()).into_owned(),
    }
}

/// Runs `rimgfs ARGS...`.
pub fn rimgfs<S: AsRef<OsStr>>(args: &[S]) -> Output {
    let mut cmd = Command::new(bin());
    cmd.args(args);
    run_command(cmd)
}

/// Runs `rimgfs diff IMAGE --upper UPPER --cache-dir CACHE`.
pub fn diff(image: &Path, upper: &Path, cache: &Path) -> Output {
    let arg = |p: &Path| p.as_os_str().to_os_string();
    rimgfs(&[
        OsString::from("diff"),
        arg(image),
        OsString::from("--upper"),
        arg(upper),
        OsString::from("--cache-dir"),
        arg(cache),
    ])
}

/// How to start a mount.
#[derive(Clone, Debug, Default)]
pub struct MountOpts {
    /// The image argument.
    pub image: OsString,
    /// `--cache-dir` (omitted when `None`: the caller sets XDG_CACHE_HOME instead).
    pub cache_dir: Option<PathBuf>,
    /// More arguments after the mount point.
    pub extra: Vec<OsString>,
    /// A command to run rimgfs through (e.g. `setpriv --reuid=...`).
    pub wrapper: Vec<OsString>,
    /// Environment variables for the daemon.
    pub env: Vec<(OsString, OsString)>,
    /// Owner to give the mount point (for a mount by an unprivileged user).
    pub owner: Option<(u32, u32)>,
}

impl MountOpts {
    /// Mount `image` with its own cache dir.
    pub fn new(image: impl AsRef<OsStr>, cache: &Path) -> MountOpts {
        MountOpts {
            image: image.as_ref().to_os_string(),
            cache_dir: Some(cache.to_path_buf()),
            ..Default::default()
        }
    }

    /// Adds arguments after the mount point.
    pub fn args<S: AsRef<OsStr>>(mut self, args: &[S]) -> MountOpts {
        self.extra
            .extend(args.iter().map(|a| a.as_ref().to_os_string()));
        self
    }
}

/// A foreground `rimgfs mount ... -f` daemon and its mount point. Dropping it unmounts.
pub struct MountGuard {
    /// The mount point.
    pub mnt: PathBuf,
    /// Holds the mount point; `None` once leaked or removed.
    dir: Option<tempfile::TempDir>,
    child: Option<Child>,
    status: Option<ExitStatus>,
    stderr_path: PathBuf,
    torn_down: bool,
}

impl MountGuard {
    /// Mounts `image` with more `args` after the mount point (pass `--cache-dir`: each test
    /// has its own cache) and waits until the mount is there. `None` when the test should be
    /// skipped (FUSE unavailable outside CI).
    pub fn mount(image: impl AsRef<OsStr>, args: &[&str]) -> Option<MountGuard> {
        let opts = MountOpts {
            image: image.as_ref().to_os_string(),
            ..Default::default()
        };
        MountGuard::start(opts.args(args))
    }

    /// Starts a daemon as `opts` says and waits for its mount. Panics (after cleaning up)
    /// if the daemon exits first or the mount does not appear in time.
    pub fn start(opts: MountOpts) -> Option<MountGuard> {
        // Tests never share (or pollute) the system cache, /var/cache/rimgfs for root.
        let own_cache = opts.cache_dir.is_some()
            || opts.extra.iter().any(|a| a == "--cache-dir")
            || opts.env.iter().any(|(k, _)| k == "XDG_CACHE_HOME");
        assert!(
            own_cache,
            "a test mount needs its own --cache-dir (or XDG_CACHE_HOME)"
        );
        if !require_fuse() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("rimgfs-mnt-")
            .tempdir()
            .unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        if let Some((uid, gid)) = opts.owner {
            for p in [dir.path(), &mnt] {
                nix::unistd::chown(p, Some(uid.into()), Some(gid.into())).unwrap();
            }
        }
        let stderr_path = dir.path().join("daemon.stderr");
        let mut cmd = match opts.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("mount").arg(&opts.image).arg(&mnt).arg("-f");
        if let Some(c) = &opts.cache_dir {
            cmd.arg("--cache-dir").arg(c);
        }
        cmd.args(&opts.extra);
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path).unwrap());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let mut g = MountGuard {
            mnt,
            dir: Some(dir),
            child: Some(child),
            status: None,
            stderr_path,
            torn_down: false,
        };
        let mounted = poll_until(MOUNT_TIMEOUT, || is_mounted(&g.mnt) || g.exited());
        if is_mounted(&g.mnt) {
            return Some(g);
        }
        let err = g.stderr();
        if g.exited() && (err.contains("Operation not permitted") || err.contains("EPERM")) {
            g.teardown_quietly();
            skip(&format!("mounting is not permitted here: {}", err.trim()));
            return None;
        }
        let why = if mounted {
            "the daemon exited before mounting"
        } else {
            "the mount did not appear in time"
        };
        panic!("{why} ({:?}); stderr:\n{err}", g.status);
    }

    fn exited(&mut self) -> bool {
        if self.status.is_none() {
            if let Some(c) = &mut self.child {
                self.status = c.try_wait().ok().flatten();
            }
        }
        self.status.is_some()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// What the daemon wrote on stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// Waits up to `timeout` for the daemon to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        poll_until(timeout, || self.exited());
        self.status
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// A path inside the mount (`/etc/hosts`).
    pub fn at(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel.trim_start_matches('/'))
    }

    /// Unmounts and stops the daemon, reporting a failure as a panic (use at the end of a
    /// test to check that cleanup itself works; dropping the guard cleans up quietly).
    pub fn unmount(mut self) {
        if let Err(e) = self.teardown_inner() {
            panic!("teardown of {}: {e}", self.mnt.display());
        }
    }

    fn teardown_quietly(&mut self) {
        if let Err(e) = self.teardown_inner() {
            eprintln!("teardown of {}: {e}", self.mnt.display());
        }
    }

    fn teardown_inner(&mut self) -> Result<(), String> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        if let Err(e) = unmount_with_retries(&self.mnt) {
            problems.push(e);
        }
        if !self.exited() && !poll_until(EXIT_TIMEOUT, || self.exited()) {
            problems.push(format!(
                "daemon still running after {EXIT_TIMEOUT:?}; killed"
            ));
            if let Some(c) = &mut self.child {
                let _ = c.kill();
                self.status = c.wait().ok();
            }
        }
        if std::thread::panicking() || !problems.is_empty() {
            eprintln!(
                "--- rimgfs daemon stderr ({}, {:?}) ---\n{}--- end ---",
                self.mnt.display(),
                self.status,
                self.stderr()
            );
        }
        if is_mounted(&self.mnt) {
            // Never remove_dir_all through a live mount: leak the directory instead.
            if let Some(d) = self.dir.take() {
                let kept = d.keep();
                eprintln!("leaking {} (still mounted)", kept.display());
            }
        } else if let Some(d) = self.dir.take() {
            let _ = d.close();
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        self.teardown_quietly();
    }
}

/// Unmounts `mnt` if mounted, retrying while busy: umount2(2) as root, else
/// `fusermount3 -u`.
pub fn unmount_with_retries(mnt: &Path) -> Result<(), String> {
    let mut last = String::new();
    let done = poll_until(UNMOUNT_TIMEOUT, || {
        if !is_mounted(mnt) {
            return true;
        }
        let r = if nix::unistd::geteuid().is_root() {
            nix::mount::umount2(mnt, nix::mount::MntFlags::empty()).map_err(|e| e.to_string())
        } else {
            let out = Command::new("fusermount3").arg("-u").arg(mnt).output();
            match out {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
                Err(e) => Err(e.to_string()),
            }
        };
        if let Err(e) = r {
            last = e;
        }
        !is_mounted(mnt)
    });
    if done {
        return Ok(());
    }
    // Last resort, so no test leaves a mount behind: detach it lazily (still a failure).
    if nix::unistd::geteuid().is_root() {
        let _ = nix::mount::umount2(mnt, nix::mount::MntFlags::MNT_DETACH);
    } else {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(mnt)
            .output();
    }
    let detached = if is_mounted(mnt) {
        ""
    } else {
        " (detached lazily)"
    };
    Err(format!("could not unmount: {last}{detached}"))
}

/// A mount made by `rimgfs mount` in the background (the daemon is not our child).
/// Dropping it unmounts.
pub struct BackgroundMount {
    pub mnt: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl BackgroundMount {
    /// A fresh mount point for a background mount.
    pub fn new() -> BackgroundMount {
        let dir = tempfile::Builder::new()
            .prefix("rimgfs-bg-")
            .tempdir()
            .unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        BackgroundMount {
            mnt,
            dir: Some(dir),
        }
    }
}

impl Drop for BackgroundMount {
    fn drop(&mut self) {
        if let Err(e) = unmount_with_retries(&self.mnt) {
            eprintln!("{}: {e}", self.mnt.display());
        }
        if is_mounted(&self.mnt) {
            if let Some(d) = self.dir.take() {
                let _ = d.keep();
            }
        }
    }
}

/// Pids of processes whose command line has `needle` as one of its arguments (a daemon
/// that is not our child, found by its mount point).
pub fn processes_mentioning(needle: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let needle = needle.as_os_str().as_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == needle))
        })
        .collect()
}

/// The unprivileged test user, created if missing: (uid, gid). Once per test binary, so
/// that no test uses the user while another one's `useradd` is still writing the account
/// databases (fusermount3 then fails with "could not determine username").
pub fn test_user() -> Option<(u32, u32)> {
    static USER: std::sync::OnceLock<Option<(u32, u32)>> = std::sync::OnceLock::new();
    *USER.get_or_init(create_test_user)
}

fn create_test_user() -> Option<(u32, u32)> {
    const NAME: &str = "rimgfs-test";
    let lookup = || {
        nix::unistd::User::from_name(NAME)
            .ok()
            .flatten()
            .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
    };
    if let Some(ids) = lookup() {
        return Some(ids);
    }
    let mut cmd = Command::new("useradd");
    cmd.args([
        "--system",
        "--user-group",
        "--no-create-home",
        "--shell",
        "/usr/sbin/nologin",
        NAME,
    ]);
    let out = run_command(cmd);
    // Another test binary may have created it meanwhile.
    lookup().or_else(|| {
        eprintln!("useradd failed: {}", out.stderr);
        None
    })
}

/// Runs `prog ARGS...` as `ids`, without supplementary groups.
pub fn as_user<S: AsRef<OsStr>>(ids: (u32, u32), prog: &str, args: &[S]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={}", ids.0))
        .arg(format!("--regid={}", ids.1))
        .arg("--clear-groups")
        .arg(prog)
        .args(args);
    run_command(cmd)
}

/// Mounts `image` writable with `upper` as its upper directory.
pub fn mount_with_upper(image: &Path, cache: &Path, upper: &Path) -> Option<MountGuard> {
    let (c, u) = (cache.to_string_lossy(), upper.to_string_lossy());
    MountGuard::mount(image, &["--cache-dir", &c, "--upper", &u])
}
