//! Image sources through the library: every shape gives the same tree; image and platform
//! selection; compression detection; errors that name the file and the problem; the cache.

#![allow(missing_docs)]

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::image::{self as img, Files, sha256};
use common::*;
use rimgfs::error::Error;
use rimgfs::image::config::Platform;
use rimgfs::image::container::Compression;
use rimgfs::image::{OpenOptions, parse_selector};

/// A three-layer image exercising whiteouts, opaque dirs, links, xattrs, devices, long
/// names, negative mtimes, and a file big enough to span several tar blocks.
const SPEC: &str = "\
L0: dir / 0755 mtime=1; dir /etc; file /etc/hosts 0644 'hosts0'; file /etc/passwd 0600 'root:x:0:0'
L0: dir /usr/bin; file /usr/bin/tool 4755 gen=70000; hardlink /usr/bin/tool2 /usr/bin/tool; symlink /bin usr/bin
L0: dir /var/d; file /var/d/x 0644 'x'
L1: whiteout /etc/hosts; opaque /var/d; file /var/d/y 0644 'y' xattr=user.k=v xattr=user.e=; char /dev/null 1 3 0666
L1: file /long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 0644 'long'
L2: file /etc/hosts 0644 'hosts2' mtime=-5; fifo /run/fifo 0600
";

/// The tree `SPEC` should give.
const EXPECTED: &str = "\
dir / 0755 mtime=1; dir /etc; file /etc/hosts 0644 'hosts2' mtime=-5; file /etc/passwd 0600 'root:x:0:0'
dir /usr mtime=0; dir /usr/bin; file /usr/bin/tool 4755 gen=70000; hardlink /usr/bin/tool2 /usr/bin/tool; symlink /bin usr/bin
dir /var mtime=0; dir /var/d; file /var/d/y 0644 'y' xattr=user.k=v xattr=user.e=
dir /dev mtime=0; char /dev/null 1 3 0666; dir /run mtime=0; fifo /run/fifo 0600
dir /long mtime=0; file /long/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa 0644 'long'
";

fn opts(selector: Option<&str>, platform: Option<&str>) -> OpenOptions {
    OpenOptions {
        selector: selector.map(|s| parse_selector(s).unwrap()),
        platform: platform.map(|p| Platform::parse(p).unwrap()),
        ..Default::default()
    }
}

fn open(arg: &str, cache: &Path) -> Result<Opened, Error> {
    open_arg(arg, &OpenOptions::default(), cache, None)
}

#[track_caller]
fn open_ok(arg: &str, cache: &Path) -> Opened {
    open(arg, cache).unwrap_or_else(|e| panic!("{arg}: {}", message(&e)))
}

