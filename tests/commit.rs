//! `rimgfs diff` and `rimgfs commit` on real overlayfs upper directories.
//!
//! The image's layers are extracted into lower directories and mounted with kernel overlayfs
//! (`redirect_dir=on,metacopy=on`) and an empty upper. A script of changes is made through that
//! mount; its merged view is recorded with `../shared/tools/treesum.py` and unmounted. Then
//! `diff` must list exactly the expected changes, and the image `commit` writes, in each
//! format, must mount (with rimgfs) as exactly the recorded view, and be accepted by skopeo and
//! umoci. The fallback format (`.wh.` files, `user.overlay.*`) is tested on a hand-built upper.
#![allow(missing_docs)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::overlay::{OverlayMount, extract_layers, set_owner_time, set_xattr};
use common::spec::Spec;
use common::{ImageDef, MountGuard, Sandbox, require, rimgfs, run_ok};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};

/// Three layers: files, hard links, a symlink, xattrs, devices, and in the upper layers a
/// whiteout and an opaque directory. Every layer names its directories, as Docker's do, so
/// the extracted lower directories carry the same attributes as rimgfs's merged tree.
const SPEC: &str = r"
L0: dir /etc; file /etc/hosts 'hosts\n'; file /etc/passwd 'root\n'
L0: dir /etc/conf.d; file /etc/conf.d/a 'a'; file /etc/conf.d/b 'b'
L0: dir /usr; dir /usr/bin; file /usr/bin/tool 0755 'tool' xattr=user.kind=bin
L0: hardlink /usr/bin/tool2 /usr/bin/tool; symlink /usr/bin/sh tool
L0: dir /var; dir /var/lib; dir /var/lib/app; file /var/lib/app/db 0600 'db' uid=1000 gid=1000
L0: dir /var/lib/app/cache; file /var/lib/app/cache/c1 'c1'
L0: dir /opt; dir /opt/old 0750 uid=5 gid=6; file /opt/old/x 'x' xattr=user.x=1
L0: dir /opt/old/sub; file /opt/old/sub/y 'y'; symlink /opt/old/ly x
L0: dir /srv; file /srv/s1 's1'; dir /srv/d; file /srv/d/s2 's2'
L0: dir /dev; char /dev/null 1 3 0666; fifo /dev/pipe
L1: dir /etc; file /etc/motd 'motd'; dir /etc/conf.d; whiteout /etc/conf.d/b
L1: dir /data xattr=user.tag=d; file /data/big gen=300000; file /data/meta 'meta'
L1: dir /srv; opaque /srv; file /srv/s3 's3'
";

/// What `rimgfs diff` must print after [`apply_changes`].
const EXPECTED_DIFF: &str = "\
C /data
C /data/big
C /data/meta
C /dev
A /dev/loop9
A /dev/zero2
C /etc
C /etc/conf.d
D /etc/conf.d/a
C /etc/hosts
A /etc/link
A /etc/new.conf
A /etc/new.link
C /etc/passwd
C /opt
A /opt/new
A /opt/new/ly
A /opt/new/sub
A /opt/new/sub/y
A /opt/new/x
D /opt/old
A /run
A /run/fifo
C /srv
A /srv/fresh
D /srv/s3
C /usr
C /var
C /var/lib
C /var/lib/app
D /var/lib/app/cache
C /var/lib/app/db
";

