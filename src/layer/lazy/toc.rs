//! Layers that carry a table of contents, mounted without reading their data:
//! - eStargz (containerd/stargz-snapshotter `docs/estargz.md`): a gzip blob whose files are
//!   separate gzip members; the last tar entry, `stargz.index.json`, lists every entry, and a
//!   51-byte footer gives its offset. The TOC's digest is in the layer descriptor
//!   (`containerd.io/snapshot/stargz/toc.digest`), every chunk's in the TOC (`chunkDigest`).
//! - zstd:chunked (containers/storage `pkg/chunked`): a zstd blob whose files are separate
//!   frames; the TOC is a zstd-compressed skippable frame located by the descriptor's
//!   `manifest-position` annotation and verified by its `manifest-checksum`.
//!
//! What is verified: the TOC against the descriptor's digest (the manifest that carries it was
//! verified by the image source), then each chunk against its TOC digest before any of it is
//! served. What is trusted: the TOC's metadata (it is what both formats' own readers use), and
//! the config's diff_id, which is not re-hashed (that would need the whole blob).
//!
//! File data lives in a virtual address space: the layer's files back to back, in TOC order.
//! Dependencies: store, layer (entry, data, build_index), image (digest, remote), serde, base64.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde::Deserialize;

use super::fill::Fill;
use super::spans::Source;
use crate::image::digest::{Algorithm, Digest};
use crate::image::remote::RemoteBlob;
use crate::layer::codec::{Cursor, put_bytes, put_u64};
use crate::layer::data::LayerBytes;
use crate::layer::entry::{EntryKind, LayerEntry, Meta, normalize_path};
use crate::layer::store::{Priority, Units};

/// Descriptor annotation with the digest of an eStargz TOC.
pub const ANN_ESTARGZ_TOC: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Descriptor annotations locating a zstd:chunked TOC (current names, then older ones).
const ANN_ZSTD_POSITION: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-position",
    "io.containers.zstd-chunked.manifest-position",
];
const ANN_ZSTD_CHECKSUM: [&str; 2] = [
    "io.github.containers.zstd-chunked.manifest-checksum",
    "io.containers.zstd-chunked.manifest-checksum",
];
/// Size of the eStargz footer.
pub const ESTARGZ_FOOTER: u64 = 51;
/// The TOC's own tar entry in an eStargz blob.
const ESTARGZ_TOC_NAME: &[u8] = b"stargz.index.json";
/// Largest TOC accepted (real ones are a few MiB for the biggest layers).
const MAX_TOC: u64 = 256 << 20;
/// Decompressed chunks kept in memory per layer.
const CHUNK_CACHE: usize = 32;

/// Which table-of-contents format a layer has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TocFormat {
    /// gzip members.
    Estargz,
    /// zstd frames.
    ZstdChunked,
}

/// Where a TOC is and how to check it, from the layer descriptor's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TocLocation {
    /// Found through the footer; verified against this digest of the TOC JSON.
    Estargz(Digest),
    /// At `[offset, offset + len)`, zstd-compressed to `uncompressed` bytes; verified
    /// against this digest of the compressed bytes.
    ZstdChunked {
        /// Start of the compressed TOC.
        offset: u64,
        /// Its length.
        len: u64,
        /// Its decompressed length.
        uncompressed: u64,
        /// Digest of the compressed TOC.
        digest: Digest,
    },
}

impl TocLocation {
    /// The TOC a descriptor announces, if any; an annotation that is present but malformed
    /// is an error (a layer must not silently lose its verification).
    pub fn of(remote: &RemoteBlob) -> Result<Option<TocLocation>, String> {
        let ann = &remote.annotations;
        if let Some(d) = ann.get(ANN_ESTARGZ_TOC) {
            let d = Digest::parse(d).map_err(|_| format!("bad {ANN_ESTARGZ_TOC} {d:?}"))?;
            return Ok(Some(TocLocation::Estargz(d)));
        }
        let pos = ANN_ZSTD_POSITION.iter().find_map(|k| ann.get(*k));
        let sum = ANN_ZSTD_CHECKSUM.iter().find_map(|k| ann.get(*k));
        let (Some(pos), Some(sum)) = (pos, sum) else {
            return Ok(None);
        };
        let bad = || format!("bad zstd:chunked manifest position {pos:?}");
        let f: Vec<u64> = pos
            .split(':')
            .map(|p| p.parse().map_err(|_| bad()))
            .collect::<Result<_, _>>()?;
        let [offset, len, uncompressed, 1] = f[..] else {
            return Err(bad());
        };
        if offset.checked_add(len).is_none_or(|e| e > remote.len) || uncompressed > MAX_TOC {
            return Err(bad());
        }
        let digest =
            Digest::parse(sum).map_err(|_| format!("bad zstd:chunked checksum {sum:?}"))?;
        Ok(Some(TocLocation::ZstdChunked {
            offset,
            len,
            uncompressed,
            digest,
        }))
    }
}

