//! From an image argument to a merged tree: open the source, prepare (index, verify, cache)
//! each layer, apply them. Used by `mount`, `ls`, `cat` and `inspect`.
//! Dependencies: image, layer::prepare, tree, cache, error.

use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::image::{self, Image, ImageSpec, OpenOptions};
use crate::layer::prepare::{PreparedLayer, prepare};
use crate::tree::LowerTree;

/// An opened image with its prepared layers.
#[derive(Debug)]
pub struct Stack {
    /// The image.
    pub image: Image,
    /// Its layers, bottom first (only up to `--layer N` when given).
    pub layers: Vec<PreparedLayer>,
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
        Ok(Stack { image, layers })
    }

    /// Builds the merged tree of the prepared layers.
    pub fn tree(&self) -> Result<LowerTree> {
        LowerTree::build(&self.layers).map_err(|e| match e.layer {
            Some(i) => Error::BadLayer {
                path: self.image.origin.clone(),
                layer: self
                    .image
                    .layers
                    .get(i)
                    .map_or_else(|| i.to_string(), |l| l.describe()),
                reason: e.reason,
            },
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
