//! Real-world archives made by Docker 20–25, go-containerregistry and containers/image
//! (`../shared/fixtures/foreign`): every image must mount and match its expected tree, as
//! compared by `../shared/tools/treesum.py`; every archive that is not an image must give a
//! one-line error, never a crash.
#![allow(missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::{MountGuard, require, rimgfs};

fn shared() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    p.join("fixtures/foreign").is_dir().then_some(p)
}

/// Archive path → the name its expected trees carry (`/` as `_`, without `.tar`).
fn expected_name(foreign: &Path, archive: &Path) -> String {
    let rel = archive
        .strip_prefix(foreign)
        .unwrap_or(archive)
        .to_string_lossy()
        .into_owned();
    rel.trim_end_matches(".tar").replace('/', "_")
}

fn archives(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            archives(&p, out);
        } else if p.extension().is_some_and(|x| x == "tar") {
            out.push(p);
        }
    }
}

#[test]
fn foreign_archives_match_expected_trees() {
    let Some(shared) = require(shared(), "../shared/fixtures not present") else {
        return;
    };
    let foreign = shared.join("fixtures/foreign");
    let mut all = Vec::new();
    archives(&foreign, &mut all);
    let expected_dir = foreign.join("expected");
    let mut expected: Vec<PathBuf> = std::fs::read_dir(&expected_dir)
        .expect("expected dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "treesum"))
        .collect();
    expected.sort();
    assert!(
        expected.len() >= 10,
        "too few expected trees: {}",
        expected.len()
    );
    let mut failures = Vec::new();
    for exp in &expected {
        let stem = exp.file_stem().unwrap().to_string_lossy().into_owned();
        let (name, index) = stem.rsplit_once('@').expect("NAME@I");
        let archive = all
            .iter()
            .find(|a| expected_name(&foreign, a) == name)
            .unwrap_or_else(|| panic!("no archive for {name}"));
        let cache = tempfile::tempdir().unwrap();
        let image = format!("{}:@{index}", archive.display());
        let Some(m) = MountGuard::mount(&image, &["--cache-dir", cache.path().to_str().unwrap()])
        else {
            return;
        };
        let out = std::process::Command::new("python3")
            .arg(shared.join("tools/treesum.py"))
            .arg("--compare")
            .arg(exp)
            .arg(m.path())
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || !text.contains(" 0 failed") {
            failures.push(format!(
                "{stem}:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        m.unmount();
    }
    assert!(
        failures.is_empty(),
        "trees differ:\n{}",
        failures.join("\n")
    );
}

#[test]
fn foreign_non_images_give_one_line_errors() {
    let Some(shared) = require(shared(), "../shared/fixtures not present") else {
        return;
    };
    let f = shared.join("fixtures/foreign");
    let ggcr = f.join("go-containerregistry/pkg");
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            ggcr.join("v1/tarball/testdata/null_manifest.tar"),
            "manifest.json is null",
        ),
        (
            ggcr.join("v1/tarball/testdata/no_manifest.tar"),
            "not a container image",
        ),
        (
            ggcr.join("v1/tarball/testdata/content.tar"),
            "not a container image",
        ),
        (
            ggcr.join("crane/testdata/content.tar"),
            "not a container image",
        ),
        (
            ggcr.join("crane/testdata/content.tar.zst"),
            "not a container image",
        ),
        (
            f.join("debian/containers/storage/pkg/archive/testdata/broken.tar"),
            "",
        ),
        (
            f.join("debian/docker/docker/pkg/archive/testdata/broken.tar"),
            "",
        ),
        (
            f.join("debian/docker/docker/pkg/tarsum/testdata/xattr/layer.tar"),
            "not a container image",
        ),
        (
            f.join("debian/docker/docker/pkg/tarsum/testdata/collision/collision-0.tar"),
            "",
        ),
        (
            ggcr.join("v1/layout/testdata/test_gc_image_unknown_mediatype"),
            "missing blob sha256:32589985702551b6c56033bb3334432a0a513bf9d6aceda0f67c42b003850720",
        ),
        (
            ggcr.join("v1/layout/testdata/test_index_media_type"),
            "not a container image",
        ),
    ];
    for (path, want) in cases {
        assert!(path.exists(), "{} missing", path.display());
        let cache = tempfile::tempdir().unwrap();
        let out = rimgfs(&[
            "ls",
            "--cache-dir",
            cache.path().to_str().unwrap(),
            path.to_str().unwrap(),
        ]);
        let err = out.stderr.trim_end();
        assert_eq!(
            out.code,
            Some(1),
            "{}: exit {:?}, stderr {err}",
            path.display(),
            out.code
        );
        assert_eq!(
            err.lines().count(),
            1,
            "{}: not one line: {err}",
            path.display()
        );
        assert!(
            err.contains(path.to_str().unwrap()),
            "{}: error does not name the file: {err}",
            path.display()
        );
        assert!(
            err.contains(want),
            "{}: {err:?} lacks {want:?}",
            path.display()
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn foreign_layout_index_selects_by_ref() {
    let Some(shared) = require(shared(), "../shared/fixtures not present") else {
        return;
    };
    let layout =
        shared.join("fixtures/foreign/go-containerregistry/pkg/v1/layout/testdata/test_index");
    let cache = tempfile::tempdir().unwrap();
    let c = cache.path().to_str().unwrap();
    // Refs 1 (a manifest), 3 (an OCI index) and 4 (a Docker manifest list) hold the same image.
    for r in ["1", "3", "4"] {
        let out = rimgfs(&[
            "ls",
            "--cache-dir",
            c,
            &format!("oci:{}:{r}", layout.display()),
        ]);
        assert_eq!(out.code, Some(0), "ref {r}: {}", out.stderr);
        assert_eq!(out.stdout, "bar\nfoo\n", "ref {r}");
    }
    let out = rimgfs(&["ls", "--cache-dir", c, layout.to_str().unwrap()]);
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("@0 1") && out.stderr.contains("@3 4"),
        "{}",
        out.stderr
    );
}
