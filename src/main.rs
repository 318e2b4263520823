//! The `rimgfs` command: parse, set the log level, run, map the outcome to an exit status.

use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match rimgfs::cli::parse_args(std::env::args_os()) {
        Ok(c) => c,
        Err(e) => {
            // --help and --version are not errors; clap prints them and picks the status.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    rimgfs::logger::init(cli.verbose);
    // Before anything else runs (the mount daemon is forked from this process).
    rimgfs::cli::hide_credentials();
    match rimgfs::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => rimgfs::report(&e),
    }
}
