//! Nothing planted in an upper or work directory makes the daemon (root) change anything
//! outside them.
//!
//! Symlinks pointing outside are planted where the image has directories and files (`etc`,
//! `data`, `file`, `keep/sub`), in the work directory (under the names the daemon gives its
//! temporary entries, which it removes when it opens the upper), and, while mounted, swapped
//! in for an upper directory and an upper file the daemon already knows as such. Then every
//! kind of change is tried through the mount on those names and below them. Errors are fine;
//! afterwards the outside tree must be exactly as it was: contents, modes, owners, times,
//! extended attributes, and no new entries.
//!
//! Relative targets are used wherever the test follows a path through the mount, chosen so
//! that they dangle when resolved from the mount point: a change that reaches the outside
//! tree can then only have been made by the daemon, never by the test's own path walk.
#![allow(missing_docs, unsafe_code)]

mod common;

use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use common::Sandbox;
use common::listing::Listing;
use common::overlay::{set_owner_time, set_xattr};
use nix::fcntl::{AT_FDCWD, AtFlags};

const SPEC: &str = "\
L0: dir /etc; file /etc/passwd 0644 'image passwd'; file /etc/hosts 0644 'hosts'
L0: dir /data; file /data/x 0644 'x'; file /file 0644 'file'; file /abs 0644 'abs'
L0: dir /keep; dir /keep/sub; file /keep/sub/f 0644 'f'; file /keep/g 0644 'g'
L0: dir /keep/sub2; file /keep/sub2/h 0644 'h'; file /keep/r 0644 'r'
";

/// A time far in the past, so any change to an outside entry's times shows.
const OLD: (i64, i64) = (1_000_000_000, 0);

