//! Real FUSE mounts through the `rimgfs` binary, plus its `ls`/`cat`/`inspect` output.
//!
//! Every mount is held by a guard that unmounts it even when the test fails. Without a usable
//! `/dev/fuse` the mount tests print `skipped: <reason>` and pass, except under `CI=true`.

#![allow(missing_docs)]

mod common;

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::harness::{self, BackgroundMount, is_mounted, poll_until};
use common::image::{self as img, Built};
use common::listing::{get_xattr, list_xattrs};
use common::spec::generated;
use common::*;

/// Size of the big file: a few MB and not a multiple of any block size.
const BIG: usize = 4_000_037;
/// A name longer than a ustar header holds.
const LONG: &str = "a-name-that-is-longer-than-one-hundred-bytes-so-it-needs-a-gnu-long-name-entry-in-the-layer-tar-xxxxxxxxxxxxxxxxx";

fn spec() -> String {
    format!(
        "\
L0: dir / 0755 mtime=1000; dir /etc 0700 mtime=1001; file /etc/hosts 0644 'hosts v0\\n'; file /etc/passwd 0644 'root:x:0:0::/root:/bin/sh\\n'; file /etc/shadow 0600 'secret'
L0: dir /usr/bin 0755; file /usr/bin/busybox 0755 gen=100000; hardlink /usr/bin/sh /usr/bin/busybox; hardlink /usr/bin/ls /usr/bin/busybox
L0: file /usr/bin/su 4755 'su'; file /usr/bin/wall 2755 gid=5 'wall'; dir /tmp 1777
L0: dir /var/cache/apt 0755; file /var/cache/apt/pkgcache.bin 0644 'cache'; dir /var/lib/old 0700 uid=100 gid=101; file /var/lib/old/data 0600 uid=100 gid=101 'old'
L0: dir /dev; char /dev/null 1 3 0666; block /dev/loop0 7 0 0660 gid=6; fifo /run/initctl 0600
L1: whiteout /etc/hosts; opaque /var/cache/apt; file /var/cache/apt/new 0644 'new'; whiteout /var/lib/old
L1: file /big.bin 0644 gen={BIG}; file /etc/motd 0644 'hello' xattr=user.comment=greeting xattr=user.empty= xattr=trusted.rimgfs-test=t
L1: symlink /bin usr/bin; symlink /etc/localtime /usr/share/zoneinfo/UTC; hardlink /etc/passwd-link /etc/passwd
L1: dir /etc 0755 mtime=2000 xattr=user.dir=d
L2: file /etc/hosts 0644 'hosts v2\\n' mtime=-5; file '/caf\\xe9' 0644 'latin1'; file /long/{LONG} 0644 'long' mtime=pax:1700000000.5
"
    )
}

fn expected() -> Listing {
    Listing::expected(&format!(
        "\
dir / 0755 mtime=1000; dir /etc 0755 mtime=2000 xattr=user.dir=d; file /etc/hosts 0644 'hosts v2\\n' mtime=-5; file /etc/shadow 0600 'secret'
file /etc/passwd 0644 'root:x:0:0::/root:/bin/sh\\n'; hardlink /etc/passwd-link /etc/passwd
file /etc/motd 0644 'hello' xattr=user.comment=greeting xattr=user.empty= xattr=trusted.rimgfs-test=t
symlink /etc/localtime /usr/share/zoneinfo/UTC
dir /usr mtime=0; dir /usr/bin 0755; file /usr/bin/busybox 0755 gen=100000; hardlink /usr/bin/sh /usr/bin/busybox; hardlink /usr/bin/ls /usr/bin/busybox
file /usr/bin/su 4755 'su'; file /usr/bin/wall 2755 gid=5 'wall'; dir /tmp 1777
dir /var mtime=0; dir /var/cache mtime=0; dir /var/cache/apt 0755; file /var/cache/apt/new 0644 'new'; dir /var/lib mtime=0
dir /dev; char /dev/null 1 3 0666; block /dev/loop0 7 0 0660 gid=6; dir /run mtime=0; fifo /run/initctl 0600
file /big.bin 0644 gen={BIG}; symlink /bin usr/bin; file '/caf\\xe9' 0644 'latin1'
dir /long mtime=0; file /long/{LONG} 0644 'long' mtime=pax:1700000000.5
"
    ))
}

/// The test image: an OCI archive whose layers are gzip, zstd and plain, so the layer digests
/// (blob digests) differ from the diff_ids.
fn image() -> ImageDef {
    ImageDef::from_spec(&spec())
        .layer_codec(0, Codec::Gzip)
        .layer_codec(1, Codec::Zstd)
        .with_ref("example.com/rimgfs/test:1")
}

