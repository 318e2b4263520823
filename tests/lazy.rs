//! Layers read lazily from a repository, through a fetcher that serves an OCI layout's blobs
//! by range, counts requests and bytes, and injects faults (see `common/remote.rs`). Every
//! image is compared, entry by entry and byte by byte, with the same layout opened locally.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::Sandbox;
use common::image::{Codec, ImageDef, Shape};
use common::listing::Listing;
use common::remote::{FileFetch, estargz_layers, open_remote, write_layout};
use common::spec::{Spec, generated};
use rimgfs::cache::{Cache, Policy};
use rimgfs::stack::Stack;
use rimgfs::tree::LowerTree;
use rimgfs::view::{Ino, LowerView};

/// A layer stack with small and big files, links, devices and xattrs; layer 1 holds files
/// of several checkpoint spans.
const SPEC: &str = "
L0: dir /etc; file /etc/hosts 0644 'a host\\n'; file /etc/passwd 0600 'root:x:0:0\\n' uid=0 gid=0
L0: symlink /etc/localtime /usr/share/zoneinfo/UTC; hardlink /etc/h2 /etc/hosts
L0: char /dev-null 1 3 0666; fifo /run-p; dir /usr 0755 mtime=1234
L0: file /usr/small 0644 'x' xattr=user.k=v uid=12 gid=34
L1: file /usr/big 0755 gen=9437184; file /usr/mid 0644 gen=300000; whiteout /etc/passwd
L1: file /usr/tail 0644 'the end\\n'
";

/// Local view of a layout (its own cache) and its tree.
fn open_local(dir: &Path, cache: &Path) -> LowerTree {
    common::open_arg(
        &format!("oci:{}", dir.display()),
        &Default::default(),
        cache,
        None,
    )
    .unwrap_or_else(|e| panic!("{}", common::message(&e)))
    .tree
}

fn open_lazy(dir: &Path, fetch: &Arc<FileFetch>, sb: &Sandbox, policy: Policy) -> Stack {
    let img = open_remote(dir, fetch, &sb.path("scratch"));
    let cache = Cache::new(sb.path("remote-cache")).with_policy(policy);
    Stack::prepare(img, &cache, None).unwrap_or_else(|e| panic!("{}", common::message(&e)))
}

fn quiet() -> Policy {
    Policy {
        no_prefetch: true,
        ..Policy::default()
    }
}

fn layout(sb: &Sandbox, codec: Codec) -> std::path::PathBuf {
    let img = ImageDef::from_layers(Spec::parse(SPEC).layer_tars()).codec(codec);
    sb.write("layout", Shape::OciDir, &[img], Codec::None)
}

fn read_path(
    ov: &LowerView,
    tree: &LowerTree,
    path: &str,
    offset: u64,
    size: u32,
) -> Result<Vec<u8>, nix::errno::Errno> {
    let id = tree.resolve(path.as_bytes()).expect("path exists");
    ov.read(Ino::of(id), offset, size)
}

#[test]
fn lazy_layers_match_local_for_every_compression() {
    for codec in [Codec::Gzip, Codec::None, Codec::Zstd] {
        let sb = Sandbox::new();
        let dir = layout(&sb, codec);
        let want = Listing::of_tree(&open_local(&dir, &sb.path("local-cache")));
        let fetch = FileFetch::new(&dir);
        let stack = open_lazy(&dir, &fetch, &sb, quiet());
        let got = Listing::of_tree(&stack.tree().unwrap());
        got.assert_same(&want, &format!("{codec:?} layers read lazily"));
        // One streaming pass per layer, nothing else.
        assert_eq!(
            fetch.streams.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "{codec:?}"
        );
        assert_eq!(
            fetch.requests.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "{codec:?}"
        );

        // Warm: the cache has everything; not one request, the same tree and bytes.
        let warm = FileFetch::new(&dir);
        let stack = open_lazy(&dir, &warm, &sb, quiet());
        Listing::of_tree(&stack.tree().unwrap()).assert_same(&want, "warm");
        assert_eq!(
            warm.total_requests(),
            0,
            "{codec:?}: a warm mount made requests"
        );
    }
}