/// The scripted changes, made through the overlay mount `m`.
fn apply_changes(m: &Path) {
    let p = |rel: &str| m.join(rel);
    fs::write(p("etc/new.conf"), "new\n").unwrap();
    fs::write(p("etc/hosts"), "changed hosts\n").unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(p("etc/passwd"))
        .unwrap();
    f.write_all(b"user\n").unwrap();
    drop(f);
    set_xattr(&p("etc/hosts"), b"user.new", b"v").unwrap();
    set_xattr(&p("etc"), b"user.dir", b"1").unwrap();
    fs::remove_file(p("etc/conf.d/a")).unwrap();
    fs::hard_link(p("etc/new.conf"), p("etc/new.link")).unwrap();
    std::os::unix::fs::symlink("hosts", p("etc/link")).unwrap();
    fs::remove_dir_all(p("var/lib/app/cache")).unwrap();
    // Removed and made again: overlayfs marks the new directory opaque.
    fs::remove_dir_all(p("srv")).unwrap();
    fs::create_dir(p("srv")).unwrap();
    fs::write(p("srv/fresh"), "fresh").unwrap();
    // A renamed lower directory: a redirect (redirect_dir=on).
    fs::rename(p("opt/old"), p("opt/new")).unwrap();
    // Metadata-only changes: metacopy copy-ups (metacopy=on).
    fs::set_permissions(p("data/big"), fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(&p("data/meta"), Some(7.into()), Some(8.into())).unwrap();
    set_owner_time(&p("var/lib/app/db"), 2000, 3000, (1_234_567_890, 0));
    fs::set_permissions(p("usr"), fs::Permissions::from_mode(0o4750)).unwrap();
    fs::create_dir(p("run")).unwrap();
    mknod(
        &p("run/fifo"),
        SFlag::S_IFIFO,
        Mode::from_bits_truncate(0o640),
        0,
    )
    .unwrap();
    mknod(
        &p("dev/zero2"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 5),
    )
    .unwrap();
    mknod(
        &p("dev/loop9"),
        SFlag::S_IFBLK,
        Mode::from_bits_truncate(0o660),
        makedev(7, 9),
    )
    .unwrap();
}

/// An image, an upper made through kernel overlayfs, and the merged view's treesum.
struct Scene {
    sb: Sandbox,
    image: PathBuf,
    upper: PathBuf,
    merged: PathBuf,
}

fn overlay_scene() -> Option<Scene> {
    if !nix::unistd::geteuid().is_root() {
        common::harness::skip("kernel overlayfs needs root");
        return None;
    }
    let sb = Sandbox::new();
    let tars = Spec::parse(SPEC).layer_tars();
    let image = sb.write(
        "image.tar",
        common::Shape::DockerLegacy,
        &[ImageDef::from_layers(tars.clone())],
        common::Codec::None,
    );
    let lowers = extract_layers(&tars, &sb.path("layers"));
    let (upper, work) = (sb.path("upper"), sb.path("work"));
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    let mnt = sb.path("merged");
    let ov = match OverlayMount::mount(
        &lowers,
        Some((&upper, &work)),
        "redirect_dir=on,metacopy=on",
        &mnt,
    ) {
        Ok(m) => m,
        Err(e) => {
            common::harness::skip(&e);
            return None;
        }
    };
    // The lower view must be the image as rimgfs merges it, or nothing below means anything.
    // Two things differ by design: the merged root is the (new) upper root, and overlayfs
    // reports a merged directory's link count as 1.
    let comparable = |mut l: common::Listing| {
        l.0.remove(&b"/"[..]);
        l.0.values_mut()
            .filter(|i| i.kind == 'd')
            .for_each(|i| i.nlink = 0);
        l
    };
    let opened = common::open_path(&image, &sb.cache()).unwrap();
    comparable(common::Listing::walk(&mnt))
        .assert_same(&comparable(opened.listing()), "overlayfs lower view");
    apply_changes(&mnt);
    let merged = sb.path("merged.treesum");
    run_ok(
        "python3",
        &[
            common::treesum().to_str().unwrap(),
            mnt.to_str().unwrap(),
            "-o",
            merged.to_str().unwrap(),
        ],
    );
    ov.unmount();
    Some(Scene {
        sb,
        image,
        upper,
        merged,
    })
}

fn base_args<'a>(s: &'a Scene, cache: &'a str) -> Vec<&'a str> {
    vec![
        s.image.to_str().unwrap(),
        "--upper",
        s.upper.to_str().unwrap(),
        "--cache-dir",
        cache,
    ]
}

#[test]
fn commit_of_kernel_overlay_upper_mounts_as_the_merged_view() {
    let Some(s) = overlay_scene() else {
        return;
    };
    let cache = s.sb.cache().display().to_string();

    // The upper really uses the formats under test.
    let ls = |rel: &str| common::listing::list_xattrs(&s.upper.join(rel)).unwrap();
    assert!(
        ls("opt/new")
            .iter()
            .any(|k| k == b"trusted.overlay.redirect")
    );
    assert!(
        ls("data/big")
            .iter()
            .any(|k| k == b"trusted.overlay.metacopy")
    );
    assert!(ls("srv").iter().any(|k| k == b"trusted.overlay.opaque"));

    let mut args = vec!["diff"];
    args.extend(base_args(&s, &cache));
    let out = rimgfs(&args).success();
    assert_eq!(out.stdout, EXPECTED_DIFF);
    args.push("--json");
    let out = rimgfs(&args).success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let from_json: String = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "{} {}\n",
                c["kind"].as_str().unwrap(),
                c["path"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(from_json, EXPECTED_DIFF);

    for (format, name, transport) in [
        ("docker-archive", "out-docker.tar", "docker-archive:"),
        ("oci-archive", "out-oci.tar", "oci-archive:"),
        ("oci", "out-oci", "oci:"),
    ] {
        let out_path = s.sb.path(name);
        let mut args = vec!["commit"];
        args.extend(base_args(&s, &cache));
        let out_str = out_path.display().to_string();
        args.extend([
            "-o",
            &out_str,
            "--format",
            format,
            "--tag",
            "example.com/app:v2",
            "--message",
            "scripted changes",
        ]);
        rimgfs(&args).success();
        // Nothing is left beside the output.
        let stray: Vec<_> = fs::read_dir(s.sb.dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp."))
            .collect();
        assert!(stray.is_empty(), "{format}: left {stray:?}");

        let arg = format!("{transport}{out_str}");
        let inspect = rimgfs(&["inspect", "--json", &arg, "--cache-dir", &cache]).success();
        let v: serde_json::Value = serde_json::from_str(&inspect.stdout).unwrap();
        let text = inspect.stdout.clone();
        assert!(
            text.contains("rimgfs commit") && text.contains("scripted changes"),
            "{v}"
        );

        let Some(m) = MountGuard::mount(&arg, &["--cache-dir", &cache]) else {
            return;
        };
        if let Err(d) = common::treesum_compare(&s.merged, m.path(), &[]) {
            panic!("{format}: the committed image differs from the overlay's merged view:\n{d}");
        }
        m.unmount();

        if require(
            common::engines::have(&["skopeo"]).then_some(()),
            "skopeo not installed",
        )
        .is_some()
        {
            let skopeo_ref = match format {
                "oci" => format!("oci:{out_str}:example.com/app:v2"),
                _ => arg.clone(),
            };
            let o = run_ok("skopeo", &["inspect", "--raw", &skopeo_ref]);
            // For a docker-archive skopeo shows a manifest it makes up in Docker's types.
            if format != "docker-archive" {
                let raw: serde_json::Value = serde_json::from_str(&o.stdout).unwrap();
                assert_eq!(
                    raw["layers"][2]["mediaType"], "application/vnd.oci.image.layer.v1.tar",
                    "{raw}"
                );
            }
            run_ok("skopeo", &["inspect", &skopeo_ref]);
        }
        if format == "oci"
            && require(
                common::engines::have(&["umoci"]).then_some(()),
                "umoci not installed",
            )
            .is_some()
        {
            let bundle = s.sb.path("bundle");
            let image_ref = format!("{out_str}:example.com/app:v2");
            run_ok(
                "umoci",
                &["unpack", "--image", &image_ref, bundle.to_str().unwrap()],
            );
            if let Err(d) = common::treesum_compare(&s.merged, &bundle.join("rootfs"), &[]) {
                panic!("umoci unpack of the committed image differs:\n{d}");
            }
        }
    }
}

/// A hand-built upper in the fallback format: `.wh.NAME` files, `.wh..wh..opq`, and
/// `user.overlay.*` attributes.
#[test]
fn commit_of_fallback_format_upper() {
    let sb = Sandbox::new();
    let image = sb.image(SPEC);
    let cache = sb.cache().display().to_string();
    let u = sb.path("upper");
    let p = |rel: &str| u.join(rel);
    for d in ["etc", "srv", "var/lib/app", "opt/moved", "data"] {
        fs::create_dir_all(p(d)).unwrap();
    }
    fs::write(p("etc/.wh.hosts"), "").unwrap();
    fs::write(p("etc/added"), "added").unwrap();
    set_xattr(&p("srv"), b"user.overlay.opaque", b"y").unwrap();
    fs::write(p("srv/n"), "n").unwrap();
    fs::write(p("var/lib/app/.wh..wh..opq"), "").unwrap();
    fs::write(p("opt/.wh.old"), "").unwrap();
    set_xattr(&p("opt/moved"), b"user.overlay.redirect", b"/opt/old").unwrap();
    fs::write(p("data/big"), "").unwrap();
    fs::set_permissions(p("data/big"), fs::Permissions::from_mode(0o600)).unwrap();
    set_xattr(&p("data/big"), b"user.overlay.metacopy", b"").unwrap();
    set_xattr(&p("data/big"), b"user.other", b"kept").unwrap();

    let out = rimgfs(&[
        "diff",
        image.to_str().unwrap(),
        "--upper",
        u.to_str().unwrap(),
        "--cache-dir",
        &cache,
    ])
    .success();
    let want = "\
C /data
C /data/big
C /etc
A /etc/added
D /etc/hosts
C /opt
A /opt/moved
A /opt/moved/ly
A /opt/moved/sub
A /opt/moved/sub/y
A /opt/moved/x
D /opt/old
C /srv
A /srv/n
D /srv/s3
C /var
C /var/lib
C /var/lib/app
D /var/lib/app/cache
D /var/lib/app/db
";
    assert_eq!(out.stdout, want);

    let out_dir = sb.path("out");
    rimgfs(&[
        "commit",
        image.to_str().unwrap(),
        "--upper",
        u.to_str().unwrap(),
        "--cache-dir",
        &cache,
        "-o",
        out_dir.to_str().unwrap(),
        "--format",
        "oci",
        "--tag",
        "t",
    ])
    .success();
    let before = common::open_path(&image, &sb.cache()).unwrap();
    let after = common::open_arg(
        &format!("oci:{}:t", out_dir.display()),
        &Default::default(),
        &sb.cache(),
        None,
    )
    .unwrap();
    assert!(after.node("/etc/hosts").is_none());
    assert_eq!(after.content("/etc/added"), b"added");
    assert_eq!(after.names("/srv"), ["n"]);
    assert!(after.names("/var/lib/app").is_empty());
    assert_eq!(after.names("/opt"), ["moved"]);
    assert_eq!(after.content("/opt/moved/x"), b"x");
    assert_eq!(after.content("/opt/moved/sub/y"), b"y");
    let moved = after.get("/opt/moved");
    assert_eq!(moved.meta.mode & 0o7777, 0o755, "the upper's attributes");
    assert_eq!(after.get("/opt/moved/x").xattr(b"user.x"), Some(&b"1"[..]));
    let big = after.get("/data/big");
    assert_eq!(big.meta.mode & 0o7777, 0o600);
    assert_eq!(after.content("/data/big"), before.content("/data/big"));
    assert_eq!(big.xattr(b"user.other"), Some(&b"kept"[..]));
    assert!(
        big.xattrs
            .iter()
            .all(|(k, _)| !k.starts_with(b"user.overlay."))
    );
    assert!(
        after.listing().paths().iter().all(|p| !p.contains(".wh.")),
        "{:?}",
        after.listing().paths()
    );
    // Everything the upper does not touch is the image's.
    assert_eq!(after.content("/usr/bin/tool2"), b"tool");
    assert_eq!(after.content("/etc/passwd"), b"root\n");
}

#[test]
fn diff_errors_name_the_upper() {
    let sb = Sandbox::new();
    let image = sb.image(SPEC);
    let missing = sb.path("no-such-upper");
    let out = common::harness::diff(&image, &missing, &sb.cache());
    assert_eq!(out.code, Some(1));
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("no-such-upper"), "{}", out.stderr);
    // A metacopy file with no lower data is refused, naming it.
    let u = sb.path("upper");
    fs::create_dir(&u).unwrap();
    fs::write(u.join("orphan"), "").unwrap();
    set_xattr(&u.join("orphan"), b"user.overlay.metacopy", b"").unwrap();
    let out = rimgfs(&[
        "commit",
        image.to_str().unwrap(),
        "--upper",
        u.to_str().unwrap(),
        "--cache-dir",
        sb.cache().to_str().unwrap(),
        "-o",
        sb.path("out.tar").to_str().unwrap(),
    ]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("orphan: metadata-only copy"),
        "{}",
        out.stderr
    );
    assert!(!sb.path("out.tar").exists());
}
