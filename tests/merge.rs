//! Layer-merging rules of the OCI image-spec `layer.md`, one test per rule, checked through
//! the library (`Stack::open` + `tree()`), without a mount.
//! <https://github.com/opencontainers/image-spec/blob/main/layer.md>

#![allow(missing_docs)]

mod common;

use common::spec::DEFAULT_MTIME;
use common::*;
use rimgfs::tree::node::NodeKind;

/// Checks which paths exist after merging, for table-driven cases.
#[track_caller]
fn check_paths(name: &str, spec: &str, present: &[&str], absent: &[&str]) {
    let sb = Sandbox::new();
    let img = try_open_spec(&sb, spec, None)
        .unwrap_or_else(|e| panic!("{name}: open failed: {}", message(&e)));
    for p in present {
        assert!(
            img.node(p).is_some(),
            "{name}: {p} should exist; tree: {:?}",
            img.listing().paths()
        );
    }
    for p in absent {
        assert!(
            img.node(p).is_none(),
            "{name}: {p} should be gone; tree: {:?}",
            img.listing().paths()
        );
    }
}

/// The diff_id of layer `i` of a spec (the digest a legacy archive's layer is known by).
fn diff_id(spec: &str, i: usize) -> String {
    ImageDef::from_spec(spec).build().diff_ids[i].clone()
}

#[test]
fn whiteout_hides_lower_file() {
    check_paths(
        "file",
        "L0: dir /etc; file /etc/hosts 0644 'a'; file /etc/passwd 0644 'p'\n\
         L1: whiteout /etc/hosts",
        &["/etc", "/etc/passwd"],
        &["/etc/hosts", "/etc/.wh.hosts"],
    );
}

#[test]
fn whiteout_hides_lower_directory_and_its_subtree() {
    check_paths(
        "dir",
        "L0: dir /a; dir /a/b; file /a/b/f 0644 'f'; dir /a/b/c; file /a/keep 0644 'k'\n\
         L1: whiteout /a/b",
        &["/a", "/a/keep"],
        &["/a/b", "/a/b/f", "/a/b/c", "/a/.wh.b"],
    );
}

#[test]
fn whiteout_in_nested_directory() {
    let cases: &[(&str, &str, &[&str], &[&str])] = &[
        (
            "deep file",
            "L0: dir /a/b/c/d; file /a/b/c/d/f 0644 'x'; file /a/b/c/d/g 0644 'y'\n\
             L1: whiteout /a/b/c/d/f",
            &["/a/b/c/d", "/a/b/c/d/g"],
            &["/a/b/c/d/f"],
        ),
        (
            "deep dir",
            "L0: dir /a/b/c/d; file /a/b/c/d/f 0644 'x'\nL1: whiteout /a/b/c",
            &["/a/b"],
            &["/a/b/c", "/a/b/c/d", "/a/b/c/d/f"],
        ),
        (
            "two layers up",
            "L0: dir /a/b; file /a/b/f 0644 'x'\nL1: file /other 0644 'o'\nL2: whiteout /a/b/f",
            &["/a/b", "/other"],
            &["/a/b/f"],
        ),
        (
            "hidden name",
            "L0: file /.hidden 0644 'h'; file /shown 0644 's'\nL1: whiteout /.hidden",
            &["/shown"],
            &["/.hidden"],
        ),
    ];
    for (name, spec, present, absent) in cases {
        check_paths(name, spec, present, absent);
    }
}

#[test]
fn opaque_directory_hides_lower_children_only() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /d 0755; file /d/old 0644 'o'; dir /d/sub; file /d/sub/x 0644 'x'; file /other 0644 'k'\n\
         L1: dir /d 0700 uid=3; opaque /d; file /d/new 0644 'n'",
    );
    assert_eq!(img.names("/d"), ["new"]);
    assert_eq!(img.get("/d").meta.mode, 0o700);
    assert_eq!(img.get("/d").meta.uid, 3);
    assert!(
        img.node("/other").is_some(),
        "opaque must not reach outside its directory"
    );
    assert!(img.node("/d/.wh..wh..opq").is_none());
}

