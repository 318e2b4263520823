//! The writable mount, operation by operation, with kernel overlayfs as the oracle.
//!
//! Each scenario runs the same series of syscalls on a rimgfs mount with `--upper` and on
//! kernel overlayfs over the image's extracted layers (`redirect_dir=on`), and requires
//! - the same result (errno) for every call;
//! - the same merged tree afterwards (times of entries changed during the run are compared
//!   only as "changed", since the two runs happen at different moments);
//! - that kernel overlayfs, given rimgfs's upper directory, shows exactly rimgfs's tree
//!   (the upper is in overlayfs's format), times included;
//! - that mounting rimgfs again with the same upper shows the same tree (persistence).
#![allow(missing_docs, unsafe_code)]

mod common;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::listing::Listing;
use common::overlay::{OverlayMount, extract_layers, kernel_overlay};
use common::spec::DEFAULT_MTIME;
use common::{ImageDef, Sandbox, require};

/// The image every scenario starts from: files, directories, an opaque directory and a
/// whiteout in the upper layer, symlinks, xattrs, special bits.
const SPEC: &str = "\
L0: dir /etc 0755; file /etc/hosts 0644 'hosts\\n'; file /etc/passwd 0644 'root:x:0:0\\n' xattr=user.k=v
L0: dir /data 0750 uid=5 gid=6; file /data/a 0640 uid=5 'aaaa'; dir /data/sub; file /data/sub/deep 0600 'deep'
L0: dir /opq; file /opq/old 0644 'old'; file /gone 0644 'gone'; symlink /link etc/hosts
L0: file /bin/tool 4755 'tool'; dir /empty 0700
L1: dir /opq; opaque /opq; file /opq/new 0644 'new'; whiteout /gone; dir /etc; file /etc/motd 0644 'motd'
";
// Layer 1 names its directories: an implicit parent in an upper layer would hide the lower
// directory's attributes under overlayfs, while rimgfs (as umoci) keeps them.

/// Renamed directories keep their lower content through redirects, and metadata-only copy-up
/// is on, as rimgfs does it.
const KERNEL_OPTS: &str = "redirect_dir=on,metacopy=on";

type Log = Vec<String>;

fn rec<T>(log: &mut Log, what: &str, r: std::io::Result<T>) {
    let outcome = match r {
        Ok(_) => "ok".to_string(),
        Err(e) => match e.raw_os_error() {
            Some(code) => nix::errno::Errno::from_raw(code).to_string(),
            None => e.to_string(),
        },
    };
    log.push(format!("{what}: {outcome}"));
}

