//! Making a layer ready to serve: index it (or load its cached index) and verify it.
//!
//! - Uncompressed layers are served in place from the archive or blob file; the first time a
//!   given file is used its digest is checked and a stamp keyed by the file's identity is
//!   left in the cache, so a warm mount reads no layer bytes at all.
//! - Compressed layers are decompressed once into the cache (keyed by diff_id, shared between
//!   images), hashing the compressed stream (blob digest) and the tar (diff_id) in the same pass
//!   that builds the index; the file is renamed into place only once both digests match.
//!
//! Dependencies: error, cache, image (LayerRef, BlobLoc, digest), layer, codec.

use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};

use super::codec::{self, FileStamp};
use super::data::LayerData;
use super::{LayerIndex, build_index};
use crate::cache::Cache;
use crate::error::{Context, Error, Result};
use crate::image::container::{BlobLoc, Compression, Container};
use crate::image::digest::{Digest, HashingReader, TeeReader};
use crate::image::{Blob, LayerRef};

/// Layers smaller than this are indexed without a progress bar.
const PROGRESS_MIN_BYTES: u64 = 32 << 20;

/// A layer ready to serve: its index and the bytes its offsets point into.
#[derive(Debug)]
pub struct PreparedLayer {
    index: IndexState,
    /// The uncompressed tar's bytes (archive member, blob file or cache file).
    pub data: LayerData,
}

/// Where a prepared layer's index is.
#[derive(Debug)]
enum IndexState {
    /// In memory; `identity` names the cache file it matches, if any.
    Loaded {
        index: LayerIndex,
        identity: Option<String>,
    },
    /// In a cache file that is decoded only when the entries are needed: a mount whose
    /// merged tree is cached never needs them.
    Deferred {
        path: PathBuf,
        identity: String,
        tar_size: u64,
        loaded: std::sync::OnceLock<LayerIndex>,
    },
}

impl PreparedLayer {
    /// A layer whose index is in memory and in no cache file.
    pub fn new(index: LayerIndex, data: LayerData) -> PreparedLayer {
        PreparedLayer {
            index: IndexState::Loaded {
                index,
                identity: None,
            },
            data,
        }
    }

    /// A layer whose index is in memory and also in the cache file `path`.
    pub fn cached(index: LayerIndex, data: LayerData, path: &Path) -> PreparedLayer {
        PreparedLayer {
            index: IndexState::Loaded {
                index,
                identity: identity_of(path),
            },
            data,
        }
    }

    /// A layer whose index is the cache file `path` (recording `tar_size`), read when needed.
    pub(crate) fn deferred(path: PathBuf, tar_size: u64, data: LayerData) -> Option<PreparedLayer> {
        Some(PreparedLayer {
            index: IndexState::Deferred {
                identity: identity_of(&path)?,
                path,
                tar_size,
                loaded: std::sync::OnceLock::new(),
            },
            data,
        })
    }

    /// The index, decoded from its cache file on first use; an error if that file turns out
    /// damaged (it is then removed, so preparing the layer again rebuilds it).
    pub fn index(&self) -> Result<&LayerIndex, String> {
        match &self.index {
            IndexState::Loaded { index, .. } => Ok(index),
            IndexState::Deferred {
                path,
                tar_size,
                loaded,
                ..
            } => {
                if let Some(i) = loaded.get() {
                    return Ok(i);
                }
                let index = std::fs::read(path)
                    .ok()
                    .and_then(|d| codec::decode(&d))
                    .map(|(i, _)| i)
                    .filter(|i| i.tar_size == *tar_size);
                match index {
                    Some(i) => Ok(loaded.get_or_init(|| i)),
                    None => {
                        let _ = std::fs::remove_file(path);
                        Err(format!("its cached index {} is damaged", path.display()))
                    }
                }
            }
        }
    }

    /// Whether the index is still in its cache file, undecoded.
    pub fn index_deferred(&self) -> bool {
        matches!(&self.index, IndexState::Deferred { loaded, .. } if loaded.get().is_none())
    }

    /// Length of the uncompressed tar.
    pub fn tar_size(&self) -> u64 {
        match &self.index {
            IndexState::Loaded { index, .. } => index.tar_size,
            IndexState::Deferred { tar_size, .. } => *tar_size,
        }
    }

    /// Names the index's content for a cache key: its cache file and that file's identity,
    /// `None` when the index is in no cache file.
    pub fn identity(&self) -> Option<&str> {
        match &self.index {
            IndexState::Loaded { identity, .. } => identity.as_deref(),
            IndexState::Deferred { identity, .. } => Some(identity),
        }
    }
}

