//! Images made by real tools, compared entry by entry with `umoci unpack` of the same image.
//!
//! `podman build --isolation chroot` builds an image FROM scratch around the host's static
//! busybox, whose RUN steps delete files and directories, recreate a directory, make hard
//! links and symlinks and set modes, so the layers carry real whiteouts and opaque markers as
//! containers/storage writes them. `podman save` gives a docker-archive; `skopeo copy` turns it
//! into an OCI layout, an OCI archive and zstd-compressed layers. Each form is mounted and
//! compared with umoci's extraction by `../shared/tools/treesum.py` (every attribute, content
//! hashes, hard-link groups).
#![allow(missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{MountGuard, require, run_ok};

const TOOLS: &[&str] = &["podman", "skopeo", "umoci", "busybox", "python3"];

fn tools_present() -> Option<()> {
    TOOLS
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .then_some(())
}

fn treesum() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/treesum.py")
}

/// Builds the test image with podman in a private storage root and saves it.
fn build_image(work: &Path) -> PathBuf {
    let ctx = work.join("ctx");
    std::fs::create_dir_all(ctx.join("etc/sub")).unwrap();
    std::fs::create_dir_all(ctx.join("opt/keep/deep")).unwrap();
    std::fs::copy(which("busybox"), ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("etc/hello"), "hello\n").unwrap();
    std::fs::write(ctx.join("etc/sub/x"), "x\n").unwrap();
    std::fs::write(ctx.join("opt/keep/deep/file"), vec![7u8; 300_000]).unwrap();
    std::fs::write(ctx.join("opt/keep/other"), "other\n").unwrap();
    let script = [
        "rm /etc/hello",
        "ln /etc/sub/x /etc/sub/x2",
        "rm -r /opt/keep",
        "mkdir -p /opt/keep",
        "echo fresh > /opt/keep/new",
        "mkdir -p /var/lib/app",
        "ln -s ../../etc/sub/x /var/lib/app/link",
        "echo data > /var/lib/app/setuid",
        "chmod 4755 /var/lib/app/setuid",
        "chmod 1777 /var/lib/app",
        "chown 1000:1000 /etc/sub/x",
        "ln /var/lib/app/setuid /var/lib/app/setuid.hard",
        "mknod /var/lib/app/fifo p",
    ]
    .join(" && ");
    let containerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY etc /etc\nCOPY opt /opt\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && {script}\"]\n\
         RUN [\"/bin/sh\", \"-c\", \"rm /etc/sub/x2 && echo later > /etc/sub/later\"]\n"
    );
    std::fs::write(ctx.join("Containerfile"), containerfile).unwrap();
    common::podman_build(work, &ctx, "localhost/rimgfs-oracle:1", "image.tar")
}

fn which(tool: &str) -> PathBuf {
    let o = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .unwrap();
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}

fn compare(expected: &Path, mounted: &Path) -> Result<(), String> {
    let out = Command::new("python3")
        .arg(treesum())
        .args(["--compare", "--ignore-root"])
        .arg(expected)
        .arg(mounted)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && text.contains(" 0 failed") {
        Ok(())
    } else {
        Err(text)
    }
}

#[test]
fn oracle_podman_image_matches_umoci_in_every_form() {
    let Some(()) = require(tools_present(), "podman/skopeo/umoci/busybox not installed") else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let archive = build_image(w);
    let oci = w.join("oci");
    let src = format!("docker-archive:{}", archive.display());
    run_ok(
        "skopeo",
        &["copy", "-q", &src, &format!("oci:{}:t", oci.display())],
    );
    run_ok(
        "skopeo",
        &[
            "copy",
            "-q",
            &src,
            &format!("oci-archive:{}:t", w.join("oci.tar").display()),
        ],
    );
    run_ok(
        "skopeo",
        &[
            "copy",
            "-q",
            "--dest-compress-format",
            "zstd",
            &src,
            &format!("oci:{}:t", w.join("zstd").display()),
        ],
    );
    run_ok(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:t", oci.display()),
            w.join("bundle").to_str().unwrap(),
        ],
    );
    let rootfs = w.join("bundle/rootfs");
    assert!(
        rootfs.join("etc/sub/later").exists(),
        "the image was not built as intended"
    );

    let forms = [
        archive.display().to_string(),
        format!("oci:{}:t", oci.display()),
        format!("oci-archive:{}", w.join("oci.tar").display()),
        format!("oci:{}", w.join("zstd").display()),
    ];
    let cache = w.join("cache");
    for form in &forms {
        let Some(m) = MountGuard::mount(form, &["--cache-dir", cache.to_str().unwrap()]) else {
            return;
        };
        if let Err(diff) = compare(&rootfs, m.path()) {
            panic!("{form} differs from umoci unpack:\n{diff}");
        }
        // Deleted paths and the opaque directory's old children are gone.
        for gone in ["etc/hello", "etc/sub/x2", "opt/keep/other", "opt/keep/deep"] {
            assert!(
                std::fs::symlink_metadata(m.path().join(gone)).is_err(),
                "{form}: {gone} visible"
            );
        }
        m.unmount();
    }
}
