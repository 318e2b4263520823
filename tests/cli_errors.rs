//! Bad input through the built binary: `mount`, `ls` and `inspect` of something that is not
//! a tar (as the image, or as one of its layers) print exactly one line naming the image,
//! exit with status 1 and mount nothing.
#![allow(missing_docs)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::harness::is_mounted;
use common::spec::generated;
use common::*;

/// Text of many lines: a tar reader that quotes a header's bytes prints several lines.
fn text() -> Vec<u8> {
    "hello world, this is not a tar\n".repeat(100).into_bytes()
}

/// Images that are not tars, or hold a layer that is not one; and what the message says.
fn not_tars(sb: &Sandbox) -> Vec<(&'static str, PathBuf, &'static str)> {
    let file = |name: &str, data: Vec<u8>| {
        let p = sb.path(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    let text_layer = sb.write(
        "text-layer.tar",
        Shape::DockerLegacy,
        &[ImageDef::from_layers(vec![text()])],
        Codec::None,
    );
    vec![
        ("text", file("notes.txt", text()), "not a tar archive"),
        (
            "binary",
            file("random.bin", generated(3000, 7)),
            "not a tar archive",
        ),
        (
            "short",
            file("short.bin", b"\n\n\n".to_vec()),
            "not a tar archive",
        ),
        ("text layer", text_layer, "layer 0"),
    ]
}

/// `rimgfs ARGS... --cache-dir CACHE`.
fn run(sb: &Sandbox, args: &[&OsStr]) -> Output {
    let mut v = args.to_vec();
    let cache = sb.cache();
    v.extend([OsStr::new("--cache-dir"), cache.as_os_str()]);
    rimgfs(&v)
}

#[track_caller]
fn assert_one_line_error(out: &Output, image: &Path, why: &str, what: &str) {
    assert_eq!(out.code, Some(1), "{what}: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{what}: {:?}", out.stderr);
    assert!(
        out.stderr
            .starts_with(&format!("rimgfs: {}: ", image.display())),
        "{what}: {:?}",
        out.stderr
    );
    assert!(
        out.stderr.contains(why),
        "{what}: {why:?} in {:?}",
        out.stderr
    );
}

// See: a file that is not a tar at all prints two lines on mount, ls and inspect.
#[test]
fn not_a_tar_is_one_line_on_mount_ls_and_inspect() {
    let sb = Sandbox::new();
    let mnt = sb.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    for (name, image, why) in not_tars(&sb) {
        let img = image.as_os_str();
        for args in [vec!["ls"], vec!["inspect"]] {
            let mut a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
            a.push(img);
            assert_one_line_error(&run(&sb, &a), &image, why, &format!("{name}: {args:?}"));
        }
        for fg in [false, true] {
            let mut a = vec![OsStr::new("mount"), img, mnt.as_os_str()];
            if fg {
                a.push(OsStr::new("-f"));
            }
            let out = run(&sb, &a);
            assert!(!is_mounted(&mnt), "{name}: mounted");
            assert_one_line_error(&out, &image, why, &format!("{name}: mount -f={fg}"));
        }
    }
}

// See: `rimgfs SOURCE MOUNTPOINT -o OPTIONS`, the form mount.fuse3 runs, is a mount; usage
// errors keep exit status 2.
#[test]
fn implicit_mount_form_keeps_usage_errors() {
    let sb = Sandbox::new();
    let image = sb.image("L0: file /f 0644 'x'");
    let mnt = sb.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (img, m) = (image.as_os_str(), mnt.as_os_str());
    let usage = |args: &[&OsStr], why: &str| {
        let out = run(&sb, args);
        assert_eq!(out.code, Some(2), "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(why),
            "{args:?}: {why:?} in {}",
            out.stderr
        );
        assert!(!is_mounted(&mnt));
    };
    usage(&[img], "MOUNTPOINT");
    usage(&[img, m, OsStr::new("-o"), OsStr::new("ro,bogus")], "bogus");
    usage(&[OsStr::new("inspct"), img], "inspect");
    // A runtime error is still one line naming what is wrong, status 1.
    let missing = sb.path("missing.tar");
    let out = run(
        &sb,
        &[missing.as_os_str(), m, OsStr::new("-o"), OsStr::new("ro")],
    );
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{:?}", out.stderr);
    assert!(out.stderr.contains("missing.tar"), "{}", out.stderr);
    // --help is unchanged, and tells of the form.
    let help = run(&sb, &[OsStr::new("--help")]);
    assert_eq!(help.code, Some(0), "{help:?}");
    assert!(
        help.stdout.contains("rimgfs SOURCE MOUNTPOINT"),
        "{}",
        help.stdout
    );
}
