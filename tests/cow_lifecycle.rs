//! The life of a writable mount's upper layer: an ephemeral upper ends with its mount, lower
//! hard links stay one file through copy-up and remounts, and an unprivileged user's upper
//! uses the fallback format that `rimgfs diff` reads.
#![allow(missing_docs)]

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::harness::{self, is_mounted, poll_until};
use common::listing::{Listing, list_xattrs};
use common::overlay::{OverlayMount, extract_layers};
use common::{ImageDef, MountGuard, MountOpts, Output, Sandbox, require, rimgfs};

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

#[test]
fn cow_unprivileged_writable_mount_uses_fallback_format() {
    if !harness::require_fuse() {
        return;
    }
    let world = std::fs::metadata("/dev/fuse")
        .is_ok_and(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o006 == 0o006);
    if !world {
        harness::skip("/dev/fuse is not 0666, so no unprivileged user can mount FUSE here");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        harness::skip("creating the test user needs root");
        return;
    }
    let ids = harness::test_user().expect("could not create the unprivileged test user");
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
    let xdg = sb.path("xdg");
    let upper = sb.path("state/upper");
    std::fs::create_dir_all(&xdg).unwrap();
    std::fs::create_dir_all(sb.path("state")).unwrap();
    for d in [sb.dir.path(), &xdg, &image, &sb.path("state")] {
        nix::unistd::chown(d, Some(u.into()), Some(g.into())).unwrap();
    }
    let mut opts = MountOpts::new(&image, &sb.cache());
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
    let Some(m) = MountGuard::start(opts) else {
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
    let out = as_user_sh(
        ids,
        "exec \"$1\" umount \"$2\"",
        &[Path::new(harness::bin()), &m.mnt],
    );
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(poll_until(harness::UNMOUNT_TIMEOUT, || !is_mounted(&m.mnt)));
    m.unmount();

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

    let out = rimgfs(&[
        "diff",
        image.to_str().unwrap(),
        "--upper",
        upper.to_str().unwrap(),
        "--cache-dir",
        sb.cache().to_str().unwrap(),
    ])
    .success();
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
