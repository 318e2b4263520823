//! Content digests (`sha256:<hex>`, `sha512:<hex>`): parsing and streaming verification.
//!
//! A digest is validated before any path is built from it, so a hostile manifest cannot name
//! `../../etc/passwd` as a blob. Dependencies: error, sha2.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use sha2::{Digest as _, Sha256, Sha512};

use crate::error::{Error, Result};

/// A validated content digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

/// The hash algorithms rimgfs verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// SHA-256, 64 hex digits.
    Sha256,
    /// SHA-512, 128 hex digits.
    Sha512,
}

/// A string that is not a valid digest. It is not an [`Error`] by itself: the caller says
/// which image it came from ([`InvalidDigest::in_image`], [`Digest::parse_in`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidDigest(pub String);

impl InvalidDigest {
    /// The error for this string found in `image`'s documents.
    pub fn in_image(self, image: &Path) -> Error {
        Error::BadDigest {
            path: image.to_path_buf(),
            digest: self.0,
        }
    }
}

impl Digest {
    /// Parses `algorithm:hex`; only lower-case hex of the algorithm's exact length is valid
    /// (image-spec descriptor.md, "Digests").
    pub fn parse(s: &str) -> Result<Digest, InvalidDigest> {
        let bad = || InvalidDigest(s.to_string());
        let (alg, hex) = s.split_once(':').ok_or_else(bad)?;
        let len = match alg {
            "sha256" => 64,
            "sha512" => 128,
            _ => return Err(bad()),
        };
        let hex_ok =
            hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !hex_ok {
            return Err(bad());
        }
        Ok(Digest(s.to_string()))
    }

    /// Parses a digest found in a document of `image`; the error names the image.
    pub fn parse_in(s: &str, image: &Path) -> Result<Digest> {
        Digest::parse(s).map_err(|e| e.in_image(image))
    }

    /// Digest of a sha256 hex string (as found in legacy archive file names).
    pub fn sha256_hex(hex: &str) -> Result<Digest, InvalidDigest> {
        Digest::parse(&format!("sha256:{hex}"))
    }

    /// The algorithm part.
    pub fn algorithm(&self) -> Algorithm {
        if self.0.starts_with("sha512:") {
            Algorithm::Sha512
        } else {
            Algorithm::Sha256
        }
    }

    /// The algorithm name ("sha256").
    pub fn algorithm_name(&self) -> &str {
        self.0.split_once(':').map_or("", |(a, _)| a)
    }

    /// The hex part; safe to use as a file name.
    pub fn hex(&self) -> &str {
        self.0.split_once(':').map_or("", |(_, h)| h)
    }

    /// The whole `algorithm:hex` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The relative blob path in an OCI layout: `blobs/<alg>/<hex>`.
    pub fn blob_path(&self) -> String {
        format!("blobs/{}/{}", self.algorithm_name(), self.hex())
    }

