//! rimgfs: mount a container image as its merged filesystem.
//!
//! Data flows one way, each stage knowing only the one below:
//! ```text
//! image (sources, manifests) ─▶ layer (tar index, cache) ─▶ tree (merged lower, immutable)
//!     ─▶ overlay (operations, Result<_, Errno>) ─▶ fuse (thin adapter) ─▶ cli / mount
//! ```
//! Nothing below `fuse` knows fuser types, so the logic is tested without a kernel.

pub mod cache;
pub mod cli;
pub mod commands;
pub mod error;
pub mod fuse;
pub mod image;
pub mod layer;
pub mod logger;
pub mod mount;
pub mod overlay;
pub mod stack;
pub mod sys;
pub mod tree;
pub mod upper;

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
            let store = overlay::PassthroughStore {
                dir: img.cache.root().join("files"),
                layer_keys: keys,
            };
            let mut ov = overlay::Overlay::new(tree, stack.layer_labels());
            // Passthrough needs CAP_SYS_ADMIN; without it, no-open mode serves better.
            if opts.passthrough && nix::unistd::geteuid().is_root() {
                ov = ov.with_passthrough(store);
            }
            drop(stack);
            mount::mount(ov, &mnt, &opts, cli.verbose > 0)
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
    }
}

/// Prints an error as `rimgfs: <error>: <cause>...` and maps it to the exit status.
pub fn report(err: &Error) -> ExitCode {
    eprintln!("rimgfs: {}", error::chain(err));
    ExitCode::from(err.exit_code())
}
