//! Errors of the setup path (image, layer, tree, mount, CLI).
//!
//! The request path (FUSE operations) uses `nix::errno::Errno` instead; see `view`.
//! Every variant carries enough context to print a one-line message that names the file and
//! the problem. Dependencies: std, thiserror.

use std::io;
use std::path::{Path, PathBuf};

/// Result alias for the setup path.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A setup-path error. `Display` is a lower-case phrase without a trailing period.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named file failed.
    #[error("{path}: {op}: {source}")]
    Io {
        /// What was being done ("open", "read", ...).
        op: &'static str,
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A blob or layer does not hash to the digest it is known by.
    #[error("{path}: digest mismatch for {what}: expected {expected}, found {found}")]
    DigestMismatch {
        /// The archive or directory holding the blob.
        path: PathBuf,
        /// Which blob ("blob sha256:..", "layer 2 diff_id").
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        found: String,
    },
    /// A blob is not the size its descriptor says.
    #[error("{path}: size mismatch for {what}: expected {expected} bytes, found {found}")]
    SizeMismatch {
        /// The archive or directory holding the blob.
        path: PathBuf,
        /// Which blob.
        what: String,
        /// Size from the descriptor.
        expected: u64,
        /// Actual size.
        found: u64,
    },
    /// A blob named by a manifest or index is not in the image.
    #[error("{path}: missing blob {digest}")]
    MissingBlob {
        /// The archive or directory.
        path: PathBuf,
        /// The digest (or member name) looked for.
        digest: String,
    },
    /// A digest string is not of the form `algorithm:hex`.
    #[error("{path}: invalid digest {digest:?}")]
    BadDigest {
        /// The image (file or directory) whose document names it.
        path: PathBuf,
        /// The string found.
        digest: String,
    },
    /// A manifest, index or config could not be understood.
    #[error("{path}: {reason}")]
    BadImage {
        /// The file or archive concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A layer tar could not be read or holds something rimgfs refuses.
    #[error("{path}: layer {layer}: {reason}")]
    BadLayer {
        /// The archive or blob file holding the layer.
        path: PathBuf,
        /// Layer position, bottom first, with its digest.
        layer: String,
        /// What is wrong.
        reason: String,
    },
    /// An overlayfs upper directory holds something its format does not allow.
    #[error("{path}: {reason}")]
    BadUpper {
        /// The upper entry concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The reference given does not name an image in the archive.
    #[error("{path}: {reason}")]
    UnknownRef {
        /// The archive.
        path: PathBuf,
        /// What was asked for and what exists.
        reason: String,
    },
    /// A path inside the merged image does not exist or is of the wrong type.
    #[error("{path}: {reason}")]
    NotFound {
        /// The path within the image.
        path: String,
        /// What went wrong.
        reason: &'static str,
    },
    /// The mount could not be set up.
    #[error("{path}: {reason}")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A configuration file (registries.conf, an auth file) could not be used.
    #[error("{path}: {reason}")]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A registry could not be reached, refused access, or answered wrongly.
    #[error("{image}: {reason}")]
    Registry {
        /// The image, as `docker://registry/repository[:tag][@digest]`.
        image: String,
        /// What happened, naming the registry (never a credential).
        reason: String,
    },
    /// Bad command-line usage (exit status 2).
    #[error("{0}")]
    Usage(String),
    /// An error about another file (a cache file) met while using an image: names the image.
    #[error("{path}: {source}")]
    InImage {
        /// The image (file or directory) being used.
        path: PathBuf,
        /// The error, which names its own file.
        source: Box<Error>,
    },
}

impl Error {
    /// Shorthand for a [`Error::BadImage`].
    pub fn bad_image(path: &Path, reason: impl Into<String>) -> Self {
        Error::BadImage {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    /// The process exit status this error maps to (see EXIT STATUS in `rimgfs.1`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::InImage { source, .. } => source.exit_code(),
            _ => 1,
        }
    }

    /// The host file or directory the error names, if any.
    pub fn file(&self) -> Option<&Path> {
        match self {
            Error::Io { path, .. }
            | Error::DigestMismatch { path, .. }
            | Error::SizeMismatch { path, .. }
            | Error::MissingBlob { path, .. }
            | Error::BadDigest { path, .. }
            | Error::BadImage { path, .. }
            | Error::BadLayer { path, .. }
            | Error::BadUpper { path, .. }
            | Error::UnknownRef { path, .. }
            | Error::Mount { path, .. }
            | Error::Config { path, .. }
            | Error::InImage { path, .. } => Some(path),
            Error::NotFound { .. } | Error::Registry { .. } | Error::Usage(_) => None,
        }
    }

    /// Makes an error met while using `image` name it: an error about a file outside it (the
    /// cache's copy of a compressed archive, a cache entry) is wrapped in [`Error::InImage`].
    pub fn in_image(self, image: &Path) -> Error {
        match self.file() {
            Some(p) if p.starts_with(image) => self,
            _ if matches!(self, Error::Usage(_)) => self,
            _ => Error::InImage {
                path: image.to_path_buf(),
                source: Box::new(self),
            },
        }
    }
}

/// Adds file context to `io::Result`s: `.ctx("open", &path)?`.
pub trait Context<T> {
    /// Wraps the error in [`Error::Io`] with the operation and path.
    fn ctx(self, op: &'static str, path: &Path) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, io::Error> {
    fn ctx(self, op: &'static str, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        })
    }
}

/// Formats an error with all its causes: `a: b: c`, skipping a cause whose text the
/// outer message already contains (thiserror variants often print their source). Control
/// characters are escaped, so the message is one line whatever a cause quotes.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    show(out.as_bytes())
}

/// Shows a name in a message: UTF-8 as it is, control characters and bytes that are not
/// UTF-8 escaped (`\n`, `\xff`), so a message naming it stays on one line.
pub fn show(name: &[u8]) -> String {
    let mut s = String::with_capacity(name.len());
    for chunk in name.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                s.extend(c.escape_default());
            } else {
                s.push(c);
            }
        }
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_is_one_line() {
        let inner = io::Error::other("line one\nline two\r");
        let e = Error::Io {
            op: "read",
            path: PathBuf::from("img.tar"),
            source: inner,
        };
        assert_eq!(chain(&e), "img.tar: read: line one\\nline two\\r");
    }

    #[test]
    fn in_image_wraps_only_errors_about_other_files() {
        let io = |p: &str| Error::Io {
            op: "open",
            path: PathBuf::from(p),
            source: io::Error::other("gone"),
        };
        let img = Path::new("dir/oci");
        assert!(matches!(
            io("dir/oci/blobs/x").in_image(img),
            Error::Io { .. }
        ));
        let wrapped = io("/cache/archives/a.tar").in_image(img);
        assert_eq!(
            chain(&wrapped),
            "dir/oci: /cache/archives/a.tar: open: gone"
        );
        assert!(matches!(
            Error::Usage("u".into()).in_image(img),
            Error::Usage(_)
        ));
    }

    #[test]
    fn show_escapes_what_breaks_a_line() {
        assert_eq!(show(b"caf\xc3\xa9/a b"), "caf\u{e9}/a b");
        assert_eq!(show(b"a\nb\tc\0"), "a\\nb\\tc\\u{0}");
        assert_eq!(show(b"x\xffy"), "x\\xffy");
    }
}