#[test]
fn opaque_marker_after_sibling_keeps_sibling() {
    // The marker comes after a sibling of the same layer in the tar: the sibling stays.
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /d; file /d/lower 0644 'l'\n\
         L1: dir /d; file /d/early 0644 'e'; dir /d/earlydir; file /d/earlydir/f 0644 'f'; opaque /d; file /d/late 0644 'z'",
    );
    assert_eq!(img.names("/d"), ["early", "earlydir", "late"]);
    assert_eq!(img.content("/d/early"), b"e");
    assert_eq!(img.content("/d/earlydir/f"), b"f");
}

#[test]
fn opaque_in_layer_without_lower_directory_is_harmless() {
    check_paths(
        "opaque new dir",
        "L0: file /f 0644 'x'\nL1: dir /n; opaque /n; file /n/a 0644 'a'",
        &["/f", "/n", "/n/a"],
        &["/n/.wh..wh..opq"],
    );
}

#[test]
fn whiteout_never_hides_entry_of_its_own_layer() {
    // Both orders of whiteout and entry in the tar; the entry of the same layer always stays,
    // and the lower one is always hidden.
    let cases = [
        (
            "whiteout first",
            "L0: dir /a; file /a/x 0644 'old'\nL1: whiteout /a/x; file /a/x 0644 'new'",
        ),
        (
            "whiteout last",
            "L0: dir /a; file /a/x 0644 'old'\nL1: file /a/x 0644 'new'; whiteout /a/x",
        ),
        (
            "no lower",
            "L0: dir /a\nL1: file /a/x 0644 'new'; whiteout /a/x",
        ),
    ];
    for (name, spec) in cases {
        let sb = Sandbox::new();
        let img = open_spec(&sb, spec);
        assert_eq!(img.content("/a/x"), b"new", "{name}");
        assert_eq!(img.get("/a/x").layer, 1, "{name}");
    }
    // A directory of the same layer keeps its children too.
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /a/d; file /a/d/lower 0644 'l'\nL1: dir /a/d; file /a/d/mine 0644 'm'; whiteout /a/d",
    );
    assert_eq!(img.names("/a/d"), ["mine"]);
}

#[test]
fn dir_over_dir_keeps_children_and_takes_new_attrs() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /d 0755 uid=1 gid=1 mtime=100 xattr=user.old=1; file /d/a 0644 'a'\n\
         L1: dir /d 0710 uid=7 gid=8 mtime=200 xattr=user.new=2; file /d/b 0644 'b'",
    );
    assert_eq!(img.names("/d"), ["a", "b"]);
    let d = img.get("/d");
    assert_eq!(
        (d.meta.mode, d.meta.uid, d.meta.gid, d.meta.mtime),
        (0o710, 7, 8, 200)
    );
    assert_eq!(d.xattr(b"user.new"), Some(&b"2"[..]));
    assert_eq!(
        d.xattr(b"user.old"),
        None,
        "xattrs are replaced with the attributes"
    );
    assert_eq!(d.layer, 1);
}

#[test]
fn file_replacing_dir_removes_subtree() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /d; dir /d/sub; file /d/sub/x 0644 'x'; file /d/y 0644 'y'\nL1: file /d 0600 'now a file'",
    );
    assert_eq!(img.content("/d"), b"now a file");
    assert_eq!(img.get("/d").meta.mode, 0o600);
    for gone in ["/d/sub", "/d/sub/x", "/d/y"] {
        assert!(img.node(gone).is_none(), "{gone}");
    }
    // The subtree's nodes are not in the tree at all (no orphan inodes).
    assert_eq!(img.listing().paths(), ["/", "/d"]);
    assert_eq!(img.tree.len(), 2);
}

