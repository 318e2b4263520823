//! POSIX behaviours of the writable mount that callers rely on, run as root and as an
//! unprivileged user, with kernel overlayfs over the same layers as the oracle: the modes new
//! entries get under the caller's umask, their owner and group (setgid directories too) and
//! the owner a hard link keeps, `utimensat` with `UTIME_OMIT`/`UTIME_NOW` and
//! nanoseconds, I/O through a file whose last name is gone, set-id bits dropped by another
//! user's write, renames by a user and the sticky-directory rules, ctime after operations
//! that fail and that succeed, relative paths below a directory deeper than `PATH_MAX`, a
//! layer 30,000 directories deep, and an image's own overlay attributes through copy-up.
//!
//! Calls that need another uid or umask run in a forked child that makes raw syscalls only
//! (no allocation after the fork) and exits with their errno.
#![allow(missing_docs, unsafe_code)]

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use common::overlay::{extract_layers, kernel_overlay};
use common::{ImageDef, Sandbox};

/// The unprivileged caller.
const USER: (u32, u32) = (65534, 65534);

type Log = Vec<String>;

fn cs(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn p(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

/// `ok` or the errno's name, for a raw call's result.
fn outcome(code: i32) -> String {
    match code {
        0 => "ok".into(),
        e => nix::errno::Errno::from_raw(e).to_string(),
    }
}

/// The errno of the last failed call, for use in a child (no allocation).
fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(255)
}

/// Runs `f` in a forked child, as `ids` (no supplementary groups) if given and with `umask`
/// if given; returns its exit code. `f` may only make raw syscalls on data prepared before.
fn child(ids: Option<(u32, u32)>, umask: Option<u32>, f: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child makes async-signal-safe calls only and leaves with _exit.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            if let Some(m) = umask {
                libc::umask(m);
            }
            if let Some((u, g)) = ids {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(g, g, g) != 0
                    || libc::setresuid(u, u, u) != 0
                {
                    libc::_exit(254);
                }
            }
            libc::_exit(f());
        }
        let mut status = 0;
        assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
        assert!(libc::WIFEXITED(status), "child died: {status:#x}");
        libc::WEXITSTATUS(status)
    }
}

/// Runs one raw call in a child as `ids`: 0 or its errno.
fn as_user(ids: (u32, u32), call: impl FnOnce() -> i32) -> String {
    outcome(child(Some(ids), None, || match call() {
        r if r < 0 => last_errno(),
        _ => 0,
    }))
}