    /// Digest of a byte slice.
    pub fn of_bytes(alg: Algorithm, data: &[u8]) -> Digest {
        let mut h = Hasher::new(alg);
        h.update(data);
        h.finish()
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An incremental hasher for either algorithm.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher.
    pub fn new(alg: Algorithm) -> Hasher {
        match alg {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The algorithm's name in a digest.
    fn name(&self) -> &'static str {
        match self {
            Hasher::Sha256(_) => "sha256",
            Hasher::Sha512(_) => "sha512",
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let (alg, bytes): (&str, Vec<u8>) = match self {
            Hasher::Sha256(h) => ("sha256", h.finalize().to_vec()),
            Hasher::Sha512(h) => ("sha512", h.finalize().to_vec()),
        };
        let mut s = String::with_capacity(alg.len() + 1 + bytes.len() * 2);
        s.push_str(alg);
        s.push(':');
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        Digest(s)
    }
}

/// A stream past this many bytes is hashed on a thread of its own from then on, so that
/// reading or decompressing it and hashing it share two cores; a shorter one is not worth a
/// thread (an image may have hundreds of small layers).
const BACKGROUND_AFTER: u64 = 8 << 20;
/// Bytes handed to the hashing thread at a time.
const CHUNK: usize = 1 << 20;
/// Chunks that may wait for the hashing thread before the reader waits for it.
const QUEUE: usize = 4;

/// A hasher on a thread of its own, fed in chunks (see [`BACKGROUND_AFTER`]).
struct Background {
    alg: &'static str,
    tx: mpsc::SyncSender<Vec<u8>>,
    /// Chunks the thread is done with, to be filled again.
    spare: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    thread: thread::JoinHandle<Hasher>,
}

impl Background {
    /// Carries on from `h` on a new thread, if one can be made.
    fn start(h: &Hasher) -> Option<Background> {
        let alg = h.name();
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (back, spare) = mpsc::channel();
        // A copy goes to the thread: the state is a few words, and the original stays with
        // the caller should no thread start.
        let mut moved = h.clone();
        let started = thread::Builder::new().name("hash".into()).spawn(move || {
            for chunk in rx {
                moved.update(&chunk);
                let _ = back.send(chunk);
            }
            moved
        });
        match started {
            Ok(thread) => Some(Background {
                alg,
                tx,
                spare,
                buf: Vec::with_capacity(CHUNK),
                thread,
            }),
            Err(e) => {
                log::debug!("hashing in the reading thread: {e}");
                None
            }
        }
    }

    fn update(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send();
        }
    }

    fn send(&mut self) {
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let full = std::mem::replace(&mut self.buf, next);
        self.buf.clear();
        // A thread that is gone shows at `finish`.
        let _ = self.tx.send(full);
    }

    fn finish(mut self) -> Digest {
        if !self.buf.is_empty() {
            self.send();
        }
        drop(self.tx);
        match self.thread.join() {
            Ok(h) => h.finish(),
            // Matches no digest: the content is refused as unverified.
            Err(_) => Digest(format!("{}:hashing-failed", self.alg)),
        }
    }
}

/// A hasher in this thread or on one of its own.
enum Hashing {
    Here(Hasher),
    Background(Background),
}

/// A reader that hashes and counts what passes through it; a long stream is hashed on a
/// thread of its own (see [`BACKGROUND_AFTER`]).
pub struct HashingReader<R> {
    inner: R,
    hasher: Option<Hashing>,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wraps `inner`; `alg` of `None` only counts.
    pub fn new(inner: R, alg: Option<Algorithm>) -> Self {
        HashingReader {
            inner,
            hasher: alg.map(|a| Hashing::Here(Hasher::new(a))),
            count: 0,
        }
    }

    /// Reads the rest of the stream so the digest covers all of it (tar readers stop at the
    /// end-of-archive marker, which may be followed by padding that is part of the blob).
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The digest (if hashing), the byte count and the inner reader.
    pub fn into_parts(self) -> (Option<Digest>, u64, R) {
        (self.hasher.map(Hashing::finish), self.count, self.inner)
    }

    /// The digest (if hashing) and the byte count.
    pub fn finish(self) -> (Option<Digest>, u64) {
        (self.hasher.map(Hashing::finish), self.count)
    }
}

impl Hashing {
    fn finish(self) -> Digest {
        match self {
            Hashing::Here(h) => h.finish(),
            Hashing::Background(b) => b.finish(),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match &mut self.hasher {
            Some(Hashing::Here(h)) => h.update(&buf[..n]),
            Some(Hashing::Background(b)) => b.update(&buf[..n]),
            None => {}
        }
        self.count += n as u64;
        if self.count >= BACKGROUND_AFTER && matches!(self.hasher, Some(Hashing::Here(_))) {
            if let Some(Hashing::Here(h)) = self.hasher.take() {
                self.hasher = Some(match Background::start(&h) {
                    Some(b) => Hashing::Background(b),
                    None => Hashing::Here(h),
                });
            }
        }
        Ok(n)
    }
}

/// A reader that copies everything it reads into a writer (decompressed layer → cache file).
pub struct TeeReader<R, W> {
    inner: R,
    out: W,
}

impl<R: Read, W: Write> TeeReader<R, W> {
    /// Wraps `inner`, copying into `out`.
    pub fn new(inner: R, out: W) -> Self {
        TeeReader { inner, out }
    }

    /// Gives back the writer.
    pub fn into_writer(self) -> W {
        self.out
    }
}

impl<R: Read, W: Write> Read for TeeReader<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parse_table() {
        let good = format!("sha256:{}", "a".repeat(64));
        let cases: &[(&str, bool)] = &[
            (&good, true),
            ("sha256:abc", false),
            ("sha256:../../etc/passwd", false),
            ("md5:0123", false),
            ("sha256", false),
            (&format!("sha256:{}", "A".repeat(64)), false),
            (&format!("sha512:{}", "0".repeat(128)), true),
            (&format!("sha256:{}/", "a".repeat(63)), false),
        ];
        for (s, ok) in cases {
            assert_eq!(Digest::parse(s).is_ok(), *ok, "{s}");
        }
    }

    #[test]
    fn digest_of_empty() {
        let d = Digest::of_bytes(Algorithm::Sha256, b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.blob_path(), format!("blobs/sha256/{}", d.hex()));
    }

    #[test]
    fn digest_of_a_long_stream_is_the_same_hashed_on_its_own_thread() {
        // Past the threshold, in odd-sized reads, chunks not a multiple of the read size.
        let len = BACKGROUND_AFTER as usize + 3 * CHUNK + 12_345;
        let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let mut r = HashingReader::new(&data[..], Some(alg));
            let mut buf = vec![0; 100_003];
            while r.read(&mut buf).unwrap() > 0 {}
            assert!(matches!(r.hasher, Some(Hashing::Background(_))));
            let (d, n) = r.finish();
            assert_eq!((d, n), (Some(Digest::of_bytes(alg, &data)), len as u64));
        }
        // Short streams stay in the reading thread.
        let mut r = HashingReader::new(&data[..1000], Some(Algorithm::Sha256));
        r.drain().unwrap();
        assert!(matches!(r.hasher, Some(Hashing::Here(_))));
        assert_eq!(
            r.finish().0,
            Some(Digest::of_bytes(Algorithm::Sha256, &data[..1000]))
        );
    }
}