#[test]
fn dir_replacing_file() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: file /x 0644 'file'\nL1: dir /x 0700; file /x/inner 0644 'i'",
    );
    assert!(img.get("/x").is_dir());
    assert_eq!(img.get("/x").meta.mode, 0o700);
    assert_eq!(img.content("/x/inner"), b"i");
}

#[test]
fn symlink_replacing_dir() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /lib; file /lib/libc.so 0644 'c'; dir /usr/lib\nL1: symlink /lib usr/lib",
    );
    assert_eq!(
        img.get("/lib").kind,
        NodeKind::Symlink(b"usr/lib"[..].into())
    );
    assert!(img.node("/lib/libc.so").is_none());
    assert_eq!(img.listing().paths(), ["/", "/lib", "/usr", "/usr/lib"]);
}

#[test]
fn hardlink_within_layer_shares_node() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /bin; file /bin/busybox 0755 'bb'; hardlink /bin/sh /bin/busybox; hardlink /bin/ls /bin/busybox",
    );
    let ids: Vec<_> = ["bin/busybox", "bin/sh", "bin/ls"]
        .iter()
        .map(|p| img.tree.resolve(p.as_bytes()).unwrap())
        .collect();
    assert!(ids.iter().all(|&i| i == ids[0]), "{ids:?}");
    assert_eq!(img.get("/bin/sh").nlink, 3);
    assert_eq!(img.content("/bin/ls"), b"bb");
    assert_eq!(img.get("/bin/ls").meta.mode, 0o755);
}

#[test]
fn hardlink_to_lower_layer_path_shares_node() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /a; file /a/f 0640 'lower'\nL1: dir /b; hardlink /b/g /a/f",
    );
    let (f, g) = (
        img.tree.resolve(b"a/f").unwrap(),
        img.tree.resolve(b"b/g").unwrap(),
    );
    assert_eq!(f, g);
    assert_eq!(img.get("/a/f").nlink, 2);
    assert_eq!(img.content("/b/g"), b"lower");
}

#[test]
fn hardlink_survives_whiteout_of_other_name() {
    let sb = Sandbox::new();
    let img = open_spec(&sb, "L0: file /a 0644 'x'; hardlink /b /a\nL1: whiteout /a");
    assert!(img.node("/a").is_none());
    assert_eq!(img.content("/b"), b"x");
    assert_eq!(img.get("/b").nlink, 1);
}

#[test]
fn hardlink_to_missing_target_is_error_naming_layer() {
    let spec = "L0: file /present 0644 'p'\nL1: dir /x; hardlink /x/link /absent";
    let sb = Sandbox::new();
    let err = try_open_spec(&sb, spec, None)
        .err()
        .expect("a dangling hard link must fail");
    let msg = message(&err);
    assert!(msg.contains("layer 1"), "{msg}");
    assert!(msg.contains(&diff_id(spec, 1)), "{msg}");
    assert!(msg.contains("absent") && msg.contains("x/link"), "{msg}");
    assert!(
        msg.contains(sb.path("image.tar").to_str().unwrap()),
        "{msg}"
    );
}

#[test]
fn hardlink_to_directory_is_error() {
    let sb = Sandbox::new();
    let err = try_open_spec(&sb, "L0: dir /d; hardlink /l /d", None)
        .err()
        .expect("must fail");
    let msg = message(&err);
    assert!(msg.contains("layer 0"), "{msg}");
    assert!(msg.contains("directory"), "{msg}");
}

#[test]
fn implicit_parent_dirs_have_defaults() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: file /a/b/c/file 0600 uid=5 'x'\nL1: file /p/q/r 0644 'y'",
    );
    for (path, layer) in [
        ("/a", 0),
        ("/a/b", 0),
        ("/a/b/c", 0),
        ("/p", 1),
        ("/p/q", 1),
    ] {
        let n = img.get(path);
        assert!(n.is_dir(), "{path}");
        assert_eq!(
            (
                n.meta.mode,
                n.meta.uid,
                n.meta.gid,
                n.meta.mtime,
                n.meta.mtime_nsec
            ),
            (0o755, 0, 0, 0, 0),
            "{path}"
        );
        assert_eq!(n.layer, layer, "{path}");
    }
    assert_eq!(img.get("/a/b/c/file").meta.uid, 5);
}

