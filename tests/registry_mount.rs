//! `docker://` images through the binary, against a real registry (docker-registry, filled by
//! skopeo and podman): every image kind mounted and compared entry by entry with `umoci
//! unpack` of the same image copied out with skopeo; the one-shot commands; a mount by a user
//! who is not root; and, through the recording proxy, what a mount asks the registry for: a
//! warm mount asks for no blob, a table-of-contents image's mount reads under 1% of its
//! blobs, one range is fetched once by readers in two processes, every fault ends in the
//! right bytes or EIO, a registry gone (or a blob deleted) while mounted fails only uncached
//! reads, and `--offline` mounts a cached image without the registry.
#![allow(missing_docs)]

mod common;

use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use common::harness::{as_user, bin, poll_until, run_command, test_user};
use common::image::{ImageDef, oci_multiplatform};
use common::proxy::{Fault, Proxy};
use common::registry::{Format, Registry, age_tag_resolutions, files_below};
use common::remote::{estargz_layers, write_layout};
use common::spec::Spec;
use common::{Codec, MountGuard, MountOpts, Output, Sandbox, engines, require, run_ok};

/// Small and big files, links, a device, a fifo, xattrs, owners, a whiteout.
const SPEC: &str = "
L0: dir /etc; file /etc/hosts 0644 'a host\\n'; file /etc/passwd 0600 'root:x:0:0\\n'
L0: symlink /etc/localtime /usr/share/zoneinfo/UTC; hardlink /etc/h2 /etc/hosts
L0: char /dev-null 1 3 0666; fifo /run-p; dir /usr 0755 mtime=1234
L0: file /usr/small 0644 'x' xattr=user.k=v uid=12 gid=34
L1: file /usr/big 0755 gen=3000000; file /usr/mid 0644 gen=300000; whiteout /etc/passwd
L1: file /usr/tail 0644 'the end\\n'
";

/// Files a table-of-contents image holds, one chunk each: `/f/N` is [`small`]`(N)`.
const SMALL_FILES: usize = 10;

/// The content of `/f/N`.
fn small(n: usize) -> Vec<u8> {
    format!("small file {n}\n").repeat(40).into_bytes()
}

/// A TOC image: [`SMALL_FILES`] small files and a big one of `big` bytes.
fn toc_spec(big: usize) -> String {
    let mut s = String::from("L0: dir /f; dir /b");
    for n in 0..SMALL_FILES {
        s.push_str(&format!(
            "; file /f/{n} 0644 '{}'",
            String::from_utf8(small(n)).unwrap().replace('\n', "\\n")
        ));
    }
    s.push_str(&format!("\nL0: file /b/big 0644 gen={big}\n"));
    s
}

/// What every rimgfs run of a test sees: a private HOME, an empty registries.conf and its
/// own cache, in a sandbox.
struct Ctx {
    sb: Sandbox,
    vars: Vec<(OsString, OsString)>,
}

impl Ctx {
    fn new() -> Ctx {
        let sb = Sandbox::new();
        let home = sb.path("home");
        std::fs::create_dir_all(&home).unwrap();
        let conf = sb.path("registries.conf");
        std::fs::write(&conf, "").unwrap();
        Ctx {
            vars: vec![
                ("HOME".into(), home.into()),
                ("CONTAINERS_REGISTRIES_CONF".into(), conf.into()),
            ],
            sb,
        }
    }

    /// A mount of `reference` over plain HTTP with this context's cache and `extra` options.
    fn mount(&self, reference: &str, extra: &[&str]) -> Option<MountGuard> {
        self.mount_with(reference, &self.sb.cache(), extra)
    }

    fn mount_with(&self, reference: &str, cache: &Path, extra: &[&str]) -> Option<MountGuard> {
        let mut o = MountOpts::new(reference, cache)
            .args(&["--tls-verify=false"])
            .args(extra);
        o.env = self.vars.clone();
        MountGuard::start(o)
    }

    /// `rimgfs ARGS... --cache-dir CACHE --tls-verify=false`.
    fn run(&self, args: &[&str]) -> Output {
        let mut cmd = std::process::Command::new(bin());
        cmd.args(args)
            .arg("--cache-dir")
            .arg(self.sb.cache())
            .arg("--tls-verify=false");
        for k in ["XDG_RUNTIME_DIR", "DOCKER_CONFIG", "REGISTRY_AUTH_FILE"] {
            cmd.env_remove(k);
        }
        cmd.envs(self.vars.iter().map(|(k, v)| (k, v)));
        run_command(cmd)
    }
}

/// `umoci unpack` of `reference` copied out of the registry by skopeo (layers recompressed
/// to gzip, which is all umoci reads), `global` being skopeo's options before `copy`
/// (`--override-arch`). Returns the root filesystem.
fn umoci_of(reference: &str, global: &[&str], work: &Path, name: &str) -> PathBuf {
    let oci = work.join(format!("{name}.oci"));
    let dest = format!("oci:{}:x", oci.display());
    let mut args: Vec<&str> = global.to_vec();
    args.extend([
        "copy",
        "-q",
        "--src-tls-verify=false",
        "--dest-compress-format",
        "gzip",
        reference,
        &dest,
    ]);
    run_ok("skopeo", &args);
    let bundle = work.join(format!("{name}.bundle"));
    run_ok(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:x", oci.display()),
            bundle.to_str().unwrap(),
        ],
    );
    bundle.join("rootfs")
}