/// The outside tree: what the planted links point at.
fn make_outside(o: &Path) {
    std::fs::create_dir_all(o.join("etc")).unwrap();
    std::fs::create_dir_all(o.join("data")).unwrap();
    std::fs::create_dir_all(o.join("dir/deep")).unwrap();
    std::fs::write(o.join("etc/passwd"), "outside passwd\n").unwrap();
    std::fs::write(o.join("data/x"), "outside x\n").unwrap();
    std::fs::write(o.join("file"), "outside file\n").unwrap();
    std::fs::write(o.join("dir/deep/inner"), "inner\n").unwrap();
    for f in ["etc/passwd", "data/x", "file", "dir/deep/inner"] {
        std::fs::set_permissions(o.join(f), std::fs::Permissions::from_mode(0o640)).unwrap();
        set_xattr(&o.join(f), b"user.k", b"v").unwrap();
        set_owner_time(&o.join(f), 0, 0, OLD);
    }
    // Directories last, deepest first, so their times are not changed by their children.
    for d in ["dir/deep", "dir", "etc", "data", ""] {
        let p = o.join(d);
        set_xattr(&p, b"user.k", b"v").unwrap();
        set_owner_time(&p, 0, 0, OLD);
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

type Log = Vec<String>;

fn rec<T>(log: &mut Log, what: String, r: std::io::Result<T>) {
    let outcome = match r {
        Ok(_) => "ok".to_string(),
        Err(e) => e.raw_os_error().map_or(e.to_string(), |c| {
            nix::errno::Errno::from_raw(c).to_string()
        }),
    };
    log.push(format!("{what}: {outcome}"));
}

fn nix_io<T>(r: nix::Result<T>) -> std::io::Result<T> {
    r.map_err(std::io::Error::from)
}

/// Changes that never follow the final component (safe on any name, absolute links too).
fn nofollow_changes(log: &mut Log, p: &Path) {
    let n = p.display();
    rec(
        log,
        format!("lchown {n}"),
        nix_io(nix::unistd::fchownat(
            AT_FDCWD,
            p,
            Some(123.into()),
            Some(456.into()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )),
    );
    for attr in [&b"user.evil"[..], b"trusted.evil", b"user.k"] {
        rec(
            log,
            format!("lsetxattr {n} {}", String::from_utf8_lossy(attr)),
            set_xattr(p, attr, b"pwned"),
        );
    }
    let t = nix::sys::time::TimeSpec::new(12345, 0);
    rec(
        log,
        format!("lutimes {n}"),
        nix_io(nix::sys::stat::utimensat(
            AT_FDCWD,
            p,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )),
    );
    rec(
        log,
        format!("open nofollow {n}"),
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(p)
            .and_then(|mut f| f.write_all(b"pwned")),
    );
}

use std::os::unix::fs::OpenOptionsExt;

/// Changes that follow paths (only on names whose targets dangle from the mount point).
fn following_changes(log: &mut Log, p: &Path) {
    let n = p.display();
    rec(
        log,
        format!("chmod {n}"),
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)),
    );
    rec(
        log,
        format!("chown {n}"),
        nix_io(nix::unistd::chown(p, Some(123.into()), Some(456.into()))),
    );
    rec(
        log,
        format!("append {n}"),
        std::fs::OpenOptions::new()
            .append(true)
            .open(p)
            .and_then(|mut f| f.write_all(b"pwned")),
    );
    rec(
        log,
        format!("truncate {n}"),
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .and_then(|f| f.set_len(0)),
    );
    for child in ["passwd", "x", "f", "h", "new", "deep"] {
        let c = p.join(child);
        let cn = c.display();
        rec(log, format!("write {cn}"), std::fs::write(&c, "pwned"));
        rec(
            log,
            format!("chmod {cn}"),
            std::fs::set_permissions(&c, std::fs::Permissions::from_mode(0o777)),
        );
        rec(
            log,
            format!("setxattr {cn}"),
            set_xattr(&c, b"user.evil", b"1"),
        );
        rec(log, format!("unlink {cn}"), std::fs::remove_file(&c));
        rec(
            log,
            format!("mkdir {cn}.d"),
            std::fs::create_dir(c.with_extension("d")),
        );
        rec(
            log,
            format!("rename {cn}"),
            std::fs::rename(&c, p.join("renamed")),
        );
    }
    rec(
        log,
        format!("rmdir {n}/deep"),
        std::fs::remove_dir(p.join("deep")),
    );
}

/// Changes to the name itself: rename away and back, hard link, unlink and recreate.
fn name_changes(log: &mut Log, p: &Path) {
    let n = p.display();
    let moved = p.with_extension("moved");
    rec(log, format!("rename {n}"), std::fs::rename(p, &moved));
    rec(log, format!("rename back {n}"), std::fs::rename(&moved, p));
    rec(
        log,
        format!("link {n}"),
        std::fs::hard_link(p, p.with_extension("link")),
    );
}

fn fsetxattr(f: &std::fs::File, name: &str, value: &[u8]) -> std::io::Result<()> {
    let n = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid descriptor and C string; `value` is readable for its length.
    let r = unsafe {
        libc::fsetxattr(
            std::os::fd::AsRawFd::as_raw_fd(f),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Changes through descriptors of a directory and a file that were swapped for symlinks.
fn stale_handle_changes(log: &mut Log, dir: &std::fs::File, file: &std::fs::File) {
    use nix::fcntl::{OFlag, openat, renameat};
    use nix::sys::stat::{FchmodatFlags, Mode, fchmod, fchmodat, mkdirat};
    use nix::unistd::{UnlinkatFlags, fchown, fchownat, unlinkat};
    let mode = Mode::from_bits_truncate(0o777);
    for (name, flags) in [
        ("new", OFlag::O_WRONLY | OFlag::O_APPEND),
        ("h", OFlag::O_WRONLY | OFlag::O_TRUNC),
        ("created", OFlag::O_WRONLY | OFlag::O_CREAT),
    ] {
        let r = openat(dir, name, flags, Mode::from_bits_truncate(0o644)).and_then(|fd| {
            nix::unistd::write(&fd, b"pwned")?;
            Ok(())
        });
        rec(log, format!("openat sub2 {name} {flags:?}"), nix_io(r));
    }
    rec(
        log,
        "mkdirat sub2 d".into(),
        nix_io(mkdirat(dir, "d", mode)),
    );
    rec(
        log,
        "unlinkat sub2 h".into(),
        nix_io(unlinkat(dir, "h", UnlinkatFlags::NoRemoveDir)),
    );
    for name in ["h", "new"] {
        rec(
            log,
            format!("fchmodat sub2 {name}"),
            nix_io(fchmodat(dir, name, mode, FchmodatFlags::FollowSymlink)),
        );
        rec(
            log,
            format!("fchownat sub2 {name}"),
            nix_io(fchownat(
                dir,
                name,
                Some(123.into()),
                Some(456.into()),
                AtFlags::empty(),
            )),
        );
    }
    rec(
        log,
        "renameat sub2 new".into(),
        nix_io(renameat(dir, "new", dir, "moved")),
    );
    for (what, f) in [("sub2", dir), ("g", file)] {
        rec(log, format!("fchmod {what}"), nix_io(fchmod(f, mode)));
        rec(
            log,
            format!("fchown {what}"),
            nix_io(fchown(f, Some(123.into()), Some(456.into()))),
        );
        rec(
            log,
            format!("fsetxattr {what}"),
            fsetxattr(f, "user.evil", b"1"),
        );
        rec(
            log,
            format!("fsetxattr {what} trusted"),
            fsetxattr(f, "trusted.evil", b"1"),
        );
        let t = nix::sys::time::TimeSpec::new(12345, 0);
        rec(
            log,
            format!("futimens {what}"),
            nix_io(nix::sys::stat::futimens(f, &t, &t)),
        );
    }
    let reopen = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(file));
    rec(
        log,
        "reopen g for writing".into(),
        std::fs::OpenOptions::new()
            .write(true)
            .open(&reopen)
            .and_then(|mut f| {
                f.write_all(b"pwned")?;
                f.set_len(3)
            }),
    );
}

#[test]
fn cow_planted_symlinks_never_lead_the_daemon_outside_the_upper() {
    if !nix::unistd::geteuid().is_root() {
        common::harness::skip("the daemon must run as root for this test to mean anything");
        return;
    }
    let sb = Sandbox::new();
    let image = sb.image(SPEC);
    let outside = sb.path("outside");
    make_outside(&outside);
    let before = Listing::walk(&outside);

    let upper = sb.path("upper");
    let work = sb.path("upper.work");
    std::fs::create_dir_all(upper.join("keep")).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    symlink("../outside/etc", upper.join("etc")).unwrap();
    symlink("../outside/data", upper.join("data")).unwrap();
    symlink("../outside/file", upper.join("file")).unwrap();
    symlink(outside.join("file"), upper.join("abs")).unwrap();
    symlink("../../outside/dir", upper.join("keep/sub")).unwrap();
    // In the work directory: names the daemon removes as its own leftovers, and another.
    symlink("../outside/dir", work.join("#rimgfs.1.0")).unwrap();
    symlink("../outside/file", work.join("#rimgfs.1.1")).unwrap();
    symlink("../outside/file", work.join("planted")).unwrap();

    let cache = sb.cache();
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &upper) else {
        return;
    };
    let mut log = Log::new();
    // The planted names show as the symlinks they are.
    for n in ["etc", "data", "file", "abs", "keep/sub"] {
        let md = std::fs::symlink_metadata(m.at(n)).unwrap();
        assert!(md.file_type().is_symlink(), "{n}: {md:?}");
    }
    for n in ["etc", "data", "file", "abs", "keep/sub"] {
        nofollow_changes(&mut log, &m.at(n));
    }
    for n in ["etc", "data", "file", "keep/sub"] {
        following_changes(&mut log, &m.at(n));
    }

    // Entries the daemon knows as an upper file and an upper directory are swapped for
    // symlinks behind its back.
    std::fs::write(m.at("keep/g"), "copied up").unwrap();
    std::fs::write(m.at("keep/sub2/new"), "new").unwrap();
    std::fs::metadata(m.at("keep/sub2/h")).unwrap();
    std::fs::metadata(m.at("keep/r")).unwrap();
    // Descriptors opened before the swap make the kernel send requests for the inodes the
    // daemon knows, whatever a fresh lookup would find.
    let sub2 = std::fs::File::open(m.at("keep/sub2")).unwrap();
    let g = std::fs::File::open(m.at("keep/g")).unwrap();
    std::fs::remove_file(upper.join("keep/g")).unwrap();
    symlink("../../outside/file", upper.join("keep/g")).unwrap();
    std::fs::rename(upper.join("keep/sub2"), sb.path("stash-sub2")).unwrap();
    symlink("../../outside/data", upper.join("keep/sub2")).unwrap();
    stale_handle_changes(&mut log, &sub2, &g);
    drop((sub2, g));
    for n in ["keep/g", "keep/sub2"] {
        nofollow_changes(&mut log, &m.at(n));
        following_changes(&mut log, &m.at(n));
    }
    rec(
        &mut log,
        "read keep/g".into(),
        std::fs::read(m.at("keep/g")),
    );
    // A lower file under the swapped directory: copy-up walks through it.
    rec(
        &mut log,
        "chmod keep/sub2/h".into(),
        std::fs::set_permissions(m.at("keep/sub2/h"), std::fs::Permissions::from_mode(0o600)),
    );
    for n in [
        "etc",
        "data",
        "file",
        "abs",
        "keep/sub",
        "keep/g",
        "keep/sub2",
    ] {
        name_changes(&mut log, &m.at(n));
    }
    // Deleted and made again: a fresh directory and file where the links were.
    rec(
        &mut log,
        "unlink etc".into(),
        std::fs::remove_file(m.at("etc")),
    );
    rec(
        &mut log,
        "mkdir etc".into(),
        std::fs::create_dir(m.at("etc")),
    );
    rec(
        &mut log,
        "write etc/passwd".into(),
        std::fs::write(m.at("etc/passwd"), "fresh"),
    );
    rec(
        &mut log,
        "unlink file".into(),
        std::fs::remove_file(m.at("file")),
    );
    rec(
        &mut log,
        "write file".into(),
        std::fs::write(m.at("file"), "fresh"),
    );
    let after_mounted = Listing::walk(&outside);
    m.unmount();
    eprintln!("{}", log.join("\n"));

    Listing::walk(&outside).assert_same(&before, "outside tree after the mount");
    after_mounted.assert_same(&before, "outside tree while mounted");
    assert_eq!(
        names(sb.dir.path()),
        [
            "cache",
            "image.tar",
            "outside",
            "stash-sub2",
            "upper",
            "upper.work"
        ]
    );
    // What was made anew went into the upper.
    assert_eq!(std::fs::read(upper.join("etc/passwd")).unwrap(), b"fresh");
    assert_eq!(std::fs::read(upper.join("file")).unwrap(), b"fresh");
    // The daemon removed its "leftovers" as links, and left the other work entry alone.
    assert_eq!(names(&work), ["planted"]);
    assert!(
        std::fs::symlink_metadata(work.join("planted"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}
