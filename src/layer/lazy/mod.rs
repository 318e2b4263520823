//! Layers whose blob is in a repository ([`RemoteBlob`]), made ready without a pull.
//!
//! In order of preference, a remote layer is served from:
//! 1. a decompressed copy in the cache that any source left for its diff_id (`layers/`), or
//!    the host file of a local archive where the same tar was verified (`sources/`);
//! 2. its lazy record (`lazy/<alg>/<blob hex>.lzx`): index plus access map, from an earlier
//!    mount; a warm mount makes no request at all;
//! 3. its table of contents (eStargz, zstd:chunked): a few small requests, no file data;
//! 4. one streaming pass over the blob, which indexes the tar, checks the blob digest and the
//!    diff_id, and keeps what later reads need: the compressed bytes in the blob store with a
//!    checkpoint index (gzip), the tar itself (uncompressed), or a decompressed copy (zstd,
//!    as local zstd layers have).
//!
//! The record is written only once everything it describes was verified, so a record in the
//! cache is trusted as it is (its checksum guards against damage).
//! Dependencies: store, zran, spans, toc, fill, layer (index, prepare), image, cache, error.

pub mod fill;
pub mod spans;
pub mod toc;
pub mod zran;

use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::codec::{self, Cursor, FileStamp, get_entries, put_bytes, put_entries, put_u64};
use super::data::{LayerBytes, LayerData};
use super::prepare::{PreparedLayer, decompress_into_cache, decompressed_copy, local_source};
use super::store::{BlobStore, Origin, StoredBlob, live, lock_file};
use super::{LayerIndex, build_index};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::image::LayerRef;
use crate::image::container::Compression;
use crate::image::digest::{Digest, Hasher, HashingReader};
use crate::image::remote::{BlobFetch, RemoteBlob};
use spans::{GzipBytes, PLAIN_SPAN, PlainBytes, PlainSpans};
use toc::{TocBytes, TocFormat, TocLocation, TocMap};
use zran::ZranIndex;

/// Format tag of lazy records; bump the digit when the layout changes.
const MAGIC: &[u8; 8] = b"RIMGLZ01";
/// Progress of a streaming pass: bytes fetched, and how far indexing got (the message).
const FETCH_TEMPLATE: &str =
    "fetching layer {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}";
/// How often a streaming pass reopens a stream that broke before the blob's end.
const STREAM_RESUMES: u32 = 3;

/// How a lazily read layer's bytes are found in its blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    /// The blob is the tar; fixed spans with digests.
    Plain(PlainSpans),
    /// A gzip blob with checkpoints.
    Gzip(ZranIndex),
    /// A blob with a table of contents; the index's offsets are virtual.
    Toc(TocMap),
}

/// What the cache keeps of a lazily read layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LazyRecord {
    /// The blob it describes.
    pub blob: Digest,
    /// The blob's length.
    pub blob_len: u64,
    /// The entries.
    pub index: LayerIndex,
    /// Where their bytes are.
    pub access: Access,
}

impl LazyRecord {
    /// The record file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = MAGIC.to_vec();
        put_bytes(&mut b, self.blob.as_str().as_bytes());
        put_u64(&mut b, self.blob_len);
        put_u64(&mut b, self.index.tar_size);
        put_entries(&mut b, &self.index.entries);
        match &self.access {
            Access::Plain(s) => {
                b.push(0);
                s.put(&mut b);
            }
            Access::Gzip(z) => {
                b.push(1);
                z.put(&mut b);
            }
            Access::Toc(t) => {
                b.push(2);
                t.put(&mut b);
            }
        }
        codec::seal(b)
    }

    /// Parses a record; `None` if damaged.
    pub fn decode(data: &[u8]) -> Option<LazyRecord> {
        let mut r = Cursor {
            data: codec::unseal(MAGIC, data)?,
        };
        let blob = Digest::parse(std::str::from_utf8(r.bytes()?).ok()?).ok()?;
        let blob_len = r.u64()?;
        let tar_size = r.u64()?;
        let entries = get_entries(&mut r)?;
        let access = match r.u8()? {
            0 => Access::Plain(PlainSpans::get(&mut r)?),
            1 => Access::Gzip(ZranIndex::get(&mut r)?),
            2 => Access::Toc(TocMap::get(&mut r)?),
            _ => return None,
        };
        r.data.is_empty().then_some(LazyRecord {
            blob,
            blob_len,
            index: LayerIndex { entries, tar_size },
            access,
        })
    }
}

