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

pub mod app;
pub mod cache;
pub mod changes;
pub mod cli;
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

use cli::{Cli, Command};
use error::Error;

/// Runs a parsed command line; the error, if any, is printed by the caller.
pub fn run(cli: Cli) -> Result<(), Error> {
    let stdout = &mut std::io::stdout().lock();
    match cli.cmd {
        Command::Mount(a) => app::mount::run(a, cli.verbose),
        Command::Umount(a) => app::umount::run(a),
        Command::Inspect(a) => app::inspect::run(a, stdout),
        Command::Ls(a) => app::ls::run(a, stdout),
        Command::Cat(a) => app::cat::run(a, stdout),
        Command::Diff(a) => app::diff::run(a, stdout),
        Command::Commit(a) => app::commit::run(a),
        Command::Cache(a) => app::cache::run(a, stdout),
        Command::Completions(a) => app::completions::run(a, stdout),
    }
}

/// Prints an error as `rimgfs: <error>: <cause>...` and maps it to the exit status.
pub fn report(err: &Error) -> ExitCode {
    eprintln!("rimgfs: {}", error::chain(err));
    ExitCode::from(err.exit_code())
}