/// Writes the test image into the sandbox; returns its path and blobs.
fn write_image(sb: &Sandbox) -> (PathBuf, Built) {
    let image = image();
    let p = sb.write(
        "image.tar",
        Shape::OciArchive,
        std::slice::from_ref(&image),
        Codec::None,
    );
    (p, image.build())
}

/// Mounts `image` with the sandbox's cache.
fn mount(sb: &Sandbox, image: &Path) -> Option<MountGuard> {
    MountGuard::start(MountOpts::new(image, &sb.cache()))
}

#[test]
fn mount_listing_matches_expected() {
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    let Some(m) = mount(&sb, &p) else { return };
    let got = Listing::walk(&m.mnt);
    got.assert_same(&expected(), "mounted tree");
    // The mount serves exactly what the library builds.
    let lib = open_path(&p, &sb.cache()).unwrap();
    got.assert_same(&lib.listing(), "mount vs library");
    m.unmount();
}

#[test]
fn mount_reads_big_file_at_odd_offsets() {
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    let Some(m) = mount(&sb, &p) else { return };
    let want = generated(BIG, BIG as u64);
    let path = m.at("/big.bin");
    assert_eq!(std::fs::read(&path).unwrap(), want, "whole file");
    // Files are closed before teardown: an open file keeps the mount busy.
    let pf = std::fs::File::open(&path).unwrap();
    let offsets = [
        0,
        1,
        511,
        4095,
        4096,
        4097,
        65535,
        131_073,
        (1 << 20) - 3,
        BIG - 4097,
        BIG - 1,
        BIG,
        BIG + 100,
    ];
    let lens = [1, 7, 4096, 65_537, 300_001];
    for off in offsets {
        for len in lens {
            let mut buf = vec![0u8; len];
            let mut got = 0;
            // pread may return short; loop until EOF or full.
            loop {
                let n = pf.read_at(&mut buf[got..], (off + got) as u64).unwrap();
                got += n;
                if n == 0 || got == len {
                    break;
                }
            }
            let end = (off + len).min(BIG);
            let expect = if off >= BIG { &[][..] } else { &want[off..end] };
            assert_eq!(got, expect.len(), "read_at({off}, {len}) length");
            assert!(buf[..got] == *expect, "read_at({off}, {len}) content");
        }
    }
    // Sequential reads with an odd buffer size, after a seek.
    let mut f = std::fs::File::open(&path).unwrap();
    f.seek(SeekFrom::Start(12_345)).unwrap();
    let mut all = Vec::new();
    let mut buf = vec![0u8; 12_347];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    assert!(all == want[12_345..], "sequential read after seek");
    drop((pf, f));
    // Parallel readers see the same bytes.
    std::thread::scope(|s| {
        for t in 0..4usize {
            let (path, want) = (&path, &want);
            s.spawn(move || {
                let f = std::fs::File::open(path).unwrap();
                let mut buf = vec![0u8; 100_003];
                for i in 0..20 {
                    let off = (t * 977_111 + i * 181_081) % (BIG - buf.len());
                    f.read_exact_at(&mut buf, off as u64).unwrap();
                    assert!(
                        buf == want[off..off + buf.len()],
                        "thread {t} read at {off}"
                    );
                }
            });
        }
    });
    // A hard-linked file reads through every name.
    let bb = generated(100_000, 100_000);
    for name in ["/usr/bin/busybox", "/usr/bin/sh", "/bin/ls"] {
        assert_eq!(std::fs::read(m.at(name)).unwrap(), bb, "{name}");
    }
    m.unmount();
}

