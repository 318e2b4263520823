//! Layer indexes: one pass over a layer tar turns it into a list of entries that say where
//! each file's bytes are, so the layer is never extracted.
//!
//! The tar is read by [`TarWalker`] (ustar, GNU, PAX records framed by their lengths;
//! see there), here turned into [`LayerEntry`]s: paths normalised, names that no Linux
//! filesystem can hold refused (a component over 255 bytes, a symlink target over 4095, an
//! xattr Linux cannot set), since such an entry cannot be part of the root filesystem an
//! engine extracts (Docker's extraction fails on it too). Whiteouts are kept as ordinary
//! entries here; their meaning is applied by `tree`.
//! Dependencies: error, image::tar (the walker), entry, whiteout.

pub mod codec;
pub mod data;
pub mod entry;
pub mod lazy;
pub mod prepare;
pub mod storage;
pub mod store;
pub mod whiteout;

use std::io::Read;

use crate::error::show;
use crate::image::tar::{TarEntry, TarInput, TarKind, TarWalker};
use entry::{EntryKind, LayerEntry, Meta, Xattr, normalize_path};
use whiteout::Class;

/// Everything rimgfs knows about one layer's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerIndex {
    /// Entries in archive order.
    pub entries: Vec<LayerEntry>,
    /// Length of the uncompressed tar.
    pub tar_size: u64,
}

/// Longest name component Linux filesystems hold (`NAME_MAX`).
pub const NAME_MAX: usize = 255;
/// Longest symlink target Linux stores: `PATH_MAX` (4096) less the terminating NUL.
pub const SYMLINK_MAX: usize = 4095;
/// Longest extended attribute name Linux accepts (`XATTR_NAME_MAX`).
const XATTR_NAME_MAX: usize = 255;
/// Largest extended attribute value Linux accepts (`XATTR_SIZE_MAX`).
const XATTR_SIZE_MAX: usize = 65536;

/// Reads a layer tar from `reader` and indexes it. The returned error is a reason phrase
/// naming the entry; the caller names the layer.
pub fn build_index<R: Read>(reader: R) -> Result<LayerIndex, String> {
    index_input(reader).map(|(index, _)| index)
}

/// Indexes a layer tar from any [`TarInput`], e.g. one that holds only headers and skips
/// over payloads (see [`crate::image::tar`]). Offsets in the index are those of the layer tar.
/// The input is handed back, positioned after the end-of-archive marker.
pub fn index_input<I: TarInput>(input: I) -> Result<(LayerIndex, I), String> {
    let mut walker = TarWalker::new(input);
    let mut entries = Vec::new();
    while let Some(e) = walker.next_entry().map_err(|e| e.to_string())? {
        if let Some(entry) = index_entry(e)? {
            entries.push(entry);
        }
    }
    Ok((
        LayerIndex {
            entries,
            tar_size: 0,
        },
        walker.into_inner(),
    ))
}

fn index_entry(e: TarEntry) -> Result<Option<LayerEntry>, String> {
    let shown = show(&e.path);
    let path =
        normalize_path(&e.path).map_err(|err| format!("unsafe path \"{shown}\": {err:?}"))?;
    if let Some(n) = longest_name(&path).filter(|&n| n > NAME_MAX) {
        return Err(format!(
            "{shown}: a name of {n} bytes (Linux file names have at most {NAME_MAX})"
        ));
    }
    let id = |v: u64, what: &str| {
        u32::try_from(v).map_err(|_| format!("{shown}: {what} {v} out of range"))
    };
    let meta = Meta {
        mode: e.mode & 0o7777,
        uid: id(e.uid, "uid")?,
        gid: id(e.gid, "gid")?,
        mtime: e.mtime,
        mtime_nsec: e.mtime_nsec,
    };
    for (name, value) in &e.xattrs {
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return Err(format!(
                "{shown}: an xattr name of {} bytes (Linux takes 1 to {XATTR_NAME_MAX})",
                name.len()
            ));
        }
        if value.len() > XATTR_SIZE_MAX {
            return Err(format!(
                "{shown}: xattr {}: a value of {} bytes (Linux takes at most {XATTR_SIZE_MAX})",
                show(name),
                value.len()
            ));
        }
    }
    let kind = match e.kind {
        TarKind::Dir => EntryKind::Dir,
        TarKind::Regular => EntryKind::File {
            offset: e.data_offset,
            size: e.size,
        },
        TarKind::Symlink => {
            if e.link.is_empty() {
                return Err(format!("{shown}: symlink without target"));
            }
            if e.link.len() > SYMLINK_MAX {
                return Err(format!(
                    "{shown}: a symlink target of {} bytes (Linux stores at most {SYMLINK_MAX})",
                    e.link.len()
                ));
            }
            EntryKind::Symlink(e.link.into())
        }
        TarKind::HardLink => {
            if e.link.is_empty() {
                return Err(format!("{shown}: hard link without target"));
            }
            let t = normalize_path(&e.link).map_err(|err| {
                format!(
                    "{shown}: unsafe hard link target \"{}\": {err:?}",
                    show(&e.link)
                )
            })?;
            if t.is_empty() {
                return Err(format!("{shown}: hard link to the root directory"));
            }
            EntryKind::HardLink(t.into())
        }
        TarKind::Char => EntryKind::CharDev {
            major: e.dev_major,
            minor: e.dev_minor,
        },
        TarKind::Block => EntryKind::BlockDev {
            major: e.dev_major,
            minor: e.dev_minor,
        },
        TarKind::Fifo => EntryKind::Fifo,
        TarKind::Other(t) => {
            log::warn!(
                "skipping tar entry \"{shown}\" of unknown type {:?}",
                t as char
            );
            return Ok(None);
        }
    };
    let xattrs: Vec<Xattr> = e
        .xattrs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    Ok(Some(LayerEntry {
        path: path.into(),
        meta,
        kind,
        xattrs,
    }))
}

/// The length of a normalised path's longest name as it would be on disk: a whiteout
/// `.wh.NAME` stands for `NAME` and is never created itself, and the opaque marker and
/// AUFS meta files are not part of the tree.
fn longest_name(path: &[u8]) -> Option<usize> {
    let mut comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
    let last = comps.pop()?;
    let last_len = match whiteout::classify(last) {
        Class::Normal => last.len(),
        Class::Whiteout(target) => target.len(),
        Class::Opaque | Class::Ignored => 0,
    };
    comps.iter().map(|c| c.len()).chain([last_len]).max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_name_table() {
        let long = "n".repeat(256);
        let cases: Vec<(String, usize)> = vec![
            ("".into(), 0),
            ("a/bb/c".into(), 2),
            (format!("d/{long}"), 256),
            (format!("{long}/x"), 256),
            (format!("d/.wh.{}", "n".repeat(255)), 255),
            (format!("d/.wh.{long}"), 256),
            (format!("d/.wh..wh.{long}"), 1),
        ];
        for (p, want) in cases {
            assert_eq!(longest_name(p.as_bytes()), Some(want), "{p}");
        }
    }
}