fn renameat2(from: &Path, to: &Path, flags: u32) -> std::io::Result<()> {
    let (a, b) = (
        CString::new(from.as_os_str().as_bytes())?,
        CString::new(to.as_os_str().as_bytes())?,
    );
    // SAFETY: valid C strings; renameat2 takes no other pointers.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            flags,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn list(p: &Path) -> std::io::Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(p)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

/// Times after the image's own are "now", which differs between the two runs.
fn normalize(mut l: Listing) -> Listing {
    for info in l.0.values_mut() {
        if info.mtime.0 > DEFAULT_MTIME + 1_000_000 {
            info.mtime = (-1, 0);
        }
        if info.kind == 'd' {
            // Overlayfs reports 1 for merged directories; the count is not part of the tree.
            info.nlink = 0;
        }
    }
    l
}

/// Runs `ops` on rimgfs and on kernel overlayfs and checks the four properties above.
fn scenario(name: &str, ops: impl Fn(&Path) -> Log) {
    let sb = Sandbox::new();
    let def = ImageDef::from_spec(SPEC);
    let image = sb.image(SPEC);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let dirs = |n: &str| {
        let p = sb.path(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let (ku, kw) = (dirs("k-upper"), dirs("k-work"));
    // rimgfs gives a fresh upper root the image root's attributes (here the implicit root:
    // 0755, 0:0, mtime 0); do the same for the kernel's.
    common::overlay::set_time(&ku, (0, 0));
    let Some(k) = require(
        OverlayMount::mount(&lowers, Some((&ku, &kw)), KERNEL_OPTS, &sb.path("k-mnt")).ok(),
        "kernel overlayfs cannot be mounted here",
    ) else {
        return;
    };
    let klog = ops(&k.mnt);
    let ktree = normalize(Listing::walk(&k.mnt));
    k.unmount();

    let cache = sb.cache();
    let ru = sb.path("r-upper");
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &ru) else {
        return;
    };
    let rlog = ops(m.path());
    let rtree_raw = Listing::walk(m.path());
    m.unmount();
    assert_eq!(
        rlog, klog,
        "{name}: results differ from kernel overlayfs (left rimgfs)"
    );
    normalize(rtree_raw.clone()).assert_same(&ktree, &format!("{name}: tree vs kernel overlayfs"));

    // The upper is overlayfs's: the kernel shows the same tree from it.
    let kw2 = dirs("k-work2");
    let k2 = OverlayMount::mount(&lowers, Some((&ru, &kw2)), KERNEL_OPTS, &sb.path("k-mnt2"))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let interop = Listing::walk(&k2.mnt);
    k2.unmount();
    let without_root = |l: &Listing| {
        let mut l = l.clone();
        l.0.remove(&b"/"[..]);
        for i in l.0.values_mut().filter(|i| i.kind == 'd') {
            i.nlink = 0;
        }
        l
    };
    without_root(&interop).assert_same(
        &without_root(&rtree_raw),
        &format!("{name}: kernel overlayfs over rimgfs's upper"),
    );

    // Persistence: the same upper mounted again.
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &ru) else {
        return;
    };
    Listing::walk(m.path()).assert_same(&rtree_raw, &format!("{name}: remounted"));
    m.unmount();
}

fn p(root: &Path, rel: &str) -> PathBuf {
    root.join(rel.trim_start_matches('/'))
}

#[test]
fn cow_files_create_write_truncate() {
    scenario("files", |r| {
        let mut log = Log::new();
        rec(
            &mut log,
            "create new",
            std::fs::write(p(r, "/etc/new"), "fresh"),
        );
        let append = std::fs::OpenOptions::new()
            .append(true)
            .open(p(r, "/etc/hosts"));
        rec(
            &mut log,
            "append lower",
            append.and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n")),
        );
        let excl = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p(r, "/etc/passwd"));
        rec(&mut log, "O_EXCL on lower", excl);
        let excl = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(p(r, "/gone"));
        rec(
            &mut log,
            "O_EXCL on whiteout",
            excl.and_then(|mut f| std::io::Write::write_all(&mut f, b"back")),
        );
        let trunc = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(p(r, "/data/a"));
        rec(&mut log, "O_TRUNC lower", trunc);
        rec(
            &mut log,
            "truncate longer",
            std::fs::OpenOptions::new()
                .write(true)
                .open(p(r, "/data/sub/deep"))
                .and_then(|f| f.set_len(10_000)),
        );
        rec(
            &mut log,
            "write at offset",
            std::fs::OpenOptions::new()
                .write(true)
                .open(p(r, "/bin/tool"))
                .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, b"X", 2)),
        );
        rec(
            &mut log,
            "read back",
            std::fs::read(p(r, "/bin/tool")).map(|d| assert_eq!(d, b"toXl")),
        );
        rec(
            &mut log,
            "open dir for write",
            std::fs::OpenOptions::new().write(true).open(p(r, "/etc")),
        );
        rec(
            &mut log,
            "create in missing dir",
            std::fs::write(p(r, "/nope/x"), "x"),
        );
        rec(
            &mut log,
            "mode of new file",
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(p(r, "/opq/m")),
        );
        log
    });
}