/// One verifiable piece of file data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Start in the layer's virtual address space.
    pub vstart: u64,
    /// Length.
    pub len: u64,
    /// The compressed member holding it (index into [`TocMap::members`]).
    pub member: u32,
    /// Offset of the chunk in the member's decompressed bytes.
    pub inner: u64,
    /// Digest of the chunk's bytes.
    pub digest: Digest,
    /// A run of zeros, never fetched (zstd:chunked `chunkType: zeros`).
    pub zeros: bool,
}

/// Where every byte of a TOC layer's files is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TocMap {
    /// The format (how members are compressed).
    pub format: TocFormat,
    /// Compressed members `[start, end)`, sorted and disjoint.
    pub members: Vec<(u64, u64)>,
    /// Chunks by increasing `vstart`, back to back.
    pub chunks: Vec<Chunk>,
}

impl TocMap {
    /// Appends the cache's wire form.
    pub(crate) fn put(&self, b: &mut Vec<u8>) {
        b.push(match self.format {
            TocFormat::Estargz => 0,
            TocFormat::ZstdChunked => 1,
        });
        put_u64(b, self.members.len() as u64);
        for &(s, e) in &self.members {
            put_u64(b, s);
            put_u64(b, e);
        }
        put_u64(b, self.chunks.len() as u64);
        for c in &self.chunks {
            put_u64(b, c.vstart);
            put_u64(b, c.len);
            put_u64(b, u64::from(c.member));
            put_u64(b, c.inner);
            b.push(u8::from(c.zeros));
            put_bytes(b, c.digest.as_str().as_bytes());
        }
    }

    /// Reads what [`TocMap::put`] wrote.
    pub(crate) fn get(r: &mut Cursor<'_>) -> Option<TocMap> {
        let format = match r.u8()? {
            0 => TocFormat::Estargz,
            1 => TocFormat::ZstdChunked,
            _ => return None,
        };
        let n = r.u64()?;
        let mut members = Vec::with_capacity((n as usize).min(r.data.len() / 16));
        for _ in 0..n {
            members.push((r.u64()?, r.u64()?));
        }
        let n = r.u64()?;
        let mut chunks = Vec::with_capacity((n as usize).min(r.data.len() / 40));
        for _ in 0..n {
            let vstart = r.u64()?;
            let len = r.u64()?;
            let member = u32::try_from(r.u64()?).ok()?;
            let inner = r.u64()?;
            let zeros = r.u8()? != 0;
            let digest = Digest::parse(std::str::from_utf8(r.bytes()?).ok()?).ok()?;
            if member as usize >= members.len() {
                return None;
            }
            chunks.push(Chunk {
                vstart,
                len,
                member,
                inner,
                digest,
                zeros,
            });
        }
        let tiled = chunks
            .windows(2)
            .all(|w| w[0].vstart + w[0].len == w[1].vstart);
        let sorted = members.windows(2).all(|w| w[0].1 <= w[1].0);
        (tiled && sorted && members.iter().all(|&(s, e)| s < e)).then_some(TocMap {
            format,
            members,
            chunks,
        })
    }

    /// Total length of the virtual address space.
    pub fn size(&self) -> u64 {
        self.chunks.last().map_or(0, |c| c.vstart + c.len)
    }
}

