//! Blobs that live outside the host's files (in a registry), read by range on demand.
//!
//! A source that serves such blobs implements [`BlobFetch`]; a layer then names its blob as a
//! [`RemoteBlob`], and the layer level decides what to fetch and when. Nothing here verifies:
//! the reader of a range checks it against the digest it knows (the blob's, or a chunk's).
//! Dependencies: digest.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::sync::Arc;

use super::digest::Digest;

/// Ranged, retried access to the blobs of one repository.
pub trait BlobFetch: Send + Sync + fmt::Debug {
    /// A stream of blob `digest`'s bytes from `offset` to its end.
    fn stream(&self, digest: &Digest, offset: u64) -> io::Result<Box<dyn Read + Send>>;

    /// Exactly the `len` bytes of blob `digest` at `offset`.
    fn range(&self, digest: &Digest, offset: u64, len: u64) -> io::Result<Vec<u8>>;

    /// Names the repository in messages (`docker://host/name`), never with credentials.
    fn describe(&self) -> String;
}

/// A layer blob in a repository.
#[derive(Clone)]
pub struct RemoteBlob {
    /// Where to fetch it from.
    pub fetch: Arc<dyn BlobFetch>,
    /// Its digest (what the manifest names).
    pub digest: Digest,
    /// Its size, from the manifest's descriptor.
    pub len: u64,
    /// The descriptor's annotations (a table of contents' position, for chunked formats).
    pub annotations: BTreeMap<String, String>,
}

impl fmt::Debug for RemoteBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteBlob")
            .field("repository", &self.fetch.describe())
            .field("digest", &self.digest)
            .field("len", &self.len)
            .finish()
    }
}

/// The error of a fetch that asking again cannot mend: the fetcher's own retries are spent,
/// or the answer is final (404, refused credentials). Callers do not retry it.
#[derive(Debug)]
pub struct Spent(pub String);

impl fmt::Display for Spent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Spent {}

impl Spent {
    /// `msg` as an I/O error callers recognise with [`Spent::is`].
    pub fn error(msg: String) -> io::Error {
        io::Error::other(Spent(msg))
    }

    /// Whether `e` is a spent fetch's error.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|i| i.is::<Spent>())
    }
}
