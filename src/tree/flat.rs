//! The merged tree's flat encoding: one byte string that is both the cache file and, mapped,
//! the tree a mount serves in place, so a warm mount reads no layer index and its memory
//! grows only with the pages its lookups touch.
//!
//! ```text
//! header   64 bytes: magic, byte-order mark, record size, the four arena lengths,
//!          total file bytes, a reserved word
//! nodes    [NodeRec; nodes]          56 bytes each, at offset 64 (8-aligned)
//! entries  [DirEntry; entries]       12 bytes each
//! names    name bytes, then zeros to an 8-byte boundary
//! extra    symlink targets and xattr blocks, then zeros to an 8-byte boundary
//! trailer  CRC-32 of everything before it, as a u32, then 4 zero bytes
//! ```
//! Integers are in the host's byte order (the file is a cache, never moved between
//! machines; the byte-order mark refuses a foreign one). An xattr block is a `u32` count,
//! then per attribute `u32` name length, `u32` value length, name, value.
//!
//! A file whose header, lengths or checksum do not add up is refused (`None`) and rebuilt;
//! every read is bounds-checked besides, so even bytes that passed the checksum can only
//! ever give wrong answers, never a panic or a read outside the file.
//! Dependencies: tree::node, sys (mapping, record views).

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::node::{DirEntry, NodeRec};
use crate::sys::mapped::{Aligned, Mapped, records};

/// Format tag; bump the digits when the layout or the merge rules change.
pub const MAGIC: &[u8; 8] = b"RIMGTR01";
const BOM: u32 = 0x0102_0304;
const HEADER: usize = 64;
const TRAILER: usize = 8;
const NODE_SIZE: usize = std::mem::size_of::<NodeRec>();
const ENTRY_SIZE: usize = std::mem::size_of::<DirEntry>();

/// The arenas of a tree, to be encoded.
pub struct Parts<'a> {
    /// Node records, the root first.
    pub nodes: &'a [NodeRec],
    /// Directory entries, each directory's a name-sorted run.
    pub entries: &'a [DirEntry],
    /// Name bytes.
    pub names: &'a [u8],
    /// Symlink targets and xattr blocks.
    pub extra: &'a [u8],
    /// Sum of regular file sizes.
    pub total_bytes: u64,
}

/// Encodes a tree.
pub fn encode(p: &Parts<'_>) -> Vec<u8> {
    let body = HEADER
        + p.nodes.len() * NODE_SIZE
        + p.entries.len() * ENTRY_SIZE
        + p.names.len().next_multiple_of(8)
        + p.extra.len().next_multiple_of(8);
    let mut b = Vec::with_capacity(body + TRAILER);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&BOM.to_ne_bytes());
    b.extend_from_slice(&(NODE_SIZE as u32).to_ne_bytes());
    for n in [p.nodes.len(), p.entries.len(), p.names.len(), p.extra.len()] {
        b.extend_from_slice(&(n as u64).to_ne_bytes());
    }
    b.extend_from_slice(&p.total_bytes.to_ne_bytes());
    b.extend_from_slice(&0u64.to_ne_bytes());
    for n in p.nodes {
        b.extend_from_slice(&n.mtime.to_ne_bytes());
        b.extend_from_slice(&n.a.to_ne_bytes());
        b.extend_from_slice(&n.b.to_ne_bytes());
        for w in [
            n.mode,
            n.uid,
            n.gid,
            n.mtime_nsec,
            n.nlink,
            n.parent,
            n.xattrs,
        ] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
        b.extend_from_slice(&n.layer.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
    }
    for e in p.entries {
        for w in [e.name_start, e.name_len, e.node.0] {
            b.extend_from_slice(&w.to_ne_bytes());
        }
    }
    for arena in [p.names, p.extra] {
        b.extend_from_slice(arena);
        b.resize(b.len().next_multiple_of(8), 0);
    }
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b
}

