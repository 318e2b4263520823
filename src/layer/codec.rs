//! The on-disk form of a layer index in the cache.
//!
//! `MAGIC`, then the body, then the SHA-256 of the body. A file that is short, has another
//! magic (an older format) or fails the checksum decodes to `None` and is rebuilt; it is never
//! served. The body also records the identity of the cached content file the offsets point
//! into, so an index is never used with a content file that was replaced.
//! Dependencies: entry, digest.

use super::LayerIndex;
use super::entry::{EntryKind, LayerEntry, Meta};
use crate::image::digest::{Algorithm, Digest};

/// Format tag; bump the digit when the body layout changes, or when the indexer reads the
/// same tar differently (02: PAX records framed by their lengths), so no index an older
/// reader got wrong is served.
const MAGIC: &[u8; 8] = b"RIMGIX02";
const SHA256_LEN: usize = 32;

/// Identity of the content file an index belongs to (size, inode, mtime).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStamp {
    /// Length in bytes.
    pub size: u64,
    /// Inode number.
    pub ino: u64,
    /// mtime, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

impl FileStamp {
    /// The stamp of a file's metadata.
    pub fn of(m: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            size: m.len(),
            ino: m.ino(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        }
    }
}

/// Serialises an index with the stamp of its content file.
pub fn encode(index: &LayerIndex, stamp: FileStamp) -> Vec<u8> {
    let mut b = Vec::with_capacity(64 + index.entries.len() * 64);
    b.extend_from_slice(MAGIC);
    put_u64(&mut b, index.tar_size);
    put_u64(&mut b, stamp.size);
    put_u64(&mut b, stamp.ino);
    put_u64(&mut b, stamp.mtime_ns as u64);
    put_entries(&mut b, &index.entries);
    seal(b)
}

/// Appends a list of entries (count, then each entry).
pub(crate) fn put_entries(b: &mut Vec<u8>, entries: &[LayerEntry]) {
    put_u64(b, entries.len() as u64);
    for e in entries {
        put_bytes(b, &e.path);
        put_u32(b, e.meta.mode);
        put_u32(b, e.meta.uid);
        put_u32(b, e.meta.gid);
        put_u64(b, e.meta.mtime as u64);
        put_u32(b, e.meta.mtime_nsec);
        match &e.kind {
            EntryKind::Dir => b.push(0),
            EntryKind::File { offset, size } => {
                b.push(1);
                put_u64(b, *offset);
                put_u64(b, *size);
            }
            EntryKind::Symlink(t) => {
                b.push(2);
                put_bytes(b, t);
            }
            EntryKind::HardLink(t) => {
                b.push(3);
                put_bytes(b, t);
            }
            EntryKind::CharDev { major, minor } => {
                b.push(4);
                put_u32(b, *major);
                put_u32(b, *minor);
            }
            EntryKind::BlockDev { major, minor } => {
                b.push(5);
                put_u32(b, *major);
                put_u32(b, *minor);
            }
            EntryKind::Fifo => b.push(6),
        }
        put_u32(b, e.xattrs.len() as u32);
        for (k, v) in &e.xattrs {
            put_bytes(b, k);
            put_bytes(b, v);
        }
    }
}

/// Appends the checksum of everything after the 8-byte magic (see the module header).
pub(crate) fn seal(mut b: Vec<u8>) -> Vec<u8> {
    let sum = Digest::of_bytes(Algorithm::Sha256, &b[MAGIC.len()..]);
    b.extend_from_slice(&hex_to_bytes(sum.hex()));
    b
}

/// The body of a file that [`seal`] wrote with `magic`; `None` if short, of another format,
/// or damaged.
pub(crate) fn unseal<'a>(magic: &[u8; 8], data: &'a [u8]) -> Option<&'a [u8]> {
    let body_end = data.len().checked_sub(SHA256_LEN)?;
    if body_end < magic.len() || &data[..magic.len()] != magic {
        return None;
    }
    let body = &data[magic.len()..body_end];
    let sum = Digest::of_bytes(Algorithm::Sha256, body);
    (hex_to_bytes(sum.hex()) == data[body_end..]).then_some(body)
}

/// Parses what [`encode`] wrote; `None` if anything is off.
pub fn decode(data: &[u8]) -> Option<(LayerIndex, FileStamp)> {
    let mut r = Cursor {
        data: unseal(MAGIC, data)?,
    };
    let tar_size = r.u64()?;
    let stamp = FileStamp {
        size: r.u64()?,
        ino: r.u64()?,
        mtime_ns: r.u64()? as i64,
    };
    let entries = get_entries(&mut r)?;
    if !r.data.is_empty() {
        return None;
    }
    Some((LayerIndex { entries, tar_size }, stamp))
}