/// One TOC entry; the fields both formats share (unknown ones are ignored).
#[derive(Debug, Deserialize)]
struct JEntry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    modtime: Option<String>,
    #[serde(rename = "linkName", default)]
    link_name: String,
    #[serde(default)]
    mode: i64,
    #[serde(default)]
    uid: u64,
    #[serde(default)]
    gid: u64,
    #[serde(rename = "devMajor", default)]
    dev_major: u64,
    #[serde(rename = "devMinor", default)]
    dev_minor: u64,
    #[serde(default)]
    xattrs: Option<BTreeMap<String, String>>,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    offset: u64,
    #[serde(rename = "endOffset", default)]
    end_offset: u64,
    #[serde(rename = "chunkOffset", default)]
    chunk_offset: u64,
    #[serde(rename = "chunkSize", default)]
    chunk_size: u64,
    #[serde(rename = "chunkDigest", default)]
    chunk_digest: String,
    #[serde(rename = "innerOffset", default)]
    inner_offset: u64,
    #[serde(rename = "chunkType", default)]
    chunk_type: String,
}

#[derive(Debug, Deserialize)]
struct JToc {
    version: i64,
    entries: Vec<JEntry>,
}

/// Seconds and nanoseconds of an RFC 3339 time (`2019-08-20T10:30:43.5+02:00`).
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut nsec: u32 = 0;
    if let Some(f) = rest.strip_prefix('.') {
        let digits = f.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        for (i, c) in f[..digits].bytes().take(9).enumerate() {
            nsec += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &f[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, om) = (
                rest.get(1..3)?.parse::<i64>().ok()?,
                rest.get(4..6)?.parse::<i64>().ok()?,
            );
            if rest.len() != 6 || rest.as_bytes()[3] != b':' {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset, nsec))
}

/// The TOC's entries and data map.
#[derive(Debug)]
pub struct Parsed {
    /// Entries in TOC order.
    pub entries: Vec<LayerEntry>,
    /// Where their data is.
    pub map: TocMap,
}