/// Where the encoded bytes live.
#[derive(Debug)]
enum Store {
    Mem(Aligned),
    Map(Mapped),
}

/// A decoded header: where each arena lies.
#[derive(Debug)]
pub struct Flat {
    store: Store,
    nodes: Range<usize>,
    entries: Range<usize>,
    names: Range<usize>,
    extra: Range<usize>,
    /// Sum of regular file sizes.
    pub total_bytes: u64,
}

impl Flat {
    /// Decodes bytes held in memory, checking the checksum.
    pub fn from_bytes(bytes: &[u8]) -> Option<Flat> {
        let (body, crc) = split_trailer(bytes)?;
        (crc32fast::hash(body) == crc).then_some(())?;
        Flat::parse(Store::Mem(Aligned::copy_of(bytes)))
    }

    /// Maps a cache file, after checking its checksum with plain reads (which leave its pages
    /// in the page cache but not in this process's memory).
    pub fn open(file: &File) -> io::Result<Option<Flat>> {
        let len = usize::try_from(file.metadata()?.len()).unwrap_or(usize::MAX);
        if len < HEADER + TRAILER {
            return Ok(None);
        }
        let mut hasher = crc32fast::Hasher::new();
        let mut head = [0u8; HEADER];
        file.read_exact_at(&mut head, 0)?;
        if &head[..8] != MAGIC {
            return Ok(None);
        }
        hasher.update(&head);
        let mut buf = vec![0u8; 1 << 20];
        let mut pos = HEADER;
        let body = len - TRAILER;
        while pos < body {
            let n = (body - pos).min(buf.len());
            file.read_exact_at(&mut buf[..n], pos as u64)?;
            hasher.update(&buf[..n]);
            pos += n;
        }
        let mut trailer = [0u8; TRAILER];
        file.read_exact_at(&mut trailer, body as u64)?;
        let crc = u32::from_ne_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        if hasher.finalize() != crc || trailer[4..] != [0u8; 4] {
            return Ok(None);
        }
        Ok(Flat::parse(Store::Map(Mapped::file(file)?)))
    }

    /// Maps a file this process has just written with `bytes` (already checked), without
    /// reading it again; `None` if the file is not those bytes' length.
    pub fn map_written(file: &File, bytes: &[u8]) -> io::Result<Option<Flat>> {
        let m = Mapped::file(file)?;
        if m.len() != bytes.len() || m.get(..HEADER) != bytes.get(..HEADER) {
            return Ok(None);
        }
        Ok(Flat::parse(Store::Map(m)))
    }

    fn parse(store: Store) -> Option<Flat> {
        let bytes: &[u8] = match &store {
            Store::Mem(a) => a,
            Store::Map(m) => m,
        };
        let head = bytes.get(..HEADER)?;
        let u32_at = |i: usize| Some(u32::from_ne_bytes(head.get(i..i + 4)?.try_into().ok()?));
        let u64_at = |i: usize| Some(u64::from_ne_bytes(head.get(i..i + 8)?.try_into().ok()?));
        if &head[..8] != MAGIC || u32_at(8)? != BOM || u32_at(12)? as usize != NODE_SIZE {
            return None;
        }
        let len = |i: usize| usize::try_from(u64_at(i)?).ok();
        let sized = |n: usize, size: usize| n.checked_mul(size);
        let nodes = HEADER..HEADER.checked_add(sized(len(16)?, NODE_SIZE)?)?;
        let entries = nodes.end..nodes.end.checked_add(sized(len(24)?, ENTRY_SIZE)?)?;
        let names = entries.end..entries.end.checked_add(len(32)?)?;
        let extra_at = names.end.checked_next_multiple_of(8)?;
        let extra = extra_at..extra_at.checked_add(len(40)?)?;
        let end = extra
            .end
            .checked_next_multiple_of(8)?
            .checked_add(TRAILER)?;
        if end != bytes.len() {
            return None;
        }
        let total_bytes = u64_at(48)?;
        let flat = Flat {
            nodes,
            entries,
            names,
            extra,
            total_bytes,
            store,
        };
        // The views must work (alignment), and a tree has a root.
        (flat.node_recs().len() == flat.nodes.len() / NODE_SIZE && !flat.node_recs().is_empty())
            .then_some(())?;
        records::<DirEntry>(flat.bytes().get(flat.entries.clone())?)?;
        Some(flat)
    }

