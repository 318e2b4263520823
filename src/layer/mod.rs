//! Layer indexes: one pass over a layer tar turns it into a list of entries that say where
//! each file's bytes are, so the layer is never extracted.
//!
//! Handles ustar, GNU (long names and links, base-256 numbers, negative mtimes) and PAX
//! (paths, sizes, ids, fractional and negative `mtime`, `SCHILY.xattr.*` including empty
//! values) headers, and names that are not UTF-8. Whiteouts are kept as ordinary entries here;
//! their meaning is applied by `tree`. Dependencies: error, tar, entry, whiteout.

pub mod codec;
pub mod data;
pub mod entry;
pub mod prepare;
pub mod store;
pub mod whiteout;

use std::io::Read;

use entry::{EntryKind, LayerEntry, Meta, Xattr, normalize_path};

/// Everything rimgfs knows about one layer's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerIndex {
    /// Entries in archive order.
    pub entries: Vec<LayerEntry>,
    /// Length of the uncompressed tar.
    pub tar_size: u64,
}

/// PAX key prefix for extended attributes (as written by GNU tar, Docker, podman).
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// PAX key for a modification time with optional sign and fraction.
const PAX_MTIME: &[u8] = b"mtime";

/// Reads a layer tar from `reader` and indexes it. The returned error is a reason phrase; the
/// caller names the layer and file.
pub fn build_index<R: Read>(reader: R) -> Result<LayerIndex, String> {
    let mut ar = tar::Archive::new(reader);
    let mut entries = Vec::new();
    for e in ar.entries().map_err(|e| e.to_string())? {
        let mut e = e.map_err(|e| format!("bad tar: {e}"))?;
        if let Some(entry) = index_entry(&mut e)? {
            entries.push(entry);
        }
    }
    Ok(LayerIndex {
        entries,
        tar_size: 0,
    })
}

fn index_entry<R: Read>(e: &mut tar::Entry<'_, R>) -> Result<Option<LayerEntry>, String> {
    let raw_path = e.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let path =
        normalize_path(&raw_path).map_err(|err| format!("unsafe path {shown:?}: {err:?}"))?;
    let header = e.header().clone();
    let et = header.entry_type();
    let num = |r: std::io::Result<u64>, what: &str| {
        r.map_err(|err| format!("{shown}: bad {what}: {err}"))
            .and_then(|v| u32::try_from(v).map_err(|_| format!("{shown}: {what} {v} out of range")))
    };
    let mut meta = Meta {
        mode: header
            .mode()
            .map_err(|err| format!("{shown}: bad mode: {err}"))?
            & 0o7777,
        uid: num(header.uid(), "uid")?,
        gid: num(header.gid(), "gid")?,
        mtime: raw_mtime(&header),
        mtime_nsec: 0,
    };
    let mut xattrs: Vec<Xattr> = Vec::new();
    if let Some(exts) = e
        .pax_extensions()
        .map_err(|err| format!("{shown}: bad pax header: {err}"))?
    {
        for ext in exts {
            let ext = ext.map_err(|err| format!("{shown}: bad pax header: {err}"))?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                xattrs.push((name.into(), ext.value_bytes().into()));
            } else if key == PAX_MTIME {
                if let Some((s, ns)) = parse_pax_time(ext.value_bytes()) {
                    meta.mtime = s;
                    meta.mtime_nsec = ns;
                }
            }
        }
    }
    let dev = |r: std::io::Result<Option<u32>>| r.ok().flatten().unwrap_or(0);
    let kind = match et {
        tar::EntryType::Directory => EntryKind::Dir,
        // Pre-POSIX tars mark directories with a trailing slash on a regular entry.
        tar::EntryType::Regular if raw_path.ends_with(b"/") => EntryKind::Dir,
        tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File {
            offset: e.raw_file_position(),
            size: e.size(),
        },
        tar::EntryType::Symlink => EntryKind::Symlink(
            e.link_name_bytes()
                .ok_or_else(|| format!("{shown}: symlink without target"))?
                .into(),
        ),
        tar::EntryType::Link => {
            let target = e
                .link_name_bytes()
                .ok_or_else(|| format!("{shown}: hard link without target"))?;
            let t = normalize_path(&target).map_err(|err| {
                format!(
                    "{shown}: unsafe hard link target {:?}: {err:?}",
                    String::from_utf8_lossy(&target)
                )
            })?;
            if t.is_empty() {
                return Err(format!("{shown}: hard link to the root directory"));
            }
            EntryKind::HardLink(t.into())
        }
        tar::EntryType::Char => EntryKind::CharDev {
            major: dev(header.device_major()),
            minor: dev(header.device_minor()),
        },
        tar::EntryType::Block => EntryKind::BlockDev {
            major: dev(header.device_major()),
            minor: dev(header.device_minor()),
        },
        tar::EntryType::Fifo => EntryKind::Fifo,
        tar::EntryType::GNUSparse => {
            return Err(format!("{shown}: GNU sparse files are not supported"));
        }
        tar::EntryType::XGlobalHeader => return Ok(None),
        other => {
            log::warn!(
                "skipping tar entry {shown:?} of unknown type {:?}",
                other.as_byte() as char
            );
            return Ok(None);
        }
    };
    Ok(Some(LayerEntry {
        path: path.into(),
        meta,
        kind,
        xattrs,
    }))
}

/// The header's mtime field, honouring GNU base-256 (two's complement for negative times),
/// which `tar::Header::mtime` reads as unsigned.
fn raw_mtime(h: &tar::Header) -> i64 {
    let field = &h.as_old().mtime;
    if field[0] & 0x80 != 0 {
        // Base-256: the first byte's top bit is the marker; 0xff means negative.
        let negative = field[0] == 0xff;
        let mut v: i64 = if negative { -1 } else { 0 };
        for (i, &b) in field.iter().enumerate() {
            let b = if i == 0 && !negative { b & 0x7f } else { b };
            v = (v << 8) | i64::from(b);
        }
        return v;
    }
    h.mtime()
        .map_or(0, |v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// Parses a PAX time: `[-]seconds[.fraction]`. Returns seconds and nanoseconds with the
/// POSIX convention that the nanoseconds are added (so -1.5 is (-2, 500000000)).
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = int.parse().ok()?;
    let mut ns: u32 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        if !c.is_ascii_digit() {
            return None;
        }
        ns += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, ns));
    }
    if ns == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_time_table() {
        let cases: &[(&str, Option<(i64, u32)>)] = &[
            ("1700000000", Some((1_700_000_000, 0))),
            ("1700000000.25", Some((1_700_000_000, 250_000_000))),
            ("-1", Some((-1, 0))),
            ("-1.5", Some((-2, 500_000_000))),
            ("12.x", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_pax_time(s.as_bytes()), *want, "{s}");
        }
    }

    #[test]
    fn base256_negative_mtime() {
        let mut h = tar::Header::new_gnu();
        let field = &mut h.as_old_mut().mtime;
        field.fill(0xff);
        field[11] = 0xfe; // -2 in 96-bit two's complement
        assert_eq!(raw_mtime(&h), -2);
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1234);
        assert_eq!(raw_mtime(&h), 1234);
    }
}
