//! Layer indexes: one pass over a layer tar turns it into a list of entries that say where
//! each file's bytes are, so the layer is never extracted.
//!
//! The tar is read by [`TarWalker`] (ustar, GNU, PAX records framed by their lengths;
//! see there), here turned into [`LayerEntry`]s with normalised paths. Whiteouts are kept as
//! ordinary entries here; their meaning is applied by `tree`.
//! Dependencies: error, image::tar (the walker), entry.

pub mod codec;
pub mod data;
pub mod entry;
pub mod prepare;
pub mod whiteout;

use std::io::Read;

use crate::error::show;
use crate::image::tar::{TarEntry, TarInput, TarKind, TarWalker};
use entry::{EntryKind, LayerEntry, Meta, Xattr, normalize_path};

/// Everything rimgfs knows about one layer's contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayerIndex {
    /// Entries in archive order.
    pub entries: Vec<LayerEntry>,
    /// Length of the uncompressed tar.
    pub tar_size: u64,
}

/// Reads a layer tar from `reader` and indexes it. The returned error is a reason phrase
/// naming the entry; the caller names the layer.
pub fn build_index<R: Read>(reader: R) -> Result<LayerIndex, String> {
    index_input(reader)
}

/// Indexes a layer tar from any [`TarInput`], e.g. one that holds only headers and skips
/// over payloads (see [`crate::image::tar`]). Offsets in the index are those of the layer tar.
pub fn index_input<I: TarInput>(input: I) -> Result<LayerIndex, String> {
    let mut walker = TarWalker::new(input);
    let mut entries = Vec::new();
    while let Some(e) = walker.next_entry().map_err(|e| e.to_string())? {
        if let Some(entry) = index_entry(e)? {
            entries.push(entry);
        }
    }
    Ok(LayerIndex {
        entries,
        tar_size: 0,
    })
}

fn index_entry(e: TarEntry) -> Result<Option<LayerEntry>, String> {
    let shown = show(&e.path);
    let path =
        normalize_path(&e.path).map_err(|err| format!("unsafe path \"{shown}\": {err:?}"))?;
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