#[test]
fn evicted_gzip_blob_is_fetched_again_span_by_span() {
    let sb = Sandbox::new();
    let dir = layout(&sb, Codec::Gzip);
    let want = Listing::of_tree(&open_local(&dir, &sb.path("local-cache")));
    drop(open_lazy(&dir, &FileFetch::new(&dir), &sb, quiet()));
    // Evict the blob data; the records (indexes, checkpoints) stay.
    std::fs::remove_dir_all(sb.path("remote-cache/blobs")).unwrap();
    let fetch = FileFetch::new(&dir);
    let stack = open_lazy(&dir, &fetch, &sb, quiet());
    let tree = stack.tree().unwrap();
    assert_eq!(fetch.total_requests(), 0, "mounting needs no blob data");
    let ov = LowerView::new(Arc::new(tree), stack.layer_labels());
    // A read in the middle of the big file fetches the span(s) it needs, not the blob.
    let got = read_path(&ov, ov.tree(), "usr/big", 5 << 20, 4096).unwrap();
    assert_eq!(
        got,
        generated(9_437_184, 9_437_184)[5 << 20..(5 << 20) + 4096]
    );
    let blob_len: u64 = stack.image.layers.iter().map(|l| l.blob.len()).sum();
    assert!(
        fetch.requests.load(std::sync::atomic::Ordering::SeqCst) <= 2,
        "{}",
        fetch.total_requests()
    );
    assert!(
        fetch.bytes() < blob_len,
        "fetched {} of {blob_len}",
        fetch.bytes()
    );
    assert_eq!(fetch.streams.load(std::sync::atomic::Ordering::SeqCst), 0);
    // And every file is right once fetched.
    Listing::of_tree(ov.tree()).assert_same(&want, "re-fetched");
}

/// eStargz layers (see `common::remote::estargz`) in a layout with their TOC annotation.
fn estargz_layout(sb: &Sandbox, chunk: usize) -> std::path::PathBuf {
    let dir = sb.path("esgz");
    let layers = estargz_layers(SPEC, chunk);
    std::fs::create_dir_all(&dir).unwrap();
    write_layout(&dir, &layers);
    dir
}

#[test]
fn estargz_mounts_from_its_toc_and_reads_one_chunk_per_small_file() {
    let sb = Sandbox::new();
    let dir = estargz_layout(&sb, 1 << 20);
    // The local open walks the tar (the TOC and landmark are ordinary entries there).
    let want = Listing::of_tree(&open_local(&dir, &sb.path("local-cache")));
    let fetch = FileFetch::new(&dir);
    let stack = open_lazy(&dir, &fetch, &sb, quiet());
    let tree = stack.tree().unwrap();
    let blob_len: u64 = stack.image.layers.iter().map(|l| l.blob.len()).sum();
    assert_eq!(fetch.streams.load(std::sync::atomic::Ordering::SeqCst), 0);
    let mount_bytes = fetch.bytes();
    assert!(
        mount_bytes * 100 < blob_len,
        "mounting read {mount_bytes} of {blob_len} blob bytes"
    );
    let ov = LowerView::new(Arc::new(tree), stack.layer_labels());
    let before = fetch.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        read_path(&ov, ov.tree(), "usr/tail", 0, 1024).unwrap(),
        b"the end\n"
    );
    assert_eq!(
        fetch.requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "a 1 KiB read fetches one chunk"
    );
    // A read inside the big file fetches the chunk it falls in.
    let before = fetch.bytes();
    let got = read_path(&ov, ov.tree(), "usr/big", (3 << 20) + 10, 4096).unwrap();
    assert_eq!(
        got,
        generated(9_437_184, 9_437_184)[(3 << 20) + 10..(3 << 20) + 10 + 4096]
    );
    assert!(
        fetch.bytes() - before < 2 << 20,
        "{}",
        fetch.bytes() - before
    );
    Listing::of_tree(ov.tree()).assert_same(&want, "eStargz from its TOC");
    // Warm: no request.
    let warm = FileFetch::new(&dir);
    let again = open_lazy(&dir, &warm, &sb, quiet());
    Listing::of_tree(&again.tree().unwrap()).assert_same(&want, "warm eStargz");
    assert_eq!(warm.total_requests(), 0);
}

