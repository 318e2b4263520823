//! Background fill: once a mount is ready, fetch what its lazily read layers still lack, one
//! piece at a time, each fetch waiting while reads are fetching (so a read never queues
//! behind the fill). Layers register here when they are prepared; the mount's daemon starts
//! the fill after the kernel handshake (threads must not exist before the daemon forks).
//! Dependencies: store (priorities).

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

/// A layer that can fetch the rest of its blob.
pub trait Fill: Send + Sync + std::fmt::Debug {
    /// Bytes of the blob not yet in the cache (as this process knows).
    fn missing(&self) -> u64;
    /// Fetches every missing piece at background priority.
    fn fill(&self) -> io::Result<()>;
    /// Names the blob in messages.
    fn describe(&self) -> String;
}

/// A cache size the fill must stay under: the cache root and `--cache-max`.
pub type Budget = Option<(PathBuf, u64)>;

type Queue = Mutex<Vec<(Arc<dyn Fill>, Budget)>>;

fn pending() -> &'static Queue {
    static PENDING: OnceLock<Queue> = OnceLock::new();
    PENDING.get_or_init(|| Mutex::new(Vec::new()))
}

/// Queues a layer for the background fill; with a budget, it is filled only if all of it
/// fits.
pub fn register(layer: Arc<dyn Fill>, budget: Budget) {
    if let Ok(mut p) = pending().lock() {
        p.push((layer, budget));
    }
}

/// Starts filling the queued layers in one background thread; returns it, if there was
/// anything to fill.
pub fn start() -> Option<std::thread::JoinHandle<()>> {
    let layers: Vec<_> = pending().lock().map(|mut p| std::mem::take(&mut *p)).ok()?;
    let layers: Vec<_> = layers.into_iter().filter(|l| l.0.missing() > 0).collect();
    if layers.is_empty() {
        return None;
    }
    std::thread::Builder::new()
        .name("rimgfs-fill".into())
        .spawn(move || {
            for (l, budget) in layers {
                if let Some((root, max)) = budget {
                    if crate::layer::store::gc::usage(&root) + l.missing() > max {
                        log::info!(
                            "blob {}: not filled: the cache would exceed --cache-max",
                            l.describe()
                        );
                        continue;
                    }
                }
                match l.fill() {
                    Ok(()) => log::info!("blob {}: all in the cache", l.describe()),
                    // The failure was logged where it happened; reads still fetch on demand.
                    Err(e) => log::info!("blob {}: background fill stopped: {e}", l.describe()),
                }
            }
        })
        .ok()
}