#[test]
fn mount_xattr_provenance_is_answered_not_listed() {
    let sb = Sandbox::new();
    let (p, built) = write_image(&sb);
    let Some(m) = mount(&sb, &p) else { return };
    let label = |i: usize| format!("{i} {}", built.layers[i].digest);
    let cases = [
        ("/", 0),
        ("/etc", 1), // a directory over a directory takes the upper layer
        ("/etc/hosts", 2),
        ("/etc/passwd", 0),
        ("/etc/passwd-link", 0),
        ("/etc/motd", 1),
        ("/usr", 0), // implicit parent
        ("/var/cache/apt/new", 1),
        ("/bin", 1), // a symlink, not followed
        ("/dev/null", 0),
        ("/long", 2),
    ];
    for (path, layer) in cases {
        let names = list_xattrs(&m.at(path)).unwrap();
        assert!(
            !names.iter().any(|n| n == b"user.rimgfs.layer"),
            "{path}: listed: {names:?}"
        );
        let got = get_xattr(&m.at(path), b"user.rimgfs.layer");
        let ft = std::fs::symlink_metadata(m.at(path)).unwrap().file_type();
        if !ft.is_file() && !ft.is_dir() {
            // The kernel refuses `user.*` attributes on anything but regular files and
            // directories (ENODATA for reads) before asking the filesystem, so provenance
            // of symlinks and device nodes cannot be read under this name.
            assert_eq!(
                got.unwrap_err().raw_os_error(),
                Some(libc::ENODATA),
                "{path}"
            );
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("getxattr {path}: {e}"));
        assert_eq!(String::from_utf8(got).unwrap(), label(layer), "{path}");
    }
    let mut motd = list_xattrs(&m.at("/etc/motd")).unwrap();
    motd.sort();
    assert_eq!(
        motd,
        [&b"trusted.rimgfs-test"[..], b"user.comment", b"user.empty"]
    );
    assert_eq!(get_xattr(&m.at("/etc/motd"), b"user.empty").unwrap(), b"");
    assert!(list_xattrs(&m.at("/etc/passwd")).unwrap().is_empty());
    let e = get_xattr(&m.at("/etc/passwd"), b"user.nothing").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENODATA), "{e}");
    m.unmount();
}

#[test]
fn mount_statfs_reports_image_size() {
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    // Read-only: nothing free (a writable mount reports its upper filesystem's free space).
    let Some(m) = MountGuard::start(MountOpts::new(&p, &sb.cache()).args(&["--read-only"])) else {
        return;
    };
    let want = expected();
    // Each inode once: regular files by hard-link group.
    let mut seen = HashSet::new();
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    for (path, i) in &want.0 {
        if seen.insert(i.link_group.clone().unwrap_or_else(|| path.clone())) {
            inodes += 1;
            if i.kind == '-' {
                bytes += i.size;
            }
        }
    }
    let st = nix::sys::statvfs::statvfs(&m.mnt).unwrap();
    assert_eq!(st.fragment_size(), 4096);
    assert_eq!(st.blocks() as u64, bytes.div_ceil(4096), "blocks");
    assert_eq!(st.files() as u64, inodes, "inodes");
    assert_eq!(
        (st.blocks_free(), st.blocks_available(), st.files_free()),
        (0, 0, 0)
    );
    assert_eq!(st.name_max(), 255);
    assert!(
        st.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
        "{:?}",
        st.flags()
    );
    assert!(
        st.flags().contains(nix::sys::statvfs::FsFlags::ST_NOSUID),
        "{:?}",
        st.flags()
    );
    assert!(
        st.flags().contains(nix::sys::statvfs::FsFlags::ST_NODEV),
        "{:?}",
        st.flags()
    );
    let fs = nix::sys::statfs::statfs(&m.mnt).unwrap();
    assert_eq!(fs.filesystem_type(), nix::sys::statfs::FUSE_SUPER_MAGIC);
    let entry = harness::mount_entry(&m.mnt).unwrap();
    assert!(entry.contains(" - fuse"), "{entry}");
    m.unmount();
}