/// Where the lazy record of blob `digest` lives.
pub fn record_path(cache_root: &Path, digest: &Digest) -> PathBuf {
    cache_root
        .join("lazy")
        .join(digest.algorithm_name())
        .join(format!("{}.lzx", digest.hex()))
}

fn load_record(path: &Path, remote: &RemoteBlob) -> Option<LazyRecord> {
    let rec = LazyRecord::decode(&std::fs::read(path).ok()?)?;
    // The parts must describe the same blob and tar, or the record is rebuilt.
    let consistent = match &rec.access {
        Access::Plain(s) => s.len == rec.blob_len && s.len == rec.index.tar_size,
        Access::Gzip(z) => z.in_len == rec.blob_len && z.out_len == rec.index.tar_size,
        Access::Toc(m) => m.size() == rec.index.tar_size,
    };
    (consistent && rec.blob == remote.digest && rec.blob_len == remote.len).then_some(rec)
}

/// Makes a remote layer ready to serve (see the module header for the order of sources).
pub fn prepare(
    layer: &LayerRef,
    remote: &RemoteBlob,
    image_path: &Path,
    cache: &Cache,
) -> Result<PreparedLayer> {
    let bad = |reason: String| layer.error(image_path, reason);
    if let Some(ready) = decompressed_copy(layer, cache).or_else(|| local_source(layer, cache)) {
        return Ok(ready);
    }
    let root = cache.root();
    let rec_path = record_path(root, &remote.digest);
    let policy = *cache.policy();
    let origin = Origin {
        fetch: Some(remote.fetch.clone()),
        offline: policy.offline,
    };
    let store = BlobStore::new(root);
    fn io_err<'p>(op: &'static str, path: &'p Path) -> impl Fn(io::Error) -> Error + 'p {
        move |e| Error::Io {
            op,
            path: path.to_path_buf(),
            source: e,
        }
    }
    let mut rec = load_record(&rec_path, remote);
    // One process builds a record at a time; the others wait and use it.
    let _building = match rec {
        Some(_) => None,
        None => {
            let lock = rec_path.with_extension("lock");
            let l = lock_file(&lock, true).map_err(io_err("lock", &lock))?;
            rec = load_record(&rec_path, remote);
            l
        }
    };
    let rec = match rec {
        Some(r) => r,
        None => {
            if policy.offline {
                return Err(bad(
                    "not in the cache, and --offline forbids fetching it".into()
                ));
            }
            let location = TocLocation::of(remote).map_err(&bad)?;
            match (location, layer.compression) {
                (Some(loc), _) => {
                    let blob = store
                        .open(&remote.digest, remote.len)
                        .map_err(io_err("open", store.root()))?;
                    build_from_toc(remote, &blob, loc).map_err(&bad)?
                }
                (None, Compression::Zstd) => {
                    // zstd frames are not seekable in general: keep a decompressed copy.
                    let pb = super::prepare::progress_with(layer, remote.len, FETCH_TEMPLATE);
                    let stream = Incoming::new(remote, None, pb.clone());
                    let done = decompress_into_cache(
                        layer,
                        stream,
                        remote.len,
                        Compression::Zstd,
                        image_path,
                        cache,
                    );
                    pb.finish_and_clear();
                    return done;
                }
                (None, c) => {
                    let blob = store
                        .open(&remote.digest, remote.len)
                        .map_err(io_err("open", store.root()))?;
                    stream_layer(layer, remote, &blob, c, image_path)?
                }
            }
        }
    };
    save_record(&rec, &rec_path)?;
    if let Access::Plain(_) | Access::Gzip(_) = rec.access {
        // Local sources of the same diff_id can skip indexing.
        let idx = cache.index_path(&layer.diff_id);
        if !idx.exists() {
            let _ = cache.write_atomic(&idx, |w| {
                io::Write::write_all(w, &codec::encode(&rec.index, FileStamp::default()))
                    .map_err(io_err("write", &idx))
            });
        }
    }
    open_record(rec, &store, origin, &rec_path, cache)
}

