//! From an image argument to a merged tree: open the source, prepare (index, verify, cache)
//! each layer, apply them. Used by `mount`, `ls`, `cat` and `inspect`.
//! Dependencies: image, layer::prepare, tree, cache, error.

use crate::cache::Cache;
use crate::error::{Context, Error, Result};
use crate::image::digest::{Algorithm, Digest};
use crate::image::{self, Image, ImageSpec, OpenOptions};
use crate::layer::prepare::{PreparedLayer, prepare};
use crate::tree::LowerTree;
use crate::tree::flat::Flat;

/// An opened image with its prepared layers.
#[derive(Debug)]
pub struct Stack {
    /// The image.
    pub image: Image,
    /// Its layers, bottom first (only up to `--layer N` when given).
    pub layers: Vec<PreparedLayer>,
    /// Where the merged tree is cached.
    cache: Cache,
}

impl Stack {
    /// Opens the image and prepares layers `0..=upto` (all when `None`).
    pub fn open(
        spec: &ImageSpec,
        opts: &OpenOptions,
        cache: &Cache,
        upto: Option<usize>,
    ) -> Result<Stack> {
        Stack::prepare(image::open(spec, opts, cache)?, cache, upto)
    }

    /// Prepares layers `0..=upto` (all when `None`) of an image opened from any source; the
    /// layers' blobs may be host files or in a repository ([`crate::image::Blob`]).
    pub fn prepare(image: Image, cache: &Cache, upto: Option<usize>) -> Result<Stack> {
        let count = match upto {
            Some(n) if n >= image.layers.len() => {
                return Err(Error::Usage(format!(
                    "--layer {n}: the image has {} layers (0 to {})",
                    image.layers.len(),
                    image.layers.len().saturating_sub(1)
                )));
            }
            Some(n) => n + 1,
            None => image.layers.len(),
        };
        let layers = prepare_all(&image, count, cache)?;
        keep_in_bounds(cache, &layers);
        Ok(Stack {
            image,
            layers,
            cache: cache.clone(),
        })
    }

    /// The merged tree of the prepared layers: the cached encoding, mapped, when the cache
    /// holds one for exactly these layer indexes; else built from the indexes and cached.
    pub fn tree(&self) -> Result<LowerTree> {
        let data = || self.layers.iter().map(|l| l.data.clone()).collect();
        let path = self.tree_path();
        if let Some(p) = &path {
            if let Some(flat) = open_cached(p) {
                return Ok(LowerTree::from_flat(flat, data()));
            }
        }
        let mut reloaded = Vec::new();
        let mut indexes = Vec::with_capacity(self.layers.len());
        for (i, l) in self.layers.iter().enumerate() {
            match l.index() {
                Ok(index) => indexes.push(Some(index)),
                Err(reason) => {
                    // A damaged index file was removed: preparing the layer again rebuilds it.
                    log::warn!("layer {i}: {reason}; indexing it again");
                    let again = prepare(&self.image.layers[i], &self.image.origin, &self.cache)?;
                    reloaded.push((i, again));
                    indexes.push(None);
                }
            }
        }
        let mut refs = Vec::with_capacity(indexes.len());
        for (i, index) in indexes.iter().enumerate() {
            let index = match index {
                Some(x) => *x,
                None => match reloaded.iter().find(|(j, _)| *j == i) {
                    Some((_, l)) => l.index().map_err(|r| self.layer_error(i, r))?,
                    None => return Err(self.layer_error(i, "no index".into())),
                },
            };
            refs.push(index);
        }
        let bytes = LowerTree::encode(&refs).map_err(|e| match e.layer {
            Some(i) => self.layer_error(i, e.reason),
            None => Error::bad_image(&self.image.origin, e.reason),
        })?;
        // Layers prepared again have data of their own; the tree's file data must match them.
        let mut data: Vec<_> = data();
        for (i, l) in &reloaded {
            data[*i] = l.data.clone();
        }
        if let Some(p) = path.filter(|_| reloaded.is_empty()) {
            let written = self.cache.write_checked(&p, |w| {
                std::io::Write::write_all(w, &bytes).ctx("write", &p)
            });
            // Served from the file, so the built tree's memory is given back.
            let mapped = written.and_then(|()| {
                let f = std::fs::File::open(&p).ctx("open", &p)?;
                Flat::map_written(&f, &bytes).ctx("map", &p)
            });
            match mapped {
                Ok(Some(flat)) => return Ok(LowerTree::from_flat(flat, data)),
                Ok(None) => log::warn!("{}: changed while being written", p.display()),
                Err(e) => log::warn!("cannot cache the merged tree: {e}"),
            }
        }
        let flat = Flat::from_bytes(&bytes).ok_or_else(|| {
            Error::bad_image(&self.image.origin, "the merged tree does not decode")
        })?;
        Ok(LowerTree::from_flat(flat, data))
    }

