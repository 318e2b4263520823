//! `rimgfs completions SHELL`: the shell's completion script, generated from the clap
//! definitions in [`crate::cli`], so it always knows every command and option.
//! Dependencies: cli, clap_complete.

use std::io::Write;

use clap::CommandFactory;

use super::write_out;
use crate::cli::{Cli, CompletionsCommand};
use crate::error::Result;

/// Runs `rimgfs completions`.
pub fn run(a: CompletionsCommand, out: &mut dyn Write) -> Result<()> {
    let mut script = Vec::new();
    clap_complete::generate(
        clap_complete::Shell::from(a.shell),
        &mut Cli::command(),
        "rimgfs",
        &mut script,
    );
    write_out(out, &script)
}