#[track_caller]
fn open_err(arg: &str, cache: &Path) -> String {
    match open(arg, cache) {
        Ok(o) => panic!(
            "{arg}: expected an error, got a tree: {:?}",
            o.listing().paths()
        ),
        Err(e) => message(&e),
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One source shape to open: (name, shape, image, whole-archive codec, transport prefix,
/// layer compressions rimgfs should detect).
type ShapeCase = (
    &'static str,
    Shape,
    ImageDef,
    Codec,
    &'static str,
    [Compression; 3],
);

#[test]
fn formats_every_shape_gives_the_same_tree() {
    use Codec::{Gzip, None as Plain, Zstd};
    use Shape::*;
    const NONE: [Compression; 3] = [Compression::None; 3];
    const GZ: [Compression; 3] = [Compression::Gzip; 3];
    const ZS: [Compression; 3] = [Compression::Zstd; 3];
    const MIXED: [Compression; 3] = [Compression::Gzip, Compression::Zstd, Compression::None];
    let want = Listing::expected(EXPECTED);
    let base = ImageDef::from_spec(SPEC);
    let (gz, zs) = (base.clone().codec(Gzip), base.clone().codec(Zstd));
    let mixed = base.clone().layer_codec(0, Gzip).layer_codec(1, Zstd);
    let cases: Vec<ShapeCase> = vec![
        ("legacy", DockerLegacy, base.clone(), Plain, "", NONE),
        (
            "legacy, docker-archive:",
            DockerLegacy,
            base.clone(),
            Plain,
            "docker-archive:",
            NONE,
        ),
        ("legacy.tar.gz", DockerLegacy, base.clone(), Gzip, "", NONE),
        ("legacy.tar.zst", DockerLegacy, base.clone(), Zstd, "", NONE),
        (
            "legacy, gzip layers",
            DockerLegacy,
            gz.clone(),
            Plain,
            "",
            GZ,
        ),
        ("docker25", Docker25, base.clone(), Plain, "", NONE),
        (
            "docker25, oci-archive:",
            Docker25,
            base.clone(),
            Plain,
            "oci-archive:",
            NONE,
        ),
        ("docker25.tar.gz", Docker25, base.clone(), Gzip, "", NONE),
        ("containerd", Containerd, base.clone(), Plain, "", GZ),
        (
            "containerd, oci-archive:",
            Containerd,
            base.clone(),
            Plain,
            "oci-archive:",
            GZ,
        ),
        (
            "containerd, zstd layers",
            Containerd,
            zs.clone(),
            Plain,
            "",
            ZS,
        ),
        ("oci dir", OciDir, base.clone(), Plain, "", NONE),
        ("oci dir, oci:", OciDir, base.clone(), Plain, "oci:", NONE),
        ("oci dir, gzip", OciDir, gz.clone(), Plain, "", GZ),
        ("oci dir, zstd", OciDir, zs.clone(), Plain, "", ZS),
        ("oci dir, mixed", OciDir, mixed.clone(), Plain, "", MIXED),
        ("oci archive", OciArchive, base.clone(), Plain, "", NONE),
        (
            "oci archive, oci-archive:",
            OciArchive,
            mixed,
            Plain,
            "oci-archive:",
            MIXED,
        ),
        (
            "oci archive.tar.gz, gzip layers",
            OciArchive,
            gz,
            Gzip,
            "",
            GZ,
        ),
        ("oci archive.tar.zst", OciArchive, base, Zstd, "", NONE),
    ];
    for (name, shape, image, codec, prefix, comps) in cases {
        let sb = Sandbox::new();
        let p = sb.write("img", shape, &[image], codec);
        let o = open_ok(&format!("{prefix}{}", s(&p)), &sb.cache());
        let got: Vec<_> = o.stack.image.layers.iter().map(|l| l.compression).collect();
        assert_eq!(got, comps, "{name}: layer compressions");
        o.listing().assert_same(&want, name);
    }
}

#[test]
fn formats_layer_digests_and_refs_are_reported() {
    let image = ImageDef::from_spec(SPEC).with_ref("example.com/app:v1");
    let built = image.build();
    let sb = Sandbox::new();
    let p = sb.write(
        "oci",
        Shape::OciDir,
        std::slice::from_ref(&image),
        Codec::None,
    );
    let o = open_ok(s(&p), &sb.cache());
    let layers = &o.stack.image.layers;
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l.diff_id.as_str(), built.diff_ids[i]);
        assert_eq!(l.digest().as_str(), built.layers[i].digest);
        assert_eq!(l.media_type, img::MT_LAYER_TAR);
    }
    assert_eq!(o.stack.image.refs, ["example.com/app:v1"]);
    assert_eq!(
        o.stack.image.manifest_digest.as_ref().unwrap().as_str(),
        built.manifest.digest
    );
    assert_eq!(
        o.stack.image.config_digest.as_ref().unwrap().as_str(),
        built.config.digest
    );
    assert_eq!(
        o.stack.layer_labels()[1],
        format!("1 {}", built.layers[1].digest)
    );
}

/// Two images with different content, for selection tests.
fn two_images() -> [ImageDef; 2] {
    [
        ImageDef::from_spec("L0: file /who 0644 'alpha'").with_ref("alpha:1"),
        ImageDef::from_spec("L0: file /who 0644 'beta'\nL1: file /b 0644 'b'").with_ref("beta:2"),
    ]
}

#[test]
fn select_image_by_ref_index_and_option() {
    for shape in Shape::ALL {
        let sb = Sandbox::new();
        let p = sb.write("multi", shape, &two_images(), Codec::None);
        let cache = sb.cache();
        let who = |o: Opened| String::from_utf8(o.content("/who")).unwrap();
        // Layout refs are the tags written as ref.name; archives keep the full name:tag.
        let (a, b) = match shape {
            Shape::OciDir | Shape::OciArchive => ("alpha:1", "beta:2"),
            _ => ("alpha:1", "docker.io/library/beta:2"),
        };
        let cases: Vec<(String, Option<&str>, &str)> = vec![
            (format!("{}:{a}", s(&p)), None, "alpha"),
            (format!("{}:{b}", s(&p)), None, "beta"),
            (format!("{}:@0", s(&p)), None, "alpha"),
            (format!("{}:@1", s(&p)), None, "beta"),
            (s(&p).to_string(), Some("beta:2"), "beta"),
            (s(&p).to_string(), Some("@0"), "alpha"),
            // --ref wins over the argument's own selector.
            (format!("{}:@0", s(&p)), Some("@1"), "beta"),
        ];
        for (arg, sel, want) in cases {
            let o = open_arg(&arg, &opts(sel, None), &cache, None)
                .unwrap_or_else(|e| panic!("{shape:?} {arg} {sel:?}: {}", message(&e)));
            assert_eq!(who(o), want, "{shape:?} {arg} {sel:?}");
        }
    }
}

#[test]
fn select_without_ref_in_multi_image_archive_lists_refs() {
    for shape in Shape::ALL {
        let sb = Sandbox::new();
        let p = sb.write("multi", shape, &two_images(), Codec::None);
        let msg = open_err(s(&p), &sb.cache());
        for want in [s(&p), "@0", "@1", "alpha:1", "beta:2"] {
            assert!(
                msg.contains(want),
                "{shape:?}: {want:?} missing from: {msg}"
            );
        }
    }
}

#[test]
fn select_unknown_ref_or_index_is_error_listing_refs() {
    for shape in Shape::ALL {
        let sb = Sandbox::new();
        let p = sb.write("multi", shape, &two_images(), Codec::None);
        for sel in ["gamma:3", "@2"] {
            let e = open_arg(s(&p), &opts(Some(sel), None), &sb.cache(), None).err();
            let msg = message(&e.unwrap_or_else(|| panic!("{shape:?} {sel}: must fail")));
            for want in [s(&p), sel.trim_start_matches('@'), "alpha:1", "beta:2"] {
                assert!(
                    msg.contains(want),
                    "{shape:?} {sel}: {want:?} missing from: {msg}"
                );
            }
        }
    }
}

#[test]
fn select_single_image_needs_no_ref_and_ignores_other_names() {
    let sb = Sandbox::new();
    let image = ImageDef::from_spec("L0: file /f 0644 'x'").with_ref("only:1");
    let p = sb.write("one.tar", Shape::DockerLegacy, &[image], Codec::None);
    assert_eq!(open_ok(s(&p), &sb.cache()).content("/f"), b"x");
    let msg = open_arg(s(&p), &opts(Some("other:1"), None), &sb.cache(), None)
        .err()
        .map(|e| message(&e));
    let msg = msg.expect("a ref that names no image must fail even with one image");
    assert!(msg.contains("only:1") && msg.contains(s(&p)), "{msg}");
}

fn platform_images() -> [ImageDef; 2] {
    [
        ImageDef::from_spec("L0: file /arch 0644 'amd64'").platform("linux/amd64"),
        ImageDef::from_spec("L0: file /arch 0644 'arm64'").platform("linux/arm64/v8"),
    ]
}

#[test]
fn platform_default_is_host_and_explicit_selects() {
    let host = Platform::host();
    for nested in [true, false] {
        let sb = Sandbox::new();
        let dir = sb.path("multiarch");
        img::oci_multiplatform(&platform_images(), "latest", nested).write_dir(&dir);
        let arch = |platform: Option<&str>| {
            let o = open_arg(s(&dir), &opts(None, platform), &sb.cache(), None)
                .unwrap_or_else(|e| panic!("nested={nested} {platform:?}: {}", message(&e)));
            String::from_utf8(o.content("/arch")).unwrap()
        };
        if matches!(host.architecture.as_str(), "amd64" | "arm64") {
            assert_eq!(
                arch(None),
                host.architecture,
                "nested={nested}: host default"
            );
        }
        assert_eq!(arch(Some("linux/arm64")), "arm64", "nested={nested}");
        assert_eq!(arch(Some("linux/arm64/v8")), "arm64", "nested={nested}");
        assert_eq!(arch(Some("linux/amd64")), "amd64", "nested={nested}");
        let e = open_arg(s(&dir), &opts(None, Some("linux/s390x")), &sb.cache(), None).err();
        let msg = message(&e.expect("no such platform"));
        for want in [s(&dir), "linux/s390x", "linux/amd64", "linux/arm64"] {
            assert!(
                msg.contains(want),
                "nested={nested}: {want:?} missing from: {msg}"
            );
        }
    }
}

#[test]
fn media_type_missing_or_wrong_is_detected_by_magic() {
    let base = ImageDef::from_spec(SPEC);
    let claim = |s: &str| MediaType::Claim(s.to_string());
    let cases: Vec<(&str, ImageDef)> = vec![
        (
            "omitted",
            base.clone()
                .codec(Codec::Gzip)
                .media_type(0, MediaType::Omit)
                .media_type(1, MediaType::Omit)
                .media_type(2, MediaType::Omit),
        ),
        (
            "gzip claimed plain",
            base.clone()
                .layer_codec(0, Codec::Gzip)
                .media_type(0, claim(img::MT_LAYER_TAR)),
        ),
        (
            "zstd claimed gzip",
            base.clone()
                .layer_codec(1, Codec::Zstd)
                .media_type(1, claim(img::MT_LAYER_GZIP)),
        ),
        (
            "plain claimed zstd",
            base.clone().media_type(2, claim(img::MT_LAYER_ZSTD)),
        ),
        (
            "docker media types",
            base.clone().layer_codec(0, Codec::Gzip).media_type(
                0,
                claim("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            ),
        ),
        (
            "nonsense",
            base.clone()
                .layer_codec(0, Codec::Zstd)
                .media_type(0, claim("text/plain")),
        ),
    ];
    let want = Listing::expected(EXPECTED);
    for (name, image) in cases {
        let sb = Sandbox::new();
        let p = sb.write(
            "oci",
            Shape::OciDir,
            std::slice::from_ref(&image),
            Codec::None,
        );
        let o = open_ok(s(&p), &sb.cache());
        for (i, l) in o.stack.image.layers.iter().enumerate() {
            let want = match image.codecs[i] {
                Codec::None => Compression::None,
                Codec::Gzip => Compression::Gzip,
                Codec::Zstd => Compression::Zstd,
            };
            assert_eq!(l.compression, want, "{name}: layer {i}");
        }
        o.listing().assert_same(&want, name);
    }
}

#[test]
fn error_truncated_archive() {
    let sb = Sandbox::new();
    let files = Shape::DockerLegacy.files(&[ImageDef::from_spec(SPEC)]);
    let tar = files.to_tar();
    // Cut inside a member's data, inside a header block, and before the first header ends.
    for (name, cut) in [
        ("in data", tar.len() / 2),
        ("in a header", 512 + 100),
        ("tiny", 10),
    ] {
        let p = sb.path(&format!("cut-{cut}.tar"));
        std::fs::write(&p, &tar[..cut]).unwrap();
        let msg = open_err(s(&p), &sb.cache());
        assert!(msg.contains(s(&p)), "{name}: {msg}");
        assert!(
            msg.contains("truncated")
                || msg.contains("not a tar")
                || msg.contains("not a container image"),
            "{name}: {msg}"
        );
    }
    // A truncated OCI archive, cut inside a layer blob.
    let oci = Shape::OciArchive
        .files(&[ImageDef::from_spec(SPEC)])
        .to_tar();
    let p = sb.path("cut-oci.tar");
    std::fs::write(&p, &oci[..oci.len() * 2 / 3]).unwrap();
    let msg = open_err(s(&p), &sb.cache());
    assert!(msg.contains(s(&p)) && msg.contains("truncated"), "{msg}");
}

/// Damages a compressed stream: `flip` flips bytes in the middle, else it is cut short.
fn damage(mut data: Vec<u8>, flip: bool) -> Vec<u8> {
    if flip {
        let mid = data.len() / 2;
        for b in &mut data[mid..mid + 16] {
            *b ^= 0x5a;
        }
    } else {
        data.truncate(data.len() * 2 / 3);
    }
    data
}

#[test]
fn error_corrupt_compressed_layer() {
    let tar = common::spec::Spec::parse("L0: file /big 0644 gen=300000; file /small 0644 's'")
        .layer_tars()
        .remove(0);
    for (codec, mt) in [
        (Codec::Gzip, img::MT_LAYER_GZIP),
        (Codec::Zstd, img::MT_LAYER_ZSTD),
    ] {
        for flip in [true, false] {
            let name = format!("{codec:?} {}", if flip { "flipped" } else { "truncated" });
            let blob = damage(img::compress(&tar, codec), flip);
            // The descriptor's digest and size match the damaged blob, so only the stream is
            // wrong; the config's diff_id is the intact tar's.
            let mut image =
                ImageDef::from_layers(vec![blob]).media_type(0, MediaType::Claim(mt.into()));
            image.diff_id_overrides[0] = Some(sha256(&tar));
            let sb = Sandbox::new();
            let p = sb.write("oci", Shape::OciDir, &[image], Codec::None);
            let msg = open_err(s(&p), &sb.cache());
            assert!(msg.contains(s(&p)), "{name}: {msg}");
            assert!(msg.contains("layer 0"), "{name}: {msg}");
            // The decoder notices (always for a cut stream), or the digest check after it.
            let stream = format!("corrupt {codec:?} stream");
            if flip {
                assert!(
                    msg.contains(&stream) || msg.contains("mismatch"),
                    "{name}: {msg}"
                );
            } else {
                assert!(msg.contains(&stream), "{name}: {msg}");
            }
            // Nothing half-written is left for a later open to trust.
            let again = open_err(s(&p), &sb.cache());
            assert_eq!(again, msg, "{name}: second open");
        }
    }
}

#[test]
fn error_corrupt_compressed_archive() {
    for codec in [Codec::Gzip, Codec::Zstd] {
        for flip in [true, false] {
            let sb = Sandbox::new();
            let tar = Shape::DockerLegacy
                .files(&[ImageDef::from_spec(SPEC)])
                .to_tar();
            let p = sb.path("img.tar.x");
            std::fs::write(&p, damage(img::compress(&tar, codec), flip)).unwrap();
            let msg = open_err(s(&p), &sb.cache());
            assert!(msg.contains(s(&p)), "{codec:?} flip={flip}: {msg}");
            // zstd frames without a checksum decode damage into garbage: then the layer
            // digest check catches it.
            let detected = |m: &str| {
                ["corrupt", "mismatch", "truncated"]
                    .iter()
                    .any(|w| m.contains(w))
            };
            assert!(detected(&msg), "{codec:?} flip={flip}: {msg}");
            // The failed open leaves nothing in the cache that a second open would trust.
            let again = open_err(s(&p), &sb.cache());
            assert!(
                detected(&again),
                "{codec:?} flip={flip}: second open: {again}"
            );
        }
    }
}

#[test]
fn error_layer_diff_id_mismatch() {
    for (shape, codec) in [
        (Shape::DockerLegacy, Codec::None),
        (Shape::Docker25, Codec::None),
        (Shape::OciDir, Codec::Gzip),
        (Shape::OciArchive, Codec::Zstd),
        (Shape::Containerd, Codec::Gzip),
    ] {
        let mut image = ImageDef::from_spec(SPEC).codec(codec);
        image.bad_diff_id = Some(1);
        let claimed = image.build().diff_ids[1].clone();
        let actual = sha256(&image.layers[1]);
        let sb = Sandbox::new();
        let p = sb.write("img", shape, &[image], Codec::None);
        let msg = open_err(s(&p), &sb.cache());
        for want in [s(&p), "layer 1", "diff_id", &claimed, &actual] {
            assert!(
                msg.contains(want),
                "{shape:?}: {want:?} missing from: {msg}"
            );
        }
    }
}

#[test]
fn error_blob_digest_mismatch() {
    for (shape, codec) in [
        (Shape::OciDir, Codec::None),
        (Shape::OciDir, Codec::Gzip),
        (Shape::OciArchive, Codec::Zstd),
    ] {
        let mut image = ImageDef::from_spec(SPEC).codec(codec);
        image.bad_blob_digest = Some(2);
        let claimed = image.build().layers[2].digest.clone();
        let sb = Sandbox::new();
        let p = sb.write("img", shape, &[image], Codec::None);
        let msg = open_err(s(&p), &sb.cache());
        for want in [s(&p), "layer 2", "mismatch", &claimed] {
            assert!(
                msg.contains(want),
                "{shape:?} {codec:?}: {want:?} missing from: {msg}"
            );
        }
    }
}

#[test]
fn error_blob_size_mismatch() {
    // A layer blob with bytes appended: the descriptor's size no longer matches.
    let image = ImageDef::from_spec(SPEC);
    let b = image.build();
    let mut files = Shape::OciDir.files(&[image]);
    files
        .get_mut(&b.layers[0].path())
        .extend_from_slice(&[0u8; 512]);
    let sb = Sandbox::new();
    let p = sb.path("oci");
    files.write_dir(&p);
    let msg = open_err(s(&p), &sb.cache());
    assert!(
        msg.contains(s(&p)) && msg.contains(&b.layers[0].digest),
        "{msg}"
    );
    assert!(msg.contains("size") || msg.contains("mismatch"), "{msg}");
}

#[test]
fn error_missing_blob() {
    let image = ImageDef::from_spec(SPEC);
    let b = image.build();
    let legacy_layer = {
        let f = Shape::DockerLegacy.files(std::slice::from_ref(&image));
        f.0.iter()
            .find(|(n, _)| n.ends_with("/layer.tar"))
            .unwrap()
            .0
            .clone()
    };
    let cases: Vec<(&str, Shape, String)> = vec![
        ("oci layer", Shape::OciDir, b.layers[1].path()),
        ("oci config", Shape::OciDir, b.config.path()),
        ("oci manifest", Shape::OciArchive, b.manifest.path()),
        ("docker25 layer", Shape::Docker25, b.layers[0].path()),
        ("legacy layer", Shape::DockerLegacy, legacy_layer),
    ];
    for (name, shape, member) in cases {
        let mut files = shape.files(std::slice::from_ref(&image));
        files.remove(&member);
        let sb = Sandbox::new();
        let p = sb.path("img");
        img::write_files(&files, shape, &p, Codec::None);
        let msg = open_err(s(&p), &sb.cache());
        let what = member.rsplit('/').next().unwrap();
        assert!(msg.contains(s(&p)), "{name}: {msg}");
        assert!(msg.contains("missing"), "{name}: {msg}");
        assert!(
            msg.contains(what) || msg.contains(&member),
            "{name}: {what} missing from: {msg}"
        );
    }
}

#[test]
fn error_not_an_image() {
    let sb = Sandbox::new();
    let text = sb.path("notes.txt");
    std::fs::write(
        &text,
        "just some text, not a tar archive at all\n".repeat(40),
    )
    .unwrap();
    let empty_dir = sb.path("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let plain_tar = sb.path("plain.tar");
    Files(vec![("hello.txt".into(), b"hi".to_vec())]).write_tar(&plain_tar, Codec::None);
    let empty = sb.path("empty.tar");
    std::fs::write(&empty, b"").unwrap();
    let gz_text = sb.path("text.gz");
    std::fs::write(&gz_text, img::compress(b"not a tar inside", Codec::Gzip)).unwrap();
    let missing = sb.path("does-not-exist.tar");
    let cases: Vec<(&str, PathBuf, &[&str])> = vec![
        (
            "text file",
            text,
            &["not a tar", "not a container image", "archive"],
        ),
        ("empty dir", empty_dir, &["not a container image"]),
        (
            "tar without manifest",
            plain_tar,
            &["not a container image"],
        ),
        (
            "empty file",
            empty,
            &["empty", "not a tar", "not a container image"],
        ),
        (
            "gzip of text",
            gz_text,
            &["not a tar", "not a container image", "archive"],
        ),
        (
            "missing",
            missing,
            &["No such file", "not exist", "no such"],
        ),
    ];
    for (name, p, any_of) in cases {
        let msg = open_err(s(&p), &sb.cache());
        assert!(msg.contains(s(&p)), "{name}: {msg}");
        assert!(
            any_of.iter().any(|w| msg.contains(w)),
            "{name}: expected one of {any_of:?} in: {msg}"
        );
    }
}

#[test]
fn error_bad_manifest_json() {
    let sb = Sandbox::new();
    let mut files = Shape::DockerLegacy.files(&[ImageDef::from_spec(SPEC)]);
    *files.get_mut("manifest.json") = b"[{\"Config\": ".to_vec();
    let p = sb.path("bad.tar");
    files.write_tar(&p, Codec::None);
    let msg = open_err(s(&p), &sb.cache());
    assert!(
        msg.contains(s(&p)) && msg.contains("manifest.json"),
        "{msg}"
    );
}

/// The cache files under `sub` (`index`, `layers`, `archives`, `verified`).
fn cache_files(cache: &Path, sub: &str) -> Vec<PathBuf> {
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if !p.file_name().unwrap().to_string_lossy().starts_with(".tmp") {
                out.push(p);
            }
        }
    }
    let mut v = Vec::new();
    walk(&cache.join(sub), &mut v);
    v.sort();
    v
}

fn identity(p: &Path) -> (u64, i64, i64) {
    let m = std::fs::metadata(p).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

#[test]
fn cache_second_open_reuses_index_and_layers() {
    for codec in [Codec::None, Codec::Gzip, Codec::Zstd] {
        let sb = Sandbox::new();
        let image = ImageDef::from_spec(SPEC).codec(codec);
        let p = sb.write("oci", Shape::OciDir, &[image], Codec::None);
        let first = open_ok(s(&p), &sb.cache()).listing();
        let idx = cache_files(&sb.cache(), "index");
        assert_eq!(idx.len(), 3, "{codec:?}: one index per layer: {idx:?}");
        let layers = cache_files(&sb.cache(), "layers");
        // Compressed layers are decompressed into the cache; plain ones are served in place.
        assert_eq!(
            layers.len(),
            if codec == Codec::None { 0 } else { 3 },
            "{codec:?}: {layers:?}"
        );
        let before: Vec<_> = idx.iter().chain(&layers).map(|f| identity(f)).collect();
        let second = open_ok(s(&p), &sb.cache());
        let after: Vec<_> = idx.iter().chain(&layers).map(|f| identity(f)).collect();
        assert_eq!(
            before, after,
            "{codec:?}: the cache was rewritten on a warm open"
        );
        second.listing().assert_same(&first, "warm open");
        if codec != Codec::None {
            // A warm open serves the cached decompressed layers.
            for f in &second.tree.data_files {
                let f = f.host_range().unwrap();
                assert!(f.file.starts_with(sb.cache()), "{codec:?}: {f:?}");
            }
        }
    }
}

/// Ways to damage a cache file.
fn damage_file(p: &Path, how: &str) {
    let mut data = std::fs::read(p).unwrap();
    match how {
        "truncate" => data.truncate(data.len() / 2),
        "empty" => data.clear(),
        "flip middle" => {
            let mid = data.len() / 2;
            data[mid] ^= 0x01;
        }
        "flip last" => *data.last_mut().unwrap() ^= 0x80,
        "flip first" => data[0] ^= 0x20,
        "append" => data.extend_from_slice(b"junk"),
        other => panic!("unknown damage {other}"),
    }
    // Rewritten in place (same inode), as bit rot or a careless tool would.
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(p)
        .unwrap();
    std::fs::write(p, &data).unwrap();
}

/// The ways a test damages a cache file (see `damage_file`).
const DAMAGES: [&str; 6] = [
    "truncate",
    "empty",
    "flip middle",
    "flip last",
    "flip first",
    "append",
];

#[test]
fn cache_damaged_index_is_rebuilt() {
    for codec in [Codec::None, Codec::Gzip] {
        for how in DAMAGES {
            let sb = Sandbox::new();
            let p = sb.write(
                "oci",
                Shape::OciDir,
                &[ImageDef::from_spec(SPEC).codec(codec)],
                Codec::None,
            );
            let first = open_ok(s(&p), &sb.cache()).listing();
            for f in cache_files(&sb.cache(), "index") {
                damage_file(&f, how);
                assert!(
                    rimgfs::layer::codec::decode(&std::fs::read(&f).unwrap()).is_none(),
                    "{how}: damage undetectable"
                );
            }
            let again = open_ok(s(&p), &sb.cache());
            again
                .listing()
                .assert_same(&first, &format!("{codec:?} index {how}"));
            for f in cache_files(&sb.cache(), "index") {
                let ok = rimgfs::layer::codec::decode(&std::fs::read(&f).unwrap()).is_some();
                assert!(ok, "{codec:?} {how}: {} was not rebuilt", f.display());
            }
        }
    }
}

#[test]
fn cache_warm_open_maps_the_merged_tree_without_reading_indexes() {
    for codec in [Codec::None, Codec::Gzip] {
        let sb = Sandbox::new();
        let image = ImageDef::from_spec(SPEC).codec(codec);
        let p = sb.write("oci", Shape::OciDir, &[image], Codec::None);
        let first = open_ok(s(&p), &sb.cache());
        let trees = cache_files(&sb.cache(), "trees");
        assert_eq!(trees.len(), 1, "{codec:?}: one merged tree: {trees:?}");
        assert!(
            first.tree.is_mapped(),
            "{codec:?}: served from its cache file"
        );
        let before = identity(&trees[0]);
        let again = open_ok(s(&p), &sb.cache());
        assert!(again.tree.is_mapped());
        assert_eq!(
            before,
            identity(&trees[0]),
            "{codec:?}: the tree was rewritten"
        );
        assert!(
            again.stack.layers.iter().all(|l| l.index_deferred()),
            "{codec:?}: a layer index was decoded on a warm open"
        );
        again.listing().assert_same(&first.listing(), "warm open");
        // Another stack of the same layers (--layer 1) is a tree of its own.
        let lower = open_arg(s(&p), &OpenOptions::default(), &sb.cache(), Some(1)).unwrap();
        assert_eq!(cache_files(&sb.cache(), "trees").len(), 2);
        assert!(lower.tree.resolve(b"run/fifo").is_none());
        assert!(again.tree.resolve(b"run/fifo").is_some());
    }
}

#[test]
fn cache_damaged_merged_tree_is_rebuilt_never_served() {
    for how in DAMAGES {
        let sb = Sandbox::new();
        let p = sb.write(
            "oci",
            Shape::OciDir,
            &[ImageDef::from_spec(SPEC)],
            Codec::None,
        );
        let first = open_ok(s(&p), &sb.cache()).listing();
        let tree = cache_files(&sb.cache(), "trees").pop().unwrap();
        damage_file(&tree, how);
        let f = std::fs::File::open(&tree).unwrap();
        assert!(
            matches!(rimgfs::tree::flat::Flat::open(&f), Ok(None)),
            "{how}: damage undetectable"
        );
        let again = open_ok(s(&p), &sb.cache());
        again.listing().assert_same(&first, &format!("tree {how}"));
        let f = std::fs::File::open(&tree).unwrap();
        assert!(
            matches!(rimgfs::tree::flat::Flat::open(&f), Ok(Some(_))),
            "{how}: not rebuilt"
        );
    }
}

#[test]
fn cache_rebuilt_index_gives_a_new_merged_tree() {
    let sb = Sandbox::new();
    let p = sb.write(
        "oci",
        Shape::OciDir,
        &[ImageDef::from_spec(SPEC)],
        Codec::None,
    );
    let first = open_ok(s(&p), &sb.cache()).listing();
    let old = cache_files(&sb.cache(), "trees");
    // Its index gone, a layer is indexed again: the tree of the old index is not used.
    let idx = cache_files(&sb.cache(), "index");
    std::fs::remove_file(&idx[1]).unwrap();
    let again = open_ok(s(&p), &sb.cache());
    again.listing().assert_same(&first, "index rebuilt");
    let now = cache_files(&sb.cache(), "trees");
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(now.iter().any(|t| !old.contains(t)));
}

#[test]
fn cache_damaged_layer_is_rebuilt_never_served() {
    for codec in [Codec::Gzip, Codec::Zstd] {
        for how in [
            "truncate",
            "empty",
            "flip middle",
            "flip first",
            "append",
            "delete",
            "replace",
        ] {
            let sb = Sandbox::new();
            let p = sb.write(
                "oci",
                Shape::OciDir,
                &[ImageDef::from_spec(SPEC).codec(codec)],
                Codec::None,
            );
            let first = open_ok(s(&p), &sb.cache()).listing();
            let layers = cache_files(&sb.cache(), "layers");
            assert_eq!(layers.len(), 3);
            for f in &layers {
                match how {
                    "delete" => std::fs::remove_file(f).unwrap(),
                    "replace" => {
                        // Another file of the same size, renamed over it.
                        let mut data = std::fs::read(f).unwrap();
                        let mid = data.len() / 2;
                        data[mid] ^= 0xff;
                        let tmp = f.with_extension("new");
                        std::fs::write(&tmp, &data).unwrap();
                        std::fs::rename(&tmp, f).unwrap();
                    }
                    how => damage_file(f, how),
                }
            }
            let again = open_ok(s(&p), &sb.cache());
            again
                .listing()
                .assert_same(&first, &format!("{codec:?} layer {how}"));
            // The rebuilt files hash to the diff_ids again.
            for (l, f) in again.stack.image.layers.iter().zip(&again.tree.data_files) {
                let f = f.host_range().unwrap();
                let data = std::fs::read(&f.file).unwrap();
                assert_eq!(
                    sha256(&data),
                    l.diff_id.as_str(),
                    "{codec:?} {how}: {}",
                    f.file.display()
                );
            }
        }
    }
}

#[test]
fn cache_damaged_decompressed_archive_is_rebuilt() {
    for how in ["truncate", "flip middle", "empty"] {
        let sb = Sandbox::new();
        let p = sb.write(
            "img.tar.gz",
            Shape::DockerLegacy,
            &[ImageDef::from_spec(SPEC)],
            Codec::Gzip,
        );
        let first = open_ok(s(&p), &sb.cache()).listing();
        let mut archives = cache_files(&sb.cache(), "archives");
        archives.retain(|a| a.extension().is_some_and(|e| e == "tar"));
        assert_eq!(archives.len(), 1, "{archives:?}");
        damage_file(&archives[0], how);
        let again = open(s(&p), &sb.cache()).map(|o| o.listing());
        match again {
            Ok(l) => l.assert_same(&first, &format!("archive {how}")),
            Err(e) => panic!(
                "archive {how}: a damaged cache entry must be rebuilt, got: {}",
                message(&e)
            ),
        }
    }
}

#[test]
fn cache_rewritten_source_is_not_served_stale() {
    let sb = Sandbox::new();
    let p = sb.path("img.tar");
    Shape::DockerLegacy.write(
        &[ImageDef::from_spec("L0: file /f 0644 'one'")],
        &p,
        Codec::None,
    );
    assert_eq!(open_ok(s(&p), &sb.cache()).content("/f"), b"one");
    // Same path, same size, different content and layer digest.
    Shape::DockerLegacy.write(
        &[ImageDef::from_spec("L0: file /f 0644 'two'")],
        &p,
        Codec::None,
    );
    assert_eq!(open_ok(s(&p), &sb.cache()).content("/f"), b"two");
    // And compressed whole.
    let gz = sb.path("img.tar.gz");
    Shape::DockerLegacy.write(
        &[ImageDef::from_spec("L0: file /f 0644 'one'")],
        &gz,
        Codec::Gzip,
    );
    assert_eq!(open_ok(s(&gz), &sb.cache()).content("/f"), b"one");
    Shape::DockerLegacy.write(
        &[ImageDef::from_spec("L0: file /f 0644 'two'")],
        &gz,
        Codec::Gzip,
    );
    assert_eq!(open_ok(s(&gz), &sb.cache()).content("/f"), b"two");
}

#[test]
fn cache_shared_layer_is_stored_once() {
    // Two images sharing their bottom layer: one cache entry for it.
    let common_layer = "L0: file /base 0644 'shared'";
    let a = ImageDef::from_spec(&format!("{common_layer}\nL1: file /a 0644 'a'"))
        .codec(Codec::Gzip)
        .with_ref("a:1");
    let b = ImageDef::from_spec(&format!("{common_layer}\nL1: file /b 0644 'b'"))
        .codec(Codec::Gzip)
        .with_ref("b:1");
    let sb = Sandbox::new();
    let p = sb.write("oci", Shape::OciDir, &[a, b], Codec::None);
    open_ok(&format!("{}:a:1", s(&p)), &sb.cache());
    open_ok(&format!("{}:b:1", s(&p)), &sb.cache());
    assert_eq!(cache_files(&sb.cache(), "layers").len(), 3);
    assert_eq!(cache_files(&sb.cache(), "index").len(), 3);
}

/// Whether `v` holds a descriptor of `old`; every one is pointed at `new` of `size` bytes.
fn repoint(v: &mut serde_json::Value, old: &str, new: &str, size: usize) -> bool {
    match v {
        serde_json::Value::Object(m) => {
            let mut found = false;
            if m.get("digest").and_then(|d| d.as_str()) == Some(old) {
                m.insert("digest".into(), new.into());
                m.insert("size".into(), size.into());
                found = true;
            }
            for x in m.values_mut() {
                found |= repoint(x, old, new, size);
            }
            found
        }
        serde_json::Value::Array(a) => a
            .iter_mut()
            .fold(false, |found, x| repoint(x, old, new, size) | found),
        _ => false,
    }
}

/// Replaces member `i`'s bytes; a blob moves to its new digest, and every document naming it
/// is repointed (and moved in turn), so only the change itself is wrong.
fn relink(files: &mut Files, i: usize, bytes: Vec<u8>) {
    let name = files.0[i].0.clone();
    let Some(hex) = name.strip_prefix("blobs/sha256/") else {
        files.0[i].1 = bytes;
        return;
    };
    let (old, new) = (format!("sha256:{hex}"), sha256(&bytes));
    let size = bytes.len();
    files.0[i] = (format!("blobs/sha256/{}", &new["sha256:".len()..]), bytes);
    for j in 0..files.0.len() {
        let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&files.0[j].1) else {
            continue;
        };
        if j != i && repoint(&mut v, &old, &new, size) {
            relink(files, j, serde_json::to_vec(&v).unwrap());
        }
    }
}

/// Edits the JSON document `name` (a member path, or `@index` for the blob index.json's
/// first entry names) and relinks what names it.
fn edit_json(files: &mut Files, name: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let name = if name == "@index" {
        let index: serde_json::Value =
            serde_json::from_slice(&files.0.iter().find(|(n, _)| n == "index.json").unwrap().1)
                .unwrap();
        let d = index["manifests"][0]["digest"].as_str().unwrap();
        format!("blobs/sha256/{}", &d["sha256:".len()..])
    } else {
        name.to_string()
    };
    let i = files.0.iter().position(|(n, _)| *n == name).unwrap();
    let mut v: serde_json::Value = serde_json::from_slice(&files.0[i].1).unwrap();
    edit(&mut v);
    relink(files, i, serde_json::to_vec(&v).unwrap());
}

// See: a malformed digest in an OCI index or manifest prints no image path.
#[test]
fn error_invalid_digest_names_the_image() {
    const BAD: &str = "sha256:../../x";
    let image = ImageDef::from_spec(SPEC);
    let b = image.build();
    type Edit = Box<dyn Fn(&mut Files)>;
    let (manifest, config) = (b.manifest.path(), b.config.path());
    let cases: Vec<(&str, Shape, Edit)> = vec![
        (
            "index.json entry",
            Shape::OciDir,
            Box::new(|f| {
                edit_json(f, "index.json", |v| {
                    v["manifests"][0]["digest"] = BAD.into()
                })
            }),
        ),
        (
            "nested index entry",
            Shape::Containerd,
            Box::new(|f| {
                // Without manifest.json, the archive is read as the OCI layout it holds.
                f.remove("manifest.json");
                edit_json(f, "@index", |v| v["manifests"][0]["digest"] = BAD.into());
            }),
        ),
        (
            "manifest config",
            Shape::OciArchive,
            Box::new(move |f| edit_json(f, &manifest, |v| v["config"]["digest"] = BAD.into())),
        ),
        (
            "manifest layer",
            Shape::OciDir,
            Box::new({
                let manifest = b.manifest.path();
                move |f| edit_json(f, &manifest, |v| v["layers"][1]["digest"] = BAD.into())
            }),
        ),
        (
            "config diff_id",
            Shape::OciArchive,
            Box::new(move |f| edit_json(f, &config, |v| v["rootfs"]["diff_ids"][2] = BAD.into())),
        ),
    ];
    for (what, shape, edit) in cases {
        let mut files = shape.files(std::slice::from_ref(&image));
        edit(&mut files);
        let sb = Sandbox::new();
        let p = sb.path("img");
        img::write_files(&files, shape, &p, Codec::None);
        let msg = open_err(s(&p), &sb.cache());
        let want = format!("{}: invalid digest \"{BAD}\"", s(&p));
        assert!(msg.contains(&want), "{what}: {want:?} missing from: {msg}");
    }
}

#[test]
fn error_about_a_cache_file_names_the_image() {
    // Where the cache cannot be written: the decompressed copy of a compressed archive, a
    // layer's index, a decompressed layer. The error names the cache file and the image.
    let cases = [
        ("archive copy", Codec::Gzip, Codec::None, "archives"),
        ("layer index", Codec::None, Codec::None, "index"),
        ("decompressed layer", Codec::None, Codec::Zstd, "layers"),
    ];
    for (what, archive, layers, blocked) in cases {
        let sb = Sandbox::new();
        std::fs::create_dir_all(sb.cache()).unwrap();
        std::fs::write(
            sb.cache().join(blocked),
            "a file where a directory should be",
        )
        .unwrap();
        let image = ImageDef::from_spec(SPEC).codec(layers);
        let p = sb.write("img.tar", Shape::DockerLegacy, &[image], archive);
        let msg = open_err(s(&p), &sb.cache());
        let cache_file = sb.cache().join(blocked);
        assert!(msg.starts_with(&format!("{}: ", s(&p))), "{what}: {msg}");
        assert!(msg.contains(s(&cache_file)), "{what}: {msg}");
    }
}
