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

use common::{MountGuard, engines, require, run_ok};

const TOOLS: &[&str] = &["podman", "skopeo", "umoci", "busybox", "python3"];

/// Builds the test image with podman in a private storage root and saves it.
fn build_image(work: &Path) -> PathBuf {
    let ctx = engines::busybox_context(work);
    common::podman_build(work, &ctx, "localhost/rimgfs-oracle:1", "image.tar")
}

#[test]
fn oracle_podman_image_matches_umoci_in_every_form() {
    let Some(()) = require(
        engines::have(TOOLS).then_some(()),
        "podman/skopeo/umoci/busybox not installed",
    ) else {
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
        if let Err(diff) = common::treesum_compare(&rootfs, m.path(), &["--ignore-root"]) {
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
