//! The subcommands, one file each: what `rimgfs <command>` does with its parsed arguments
//! ([`crate::cli`]). Each opens what it needs through the stages below it (image, stack,
//! tree, view, cow, fuse, mount, changes, commit); those that print write to the writer
//! they are given, so tests capture their output; [`json`] is the one schema of the JSON
//! that `inspect` and `ls` print.
//!
//! A new subcommand is one arguments struct in `cli.rs`, one file here and one arm in
//! [`crate::run`]. Dependencies: cli, stack and every stage a command drives.

pub mod cache;
pub mod cat;
pub mod commit;
pub mod completions;
pub mod diff;
pub mod inspect;
pub mod json;
pub mod ls;
pub mod mount;
pub mod umount;

use std::io::Write;
use std::path::Path;

use crate::cli::ImageArgs;
use crate::error::{Context, Result};
use crate::stack::Stack;

/// Opens the image a command names (`image` with its selection options), its layers
/// prepared up to `upto` (all when `None`).
fn open_stack(image: &str, select: &ImageArgs, upto: Option<usize>) -> Result<Stack> {
    let img = select.to_config(image)?;
    Stack::open(&img.spec, &img.open, &img.cache, upto)
}

/// Writes a command's output; an error names stdout, where it goes.
fn write_out(out: &mut dyn Write, bytes: &[u8]) -> Result<()> {
    out.write_all(bytes).ctx("write", Path::new("stdout"))
}
