//! Layers kept in a containers-storage store: indexed from their tar-split records, served
//! from the files of their directory.
//!
//! - Indexing replays the tar-split records with every payload given as zeros: the index only
//!   records where each payload starts, so no file of the layer is read. The index is cached;
//!   a warm mount reads neither tar-split data nor layer files.
//! - An index cached from a source whose bytes were hashed (`index/<alg>/<hex>.idx`, written
//!   for the same diff_id) describes the same tar and is used as it is. An index built here
//!   was not hashed (the store's records are trusted as containers/storage trusts them), so it
//!   is kept apart, under `index/store/`, keyed by diff_id and tar-split path, and stamped
//!   with the tar-split file's identity: it never serves another source, and a layer that was
//!   replaced is indexed again.
//! - Reads map an offset in the tar to the file whose payload holds it, by the index's own
//!   entries, and read that file of the layer's directory, opened beneath it without
//!   following symlinks. Each such file holds exactly one entry's bytes, so passthrough opens
//!   it directly ([`LayerBytes::own_file`]).
//!
//! Dependencies: error, cache, image (LayerRef, storage), layer (index, codec, data), sys.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::codec::{self, FileStamp};
use super::data::{LayerBytes, LayerData};
use super::entry::EntryKind;
use super::prepare::PreparedLayer;
use super::{LayerIndex, index_input};
use crate::cache::Cache;
use crate::error::{Context, Error, Result};
use crate::image::LayerRef;
use crate::image::digest::{Algorithm, Digest};
use crate::image::storage::{StoreLayer, open_layer_file, tarsplit};
use crate::sys::DirFd;

/// Open files kept per layer: enough for a reader working through many files at once.
const OPEN_FILES: usize = 64;

/// Indexes a store layer (or loads its index) and makes its files readable by tar offset.
pub fn prepare(
    layer: &LayerRef,
    sl: &StoreLayer,
    image_path: &Path,
    cache: &Cache,
) -> Result<PreparedLayer> {
    let stamp = FileStamp::of(&sl.tar_split_file.metadata().ctx("stat", &sl.tar_split)?);
    let load = |p: &Path| std::fs::read(p).ok().and_then(|d| codec::decode(&d));
    let verified_path = cache.index_path(&sl.diff_id);
    let verified = load(&verified_path).map(|(i, _)| (i, verified_path));
    let own_path = index_path(cache, sl);
    let own = || {
        load(&own_path)
            .and_then(|(i, s)| (s == stamp).then_some(i))
            .map(|i| (i, own_path.clone()))
    };
    let (index, path) = match verified.or_else(own).filter(|(i, _)| i.tar_size == sl.size) {
        Some(found) => found,
        None => {
            let index = index_records(sl.records(), sl.size).map_err(|reason| Error::BadLayer {
                path: image_path.to_path_buf(),
                layer: layer.describe(),
                reason,
            })?;
            cache.write_checked(&own_path, |w| {
                io::Write::write_all(w, &codec::encode(&index, stamp)).ctx("write", &own_path)
            })?;
            (index, own_path)
        }
    };
    let data = LayerData::new(StoreFiles::new(sl.dir_fd.clone(), sl.dir.clone(), &index));
    Ok(PreparedLayer::cached(index, data, &path))
}

/// Where the index of a store layer built from its tar-split records is cached.
fn index_path(cache: &Cache, sl: &StoreLayer) -> PathBuf {
    let key = Digest::of_bytes(
        Algorithm::Sha256,
        format!("{}\0{}", sl.diff_id, sl.tar_split.display()).as_bytes(),
    );
    cache
        .root()
        .join("index/store")
        .join(format!("{}.idx", key.hex()))
}

/// Builds the index from the tar-split records alone; the tar must be `size` bytes long.
fn index_records(
    records: tarsplit::Records<impl io::Read>,
    size: u64,
) -> std::result::Result<LayerIndex, String> {
    // Payloads are passed over, not replayed as zeros: the index needs only where they are.
    let (mut index, input) = index_input(tarsplit::Skipping::new(records))?;
    let len = input.finish().map_err(|e| e.to_string())?;
    if len != size {
        return Err(format!(
            "its tar-split data describes {len} bytes where the store records {size}"
        ));
    }
    index.tar_size = size;
    Ok(index)
}

/// One payload of the tar: where it starts, its length, and the file holding it.
#[derive(Debug)]
struct Payload {
    offset: u64,
    size: u64,
    name: std::ops::Range<usize>,
}