#[test]
fn mount_read_only_refuses_every_change() {
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    let Some(m) = MountGuard::start(MountOpts::new(&p, &sb.cache()).args(&["--read-only"])) else {
        return;
    };
    let erofs = |r: std::io::Result<()>, what: &str| {
        let e = r
            .err()
            .unwrap_or_else(|| panic!("{what}: succeeded on a read-only mount"));
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{what}: {e}");
    };
    erofs(std::fs::write(m.at("/new"), b"x"), "create");
    erofs(
        std::fs::OpenOptions::new()
            .write(true)
            .open(m.at("/etc/passwd"))
            .map(drop),
        "open for write",
    );
    erofs(std::fs::create_dir(m.at("/newdir")), "mkdir");
    erofs(std::fs::remove_file(m.at("/etc/passwd")), "unlink");
    erofs(
        std::fs::rename(m.at("/etc/passwd"), m.at("/etc/p2")),
        "rename",
    );
    erofs(std::os::unix::fs::symlink("x", m.at("/sym")), "symlink");
    erofs(
        std::fs::set_permissions(
            m.at("/etc/passwd"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        ),
        "chmod",
    );
    // The image is unchanged.
    assert_eq!(
        std::fs::read(m.at("/etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    m.unmount();
}

#[test]
fn mount_lookup_errors() {
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    let Some(m) = mount(&sb, &p) else { return };
    let errno = |path: PathBuf| std::fs::symlink_metadata(&path).unwrap_err().raw_os_error();
    assert_eq!(errno(m.at("/nope")), Some(libc::ENOENT));
    assert_eq!(errno(m.at("/etc/hosts/x")), Some(libc::ENOTDIR));
    assert_eq!(
        errno(m.at(&format!("/{}", "n".repeat(300)))),
        Some(libc::ENAMETOOLONG)
    );
    // Whited-out and opaque-hidden paths are gone.
    for gone in [
        "/var/lib/old",
        "/var/cache/apt/pkgcache.bin",
        "/etc/.wh.hosts",
        "/var/cache/apt/.wh..wh..opq",
    ] {
        assert_eq!(errno(m.at(gone)), Some(libc::ENOENT), "{gone}");
    }
    // A symlink to a directory is followed by the kernel.
    assert_eq!(std::fs::read(m.at("/bin/su")).unwrap(), b"su");
    assert_eq!(
        std::fs::read(m.at("/caf\u{e9}")).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::NotFound)
    );
    let latin1 = m.mnt.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    assert_eq!(std::fs::read(latin1).unwrap(), b"latin1");
    m.unmount();
}

/// FUSE carries device numbers in 32 bits (12 for the major, 20 for the minor), as the
/// kernel's own: a device it cannot number is listed, but `stat` of it fails with EOVERFLOW
/// as the kernel's `stat(2)` does, instead of showing another device.
#[test]
fn mount_device_numbers_beyond_fuse_fail_stat() {
    let sb = Sandbox::new();
    let spec = "L0: dir /dev; char /dev/null 1 3 0666; char /dev/wide 4095 1048575; \
                char /dev/huge 4096 1; block /dev/far 8 1048576";
    let image = sb.image(spec);
    let cache = sb.cache();
    let Some(m) = MountGuard::mount(&image, &["--cache-dir", cache.to_str().unwrap()]) else {
        return;
    };
    let mut names: Vec<String> = std::fs::read_dir(m.at("/dev"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let rdev = |p: &str| {
        std::fs::symlink_metadata(m.at(p)).map(|md| std::os::unix::fs::MetadataExt::rdev(&md))
    };
    let null = rdev("/dev/null").unwrap();
    let wide = rdev("/dev/wide").unwrap();
    let errs: Vec<_> = ["/dev/huge", "/dev/far"]
        .iter()
        .map(|p| rdev(p).map_err(|e| e.raw_os_error()))
        .collect();
    m.unmount();
    assert_eq!(names, ["far", "huge", "null", "wide"]);
    assert_eq!(null, libc::makedev(1, 3));
    assert_eq!(wide, libc::makedev(4095, 1048575));
    assert_eq!(
        errs,
        [Err(Some(libc::EOVERFLOW)), Err(Some(libc::EOVERFLOW))]
    );
}

#[test]
fn mount_large_directory_lists_every_entry() {
    // Enough entries that readdir needs several calls and resumes from offsets.
    const N: usize = 3000;
    let mut spec = String::from("L0: dir /many");
    for i in 0..N {
        spec.push_str(&format!(
            "; file /many/entry-with-a-longish-name-{i:05} 0644 '{i}'"
        ));
    }
    spec.push_str("\nL1: ");
    spec.push_str(
        &(0..N)
            .step_by(3)
            .map(|i| format!("whiteout /many/entry-with-a-longish-name-{i:05}"))
            .collect::<Vec<_>>()
            .join("; "),
    );
    let sb = Sandbox::new();
    let p = sb.image(&spec);
    let Some(m) = mount(&sb, &p) else { return };
    let mut names: Vec<String> = std::fs::read_dir(m.at("/many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    let want: Vec<String> = (0..N)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("entry-with-a-longish-name-{i:05}"))
        .collect();
    assert_eq!(names.len(), want.len());
    assert_eq!(names, want);
    assert_eq!(
        std::fs::read(m.at("/many/entry-with-a-longish-name-02999")).unwrap(),
        b"2999"
    );
    m.unmount();
}

#[test]
fn mount_layer_option_shows_lower_image() {
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    let Some(m) = MountGuard::start(MountOpts::new(&p, &sb.cache()).args(&["--layer", "0"])) else {
        return;
    };
    assert_eq!(std::fs::read(m.at("/etc/hosts")).unwrap(), b"hosts v0\n");
    assert!(m.at("/var/lib/old/data").exists());
    assert!(!m.at("/big.bin").exists());
    assert_eq!(
        std::fs::metadata(m.at("/etc")).unwrap().mode() & 0o7777,
        0o700
    );
    m.unmount();
}

/// `rimgfs ARGS... --cache-dir CACHE`.
fn cli(sb: &Sandbox, args: &[&str]) -> Output {
    let cache = sb.cache();
    let mut v: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_ref()).collect();
    v.push("--cache-dir".as_ref());
    v.push(cache.as_os_str());
    rimgfs(&v)
}

#[test]
fn cli_ls_lists_merged_directories() {
    let sb = Sandbox::new();
    let (p, built) = write_image(&sb);
    let img = p.to_str().unwrap();
    let out = cli(&sb, &["ls", img, "/etc"]).success();
    assert_eq!(
        out.stdout.clone(),
        "hosts\nlocaltime\nmotd\npasswd\npasswd-link\nshadow\n"
    );
    let root = cli(&sb, &["ls", img]).success();
    assert_eq!(
        root.stdout_bytes,
        b"big.bin\nbin\ncaf\xe9\ndev\netc\nlong\nrun\ntmp\nusr\nvar\n",
        "{}",
        root.stdout.clone()
    );
    // -l: mode, links, owner, group, size, mtime, name [-> target].
    let long = cli(&sb, &["ls", "-l", img, "/usr/bin"])
        .success()
        .stdout
        .clone();
    let fields = |name: &str| -> Vec<String> {
        let line = long
            .lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("{name} in:\n{long}"));
        line.split_whitespace().map(str::to_string).collect()
    };
    assert_eq!(
        fields("su"),
        ["-rwsr-xr-x", "1", "0", "0", "2", "1700000000", "su"]
    );
    assert_eq!(
        fields("wall"),
        ["-rwxr-sr-x", "1", "0", "5", "4", "1700000000", "wall"]
    );
    assert_eq!(
        fields("sh"),
        ["-rwxr-xr-x", "3", "0", "0", "100000", "1700000000", "sh"]
    );
    let etc = cli(&sb, &["ls", "-l", img, "/etc"])
        .success()
        .stdout
        .clone();
    assert!(
        etc.lines()
            .any(|l| l.starts_with("lrwxrwxrwx")
                && l.ends_with(" localtime -> /usr/share/zoneinfo/UTC")),
        "{etc}"
    );
    assert!(
        etc.lines()
            .any(|l| l.starts_with("-rw-r--r--") && l.contains(" -5 ") && l.ends_with(" hosts")),
        "{etc}"
    );
    let dev = cli(&sb, &["ls", "-l", img, "/dev"])
        .success()
        .stdout
        .clone();
    assert!(
        dev.lines()
            .any(|l| l.starts_with("crw-rw-rw-") && l.contains("1, 3") && l.ends_with(" null")),
        "{dev}"
    );
    assert!(
        dev.lines()
            .any(|l| l.starts_with("brw-rw----") && l.contains("7, 0") && l.ends_with(" loop0")),
        "{dev}"
    );
    let tmp = cli(&sb, &["ls", "-l", img, "/"]).success().stdout.clone();
    assert!(
        tmp.lines()
            .any(|l| l.starts_with("drwxrwxrwt") && l.ends_with(" tmp")),
        "{tmp}"
    );
    // -R: full paths of everything below.
    let rec = cli(&sb, &["ls", "-R", img, "/var"])
        .success()
        .stdout
        .clone();
    let mut lines: Vec<&str> = rec.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "/var/cache",
            "/var/cache/apt",
            "/var/cache/apt/new",
            "/var/lib"
        ],
        "{rec}"
    );
    // --layers: the providing layer of each entry.
    let lay = cli(&sb, &["ls", "-l", "--layers", img, "/etc"])
        .success()
        .stdout
        .clone();
    let hosts = lay.lines().find(|l| l.ends_with(" hosts")).unwrap();
    assert!(
        hosts.contains(&format!("[2 {}]", built.layers[2].digest)),
        "{hosts}"
    );
    let passwd = lay.lines().find(|l| l.ends_with(" passwd")).unwrap();
    assert!(
        passwd.contains(&format!("[0 {}]", built.layers[0].digest)),
        "{passwd}"
    );
    // --layer N.
    let l0 = cli(&sb, &["ls", "--layer", "0", img, "/etc"]).success();
    assert_eq!(l0.stdout.clone(), "hosts\npasswd\nshadow\n");
    // A missing path is an error, one line, exit 1.
    let e = cli(&sb, &["ls", img, "/nope"]);
    assert_eq!(e.code, Some(1), "{e:?}");
    assert_eq!(e.stderr.trim().lines().count(), 1, "{}", e.stderr);
    assert!(e.stderr.contains("/nope"), "{}", e.stderr);
}

#[test]
fn cli_cat_follows_symlinks_inside_image() {
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    let img = p.to_str().unwrap();
    assert_eq!(
        cli(&sb, &["cat", img, "/etc/hosts"]).success().stdout_bytes,
        b"hosts v2\n"
    );
    assert_eq!(
        cli(&sb, &["cat", img, "etc/hosts"]).success().stdout_bytes,
        b"hosts v2\n"
    );
    assert_eq!(
        cli(&sb, &["cat", "--layer", "0", img, "/etc/hosts"])
            .success()
            .stdout_bytes,
        b"hosts v0\n"
    );
    assert_eq!(
        cli(&sb, &["cat", img, "/bin/busybox"])
            .success()
            .stdout_bytes,
        generated(100_000, 100_000)
    );
    assert_eq!(
        cli(&sb, &["cat", img, "/big.bin"]).success().stdout_bytes,
        generated(BIG, BIG as u64)
    );
    assert_eq!(
        cli(&sb, &["cat", img, &format!("/long/{LONG}")])
            .success()
            .stdout_bytes,
        b"long"
    );
    for (path, why) in [
        ("/etc", "directory"),
        ("/nope", "no such"),
        ("/dev/null", "not a regular file"),
    ] {
        let e = cli(&sb, &["cat", img, path]);
        assert_eq!(e.code, Some(1), "{path}: {e:?}");
        assert!(e.stdout_bytes.is_empty(), "{path}");
        assert_eq!(e.stderr.trim().lines().count(), 1, "{path}: {}", e.stderr);
        assert!(
            e.stderr.contains(path) && e.stderr.contains(why),
            "{path}: {}",
            e.stderr
        );
    }
}

#[test]
fn cli_inspect_json_describes_image() {
    let sb = Sandbox::new();
    let (p, built) = write_image(&sb);
    let out = cli(&sb, &["inspect", "--json", p.to_str().unwrap()]).success();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout_bytes).expect("inspect --json prints JSON");
    assert_eq!(v["source"], p.to_str().unwrap());
    assert_eq!(v["refs"], serde_json::json!(["example.com/rimgfs/test:1"]));
    assert_eq!(v["platform"], "linux/amd64");
    assert_eq!(v["manifest_digest"], built.manifest.digest.as_str());
    assert_eq!(v["config_digest"], built.config.digest.as_str());
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for (i, (l, comp)) in layers.iter().zip(["gzip", "zstd", "none"]).enumerate() {
        assert_eq!(l["index"], i);
        assert_eq!(l["digest"], built.layers[i].digest.as_str());
        assert_eq!(l["diff_id"], built.diff_ids[i].as_str());
        assert_eq!(l["compression"], comp);
        assert_eq!(l["size"], built.layers[i].bytes.len());
        assert_eq!(l["uncompressed_size"], image().layers[i].len());
    }
    assert_eq!(v["history"].as_array().unwrap().len(), 3);
    assert_eq!(v["config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    // Text form.
    let text = cli(&sb, &["inspect", p.to_str().unwrap()])
        .success()
        .stdout
        .clone();
    assert!(text.contains("example.com/rimgfs/test:1"), "{text}");
    for l in &built.layers {
        assert!(text.contains(&l.digest), "{text}");
    }
    // Errors name the file, one line, exit 1; usage errors exit 2.
    let missing = sb.path("nope.tar");
    let e = cli(&sb, &["inspect", missing.to_str().unwrap()]);
    assert_eq!(e.code, Some(1), "{e:?}");
    assert_eq!(e.stderr.trim().lines().count(), 1, "{}", e.stderr);
    assert!(e.stderr.contains(missing.to_str().unwrap()), "{}", e.stderr);
    let e = cli(
        &sb,
        &["inspect", "--platform", "linux", p.to_str().unwrap()],
    );
    assert_eq!(e.code, Some(2), "{e:?}");
}

/// Mount errors: one line naming the mount point, non-zero exit, nothing mounted.
#[track_caller]
fn assert_mount_error(out: &Output, mnt: &Path, why: &str) {
    assert_ne!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stderr.trim().lines().count(),
        1,
        "one line: {}",
        out.stderr
    );
    assert!(out.stderr.contains(mnt.to_str().unwrap()), "{}", out.stderr);
    assert!(out.stderr.contains(why), "{why:?} in {}", out.stderr);
}

#[test]
fn mount_point_errors() {
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    let img = p.to_str().unwrap();
    let cache = sb.cache();
    let try_mount = |mnt: &Path, fg: bool| {
        let mut args = vec![
            "mount".as_ref(),
            img.as_ref(),
            mnt.as_os_str(),
            "--cache-dir".as_ref(),
            cache.as_os_str(),
        ];
        if fg {
            args.push("-f".as_ref());
        }
        rimgfs(&args)
    };
    let missing = sb.path("no-such-dir");
    let file = sb.path("a-file");
    std::fs::write(&file, b"x").unwrap();
    for fg in [true, false] {
        let out = try_mount(&missing, fg);
        assert_mount_error(&out, &missing, "does not exist");
        assert!(!is_mounted(&missing));
        let out = try_mount(&file, fg);
        assert_mount_error(&out, &file, "not a directory");
        assert!(!is_mounted(&file));
    }
    // Already mounted: refused, and the first mount is still the only one.
    let Some(m) = mount(&sb, &p) else { return };
    for fg in [true, false] {
        let out = try_mount(&m.mnt, fg);
        assert_mount_error(&out, &m.mnt, "busy");
        let count = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(m.mnt.to_str().unwrap()))
            .count();
        assert_eq!(count, 1, "stacked mounts on {}", m.mnt.display());
    }
    assert_eq!(std::fs::read(m.at("/etc/hosts")).unwrap(), b"hosts v2\n");
    m.unmount();
    // Bad options are usage errors (exit 2), and nothing is mounted.
    let mnt = sb.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let out = rimgfs(&[
        "mount".as_ref(),
        img.as_ref(),
        mnt.as_os_str(),
        "-o".as_ref(),
        "bogus".as_ref(),
        "--cache-dir".as_ref(),
        cache.as_os_str(),
    ]);
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(!is_mounted(&mnt));
}

#[test]
fn mount_background_returns_once_mounted_and_umount_unmounts() {
    if !harness::require_fuse() {
        return;
    }
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    let bg = BackgroundMount::new();
    let out = rimgfs(&[
        "mount".as_ref(),
        p.as_os_str(),
        bg.mnt.as_os_str(),
        "--cache-dir".as_ref(),
        sb.cache().as_os_str(),
    ]);
    assert_eq!(out.code, Some(0), "{out:?}");
    // No polling: the command returns only once the mount is usable.
    assert!(
        is_mounted(&bg.mnt),
        "not mounted when `rimgfs mount` returned"
    );
    assert_eq!(
        std::fs::read(bg.mnt.join("etc/hosts")).unwrap(),
        b"hosts v2\n"
    );
    let daemons = harness::processes_mentioning(&bg.mnt);
    assert_eq!(daemons.len(), 1, "one daemon: {daemons:?}");
    let out = rimgfs(&["umount".as_ref(), bg.mnt.as_os_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!is_mounted(&bg.mnt), "still mounted after `rimgfs umount`");
    // The daemon exits on its own.
    assert!(
        poll_until(harness::EXIT_TIMEOUT, || harness::processes_mentioning(
            &bg.mnt
        )
        .is_empty()),
        "daemon {daemons:?} still running after umount"
    );
    // Unmounting again says it is not mounted.
    let out = rimgfs(&["umount".as_ref(), bg.mnt.as_os_str()]);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains(bg.mnt.to_str().unwrap()) && out.stderr.contains("not a mount point"),
        "{}",
        out.stderr
    );
}

#[test]
fn mount_signal_unmounts_cleanly() {
    use nix::sys::signal::Signal;
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        let sb = Sandbox::new();
        let p = sb.image("L0: file /f 0644 'x'");
        let Some(mut m) = mount(&sb, &p) else { return };
        assert_eq!(std::fs::read(m.at("/f")).unwrap(), b"x");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(m.pid()), sig).unwrap();
        assert!(
            poll_until(harness::UNMOUNT_TIMEOUT, || !is_mounted(&m.mnt)),
            "{sig}: still mounted"
        );
        let status = m
            .wait_exit(harness::EXIT_TIMEOUT)
            .unwrap_or_else(|| panic!("{sig}: daemon did not exit"));
        assert!(
            status.success(),
            "{sig}: daemon exit status {status:?}; stderr: {}",
            m.stderr()
        );
        m.unmount();
    }
}