#[test]
fn estargz_with_a_wrong_toc_digest_is_refused() {
    let sb = Sandbox::new();
    let dir = estargz_layout(&sb, 1 << 20);
    let img = {
        let fetch = FileFetch::new(&dir);
        let mut img = open_remote(&dir, &fetch, &sb.path("scratch"));
        if let rimgfs::image::Blob::Remote(r) = &mut img.layers[1].blob {
            r.annotations.insert(
                "containerd.io/snapshot/stargz/toc.digest".into(),
                common::image::sha256(b"another toc"),
            );
        }
        img
    };
    let e = Stack::prepare(img, &Cache::new(sb.path("c")), None).unwrap_err();
    let m = common::message(&e);
    assert!(
        m.contains("TOC digest mismatch") && m.contains("layer 1"),
        "{m}"
    );
}

#[test]
fn reads_survive_faults_or_fail_with_eio_and_cached_data_stays_readable() {
    let sb = Sandbox::new();
    let dir = estargz_layout(&sb, 256 << 10);
    let fetch = FileFetch::new(&dir);
    let stack = open_lazy(&dir, &fetch, &sb, quiet());
    let ov = LowerView::new(Arc::new(stack.tree().unwrap()), stack.layer_labels());
    let big = generated(9_437_184, 9_437_184);
    let chunk = |i: usize| big[i << 18..(i << 18) + 100].to_vec();
    // Transient faults end in success after retries: an error, a short body, wrong bytes.
    for (n, set) in [
        (
            0usize,
            &(|f: &mut common::remote::Faults| f.fail = 2) as &dyn Fn(&mut common::remote::Faults),
        ),
        (1, &|f| f.short = 2),
        (2, &|f| f.corrupt = 2),
    ] {
        set(&mut fetch.faults());
        assert_eq!(
            read_path(&ov, ov.tree(), "usr/big", (n as u64) << 18, 100).unwrap(),
            chunk(n)
        );
    }
    // A registry that keeps failing: EIO after bounded retries, never wrong bytes.
    fetch.faults().dead = true;
    let e = read_path(&ov, ov.tree(), "usr/big", 20 << 18, 100).unwrap_err();
    assert_eq!(e, nix::errno::Errno::EIO);
    fetch.faults().corrupt = 1000;
    fetch.faults().dead = false;
    assert_eq!(
        read_path(&ov, ov.tree(), "usr/big", 21 << 18, 100).unwrap_err(),
        nix::errno::Errno::EIO
    );
    fetch.faults().corrupt = 0;
    fetch.faults().dead = true;
    // What was fetched before stays readable.
    assert_eq!(
        read_path(&ov, ov.tree(), "usr/big", 1 << 18, 100).unwrap(),
        chunk(1)
    );
    // And reads work again once the registry is back.
    fetch.faults().dead = false;
    assert_eq!(
        read_path(&ov, ov.tree(), "usr/big", 20 << 18, 100).unwrap(),
        chunk(20)
    );
}

#[test]
fn concurrent_readers_fetch_each_chunk_once() {
    let sb = Sandbox::new();
    let dir = estargz_layout(&sb, 1 << 20);
    let fetch = FileFetch::new(&dir);
    let stack = open_lazy(&dir, &fetch, &sb, quiet());
    let ov = LowerView::new(Arc::new(stack.tree().unwrap()), stack.layer_labels());
    fetch.faults().delay = std::time::Duration::from_millis(100);
    let before = fetch.requests.load(std::sync::atomic::Ordering::SeqCst);
    let big = generated(9_437_184, 9_437_184);
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let (ov, big) = (&ov, &big);
            s.spawn(move || {
                let off = (2 << 20) + t * 1000;
                let got = read_path(ov, ov.tree(), "usr/big", off, 5000).unwrap();
                assert_eq!(got, big[off as usize..off as usize + 5000]);
            });
        }
    });
    assert_eq!(
        fetch.requests.load(std::sync::atomic::Ordering::SeqCst) - before,
        1
    );
}