fn lstat(path: &Path) -> std::io::Result<libc::stat> {
    let c = cs(path);
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string and a stat buffer.
    if unsafe { libc::lstat(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: lstat succeeded.
    Ok(unsafe { st.assume_init() })
}

fn mode_of(path: &Path) -> String {
    match lstat(path) {
        Ok(st) => format!("{:o}", st.st_mode),
        Err(e) => e.to_string(),
    }
}

/// Runs `ops` on kernel overlayfs over the image's layers and on a writable rimgfs mount of
/// the image, and requires the same log of both; returns it.
fn both(spec: &str, ops: impl Fn(&Path) -> Log) -> Option<Log> {
    let sb = Sandbox::new();
    let def = ImageDef::from_spec(spec);
    let image = sb.image(spec);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let k = kernel_overlay(&lowers, sb.dir.path(), "redirect_dir=on")?;
    let klog = ops(&k.mnt);
    k.unmount();
    let m = common::harness::mount_with_upper(&image, &sb.cache(), &sb.path("r-upper"))?;
    let rlog = ops(m.path());
    m.unmount();
    assert_eq!(
        rlog, klog,
        "results differ from kernel overlayfs (left rimgfs)"
    );
    Some(rlog)
}

const SPEC: &str = "\
L0: dir /w 0777; dir /w/a 0777; dir /w/b 0777; file /w/a/lf 0644 'lower'
L0: dir /s 1777; file /s/theirs 0644 uid=1 'x'; file /s/tgt 0644 uid=1 'y'
L0: dir /t; file /t/lf 0644 'times'
L0: dir /c 0777; file /c/chmod_ok 0644; file /c/chmod_bad 0644; file /c/chown_ok 0644
L0: file /c/chown_bad 0644; file /c/link_src 0644; file /c/link_bad 0600
L0: file /c/ren_ok 0644
L0: dir /cs 1777; file /cs/ren_bad 0644 uid=1; file /cs/unl_bad 0644 uid=1
";

#[test]
fn cow_posix_new_entries_get_exactly_the_mode_the_caller_asked_for() {
    let log = both(SPEC, |r| {
        let made: Vec<(&str, u32)> = vec![
            ("/w/f620", libc::S_IFREG | 0o620),
            ("/w/f642", libc::S_IFREG | 0o642),
            ("/w/f4755", libc::S_IFREG | 0o4755),
            ("/w/d751", libc::S_IFDIR | 0o751),
            ("/w/d1777", libc::S_IFDIR | 0o1777),
            ("/w/p604", libc::S_IFIFO | 0o604),
            ("/w/a/f666", libc::S_IFREG | 0o666),
        ];
        let mut log = Log::new();
        for umask in [0, 0o027] {
            let paths: Vec<CString> = made
                .iter()
                .map(|(n, _)| cs(&p(r, &format!("{n}-{umask:o}"))))
                .collect();
            let code = child(None, Some(umask), || {
                for (c, (_, mode)) in paths.iter().zip(&made) {
                    let perm = mode & 0o7777;
                    // SAFETY: valid C strings.
                    let rc = unsafe {
                        match mode & libc::S_IFMT {
                            libc::S_IFDIR => libc::mkdir(c.as_ptr(), perm),
                            libc::S_IFREG => {
                                let fd =
                                    libc::open(c.as_ptr(), libc::O_CREAT | libc::O_WRONLY, perm);
                                if fd >= 0 { libc::close(fd) } else { fd }
                            }
                            _ => libc::mknod(c.as_ptr(), *mode, 0),
                        }
                    };
                    if rc != 0 {
                        return last_errno();
                    }
                }
                0
            });
            log.push(format!("umask {umask:o}: {}", outcome(code)));
            for (n, _) in &made {
                let name = format!("{n}-{umask:o}");
                log.push(format!("{name} {}", mode_of(&p(r, &name))));
            }
        }
        log
    });
    let Some(log) = log else { return };
    // And not merely what overlayfs does: what was asked, less the umask.
    for want in [
        "/w/f620-0 100620",
        "/w/f642-0 100642",
        "/w/f4755-0 104755",
        "/w/d751-0 40751",
        "/w/d1777-0 41777",
        "/w/p604-0 10604",
        "/w/a/f666-27 100640",
        "/w/d751-27 40750",
    ] {
        assert!(log.iter().any(|l| l == want), "{want} not in {log:#?}");
    }
}

fn owner_of(path: &Path) -> String {
    match lstat(path) {
        Ok(st) => format!("{}:{} {:o}", st.st_uid, st.st_gid, st.st_mode),
        Err(e) => e.to_string(),
    }
}

#[test]
fn cow_posix_new_entries_belong_to_their_maker_and_links_keep_their_owner() {
    let log = both(SPEC, |r| {
        let mut log = Log::new();
        // A setgid directory of another group, made in the mount (an upper directory), and
        // the image's own writable directory (a lower one, copied up by the first entry).
        let sg = p(r, "/w/sg");
        std::fs::create_dir(&sg).unwrap();
        std::os::unix::fs::chown(&sg, Some(0), Some(7)).unwrap();
        std::fs::set_permissions(&sg, std::os::unix::fs::PermissionsExt::from_mode(0o2777))
            .unwrap();
        let names = [
            "/w/sg/f", "/w/sg/d", "/w/sg/p", "/w/sg/l", "/w/a/f", "/w/a/d", "/w/b/l",
        ];
        let paths: Vec<CString> = names.iter().map(|n| cs(&p(r, n))).collect();
        let target = CString::new("nowhere").unwrap();
        let code = child(Some(USER), Some(0o022), || {
            // SAFETY: valid C strings.
            unsafe {
                let fd = libc::open(paths[0].as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o666);
                if fd < 0 || libc::close(fd) != 0 {
                    return last_errno();
                }
                for (i, rc) in [
                    libc::mkdir(paths[1].as_ptr(), 0o777),
                    libc::mknod(paths[2].as_ptr(), libc::S_IFIFO | 0o666, 0),
                    libc::symlink(target.as_ptr(), paths[3].as_ptr()),
                    libc::close(libc::creat(paths[4].as_ptr(), 0o640)),
                    libc::mkdir(paths[5].as_ptr(), 0o3775),
                    libc::symlink(target.as_ptr(), paths[6].as_ptr()),
                ]
                .into_iter()
                .enumerate()
                {
                    if rc != 0 {
                        return 100 + i as i32;
                    }
                }
            }
            0
        });
        log.push(format!("made as {USER:?}: {}", outcome(code)));
        for n in names {
            log.push(format!("{n} {}", owner_of(&p(r, n))));
        }
        // A hard link made by root leaves the inode's owner alone: an upper file, a lower one.
        for (src, dst) in [("/w/sg/f", "/w/sg/f2"), ("/s/theirs", "/w/theirs2")] {
            let linked = std::fs::hard_link(p(r, src), p(r, dst));
            log.push(format!("link {src} {dst}: {linked:?}"));
            log.push(format!("{src} {}", owner_of(&p(r, src))));
            log.push(format!("{dst} {}", owner_of(&p(r, dst))));
        }
        log
    });
    let Some(log) = log else { return };
    for want in [
        "/w/sg/f 65534:7 100644",
        "/w/sg/d 65534:7 42755",
        "/w/a/f 65534:65534 100640",
        "/s/theirs 1:0 100644",
        "/w/theirs2 1:0 100644",
    ] {
        assert!(log.iter().any(|l| l == want), "{want} not in {log:#?}");
    }
}

fn utimensat(path: &Path, t: [(i64, i64); 2]) -> String {
    let c = cs(path);
    let ts = t.map(|(s, ns)| libc::timespec {
        tv_sec: s,
        tv_nsec: ns,
    });
    // SAFETY: valid C string and two timespecs.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), 0) };
    outcome(if rc == 0 { 0 } else { last_errno() })
}

#[test]
fn cow_posix_utimensat_omit_now_and_nanoseconds() {
    let log = both(SPEC, |r| {
        let mut log = Log::new();
        std::fs::write(p(r, "/t/new"), "n").unwrap();
        let t0 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // A time set to "now" shows as `now` (its nanoseconds differ from run to run).
        let now = |s: i64, ns: i64| match (t0 - 2..=t0 + 60).contains(&s) {
            true => "now".to_string(),
            false => format!("{s}.{ns:09}"),
        };
        for f in ["/t/lf", "/t/new"] {
            let path = p(r, f);
            let times = || {
                let st = lstat(&path).unwrap();
                format!(
                    "atime {} mtime {}",
                    now(st.st_atime, st.st_atime_nsec),
                    now(st.st_mtime, st.st_mtime_nsec)
                )
            };
            let before = lstat(&path).unwrap();
            let steps: [(&str, [(i64, i64); 2]); 4] = [
                (
                    "atime only",
                    [(1_900_000_000, 123_456_789), (0, libc::UTIME_OMIT)],
                ),
                (
                    "mtime only",
                    [(0, libc::UTIME_OMIT), (1_950_000_000, 987_654_321)],
                ),
                ("atime now", [(0, libc::UTIME_NOW), (0, libc::UTIME_OMIT)]),
                (
                    "both omitted",
                    [(0, libc::UTIME_OMIT), (0, libc::UTIME_OMIT)],
                ),
            ];
            let mut seen = Vec::new();
            for (what, t) in steps {
                let rc = utimensat(&path, t);
                seen.push(times());
                log.push(format!("{f} {what}: {rc}: {}", seen.last().unwrap()));
            }
            // The first step left mtime as it was, to the nanosecond.
            let after = lstat(&path).unwrap();
            let mtime_before = format!("mtime {}", now(before.st_mtime, before.st_mtime_nsec));
            log.push(format!(
                "{f} mtime kept by atime only: {}",
                seen[0].ends_with(&mtime_before)
            ));
            log.push(format!(
                "{f} mtime at end {}.{}",
                after.st_mtime, after.st_mtime_nsec
            ));
        }
        log
    });
    let Some(log) = log else { return };
    for want in [
        "/t/lf atime only: ok: atime 1900000000.123456789 mtime 1700000000.000000000",
        "/t/lf mtime only: ok: atime 1900000000.123456789 mtime 1950000000.987654321",
        "/t/new mtime only: ok: atime 1900000000.123456789 mtime 1950000000.987654321",
        "/t/lf mtime at end 1950000000.987654321",
    ] {
        assert!(log.iter().any(|l| l == want), "{want} not in {log:#?}");
    }
    assert!(
        log.iter()
            .any(|l| l == "/t/new atime now: ok: atime now mtime 1950000000.987654321"),
        "{log:#?}"
    );
    assert!(
        log.iter()
            .filter(|l| l.ends_with("kept by atime only: true"))
            .count()
            == 2
    );
}

#[test]
fn cow_posix_open_file_outlives_its_last_name() {
    use std::io::{Read, Seek, Write};
    use std::os::unix::fs::MetadataExt;
    let log = both(SPEC, |r| {
        let mut log = Log::new();
        std::fs::write(p(r, "/w/fresh"), "abc").unwrap();
        for f in ["/w/fresh", "/w/a/lf"] {
            let mut fh = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p(r, f))
                .unwrap();
            std::fs::remove_file(p(r, f)).unwrap();
            let m = fh.metadata();
            log.push(format!(
                "{f} fstat: {:?}",
                m.map(|m| (m.nlink(), m.len(), m.mode()))
                    .map_err(|e| e.raw_os_error())
            ));
            let wrote = fh
                .seek(std::io::SeekFrom::End(0))
                .and_then(|_| fh.write_all(b"+more"));
            log.push(format!("{f} write: {wrote:?}"));
            let mut back = String::new();
            let read = fh
                .seek(std::io::SeekFrom::Start(0))
                .and_then(|_| fh.read_to_string(&mut back));
            log.push(format!("{f} read: {read:?} {back:?}"));
            let m = fh.metadata().map(|m| (m.nlink(), m.len()));
            log.push(format!(
                "{f} fstat after: {:?}",
                m.map_err(|e| e.raw_os_error())
            ));
            // Its attributes still change through the descriptor.
            let fd = std::os::fd::AsRawFd::as_raw_fd(&fh);
            let t = [(1_000_000, 5), (2_000_000, 7)].map(|(s, n)| libc::timespec {
                tv_sec: s,
                tv_nsec: n,
            });
            // SAFETY: an open descriptor and two timespecs.
            let changed = unsafe {
                [
                    libc::fchmod(fd, 0o600),
                    libc::ftruncate(fd, 2),
                    libc::fchown(fd, 1, 2),
                    libc::futimens(fd, t.as_ptr()),
                ]
            };
            log.push(format!("{f} fchmod ftruncate fchown futimens: {changed:?}"));
            let m = fh.metadata().map(|m| {
                let t = (m.mtime(), m.mtime_nsec(), m.atime(), m.atime_nsec());
                (m.mode(), m.len(), m.uid(), m.gid(), t)
            });
            log.push(format!(
                "{f} fstat changed: {:?}",
                m.map_err(|e| e.raw_os_error())
            ));
            log.push(format!("{f} name: {}", p(r, f).exists()));
        }
        log
    });
    let Some(log) = log else { return };
    assert!(
        log.contains(&"/w/fresh fstat: Ok((0, 3, 33188))".to_string()),
        "{log:#?}"
    );
    assert!(
        log.contains(&"/w/a/lf read: Ok(10) \"lower+more\"".to_string()),
        "{log:#?}"
    );
    let changed = "/w/a/lf fstat changed: Ok((33152, 2, 1, 2, (2000000, 7, 1000000, 5)))";
    assert!(log.contains(&changed.to_string()), "{log:#?}");
}

#[test]
fn cow_posix_write_by_another_user_drops_set_id_bits() {
    let log = both(SPEC, |r| {
        let mut log = Log::new();
        for (i, mode) in [0o4777u32, 0o2777, 0o6777].into_iter().enumerate() {
            let path = p(r, &format!("/w/setid{i}"));
            let c = cs(&path);
            let made = child(None, Some(0), || {
                // SAFETY: valid C string.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_CREAT | libc::O_WRONLY, mode) };
                if fd < 0 { last_errno() } else { 0 }
            });
            log.push(format!(
                "{mode:o} create: {} {}",
                outcome(made),
                mode_of(&path)
            ));
            // The user opens, writes and fstats: 200 + the low bits of a wrong mode.
            let code = child(Some(USER), None, || {
                // SAFETY: valid C string, a one-byte buffer and a stat buffer.
                unsafe {
                    let fd = libc::open(c.as_ptr(), libc::O_RDWR);
                    if fd < 0 {
                        return last_errno();
                    }
                    if libc::write(fd, b"x".as_ptr().cast(), 1) != 1 {
                        return last_errno();
                    }
                    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
                    if libc::fstat(fd, st.as_mut_ptr()) != 0 {
                        return last_errno();
                    }
                    match st.assume_init().st_mode & 0o7777 {
                        0o777 => 0,
                        m => 200 + (m >> 9) as i32,
                    }
                }
            });
            log.push(format!(
                "{mode:o} written by user: {code} {}",
                mode_of(&path)
            ));
        }
        log
    });
    let Some(log) = log else { return };
    for l in log.iter().filter(|l| l.contains("written by user")) {
        assert!(l.ends_with(": 0 100777"), "{log:#?}");
    }
}

fn rename(from: &Path, to: &Path) -> impl FnOnce() -> i32 + use<> {
    let (a, b) = (cs(from), cs(to));
    // SAFETY: valid C strings.
    move || unsafe { libc::rename(a.as_ptr(), b.as_ptr()) }
}

fn unlink(path: &Path) -> impl FnOnce() -> i32 + use<> {
    let c = cs(path);
    // SAFETY: valid C string.
    move || unsafe { libc::unlink(c.as_ptr()) }
}

fn create(path: &Path) -> impl FnOnce() -> i32 + use<> {
    let c = cs(path);
    // SAFETY: valid C string.
    move || unsafe { libc::open(c.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) }
}

fn list(dir: &Path) -> String {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v.join(",")
}

#[test]
fn cow_posix_renames_by_a_user_and_the_sticky_rules() {
    let log = both(SPEC, |r| {
        let mut log = Log::new();
        let mut step = |what: &str, call: Box<dyn FnOnce() -> i32>| {
            log.push(format!("{what}: {}", as_user(USER, call)));
        };
        step(
            "lower file between writable dirs",
            Box::new(rename(&p(r, "/w/a/lf"), &p(r, "/w/b/lf"))),
        );
        step("create own", Box::new(create(&p(r, "/w/a/mine"))));
        step(
            "own file between dirs",
            Box::new(rename(&p(r, "/w/a/mine"), &p(r, "/w/b/mine"))),
        );
        step(
            "own file over a lower one",
            Box::new(rename(&p(r, "/w/b/mine"), &p(r, "/w/b/lf"))),
        );
        let mkdir = {
            let c = cs(&p(r, "/w/a/ud"));
            // SAFETY: valid C string.
            move || unsafe { libc::mkdir(c.as_ptr(), 0o755) }
        };
        step("mkdir own", Box::new(mkdir));
        step(
            "own dir between dirs",
            Box::new(rename(&p(r, "/w/a/ud"), &p(r, "/w/b/ud"))),
        );
        step(
            "other's file out of sticky",
            Box::new(rename(&p(r, "/s/theirs"), &p(r, "/w/b/x"))),
        );
        step(
            "other's file unlinked in sticky",
            Box::new(unlink(&p(r, "/s/theirs"))),
        );
        step("create own in sticky", Box::new(create(&p(r, "/s/own"))));
        step(
            "own over other's in sticky",
            Box::new(rename(&p(r, "/s/own"), &p(r, "/s/tgt"))),
        );
        step(
            "own out of sticky",
            Box::new(rename(&p(r, "/s/own"), &p(r, "/w/b/own"))),
        );
        step(
            "root-owned dir not writable",
            Box::new(rename(&p(r, "/w/b/own"), &p(r, "/t/own"))),
        );
        for d in ["/w/a", "/w/b", "/s"] {
            log.push(format!("{d}: {}", list(&p(r, d))));
        }
        log
    });
    let Some(log) = log else { return };
    for want in [
        "lower file between writable dirs: ok",
        "own dir between dirs: ok",
        "other's file out of sticky: EPERM: Operation not permitted",
        "own over other's in sticky: EPERM: Operation not permitted",
        "root-owned dir not writable: EACCES: Permission denied",
    ] {
        assert!(log.iter().any(|l| l == want), "{want} not in {log:#?}");
    }
}

fn ctime(path: &Path) -> (i64, i64) {
    let st = lstat(path).unwrap();
    (st.st_ctime, st.st_ctime_nsec)
}

#[test]
fn cow_posix_ctime_moves_with_successful_changes_only() {
    let log = both(SPEC, |r| {
        let mut log = Log::new();
        type Call = Box<dyn FnOnce() -> i32>;
        let chmod = |f: &str| -> Call {
            let c = cs(&p(r, f));
            // SAFETY: valid C string.
            Box::new(move || unsafe { libc::chmod(c.as_ptr(), 0o600) })
        };
        let chown = |f: &str| -> Call {
            let c = cs(&p(r, f));
            // SAFETY: valid C string.
            Box::new(move || unsafe { libc::chown(c.as_ptr(), 5, 6) })
        };
        let link = |f: &str, to: &str| -> Call {
            let (a, b) = (cs(&p(r, f)), cs(&p(r, to)));
            // SAFETY: valid C strings.
            Box::new(move || unsafe { libc::link(a.as_ptr(), b.as_ptr()) })
        };
        // (what, who, the call, the entry whose ctime is watched before, and after)
        type Step<'a> = (&'a str, Option<(u32, u32)>, Call, &'a str, &'a str);
        let steps: Vec<Step> = vec![
            (
                "chmod",
                None,
                chmod("/c/chmod_ok"),
                "/c/chmod_ok",
                "/c/chmod_ok",
            ),
            (
                "chmod by user",
                Some(USER),
                chmod("/c/chmod_bad"),
                "/c/chmod_bad",
                "/c/chmod_bad",
            ),
            (
                "chown",
                None,
                chown("/c/chown_ok"),
                "/c/chown_ok",
                "/c/chown_ok",
            ),
            (
                "chown by user",
                Some(USER),
                chown("/c/chown_bad"),
                "/c/chown_bad",
                "/c/chown_bad",
            ),
            (
                "link",
                None,
                link("/c/link_src", "/c/link_new"),
                "/c/link_src",
                "/c/link_src",
            ),
            (
                "link by user",
                Some(USER),
                link("/c/link_bad", "/c/link_bad2"),
                "/c/link_bad",
                "/c/link_bad",
            ),
            (
                "unlink by user in sticky",
                Some(USER),
                Box::new(unlink(&p(r, "/cs/unl_bad"))),
                "/cs/unl_bad",
                "/cs/unl_bad",
            ),
            (
                "rename",
                None,
                Box::new(rename(&p(r, "/c/ren_ok"), &p(r, "/c/ren_done"))),
                "/c/ren_ok",
                "/c/ren_done",
            ),
            (
                "rename by user in sticky",
                Some(USER),
                Box::new(rename(&p(r, "/cs/ren_bad"), &p(r, "/cs/x"))),
                "/cs/ren_bad",
                "/cs/ren_bad",
            ),
        ];
        for (what, who, call, before, after) in steps {
            let b = ctime(&p(r, before));
            let rc = match who {
                Some(ids) => as_user(ids, call),
                None => outcome(if call() < 0 { last_errno() } else { 0 }),
            };
            // Stat at once: the attributes the kernel holds must be the entry's own now.
            let a = ctime(&p(r, after));
            let moved = if a != b { "changed" } else { "same" };
            log.push(format!("{what}: {rc}, ctime {moved}"));
        }
        log
    });
    let Some(log) = log else { return };
    for l in &log {
        let failed = l.contains(": E");
        assert_eq!(l.ends_with("ctime same"), failed, "{log:#?}");
    }
    assert!(
        log.iter().filter(|l| l.contains(": E")).count() >= 4,
        "{log:#?}"
    );
}