/// A cache file's path and identity (size, inode, mtime): it changes whenever the file is
/// rewritten, since every cache write renames a new file into place.
fn identity_of(path: &Path) -> Option<String> {
    let s = FileStamp::of(&std::fs::metadata(path).ok()?);
    Some(format!(
        "{}\0{}\0{}\0{}",
        path.display(),
        s.size,
        s.ino,
        s.mtime_ns
    ))
}

/// Indexes and verifies a layer, using the cache when it can. Every error names the image
/// (`image_path`, see [`Error::in_image`]).
pub fn prepare(layer: &LayerRef, image_path: &Path, cache: &Cache) -> Result<PreparedLayer> {
    match &layer.blob {
        Blob::Local(loc) => {
            prepare_local(layer, loc, image_path, cache).map_err(|e| e.in_image(image_path))
        }
        Blob::Remote(remote) => super::lazy::prepare(layer, remote, image_path, cache),
        Blob::Store(s) => super::storage::prepare(layer, s, image_path, cache),
    }
}

/// A layer whose blob lies in a host file.
fn prepare_local(
    layer: &LayerRef,
    loc: &BlobLoc,
    image_path: &Path,
    cache: &Cache,
) -> Result<PreparedLayer> {
    let bad = |reason: String| layer.error(image_path, reason);
    let index_path = cache.index_path(&layer.diff_id);
    let cached = codec::peek(&index_path);
    match layer.compression {
        Compression::None => {
            let fingerprint = Container::fingerprint(loc)?;
            if let Some((tar_size, _)) = cached {
                if tar_size == loc.len {
                    if !cache.is_verified(&fingerprint, &layer.diff_id) {
                        verify_in_place(layer, loc, image_path)?;
                        cache.mark_verified(&fingerprint, &layer.diff_id)?;
                    }
                    record_source(cache, layer, loc);
                    let data = LayerData::host(loc.clone());
                    if let Some(p) = PreparedLayer::deferred(index_path.clone(), tar_size, data) {
                        return Ok(p);
                    }
                }
            }
            let index = index_in_place(layer, loc, image_path).map_err(|e| match e {
                IndexFail::Layer(r) => bad(r),
                IndexFail::Other(e) => e,
            })?;
            cache.write_checked(&index_path, |w| {
                io::Write::write_all(w, &codec::encode(&index, FileStamp::default()))
                    .ctx("write", &index_path)
            })?;
            cache.mark_verified(&fingerprint, &layer.diff_id)?;
            record_source(cache, layer, loc);
            Ok(PreparedLayer::cached(
                index,
                LayerData::host(loc.clone()),
                &index_path,
            ))
        }
        c => {
            let content = cache.layer_path(&layer.diff_id);
            if let Some(ready) = decompressed_copy(layer, cache) {
                return Ok(ready);
            }
            if cached.is_some() && content.exists() {
                log::info!(
                    "layer {}: cache entry is stale or damaged; rebuilding",
                    layer.describe()
                );
            }
            let pb = progress(layer, loc.len);
            let reader = loc.reader_wrapped(|f| pb.wrap_read(f))?;
            let done = decompress_into_cache(layer, reader, loc.len, c, image_path, cache);
            pb.finish_and_clear();
            done
        }
    }
}

/// Where an uncompressed layer's tar lies in a host file, once verified there:
/// `sources/<alg>/<hex>` holds the path, offset and length, NUL-separated.
fn source_path(cache: &Cache, diff_id: &Digest) -> std::path::PathBuf {
    cache
        .root()
        .join("sources")
        .join(diff_id.algorithm_name())
        .join(diff_id.hex())
}

/// Notes where a verified uncompressed layer lies, so another source of the same diff_id
/// (a repository) can read it from there.
fn record_source(cache: &Cache, layer: &LayerRef, loc: &BlobLoc) {
    let Ok(abs) = std::fs::canonicalize(&loc.file) else {
        return;
    };
    let text = format!("{}\0{}\0{}", abs.display(), loc.offset, loc.len);
    let dest = source_path(cache, &layer.diff_id);
    if std::fs::read(&dest).ok().as_deref() != Some(text.as_bytes()) {
        let _ = cache.write_atomic(&dest, |w| {
            io::Write::write_all(w, text.as_bytes()).ctx("write", &dest)
        });
    }
}

