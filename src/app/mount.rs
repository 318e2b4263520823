//! `rimgfs mount`: builds the view an image's mount serves and hands it to [`crate::mount`].
//!
//! In order, so that a bad argument fails before any layer is read: the image selection and
//! the mount options are validated, the mount point checked; then the layers are prepared
//! and merged, and the view built: read-only (with kernel passthrough for big files when
//! allowed), or writable over an upper layer, `--upper DIR` or an ephemeral one.
//! Dependencies: cli, stack, view, upper, cow, fuse, mount, error.

use std::path::PathBuf;
use std::sync::Arc;

use crate::cache::Cache;
use crate::cli::MountCommand;
use crate::error::{Error, Result};
use crate::mount::{self, MountOptions};
use crate::stack::Stack;
use crate::upper::{self, ephemeral};
use crate::{cow, fuse, view};

/// Runs `rimgfs mount`; `verbose` is the `-v` count (a daemon that logs keeps its stderr).
pub fn run(a: MountCommand, verbose: u8) -> Result<()> {
    let opts = MountOptions {
        source: a.image.clone(),
        ..a.mount.to_config()?
    };
    let select = crate::cli::ImageArgs {
        cache_dir: opts.cache_dir.clone().or(a.select.cache_dir),
        ..a.select
    };
    let img = select.to_config(&a.image)?;
    let mnt = mount::check_mountpoint(&a.mountpoint)?;
    let stack = Stack::open(&img.spec, &img.open, &img.cache, opts.layer)?;
    let tree = Arc::new(stack.tree()?);
    log::info!(
        "merged tree: {} entries, {} inodes, {} bytes of tree data ({} per entry)",
        tree.entry_count(),
        tree.len(),
        tree.heap_bytes(),
        tree.heap_bytes() / tree.entry_count().max(1)
    );
    let keys = stack
        .image
        .layers
        .iter()
        .map(|l| l.diff_id.hex().to_string())
        .collect();
    let store = view::PassthroughStore {
        dir: img.cache.root().join("passthrough"),
        layer_keys: keys,
    };
    let mut ov = view::LowerView::new(tree, stack.layer_labels());
    drop(stack);
    if opts.read_only {
        // Passthrough needs CAP_SYS_ADMIN; without it, no-open mode serves better.
        if opts.passthrough && nix::unistd::geteuid().is_root() {
            ov = ov.with_passthrough(store);
        }
        return mount::mount(fuse::Fuse::new(ov), &mnt, &opts, verbose > 0, None);
    }
    let (upper, scratch) = open_upper(&opts, &img.cache)?;
    let mut cow = cow::Cow::new(ov, upper);
    // As on a read-only mount, but from copies of the mount's own (see `cow`).
    if opts.passthrough && nix::unistd::geteuid().is_root() {
        cow = cow.with_passthrough_copies();
    }
    let fs = fuse::Fuse::new(cow);
    mount::mount(fs, &mnt, &opts, verbose > 0, scratch)
}

/// Opens the upper layer of a writable mount: `--upper DIR` (work directory `--work`, or
/// `DIR.work` beside it), or a fresh one in the cache that is removed when the mount ends
/// (whose path is returned too).
fn open_upper(opts: &MountOptions, cache: &Cache) -> Result<(upper::Upper, Option<PathBuf>)> {
    let (up, work, scratch) = match &opts.upper {
        Some(u) => {
            let work = opts.work.clone().unwrap_or_else(|| {
                let mut w = u.as_os_str().to_os_string();
                w.push(".work");
                w.into()
            });
            (u.clone(), work, None)
        }
        None => {
            let e = ephemeral::create(cache)?;
            (e.upper, e.work, Some(e.dir))
        }
    };
    let u = upper::Upper::open(&up, &work).map_err(|e| Error::Mount {
        path: up.clone(),
        reason: format!("cannot use as upper directory: {e}"),
    })?;
    Ok((u, scratch))
}