/// Mounts `reference` and compares it, entry by entry, with umoci's unpacking of it.
#[track_caller]
fn assert_mount_equals_umoci(ctx: &Ctx, reference: &str, mount_extra: &[&str], global: &[&str]) {
    let name = format!("{reference}{}", global.join("_")).replace([':', '@', '/', '-'], "_");
    let rootfs = umoci_of(reference, global, ctx.sb.dir.path(), &name);
    let Some(m) = ctx.mount(reference, mount_extra) else {
        return;
    };
    if let Err(diff) = common::treesum_compare(&rootfs, m.path(), &["--ignore-root"]) {
        panic!("{reference} {mount_extra:?} differs from umoci unpack:\n{diff}");
    }
    m.unmount();
}

fn tools() -> bool {
    require(
        engines::have(&["skopeo", "umoci", "python3"]).then_some(()),
        "skopeo/umoci not installed",
    )
    .is_some()
}

fn def(codec: Codec) -> ImageDef {
    ImageDef::from_spec(SPEC).codec(codec)
}

/// Pushes `def` as `name` and checks the mount against umoci.
fn kind(def: ImageDef, name: &str, format: Format) {
    if !tools() {
        return;
    }
    let Some(reg) = Registry::plain() else { return };
    let r = reg.push_def(&def, name, format);
    assert_mount_equals_umoci(&Ctx::new(), &r, &[], &[]);
}

#[test]
fn oci_gzip_mounts_like_umoci() {
    kind(def(Codec::Gzip), "kinds/gzip:1", Format::Oci);
}

#[test]
fn oci_zstd_mounts_like_umoci() {
    kind(def(Codec::Zstd), "kinds/zstd:1", Format::Oci);
}

#[test]
fn oci_uncompressed_mounts_like_umoci() {
    kind(def(Codec::None), "kinds/plain:1", Format::Oci);
}

#[test]
fn docker_v2_mounts_like_umoci() {
    kind(
        def(Codec::Gzip).layer_codec(1, Codec::None),
        "kinds/v2:1",
        Format::DockerV2,
    );
}

#[test]
fn multi_platform_index_mounts_the_chosen_platform_like_umoci() {
    if !tools() {
        return;
    }
    let Some(reg) = Registry::plain() else { return };
    let amd = def(Codec::Gzip).platform("linux/amd64");
    let arm = ImageDef::from_spec("L0: dir /etc; file /etc/arm 0644 'arm'; symlink /a etc/arm")
        .codec(Codec::Zstd)
        .platform("linux/arm64/v8");
    let r = reg.push_files(
        &oci_multiplatform(&[amd, arm], "multi", true),
        "multi",
        "kinds/multi:1",
    );
    let ctx = Ctx::new();
    assert_mount_equals_umoci(
        &ctx,
        &r,
        &["--platform", "linux/arm64/v8"],
        &["--override-arch", "arm64", "--override-variant", "v8"],
    );
    assert_mount_equals_umoci(
        &ctx,
        &r,
        &["--platform", "linux/amd64"],
        &["--override-arch", "amd64"],
    );
}

/// An eStargz image of `spec` (its layers written by `common::remote::estargz` with chunks
/// of `chunk` bytes) pushed as `name`; its reference.
fn push_estargz(reg: &Registry, spec: &str, chunk: usize, name: &str) -> String {
    let layers = estargz_layers(spec, chunk);
    let dir = reg
        .dir
        .path()
        .join(format!("esgz-{}", name.replace([':', '/'], "_")));
    std::fs::create_dir_all(&dir).unwrap();
    write_layout(&dir, &layers);
    reg.push(&format!("oci:{}", dir.display()), name, Format::Oci, false)
}

/// An image of `spec`'s first layer pushed by podman as zstd:chunked; its reference.
fn push_zstd_chunked(reg: &Registry, work: &Path, spec: &str, name: &str) -> Option<String> {
    require(
        engines::have(&["podman"]).then_some(()),
        "podman not installed",
    )?;
    let tar = work.join("zc-layer.tar");
    std::fs::write(&tar, Spec::parse(spec).layer_tars().remove(0)).unwrap();
    let podman = engines::Podman::new(&work.join("podman"), "vfs");
    podman.run(&["import", "-q", tar.to_str().unwrap(), "localhost/zc:1"]);
    let r = reg.reference(name);
    podman.run(&[
        "push",
        "-q",
        "--tls-verify=false",
        "--compression-format",
        "zstd:chunked",
        "localhost/zc:1",
        &r,
    ]);
    Some(r)
}