#[test]
fn broken_streams_are_resumed_and_a_dead_registry_names_the_blob() {
    let sb = Sandbox::new();
    let dir = layout(&sb, Codec::Gzip);
    let want = Listing::of_tree(&open_local(&dir, &sb.path("local-cache")));
    let fetch = FileFetch::new(&dir);
    {
        let mut f = fetch.faults();
        f.cut_streams = 2;
        f.cut_after = 100_000;
    }
    let stack = open_lazy(&dir, &fetch, &sb, quiet());
    Listing::of_tree(&stack.tree().unwrap()).assert_same(&want, "after resumed streams");

    let sb = Sandbox::new();
    let dir = layout(&sb, Codec::Gzip);
    let fetch = FileFetch::new(&dir);
    fetch.faults().dead = true;
    let img = open_remote(&dir, &fetch, &sb.path("scratch"));
    let e = Stack::prepare(img, &Cache::new(sb.path("c")), None).unwrap_err();
    let m = common::message(&e);
    assert!(
        m.contains("docker://test.invalid/image") && m.contains("layer 0"),
        "{m}"
    );
    // Offline, with nothing cached: a one-line refusal, no request.
    let fetch = FileFetch::new(&dir);
    let img = open_remote(&dir, &fetch, &sb.path("scratch"));
    let policy = Policy {
        offline: true,
        ..Policy::default()
    };
    let e = Stack::prepare(img, &Cache::new(sb.path("c2")).with_policy(policy), None).unwrap_err();
    assert!(
        common::message(&e).contains("--offline"),
        "{}",
        common::message(&e)
    );
    assert_eq!(fetch.total_requests(), 0);
}

#[test]
fn a_layer_indexed_from_a_local_archive_is_not_fetched() {
    for codec in [Codec::Gzip, Codec::None] {
        let sb = Sandbox::new();
        let dir = layout(&sb, codec);
        // The same cache first sees the image as a local layout: it keeps decompressed
        // copies (or notes where verified tars lie) by diff_id; the remote layers use them.
        let want = Listing::of_tree(&open_local(&dir, &sb.path("remote-cache")));
        let fetch = FileFetch::new(&dir);
        let stack = open_lazy(&dir, &fetch, &sb, quiet());
        Listing::of_tree(&stack.tree().unwrap()).assert_same(&want, "from the local copies");
        assert_eq!(fetch.total_requests(), 0, "{codec:?}");
    }
}

#[test]
fn background_fill_fetches_the_rest_of_a_toc_layer() {
    let sb = Sandbox::new();
    let dir = estargz_layout(&sb, 1 << 20);
    let fetch = FileFetch::new(&dir);
    let stack = open_lazy(&dir, &fetch, &sb, Policy::default());
    let fill = rimgfs::layer::lazy::fill::start().expect("layers to fill");
    fill.join().unwrap();
    // Everything is now in the cache: with the registry gone, every file still reads.
    fetch.faults().dead = true;
    let want = Listing::of_tree(&open_local(&dir, &sb.path("local-cache")));
    Listing::of_tree(&stack.tree().unwrap()).assert_same(&want, "after the fill");
}