/// Turns a verified TOC JSON into entries and a data map. `data_end` is where file data
/// ends in the blob (the TOC's own start), the end of the last member.
pub fn parse_toc(json: &[u8], format: TocFormat, data_end: u64) -> Result<Parsed, String> {
    let toc: JToc = serde_json::from_slice(json).map_err(|e| format!("bad TOC: {e}"))?;
    if toc.version != 1 {
        return Err(format!("TOC version {} is not supported", toc.version));
    }
    // eStargz members end where the next one starts; collect every start first.
    let mut starts: Vec<u64> = toc
        .entries
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "reg" | "chunk") && (e.size > 0 || e.kind == "chunk"))
        .map(|e| e.offset)
        .collect();
    starts.push(data_end);
    starts.sort_unstable();
    starts.dedup();
    let mut members: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    let mut member_of = |s: u64, e: u64| -> Result<(u64, u64), String> {
        if s >= e || e > data_end {
            return Err(format!(
                "TOC: data range {s}..{e} is outside the blob's data"
            ));
        }
        let n = members.len() as u32;
        members.entry((s, e)).or_insert(n);
        Ok((s, e))
    };
    let mut entries = Vec::new();
    let mut chunks: Vec<(Chunk, (u64, u64))> = Vec::new();
    let mut vbase: u64 = 0;
    let mut i = 0;
    while i < toc.entries.len() {
        let e = &toc.entries[i];
        i += 1;
        let shown = &e.name;
        let path = normalize_path(e.name.as_bytes())
            .map_err(|err| format!("unsafe path {shown:?}: {err:?}"))?;
        let id = |v: u64, what: &str| {
            u32::try_from(v).map_err(|_| format!("{shown}: {what} {v} out of range"))
        };
        let (mtime, mtime_nsec) = match e.modtime.as_deref().filter(|m| !m.is_empty()) {
            Some(m) => parse_rfc3339(m).ok_or_else(|| format!("{shown}: bad modtime {m:?}"))?,
            None => (0, 0),
        };
        let meta = Meta {
            mode: (e.mode & 0o7777) as u32,
            uid: id(e.uid, "uid")?,
            gid: id(e.gid, "gid")?,
            mtime,
            mtime_nsec,
        };
        let mut xattrs = Vec::new();
        for (k, v) in e.xattrs.iter().flatten() {
            let v = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| format!("{shown}: xattr {k:?} is not base64"))?;
            xattrs.push((k.as_bytes().into(), v.into()));
        }
        let dev = |v: u64| {
            u32::try_from(v).map_err(|_| format!("{shown}: device number {v} out of range"))
        };
        let kind = match e.kind.as_str() {
            "dir" => EntryKind::Dir,
            "symlink" => EntryKind::Symlink(e.link_name.as_bytes().into()),
            "hardlink" => {
                let t = normalize_path(e.link_name.as_bytes())
                    .map_err(|err| format!("{shown}: unsafe hard link target: {err:?}"))?;
                if t.is_empty() {
                    return Err(format!("{shown}: hard link to the root directory"));
                }
                EntryKind::HardLink(t.into())
            }
            "char" => EntryKind::CharDev {
                major: dev(e.dev_major)?,
                minor: dev(e.dev_minor)?,
            },
            "block" => EntryKind::BlockDev {
                major: dev(e.dev_major)?,
                minor: dev(e.dev_minor)?,
            },
            "fifo" => EntryKind::Fifo,
            "reg" => {
                // The file's chunks: this entry, then the `chunk` entries that follow it.
                let mut pieces = vec![e];
                while let Some(n) = toc.entries.get(i).filter(|n| n.kind == "chunk") {
                    pieces.push(n);
                    i += 1;
                }
                let mut covered = 0u64;
                for (k, p) in pieces.iter().enumerate() {
                    if e.size == 0 {
                        break;
                    }
                    if p.chunk_offset != covered {
                        return Err(format!("{shown}: TOC chunks leave a gap at {covered}"));
                    }
                    let last = k + 1 == pieces.len();
                    let len = if p.chunk_size > 0 {
                        p.chunk_size
                    } else if last {
                        e.size - covered.min(e.size)
                    } else {
                        return Err(format!("{shown}: TOC chunk without a size"));
                    };
                    let (start, end, digest) = match format {
                        TocFormat::Estargz => {
                            let next = starts[starts
                                .partition_point(|&s| s <= p.offset)
                                .min(starts.len() - 1)];
                            (p.offset, next, &p.chunk_digest)
                        }
                        TocFormat::ZstdChunked => {
                            let end = match pieces.get(k + 1) {
                                Some(n) => n.offset,
                                None => e.end_offset,
                            };
                            // A file in one piece has only the file digest.
                            let d = if p.chunk_digest.is_empty() {
                                &e.digest
                            } else {
                                &p.chunk_digest
                            };
                            (p.offset, end, d)
                        }
                    };
                    let digest = Digest::parse(digest)
                        .map_err(|_| format!("{shown}: TOC chunk without a valid digest"))?;
                    let zeros = p.chunk_type == "zeros";
                    let range = if zeros {
                        (0, 0)
                    } else {
                        member_of(start, end)?
                    };
                    chunks.push((
                        Chunk {
                            vstart: vbase + covered,
                            len,
                            member: 0,
                            inner: p.inner_offset,
                            digest,
                            zeros,
                        },
                        range,
                    ));
                    covered += len;
                }
                if covered != e.size {
                    return Err(format!(
                        "{shown}: TOC chunks cover {covered} of {} bytes",
                        e.size
                    ));
                }
                let offset = vbase;
                vbase += e.size;
                EntryKind::File {
                    offset,
                    size: e.size,
                }
            }
            "chunk" => return Err(format!("{shown}: TOC chunk without its file")),
            other => {
                log::warn!("skipping TOC entry {shown:?} of unknown type {other:?}");
                continue;
            }
        };
        entries.push(LayerEntry {
            path: path.into(),
            meta,
            kind,
            xattrs,
        });
    }
    let ordered: Vec<(u64, u64)> = members.keys().copied().collect();
    if ordered.windows(2).any(|w| w[0].1 > w[1].0) {
        return Err("TOC: data ranges overlap".into());
    }
    let chunks = chunks
        .into_iter()
        .map(|(mut c, range)| {
            // Zero chunks have no member; any index will do, it is never read.
            c.member = ordered.binary_search(&range).map_or(0, |i| i as u32);
            c
        })
        .collect();
    Ok(Parsed {
        entries,
        map: TocMap {
            format,
            members: ordered,
            chunks,
        },
    })
}

