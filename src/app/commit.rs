//! `rimgfs commit`: a new image of an image's layers plus one layer of what an overlayfs
//! upper directory changes. Dependencies: stack, changes, commit, error.

use super::open_stack;
use crate::changes;
use crate::cli::CommitCommand;
use crate::commit::{self, CommitOptions};
use crate::error::Result;

/// Runs `rimgfs commit`.
pub fn run(a: CommitCommand) -> Result<()> {
    let stack = open_stack(&a.image, &a.select, None)?;
    let tree = stack.tree()?;
    let upper = changes::UpperTree::scan(&a.upper)?;
    let opts = CommitOptions {
        output: a.output,
        tag: a.tag,
        format: a.format.into(),
        message: a.message,
    };
    let done = commit::commit(&stack, &changes::MergedView::new(&tree, &upper), &opts)?;
    log::info!("layer {}, manifest {}", done.layer, done.manifest);
    Ok(())
}
