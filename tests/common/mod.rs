//! Shared support for the integration tests.
//!
//! - [`spec`]: a text language for layer contents, turned into layer tars;
//! - [`image`]: writers for every source shape (docker-save legacy, Docker 25+, containerd,
//!   OCI layout directory and archive, multi-image, multi-platform), with correct digests;
//! - [`harness`]: running the CLI, and real FUSE mounts behind a cleaning-up guard;
//! - [`engines`]: podman with a private store, a Docker Engine of the test's own, a counting
//!   proxy for its socket, treesum comparisons;
//! - [`listing`]: a comparable listing of a mount, an extracted tree, the library's merged
//!   tree, or a spec of the expected tree;
//! - [`registry`]: a real registry (docker-registry) filled by skopeo, with TLS and auth
//!   variants; [`proxy`]: a recording, fault-injecting proxy in front of it.
//!
//! Each test binary uses part of this, hence `dead_code`.

#![allow(dead_code, unused_imports, missing_docs)]

pub mod engines;
pub mod harness;
pub mod image;
pub mod listing;
pub mod overlay;
pub mod proxy;
pub mod registry;
pub mod remote;
pub mod spec;

use std::path::{Path, PathBuf};

use rimgfs::cache::Cache;
use rimgfs::error::Error;
use rimgfs::image::{ImageSpec, OpenOptions};
use rimgfs::stack::Stack;
use rimgfs::tree::LowerTree;
use rimgfs::tree::node::{Node, NodeKind};

pub use harness::{MountGuard, MountOpts, Output, rimgfs};
pub use image::{Codec, ImageDef, MediaType, Shape};
pub use listing::Listing;

/// Skips (prints `skipped: <reason>`, returns `None`) when a precondition is missing, except
/// under `CI=true`, where that is a failure.
pub fn require<T>(v: Option<T>, reason: &str) -> Option<T> {
    if v.is_none() {
        harness::skip(reason);
    }
    v
}

/// Runs `prog ARGS...`, panicking with its output unless it succeeds.
#[track_caller]
pub fn run_ok(prog: &str, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(prog);
    cmd.args(args);
    let out = harness::run_command(cmd);
    assert_eq!(
        out.code,
        Some(0),
        "{prog} {args:?} failed:\n{}{}",
        out.stdout,
        out.stderr
    );
    out
}

/// Builds the context directory `ctx` (holding a `Containerfile`) with
/// `podman build --isolation chroot` in a private vfs storage under `work`, saves the image as
/// a docker-archive `work/<name>` and returns that path.
pub fn podman_build(work: &Path, ctx: &Path, tag: &str, name: &str) -> PathBuf {
    let podman = engines::Podman::new(&work.join("storage"), "vfs");
    podman.build(ctx, tag);
    let out = work.join(name);
    podman.save(tag, &out);
    podman.run(&["rmi", "-f", tag]);
    out
}

/// `../shared/tools/treesum.py`.
pub fn treesum() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/tools/treesum.py")
}

/// Compares two trees (or recorded treesums) with treesum and `extra` options: every
/// attribute, content hashes, hard-link groups. `Err` holds the differences.
pub fn treesum_compare(expected: &Path, actual: &Path, extra: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new("python3")
        .arg(treesum())
        .arg("--compare")
        .args(extra)
        .arg(expected)
        .arg(actual)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() && text.contains(" 0 failed") {
        Ok(())
    } else {
        Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A temporary directory for one test: images, cache, scratch.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix("rimgfs-test-")
                .tempdir()
                .unwrap(),
        }
    }

    /// A path inside the sandbox.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The test's own cache directory (never the system default).
    pub fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// Writes `images` in `shape` as `name` and returns its path.
    pub fn write(&self, name: &str, shape: Shape, images: &[ImageDef], c: Codec) -> PathBuf {
        let p = self.path(name);
        shape.write(images, &p, c);
        p
    }

    /// Writes a spec as a legacy docker-save archive `image.tar` and returns its path.
    pub fn image(&self, spec: &str) -> PathBuf {
        self.write(
            "image.tar",
            Shape::DockerLegacy,
            &[ImageDef::from_spec(spec)],
            Codec::None,
        )
    }
}

/// An image opened through the library, with its merged tree.
pub struct Opened {
    pub stack: Stack,
    pub tree: LowerTree,
}

impl Opened {
    /// The node at an image path (`/etc/hosts`), not following symlinks.
    pub fn node(&self, path: &str) -> Option<Node> {
        self.tree
            .resolve(path.as_bytes())
            .and_then(|id| self.tree.node(id))
    }

    /// The node at a path given as bytes.
    pub fn node_bytes(&self, path: &[u8]) -> Option<Node> {
        self.tree.resolve(path).and_then(|id| self.tree.node(id))
    }

    /// The node at a path; panics with the tree's paths if missing.
    #[track_caller]
    pub fn get(&self, path: &str) -> Node {
        self.node(path)
            .unwrap_or_else(|| panic!("{path} not in tree; paths: {:?}", self.listing().paths()))
    }

    /// The content of a regular file.
    #[track_caller]
    pub fn content(&self, path: &str) -> Vec<u8> {
        read_node(&self.tree, &self.get(path))
    }

    /// Names of a directory's children.
    pub fn names(&self, path: &str) -> Vec<String> {
        let id = self
            .tree
            .resolve(path.as_bytes())
            .expect("directory exists");
        self.tree
            .children(id)
            .iter()
            .map(|e| listing::show(self.tree.name(e)))
            .collect()
    }

    /// The tree as a listing.
    pub fn listing(&self) -> Listing {
        Listing::of_tree(&self.tree)
    }
}

/// A regular file's bytes, read from its layer data file.
pub fn read_node(tree: &LowerTree, n: &Node) -> Vec<u8> {
    let NodeKind::File(d) = n.kind else {
        panic!("not a regular file: {n:?}")
    };
    let mut buf = vec![0u8; d.size as usize];
    tree.data_files[usize::from(d.layer)]
        .read_exact_at(&mut buf, d.offset)
        .unwrap();
    buf
}

/// Opens an image argument (`PATH[:REF]`, with a transport prefix) through the library:
/// `Stack::open` then `tree()`, as `rimgfs mount` does.
pub fn open_arg(
    arg: &str,
    opts: &OpenOptions,
    cache: &Path,
    upto: Option<usize>,
) -> Result<Opened, Error> {
    let spec = ImageSpec::parse(arg)?;
    let stack = Stack::open(&spec, opts, &Cache::new(cache.to_path_buf()), upto)?;
    let tree = stack.tree()?;
    Ok(Opened { stack, tree })
}

/// Opens an image file with default options.
pub fn open_path(path: &Path, cache: &Path) -> Result<Opened, Error> {
    open_arg(path.to_str().unwrap(), &OpenOptions::default(), cache, None)
}

/// Builds a legacy docker-save archive from a spec and opens it; the sandbox keeps the files.
pub fn try_open_spec(sb: &Sandbox, spec: &str, upto: Option<usize>) -> Result<Opened, Error> {
    let p = sb.image(spec);
    open_arg(
        p.to_str().unwrap(),
        &OpenOptions::default(),
        &sb.cache(),
        upto,
    )
}

/// Like [`try_open_spec`], panicking on error.
#[track_caller]
pub fn open_spec(sb: &Sandbox, spec: &str) -> Opened {
    try_open_spec(sb, spec, None)
        .unwrap_or_else(|e| panic!("open failed: {}", rimgfs::error::chain(&e)))
}

/// The full message of an error, as `rimgfs` prints it.
pub fn message(e: &Error) -> String {
    rimgfs::error::chain(e)
}