/// Names looked up while absent (the kernel keeps them as absent) show once they are made
/// in any way, and are absent again once removed or renamed away.
#[test]
fn cow_absent_names_appear_once_made() {
    scenario("absent names", |r| {
        let mut log = Log::new();
        let stat = |log: &mut Log, rel: &str| {
            let m = std::fs::symlink_metadata(p(r, rel));
            let kind = m.as_ref().map(|m| format!("{:?}", m.file_type()));
            log.push(format!(
                "stat {rel}: {:?}",
                kind.map_err(|e| e.raw_os_error())
            ));
        };
        let names = [
            "/etc/f", "/etc/d", "/etc/l", "/etc/h", "/etc/p", "/etc/r", "/gone",
        ];
        for _ in 0..2 {
            for n in names {
                stat(&mut log, n);
            }
        }
        rec(&mut log, "create", std::fs::write(p(r, "/etc/f"), "f"));
        rec(&mut log, "mkdir", std::fs::create_dir(p(r, "/etc/d")));
        rec(
            &mut log,
            "symlink",
            std::os::unix::fs::symlink("f", p(r, "/etc/l")),
        );
        rec(
            &mut log,
            "link",
            std::fs::hard_link(p(r, "/etc/hosts"), p(r, "/etc/h")),
        );
        let fifo = CString::new(p(r, "/etc/p").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid C string.
        let made = unsafe { libc::mknod(fifo.as_ptr(), libc::S_IFIFO | 0o644, 0) };
        log.push(format!("mknod: {made}"));
        rec(
            &mut log,
            "rename",
            std::fs::rename(p(r, "/etc/motd"), p(r, "/etc/r")),
        );
        rec(
            &mut log,
            "recreate deleted",
            std::fs::write(p(r, "/gone"), "back"),
        );
        for n in names.iter().chain(&["/etc/motd"]) {
            stat(&mut log, n);
        }
        rec(&mut log, "unlink", std::fs::remove_file(p(r, "/etc/f")));
        rec(&mut log, "rmdir", std::fs::remove_dir(p(r, "/etc/d")));
        rec(
            &mut log,
            "rename back",
            std::fs::rename(p(r, "/etc/r"), p(r, "/etc/motd")),
        );
        for n in ["/etc/f", "/etc/d", "/etc/r", "/etc/motd"] {
            stat(&mut log, n);
        }
        log
    });
}

#[test]
fn cow_remove_files_and_directories() {
    scenario("remove", |r| {
        let mut log = Log::new();
        rec(
            &mut log,
            "unlink lower",
            std::fs::remove_file(p(r, "/etc/hosts")),
        );
        rec(
            &mut log,
            "unlink again",
            std::fs::remove_file(p(r, "/etc/hosts")),
        );
        rec(
            &mut log,
            "unlink whiteout-covered",
            std::fs::remove_file(p(r, "/gone")),
        );
        rec(&mut log, "unlink dir", std::fs::remove_file(p(r, "/data")));
        rec(
            &mut log,
            "rmdir file",
            std::fs::remove_dir(p(r, "/etc/passwd")),
        );
        rec(
            &mut log,
            "rmdir non-empty lower",
            std::fs::remove_dir(p(r, "/data")),
        );
        rec(
            &mut log,
            "unlink in sub",
            std::fs::remove_file(p(r, "/data/sub/deep")),
        );
        rec(
            &mut log,
            "rmdir emptied (whiteouts only)",
            std::fs::remove_dir(p(r, "/data/sub")),
        );
        rec(&mut log, "list after", list(&p(r, "/data")));
        rec(
            &mut log,
            "unlink in opaque",
            std::fs::remove_file(p(r, "/opq/new")),
        );
        rec(
            &mut log,
            "unlink hidden by opaque",
            std::fs::remove_file(p(r, "/opq/old")),
        );
        rec(
            &mut log,
            "rmdir empty lower",
            std::fs::remove_dir(p(r, "/empty")),
        );
        rec(
            &mut log,
            "unlink symlink",
            std::fs::remove_file(p(r, "/link")),
        );
        rec(
            &mut log,
            "new then unlink",
            std::fs::write(p(r, "/t"), "t").and_then(|()| std::fs::remove_file(p(r, "/t"))),
        );
        log
    });
}

#[test]
fn cow_mkdir_over_deleted_directory_is_opaque() {
    scenario("mkdir", |r| {
        let mut log = Log::new();
        rec(&mut log, "mkdir exists", std::fs::create_dir(p(r, "/etc")));
        rec(
            &mut log,
            "rm -r lower dir",
            std::fs::remove_dir_all(p(r, "/data")),
        );
        rec(&mut log, "mkdir again", std::fs::create_dir(p(r, "/data")));
        rec(&mut log, "list new dir", list(&p(r, "/data")));
        rec(
            &mut log,
            "mkdir nested new",
            std::fs::create_dir_all(p(r, "/x/y/z")),
        );
        rec(
            &mut log,
            "mkdir over whiteout",
            std::fs::create_dir(p(r, "/gone")),
        );
        rec(
            &mut log,
            "mkdir mode",
            std::fs::DirBuilder::new()
                .mode(0o711)
                .create(p(r, "/etc/m")),
        );
        log
    });
}

#[test]
fn cow_rename() {
    scenario("rename", |r| {
        let mut log = Log::new();
        rec(
            &mut log,
            "file",
            std::fs::rename(p(r, "/etc/hosts"), p(r, "/etc/hosts2")),
        );
        rec(
            &mut log,
            "over existing",
            std::fs::rename(p(r, "/etc/hosts2"), p(r, "/etc/passwd")),
        );
        rec(
            &mut log,
            "noreplace",
            renameat2(
                &p(r, "/etc/motd"),
                &p(r, "/etc/passwd"),
                libc::RENAME_NOREPLACE,
            ),
        );
        rec(
            &mut log,
            "exchange",
            renameat2(
                &p(r, "/etc/motd"),
                &p(r, "/bin/tool"),
                libc::RENAME_EXCHANGE,
            ),
        );
        rec(
            &mut log,
            "exchange missing",
            renameat2(&p(r, "/etc/motd"), &p(r, "/nope"), libc::RENAME_EXCHANGE),
        );
        rec(
            &mut log,
            "lower dir",
            std::fs::rename(p(r, "/data"), p(r, "/data2")),
        );
        rec(&mut log, "list moved dir", list(&p(r, "/data2/sub")));
        rec(
            &mut log,
            "read in moved dir",
            std::fs::read(p(r, "/data2/sub/deep")),
        );
        rec(
            &mut log,
            "dir into itself",
            std::fs::rename(p(r, "/data2"), p(r, "/data2/sub/x")),
        );
        rec(
            &mut log,
            "dir over non-empty dir",
            std::fs::rename(p(r, "/data2"), p(r, "/etc")),
        );
        rec(
            &mut log,
            "file over dir",
            std::fs::rename(p(r, "/etc/passwd"), p(r, "/empty")),
        );
        rec(
            &mut log,
            "dir over file",
            std::fs::rename(p(r, "/empty"), p(r, "/etc/passwd")),
        );
        rec(
            &mut log,
            "dir over empty dir",
            std::fs::rename(p(r, "/opq"), p(r, "/empty")),
        );
        rec(
            &mut log,
            "missing source",
            std::fs::rename(p(r, "/nope"), p(r, "/nope2")),
        );
        rec(
            &mut log,
            "new dir back to old name",
            std::fs::create_dir(p(r, "/data")),
        );
        log
    });
}

#[test]
fn cow_attributes_and_xattrs() {
    scenario("attrs", |r| {
        let mut log = Log::new();
        rec(
            &mut log,
            "chmod lower",
            std::fs::set_permissions(p(r, "/etc/hosts"), std::fs::Permissions::from_mode(0o600)),
        );
        rec(
            &mut log,
            "chown lower",
            std::os::unix::fs::lchown(p(r, "/data/a"), Some(7), Some(8)),
        );
        rec(
            &mut log,
            "chmod lower dir",
            std::fs::set_permissions(p(r, "/data/sub"), std::fs::Permissions::from_mode(0o711)),
        );
        rec(
            &mut log,
            "lchown symlink",
            std::os::unix::fs::lchown(p(r, "/link"), Some(3), Some(3)),
        );
        let t = [
            libc::timespec {
                tv_sec: 1000,
                tv_nsec: 5,
            },
            libc::timespec {
                tv_sec: 2000,
                tv_nsec: 7,
            },
        ];
        let c = CString::new(p(r, "/etc/passwd").as_os_str().as_bytes()).unwrap();
        // SAFETY: valid C string and two timespecs.
        let u = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), t.as_ptr(), 0) };
        rec(
            &mut log,
            "utimens lower",
            if u == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            },
        );
        rec(
            &mut log,
            "setxattr lower",
            common::overlay::set_xattr(&p(r, "/etc/motd"), b"user.new", b"1"),
        );
        rec(
            &mut log,
            "replace xattr",
            common::overlay::set_xattr(&p(r, "/etc/passwd"), b"user.k", b""),
        );
        rec(
            &mut log,
            "truncate via setattr",
            std::fs::OpenOptions::new()
                .write(true)
                .open(p(r, "/bin/tool"))
                .and_then(|f| f.set_len(2)),
        );
        rec(
            &mut log,
            "chmod keeps data",
            std::fs::read(p(r, "/etc/hosts")),
        );
        log
    });
}