#[test]
fn implicit_parent_keeps_attrs_of_existing_lower_dir() {
    let sb = Sandbox::new();
    let img = open_spec(&sb, "L0: dir /etc 0700 mtime=7\nL1: file /etc/b 0644 'b'");
    let d = img.get("/etc");
    assert_eq!((d.meta.mode, d.meta.mtime, d.layer), (0o700, 7, 0));
}

#[test]
fn whiteout_under_missing_parent_creates_nothing() {
    // As umoci's extraction: a whiteout or opaque marker whose directory does not exist in
    // the lower layers hides nothing and leaves no implicit directory behind.
    check_paths(
        "missing parents",
        "L0: file /f 0644 'x'\nL1: whiteout /nope/deep/z; opaque /gone; file /g 0644 'g'",
        &["/f", "/g"],
        &["/nope", "/nope/deep", "/gone"],
    );
}

#[test]
fn implicit_parent_takes_attrs_of_later_entry() {
    let sb = Sandbox::new();
    let img = open_spec(&sb, "L0: file /d/f 0644 'x'; dir /d 0700 mtime=9");
    let d = img.get("/d");
    assert_eq!((d.meta.mode, d.meta.mtime), (0o700, 9));
    assert_eq!(img.names("/d"), ["f"]);
}

#[test]
fn duplicate_entries_last_wins() {
    let cases: &[(&str, &str, char)] = &[
        (
            "file twice",
            "L0: file /x 0644 'one'; file /x 0600 'two'",
            '-',
        ),
        (
            "dir then file",
            "L0: dir /x; file /x/in 0644 'i'; file /x 0600 'two'",
            '-',
        ),
        ("file then dir", "L0: file /x 0644 'one'; dir /x 0700", 'd'),
        (
            "file then symlink",
            "L0: file /x 0644 'one'; symlink /x target",
            'l',
        ),
        (
            "symlink then file",
            "L0: symlink /x target; file /x 0600 'two'",
            '-',
        ),
    ];
    for (name, spec, kind) in cases {
        let sb = Sandbox::new();
        let img = open_spec(&sb, spec);
        let l = img.listing();
        let x = l.get("/x").unwrap_or_else(|| panic!("{name}: no /x"));
        assert_eq!(x.kind, *kind, "{name}");
        if *kind == '-' {
            assert_eq!(img.content("/x"), b"two", "{name}");
            assert_eq!(x.mode, 0o600, "{name}");
        }
        if *kind == 'd' {
            assert_eq!(x.mode, 0o700, "{name}");
        }
        assert_eq!(l.0.len(), 2, "{name}: {:?}", l.paths());
    }
}

#[test]
fn root_attrs_from_dot_slash_entry() {
    let cases = [
        (
            "./",
            "L0: raw dir ./ 0700 uid=1 gid=2 mtime=5; file /f 0644 'x'",
        ),
        (
            "/",
            "L0: raw dir / 0700 uid=1 gid=2 mtime=5; file /f 0644 'x'",
        ),
        (
            ".",
            "L0: raw dir . 0700 uid=1 gid=2 mtime=5; file /f 0644 'x'",
        ),
        (
            "later layer",
            "L0: file /f 0644 'x'\nL1: dir / 0700 uid=1 gid=2 mtime=5",
        ),
    ];
    for (name, spec) in cases {
        let sb = Sandbox::new();
        let img = open_spec(&sb, spec);
        let root = img.get("/");
        assert_eq!(
            (
                root.meta.mode,
                root.meta.uid,
                root.meta.gid,
                root.meta.mtime
            ),
            (0o700, 1, 2, 5),
            "{name}"
        );
        assert_eq!(img.names("/"), ["f"], "{name}");
    }
}