/// A name of 255 bytes, the longest a component may be.
fn long_name(c: char) -> String {
    std::iter::repeat_n(c, 255).collect()
}

#[test]
fn cow_posix_relative_paths_below_a_directory_deeper_than_path_max() {
    let log = both(SPEC, |r| {
        let mut log = Log::new();
        // 20 levels of 255-byte names: the directory is 5,120 bytes below the mount root.
        let top = cs(&p(r, "/w"));
        // SAFETY: valid C string.
        let mut fd = unsafe { libc::open(top.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
        assert!(fd >= 0);
        for level in 0..20 {
            let n = CString::new(long_name((b'a' + level as u8) as char)).unwrap();
            // SAFETY: valid descriptor and C string.
            let next = unsafe {
                assert_eq!(libc::mkdirat(fd, n.as_ptr(), 0o755), 0, "level {level}");
                let next = libc::openat(fd, n.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY);
                libc::close(fd);
                next
            };
            assert!(
                next >= 0,
                "level {level}: {}",
                std::io::Error::last_os_error()
            );
            fd = next;
        }
        // From there, a relative path of PATH_MAX - 1 bytes: 16 components of 255.
        let comps: Vec<String> = (0..16)
            .map(|i| long_name((b'A' + i as u8) as char))
            .collect();
        let rel = |n: usize| CString::new(comps[..n].join("/")).unwrap();
        assert_eq!(rel(16).as_bytes().len(), libc::PATH_MAX as usize - 1);
        let mut rc = |what: &str, r: i32| {
            log.push(format!(
                "{what}: {}",
                outcome(if r < 0 { last_errno() } else { 0 })
            ));
        };
        for n in 1..16 {
            // SAFETY: valid descriptor and C string.
            let r = unsafe { libc::mkdirat(fd, rel(n).as_ptr(), 0o755) };
            assert_eq!(r, 0, "parent {n}: {}", std::io::Error::last_os_error());
        }
        let full = rel(16);
        // SAFETY (all below): valid descriptor and C strings.
        rc("mkdir", unsafe { libc::mkdirat(fd, full.as_ptr(), 0o755) });
        rc("rmdir", unsafe {
            libc::unlinkat(fd, full.as_ptr(), libc::AT_REMOVEDIR)
        });
        let f = unsafe { libc::openat(fd, full.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644) };
        rc("create", f);
        if f >= 0 {
            rc("write", unsafe {
                libc::write(f, b"deep".as_ptr().cast(), 4) as i32
            });
            unsafe { libc::close(f) };
        }
        let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
        rc("stat", unsafe {
            libc::fstatat(fd, full.as_ptr(), st.as_mut_ptr(), 0)
        });
        rc("chmod", unsafe {
            libc::fchmodat(fd, full.as_ptr(), 0o600, 0)
        });
        rc("unlink", unsafe { libc::unlinkat(fd, full.as_ptr(), 0) });
        let st = unsafe { libc::fstatat(fd, full.as_ptr(), st.as_mut_ptr(), 0) };
        rc("stat after unlink", st);
        unsafe { libc::close(fd) };
        log
    });
    let Some(log) = log else { return };
    assert_eq!(
        log,
        [
            "mkdir: ok",
            "rmdir: ok",
            "create: ok",
            "write: ok",
            "stat: ok",
            "chmod: ok",
            "unlink: ok",
            "stat after unlink: ENOENT: No such file or directory"
        ]
    );
}

/// Opens `name` beneath `dir` (`O_PATH` directory descriptors), closing `dir`.
fn step_down(dir: i32, name: &CString) -> i32 {
    // SAFETY: valid descriptor and C string; `dir` is ours to close.
    unsafe {
        let next = libc::openat(
            dir,
            name.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        );
        libc::close(dir);
        next
    }
}

fn open_path(path: &Path) -> i32 {
    let c = cs(path);
    // SAFETY: valid C string.
    unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY) }
}