/// The TOC offset an eStargz footer names.
pub fn parse_estargz_footer(f: &[u8]) -> Result<u64, String> {
    let bad = |why: &str| format!("not an eStargz footer: {why}");
    if f.len() != ESTARGZ_FOOTER as usize || f[..3] != [0x1f, 0x8b, 8] || f[3] & 4 == 0 {
        return Err(bad("no gzip header with an extra field"));
    }
    let xlen = u16::from_le_bytes([f[10], f[11]]) as usize;
    let extra = f
        .get(12..12 + xlen)
        .ok_or_else(|| bad("extra field too long"))?;
    if xlen != 26 || &extra[..2] != b"SG" || u16::from_le_bytes([extra[2], extra[3]]) != 22 {
        return Err(bad("no SG subfield"));
    }
    let sub = &extra[4..];
    if &sub[16..] != b"STARGZ" {
        return Err(bad("no STARGZ magic"));
    }
    let hex = std::str::from_utf8(&sub[..16]).map_err(|_| bad("offset is not hex"))?;
    u64::from_str_radix(hex, 16).map_err(|_| bad("offset is not hex"))
}

/// Reads the TOC tar member of an eStargz blob: its entry (for the tree) and the JSON.
pub fn read_estargz_toc_member(member: &[u8]) -> Result<(LayerEntry, u64, Vec<u8>), String> {
    let mut tar = Vec::new();
    flate2::read::GzDecoder::new(member)
        .take(MAX_TOC + (1 << 20))
        .read_to_end(&mut tar)
        .map_err(|e| format!("corrupt TOC member: {e}"))?;
    let index = crate::layer::build_index(&tar[..]).map_err(|e| format!("TOC member: {e}"))?;
    let entry = index
        .entries
        .into_iter()
        .next()
        .filter(|e| &*e.path == ESTARGZ_TOC_NAME)
        .ok_or("TOC member does not start with stargz.index.json")?;
    let EntryKind::File { offset, size } = entry.kind else {
        return Err("stargz.index.json is not a regular file".into());
    };
    let json = tar
        .get(offset as usize..(offset + size) as usize)
        .ok_or("TOC member is truncated")?
        .to_vec();
    Ok((entry, offset, json))
}