#[test]
fn cow_links_and_special_files() {
    scenario("links", |r| {
        let mut log = Log::new();
        rec(
            &mut log,
            "hard link lower",
            std::fs::hard_link(p(r, "/etc/passwd"), p(r, "/etc/passwd.hl")),
        );
        rec(
            &mut log,
            "write through one name",
            std::fs::OpenOptions::new()
                .append(true)
                .open(p(r, "/etc/passwd.hl"))
                .and_then(|mut f| std::io::Write::write_all(&mut f, b"x\n")),
        );
        rec(
            &mut log,
            "seen through the other",
            std::fs::read(p(r, "/etc/passwd")),
        );
        rec(
            &mut log,
            "hard link to dir",
            std::fs::hard_link(p(r, "/etc"), p(r, "/etc2")),
        );
        rec(
            &mut log,
            "hard link over existing",
            std::fs::hard_link(p(r, "/etc/passwd"), p(r, "/etc/motd")),
        );
        rec(
            &mut log,
            "symlink",
            std::os::unix::fs::symlink("../etc/hosts", p(r, "/data/l")),
        );
        rec(
            &mut log,
            "symlink over whiteout",
            std::os::unix::fs::symlink("x", p(r, "/gone")),
        );
        rec(
            &mut log,
            "mkfifo",
            nix::unistd::mkfifo(
                &p(r, "/data/fifo"),
                nix::sys::stat::Mode::from_bits_truncate(0o640),
            )
            .map_err(std::io::Error::from),
        );
        rec(
            &mut log,
            "mknod char",
            nix::sys::stat::mknod(
                &p(r, "/etc/null"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o666),
                nix::sys::stat::makedev(1, 3),
            )
            .map_err(std::io::Error::from),
        );
        rec(
            &mut log,
            "readlink lower",
            std::fs::read_link(p(r, "/link")),
        );
        log
    });
}