/// The layer blobs' digests and sizes of a (single-platform) reference.
fn layer_blobs(reference: &str) -> Vec<(String, u64)> {
    let raw = run_ok(
        "skopeo",
        &["inspect", "--raw", "--tls-verify=false", reference],
    );
    let m: Value = serde_json::from_str(&raw.stdout).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn estargz_mounts_like_umoci() {
    if !tools() {
        return;
    }
    let Some(reg) = Registry::plain() else { return };
    let r = push_estargz(&reg, SPEC, 1 << 20, "kinds/esgz:1");
    let ctx = Ctx::new();
    // Read lazily, chunk by chunk (no background fill), then with it.
    assert_mount_equals_umoci(&ctx, &r, &["--no-prefetch"], &[]);
    assert_mount_equals_umoci(&Ctx::new(), &r, &[], &[]);
}

#[test]
fn zstd_chunked_from_podman_mounts_like_umoci() {
    if !tools() {
        return;
    }
    let Some(reg) = Registry::plain() else { return };
    let ctx = Ctx::new();
    let spec = "L0: dir /d; file /d/small 0644 'tiny file\\n'; file /d/big 0755 gen=3000000; \
                symlink /d/l small; file /d/zeros 0644 '\\0\\0\\0\\0'; dir /e 0700 uid=5 gid=6";
    let Some(r) = push_zstd_chunked(&reg, ctx.sb.dir.path(), spec, "kinds/zc:1") else {
        return;
    };
    let raw = run_ok("skopeo", &["inspect", "--raw", "--tls-verify=false", &r]);
    assert!(
        raw.stdout.contains("zstd-chunked.manifest-checksum"),
        "podman did not push zstd:chunked: {}",
        raw.stdout
    );
    assert_mount_equals_umoci(&ctx, &r, &["--no-prefetch"], &[]);
}

#[test]
fn ls_cat_inspect_diff_and_commit_take_docker_references() {
    if !tools() {
        return;
    }
    let Some(reg) = Registry::plain() else { return };
    let r = reg.push_def(&def(Codec::Gzip), "cmd/app:1", Format::Oci);
    let ctx = Ctx::new();
    let rootfs = umoci_of(&r, &[], ctx.sb.dir.path(), "app");

    let ls = ctx.run(&["ls", &r, "/usr"]).success();
    let mut want: Vec<String> = std::fs::read_dir(rootfs.join("usr"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    want.sort();
    let mut got: Vec<String> = ls.stdout.lines().map(str::to_string).collect();
    got.sort();
    assert_eq!(got, want);

    let cat = ctx.run(&["cat", &r, "/usr/mid"]).success();
    assert_eq!(
        cat.stdout_bytes,
        std::fs::read(rootfs.join("usr/mid")).unwrap()
    );
    // A hard link's content.
    let cat = ctx.run(&["cat", &r, "/etc/h2"]).success();
    assert_eq!(cat.stdout, "a host\n");

    let inspect = ctx.run(&["inspect", "--json", &r]).success();
    let got: Value = serde_json::from_str(&inspect.stdout).unwrap();
    let digest = run_ok(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &r,
        ],
    );
    assert_eq!(got["manifest_digest"], digest.stdout.trim());

    // An upper directory that adds, changes and deletes (a kernel overlayfs whiteout).
    let upper = ctx.sb.path("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::create_dir_all(upper.join("usr")).unwrap();
    std::fs::write(upper.join("etc/new"), "new\n").unwrap();
    std::fs::write(upper.join("usr/tail"), "changed\n").unwrap();
    nix::sys::stat::mknod(
        &upper.join("usr/small"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .unwrap();
    let up = upper.to_str().unwrap();
    let diff = ctx.run(&["diff", "--upper", up, &r]).success();
    let mut lines: Vec<&str> = diff.stdout.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            "A /etc/new",
            "C /etc",
            "C /usr",
            "C /usr/tail",
            "D /usr/small"
        ],
        "{}",
        diff.stdout
    );

    let out = ctx.sb.path("committed");
    let o = out.to_str().unwrap();
    ctx.run(&["commit", "--upper", up, "--format", "oci", "-o", o, &r])
        .success();
    let layout = format!("oci:{o}");
    let manifest: Value =
        serde_json::from_str(&run_ok("skopeo", &["inspect", "--raw", &layout]).stdout).unwrap();
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 3);
    let committed = umoci_of(&layout, &[], ctx.sb.dir.path(), "committed");
    assert_eq!(std::fs::read(committed.join("etc/new")).unwrap(), b"new\n");
    assert_eq!(
        std::fs::read(committed.join("usr/tail")).unwrap(),
        b"changed\n"
    );
    assert!(!committed.join("usr/small").exists());
    // The committed image equals the registry image mounted over that upper directory.
    let Some(m) = ctx.mount(&r, &["--upper", up]) else {
        return;
    };
    if let Err(diff) = common::treesum_compare(&committed, m.path(), &["--ignore-root"]) {
        panic!(
            "the commit differs from the mount over its upper:
{diff}"
        );
    }
    m.unmount();
    assert_eq!(
        std::fs::read(committed.join("usr/big")).unwrap(),
        std::fs::read(rootfs.join("usr/big")).unwrap()
    );
}

#[test]
fn a_user_who_is_not_root_mounts_and_reads() {
    if !tools() {
        return;
    }
    let Some(ids) = require(test_user(), "cannot create the test user") else {
        return;
    };
    let Some(reg) = Registry::plain() else { return };
    let r = push_estargz(&reg, &toc_spec(2_000_000), 256 << 10, "user/app:1");
    let ctx = Ctx::new();
    let rootfs = umoci_of(&r, &[], ctx.sb.dir.path(), "app");
    // Everything the user's daemon touches is the user's.
    let home = tempfile::Builder::new()
        .prefix("rimgfs-user-")
        .tempdir()
        .unwrap();
    let (cache, conf) = (
        home.path().join("cache"),
        home.path().join("registries.conf"),
    );
    std::fs::write(&conf, "").unwrap();
    for p in [home.path(), &conf] {
        nix::unistd::chown(p, Some(ids.0.into()), Some(ids.1.into())).unwrap();
    }
    let mut o = MountOpts::new(&r, &cache).args(&["--tls-verify=false", "--no-prefetch"]);
    o.wrapper = ["setpriv", "--clear-groups"]
        .map(OsString::from)
        .into_iter()
        .chain([
            format!("--reuid={}", ids.0).into(),
            format!("--regid={}", ids.1).into(),
        ])
        .collect();
    o.owner = Some(ids);
    o.env = vec![
        ("HOME".into(), home.path().into()),
        ("CONTAINERS_REGISTRIES_CONF".into(), conf.clone().into()),
    ];
    let Some(m) = MountGuard::start(o) else {
        return;
    };
    let entry = common::harness::mount_entry(m.path()).unwrap();
    assert!(
        entry.contains(&format!("user_id={}", ids.0)),
        "not the user's mount: {entry}"
    );
    let mnt = m.path().to_str().unwrap().to_string();
    // Each read fetches its chunk in the user's daemon.
    for n in [0, 3, SMALL_FILES - 1] {
        let out = as_user(ids, "cat", &[format!("{mnt}/f/{n}")]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        assert_eq!(out.stdout_bytes, small(n));
    }
    let out = as_user(ids, "sha256sum", &[format!("{mnt}/b/big")]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let want = run_ok("sha256sum", &[rootfs.join("b/big").to_str().unwrap()]);
    assert_eq!(
        out.stdout.split_whitespace().next(),
        want.stdout.split_whitespace().next()
    );
    let ls = as_user(ids, "ls", &[format!("{mnt}/f")]);
    assert_eq!(ls.stdout.lines().count(), SMALL_FILES);
    // The cache it filled is the user's.
    let blobs = cache.join("blobs");
    assert!(blobs.exists());
    for e in files_below(&blobs) {
        assert_eq!(
            std::fs::metadata(&e).unwrap().uid(),
            ids.0,
            "{}",
            e.display()
        );
    }
    m.unmount();
}

/// Requests for the blob `digest`.
fn blob_requests(proxy: &Proxy, digest: &str) -> usize {
    proxy.count(&format!("/blobs/{digest}"))
}

#[test]
fn a_warm_mount_asks_for_no_blob() {
    let Some(reg) = Registry::plain() else { return };
    reg.push_def(&def(Codec::Gzip), "warm/app:1", Format::Oci);
    let proxy = Proxy::start(&reg.addr);
    let pr = proxy.reference("warm/app:1");
    let ctx = Ctx::new();
    let big = {
        let Some(m) = ctx.mount(&pr, &[]) else { return };
        let big = std::fs::read(m.at("usr/big")).unwrap();
        m.unmount();
        big
    };
    assert!(proxy.count("/blobs/") >= 2, "{:?}", proxy.per_path());
    proxy.clear();
    let Some(m) = ctx.mount(&pr, &[]) else { return };
    let warm = proxy.requests();
    assert!(
        warm.len() <= 2 && warm.iter().all(|q| !q.path.contains("/blobs/")),
        "warm mount: {warm:?}"
    );
    // The streamed blobs were kept: reading needs no network either.
    assert_eq!(std::fs::read(m.at("usr/big")).unwrap(), big);
    assert_eq!(proxy.count("/blobs/"), 0, "{:?}", proxy.per_path());
    m.unmount();
    // Past the tag's time to live: the tag is checked (at most 2 requests), no blob asked.
    age_tag_resolutions(
        &ctx.sb.cache(),
        rimgfs::image::registry::TAG_TTL + Duration::from_secs(1),
    );
    proxy.clear();
    let Some(m) = ctx.mount(&pr, &[]) else { return };
    let stale = proxy.requests();
    eprintln!(
        "warm mount: {} requests within the tag's TTL, {} past it",
        warm.len(),
        stale.len()
    );
    assert!(
        (1..=2).contains(&stale.len()) && stale.iter().all(|q| !q.path.contains("/blobs/")),
        "warm mount past the tag's TTL: {stale:?}"
    );
    assert_eq!(std::fs::read(m.at("usr/big")).unwrap(), big);
    assert_eq!(proxy.count("/blobs/"), 0, "{:?}", proxy.per_path());
    m.unmount();
}

/// Mounts a TOC image through `proxy`: under 1% of its layer bytes read, a small file's read
/// fetches one chunk, a warm remount asks for no blob.
fn toc_image_is_read_chunk_by_chunk(proxy: &Proxy, pr: &str, files: &[(&str, Vec<u8>)]) {
    let ctx = Ctx::new();
    let layers = layer_blobs(pr);
    let total: u64 = layers.iter().map(|l| l.1).sum();
    let Some(m) = ctx.mount(pr, &["--no-prefetch"]) else {
        return;
    };
    let fetched: u64 = layers.iter().map(|l| proxy.bytes(&l.0)).sum();
    eprintln!(
        "{pr}: the mount read {fetched} of {total} layer bytes ({:.3}%) in {} requests",
        fetched as f64 * 100.0 / total as f64,
        proxy.requests().len()
    );
    assert!(
        fetched * 100 < total,
        "the mount read {fetched} of {total} layer bytes: {:?}",
        proxy.requests()
    );
    for (path, want) in files {
        proxy.clear();
        assert_eq!(&std::fs::read(m.at(path)).unwrap(), want, "{path}");
        let asked: Vec<_> = proxy
            .requests()
            .into_iter()
            .filter(|q| q.path.contains("/blobs/"))
            .collect();
        assert_eq!(asked.len(), 1, "{path}: {asked:?}");
        assert!(asked[0].range.is_some(), "{asked:?}");
    }
    m.unmount();
    proxy.clear();
    let Some(m) = ctx.mount(pr, &["--no-prefetch"]) else {
        return;
    };
    for (path, want) in files {
        assert_eq!(&std::fs::read(m.at(path)).unwrap(), want, "{path}");
    }
    assert_eq!(proxy.count("/blobs/"), 0, "{:?}", proxy.requests());
    m.unmount();
}

#[test]
fn an_estargz_mount_reads_under_one_percent_and_a_small_file_one_chunk() {
    let Some(reg) = Registry::plain() else { return };
    push_estargz(&reg, &toc_spec(6_000_000), 1 << 20, "toc/esgz:1");
    let proxy = Proxy::start(&reg.addr);
    let files: Vec<(String, Vec<u8>)> = (0..3).map(|n| (format!("f/{n}"), small(n))).collect();
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
    toc_image_is_read_chunk_by_chunk(&proxy, &proxy.reference("toc/esgz:1"), &files);
}

#[test]
fn a_zstd_chunked_mount_reads_under_one_percent_and_a_small_file_one_chunk() {
    let Some(reg) = Registry::plain() else { return };
    let sb = Sandbox::new();
    let spec = "L0: dir /d; file /d/small 0644 'tiny file\\n'; file /d/big 0644 gen=4000000; \
                file /d/other 0644 'another one\\n'";
    if push_zstd_chunked(&reg, sb.dir.path(), spec, "toc/zc:1").is_none() {
        return;
    }
    let proxy = Proxy::start(&reg.addr);
    toc_image_is_read_chunk_by_chunk(
        &proxy,
        &proxy.reference("toc/zc:1"),
        &[
            ("d/small", b"tiny file\n".to_vec()),
            ("d/other", b"another one\n".to_vec()),
        ],
    );
}

/// Whether a lock request on the file with inode `ino` waits (`/proc/locks` marks waiters
/// `->`).
fn a_lock_waits_on(ino: u64) -> bool {
    std::fs::read_to_string("/proc/locks").is_ok_and(|l| {
        l.lines()
            .any(|l| l.contains("->") && l.contains(&format!(":{ino} ")))
    })
}

#[test]
fn two_mounts_sharing_a_cache_fetch_a_range_once() {
    let Some(reg) = Registry::plain() else { return };
    push_estargz(&reg, &toc_spec(1_000_000), 256 << 10, "shared/app:1");
    let proxy = Proxy::start(&reg.addr);
    let pr = proxy.reference("shared/app:1");
    let layer = layer_blobs(&pr).remove(0).0;
    let ctx = Ctx::new();
    let Some(a) = ctx.mount(&pr, &["--no-prefetch"]) else {
        return;
    };
    let Some(b) = ctx.mount(&pr, &["--no-prefetch"]) else {
        return;
    };
    proxy.clear();
    // The first reader's request is held at the proxy: the second, in the other process,
    // must wait for it instead of asking itself.
    proxy.inject(&format!("/blobs/{layer}"), Fault::Hold, 1);
    std::thread::scope(|s| {
        let first = s.spawn(|| std::fs::read(a.at("f/4")));
        assert!(
            poll_until(Duration::from_secs(30), || blob_requests(&proxy, &layer)
                == 1),
            "the first read asked nothing: {:?}",
            proxy.requests()
        );
        let second = s.spawn(|| std::fs::read(b.at("f/4")));
        let lock = ctx.sb.cache().join(format!(
            "blobs/sha256/{}.lock",
            layer.trim_start_matches("sha256:")
        ));
        let ino = std::fs::metadata(&lock).unwrap().ino();
        let settled = poll_until(Duration::from_secs(30), || {
            a_lock_waits_on(ino) || blob_requests(&proxy, &layer) > 1
        });
        proxy.release();
        assert!(settled, "the second read neither waited nor asked");
        assert_eq!(first.join().unwrap().unwrap(), small(4));
        assert_eq!(second.join().unwrap().unwrap(), small(4));
    });
    assert_eq!(
        blob_requests(&proxy, &layer),
        1,
        "one range, two readers: {:?}",
        proxy.requests()
    );
    // Readers of one mount, many threads: one request for another chunk.
    proxy.clear();
    proxy.rearm();
    std::thread::scope(|s| {
        let readers: Vec<_> = (0..6)
            .map(|i| {
                let m = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || std::fs::read(m.at("f/7")).unwrap())
            })
            .collect();
        for r in readers {
            assert_eq!(r.join().unwrap(), small(7));
        }
    });
    assert_eq!(blob_requests(&proxy, &layer), 1, "{:?}", proxy.requests());
    a.unmount();
    b.unmount();
}

/// The raw OS error of reading `p`.
fn read_errno(p: &Path) -> Option<i32> {
    std::fs::read(p).err().and_then(|e| e.raw_os_error())
}

#[test]
fn faults_through_the_mount_end_in_the_right_bytes_or_eio() {
    let Some(reg) = Registry::plain() else { return };
    push_estargz(&reg, &toc_spec(500_000), 256 << 10, "faults/app:1");
    let proxy = Proxy::start(&reg.addr);
    let pr = proxy.reference("faults/app:1");
    let layer = layer_blobs(&pr).remove(0).0;
    let blob = format!("/blobs/{layer}");
    let ctx = Ctx::new();
    let Some(m) = ctx.mount(&pr, &["--no-prefetch"]) else {
        return;
    };
    // Each fault hits the first request for a file not read yet.
    let faults = [
        Fault::WholeBody,
        Fault::TooMany("1".into()),
        Fault::Unavailable,
        Fault::CutShort,
        Fault::Reset,
    ];
    for (n, fault) in faults.iter().enumerate() {
        proxy.clear();
        proxy.inject(&blob, fault.clone(), 1);
        assert_eq!(
            std::fs::read(m.at(&format!("f/{n}"))).unwrap(),
            small(n),
            "{fault:?}"
        );
        let hit = proxy.requests();
        assert!(
            hit.iter().any(|q| q.fault.as_ref() == Some(fault)),
            "{fault:?} not applied: {hit:?}"
        );
    }
    // A stall: the read waits for it, other reads go on meanwhile, and it ends in the right
    // bytes once the connection breaks.
    let n = faults.len();
    proxy.clear();
    proxy.rearm();
    proxy.inject(&blob, Fault::Stall, 1);
    std::thread::scope(|s| {
        let stalled = s.spawn(|| std::fs::read(m.at(&format!("f/{n}"))));
        assert!(poll_until(Duration::from_secs(30), || {
            proxy
                .requests()
                .iter()
                .any(|q| q.fault == Some(Fault::Stall))
        }));
        assert_eq!(std::fs::read(m.at("f/0")).unwrap(), small(0));
        assert_eq!(std::fs::read(m.at("f/1")).unwrap(), small(1));
        proxy.release();
        assert_eq!(stalled.join().unwrap().unwrap(), small(n));
    });
    // A registry that keeps failing: EIO after bounded retries, one log line per failed
    // FUSE read (the kernel reads a page again once after a failed readahead), and the next
    // read after it heals succeeds.
    proxy.clear();
    proxy.inject(&blob, Fault::Unavailable, 10_000);
    assert_eq!(read_errno(&m.at(&format!("f/{}", n + 1))), Some(libc::EIO));
    assert_eq!(std::fs::read(m.at("f/0")).unwrap(), small(0));
    let failed: Vec<String> = m
        .stderr()
        .lines()
        .filter(|l| l.contains(&layer) && l.contains("attempts"))
        .map(str::to_string)
        .collect();
    assert!((1..=2).contains(&failed.len()), "{}", m.stderr());
    // The client's attempts are the only ones: the layer level does not multiply them.
    let asked = blob_requests(&proxy, &layer);
    assert_eq!(
        asked,
        failed.len() * rimgfs::image::registry::client::ATTEMPTS as usize,
        "{:?}",
        proxy.requests()
    );
    proxy.heal();
    assert_eq!(
        std::fs::read(m.at(&format!("f/{}", n + 1))).unwrap(),
        small(n + 1)
    );
    m.unmount();
}

#[test]
fn a_registry_gone_while_mounted_fails_only_uncached_reads() {
    let Some(reg) = Registry::plain() else { return };
    let r = push_estargz(&reg, &toc_spec(500_000), 256 << 10, "gone/app:1");
    let ctx = Ctx::new();
    let Some(m) = ctx.mount(&r, &["--no-prefetch"]) else {
        return;
    };
    assert_eq!(std::fs::read(m.at("f/0")).unwrap(), small(0));
    drop(reg);
    assert_eq!(read_errno(&m.at("f/1")), Some(libc::EIO));
    assert_eq!(std::fs::read(m.at("f/0")).unwrap(), small(0));
    assert_eq!(
        std::fs::read_dir(m.at("f")).unwrap().count(),
        SMALL_FILES,
        "the tree stays readable"
    );
    assert_eq!(read_errno(&m.at("b/big")), Some(libc::EIO));
    m.unmount();
}

#[test]
fn offline_mounts_a_cached_image_without_the_registry() {
    if !tools() {
        return;
    }
    let Some(reg) = Registry::plain() else { return };
    let r = reg.push_def(&def(Codec::Gzip), "off/app:1", Format::Oci);
    let other = reg.push_def(&def(Codec::Zstd), "off/other:1", Format::Oci);
    let ctx = Ctx::new();
    let rootfs = umoci_of(&r, &[], ctx.sb.dir.path(), "app");
    let digest = run_ok(
        "skopeo",
        &[
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &r,
        ],
    )
    .stdout
    .trim()
    .to_string();
    let by_digest = reg.reference(&format!("off/app@{digest}"));
    {
        let Some(m) = ctx.mount(&r, &[]) else { return };
        m.unmount();
    }
    drop(reg);
    let compare = |m: &MountGuard, what: &str| {
        if let Err(diff) = common::treesum_compare(&rootfs, m.path(), &["--ignore-root"]) {
            panic!("{what} differs from umoci unpack:\n{diff}");
        }
    };
    // By tag: a warning says how old the resolution is.
    age_tag_resolutions(&ctx.sb.cache(), Duration::from_secs(3 * 3600));
    let Some(m) = ctx.mount(&r, &["--offline"]) else {
        return;
    };
    compare(&m, "offline by tag");
    let err = m.stderr();
    assert!(
        err.contains("--offline: using the tag's resolution of 3 h ago"),
        "{err}"
    );
    m.unmount();
    // By digest: no warning; also without --offline, the registry not being asked.
    for extra in [&["--offline"][..], &[][..]] {
        let Some(m) = ctx.mount(&by_digest, extra) else {
            return;
        };
        compare(&m, &format!("by digest {extra:?}"));
        assert!(!m.stderr().contains("warning"), "{}", m.stderr());
        m.unmount();
    }
    // An image never cached: one line naming it.
    let nowhere = ctx.sb.path("nowhere");
    std::fs::create_dir(&nowhere).unwrap();
    let out = ctx.run(&["mount", &other, nowhere.to_str().unwrap(), "--offline"]);
    assert!(!common::harness::is_mounted(&nowhere));
    assert_ne!(out.code, Some(0));
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(lines[0].contains("off/other"), "{}", out.stderr);
    assert!(lines[0].contains("not in the cache"), "{}", out.stderr);
}

#[test]
fn faults_in_the_indexing_stream_of_a_gzip_layer_end_in_the_right_tree() {
    if !tools() {
        return;
    }
    let Some(reg) = Registry::plain() else { return };
    let r = reg.push_def(&def(Codec::Gzip), "stream/app:1", Format::Oci);
    let work = Sandbox::new();
    let rootfs = umoci_of(&r, &[], work.dir.path(), "app");
    let proxy = Proxy::start(&reg.addr);
    let pr = proxy.reference("stream/app:1");
    let layers = layer_blobs(&pr);
    // The big layer's stream: broken and resumed (the resumption answered whole once), or
    // refused a few times before it starts.
    let big = &layers[1].0;
    let cases: Vec<Vec<Fault>> = vec![
        vec![Fault::CutShort],
        vec![Fault::CutShort, Fault::WholeBody],
        vec![Fault::TooMany("1".into()), Fault::Unavailable],
        vec![Fault::Reset, Fault::CutShort, Fault::CutShort],
    ];
    for faults in cases {
        proxy.clear();
        proxy.heal();
        // Applied in order, one request each.
        for f in &faults {
            proxy.inject(&format!("/blobs/{big}"), f.clone(), 1);
        }
        let ctx = Ctx::new();
        let Some(m) = ctx.mount(&pr, &[]) else { return };
        if let Err(diff) = common::treesum_compare(&rootfs, m.path(), &["--ignore-root"]) {
            panic!("{faults:?}: differs from umoci unpack:\n{diff}");
        }
        let applied: Vec<Fault> = proxy
            .requests()
            .into_iter()
            .filter_map(|q| q.fault)
            .collect();
        assert_eq!(applied, faults, "{:?}", proxy.requests());
        m.unmount();
    }
    // A stall: the mount waits for it and is ready with the right tree once it breaks.
    proxy.clear();
    proxy.inject(&format!("/blobs/{big}"), Fault::Stall, 1);
    let ctx = Ctx::new();
    std::thread::scope(|s| {
        let mount = s.spawn(|| ctx.mount(&pr, &[]));
        assert!(poll_until(Duration::from_secs(30), || {
            proxy
                .requests()
                .iter()
                .any(|q| q.fault == Some(Fault::Stall))
        }));
        proxy.release();
        let Some(m) = mount.join().unwrap() else {
            return;
        };
        if let Err(diff) = common::treesum_compare(&rootfs, m.path(), &["--ignore-root"]) {
            panic!("after a stall: differs from umoci unpack:\n{diff}");
        }
        m.unmount();
    });
    // A blob that cannot be had: the mount fails with one line naming the image.
    let ctx = Ctx::new();
    proxy.inject(&format!("/blobs/{big}"), Fault::Unavailable, 10_000);
    let out = ctx.run(&["ls", &pr, "/"]);
    assert_eq!(out.code, Some(1), "{out:?}");
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{}", out.stderr);
    assert!(
        lines[0].starts_with("rimgfs: docker://") && lines[0].contains("503"),
        "{}",
        out.stderr
    );
}

#[test]
fn after_the_background_fill_the_registry_may_go() {
    let Some(reg) = Registry::plain() else { return };
    let r = push_estargz(&reg, &toc_spec(2_000_000), 256 << 10, "fill/app:1");
    let layers = layer_blobs(&r);
    let ctx = Ctx::new();
    let Some(m) = ctx.mount(&r, &[]) else { return };
    // Done when the cache holds every byte of the layer blobs.
    let present = |ctx: &Ctx| -> u64 {
        layers
            .iter()
            .map(|(d, _)| {
                let p = ctx.sb.cache().join(format!(
                    "blobs/sha256/{}.data",
                    d.trim_start_matches("sha256:")
                ));
                std::fs::metadata(p).map_or(0, |m| m.blocks() * 512)
            })
            .sum()
    };
    let total: u64 = layers.iter().map(|l| l.1).sum();
    assert!(
        poll_until(Duration::from_secs(60), || present(&ctx) >= total),
        "the background fill stopped at {} of {total} bytes",
        present(&ctx)
    );
    drop(reg);
    for n in 0..SMALL_FILES {
        assert_eq!(std::fs::read(m.at(&format!("f/{n}"))).unwrap(), small(n));
    }
    assert_eq!(std::fs::read(m.at("b/big")).unwrap().len(), 2_000_000);
    m.unmount();
}

#[test]
fn a_blob_deleted_while_mounted_gives_eio_at_once() {
    let Some(reg) = Registry::plain() else { return };
    push_estargz(&reg, &toc_spec(500_000), 256 << 10, "deleted/app:1");
    let proxy = Proxy::start(&reg.addr);
    let pr = proxy.reference("deleted/app:1");
    let layer = layer_blobs(&pr).remove(0).0;
    let ctx = Ctx::new();
    let Some(m) = ctx.mount(&pr, &["--no-prefetch"]) else {
        return;
    };
    assert_eq!(std::fs::read(m.at("f/0")).unwrap(), small(0));
    let url = format!("http://{}/v2/deleted/app/blobs/{layer}", reg.addr);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let status = agent.delete(&url).call().unwrap().status();
    assert_eq!(status.as_u16(), 202, "DELETE {url}");
    proxy.clear();
    assert_eq!(read_errno(&m.at("f/1")), Some(libc::EIO));
    // A 404 is final: asked once per FUSE read (the kernel may read the page twice), never
    // retried.
    let asked: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|q| q.path.contains(&layer))
        .collect();
    assert!(
        (1..=2).contains(&asked.len()) && asked.iter().all(|q| q.status == 404),
        "{asked:?}"
    );
    let lines: Vec<String> = m
        .stderr()
        .lines()
        .filter(|l| l.contains("error") && l.contains(&layer))
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), asked.len(), "{}", m.stderr());
    assert_eq!(std::fs::read(m.at("f/0")).unwrap(), small(0));
    m.unmount();
}

