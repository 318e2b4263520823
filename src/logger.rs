//! A minimal stderr logger (ripgrep style): no filtering inside, the level is set once by
//! `main` from the `-v` count. Dependencies: log.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct Logger;

static LOGGER: Logger = Logger;

impl Log for Logger {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        // fuser logs every unimplemented or failing kernel request at warn; those are
        // expected traffic for a filesystem, so they only show from -vv on.
        if record.target().starts_with("fuser")
            && record.level() > Level::Error
            && log::max_level() < LevelFilter::Debug
        {
            return;
        }
        // The HTTP and TLS stacks log URLs with their query (a storage redirect's signature)
        // at trace level; rimgfs logs its own requests without secrets instead.
        if ["ureq", "rustls"]
            .iter()
            .any(|t| record.target().starts_with(t))
        {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        let _ = writeln!(
            std::io::stderr().lock(),
            "rimgfs: {level}: {}",
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger with the level for `verbose` (`0` = warn, `1` = info, `2` = debug,
/// `3+` = trace).
pub fn init(verbose: u8) {
    let level = match verbose {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    // A second init (tests) keeps the first logger; only the level changes.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}