/// Runs `sh -c script` as the unprivileged user `nobody` (65534).
fn as_nobody(script: &str) -> std::process::ExitStatus {
    std::process::Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .status()
        .expect("setpriv")
}

#[test]
fn cow_write_by_user_drops_setuid_as_the_kernel_does() {
    const SPEC: &str = "L0: file /s 4757 'x'; file /g 2777 'y'; file /keep 4757 'z'\n";
    let sb = Sandbox::new();
    let def = ImageDef::from_spec(SPEC);
    let image = sb.image(SPEC);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let script = |m: &Path| {
        format!(
            "echo more >> {0}/s && echo more >> {0}/g && : > {0}/g",
            m.display()
        )
    };
    let modes = |m: &Path| -> Vec<u32> {
        ["s", "g", "keep"]
            .iter()
            .map(|n| std::fs::metadata(m.join(n)).unwrap().permissions().mode() & 0o7777)
            .collect()
    };
    let Some(k) = kernel_overlay(&lowers, sb.dir.path(), KERNEL_OPTS) else {
        return;
    };
    assert!(as_nobody(&script(&k.mnt)).success());
    let want = modes(&k.mnt);
    k.unmount();
    // As root, the mount lets other users in by default (allow_other).
    let Some(m) = common::harness::mount_with_upper(&image, &sb.cache(), &sb.path("r-upper"))
    else {
        return;
    };
    assert!(as_nobody(&script(m.path())).success());
    let got = modes(m.path());
    m.unmount();
    assert_eq!(got, want, "set-id bits after writes by a user (s, g, keep)");
    assert_eq!(want, [0o757, 0o777, 0o4757]);
}