fn read_at(dir: i32, name: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    let c = CString::new(name).unwrap();
    // SAFETY: valid descriptor and C string; the new descriptor is owned by the File.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// Removes a chain of directories `d` below `top` of any depth, bottom up (the standard
/// library's removal recurses once per level; renames cost the depth each).
fn remove_chain(top: &Path) {
    let (d, up) = (CString::new("d").unwrap(), CString::new("..").unwrap());
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW;
    let c = cs(top);
    // SAFETY: valid descriptors and C strings throughout; each descriptor is closed once.
    unsafe {
        let mut fd = libc::open(c.as_ptr(), flags);
        let mut depth = 0;
        loop {
            let next = libc::openat(fd, d.as_ptr(), flags);
            if next < 0 {
                break;
            }
            libc::close(fd);
            (fd, depth) = (next, depth + 1);
        }
        for name in nix::dir::Dir::openat(
            std::os::fd::BorrowedFd::borrow_raw(fd),
            ".",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap()
        .into_iter()
        .map(|e| e.unwrap().file_name().to_owned())
        .filter(|n| n.as_bytes() != b"." && n.as_bytes() != b"..")
        {
            assert_eq!(libc::unlinkat(fd, name.as_ptr(), 0), 0, "{name:?}");
        }
        for _ in 0..depth {
            let parent = libc::openat(fd, up.as_ptr(), flags);
            assert!(parent >= 0);
            libc::close(fd);
            fd = parent;
            assert_eq!(libc::unlinkat(fd, d.as_ptr(), libc::AT_REMOVEDIR), 0);
        }
        libc::close(fd);
    }
}

#[test]
fn cow_posix_layer_30000_directories_deep_serves_every_depth() {
    const DEPTH: usize = 30_000;
    // Where the test changes things: far below the 4,096 levels a path walk once stopped at.
    // (Changing the bottom too would copy up 30,000 directories, each renamed into place
    // below all the others: a cost of the square of the depth, as for kernel overlayfs.)
    const CHANGED: usize = 5_000;
    let sb = Sandbox::new();
    // A file at each of the two depths; their parents are implicit, so the layer stays small.
    let spec = format!(
        "L0: file /{}f 0644 'bottom'; file /{}g 0644 'middle'\n",
        "d/".repeat(DEPTH),
        "d/".repeat(CHANGED)
    );
    let image = sb.image(&spec);
    let upper = sb.path("upper");
    let Some(m) = common::harness::mount_with_upper(&image, &sb.cache(), &upper) else {
        return;
    };
    let d = CString::new("d").unwrap();
    let listed = |fd: i32| {
        // SAFETY: `fd` stays open while it is borrowed.
        let dir = nix::dir::Dir::openat(
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            ".",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY,
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let mut v: Vec<String> = dir
            .into_iter()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != "." && n != "..")
            .collect();
        v.sort();
        v.join(",")
    };
    let mut fd = open_path(m.path());
    let mut middle = -1;
    for depth in 1..=DEPTH {
        fd = step_down(fd, &d);
        assert!(
            fd >= 0,
            "depth {depth}: {}",
            std::io::Error::last_os_error()
        );
        if depth == CHANGED {
            // SAFETY: a valid descriptor.
            middle = unsafe { libc::dup(fd) };
        }
    }
    assert_eq!(read_at(fd, "f").unwrap(), b"bottom");
    assert_eq!(listed(fd), "f");
    // SAFETY: ours to close.
    unsafe { libc::close(fd) };
    // Changes in the middle: every directory above it is copied up.
    assert_eq!(listed(middle), "d,g");
    let new = CString::new("new").unwrap();
    let g = CString::new("g").unwrap();
    // SAFETY: valid descriptors and C strings.
    unsafe {
        let w = libc::openat(middle, new.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        assert!(w >= 0, "create: {}", std::io::Error::last_os_error());
        assert_eq!(libc::write(w, b"written".as_ptr().cast(), 7), 7);
        libc::close(w);
        assert_eq!(libc::unlinkat(middle, g.as_ptr(), 0), 0, "unlink");
    }
    assert_eq!(read_at(middle, "new").unwrap(), b"written");
    assert_eq!(listed(middle), "d,new");
    // SAFETY: ours to close.
    unsafe { libc::close(middle) };
    m.unmount();
    // The upper holds the change at its depth, in overlayfs's form: the new file, and a
    // whiteout for the lower one.
    let mut fd = open_path(&upper);
    for depth in 1..=CHANGED {
        fd = step_down(fd, &d);
        assert!(
            fd >= 0,
            "upper depth {depth}: {}",
            std::io::Error::last_os_error()
        );
    }
    assert_eq!(read_at(fd, "new").unwrap(), b"written");
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid descriptor, C string and stat buffer.
    let st = unsafe {
        let r = libc::fstatat(fd, g.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW);
        assert_eq!(r, 0);
        libc::close(fd);
        st.assume_init()
    };
    assert_eq!((st.st_mode & libc::S_IFMT, st.st_rdev), (libc::S_IFCHR, 0));
    remove_chain(&upper);
}

fn xattrs(path: &Path) -> Vec<(String, String)> {
    let c = cs(path);
    let mut names = vec![0u8; 4096];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    assert!(
        n >= 0,
        "listxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    names.truncate(n as usize);
    let mut out: Vec<(String, String)> = names
        .split(|&b| b == 0)
        .filter(|k| !k.is_empty() && !k.starts_with(b"user.rimgfs."))
        .map(|k| {
            let ck = CString::new(k).unwrap();
            let mut v = vec![0u8; 4096];
            // SAFETY: valid C strings and buffer.
            let len =
                unsafe { libc::lgetxattr(c.as_ptr(), ck.as_ptr(), v.as_mut_ptr().cast(), v.len()) };
            assert!(len >= 0, "getxattr {}", String::from_utf8_lossy(k));
            v.truncate(len as usize);
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn cow_posix_image_overlay_attributes_never_become_bookkeeping() {
    // Directories of the top layer carry overlay attributes of their own; the lower layer
    // has entries below them that must keep showing once they are copied up.
    let spec = "\
L0: dir /k; file /k/below 0644 'b'; dir /u; file /u/below 0644 'b'; dir /r; file /r/below 0644 'b'
L1: dir /k xattr=trusted.overlay.opaque=y xattr=user.k=v; file /k/top 0644 't'
L1: dir /u xattr=user.overlay.opaque=y; dir /r xattr=trusted.overlay.redirect=/k
L1: file /f 0644 'f' xattr=trusted.overlay.metacopy=
";
    let sb = Sandbox::new();
    let image = sb.image(spec);
    let upper = sb.path("upper");
    let cache = sb.cache();
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &upper) else {
        return;
    };
    let r = m.path().to_path_buf();
    let state = |r: &Path| {
        ["/k", "/u", "/r", "/f"]
            .iter()
            .map(|e| {
                let listing = if p(r, e).is_dir() {
                    list(&p(r, e))
                } else {
                    String::new()
                };
                format!("{e} [{listing}] {:?}", xattrs(&p(r, e)))
            })
            .collect::<Vec<_>>()
    };
    let before = state(&r);
    assert!(
        before[0].contains("\"trusted.overlay.opaque\", \"y\""),
        "the image's attribute shows: {before:#?}"
    );
    // Copy each one up: a new entry in each directory, a chmod of the file.
    for d in ["/k", "/u", "/r"] {
        std::fs::write(p(&r, &format!("{d}/new")), "n").unwrap();
        std::fs::remove_file(p(&r, &format!("{d}/new"))).unwrap();
    }
    std::fs::set_permissions(
        p(&r, "/f"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    assert_eq!(state(&r), before, "after copy-up");
    assert_eq!(std::fs::read(p(&r, "/f")).unwrap(), b"f");
    m.unmount();
    // Stored escaped, as Linux 6.7's overlayfs does.
    let stored = xattrs(&upper.join("k"));
    assert!(
        stored.contains(&("trusted.overlay.overlay.opaque".into(), "y".into()))
            && !stored.iter().any(|(k, _)| k == "trusted.overlay.opaque"),
        "{stored:?}"
    );
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &upper) else {
        return;
    };
    assert_eq!(state(m.path()), before, "remounted");
    m.unmount();
    // The changes reader agrees: nothing of the image's attributes changed.
    let (c, u) = (cache.to_string_lossy(), upper.to_string_lossy());
    let out = common::rimgfs(&[
        "diff",
        "--cache-dir",
        &c,
        "--upper",
        &u,
        &image.to_string_lossy(),
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        !out.stdout
            .lines()
            .any(|l| l.starts_with("D ") || l.ends_with("below")),
        "diff: {}",
        out.stdout
    );
}