#[test]
fn mounts_from_registries_with_auth_read_lazily_and_keep_secrets() {
    use common::registry::{Auth, PASSWORD, USER};
    for auth in [Auth::Basic, Auth::bearer(false)] {
        let Some(reg) = Registry::with_auth(auth.clone()) else {
            return;
        };
        let r = push_estargz(&reg, &toc_spec(300_000), 64 << 10, "auth/app:1");
        let ctx = Ctx::new();
        let creds = format!("{USER}:{PASSWORD}");
        // Without credentials: refused, in one line naming the registry.
        let out = ctx.run(&["ls", &r, "/"]);
        assert_eq!(out.code, Some(1), "{auth:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(&reg.addr), "{}", out.stderr);
        let Some(m) = ctx.mount(&r, &["--no-prefetch", "--creds", &creds]) else {
            return;
        };
        // The daemon fetches each chunk on first read, with the credentials it was given.
        for n in 0..SMALL_FILES {
            assert_eq!(
                std::fs::read(m.at(&format!("f/{n}"))).unwrap(),
                small(n),
                "{auth:?}"
            );
        }
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", m.pid())).unwrap();
        let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!shown.contains(PASSWORD), "{shown}");
        m.unmount();
        for f in files_below(&ctx.sb.cache()) {
            let bytes = std::fs::read(&f).unwrap();
            assert!(
                !bytes
                    .windows(PASSWORD.len())
                    .any(|w| w == PASSWORD.as_bytes()),
                "{auth:?}: the password is in {}",
                f.display()
            );
        }
    }
}