#[test]
fn mount_sigkill_leaves_dead_mount_that_umount_cleans() {
    let sb = Sandbox::new();
    let p = sb.image("L0: file /f 0644 'x'");
    let Some(mut m) = mount(&sb, &p) else { return };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(
        m.wait_exit(harness::EXIT_TIMEOUT).is_some(),
        "SIGKILL did not end the daemon"
    );
    assert!(
        is_mounted(&m.mnt),
        "the kernel keeps a mount whose daemon died"
    );
    let e = std::fs::metadata(&m.mnt).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    // Mounting over it is refused with a hint.
    let out = rimgfs(&[
        "mount".as_ref(),
        p.as_os_str(),
        m.mnt.as_os_str(),
        "-f".as_ref(),
        "--cache-dir".as_ref(),
        sb.cache().as_os_str(),
    ]);
    assert_mount_error(&out, &m.mnt, "umount");
    let out = rimgfs(&["umount".as_ref(), m.mnt.as_os_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(!is_mounted(&m.mnt));
    assert!(std::fs::metadata(&m.mnt).unwrap().is_dir());
    m.unmount();
}

/// Whether /dev/fuse is open to every user, as Debian's udev rule makes it (0666).
/// fusermount3 opens it with the caller's own rights, so without this no user can mount.
fn dev_fuse_world_usable() -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata("/dev/fuse").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006)
}