/// A store layer's bytes: the payloads of its tar, each read from its file.
#[derive(Debug)]
struct StoreFiles {
    dir: Arc<DirFd>,
    /// For messages.
    path: PathBuf,
    /// By offset.
    payloads: Vec<Payload>,
    /// The names, end to end.
    names: Vec<u8>,
    /// Recently read files, by payload number; locked only to look up or insert.
    open: Mutex<lru::LruCache<usize, Arc<File>>>,
}

impl StoreFiles {
    fn new(dir: Arc<DirFd>, path: PathBuf, index: &LayerIndex) -> StoreFiles {
        let mut names = Vec::new();
        let mut payloads = Vec::new();
        for e in &index.entries {
            if let EntryKind::File { offset, size } = e.kind {
                if size > 0 {
                    let start = names.len();
                    names.extend_from_slice(&e.path);
                    payloads.push(Payload {
                        offset,
                        size,
                        name: start..names.len(),
                    });
                }
            }
        }
        payloads.sort_by_key(|p| p.offset);
        let cap = NonZeroUsize::new(OPEN_FILES).unwrap_or(NonZeroUsize::MIN);
        StoreFiles {
            dir,
            path,
            payloads,
            names,
            open: Mutex::new(lru::LruCache::new(cap)),
        }
    }

    /// The payload that holds tar offset `offset`.
    fn find(&self, offset: u64) -> Option<(usize, &Payload)> {
        let i = self.payloads.partition_point(|p| p.offset <= offset);
        let i = i.checked_sub(1)?;
        let p = &self.payloads[i];
        (offset < p.offset + p.size).then_some((i, p))
    }

    fn open_payload(&self, p: &Payload) -> io::Result<File> {
        let name = &self.names[p.name.clone()];
        open_layer_file(&self.dir, name, p.size).inspect_err(|e| {
            log::warn!(
                "{}/{}: {e}",
                self.path.display(),
                String::from_utf8_lossy(name)
            );
        })
    }

    fn file(&self, i: usize, p: &Payload) -> io::Result<Arc<File>> {
        if let Some(f) = self.open.lock().ok().and_then(|mut c| c.get(&i).cloned()) {
            return Ok(f);
        }
        let f = Arc::new(self.open_payload(p)?);
        if let Ok(mut c) = self.open.lock() {
            c.put(i, f.clone());
        }
        Ok(f)
    }
}

impl LayerBytes for StoreFiles {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let Some((i, p)) = self.find(offset) else {
            // The views read only inside file payloads; anything else is a broken index.
            log::error!(
                "{}: read at tar offset {offset}, which is in no file",
                self.path.display()
            );
            return Err(io::Error::from_raw_os_error(libc::EIO));
        };
        let within = offset - p.offset;
        let n = (p.size - within).min(buf.len() as u64) as usize;
        self.file(i, p)?.read_at(&mut buf[..n], within)
    }

    fn own_file(&self, offset: u64, len: u64) -> Option<io::Result<File>> {
        let (_, p) = self.find(offset)?;
        (p.offset == offset && p.size == len).then(|| self.open_payload(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::entry::{LayerEntry, Meta};
    use std::io::Read;

    fn file(path: &str, offset: u64, size: u64) -> LayerEntry {
        LayerEntry {
            path: path.as_bytes().into(),
            meta: Meta::default(),
            kind: EntryKind::File { offset, size },
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn reads_map_tar_offsets_to_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/a"), b"hello").unwrap();
        std::fs::write(dir.path().join("b"), b"world!").unwrap();
        std::fs::write(dir.path().join("short"), b"x").unwrap();
        let index = LayerIndex {
            entries: vec![
                file("b", 2048, 6),
                file("d/a", 512, 5),
                file("empty", 4096, 0),
                file("short", 5120, 2),
            ],
            tar_size: 6144,
        };
        let d = Arc::new(DirFd::open_root(dir.path()).unwrap());
        let data = LayerData::new(StoreFiles::new(d, dir.path().into(), &index));
        let mut buf = [0u8; 3];
        data.read_exact_at(&mut buf, 514).unwrap();
        assert_eq!(&buf, b"llo");
        data.read_exact_at(&mut buf, 2048).unwrap();
        assert_eq!(&buf, b"wor");
        // Past a payload, in a header, or in a file whose size disagrees: errors.
        assert!(data.read_exact_at(&mut [0u8; 6], 512).is_err());
        assert!(data.read_exact_at(&mut buf, 100).is_err());
        assert!(data.read_exact_at(&mut [0u8; 1], 5120).is_err());
        let mut own = data.own_file(2048, 6).unwrap().unwrap();
        let mut s = String::new();
        own.read_to_string(&mut s).unwrap();
        assert_eq!(s, "world!");
        assert!(data.own_file(2049, 5).is_none());
        assert!(data.own_file(5120, 2).unwrap().is_err());
    }
}