/// Decompresses a member of a TOC layer, up to `limit` bytes.
fn decompress(format: TocFormat, bytes: &[u8], limit: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    match format {
        TocFormat::Estargz => {
            flate2::read::MultiGzDecoder::new(bytes)
                .take(limit)
                .read_to_end(&mut out)?;
        }
        TocFormat::ZstdChunked => {
            zstd::stream::read::Decoder::new(bytes)?
                .take(limit)
                .read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

/// Decompresses a zstd:chunked TOC (after its digest was checked).
pub fn decompress_zstd_toc(bytes: &[u8], uncompressed: u64) -> Result<Vec<u8>, String> {
    let out = decompress(TocFormat::ZstdChunked, bytes, uncompressed + 1)
        .map_err(|e| format!("corrupt TOC: {e}"))?;
    if out.len() as u64 != uncompressed {
        return Err(format!(
            "TOC is {} bytes, its annotation says {uncompressed}",
            out.len()
        ));
    }
    Ok(out)
}

/// A TOC layer's file data, fetched chunk by chunk.
pub struct TocBytes {
    src: Source,
    map: TocMap,
    /// Per member, the chunks it holds.
    by_member: Vec<Vec<u32>>,
    recent: Mutex<lru::LruCache<u32, Arc<[u8]>>>,
}

impl std::fmt::Debug for TocBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TocBytes")
            .field("blob", &self.src.blob.digest)
            .field("chunks", &self.map.chunks.len())
            .finish()
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl TocBytes {
    /// Reads the data of `map` from the blob of `src`.
    pub fn new(src: Source, map: TocMap) -> TocBytes {
        let mut by_member = vec![Vec::new(); map.members.len()];
        for (i, c) in map.chunks.iter().enumerate() {
            if !c.zeros {
                by_member[c.member as usize].push(i as u32);
            }
        }
        let cap = NonZeroUsize::new(CHUNK_CACHE).unwrap_or(NonZeroUsize::MIN);
        TocBytes {
            src,
            map,
            by_member,
            recent: Mutex::new(lru::LruCache::new(cap)),
        }
    }

    /// The bytes of chunk `i`, verified.
    fn chunk(&self, i: u32) -> io::Result<Arc<[u8]>> {
        if let Some(b) = self.recent.lock().ok().and_then(|mut r| r.get(&i).cloned()) {
            return Ok(b);
        }
        let c = self.map.chunks.get(i as usize).ok_or_else(eio)?;
        let bytes: Arc<[u8]> = if c.zeros {
            let z = vec![0u8; c.len as usize];
            if Digest::of_bytes(c.digest.algorithm(), &z) != c.digest {
                log::error!(
                    "blob {}: zero chunk at {} fails its digest",
                    self.src.blob.digest,
                    c.vstart
                );
                return Err(eio());
            }
            z.into()
        } else {
            let (s, e) = self.map.members[c.member as usize];
            self.src
                .blob
                .ensure(&self.src.origin, self, s, e, Priority::Foreground)?;
            if let Some(b) = self.recent.lock().ok().and_then(|mut r| r.get(&i).cloned()) {
                return Ok(b);
            }
            // Bytes in the store were verified when they were fetched.
            let mut raw = vec![0u8; (e - s) as usize];
            let n = self.src.blob.read_at(&mut raw, s)?;
            let out = decompress(self.map.format, &raw[..n], c.inner + c.len).map_err(|err| {
                log::error!("blob {}: member at {s}: {err}", self.src.blob.digest);
                eio()
            })?;
            out.get(c.inner as usize..(c.inner + c.len) as usize)
                .ok_or_else(eio)?
                .into()
        };
        if let Ok(mut r) = self.recent.lock() {
            r.put(i, bytes.clone());
        }
        Ok(bytes)
    }
}

impl Units for TocBytes {
    fn covering(&self, a: u64, b: u64) -> Range<usize> {
        let m = &self.map.members;
        m.partition_point(|&(_, e)| e <= a)..m.partition_point(|&(s, _)| s < b)
    }
    fn bounds(&self, i: usize) -> (u64, u64) {
        self.map.members[i]
    }
    fn verify(&self, i: usize, bytes: &[u8]) -> io::Result<()> {
        let chunks = self.by_member.get(i).ok_or_else(eio)?;
        let limit = chunks
            .iter()
            .map(|&c| self.map.chunks[c as usize].inner + self.map.chunks[c as usize].len)
            .max()
            .unwrap_or(0);
        let out = decompress(self.map.format, bytes, limit)?;
        let mut verified = Vec::new();
        for &ci in chunks {
            let c = &self.map.chunks[ci as usize];
            let data = out
                .get(c.inner as usize..(c.inner + c.len) as usize)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        "member is shorter than its chunks",
                    )
                })?;
            if Digest::of_bytes(c.digest.algorithm(), data) != c.digest {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "chunk digest mismatch",
                ));
            }
            verified.push((ci, Arc::<[u8]>::from(data)));
        }
        // Verified now: later reads of these chunks need not inflate the member again.
        if let Ok(mut r) = self.recent.lock() {
            for (ci, d) in verified {
                r.put(ci, d);
            }
        }
        Ok(())
    }
}

impl LayerBytes for TocBytes {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let chunks = &self.map.chunks;
        let mut got = 0;
        while got < buf.len() {
            let pos = offset + got as u64;
            let i = chunks.partition_point(|c| c.vstart <= pos);
            let Some(c) = i.checked_sub(1).map(|i| &chunks[i]) else {
                break;
            };
            if pos >= c.vstart + c.len {
                break;
            }
            let data = self.chunk((i - 1) as u32)?;
            let from = (pos - c.vstart) as usize;
            let n = (buf.len() - got).min(data.len() - from);
            buf[got..got + n].copy_from_slice(&data[from..from + n]);
            got += n;
        }
        Ok(got)
    }
}