#[test]
fn root_defaults_without_entry() {
    let sb = Sandbox::new();
    let img = open_spec(&sb, "L0: file /f 0644 'x'");
    let root = img.get("/");
    assert_eq!(
        (
            root.meta.mode,
            root.meta.uid,
            root.meta.gid,
            root.meta.mtime
        ),
        (0o755, 0, 0, 0)
    );
    assert_eq!(root.mode(), libc::S_IFDIR | 0o755);
}

#[test]
fn dotdot_in_path_is_error() {
    for (name, spec) in [
        (
            "middle",
            "L0: file /ok 0644 'x'\nL1: raw file a/../b 0644 'x'",
        ),
        (
            "leading",
            "L0: file /ok 0644 'x'\nL1: raw file ../escape 0644 'x'",
        ),
        (
            "hard link target",
            "L0: file /ok 0644 'x'\nL1: raw hardlink l ../ok",
        ),
    ] {
        let sb = Sandbox::new();
        let err = try_open_spec(&sb, spec, None)
            .err()
            .unwrap_or_else(|| panic!("{name}: must fail"));
        let msg = message(&err);
        assert!(msg.contains("layer 1"), "{name}: {msg}");
        assert!(msg.contains(".."), "{name}: {msg}");
        assert!(
            msg.contains(sb.path("image.tar").to_str().unwrap()),
            "{name}: {msg}"
        );
    }
}

#[test]
fn raw_names_with_dot_slash_and_slash_prefixes_merge() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: raw dir ./etc/ 0700; raw file ./etc/a 0644 'a'; raw file /etc/b 0644 'b'; raw file etc//c 0644 'c'\n\
         L1: raw file ./etc/./a 0644 'A'; whiteout /etc/b",
    );
    assert_eq!(img.names("/etc"), ["a", "c"]);
    assert_eq!(img.content("/etc/a"), b"A");
    assert_eq!(img.get("/etc").meta.mode, 0o700);
}

#[test]
fn non_utf8_names() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir '/d\\xff'; file '/d\\xff/caf\\xe9' 0644 'latin1'; symlink /l '/d\\xff/caf\\xe9'; file '/sp ace;x' 0644 's'\n\
         L1: whiteout '/d\\xff/gone\\x80'; file '/d\\xff/\\xc3\\x28' 0644 'bad utf8'",
    );
    assert_eq!(
        read_node(&img.tree, &img.node_bytes(b"d\xff/caf\xe9").unwrap()),
        b"latin1"
    );
    assert_eq!(
        read_node(&img.tree, &img.node_bytes(b"d\xff/\xc3\x28").unwrap()),
        b"bad utf8"
    );
    assert_eq!(
        img.node("/l").unwrap().kind,
        NodeKind::Symlink(b"/d\xff/caf\xe9"[..].into())
    );
    assert_eq!(img.content("/sp ace;x"), b"s");
}

#[test]
fn gnu_long_names() {
    let dir = format!("/{}", "d".repeat(120));
    let file = format!("{dir}/{}", "f".repeat(200));
    let target = format!("../{}", "t".repeat(150));
    let spec = format!(
        "L0: dir {dir}; file {file} 0644 'long'; symlink /sym {target}; hardlink /hl {file}\n\
         L1: file {dir}/{} 0644 'second'",
        "g".repeat(130)
    );
    let sb = Sandbox::new();
    let img = open_spec(&sb, &spec);
    assert_eq!(img.content(&file), b"long");
    assert_eq!(
        img.content(&format!("{dir}/{}", "g".repeat(130))),
        b"second"
    );
    assert_eq!(
        img.get("/sym").kind,
        NodeKind::Symlink(target.as_bytes().into())
    );
    assert_eq!(
        img.tree.resolve(b"hl"),
        img.tree.resolve(&file.as_bytes()[1..])
    );
    assert_eq!(img.get("/hl").nlink, 2);
}