/// Writes a record to the cache (atomically).
fn save_record(rec: &LazyRecord, path: &Path) -> Result<()> {
    super::store::replace_file(path, &rec.encode()).map_err(|e| Error::Io {
        op: "write",
        path: path.to_path_buf(),
        source: e,
    })
}

/// Records that this process uses cache files, so eviction leaves them alone while the
/// guard lives.
fn register_use(cache: &Cache, paths: Vec<PathBuf>) -> Option<live::Live> {
    live::register(cache.root(), &paths).unwrap_or_else(|e| {
        log::warn!(
            "{}: cannot record files in use: {e}",
            cache.root().display()
        );
        None
    })
}

/// Serves a layer from its record.
fn open_record(
    rec: LazyRecord,
    store: &BlobStore,
    origin: Origin,
    rec_path: &Path,
    cache: &Cache,
) -> Result<PreparedLayer> {
    let blob = store.open(&rec.blob, rec.blob_len).map_err(|e| Error::Io {
        op: "open",
        path: store.root().to_path_buf(),
        source: e,
    })?;
    let held = register_use(cache, vec![blob.paths.data.clone(), rec_path.to_path_buf()]);
    let src = spans::Source { blob, origin, held };
    let (bytes, fill): (Arc<dyn LayerBytes>, Arc<dyn fill::Fill>) = match rec.access {
        Access::Plain(s) => {
            let b = Arc::new(PlainBytes::new(src, s));
            (b.clone(), b)
        }
        Access::Gzip(z) => {
            let b = Arc::new(GzipBytes::new(src, z));
            (b.clone(), b)
        }
        Access::Toc(m) => {
            let b = Arc::new(TocBytes::new(src, m));
            (b.clone(), b)
        }
    };
    let policy = cache.policy();
    if !policy.no_prefetch && !policy.offline {
        fill::register(
            fill,
            policy.max_bytes.map(|m| (cache.root().to_path_buf(), m)),
        );
    }
    Ok(PreparedLayer::cached(
        rec.index,
        LayerData::shared(bytes),
        rec_path,
    ))
}

