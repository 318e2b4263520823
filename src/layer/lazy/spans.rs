//! Reading streamed layers back: an uncompressed tar or a gzip blob kept in the blob store,
//! cut into spans that each have a digest recorded during the streaming pass. A span missing
//! from the store (evicted, or never kept) is fetched again on its own and verified before
//! any of it is used.
//! Dependencies: store, zran, image::digest, layer::data.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use super::fill::Fill;
use super::zran::{Compressed, ZranIndex, ZranReader};
use crate::image::digest::{Algorithm, Digest};
use crate::layer::codec::{Cursor, put_bytes, put_u64};
use crate::layer::data::LayerBytes;
use crate::layer::store::live::Live;
use crate::layer::store::{Origin, Priority, StoredBlob, Units};

/// A lazily read layer's blob: the store entry, where to fetch what it lacks, and the
/// live-use guard that keeps eviction away while the layer is served.
#[derive(Debug)]
pub struct Source {
    /// The store entry.
    pub blob: Arc<StoredBlob>,
    /// Where missing pieces come from.
    pub origin: Origin,
    /// Held while the layer is in use.
    pub held: Option<Live>,
}

/// Span length of uncompressed blobs (their spans are fixed; gzip spans end at checkpoints).
pub const PLAIN_SPAN: u64 = 4 << 20;

fn mismatch(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{what} digest mismatch"),
    )
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// Digests of the fixed-size spans of an uncompressed blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlainSpans {
    /// Span length (the last may be shorter).
    pub size: u64,
    /// Blob length.
    pub len: u64,
    /// One digest per span.
    pub digests: Vec<Digest>,
}

impl PlainSpans {
    /// Appends the cache's wire form.
    pub(crate) fn put(&self, b: &mut Vec<u8>) {
        put_u64(b, self.size);
        put_u64(b, self.len);
        put_u64(b, self.digests.len() as u64);
        for d in &self.digests {
            put_bytes(b, d.as_str().as_bytes());
        }
    }

    /// Reads what [`PlainSpans::put`] wrote.
    pub(crate) fn get(r: &mut Cursor<'_>) -> Option<PlainSpans> {
        let size = r.u64()?;
        let len = r.u64()?;
        let n = r.u64()?;
        let mut digests = Vec::with_capacity((n as usize).min(r.data.len() / 8));
        for _ in 0..n {
            digests.push(Digest::parse(std::str::from_utf8(r.bytes()?).ok()?).ok()?);
        }
        (size > 0 && n == len.div_ceil(size)).then_some(PlainSpans { size, len, digests })
    }
}

impl Units for PlainSpans {
    fn covering(&self, a: u64, b: u64) -> Range<usize> {
        (a / self.size) as usize..(b.div_ceil(self.size) as usize).min(self.digests.len())
    }
    fn bounds(&self, i: usize) -> (u64, u64) {
        let s = i as u64 * self.size;
        (s, (s + self.size).min(self.len))
    }
    fn verify(&self, i: usize, bytes: &[u8]) -> io::Result<()> {
        let want = self.digests.get(i).ok_or_else(eio)?;
        if &Digest::of_bytes(want.algorithm(), bytes) == want {
            Ok(())
        } else {
            Err(mismatch("span"))
        }
    }
}

impl Units for ZranIndex {
    fn covering(&self, a: u64, b: u64) -> Range<usize> {
        if a >= b {
            return 0..0;
        }
        // The first span reaching `b` ends the run (not the next one, which may share the
        // byte before `b`).
        let last = self.checkpoints[1..].partition_point(|c| c.input < b);
        self.span_at(a)..last.max(self.span_at(a)) + 1
    }
    fn bounds(&self, i: usize) -> (u64, u64) {
        self.span(i)
    }
    fn verify(&self, i: usize, bytes: &[u8]) -> io::Result<()> {
        let want = self.span_digests.get(i).ok_or_else(eio)?;
        if &Digest::of_bytes(Algorithm::Sha256, bytes) == want {
            Ok(())
        } else {
            Err(mismatch("span"))
        }
    }
}

/// Makes every span of `units` present, at background priority.
fn fill_all(blob: &StoredBlob, origin: &Origin, units: &dyn Units, n: usize) -> io::Result<()> {
    for i in 0..n {
        let (s, e) = units.bounds(i);
        blob.ensure(origin, units, s, e, Priority::Background)?;
    }
    Ok(())
}

/// An uncompressed layer tar in the blob store: the blob is the tar.
#[derive(Debug)]
pub struct PlainBytes {
    src: Source,
    spans: PlainSpans,
}

impl PlainBytes {
    /// Reads the blob of `src` through `spans`.
    pub fn new(src: Source, spans: PlainSpans) -> PlainBytes {
        PlainBytes { src, spans }
    }
}

impl LayerBytes for PlainBytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.spans.len.saturating_sub(offset));
        if n == 0 {
            return Ok(0);
        }
        self.src.blob.ensure(
            &self.src.origin,
            &self.spans,
            offset,
            offset + n,
            Priority::Foreground,
        )?;
        self.src.blob.read_at(&mut buf[..n as usize], offset)
    }
}

impl Fill for PlainBytes {
    fn missing(&self) -> u64 {
        self.spans.len - self.src.blob.present_bytes().min(self.spans.len)
    }
    fn fill(&self) -> io::Result<()> {
        fill_all(
            &self.src.blob,
            &self.src.origin,
            &self.spans,
            self.spans.digests.len(),
        )
    }
    fn describe(&self) -> String {
        self.src.blob.digest.to_string()
    }
}

/// A gzip layer in the blob store, read through its checkpoints.
#[derive(Debug)]
pub struct GzipBytes {
    src: Source,
    zran: ZranReader,
}

impl GzipBytes {
    /// Reads the blob of `src` through the checkpoints of `index`.
    pub fn new(src: Source, index: ZranIndex) -> GzipBytes {
        GzipBytes {
            src,
            zran: ZranReader::new(index),
        }
    }
}

impl Compressed for GzipBytes {
    fn read_compressed(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.src.blob.len.saturating_sub(offset));
        if n == 0 {
            return Ok(0);
        }
        let index = &self.zran.index;
        self.src.blob.ensure(
            &self.src.origin,
            index,
            offset,
            offset + n,
            Priority::Foreground,
        )?;
        self.src.blob.read_at(&mut buf[..n as usize], offset)
    }
}

impl LayerBytes for GzipBytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.zran.read_at(self, buf, offset).map_err(|e| {
            if e.raw_os_error().is_none() {
                // Verified bytes that do not inflate: the checkpoint index is wrong.
                log::error!("blob {}: inflating at {offset}: {e}", self.src.blob.digest);
                eio()
            } else {
                e
            }
        })
    }
}

impl Fill for GzipBytes {
    fn missing(&self) -> u64 {
        self.src.blob.len - self.src.blob.present_bytes().min(self.src.blob.len)
    }
    fn fill(&self) -> io::Result<()> {
        let index = &self.zran.index;
        fill_all(
            &self.src.blob,
            &self.src.origin,
            index,
            index.checkpoints.len(),
        )
    }
    fn describe(&self) -> String {
        self.src.blob.digest.to_string()
    }
}