impl Fill for TocBytes {
    fn missing(&self) -> u64 {
        let total: u64 = self.map.members.iter().map(|&(s, e)| e - s).sum();
        total.saturating_sub(self.src.blob.present_bytes())
    }
    fn fill(&self) -> io::Result<()> {
        for &(s, e) in &self.map.members {
            self.src
                .blob
                .ensure(&self.src.origin, self, s, e, Priority::Background)?;
        }
        Ok(())
    }
    fn describe(&self) -> String {
        self.src.blob.digest.to_string()
    }
}

/// Digest of a TOC's JSON, as eStargz records it.
pub fn toc_digest(json: &[u8]) -> Digest {
    Digest::of_bytes(Algorithm::Sha256, json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_table() {
        let cases: &[(&str, Option<(i64, u32)>)] = &[
            ("1970-01-01T00:00:00Z", Some((0, 0))),
            ("2019-08-20T10:30:43Z", Some((1_566_297_043, 0))),
            ("2019-08-20T12:30:43+02:00", Some((1_566_297_043, 0))),
            (
                "2019-08-20T10:30:43.25Z",
                Some((1_566_297_043, 250_000_000)),
            ),
            ("1969-12-31T23:59:59Z", Some((-1, 0))),
            ("0001-01-01T00:00:00Z", Some((-62_135_596_800, 0))),
            ("2019-13-20T10:30:43Z", None),
            ("2019-08-20 10:30", None),
            ("2019-08-20T10:30:43", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_rfc3339(s), *want, "{s}");
        }
    }

    fn d(s: &str) -> String {
        toc_digest(s.as_bytes()).to_string()
    }

    #[test]
    fn estargz_toc_parses_entries_and_chunks() {
        let toc = format!(
            r#"{{"version":1,"entries":[
            {{"name":"./","type":"dir","mode":16877,"modtime":"2020-01-01T00:00:00Z"}},
            {{"name":"a/big","type":"reg","size":10,"mode":33188,"uid":7,"gid":8,"offset":100,
              "chunkSize":6,"chunkDigest":"{}","xattrs":{{"user.k":"dg=="}}}},
            {{"name":"a/big","type":"chunk","offset":200,"chunkOffset":6,"chunkDigest":"{}"}},
            {{"name":"a/empty","type":"reg","size":0,"mode":420}},
            {{"name":"a/small","type":"reg","size":3,"offset":300,"chunkDigest":"{}"}},
            {{"name":"a/l","type":"symlink","linkName":"../x"}},
            {{"name":"a/h","type":"hardlink","linkName":"./a/small"}},
            {{"name":"a/c","type":"char","devMajor":1,"devMinor":3}}]}}"#,
            d("012345"),
            d("6789"),
            d("abc")
        );
        let p = parse_toc(toc.as_bytes(), TocFormat::Estargz, 400).unwrap();
        let names: Vec<_> = p
            .entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert_eq!(
            names,
            ["", "a/big", "a/empty", "a/small", "a/l", "a/h", "a/c"]
        );
        assert_eq!(p.entries[0].meta.mode, 0o755);
        assert_eq!(
            p.entries[1].kind,
            EntryKind::File {
                offset: 0,
                size: 10
            }
        );
        assert_eq!((p.entries[1].meta.uid, p.entries[1].meta.gid), (7, 8));
        assert_eq!(&*p.entries[1].xattrs[0].1, b"v");
        assert_eq!(
            p.entries[3].kind,
            EntryKind::File {
                offset: 10,
                size: 3
            }
        );
        assert_eq!(
            p.entries[5].kind,
            EntryKind::HardLink(b"a/small"[..].into())
        );
        assert_eq!(p.map.members, vec![(100, 200), (200, 300), (300, 400)]);
        let spans: Vec<_> = p
            .map
            .chunks
            .iter()
            .map(|c| (c.vstart, c.len, c.member))
            .collect();
        assert_eq!(spans, vec![(0, 6, 0), (6, 4, 1), (10, 3, 2)]);
        let mut b = Vec::new();
        p.map.put(&mut b);
        assert_eq!(TocMap::get(&mut Cursor { data: &b }), Some(p.map));
    }

    #[test]
    fn toc_refusals() {
        let gap = format!(
            r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":10,"offset":0,"chunkSize":4,"chunkDigest":"{0}"}},
            {{"name":"f","type":"chunk","offset":5,"chunkOffset":5,"chunkDigest":"{0}"}}]}}"#,
            d("x")
        );
        let cases = [
            (r#"{"version":2,"entries":[]}"#.to_string(), "version"),
            (
                r#"{"version":1,"entries":[{"name":"../x","type":"dir"}]}"#.to_string(),
                "unsafe path",
            ),
            (
                r#"{"version":1,"entries":[{"name":"f","type":"reg","size":3,"offset":0}]}"#
                    .to_string(),
                "digest",
            ),
            (gap, "gap"),
            (
                format!(
                    r#"{{"version":1,"entries":[{{"name":"f","type":"reg","size":3,"offset":90,"chunkDigest":"{}"}}]}}"#,
                    d("x")
                ),
                "outside",
            ),
        ];
        for (toc, want) in cases {
            let e = parse_toc(toc.as_bytes(), TocFormat::Estargz, 50).unwrap_err();
            assert!(e.contains(want), "{e} (wanted {want})");
        }
    }

    #[test]
    fn zstd_chunked_toc_uses_end_offsets_and_file_digests() {
        let toc = format!(
            r#"{{"version":1,"entries":[
            {{"type":"reg","name":"./one","size":3,"offset":10,"endOffset":30,"digest":"{}"}},
            {{"type":"reg","name":"./two","size":9,"offset":40,"endOffset":90,"chunkSize":4,"chunkDigest":"{}"}},
            {{"type":"chunk","name":"./two","offset":60,"chunkSize":5,"chunkOffset":4,"chunkDigest":"{}","chunkType":"zeros"}}]}}"#,
            d("abc"),
            d("1234"),
            d("\0\0\0\0\0")
        );
        let p = parse_toc(toc.as_bytes(), TocFormat::ZstdChunked, 100).unwrap();
        assert_eq!(p.map.members, vec![(10, 30), (40, 60)]);
        assert!(p.map.chunks[2].zeros && !p.map.chunks[1].zeros);
        assert_eq!(p.map.size(), 12);
    }

    #[test]
    fn chunks_sharing_a_member_by_inner_offset_are_fetched_once() {
        use crate::layer::store::tests::MemFetch;
        use crate::layer::store::{BlobStore, Origin};
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"helloworld").unwrap();
        let blob = e.finish().unwrap();
        let toc = format!(
            r#"{{"version":1,"entries":[
            {{"name":"a","type":"reg","size":5,"offset":0,"chunkDigest":"{}"}},
            {{"name":"b","type":"reg","size":5,"offset":0,"innerOffset":5,"chunkDigest":"{}"}}]}}"#,
            d("hello"),
            d("world")
        );
        let p = parse_toc(toc.as_bytes(), TocFormat::Estargz, blob.len() as u64).unwrap();
        assert_eq!(p.map.members.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::of_bytes(Algorithm::Sha256, &blob);
        let stored = BlobStore::new(dir.path())
            .open(&digest, blob.len() as u64)
            .unwrap();
        let fetch = Arc::new(MemFetch::new(blob));
        let src = Source {
            blob: stored,
            origin: Origin {
                fetch: Some(fetch.clone()),
                offline: false,
            },
            held: None,
        };
        let bytes = TocBytes::new(src, p.map);
        let mut buf = [0u8; 5];
        assert_eq!(bytes.read_at(&mut buf, 5).unwrap(), 5);
        assert_eq!(&buf, b"world");
        assert_eq!(bytes.read_at(&mut buf, 0).unwrap(), 5);
        assert_eq!(&buf, b"hello");
        assert_eq!(fetch.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn estargz_footer_round_trip() {
        let mut f = vec![
            0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, 26, 0, b'S', b'G', 22, 0,
        ];
        f.extend_from_slice(format!("{:016x}STARGZ", 0x1234).as_bytes());
        f.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
        f.extend_from_slice(&[0; 8]);
        assert_eq!(parse_estargz_footer(&f), Ok(0x1234));
        let mut bad = f.clone();
        bad[12] = b'X';
        assert!(parse_estargz_footer(&bad).is_err());
        assert!(parse_estargz_footer(&f[1..]).is_err());
    }
}