/// Reads a TOC layer's table of contents (a few small requests) into a record.
fn build_from_toc(
    remote: &RemoteBlob,
    blob: &StoredBlob,
    loc: TocLocation,
) -> Result<LazyRecord, String> {
    let fetch = &*remote.fetch;
    let get = |offset: u64, len: u64| -> Result<Vec<u8>, String> {
        let b = fetch.range(&remote.digest, offset, len).map_err(|e| {
            format!(
                "fetching bytes {offset}-{} from {}: {e}",
                offset + len,
                fetch.describe()
            )
        })?;
        if b.len() as u64 != len {
            return Err(format!(
                "{}: short read of bytes {offset}-{}",
                fetch.describe(),
                offset + len
            ));
        }
        Ok(b)
    };
    let keep = |offset: u64, bytes: &[u8]| {
        // Verified bytes of the blob: keep them, so the TOC is never fetched twice.
        if blob.write_at(bytes, offset).is_ok() {
            let _ = blob.commit(offset, offset + bytes.len() as u64);
        }
    };
    let (mut parsed, extra) = match loc {
        TocLocation::Estargz(want) => {
            if remote.len < toc::ESTARGZ_FOOTER {
                return Err("blob too short for an eStargz footer".into());
            }
            let footer_at = remote.len - toc::ESTARGZ_FOOTER;
            let toc_at = toc::parse_estargz_footer(&get(footer_at, toc::ESTARGZ_FOOTER)?)?;
            if toc_at >= footer_at {
                return Err("eStargz footer points past the blob".into());
            }
            let member = get(toc_at, footer_at - toc_at)?;
            let (entry, inner, json) = toc::read_estargz_toc_member(&member)?;
            let found = toc::toc_digest(&json);
            if found != want {
                return Err(format!(
                    "TOC digest mismatch: expected {want}, found {found}"
                ));
            }
            keep(toc_at, &member);
            let parsed = toc::parse_toc(&json, TocFormat::Estargz, toc_at)?;
            (
                parsed,
                Some((entry, inner, json.len() as u64, found, (toc_at, footer_at))),
            )
        }
        TocLocation::ZstdChunked {
            offset,
            len,
            uncompressed,
            digest,
        } => {
            let raw = get(offset, len)?;
            let found = Digest::of_bytes(digest.algorithm(), &raw);
            if found != digest {
                return Err(format!(
                    "TOC digest mismatch: expected {digest}, found {found}"
                ));
            }
            keep(offset, &raw);
            let json = toc::decompress_zstd_toc(&raw, uncompressed)?;
            // The frame header before the TOC ends the data.
            let data_end = offset.saturating_sub(8);
            (
                toc::parse_toc(&json, TocFormat::ZstdChunked, data_end)?,
                None,
            )
        }
    };
    // The TOC is itself the tar's last entry in eStargz: the tree shows it as the tar does,
    // its bytes served from its member and checked against the TOC digest.
    if let Some((mut entry, inner, size, digest, member)) = extra {
        let vstart = parsed.map.size();
        let m = parsed.map.members.len() as u32;
        parsed.map.members.push(member);
        parsed.map.chunks.push(toc::Chunk {
            vstart,
            len: size,
            member: m,
            inner,
            digest,
            zeros: false,
        });
        entry.kind = super::entry::EntryKind::File {
            offset: vstart,
            size,
        };
        parsed.entries.push(entry);
    }
    let tar_size = parsed.map.size();
    Ok(LazyRecord {
        blob: remote.digest.clone(),
        blob_len: remote.len,
        index: LayerIndex {
            entries: parsed.entries,
            tar_size,
        },
        access: Access::Toc(parsed.map),
    })
}

/// A blob streamed from its repository: resumes a broken stream where it stopped (a bounded
/// number of times), hashes what passes, keeps it in the blob store, counts progress, and
/// optionally hashes fixed spans (for uncompressed blobs, whose spans are the tar's).
struct Incoming<'a> {
    remote: &'a RemoteBlob,
    inner: Option<Box<dyn Read + Send>>,
    pos: u64,
    resumes: u32,
    blob: Option<&'a StoredBlob>,
    hasher: Hasher,
    spans: Option<(Hasher, Vec<Digest>)>,
    pb: indicatif::ProgressBar,
}

