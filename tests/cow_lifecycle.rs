//! The life of a writable mount's upper layer: an ephemeral upper ends with its mount, lower
//! hard links stay one file through copy-up and remounts, and an unprivileged user's upper
//! uses the fallback format that `rimgfs diff` reads.
#![allow(missing_docs)]

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::harness::{self, is_mounted, poll_until};
use common::listing::{Listing, list_xattrs};
use common::overlay::{OverlayMount, extract_layers};
use common::{ImageDef, MountGuard, MountOpts, Output, Sandbox, require};

fn append(p: &Path, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(p).unwrap();
    f.write_all(data).unwrap();
}

fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

#[test]
fn cow_ephemeral_upper_is_removed_at_unmount() {
    let sb = Sandbox::new();
    let image = sb
        .image("L0: dir /etc; file /etc/hosts 0644 'hosts\\n'; dir /var; file /var/log 0644 'log'");
    let cache = sb.cache();
    let cache_s = cache.to_str().unwrap();
    // The image as it is, from a read-only mount.
    let Some(ro) = MountGuard::mount(&image, &["--cache-dir", cache_s, "--read-only"]) else {
        return;
    };
    let pristine = Listing::walk(ro.path());
    ro.unmount();

    let eph = cache.join("ephemeral");
    let Some(m) = MountGuard::mount(&image, &["--cache-dir", cache_s]) else {
        return;
    };
    let made = entries(&eph);
    assert_eq!(made.len(), 1, "one ephemeral upper while mounted: {made:?}");
    std::fs::write(m.at("/etc/new"), "new").unwrap();
    append(&m.at("/etc/hosts"), b"more\n");
    std::fs::remove_file(m.at("/var/log")).unwrap();
    assert_eq!(std::fs::read(m.at("/etc/hosts")).unwrap(), b"hosts\nmore\n");
    // The changes went to the ephemeral upper.
    let upper = eph.join(&made[0]).join("upper");
    assert_eq!(std::fs::read(upper.join("etc/new")).unwrap(), b"new");
    m.unmount();
    assert!(
        poll_until(harness::EXIT_TIMEOUT, || entries(&eph).is_empty()),
        "ephemeral upper left behind: {:?}",
        entries(&eph)
    );

    let Some(m) = MountGuard::mount(&image, &["--cache-dir", cache_s]) else {
        return;
    };
    Listing::walk(m.path()).assert_same(&pristine, "a new default mount");
    m.unmount();
    assert!(entries(&eph).is_empty(), "{:?}", entries(&eph));
}

const LINKED: &str = "L0: dir /d; file /d/a 0644 'orig\\n'; hardlink /d/b /d/a; file /d/c 0644 'c'";

/// Content and link count through both names, and that they are one inode.
#[track_caller]
fn check_linked(root: &Path, want: &[u8], what: &str) {
    let (a, b) = (root.join("d/a"), root.join("d/b"));
    assert_eq!(std::fs::read(&a).unwrap(), want, "{what}: d/a");
    assert_eq!(std::fs::read(&b).unwrap(), want, "{what}: d/b");
    let (ma, mb) = (
        std::fs::symlink_metadata(&a).unwrap(),
        std::fs::symlink_metadata(&b).unwrap(),
    );
    assert_eq!((ma.nlink(), mb.nlink()), (2, 2), "{what}: nlink");
    assert_eq!(ma.ino(), mb.ino(), "{what}: one inode");
    assert_eq!(ma.len(), want.len() as u64, "{what}: size");
}

#[test]
fn cow_lower_hard_links_stay_one_file() {
    let sb = Sandbox::new();
    let image = sb.image(LINKED);
    let cache = sb.cache();
    let upper = sb.path("upper");
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &upper) else {
        return;
    };
    check_linked(m.path(), b"orig\n", "before");
    append(&m.at("/d/a"), b"more\n");
    check_linked(m.path(), b"orig\nmore\n", "after appending through d/a");
    m.unmount();
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &upper) else {
        return;
    };
    check_linked(m.path(), b"orig\nmore\n", "remounted");
    append(&m.at("/d/b"), b"again\n");
    check_linked(
        m.path(),
        b"orig\nmore\nagain\n",
        "after appending through d/b",
    );
    m.unmount();

    // Kernel overlayfs over rimgfs's upper shows both names with the new content.
    if !nix::unistd::geteuid().is_root() {
        harness::skip("kernel overlayfs needs root");
        return;
    }
    let lowers = extract_layers(&ImageDef::from_spec(LINKED).layers, &sb.path("lower"));
    let work = sb.path("k-work");
    std::fs::create_dir_all(&work).unwrap();
    let Some(k) = require(
        OverlayMount::mount(
            &lowers,
            Some((&upper, &work)),
            "redirect_dir=on,metacopy=on",
            &sb.path("k-mnt"),
        )
        .ok(),
        "kernel overlayfs cannot be mounted here",
    ) else {
        return;
    };
    let want = b"orig\nmore\nagain\n";
    let got = (
        std::fs::read(k.mnt.join("d/a")).unwrap(),
        std::fs::read(k.mnt.join("d/b")).unwrap(),
    );
    k.unmount();
    assert_eq!(
        (got.0.as_slice(), got.1.as_slice()),
        (&want[..], &want[..]),
        "kernel overlayfs over the upper"
    );
}