/// The layer, served from a host file that held its tar when it was last verified, if that
/// file is still the same (its fingerprint has a verification stamp).
pub(crate) fn local_source(layer: &LayerRef, cache: &Cache) -> Option<PreparedLayer> {
    let text = std::fs::read_to_string(source_path(cache, &layer.diff_id)).ok()?;
    let mut f = text.split('\0');
    let loc = BlobLoc {
        file: f.next()?.into(),
        offset: f.next()?.parse().ok()?,
        len: f.next()?.parse().ok()?,
    };
    let fingerprint = Container::fingerprint(&loc).ok()?;
    if !cache.is_verified(&fingerprint, &layer.diff_id) {
        return None;
    }
    let path = cache.index_path(&layer.diff_id);
    let (tar_size, _) = codec::peek(&path)?;
    (tar_size == loc.len)
        .then(|| PreparedLayer::deferred(path, tar_size, LayerData::host(loc)))
        .flatten()
}

/// The layer's decompressed copy in the cache (left by any earlier source of the same
/// diff_id), if its index and file are both there and belong together.
pub(crate) fn decompressed_copy(layer: &LayerRef, cache: &Cache) -> Option<PreparedLayer> {
    let path = cache.index_path(&layer.diff_id);
    let (tar_size, stamp) = codec::peek(&path)?;
    let content = cache.layer_path(&layer.diff_id);
    let current = std::fs::metadata(&content).ok().map(|m| FileStamp::of(&m));
    (current == Some(stamp) && stamp.size == tar_size)
        .then(|| PreparedLayer::deferred(path, tar_size, whole_file(&content, stamp.size)))
        .flatten()
}

/// Decompresses a layer's blob, read from `blob` (`blob_len` bytes), into the cache, indexing
/// it and checking both digests on the way; the copy is kept only if they match.
pub(crate) fn decompress_into_cache(
    layer: &LayerRef,
    blob: impl io::Read,
    blob_len: u64,
    c: Compression,
    image_path: &Path,
    cache: &Cache,
) -> Result<PreparedLayer> {
    let bad = |reason: String| layer.error(image_path, reason);
    let content = cache.layer_path(&layer.diff_id);
    let index_path = cache.index_path(&layer.diff_id);
    let mut index = None;
    let mut blob = Some(blob);
    cache.write_atomic(&content, |out| {
        let blob = blob.take().ok_or_else(|| bad("blob read twice".into()))?;
        index = Some(
            decompress_and_index(layer, blob, blob_len, c, out, image_path).map_err(
                |e| match e {
                    IndexFail::Layer(r) => bad(r),
                    IndexFail::Other(e) => e,
                },
            )?,
        );
        Ok(())
    })?;
    let index = index.ok_or_else(|| bad("indexing produced nothing".into()))?;
    let stamp = FileStamp::of(&std::fs::metadata(&content).ctx("stat", &content)?);
    cache.write_checked(&index_path, |w| {
        io::Write::write_all(w, &codec::encode(&index, stamp)).ctx("write", &index_path)
    })?;
    Ok(PreparedLayer::cached(
        index,
        whole_file(&content, stamp.size),
        &index_path,
    ))
}

/// Labels a decoder's errors, so a damaged compressed stream is reported as such and not as
/// a bad tar by the tar reader it surfaces through.
struct DecodeErrors<R>(R, Compression);

impl<R: io::Read> io::Read for DecodeErrors<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let c = self.1;
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), format!("corrupt {c:?} stream: {e}")))
    }
}

fn whole_file(path: &Path, len: u64) -> LayerData {
    LayerData::host(BlobLoc {
        file: path.to_path_buf(),
        offset: 0,
        len,
    })
}

/// A failure while reading a layer: about the layer's contents, or about something else
/// (the cache, the host) that already has its own context.
enum IndexFail {
    Layer(String),
    Other(Error),
}

impl From<Error> for IndexFail {
    fn from(e: Error) -> Self {
        IndexFail::Other(e)
    }
}

/// A progress bar on stderr for big layers, hidden when stderr is not a terminal.
pub(crate) fn progress(layer: &LayerRef, len: u64) -> indicatif::ProgressBar {
    progress_with(
        layer,
        len,
        "indexing layer {prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    )
}

/// Like [`progress`] with a template of its own (`{prefix}` is the layer's position). Bars
/// of layers prepared at the same time share the terminal, one line each.
pub(crate) fn progress_with(layer: &LayerRef, len: u64, template: &str) -> indicatif::ProgressBar {
    static BARS: std::sync::OnceLock<indicatif::MultiProgress> = std::sync::OnceLock::new();
    if len < PROGRESS_MIN_BYTES || !io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bars = BARS.get_or_init(|| {
        indicatif::MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stderr())
    });
    let pb = bars.add(indicatif::ProgressBar::new(len));
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(layer.index.to_string());
    pb
}

