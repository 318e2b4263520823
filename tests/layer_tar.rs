//! Layer tars read as GNU tar and the engines read them, compared with GNU tar's extraction
//! of the same bytes: PAX records framed by their lengths (binary xattrs, newlines in names
//! and link targets, values that look like records), malformed records and names no Linux
//! filesystem can hold refused with one line naming the image, the layer and the entry, and
//! `commit` writing such entries so that both GNU tar and rimgfs read them back.
#![allow(missing_docs)]

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::listing::{get_xattr, list_xattrs};
use common::overlay::set_xattr;
use common::spec::{Spec, pax_records};
use common::*;

/// A `security.capability` value (revision 2, effective; CAP_DAC_OVERRIDE, CAP_SYS_RAWIO and
/// CAP_SYS_PTRACE permitted) with a 0x0a byte, as real images have.
const CAPABILITY: &[u8] = &[
    0x01, 0x00, 0x00, 0x02, 0x02, 0x00, 0x0a, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
/// A name component longer than a ustar header holds, so it goes in a GNU long-name entry.
const LONG: &str = "a-component-longer-than-the-one-hundred-bytes-of-a-ustar-name-field-so-it-needs-a-gnu-long-name-entry";

/// A spec token for any bytes: single-quoted, everything but letters and digits escaped.
fn q(bytes: &[u8]) -> String {
    let mut s = String::from("'");
    for &b in bytes {
        if b.is_ascii_alphanumeric() {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s.push('\'');
    s
}

/// One PAX record with its correct length.
fn rec(key: &str, value: &str) -> Vec<u8> {
    pax_records(&[(key.as_bytes().to_vec(), value.as_bytes().to_vec())])
}

/// A layer whose PAX values hold every troublesome byte, and values that hold whole records
/// (`\n22 linkpath=/etc/evil\n`) which must stay values.
fn special_layer() -> String {
    let smuggle = |key: &str, value: &str, carrier: &str| {
        let mut v = format!("{carrier}=x\n").into_bytes();
        v.extend(rec(key, value));
        q(&v)
    };
    [
        "L0: dir / 0755 mtime=1000".to_string(),
        format!(
            "L0: file /bin 0644 'b' xattr={} xattr=user.empty= xattr={} xattr={}",
            q(b"user.bin=\x00\xff\x0a\x20"),
            q(b"user.nl=\n"),
            q(b"user.nul=\0\0"),
        ),
        format!(
            "L0: file /cap 0755 'c' xattr={}",
            q(&[&b"security.capability="[..], CAPABILITY].concat())
        ),
        format!("L0: dir /d 0750 xattr={}", q(b"user.dir=a\nb")),
        format!("L0: file {} 0644 'in the header'", q(b"/d/new\nline")),
        format!("L0: file {} 0644 'in a pax path' pax", q(b"/d/pax\nname")),
        format!(
            "L0: file {} 0644 'in a gnu long name'",
            q(format!("/d/{LONG}\nx").as_bytes())
        ),
        format!("L0: symlink /d/nl {}", q(b"to\nthere")),
        format!("L0: symlink /d/pax-nl {} pax", q(b"pax\nthere")),
        format!(
            "L0: symlink /d/long-nl {} pax",
            q(format!("{LONG}\n{LONG}").as_bytes())
        ),
        format!(
            "L0: symlink /smuggled-link good paxrec={}",
            smuggle("linkpath", "/etc/evil", "comment")
        ),
        format!(
            "L0: file /smuggled-path 0644 'p' xattr={}",
            smuggle("path", "evil", "user.x")
        ),
        format!(
            "L0: file /smuggled-size 0644 'sized' paxrec={}",
            smuggle("size", "1", "comment")
        ),
        format!(
            "L0: hardlink /smuggled-hardlink /bin paxrec={}",
            smuggle("linkpath", "cap", "comment")
        ),
        "L0: file /after 0644 'the entry after them all'".to_string(),
    ]
    .join("\n")
}

/// GNU tar's extraction of a layer tar into `dir`, listed without the root.
fn gnu_tar_extraction(tar: &[u8], dir: &Path) -> Listing {
    let file = dir.with_extension("tar");
    fs::write(&file, tar).unwrap();
    fs::create_dir_all(dir).unwrap();
    run_ok(
        "tar",
        &[
            "-C",
            dir.to_str().unwrap(),
            "--xattrs",
            "--xattrs-include=*",
            "--numeric-owner",
            "-xpf",
            file.to_str().unwrap(),
        ],
    );
    without_root(Listing::walk(dir))
}

fn without_root(mut l: Listing) -> Listing {
    l.0.remove(&b"/"[..]);
    l
}

// See: PAX records must be read by their length (a real image is refused today).
#[test]
fn pax_values_with_any_byte_match_gnu_tar_extraction() {
    let sb = Sandbox::new();
    let tars = Spec::parse(&special_layer()).layer_tars();
    let want = gnu_tar_extraction(&tars[0], &sb.path("gnu-tar"));
    // What GNU tar made of the layer is what the test means.
    let info = |p: &str| {
        want.get(p)
            .unwrap_or_else(|| panic!("{p} not extracted: {:?}", want.paths()))
    };
    assert_eq!(
        info("/bin").xattrs.get(&b"user.bin"[..]).map(Vec::as_slice),
        Some(&b"\x00\xff\x0a\x20"[..])
    );
    assert_eq!(
        info("/bin")
            .xattrs
            .get(&b"user.empty"[..])
            .map(Vec::as_slice),
        Some(&b""[..])
    );
    assert_eq!(
        info("/cap")
            .xattrs
            .get(&b"security.capability"[..])
            .map(Vec::as_slice),
        Some(CAPABILITY)
    );
    assert_eq!(info("/smuggled-link").target.as_deref(), Some(&b"good"[..]));
    assert_eq!(info("/smuggled-size").size, 5);
    assert_eq!(
        info("/smuggled-hardlink").link_group,
        Some(b"/bin".to_vec())
    );
    assert!(want.get("/d/new\nline").is_some() && want.get("/d/pax\nname").is_some());
    assert!(want.get("/after").is_some() && want.get("/evil").is_none());

    let image = sb.write(
        "image.tar",
        Shape::DockerLegacy,
        &[ImageDef::from_layers(tars)],
        Codec::None,
    );
    let opened = open_path(&image, &sb.cache()).unwrap_or_else(|e| panic!("open: {}", message(&e)));
    without_root(opened.listing()).assert_same(&want, "merged tree vs GNU tar");

    let cache = sb.cache();
    let Some(m) = MountGuard::mount(&image, &["--cache-dir", cache.to_str().unwrap()]) else {
        return;
    };
    without_root(Listing::walk(m.path())).assert_same(&want, "mount vs GNU tar");
    let names = list_xattrs(&m.at("/bin")).unwrap();
    for n in ["user.bin", "user.empty", "user.nl", "user.nul"] {
        assert!(names.contains(&n.as_bytes().to_vec()), "{n} in {names:?}");
    }
    assert_eq!(
        get_xattr(&m.at("/cap"), b"security.capability").unwrap(),
        CAPABILITY
    );
    assert_eq!(
        fs::read_link(m.at("/d/nl")).unwrap().as_os_str().as_bytes(),
        b"to\nthere"
    );
    assert_eq!(fs::read(m.at("/d/new\nline")).unwrap(), b"in the header");
    m.unmount();
}

/// PAX header bodies whose records are framed wrongly, and the reason each is refused with.
const BAD_RECORDS: &[(&[u8], &str)] = &[
    (b"30 path=a\n", "runs past the end"),
    (b"11 path=a\n", "runs past the end"),
    (b"8 path=a\n", "does not end in a newline"),
    (b"9 path=ab", "does not end in a newline"),
    (b"9path=ab\n", "no space after the length"),
    (b"9 patha\n\n", "no '='"),
    (b"path=a\n", "no length"),
    (b"9 path=a\n\0\0\0", "no length"),
];

#[test]
fn pax_record_with_wrong_length_is_one_line_error_naming_layer_and_entry() {
    for (body, why) in BAD_RECORDS {
        let sb = Sandbox::new();
        let spec = format!(
            "L0: file /ok 0644 'ok'\nL1: file /victim 0644 'v' paxraw={}",
            q(body)
        );
        let err = try_open_spec(&sb, &spec, None)
            .err()
            .unwrap_or_else(|| panic!("{body:?}: must be refused"));
        let msg = message(&err);
        let image = sb.path("image.tar");
        for want in [
            image.to_str().unwrap(),
            "layer 1",
            "victim",
            "bad pax record",
            why,
        ] {
            assert!(msg.contains(want), "{body:?}: {want:?} missing from: {msg}");
        }
        assert!(!msg.contains('\n'), "{body:?}: {msg}");
    }
    // Through the binary: one line on stderr, exit status 1.
    let sb = Sandbox::new();
    let image = sb.image(&format!(
        "L0: file /victim 0644 'v' paxraw={}",
        q(b"30 path=a\n")
    ));
    let out = rimgfs(&[
        "ls".as_ref(),
        image.as_os_str(),
        "--cache-dir".as_ref(),
        sb.cache().as_os_str(),
    ]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains("victim: bad pax record"),
        "{}",
        out.stderr
    );
}

/// `n` bytes of name.
fn name(n: usize) -> String {
    "n".repeat(n)
}

// See: A layer entry whose name component is longer than 255 bytes is served.
#[test]
fn names_linux_cannot_hold_are_refused_naming_layer_and_entry() {
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "last component",
            format!("L1: file /d/{} 0644 'x'", name(256)),
            "a name of 256 bytes",
        ),
        (
            "parent component",
            format!("L1: file /{}/f 0644 'x'", name(300)),
            "a name of 300 bytes",
        ),
        (
            "component from a pax path",
            format!("L1: file /p/{} 0644 'x' pax", name(256)),
            "a name of 256 bytes",
        ),
        (
            "whiteout of a name no layer can have",
            format!("L1: whiteout /d/{}", name(256)),
            "a name of 256 bytes",
        ),
        (
            "symlink target",
            format!("L1: symlink /l /{}", name(4095)),
            "a symlink target of 4096 bytes",
        ),
        (
            "empty xattr name",
            "L1: file /x 0644 'x' xattr==v".to_string(),
            "an xattr name of 0 bytes",
        ),
        (
            "long xattr name",
            format!("L1: file /x 0644 'x' xattr=user.{}=v", name(252)),
            "an xattr name of 257 bytes",
        ),
    ];
    for (what, layer, why) in cases {
        let sb = Sandbox::new();
        let spec = format!("L0: file /ok 0644 'ok'\n{layer}");
        let err = try_open_spec(&sb, &spec, None)
            .err()
            .unwrap_or_else(|| panic!("{what}: must be refused"));
        let msg = message(&err);
        let image = sb.path("image.tar");
        for want in [image.to_str().unwrap(), "layer 1", why] {
            assert!(msg.contains(want), "{what}: {want:?} missing from: {msg}");
        }
        assert!(!msg.contains('\n'), "{what}: {msg}");
    }
}

#[test]
fn names_at_the_linux_limits_are_served() {
    let sb = Sandbox::new();
    let longest = name(255);
    let spec = format!(
        "L0: file /d/{longest} 0644 'x'; file /d/keep 0644 'y'; symlink /l /{target}\n\
         L0: file /x 0644 'x' xattr=user.{xname}=v\n\
         L1: whiteout /d/{longest}",
        target = name(4094),
        xname = name(250),
    );
    let img = open_spec(&sb, &spec);
    assert_eq!(img.names("/d"), ["keep"]);
    assert_eq!(img.get("/l").kind.size(), 4095);
    assert_eq!(
        img.get("/x")
            .xattr(format!("user.{}", name(250)).as_bytes()),
        Some(&b"v"[..])
    );
}

/// Entries whose names, link targets and xattrs hold newlines, in an upper directory that
/// `commit` turns into a layer.
fn special_upper(u: &Path) {
    let p = |rel: &[u8]| u.join(std::ffi::OsStr::from_bytes(rel));
    fs::create_dir_all(p(b"new\ndir")).unwrap();
    fs::write(p(b"new\ndir/file"), "f").unwrap();
    fs::write(p(format!("{LONG}\nlong").as_bytes()), "long name").unwrap();
    fs::write(p(b"xattrs"), "x").unwrap();
    set_xattr(&p(b"xattrs"), b"user.bin", b"\x00\xff\x0a\x20").unwrap();
    set_xattr(&p(b"xattrs"), b"user.empty", b"").unwrap();
    let mut smuggle = b"x\n".to_vec();
    smuggle.extend(rec("path", "evil"));
    set_xattr(&p(b"xattrs"), b"user.record", &smuggle).unwrap();
    set_xattr(&p(b"xattrs"), b"security.capability", CAPABILITY).unwrap();
    std::os::unix::fs::symlink("to\nthere", p(b"nl-link")).unwrap();
    std::os::unix::fs::symlink(format!("{LONG}\n{LONG}"), p(b"long-link")).unwrap();
}

#[test]
fn commit_writes_newlines_and_binary_xattrs_that_read_back_exactly() {
    let sb = Sandbox::new();
    let image = sb.image("L0: dir / 0755 mtime=1000; file /base 0644 'base'");
    let upper = sb.path("upper");
    special_upper(&upper);
    let out_dir = sb.path("out");
    rimgfs(&[
        "commit".as_ref(),
        image.as_os_str(),
        "--upper".as_ref(),
        upper.as_os_str(),
        "--cache-dir".as_ref(),
        sb.cache().as_os_str(),
        "-o".as_ref(),
        out_dir.as_os_str(),
        "--format".as_ref(),
        "oci".as_ref(),
        "--tag".as_ref(),
        "t".as_ref(),
    ])
    .success();
    let want = without_root(Listing::walk(&upper));
    let after = open_arg(
        &format!("oci:{}:t", out_dir.display()),
        &Default::default(),
        &sb.cache(),
        None,
    )
    .unwrap_or_else(|e| panic!("open the committed image: {}", message(&e)));
    // GNU tar reads the new layer as the upper directory it was made from...
    let new_layer = match &after.stack.image.layers.last().unwrap().blob {
        rimgfs::image::Blob::Local(loc) => fs::read(&loc.file).unwrap(),
        other => panic!("{other:?}"),
    };
    gnu_tar_extraction(&new_layer, &sb.path("gnu-tar")).assert_same(&want, "GNU tar");
    // ... and so does rimgfs, over the image's own entries.
    let mut got = without_root(after.listing());
    assert!(got.0.remove(&b"/base"[..]).is_some());
    got.assert_same(&want, "committed image");
}