    /// The cache file of the merged tree of these layers: keyed by the tree format and each
    /// layer index's cache file and identity, so a rebuilt index gives a new key. `None` when
    /// a layer's index is in no cache file.
    fn tree_path(&self) -> Option<std::path::PathBuf> {
        let mut key = String::from_utf8_lossy(crate::tree::flat::MAGIC).into_owned();
        for l in &self.layers {
            key.push('\n');
            key.push_str(l.identity()?);
        }
        let hex = Digest::of_bytes(Algorithm::Sha256, key.as_bytes());
        Some(
            self.cache
                .root()
                .join("trees")
                .join(format!("{}.tree", hex.hex())),
        )
    }

    fn layer_error(&self, i: usize, reason: String) -> Error {
        Error::BadLayer {
            path: self.image.origin.clone(),
            layer: self
                .image
                .layers
                .get(i)
                .map_or_else(|| i.to_string(), |l| l.describe()),
            reason,
        }
    }

    /// Builds the merged tree of the prepared layers in memory, without the cache.
    pub fn build_tree(&self) -> Result<LowerTree> {
        LowerTree::build(&self.layers).map_err(|e| match e.layer {
            Some(i) => self.layer_error(i, e.reason),
            None => Error::bad_image(&self.image.origin, e.reason),
        })
    }

    /// `"<index> <digest>"` for each layer, the answer of the provenance xattr.
    pub fn layer_labels(&self) -> Vec<String> {
        self.image
            .layers
            .iter()
            .map(|l| format!("{} {}", l.index, l.digest()))
            .collect()
    }
}

/// The cached tree at `p`, mapped, if it is whole; a damaged one is removed (and rebuilt by
/// the caller). Its mtime is set to now, for the cache's least-recently-used eviction.
fn open_cached(p: &std::path::Path) -> Option<Flat> {
    let f = std::fs::File::open(p).ok()?;
    match Flat::open(&f) {
        Ok(Some(flat)) => {
            use nix::sys::time::TimeSpec;
            let _ = nix::sys::stat::futimens(&f, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_OMIT);
            Some(flat)
        }
        Ok(None) => {
            log::info!("{}: damaged merged tree; rebuilding it", p.display());
            let _ = std::fs::remove_file(p);
            None
        }
        Err(e) => {
            log::warn!("{}: {e}", p.display());
            None
        }
    }
}

/// Marks the cache files the layers read as used now and in use by this process (so eviction
/// leaves them), then trims the cache to `--cache-max`.
fn keep_in_bounds(cache: &Cache, layers: &[PreparedLayer]) {
    let root = cache.root();
    let files: Vec<_> = layers
        .iter()
        .filter_map(|l| l.data.host_range())
        .map(|h| h.file.clone())
        .filter(|f| f.starts_with(root))
        .collect();
    for f in &files {
        if let Ok(f) = std::fs::File::open(f) {
            use nix::sys::time::TimeSpec;
            let _ = nix::sys::stat::futimens(&f, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_OMIT);
        }
    }
    match crate::layer::store::live::register(root, &files) {
        // Host files are read until the process ends.
        Ok(held) => std::mem::forget(held),
        Err(e) => log::warn!("{}: cannot record files in use: {e}", root.display()),
    }
    if let Some(max) = cache.policy().max_bytes {
        let freed = crate::layer::store::gc::trim(root, max);
        if freed.entries > 0 {
            log::info!(
                "--cache-max: evicted {} entries, {} bytes",
                freed.entries,
                freed.bytes
            );
        }
    }
}

/// Layers fetched from a repository at once: their passes wait on the network as much as on
/// the CPU.
const REMOTE_WORKERS: usize = 4;

/// Prepares the first `count` layers, several at a time: indexing is CPU-bound (hashing,
/// decompressing) and layers are independent.
fn prepare_all(image: &Image, count: usize, cache: &Cache) -> Result<Vec<PreparedLayer>> {
    let path = &image.origin;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let remote = image.layers[..count]
        .iter()
        .any(|l| matches!(l.blob, crate::image::Blob::Remote(_)));
    let workers = if remote {
        cpus.max(REMOTE_WORKERS)
    } else {
        cpus
    }
    .min(count.max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut slots: Vec<Option<Result<PreparedLayer>>> = (0..count).map(|_| None).collect();
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    let r = prepare(&image.layers[i], path, cache);
                    if let Ok(mut slots) = results.lock() {
                        slots[i] = Some(r);
                    }
                }
            });
        }
    });
    slots
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.unwrap_or_else(|| {
                Err(Error::BadLayer {
                    path: path.clone(),
                    layer: i.to_string(),
                    reason: "indexing did not finish".into(),
                })
            })
        })
        .collect()
}