/// Indexes an uncompressed layer where it lies, verifying its diff_id in the same pass.
fn index_in_place(
    layer: &LayerRef,
    loc: &BlobLoc,
    image_path: &Path,
) -> Result<LayerIndex, IndexFail> {
    let pb = progress(layer, loc.len);
    let mut hr = HashingReader::new(
        loc.reader_wrapped(|f| pb.wrap_read(f))?,
        Some(layer.diff_id.algorithm()),
    );
    let mut index = build_index(&mut hr).map_err(IndexFail::Layer)?;
    hr.drain().ctx("read", image_path)?;
    pb.finish_and_clear();
    let (found, len) = hr.finish();
    check_len(layer, loc.len, len, image_path)?;
    check_digest(&layer.diff_id, found, "diff_id", layer, image_path)?;
    if let Some(bd) = &layer.blob_digest {
        if bd.algorithm() == layer.diff_id.algorithm() && bd != &layer.diff_id {
            return Err(IndexFail::Other(mismatch(
                layer,
                image_path,
                "blob",
                bd,
                &layer.diff_id,
            )));
        }
    }
    index.tar_size = len;
    Ok(index)
}

/// Re-hashes an uncompressed layer whose index is cached but whose file is new to the cache.
fn verify_in_place(layer: &LayerRef, loc: &BlobLoc, image_path: &Path) -> Result<()> {
    let pb = progress(layer, loc.len);
    let mut hr = HashingReader::new(
        loc.reader_wrapped(|f| pb.wrap_read(f))?,
        Some(layer.diff_id.algorithm()),
    );
    hr.drain().ctx("read", image_path)?;
    pb.finish_and_clear();
    let (found, _) = hr.finish();
    match check_digest(&layer.diff_id, found, "diff_id", layer, image_path) {
        Ok(()) => Ok(()),
        Err(IndexFail::Other(e)) => Err(e),
        Err(IndexFail::Layer(r)) => Err(Error::BadLayer {
            path: image_path.to_path_buf(),
            layer: layer.describe(),
            reason: r,
        }),
    }
}

/// Decompresses a layer into `out` while indexing it and checking both digests.
fn decompress_and_index(
    layer: &LayerRef,
    blob: impl io::Read,
    blob_len: u64,
    c: Compression,
    out: &mut impl io::Write,
    image_path: &Path,
) -> Result<LayerIndex, IndexFail> {
    let corrupt = |e: io::Error| IndexFail::Layer(format!("corrupt {c:?} stream: {e}"));
    let blob_alg = layer.blob_digest.as_ref().map(Digest::algorithm);
    let mut compressed = HashingReader::new(blob, blob_alg);
    let (mut index, found_diff, len) = {
        let dec = DecodeErrors(c.decoder(&mut compressed).map_err(corrupt)?, c);
        let mut tar = HashingReader::new(
            TeeReader::new(dec, &mut *out),
            Some(layer.diff_id.algorithm()),
        );
        let index = build_index(&mut tar).map_err(IndexFail::Layer)?;
        // Read the decoder to its end, so truncation after the tar's end marker is caught.
        tar.drain().map_err(|e| IndexFail::Layer(e.to_string()))?;
        let (found, len) = tar.finish();
        (index, found, len)
    };
    compressed.drain().ctx("read", image_path)?;
    let (found_blob, found_len) = compressed.finish();
    check_len(layer, blob_len, found_len, image_path)?;
    if let Some(bd) = &layer.blob_digest {
        check_digest(bd, found_blob, "blob", layer, image_path)?;
    }
    check_digest(&layer.diff_id, found_diff, "diff_id", layer, image_path)?;
    index.tar_size = len;
    Ok(index)
}

fn check_len(layer: &LayerRef, want: u64, len: u64, image_path: &Path) -> Result<(), IndexFail> {
    if len != want {
        return Err(IndexFail::Other(Error::SizeMismatch {
            path: image_path.to_path_buf(),
            what: format!("layer {}", layer.describe()),
            expected: want,
            found: len,
        }));
    }
    Ok(())
}

fn check_digest(
    want: &Digest,
    found: Option<Digest>,
    what: &str,
    layer: &LayerRef,
    image_path: &Path,
) -> Result<(), IndexFail> {
    match found {
        Some(f) if &f == want => Ok(()),
        Some(f) => Err(IndexFail::Other(mismatch(
            layer, image_path, what, want, &f,
        ))),
        None => Ok(()),
    }
}

fn mismatch(
    layer: &LayerRef,
    image_path: &Path,
    what: &str,
    want: &Digest,
    found: &Digest,
) -> Error {
    Error::DigestMismatch {
        path: image_path.to_path_buf(),
        what: format!("layer {} {what}", layer.describe()),
        expected: want.to_string(),
        found: found.to_string(),
    }
}