impl<'a> Incoming<'a> {
    fn new(
        remote: &'a RemoteBlob,
        blob: Option<&'a StoredBlob>,
        pb: indicatif::ProgressBar,
    ) -> Incoming<'a> {
        Incoming {
            remote,
            inner: None,
            pos: 0,
            resumes: 0,
            blob,
            hasher: Hasher::new(remote.digest.algorithm()),
            spans: None,
            pb,
        }
    }

    fn with_spans(mut self) -> Self {
        self.spans = Some((Hasher::new(self.remote.digest.algorithm()), Vec::new()));
        self
    }

    fn fetch(&self) -> &dyn BlobFetch {
        &*self.remote.fetch
    }

    fn absorb(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        if let Some(b) = self.blob {
            b.write_at(bytes, self.pos)?;
        }
        if let Some((h, done)) = &mut self.spans {
            let mut rest = bytes;
            let mut pos = self.pos;
            while !rest.is_empty() {
                let room = (PLAIN_SPAN - pos % PLAIN_SPAN) as usize;
                let (now, later) = rest.split_at(room.min(rest.len()));
                h.update(now);
                pos += now.len() as u64;
                if pos % PLAIN_SPAN == 0 {
                    let full = std::mem::replace(h, Hasher::new(self.remote.digest.algorithm()));
                    done.push(full.finish());
                }
                rest = later;
            }
        }
        self.pos += bytes.len() as u64;
        self.pb.inc(bytes.len() as u64);
        Ok(())
    }

    /// The blob digest and the span digests, once read to the end.
    fn finish(self) -> (Digest, u64, Vec<Digest>) {
        let len = self.pos;
        let spans = self.spans.map(|(h, mut done)| {
            if len % PLAIN_SPAN != 0 || len == 0 {
                done.push(h.finish());
            }
            done
        });
        (self.hasher.finish(), len, spans.unwrap_or_default())
    }
}

impl Read for Incoming<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.inner.is_none() {
                self.inner = Some(self.fetch().stream(&self.remote.digest, self.pos)?);
            }
            // One byte past the declared end is enough to notice a longer blob.
            let room = (self.remote.len + 1).saturating_sub(self.pos);
            let want = (buf.len() as u64).min(room).max(1) as usize;
            let want = want.min(buf.len());
            let r = match self.inner.as_mut() {
                Some(s) => s.read(&mut buf[..want]),
                None => Ok(0),
            };
            match r {
                Ok(0) if self.pos >= self.remote.len => return Ok(0),
                Ok(n) if n > 0 => {
                    if self.pos + n as u64 > self.remote.len {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "blob is longer than its descriptor's {} bytes",
                                self.remote.len
                            ),
                        ));
                    }
                    self.absorb(&buf[..n])?;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                other => {
                    // A body cut short or broken: open a new stream where this one stopped.
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "stream ended early".to_string(),
                    };
                    if self.resumes >= STREAM_RESUMES {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "blob {} from {}: {why} at byte {}",
                                self.remote.digest,
                                self.fetch().describe(),
                                self.pos
                            ),
                        ));
                    }
                    log::info!(
                        "blob {}: {why} at byte {}; resuming",
                        self.remote.digest,
                        self.pos
                    );
                    self.resumes += 1;
                    self.inner = None;
                }
            }
        }
    }
}

/// Counts the uncompressed bytes indexed so far into a progress bar's message.
struct Indexed<R> {
    inner: R,
    pb: indicatif::ProgressBar,
    count: u64,
}

impl<R: Read> Indexed<R> {
    fn new(inner: R, pb: &indicatif::ProgressBar) -> Indexed<R> {
        Indexed {
            inner,
            pb: pb.clone(),
            count: 0,
        }
    }
}

impl<R: Read> Read for Indexed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.count >> 20;
        self.count += n as u64;
        if self.count >> 20 != before && !self.pb.is_hidden() {
            self.pb
                .set_message(format!("indexed {} MiB", self.count >> 20));
        }
        Ok(n)
    }
}