#[test]
fn pax_path_and_xattrs() {
    let long = format!("/pax/{}", "p".repeat(180));
    let spec = format!(
        "L0: dir /pax; file {long} 0644 'via pax' pax; file /short 0644 's' pax; symlink /psym /{} pax\n\
         L0: file /x 0644 'x' xattr=user.a=1 xattr=user.empty= xattr=trusted.t=v xattr='user.sp=a b;c'\n\
         L0: dir /xd xattr=user.dir=yes",
        "q".repeat(140)
    );
    let sb = Sandbox::new();
    let img = open_spec(&sb, &spec);
    assert_eq!(img.content(&long), b"via pax");
    assert_eq!(img.content("/short"), b"s");
    assert_eq!(
        img.get("/psym").kind,
        NodeKind::Symlink(format!("/{}", "q".repeat(140)).as_bytes().into())
    );
    let x = img.get("/x");
    let names: Vec<_> = x.xattrs.iter().map(|(k, _)| listing::show(k)).collect();
    assert_eq!(
        names,
        ["trusted.t", "user.a", "user.empty", "user.sp"],
        "sorted by name"
    );
    assert_eq!(x.xattr(b"user.empty"), Some(&b""[..]), "empty value kept");
    assert_eq!(x.xattr(b"user.a"), Some(&b"1"[..]));
    assert_eq!(x.xattr(b"user.sp"), Some(&b"a b;c"[..]));
    assert_eq!(img.get("/xd").xattr(b"user.dir"), Some(&b"yes"[..]));
}

#[test]
fn negative_and_fractional_mtime() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: file /base256 0644 mtime=-100 'a'; file /paxneg 0644 mtime=pax:-1.5 'b'\n\
         L0: file /paxfrac 0644 mtime=pax:1700000000.25 'c'; dir /olddir mtime=-86400; file /default 0644 'd'",
    );
    let t = |p: &str| (img.get(p).meta.mtime, img.get(p).meta.mtime_nsec);
    assert_eq!(t("/base256"), (-100, 0));
    assert_eq!(t("/paxneg"), (-2, 500_000_000));
    assert_eq!(t("/paxfrac"), (1_700_000_000, 250_000_000));
    assert_eq!(t("/olddir"), (-86400, 0));
    assert_eq!(t("/default"), (DEFAULT_MTIME, 0));
}

#[test]
fn special_mode_bits_preserved() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: file /suid 4755 'a'; file /sgid 2711 'b'; dir /tmp 1777; file /all 7777 'c'; dir /sgdir 2775; file /none 0000 'n'",
    );
    let cases = [
        ("/suid", libc::S_IFREG | 0o4755),
        ("/sgid", libc::S_IFREG | 0o2711),
        ("/tmp", libc::S_IFDIR | 0o1777),
        ("/all", libc::S_IFREG | 0o7777),
        ("/sgdir", libc::S_IFDIR | 0o2775),
        ("/none", libc::S_IFREG),
    ];
    for (p, mode) in cases {
        assert_eq!(img.get(p).mode(), mode, "{p}: {:o}", img.get(p).mode());
    }
}

#[test]
fn device_numbers() {
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /dev; char /dev/null 1 3 0666; block /dev/sda 8 0 0660 gid=6; char /dev/big 259 70000; block /dev/zero0 0 0; fifo /dev/p 0620",
    );
    let cases = [
        ("/dev/null", NodeKind::CharDev { major: 1, minor: 3 }, 0o666),
        ("/dev/sda", NodeKind::BlockDev { major: 8, minor: 0 }, 0o660),
        (
            "/dev/big",
            NodeKind::CharDev {
                major: 259,
                minor: 70000,
            },
            0o600,
        ),
        (
            "/dev/zero0",
            NodeKind::BlockDev { major: 0, minor: 0 },
            0o600,
        ),
        ("/dev/p", NodeKind::Fifo, 0o620),
    ];
    for (p, kind, mode) in cases {
        let n = img.get(p);
        assert_eq!(n.kind, kind, "{p}");
        assert_eq!(n.meta.mode, mode, "{p}");
    }
    assert_eq!(img.get("/dev/big").kind.rdev(), libc::makedev(259, 70000));
    assert_eq!(img.get("/dev/sda").meta.gid, 6);
}

