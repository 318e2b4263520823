//! `rimgfs diff`: what an overlayfs upper directory changes in an image, as `docker diff`
//! lists it. Dependencies: stack, changes, error.

use std::io::Write;

use super::open_stack;
use crate::changes;
use crate::cli::DiffCommand;
use crate::error::Result;

/// Runs `rimgfs diff`.
pub fn run(a: DiffCommand, out: &mut dyn Write) -> Result<()> {
    let stack = open_stack(&a.image, &a.select, None)?;
    let tree = stack.tree()?;
    let upper = changes::UpperTree::scan(&a.upper)?;
    let list = changes::diff(&changes::MergedView::new(&tree, &upper))?;
    changes::print(&list, a.json, out)
}