/// The tar size and content stamp an index file records, read from its first bytes without
/// checking its checksum: enough to tell whether the index belongs to a layer's bytes when
/// the index itself is not needed (its merged tree is cached); it is checked in full when
/// decoded. `None` for a file too short or of another format.
pub fn peek(file: &std::path::Path) -> Option<(u64, FileStamp)> {
    use std::io::Read;
    let mut head = [0u8; 40];
    std::fs::File::open(file).ok()?.read_exact(&mut head).ok()?;
    if &head[..8] != MAGIC {
        return None;
    }
    let word = |i: usize| head[i..i + 8].try_into().ok().map(u64::from_le_bytes);
    Some((
        word(8)?,
        FileStamp {
            size: word(16)?,
            ino: word(24)?,
            mtime_ns: word(32)? as i64,
        },
    ))
}

/// Reads what [`put_entries`] wrote.
pub(crate) fn get_entries(r: &mut Cursor<'_>) -> Option<Vec<LayerEntry>> {
    let n = r.u64()?;
    // Each entry takes at least 30 bytes; a count beyond that is corruption, not a reason to
    // reserve gigabytes.
    let mut entries = Vec::with_capacity((n as usize).min(r.data.len() / 30));
    for _ in 0..n {
        let path = r.bytes()?.into();
        let meta = Meta {
            mode: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
            mtime: r.u64()? as i64,
            mtime_nsec: r.u32()?,
        };
        let kind = match r.u8()? {
            0 => EntryKind::Dir,
            1 => EntryKind::File {
                offset: r.u64()?,
                size: r.u64()?,
            },
            2 => EntryKind::Symlink(r.bytes()?.into()),
            3 => EntryKind::HardLink(r.bytes()?.into()),
            4 => EntryKind::CharDev {
                major: r.u32()?,
                minor: r.u32()?,
            },
            5 => EntryKind::BlockDev {
                major: r.u32()?,
                minor: r.u32()?,
            },
            6 => EntryKind::Fifo,
            _ => return None,
        };
        let nx = r.u32()?;
        let mut xattrs = Vec::with_capacity((nx as usize).min(64));
        for _ in 0..nx {
            xattrs.push((r.bytes()?.into(), r.bytes()?.into()));
        }
        entries.push(LayerEntry {
            path,
            meta,
            kind,
            xattrs,
        });
    }
    Some(entries)
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .filter_map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
        .collect()
}

pub(crate) fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
}

/// Reads what the `put_*` functions wrote; every read is `None` past the end.
pub(crate) struct Cursor<'a> {
    /// What is left to read.
    pub data: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.data.len() < n {
            return None;
        }
        let (h, t) = self.data.split_at(n);
        self.data = t;
        Some(h)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> LayerIndex {
        let m = Meta {
            mode: 0o4755,
            uid: 1,
            gid: 2,
            mtime: -5,
            mtime_nsec: 7,
        };
        let e = |path: &[u8], kind| LayerEntry {
            path: path.into(),
            meta: m,
            kind,
            xattrs: vec![],
        };
        let mut entries = vec![
            e(b"", EntryKind::Dir),
            e(
                b"a",
                EntryKind::File {
                    offset: 512,
                    size: 3,
                },
            ),
            e(b"l", EntryKind::Symlink(b"../x"[..].into())),
            e(b"h", EntryKind::HardLink(b"a"[..].into())),
            e(b"c", EntryKind::CharDev { major: 1, minor: 3 }),
            e(b"b", EntryKind::BlockDev { major: 8, minor: 0 }),
            e(b"p", EntryKind::Fifo),
        ];
        entries[1]
            .xattrs
            .push((b"user.k"[..].into(), b""[..].into()));
        LayerIndex {
            entries,
            tar_size: 4096,
        }
    }

    #[test]
    fn codec_round_trip() {
        let stamp = FileStamp {
            size: 4096,
            ino: 9,
            mtime_ns: -1,
        };
        let enc = encode(&sample(), stamp);
        assert_eq!(decode(&enc), Some((sample(), stamp)));
    }

    #[test]
    fn codec_rejects_damage() {
        let enc = encode(&sample(), FileStamp::default());
        for cut in [0, 7, 8, enc.len() / 2, enc.len() - 1] {
            assert!(decode(&enc[..cut]).is_none(), "truncated at {cut}");
        }
        let mut flipped = enc.clone();
        flipped[20] ^= 1;
        assert!(decode(&flipped).is_none());
        let mut magic = enc;
        magic[7] = b'0';
        assert!(decode(&magic).is_none());
    }
}
