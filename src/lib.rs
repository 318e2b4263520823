//! rimgfs: mount a container image as its merged filesystem.
//!
//! Data flows one way, each stage knowing only the ones before it:
//! ```text
//! image (sources, manifests) ─▶ layer (tar index, cache) ─▶ tree (merged lower, immutable)
//!     ─▶ upper (the upper directory: its format, copy-up) ─▶ merge (overlayfs's lookup rule)
//!     ─▶ view (the read-only view; what both views share) ─▶ cow (the writable view)
//!     ─▶ fuse (switchboard over one view) ─▶ mount ─▶ app (subcommands)
//!          merge ─▶ changes (upper read whole, A/C/D) ─▶ commit (new layer and image)
//! ```
//! Nothing before `fuse` knows fuser types, so the logic is tested without a kernel.

pub mod cache;
pub mod changes;
pub mod cli;
pub mod commands;
pub mod commit;
pub mod cow;
pub mod error;
pub mod fuse;
pub mod image;
pub mod layer;
pub mod logger;
pub mod merge;
pub mod mount;
pub mod stack;
pub mod sys;
pub mod tree;
pub mod upper;
pub mod view;

use std::process::ExitCode;
use std::sync::Arc;

use cli::{Cli, Command};
use error::Error;

/// Runs a parsed command line; the error, if any, is printed by the caller.
pub fn run(cli: Cli) -> Result<(), Error> {
    let stdout = &mut std::io::stdout().lock();
    match cli.cmd {
        Command::Mount {
            image,
            mountpoint,
            select,
            mount,
        } => {
            let img = select.to_config(&image)?;
            let opts = mount.to_config()?;
            let mnt = mount::check_mountpoint(&mountpoint)?;
            let stack = stack::Stack::open(&img.spec, &img.open, &img.cache, opts.layer)?;
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
                return mount::mount(fuse::Fuse::new(ov), &mnt, &opts, cli.verbose > 0, None);
            }
            let (upper, scratch) = open_upper(&opts, &img.cache)?;
            let fs = fuse::Fuse::new(cow::Cow::new(ov, upper));
            mount::mount(fs, &mnt, &opts, cli.verbose > 0, scratch)
        }
        Command::Umount { mountpoint, lazy } => mount::umount(&mountpoint, lazy),
        Command::Inspect {
            image,
            select,
            json,
        } => {
            let img = select.to_config(&image)?;
            let stack = stack::Stack::open(&img.spec, &img.open, &img.cache, None)?;
            commands::inspect(&stack, json, stdout)
        }
        Command::Ls {
            image,
            path,
            select,
            long,
            recursive,
            layers,
            layer,
        } => {
            let img = select.to_config(&image)?;
            let stack = stack::Stack::open(&img.spec, &img.open, &img.cache, layer)?;
            let tree = stack.tree()?;
            let o = commands::LsOptions {
                long,
                recursive,
                layers,
            };
            commands::ls(&stack, &tree, &path, o, stdout)
        }
        Command::Cat {
            image,
            path,
            select,
            layer,
        } => {
            let img = select.to_config(&image)?;
            let stack = stack::Stack::open(&img.spec, &img.open, &img.cache, layer)?;
            let tree = Arc::new(stack.tree()?);
            commands::cat(&stack, tree, &path, stdout)
        }
        Command::Diff {
            image,
            upper,
            select,
            json,
        } => {
            let img = select.to_config(&image)?;
            let stack = stack::Stack::open(&img.spec, &img.open, &img.cache, None)?;
            let tree = stack.tree()?;
            let upper = changes::UpperTree::scan(&upper)?;
            let list = changes::diff(&changes::MergedView::new(&tree, &upper))?;
            changes::print(&list, json, stdout)
        }
        Command::Commit {
            image,
            upper,
            output,
            tag,
            format,
            message,
            select,
        } => {
            let img = select.to_config(&image)?;
            let stack = stack::Stack::open(&img.spec, &img.open, &img.cache, None)?;
            let tree = stack.tree()?;
            let upper = changes::UpperTree::scan(&upper)?;
            let opts = commit::CommitOptions {
                output,
                tag,
                format: format.into(),
                message,
            };
            let done = commit::commit(&stack, &changes::MergedView::new(&tree, &upper), &opts)?;
            log::info!("layer {}, manifest {}", done.layer, done.manifest);
            Ok(())
        }
    }
}

/// Opens the upper layer of a writable mount: `--upper DIR` (work directory `--work`, or
/// `DIR.work` beside it), or a fresh one in the cache that is removed when the mount ends
/// (whose path is returned too).
fn open_upper(
    opts: &cli::MountOptions,
    cache: &cache::Cache,
) -> Result<(upper::Upper, Option<std::path::PathBuf>), Error> {
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
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let eph = cache.root().join("ephemeral");
            remove_dead_ephemeral(&eph);
            let base = eph.join(format!("{}.{stamp}", std::process::id()));
            let err = |e: std::io::Error| Error::Mount {
                path: base.clone(),
                reason: e.to_string(),
            };
            std::fs::create_dir_all(&base).map_err(err)?;
            let lock = std::fs::File::create(base.join(EPHEMERAL_LOCK)).map_err(err)?;
            let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|(_, e)| err(e.into()))?;
            // Held until the daemon (which inherits it across the fork) exits.
            std::mem::forget(held);
            (base.join("upper"), base.join("work"), Some(base))
        }
    };
    let u = upper::Upper::open(&up, &work).map_err(|e| Error::Mount {
        path: up.clone(),
        reason: format!("cannot use as upper directory: {e}"),
    })?;
    Ok((u, scratch))
}

/// Lock file of an ephemeral upper layer: held (flock) by its daemon for its whole life.
const EPHEMERAL_LOCK: &str = "lock";

/// Removes ephemeral upper layers whose daemon is gone (killed before it could clean up):
/// those whose lock nobody holds.
fn remove_dead_ephemeral(dir: &std::path::Path) {
    use nix::fcntl::{Flock, FlockArg};
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(f) = std::fs::File::open(e.path().join(EPHEMERAL_LOCK)) else {
            continue;
        };
        if Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok() {
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                log::warn!("removing stale {}: {err}", e.path().display());
            }
        }
    }
}

/// Prints an error as `rimgfs: <error>: <cause>...` and maps it to the exit status.
pub fn report(err: &Error) -> ExitCode {
    eprintln!("rimgfs: {}", error::chain(err));
    ExitCode::from(err.exit_code())
}