    fn bytes(&self) -> &[u8] {
        match &self.store {
            Store::Mem(a) => a,
            Store::Map(m) => m,
        }
    }

    /// The node records.
    pub fn node_recs(&self) -> &[NodeRec] {
        self.bytes()
            .get(self.nodes.clone())
            .and_then(records)
            .unwrap_or_default()
    }

    /// The directory entries.
    pub fn entries(&self) -> &[DirEntry] {
        self.bytes()
            .get(self.entries.clone())
            .and_then(records)
            .unwrap_or_default()
    }

    /// The name arena.
    pub fn names(&self) -> &[u8] {
        self.bytes().get(self.names.clone()).unwrap_or_default()
    }

    /// The extra arena.
    pub fn extra(&self) -> &[u8] {
        self.bytes().get(self.extra.clone()).unwrap_or_default()
    }

    /// Whether the tree is served from a mapped file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.store, Store::Map(_))
    }

    /// Size of the encoding.
    pub fn len(&self) -> usize {
        self.bytes().len()
    }

    /// Never true for a parsed tree (it has a header).
    pub fn is_empty(&self) -> bool {
        self.bytes().is_empty()
    }
}

fn split_trailer(bytes: &[u8]) -> Option<(&[u8], u32)> {
    let body = bytes.len().checked_sub(TRAILER)?;
    let (b, t) = bytes.split_at(body);
    (t.get(4..) == Some(&[0u8; 4][..])).then_some(())?;
    Some((b, u32::from_ne_bytes(t.get(..4)?.try_into().ok()?)))
}

/// Reads the xattr block at `at` of `extra`: `(name, value)` pairs.
pub fn xattrs(extra: &[u8], at: u32) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut pos = at as usize;
    let count = (at != NodeRec::NO_XATTRS)
        .then(|| read_u32(extra, &mut pos))
        .flatten()
        .unwrap_or(0);
    (0..count).map_while(move |_| {
        let kl = read_u32(extra, &mut pos)? as usize;
        let vl = read_u32(extra, &mut pos)? as usize;
        let k = extra.get(pos..pos.checked_add(kl)?)?;
        pos += kl;
        let v = extra.get(pos..pos.checked_add(vl)?)?;
        pos += vl;
        Some((k, v))
    })
}

/// Appends an xattr block to `extra`.
pub fn put_xattrs<'a>(extra: &mut Vec<u8>, x: impl ExactSizeIterator<Item = (&'a [u8], &'a [u8])>) {
    extra.extend_from_slice(&(x.len() as u32).to_ne_bytes());
    for (k, v) in x {
        extra.extend_from_slice(&(k.len() as u32).to_ne_bytes());
        extra.extend_from_slice(&(v.len() as u32).to_ne_bytes());
        extra.extend_from_slice(k);
        extra.extend_from_slice(v);
    }
}