/// One streaming pass over a gzip or uncompressed blob: index, verify, keep.
fn stream_layer(
    layer: &LayerRef,
    remote: &RemoteBlob,
    blob: &StoredBlob,
    c: Compression,
    image_path: &Path,
) -> Result<LazyRecord> {
    let bad = |reason: String| layer.error(image_path, reason);
    let pb = super::prepare::progress_with(layer, remote.len, FETCH_TEMPLATE);
    let incoming = Incoming::new(remote, Some(blob), pb.clone());
    let diff_alg = Some(layer.diff_id.algorithm());
    let (index, diff, (digest, len, _), access) = match c {
        Compression::Gzip => {
            let builder =
                zran::Builder::new(incoming, zran::SPAN).map_err(|e| bad(e.to_string()))?;
            let counted = Indexed::new(BufReader::with_capacity(1 << 20, builder), &pb);
            let mut tar = HashingReader::new(counted, diff_alg);
            let mut index = build_index(&mut tar).map_err(|e| bad(e.to_string()))?;
            // To the stream's end: bytes after the last member are refused as a bad member.
            tar.drain()
                .map_err(|e| bad(format!("corrupt gzip stream: {e}")))?;
            let (diff, tar_len, reader) = tar.into_parts();
            let (zindex, incoming) = reader
                .inner
                .into_inner()
                .finish()
                .map_err(|e| bad(format!("corrupt gzip stream: {e}")))?;
            index.tar_size = tar_len;
            (index, diff, incoming.finish(), Access::Gzip(zindex))
        }
        Compression::None => {
            let mut tar = HashingReader::new(
                BufReader::with_capacity(1 << 20, incoming.with_spans()),
                diff_alg,
            );
            let mut index = build_index(&mut tar).map_err(|e| bad(e.to_string()))?;
            tar.drain().map_err(|e| bad(e.to_string()))?;
            let (diff, tar_len, reader) = tar.into_parts();
            index.tar_size = tar_len;
            let sums = reader.into_inner().finish();
            let spans = PlainSpans {
                size: PLAIN_SPAN,
                len: tar_len,
                digests: sums.2.clone(),
            };
            (index, diff, sums, Access::Plain(spans))
        }
        Compression::Zstd => return Err(bad("zstd layers are decompressed into the cache".into())),
    };
    pb.finish_and_clear();
    if len != remote.len {
        return Err(Error::SizeMismatch {
            path: image_path.to_path_buf(),
            what: format!("layer {}", layer.describe()),
            expected: remote.len,
            found: len,
        });
    }
    let mismatch = |what: &str, want: &Digest, found: &Digest| Error::DigestMismatch {
        path: image_path.to_path_buf(),
        what: format!("layer {} {what}", layer.describe()),
        expected: want.to_string(),
        found: found.to_string(),
    };
    if digest != remote.digest {
        return Err(mismatch("blob", &remote.digest, &digest));
    }
    if let Some(d) = diff.filter(|d| d != &layer.diff_id) {
        return Err(mismatch("diff_id", &layer.diff_id, &d));
    }
    // Everything is verified: the bytes may now be named as present.
    blob.commit(0, remote.len).map_err(|e| Error::Io {
        op: "write",
        path: blob.paths.data.clone(),
        source: e,
    })?;
    Ok(LazyRecord {
        blob: remote.digest.clone(),
        blob_len: remote.len,
        index,
        access,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::Algorithm;
    use crate::layer::entry::{EntryKind, LayerEntry, Meta};

    #[test]
    fn lazy_record_round_trip_and_damage() {
        let d = Digest::of_bytes(Algorithm::Sha256, b"blob");
        let entry = LayerEntry {
            path: b"a"[..].into(),
            meta: Meta::default(),
            kind: EntryKind::File { offset: 0, size: 5 },
            xattrs: vec![],
        };
        let rec = LazyRecord {
            blob: d.clone(),
            blob_len: 5,
            index: LayerIndex {
                entries: vec![entry],
                tar_size: 5,
            },
            access: Access::Plain(PlainSpans {
                size: PLAIN_SPAN,
                len: 5,
                digests: vec![d],
            }),
        };
        let enc = rec.encode();
        assert_eq!(LazyRecord::decode(&enc), Some(rec));
        let mut bad = enc.clone();
        bad[20] ^= 1;
        assert_eq!(LazyRecord::decode(&bad), None);
        assert_eq!(LazyRecord::decode(&enc[..enc.len() - 1]), None);
    }
}