/// Runs a shell script as `ids` with `args` as its positional parameters.
fn as_user_sh(ids: (u32, u32), script: &str, args: &[&Path]) -> Output {
    let mut full: Vec<&OsStr> = vec![OsStr::new("-c"), OsStr::new(script), OsStr::new("sh")];
    full.extend(args.iter().map(|p| p.as_os_str()));
    harness::as_user(ids, "sh", &full)
}

/// The unprivileged test user, when this machine lets one mount FUSE and the test may
/// create it (as root); `None` after reporting why not.
fn unprivileged_user() -> Option<(u32, u32)> {
    if !harness::require_fuse() {
        return None;
    }
    let world = std::fs::metadata("/dev/fuse")
        .is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o006 == 0o006);
    if !world {
        harness::skip("/dev/fuse is not 0666, so no unprivileged user can mount FUSE here");
        return None;
    }
    if !nix::unistd::geteuid().is_root() {
        harness::skip("creating the test user needs root");
        return None;
    }
    Some(harness::test_user().expect("could not create the unprivileged test user"))
}

/// Mounts `image` writable as `ids`, with its cache in `XDG_CACHE_HOME` and the upper
/// directory `state/upper` of the sandbox, which the user owns.
fn mount_as_user(sb: &Sandbox, image: &Path, ids: (u32, u32)) -> Option<(MountGuard, PathBuf)> {
    let (u, g) = ids;
    let xdg = sb.path("xdg");
    let upper = sb.path("state/upper");
    std::fs::create_dir_all(&xdg).unwrap();
    std::fs::create_dir_all(sb.path("state")).unwrap();
    for d in [sb.dir.path(), &xdg, image, &sb.path("state")] {
        nix::unistd::chown(d, Some(u.into()), Some(g.into())).unwrap();
    }
    let mut opts = MountOpts::new(image, &sb.cache());
    opts.cache_dir = None;
    opts.env = vec![("XDG_CACHE_HOME".into(), xdg.clone().into())];
    opts.wrapper = [
        "setpriv",
        &format!("--reuid={u}"),
        &format!("--regid={g}"),
        "--clear-groups",
    ]
    .iter()
    .map(Into::into)
    .collect();
    opts.owner = Some(ids);
    opts.extra = vec!["--upper".into(), upper.clone().into()];
    Some((MountGuard::start(opts)?, upper))
}