fn read_u32(b: &[u8], pos: &mut usize) -> Option<u32> {
    let v = u32::from_ne_bytes(b.get(*pos..pos.checked_add(4)?)?.try_into().ok()?);
    *pos += 4;
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::node::NodeId;

    fn sample() -> Vec<u8> {
        let mut extra = b"target".to_vec();
        put_xattrs(
            &mut extra,
            [(&b"user.a"[..], &b"1"[..]), (&b"user.b"[..], &b""[..])].into_iter(),
        );
        let nodes = [
            NodeRec {
                mode: libc::S_IFDIR | 0o755,
                a: 0,
                b: 2,
                nlink: 2,
                xattrs: NodeRec::NO_XATTRS,
                ..NodeRec::default()
            },
            NodeRec {
                mode: libc::S_IFLNK | 0o777,
                a: 0,
                b: 6,
                nlink: 1,
                xattrs: 6,
                layer: 3,
                mtime: -5,
                ..NodeRec::default()
            },
            NodeRec {
                mode: libc::S_IFREG | 0o4755,
                a: 1 << 40,
                b: 77,
                nlink: 1,
                uid: 7,
                xattrs: NodeRec::NO_XATTRS,
                ..NodeRec::default()
            },
        ];
        let entries = [
            DirEntry {
                name_start: 0,
                name_len: 1,
                node: NodeId(1),
            },
            DirEntry {
                name_start: 1,
                name_len: 3,
                node: NodeId(2),
            },
        ];
        encode(&Parts {
            nodes: &nodes,
            entries: &entries,
            names: b"lbin",
            extra: &extra,
            total_bytes: 77,
        })
    }

    #[test]
    fn round_trip_in_memory_and_mapped() {
        let bytes = sample();
        assert_eq!(std::mem::size_of::<NodeRec>(), 56);
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        for flat in [
            Flat::from_bytes(&bytes).unwrap(),
            Flat::open(&f).unwrap().unwrap(),
        ] {
            let n = flat.node_recs();
            assert_eq!(n.len(), 3);
            assert_eq!(
                (n[1].layer, n[1].mtime, n[1].st_mode()),
                (3, -5, libc::S_IFLNK | 0o777)
            );
            assert_eq!(n[2].data().map(|d| (d.offset, d.size)), Some((1 << 40, 77)));
            assert_eq!(n[2].st_mode(), libc::S_IFREG | 0o4755);
            assert_eq!(flat.entries().len(), 2);
            assert_eq!(flat.entries()[1].node, NodeId(2));
            assert_eq!(flat.names(), b"lbin");
            assert_eq!(&flat.extra()[..6], b"target");
            let x: Vec<_> = xattrs(flat.extra(), n[1].xattrs).collect();
            assert_eq!(x, [(&b"user.a"[..], &b"1"[..]), (&b"user.b"[..], &b""[..])]);
            assert_eq!(xattrs(flat.extra(), n[0].xattrs).count(), 0);
            assert_eq!(flat.total_bytes, 77);
        }
    }

    #[test]
    fn damaged_encodings_are_refused() {
        let good = sample();
        // Every single flipped bit, and every truncation, is caught.
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(Flat::from_bytes(&bad).is_none(), "byte {i}");
            let mut f = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut f, &bad).unwrap();
            assert!(Flat::open(&f).unwrap().is_none(), "byte {i}");
        }
        for len in 0..good.len() {
            assert!(Flat::from_bytes(&good[..len]).is_none(), "length {len}");
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&[0; 8]);
        assert!(Flat::from_bytes(&longer).is_none());
    }

    #[test]
    fn a_consistent_header_with_wrong_lengths_is_refused() {
        // Lengths that do not add up to the file's size fail even with a matching checksum.
        let mut b = sample();
        b.truncate(b.len() - TRAILER);
        b[16..24].copy_from_slice(&4u64.to_ne_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_ne_bytes());
        b.extend_from_slice(&[0; 4]);
        assert!(Flat::from_bytes(&b).is_none());
    }

    #[test]
    fn xattr_blocks_out_of_bounds_end_early() {
        let mut extra = Vec::new();
        put_xattrs(&mut extra, [(&b"user.k"[..], &b"value"[..])].into_iter());
        assert_eq!(xattrs(&extra, 0).count(), 1);
        assert_eq!(xattrs(&extra[..extra.len() - 1], 0).count(), 0);
        assert_eq!(xattrs(&extra, 1 << 30).count(), 0);
    }
}