#[test]
fn mount_by_unprivileged_user() {
    if !harness::require_fuse() {
        return;
    }
    if !dev_fuse_world_usable() {
        harness::skip("/dev/fuse is not 0666, so no unprivileged user can mount FUSE here");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        harness::skip("creating the test user needs root");
        return;
    }
    let Some(ids) = harness::test_user() else {
        panic!("could not create the unprivileged test user");
    };
    let sb = Sandbox::new();
    let (p, _) = write_image(&sb);
    let xdg = sb.path("xdg");
    std::fs::create_dir(&xdg).unwrap();
    for d in [sb.dir.path(), &xdg, &p] {
        nix::unistd::chown(d, Some(ids.0.into()), Some(ids.1.into())).unwrap();
    }
    let mut opts = MountOpts::new(&p, &sb.cache());
    opts.cache_dir = None;
    opts.env = vec![("XDG_CACHE_HOME".into(), xdg.clone().into())];
    opts.wrapper = [
        "setpriv",
        &format!("--reuid={}", ids.0),
        &format!("--regid={}", ids.1),
        "--clear-groups",
    ]
    .iter()
    .map(Into::into)
    .collect();
    opts.owner = Some(ids);
    let Some(m) = MountGuard::start(opts) else {
        return;
    };
    let entry = harness::mount_entry(&m.mnt).unwrap();
    assert!(
        entry.contains(&format!("user_id={}", ids.0)),
        "mounted as the user: {entry}"
    );
    // The user reads the mount.
    let cat = harness::as_user(ids, "cat", &[m.at("/etc/hosts").as_os_str()]);
    assert_eq!(
        (cat.code, cat.stdout.as_str()),
        (Some(0), "hosts v2\n"),
        "{}",
        cat.stderr
    );
    let ls = harness::as_user(ids, "ls", &[m.at("/etc").as_os_str()]);
    assert_eq!(
        ls.stdout.clone(),
        "hosts\nlocaltime\nmotd\npasswd\npasswd-link\nshadow\n",
        "{}",
        ls.stderr
    );
    let big = harness::as_user(ids, "sha256sum", &[m.at("/big.bin").as_os_str()]);
    assert!(
        big.stdout
            .clone()
            .starts_with(&img::sha256_hex(&generated(BIG, BIG as u64))),
        "{big:?}"
    );
    // Permissions are the image's: the user cannot read a root-only file.
    let shadow = harness::as_user(ids, "cat", &[m.at("/etc/shadow").as_os_str()]);
    assert_ne!(shadow.code, Some(0), "{shadow:?}");
    assert!(
        shadow.stderr.contains("Permission denied"),
        "{}",
        shadow.stderr
    );
    // The cache went to the user's XDG_CACHE_HOME.
    assert!(
        xdg.join("rimgfs/index").is_dir(),
        "no cache under {}",
        xdg.display()
    );
    // The user unmounts it (through fusermount3).
    let out = harness::as_user(ids, harness::bin(), &["umount".as_ref(), m.mnt.as_os_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(poll_until(harness::UNMOUNT_TIMEOUT, || !is_mounted(&m.mnt)));
    m.unmount();
}

#[test]
fn mount_guard_cleans_up_after_panic() {
    // A failing test still unmounts: run a panicking closure holding a guard.
    let sb = Sandbox::new();
    let p = sb.image("L0: file /f 0644 'x'");
    if !harness::require_fuse() {
        return;
    }
    let mnt = std::sync::Mutex::new(PathBuf::new());
    let r = std::panic::catch_unwind(|| {
        let Some(m) = mount(&sb, &p) else { return };
        *mnt.lock().unwrap() = m.mnt.clone();
        panic!("deliberate failure while mounted");
    });
    assert!(r.is_err());
    let mnt = mnt.into_inner().unwrap();
    assert!(!mnt.as_os_str().is_empty());
    assert!(!is_mounted(&mnt), "{} left mounted", mnt.display());
    assert!(!mnt.exists(), "{} left behind", mnt.display());
}
