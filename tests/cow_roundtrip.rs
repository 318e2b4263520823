//! Writable mount → `rimgfs diff` / `rimgfs commit` → the committed image shows exactly what
//! the mount showed.
//!
//! An image (built in code, and one built by `podman build` around the host's static busybox)
//! is mounted writable with `--upper`; a script of changes is made through the mount (create,
//! modify, delete files and directories, `rm -r` and recreate, rename a lower directory,
//! chmod/chown, xattrs, hard link, symlink, fifo) and the mount's tree is recorded. After
//! unmounting, `diff` must name the changed paths, and the image `commit` writes in each
//! format must mount read-only as exactly the recorded tree, be accepted by `skopeo inspect`,
//! and unpack with `umoci` to the same tree.
#![allow(missing_docs)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::listing::Listing;
use common::overlay::set_xattr;
use common::{MountGuard, Sandbox, require, rimgfs, run_ok};
use nix::sys::stat::{Mode, SFlag, mknod};

const TAG: &str = "example.com/roundtrip:1";

fn fifo(p: &Path) {
    mknod(p, SFlag::S_IFIFO, Mode::from_bits_truncate(0o640), 0).unwrap();
}

/// Mounts `image` writable on `upper`, runs `changes`, records the tree (as a listing and a
/// treesum), unmounts, then checks diff, commit in every format, skopeo and umoci.
fn roundtrip(sb: &Sandbox, image: &str, changes: impl Fn(&Path), changed: &[&str]) {
    let cache = sb.cache();
    let cache_s = cache.to_str().unwrap();
    let upper = sb.path("upper");
    let upper_s = upper.to_str().unwrap();
    let Some(m) = MountGuard::mount(image, &["--cache-dir", cache_s, "--upper", upper_s]) else {
        return;
    };
    changes(m.path());
    let recorded = Listing::walk(m.path());
    let recorded_sum = sb.path("recorded.treesum");
    run_ok(
        "python3",
        &[
            common::treesum().to_str().unwrap(),
            m.path().to_str().unwrap(),
            "-o",
            recorded_sum.to_str().unwrap(),
        ],
    );
    m.unmount();

    let diff = rimgfs(&["diff", image, "--upper", upper_s, "--cache-dir", cache_s]).success();
    let listed: Vec<&str> = diff
        .stdout
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, p)| p))
        .collect();
    for p in changed {
        assert!(
            listed.contains(p),
            "diff does not name {p}:\n{}",
            diff.stdout
        );
    }

    let have_skopeo = require(
        common::engines::have(&["skopeo"]).then_some(()),
        "skopeo not installed",
    );
    let have_umoci = require(
        common::engines::have(&["umoci"]).then_some(()),
        "umoci not installed",
    );
    for (format, name, transport) in [
        ("docker-archive", "out-docker.tar", "docker-archive:"),
        ("oci-archive", "out-oci.tar", "oci-archive:"),
        ("oci", "out-oci", "oci:"),
    ] {
        let out = sb.path(name);
        let out_s = out.to_str().unwrap();
        rimgfs(&[
            "commit",
            image,
            "--upper",
            upper_s,
            "--cache-dir",
            cache_s,
            "-o",
            out_s,
            "--format",
            format,
            "--tag",
            TAG,
        ])
        .success();
        let arg = format!("{transport}{out_s}");
        let Some(m) = MountGuard::mount(&arg, &["--cache-dir", cache_s, "--read-only"]) else {
            return;
        };
        let committed = Listing::walk(m.path());
        m.unmount();
        committed.assert_same(
            &recorded,
            &format!("{format}: committed image vs the mount"),
        );

        let tool_ref = match format {
            "oci" => format!("oci:{out_s}:{TAG}"),
            _ => arg.clone(),
        };
        if have_skopeo.is_some() {
            run_ok("skopeo", &["inspect", &tool_ref]);
        }
        if have_umoci.is_some() && have_skopeo.is_some() {
            let layout = match format {
                "oci" => out.clone(),
                _ => {
                    let conv = sb.path(&format!("conv-{format}"));
                    run_ok(
                        "skopeo",
                        &[
                            "copy",
                            "-q",
                            &tool_ref,
                            &format!("oci:{}:{TAG}", conv.display()),
                        ],
                    );
                    conv
                }
            };
            let bundle = sb.path(&format!("bundle-{format}"));
            run_ok(
                "umoci",
                &[
                    "unpack",
                    "--image",
                    &format!("{}:{TAG}", layout.display()),
                    bundle.to_str().unwrap(),
                ],
            );
            let o = Command::new("python3")
                .arg(common::treesum())
                .args(["--compare", "--ignore-root"])
                .arg(&recorded_sum)
                .arg(bundle.join("rootfs"))
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && text.contains(" 0 failed"),
                "{format}: umoci unpack differs from the mount:\n{text}{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
}

const SPEC: &str = r"
L0: dir /etc; file /etc/hosts 'hosts\n'; file /etc/passwd 'root\n'; file /etc/motd 'motd'
L0: dir /usr; dir /usr/bin; file /usr/bin/tool 0755 'tool' xattr=user.kind=bin
L0: hardlink /usr/bin/tool2 /usr/bin/tool; symlink /usr/bin/sh tool
L0: dir /var; dir /var/lib; dir /var/lib/app 0750 uid=5 gid=6; file /var/lib/app/db 0600 'db'
L0: dir /var/lib/app/sub; file /var/lib/app/sub/deep 'deep' xattr=user.d=1
L0: dir /opt; dir /opt/old; file /opt/old/x 'x'; dir /opt/old/sub; file /opt/old/sub/y 'y'
L0: dir /srv; file /srv/s1 's1'; dir /srv/d; file /srv/d/s2 's2'
L1: dir /data; file /data/meta 'meta'; file /data/big gen=300000; dir /etc; whiteout /etc/motd
L1: file /etc/issue 'issue'
";

fn code_changes(m: &Path) {
    let p = |rel: &str| m.join(rel);
    fs::write(p("etc/new.conf"), "new\n").unwrap();
    fs::write(p("etc/hosts"), "changed hosts\n").unwrap();
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(p("etc/passwd"))
        .unwrap();
    f.write_all(b"user\n").unwrap();
    drop(f);
    fs::remove_file(p("etc/issue")).unwrap();
    fs::remove_dir_all(p("opt/old")).unwrap();
    fs::remove_dir_all(p("srv")).unwrap();
    fs::create_dir(p("srv")).unwrap();
    fs::write(p("srv/fresh"), "fresh").unwrap();
    fs::rename(p("var/lib/app"), p("var/lib/app2")).unwrap();
    fs::set_permissions(p("data/big"), fs::Permissions::from_mode(0o600)).unwrap();
    nix::unistd::chown(&p("data/meta"), Some(7.into()), Some(8.into())).unwrap();
    set_xattr(&p("etc/hosts"), b"user.new", b"v").unwrap();
    set_xattr(&p("etc"), b"user.dir", b"1").unwrap();
    fs::hard_link(p("etc/new.conf"), p("etc/new.link")).unwrap();
    fs::hard_link(p("data/meta"), p("data/meta.link")).unwrap();
    symlink("hosts", p("etc/link")).unwrap();
    fs::create_dir(p("run")).unwrap();
    fifo(&p("run/fifo"));
}

#[test]
fn cow_roundtrip_code_built_image() {
    let sb = Sandbox::new();
    let image = sb.image(SPEC);
    roundtrip(
        &sb,
        image.to_str().unwrap(),
        code_changes,
        &[
            "/etc/new.conf",
            "/etc/hosts",
            "/etc/passwd",
            "/etc/issue",
            "/opt/old",
            "/srv",
            "/srv/fresh",
            "/srv/s1",
            "/var/lib/app",
            "/var/lib/app2",
            "/data/big",
            "/data/meta",
            "/etc/new.link",
            "/data/meta.link",
            "/etc/link",
            "/run/fifo",
        ],
    );
}

/// An image made by podman FROM scratch around the host's static busybox, with a RUN step so
/// that its layers carry whiteouts as containers/storage writes them.
fn podman_image(work: &Path) -> PathBuf {
    let ctx = work.join("ctx");
    fs::create_dir_all(ctx.join("etc/sub")).unwrap();
    fs::create_dir_all(ctx.join("opt/keep/deep")).unwrap();
    let busybox = Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .unwrap();
    fs::copy(
        String::from_utf8_lossy(&busybox.stdout).trim(),
        ctx.join("busybox"),
    )
    .unwrap();
    fs::write(ctx.join("etc/hello"), "hello\n").unwrap();
    fs::write(ctx.join("etc/old"), "old\n").unwrap();
    fs::write(ctx.join("etc/sub/x"), "x\n").unwrap();
    fs::write(ctx.join("opt/keep/deep/file"), vec![7u8; 300_000]).unwrap();
    fs::write(ctx.join("opt/keep/other"), "other\n").unwrap();
    let script = "rm /etc/old && ln /etc/sub/x /etc/sub/x2 && mkdir -p /var/lib/app && \
                  echo data > /var/lib/app/f && chmod 1777 /var/lib/app";
    fs::write(
        ctx.join("Containerfile"),
        format!(
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY etc /etc\nCOPY opt /opt\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"{script}\"]\n"
        ),
    )
    .unwrap();
    common::podman_build(work, &ctx, "localhost/rimgfs-roundtrip:1", "podman.tar")
}

fn podman_changes(m: &Path) {
    let p = |rel: &str| m.join(rel);
    fs::write(p("etc/new"), "new\n").unwrap();
    fs::write(p("etc/sub/x"), "modified\n").unwrap();
    fs::remove_file(p("etc/hello")).unwrap();
    fs::remove_dir_all(p("opt/keep")).unwrap();
    fs::create_dir(p("opt/keep")).unwrap();
    fs::write(p("opt/keep/again"), "again").unwrap();
    fs::rename(p("var/lib/app"), p("var/lib/moved")).unwrap();
    fs::set_permissions(p("bin/busybox"), fs::Permissions::from_mode(0o700)).unwrap();
    // (Not below the renamed directory: see cow_change_below_renamed_lower_directory.)
    nix::unistd::chown(&p("etc/sub/x2"), Some(1000.into()), Some(1000.into())).unwrap();
    set_xattr(&p("etc/sub/x2"), b"user.note", b"chowned").unwrap();
    fs::hard_link(p("etc/new"), p("etc/new.hard")).unwrap();
    symlink("/bin/busybox", p("bin/sh")).unwrap();
    fifo(&p("etc/fifo"));
}

#[test]
fn cow_roundtrip_podman_built_image() {
    let tools = ["podman", "skopeo", "umoci", "busybox", "python3"];
    let Some(()) = require(
        common::engines::have(&tools).then_some(()),
        "podman/skopeo/umoci/busybox not installed",
    ) else {
        return;
    };
    let sb = Sandbox::new();
    let archive = podman_image(sb.dir.path());
    roundtrip(
        &sb,
        archive.to_str().unwrap(),
        podman_changes,
        &[
            "/etc/new",
            "/etc/sub/x",
            "/etc/hello",
            "/opt/keep",
            "/opt/keep/again",
            "/opt/keep/other",
            "/var/lib/app",
            "/var/lib/moved",
            "/etc/sub/x2",
            "/bin/busybox",
            "/etc/new.hard",
            "/bin/sh",
            "/etc/fifo",
        ],
    );
}

/// Lower entries below a renamed lower directory can still be changed: their copy-up finds
/// their data through the directory's redirect, as kernel overlayfs does.
#[test]
fn cow_change_below_renamed_lower_directory() {
    use common::overlay::{extract_layers, kernel_overlay};
    const SPEC: &str = "L0: dir /a; dir /a/dir; file /a/dir/f 0644 'f'; dir /a/dir/sub; \
                        file /a/dir/sub/g 0644 'g'; file /a/dir/h 0644 'h'";
    fn ops(m: &Path) -> Vec<String> {
        let p = |rel: &str| m.join(rel);
        let mut log = Vec::new();
        let mut rec = |what: &str, r: std::io::Result<()>| {
            log.push(format!("{what}: {:?}", r.map_err(|e| e.raw_os_error())));
        };
        rec("rename", fs::rename(p("a/dir"), p("a/moved")));
        rec(
            "chmod",
            fs::set_permissions(p("a/moved/f"), fs::Permissions::from_mode(0o600)),
        );
        rec(
            "append",
            fs::OpenOptions::new()
                .append(true)
                .open(p("a/moved/h"))
                .and_then(|mut f| f.write_all(b"+")),
        );
        rec("setxattr", set_xattr(&p("a/moved/sub/g"), b"user.x", b"1"));
        rec(
            "chown",
            nix::unistd::chown(&p("a/moved/sub/g"), Some(7.into()), Some(8.into()))
                .map_err(std::io::Error::from),
        );
        let h = fs::read_to_string(p("a/moved/h"));
        log.push(format!("a/moved/h: {h:?}"));
        log
    }
    let sb = Sandbox::new();
    let def = common::ImageDef::from_spec(SPEC);
    let image = sb.image(SPEC);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let Some(k) = kernel_overlay(&lowers, sb.dir.path(), "redirect_dir=on,metacopy=on") else {
        return;
    };
    let klog = ops(&k.mnt);
    k.unmount();
    let cache = sb.cache();
    let upper = sb.path("r-upper");
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &upper) else {
        return;
    };
    let rlog = ops(m.path());
    m.unmount();
    assert_eq!(rlog, klog, "left rimgfs, right kernel overlayfs");
}