/// Unmounts a mount made by `ids` the way its user would, then cleans up.
fn unmount_as_user(m: MountGuard, ids: (u32, u32)) {
    let out = as_user_sh(
        ids,
        "exec \"$1\" umount \"$2\"",
        &[Path::new(harness::bin()), &m.mnt],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(poll_until(harness::UNMOUNT_TIMEOUT, || !is_mounted(&m.mnt)));
    m.unmount();
}

#[test]
fn cow_unprivileged_writable_mount_uses_fallback_format() {
    let Some(ids) = unprivileged_user() else {
        return;
    };
    let (u, g) = ids;
    let spec = format!(
        "L0: dir /etc; file /etc/hosts 0644 'hosts'\n\
         L0: dir /home; dir /home/user 0755 uid={u} gid={g}\n\
         L0: file /home/user/keep 0644 uid={u} gid={g} 'keep'\n\
         L0: file /home/user/edit 0644 uid={u} gid={g} 'edit'\n\
         L0: file /home/user/gone 0644 uid={u} gid={g} 'gone'\n\
         L0: file /home/user/mode 0644 uid={u} gid={g} 'mode'\n\
         L0: dir /home/user/old 0755 uid={u} gid={g}; file /home/user/old/x 0644 uid={u} gid={g} 'x'\n"
    );
    let sb = Sandbox::new();
    let image = sb.image(&spec);
    let Some((m, upper)) = mount_as_user(&sb, &image, ids) else {
        return;
    };
    let h = m.at("/home/user");
    let out = as_user_sh(
        ids,
        "set -e; cd \"$1\"; echo new > new; echo more >> edit; rm gone; chmod 600 mode; \
         mkdir dir; echo inner > dir/inner; rm -r old; cat keep edit",
        &[&h],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    // Neither file ends with a newline in the image: `more` is appended right after `edit`.
    assert_eq!(out.stdout, "keepeditmore\n");
    // The image's permissions still hold: the user cannot change root's files.
    let out = as_user_sh(ids, "echo x >> \"$1\"", &[&m.at("/etc/hosts")]);
    assert_ne!(out.code, Some(0), "{out:?}");
    unmount_as_user(m, ids);

    // The fallback format: `.wh.` files, `user.overlay.*` attributes, no device whiteouts.
    let uh = upper.join("home/user");
    for wh in [".wh.gone", ".wh.old"] {
        let md = std::fs::symlink_metadata(uh.join(wh))
            .unwrap_or_else(|e| panic!("{wh}: {e}; upper has {:?}", entries(&uh)));
        assert!(md.is_file(), "{wh}: {md:?}");
    }
    assert!(
        std::fs::symlink_metadata(uh.join("gone")).is_err(),
        "{:?}",
        entries(&uh)
    );
    let x = list_xattrs(&uh.join("mode")).unwrap();
    assert!(
        x.iter().any(|k| k.starts_with(b"user.overlay.")),
        "mode: {:?}",
        x.iter()
            .map(|k| String::from_utf8_lossy(k))
            .collect::<Vec<_>>()
    );
    assert_eq!(std::fs::read(uh.join("edit")).unwrap(), b"editmore\n");

    let out = harness::diff(&image, &upper, &sb.cache()).success();
    for line in [
        "A /home/user/new",
        "C /home/user/edit",
        "D /home/user/gone",
        "C /home/user/mode",
        "A /home/user/dir",
        "A /home/user/dir/inner",
        "D /home/user/old",
    ] {
        assert!(
            out.stdout.lines().any(|l| l == line),
            "diff lacks {line:?}:\n{}",
            out.stdout
        );
    }
    assert!(
        !out.stdout.contains("keep") && !out.stdout.contains("/etc"),
        "{}",
        out.stdout
    );
}

/// Tries to make entries under names the upper format reserves; exits 0 when every try
/// fails with EINVAL.
const RESERVED_NAMES: &str = "\
import errno, os, sys
for op in (lambda: open('.wh.x', 'x'), lambda: os.mkdir('.wh..wh..opq'),
           lambda: os.rename('new', '.wh.new'), lambda: os.symlink('t', '.wh.l')):
    try:
        op()
        sys.exit(9)
    except OSError as e:
        if e.errno != errno.EINVAL:
            sys.exit(f'{e}')
";

/// Every entry under `root` as `ids` sees it: type, mode, owner, size, links, mtime, link
/// target, and each file's content hash, with paths relative to `root`.
fn tree_as(ids: (u32, u32), root: &Path) -> String {
    let out = as_user_sh(
        ids,
        "set -e; cd \"$1\"; find . -printf '%p %y %m %U:%G %s %n %T@ %l\\n' | sort; \
         find . -type f -exec sha256sum {} + | sort",
        &[root],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    out.stdout
}

/// An upper directory written by an unprivileged daemon (`.wh.NAME` whiteouts,
/// `user.overlay.*` attributes, owners recorded in `user.containers.override_stat`) reads the
/// same everywhere: a root daemon mounting it shows exactly what the daemon that wrote it
/// showed, and `rimgfs diff` lists the changes that tree has.
#[test]
fn cow_unprivileged_upper_reads_the_same_in_a_root_mount_and_in_diff() {
    let Some(ids) = unprivileged_user() else {
        return;
    };
    let (u, g) = ids;
    let own = format!("uid={u} gid={g}");
    let spec = format!(
        "L0: dir /etc; file /etc/hosts 0644 'hosts'\n\
         L0: dir /home; dir /home/user 0755 {own}; file /home/user/keep 0644 {own} 'keep'\n\
         L0: file /home/user/gone 0644 {own} 'gone'; file /home/user/big 0644 {own} 'data'\n\
         L0: dir /home/user/old 0755 {own}; file /home/user/old/x 0644 {own} 'x'\n\
         L0: dir /home/user/from 0755 {own}; file /home/user/from/m 0644 {own} 'm'\n"
    );
    let sb = Sandbox::new();
    let image = sb.image(&spec);
    let Some((m, upper)) = mount_as_user(&sb, &image, ids) else {
        return;
    };
    // A whiteout, a directory deleted and made again (opaque), a renamed lower directory
    // (redirect), a metadata-only copy-up (chmod), a new file; /home, root's, is copied up
    // with an owner the daemon may not set.
    let out = as_user_sh(
        ids,
        "set -e; cd \"$1\"; rm gone; rm -r old; mkdir old; echo y > old/y; mv from to; \
         chmod 600 big; echo new > new",
        &[&m.at("/home/user")],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let written = tree_as(ids, m.path());
    unmount_as_user(m, ids);

    // The upper is in the fallback format, or this test would show nothing.
    let uh = upper.join("home/user");
    assert!(uh.join(".wh.gone").is_file(), "{:?}", entries(&uh));
    for (path, attr) in [
        ("old", "user.overlay.opaque"),
        ("to", "user.overlay.redirect"),
        ("big", "user.overlay.metacopy"),
    ] {
        let x = list_xattrs(&uh.join(path)).unwrap();
        assert!(x.iter().any(|k| k == attr.as_bytes()), "{path}: no {attr}");
    }
    let x = list_xattrs(&upper.join("home")).unwrap();
    assert!(x.iter().any(|k| k == b"user.containers.override_stat"));

    let Some(m) = harness::mount_with_upper(&image, &sb.cache(), &upper) else {
        return;
    };
    let as_root = tree_as((0, 0), m.path());
    assert_eq!(
        as_root, written,
        "a root mount of the upper shows another tree than the daemon that wrote it"
    );
    for line in [
        "./home d 755 0:0 ",
        "./home/user/big f 600",
        "./home/user/to/m f 644",
        "./home/user/old/y f 644",
    ] {
        assert!(
            as_root.lines().any(|l| l.starts_with(line)),
            "no {line:?}:\n{as_root}"
        );
    }
    check_diff(
        &sb,
        &image,
        &upper,
        &as_root,
        &[
            "C /home",
            "C /home/user",
            "C /home/user/big",
            "D /home/user/from",
            "D /home/user/gone",
            "A /home/user/new",
            "C /home/user/old",
            "D /home/user/old/x",
            "A /home/user/old/y",
            "A /home/user/to",
            "A /home/user/to/m",
        ],
    );

    // The root daemon writes on in its own format: over the other's whiteouts, and deleting
    // beside them; another root mount shows what it left. Names the format reserves cannot
    // be made (they would read back as whiteouts or markers), as in fuse-overlayfs.
    let out = as_user_sh(
        (0, 0),
        "set -e; cd \"$1\"; echo again > gone; mkdir from; rm keep; mv to moved; \
         exec python3 -c \"$2\"",
        &[&m.at("/home/user"), Path::new(RESERVED_NAMES)],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    let changed = tree_as((0, 0), m.path());
    m.unmount();
    let Some(m) = harness::mount_with_upper(&image, &sb.cache(), &upper) else {
        return;
    };
    let again = tree_as((0, 0), m.path());
    m.unmount();
    assert_eq!(again, changed, "remounted after writes in both formats");
    check_diff(
        &sb,
        &image,
        &upper,
        &again,
        &[
            "C /home",
            "C /home/user",
            "C /home/user/big",
            "C /home/user/from",
            "D /home/user/from/m",
            "C /home/user/gone",
            "D /home/user/keep",
            "A /home/user/moved",
            "A /home/user/moved/m",
            "A /home/user/new",
            "C /home/user/old",
            "D /home/user/old/x",
            "A /home/user/old/y",
        ],
    );
}

/// `rimgfs diff` of `upper` lists `want`, and agrees with `tree` (a [`tree_as`] of the
/// mounted upper): what it deletes is not there, what it adds or changes is.
#[track_caller]
fn check_diff(sb: &Sandbox, image: &Path, upper: &Path, tree: &str, want: &[&str]) {
    let out = harness::diff(image, upper, &sb.cache()).success();
    let diff: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(diff, want);
    for c in &diff {
        let (kind, path) = c.split_at(2);
        let shown = tree.lines().any(|l| l.starts_with(&format!(".{path} ")));
        assert_eq!(shown, kind != "D ", "{c}:\n{tree}");
    }
}