#[test]
fn aufs_metadata_is_ignored() {
    // `.wh..wh.plnk` (AUFS hard-link directory) and other `.wh..wh.` names are not part of
    // the image, and neither is anything under them.
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir /d; file /d/keep 0644 'k'\n\
         L1: dir /.wh..wh.plnk 0700; file /.wh..wh.plnk/1234.5678 0644 'x'; file /.wh..wh.aufs 0644 ''; file /d/.wh..wh.orph 0644 ''",
    );
    assert_eq!(img.listing().paths(), ["/", "/d", "/d/keep"]);
}

#[test]
fn layer_upto_shows_image_after_layer_n() {
    let spec = "L0: file /a 0644 'a0'; file /b 0644 'b0'\nL1: whiteout /a; file /c 0644 'c1'\nL2: file /a 0644 'a2'; file /b 0644 'b2'";
    type Case<'a> = (usize, &'a [&'a str], &'a [(&'a str, &'a [u8])]);
    let cases: &[Case] = &[
        (0, &["/", "/a", "/b"], &[("/a", b"a0"), ("/b", b"b0")]),
        (1, &["/", "/b", "/c"], &[("/b", b"b0"), ("/c", b"c1")]),
        (2, &["/", "/a", "/b", "/c"], &[("/a", b"a2"), ("/b", b"b2")]),
    ];
    let sb = Sandbox::new();
    for (n, paths, contents) in cases {
        let img = try_open_spec(&sb, spec, Some(*n)).unwrap();
        assert_eq!(img.stack.layers.len(), n + 1);
        assert_eq!(img.listing().paths(), *paths, "--layer {n}");
        for (p, c) in *contents {
            assert_eq!(img.content(p), *c, "--layer {n} {p}");
        }
    }
    let err = try_open_spec(&sb, spec, Some(3))
        .err()
        .expect("--layer 3 of 3 layers must fail");
    assert!(matches!(err, rimgfs::error::Error::Usage(_)), "{err:?}");
    assert!(message(&err).contains("0 to 2"), "{}", message(&err));
}

#[test]
fn merge_multi_layer_listing_matches_expected() {
    // Many rules at once, compared as whole listings.
    let sb = Sandbox::new();
    let img = open_spec(
        &sb,
        "L0: dir / 0755 mtime=10; dir /etc 0755 mtime=11; file /etc/hosts 0644 'h0'; file /etc/passwd 0644 'root'\n\
         L0: dir /var/cache 0755; file /var/cache/x 0644 'x'; dir /opt 0755; file /opt/o 0644 'o'\n\
         L0: file /bin/tool 4755 'tool'; hardlink /bin/tool2 /bin/tool\n\
         L1: whiteout /etc/hosts; opaque /var/cache; file /var/cache/y 0600 uid=9 'y'; file /opt 0644 'opt'\n\
         L1: symlink /etc/alias passwd; char /dev/tty 5 0 0666 xattr=user.k=v",
    );
    let want = Listing::expected(
        "dir / 0755 mtime=10; dir /etc 0755 mtime=11; file /etc/passwd 0644 'root'\n\
         dir /var 0755 mtime=0; dir /var/cache 0755; file /var/cache/y 0600 uid=9 'y'\n\
         file /opt 0644 'opt'\n\
         dir /bin 0755 mtime=0; file /bin/tool 4755 'tool'; hardlink /bin/tool2 /bin/tool\n\
         symlink /etc/alias passwd; dir /dev 0755 mtime=0; char /dev/tty 5 0 0666 xattr=user.k=v",
    );
    img.listing().assert_same(&want, "merged tree");
}