/// Runs podman on a private store under `root`.
fn podman(root: &Path, args: &[&str]) {
    let store = [
        "--root",
        &root.join("root").display().to_string(),
        "--runroot",
        &root.join("run").display().to_string(),
        "--storage-driver",
        "vfs",
    ]
    .map(str::to_string);
    let all: Vec<String> = store
        .iter()
        .cloned()
        .chain(args.iter().map(|s| s.to_string()))
        .collect();
    common::run_ok(
        "podman",
        &all.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn zstd_chunked_from_podman_mounts_from_its_toc() {
    let have = std::process::Command::new("podman")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if common::require(have.then_some(()), "podman is not installed").is_none() {
        return;
    }
    let sb = Sandbox::new();
    let tar = Spec::parse(
        "L0: dir /d; file /d/small 0644 'tiny file\\n'; file /d/big 0755 gen=3000000; symlink /d/l small
         L0: file /d/zeros 0644 '\\0\\0\\0\\0\\0\\0\\0\\0'; dir /e 0700 uid=5 gid=6",
    )
    .layer_tars()
    .remove(0);
    std::fs::write(sb.path("layer.tar"), tar).unwrap();
    let store = sb.path("podman");
    podman(
        &store,
        &[
            "import",
            "-q",
            sb.path("layer.tar").to_str().unwrap(),
            "localhost/zc:1",
        ],
    );
    let dir = sb.path("zc");
    let dest = format!("oci:{}:zc", dir.display());
    podman(
        &store,
        &[
            "push",
            "-q",
            "--compression-format",
            "zstd:chunked",
            "localhost/zc:1",
            &dest,
        ],
    );
    let want = Listing::of_tree(&open_local(&dir, &sb.path("local-cache")));
    let fetch = FileFetch::new(&dir);
    let stack = open_lazy(&dir, &fetch, &sb, quiet());
    let blob_len: u64 = stack.image.layers.iter().map(|l| l.blob.len()).sum();
    assert_eq!(
        fetch.streams.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "not streamed: read from its TOC"
    );
    assert!(
        fetch.bytes() * 100 < blob_len,
        "mounting read {} of {blob_len}",
        fetch.bytes()
    );
    let ov = LowerView::new(Arc::new(stack.tree().unwrap()), stack.layer_labels());
    let before = fetch.requests.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        read_path(&ov, ov.tree(), "d/small", 0, 1024).unwrap(),
        b"tiny file\n"
    );
    assert_eq!(
        fetch.requests.load(std::sync::atomic::Ordering::SeqCst),
        before + 1
    );
    Listing::of_tree(ov.tree()).assert_same(&want, "zstd:chunked from its TOC");
}

#[test]
fn cache_command_lists_trims_and_prunes() {
    let sb = Sandbox::new();
    let dir = layout(&sb, Codec::Gzip);
    drop(open_lazy(&dir, &FileFetch::new(&dir), &sb, quiet()));
    let cache = sb.path("remote-cache");
    let c = cache.to_str().unwrap();
    let ls = common::rimgfs(&["cache", "ls", "--cache-dir", c]).success();
    assert!(
        ls.stdout.contains("blob ")
            && ls.stdout.contains("record ")
            && ls.stdout.contains("total "),
        "{}",
        ls.stdout
    );
    let lines = |s: &str, kind: &str| s.lines().filter(|l| l.starts_with(kind)).count();
    assert_eq!(lines(&ls.stdout, "blob "), 2, "{}", ls.stdout);
    assert_eq!(lines(&ls.stdout, "index "), 2, "{}", ls.stdout);
    // Trimming to nothing evicts blob data first: records and indexes go last.
    let blobs_before = gc_usage(&cache.join("blobs"));
    let gc = common::rimgfs(&[
        "cache",
        "gc",
        "--cache-dir",
        c,
        "--cache-max",
        &(gc_usage(&cache) - blobs_before / 2).to_string(),
    ])
    .success();
    assert!(gc.stdout.starts_with("freed "), "{}", gc.stdout);
    let ls = common::rimgfs(&["cache", "ls", "--cache-dir", c]).success();
    assert!(
        lines(&ls.stdout, "blob ") < 2 && lines(&ls.stdout, "record ") == 2,
        "{}",
        ls.stdout
    );
    // The evicted blob is fetched again when read, and the mount needed no request.
    let fetch = FileFetch::new(&dir);
    let stack = open_lazy(&dir, &fetch, &sb, quiet());
    assert_eq!(fetch.total_requests(), 0);
    let want = Listing::of_tree(&open_local(&dir, &sb.path("local-cache")));
    Listing::of_tree(&stack.tree().unwrap()).assert_same(&want, "after eviction");
    drop(stack);
    // Pruning the image by its layout removes every entry of its layers.
    let prune = common::rimgfs(&[
        "cache",
        "prune",
        &format!("oci:{}", dir.display()),
        "--cache-dir",
        c,
    ])
    .success();
    assert!(
        prune.stdout.starts_with("freed ") && prune.stdout.contains("(2 layers)"),
        "{}",
        prune.stdout
    );
    let ls = common::rimgfs(&["cache", "ls", "--cache-dir", c]).success();
    for kind in ["blob ", "record ", "index "] {
        assert_eq!(lines(&ls.stdout, kind), 0, "{}", ls.stdout);
    }
    let bad = common::rimgfs(&["cache", "gc", "--cache-dir", c, "--cache-max", "12Q"]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
}

fn gc_usage(p: &Path) -> u64 {
    rimgfs::layer::store::gc::usage(p)
}

#[test]
fn cache_max_evicts_what_no_live_layer_uses() {
    let sb = Sandbox::new();
    let a = layout(&sb, Codec::Gzip);
    drop(open_lazy(&a, &FileFetch::new(&a), &sb, quiet()));
    let b = sb.path("other");
    std::fs::create_dir_all(&b).unwrap();
    let spec = Spec::parse("L0: file /only 0644 gen=2000000");
    let img = ImageDef::from_layers(spec.layer_tars()).codec(Codec::Gzip);
    common::image::write_files(&Shape::OciDir.files(&[img]), Shape::OciDir, &b, Codec::None);
    let blob_of = |dir: &Path| {
        let img = open_remote(dir, &FileFetch::new(dir), &sb.path("scratch"));
        let d = img.layers.last().unwrap().blob_digest.clone().unwrap();
        sb.path("remote-cache")
            .join(format!("blobs/sha256/{}.data", d.hex()))
    };
    assert!(blob_of(&a).exists());
    // Image b with a cache bound of one byte: everything a's layers left goes; b's own
    // blob, in use, stays, and b reads on.
    let policy = Policy {
        max_bytes: Some(1),
        ..quiet()
    };
    let fetch = FileFetch::new(&b);
    let stack = open_lazy(&b, &fetch, &sb, policy);
    assert!(!blob_of(&a).exists());
    assert!(blob_of(&b).exists());
    let want = Listing::of_tree(&open_local(&b, &sb.path("local-cache")));
    Listing::of_tree(&stack.tree().unwrap()).assert_same(&want, "under --cache-max");
}

/// An in-process FUSE mount of a view; dropping it unmounts and joins the session.
struct InProcess {
    mnt: std::path::PathBuf,
    session: Option<std::thread::JoinHandle<rimgfs::error::Result<()>>>,
}

impl InProcess {
    fn mount(ov: LowerView, mnt: &Path) -> InProcess {
        let args = rimgfs::cli::MountArgs {
            read_only: true,
            foreground: true,
            ..Default::default()
        };
        let opts = args.to_config().unwrap();
        let m = mnt.to_path_buf();
        let session = std::thread::spawn(move || {
            rimgfs::mount::mount(rimgfs::fuse::Fuse::new(ov), &m, &opts, false, None)
        });
        let up = common::harness::poll_until(std::time::Duration::from_secs(20), || {
            common::harness::is_mounted(mnt) || session.is_finished()
        });
        let mut me = InProcess {
            mnt: mnt.to_path_buf(),
            session: Some(session),
        };
        assert!(
            up && common::harness::is_mounted(mnt),
            "in-process mount did not appear: {:?}",
            me.finish()
        );
        me
    }

    fn finish(&mut self) -> Option<rimgfs::error::Result<()>> {
        if let Err(e) = common::harness::unmount_with_retries(&self.mnt) {
            eprintln!("unmounting {}: {e}", self.mnt.display());
            return None;
        }
        self.session
            .take()
            .map(|s| s.join().expect("session thread"))
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.finish();
    }
}

#[test]
fn lazy_image_through_fuse_reads_like_the_local_one() {
    if !common::harness::require_fuse() {
        return;
    }
    let sb = Sandbox::new();
    let dir = estargz_layout(&sb, 1 << 20);
    let Some(local) = common::MountGuard::start(
        common::harness::MountOpts::new(format!("oci:{}", dir.display()), &sb.path("local-cache"))
            .args(&["--read-only"]),
    ) else {
        return;
    };
    let fetch = FileFetch::new(&dir);
    // No fill: the queue is per process, and another test here starts its own.
    let stack = open_lazy(&dir, &fetch, &sb, quiet());
    let ov = LowerView::new(Arc::new(stack.tree().unwrap()), stack.layer_labels());
    drop(stack);
    let mnt = sb.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let mut lazy = InProcess::mount(ov, &mnt);
    Listing::walk(&mnt).assert_same(&Listing::walk(&local.mnt), "lazy mount vs local mount");
    let small = std::fs::read(mnt.join("usr/tail")).unwrap();
    assert_eq!(small, b"the end\n");
    lazy.finish()
        .expect("mounted")
        .expect("session ended cleanly");
    drop(local);
}

#[test]
fn a_blob_of_another_length_than_its_descriptor_is_refused() {
    let sb = Sandbox::new();
    let dir = layout(&sb, Codec::Gzip);
    for delta in [-1i64, 1] {
        let fetch = FileFetch::new(&dir);
        let mut img = open_remote(&dir, &fetch, &sb.path("scratch"));
        if let rimgfs::image::Blob::Remote(r) = &mut img.layers[0].blob {
            r.len = (r.len as i64 + delta) as u64;
        }
        let e = Stack::prepare(img, &Cache::new(sb.path(&format!("c{delta}"))), None).unwrap_err();
        let m = common::message(&e);
        assert!(m.contains("layer 0"), "{m}");
        assert!(
            m.contains("longer than its descriptor") || m.contains("ended early"),
            "{m}"
        );
        // Bounded: a few streams, no endless resuming.
        assert!(fetch.streams.load(std::sync::atomic::Ordering::SeqCst) <= 5);
    }
}
