//! The blob store: compressed layer blobs as sparse files in the cache, shared by every
//! source, mount and process, with a record of which byte ranges they hold.
//!
//! ```text
//! blobs/<alg>/<hex>.data    the blob's bytes where present (a sparse file of its full length)
//! blobs/<alg>/<hex>.ranges  the present, verified ranges (ranges.rs), replaced atomically
//! blobs/<alg>/<hex>.lock    flock: taken around every update of .ranges and by eviction;
//!                           OFD byte-range locks: one per piece being fetched
//! ```
//! Invariants:
//! - `.ranges` only names bytes that were verified (against the blob digest in a streaming
//!   pass, or a span or chunk digest) and synced to `.data` before the record was written.
//! - A process keeps `.data` open; when eviction removes it, the process sees another inode
//!   under the name at its next update, stops recording ("detached") and keeps serving from
//!   the file it has, so it never names bytes of a file it did not write.
//! - One missing piece is fetched once however many readers want it: in one process through
//!   `inflight`, across processes through an OFD write lock on the piece's byte range of
//!   `.lock` (held from before the fetch until its range is recorded; a waiter then finds
//!   the piece recorded and reads it from `.data`).
//! - Fetches are retried a bounded number of times (not again when the fetcher says its own
//!   retries are spent: `Spent`); a piece that cannot be had is `EIO`,
//!   logged once per failed read, and never blocks other pieces.
//!
//! Dependencies: image (digest, remote), codec, error, nix (flock, fcntl OFD locks, futimens).

pub mod gc;
pub mod live;
pub mod ranges;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use crate::image::digest::Digest;
use crate::image::remote::{BlobFetch, Spent};
use ranges::RangeSet;

/// How often one piece is requested before a read fails.
pub const FETCH_ATTEMPTS: u32 = 3;
/// Pause before the second attempt; doubled before each further one.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Longest a reader waits for another thread's fetch of the same piece before trying
/// itself (the fetcher's own timeouts normally end a fetch long before).
const INFLIGHT_WAIT: Duration = Duration::from_secs(120);

/// The paths of one blob's files.
#[derive(Clone, Debug)]
pub struct BlobPaths {
    /// The sparse data file.
    pub data: PathBuf,
    /// The range record.
    pub ranges: PathBuf,
    /// The lock file.
    pub lock: PathBuf,
}

impl BlobPaths {
    /// The files of blob `digest` under the store root.
    pub fn of(root: &Path, digest: &Digest) -> BlobPaths {
        let dir = root.join(digest.algorithm_name());
        let hex = digest.hex();
        BlobPaths {
            data: dir.join(format!("{hex}.data")),
            ranges: dir.join(format!("{hex}.ranges")),
            lock: dir.join(format!("{hex}.lock")),
        }
    }
}

/// The pieces of a blob that are fetched and verified whole: spans between checkpoints, or
/// the compressed members holding a table of contents' chunks.
pub trait Units: Send + Sync {
    /// The pieces that together cover bytes `[a, b)`.
    fn covering(&self, a: u64, b: u64) -> Range<usize>;
    /// Bytes `[start, end)` of piece `i`.
    fn bounds(&self, i: usize) -> (u64, u64);
    /// Checks piece `i`'s bytes against what the layer knows of them; an error names why.
    fn verify(&self, i: usize, bytes: &[u8]) -> io::Result<()>;
}

/// Whether a fetch serves a waiting reader or fills the cache in the background.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A read is waiting.
    Foreground,
    /// Background fill: waits while foreground fetches run.
    Background,
}

/// Where missing bytes come from.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The repository (`None`: nothing can be fetched).
    pub fetch: Option<Arc<dyn BlobFetch>>,
    /// `--offline`: never fetch, even with a fetcher.
    pub offline: bool,
}

/// One blob in the store, open for reading and filling.
pub struct StoredBlob {
    /// The blob's digest.
    pub digest: Digest,
    /// Its length.
    pub len: u64,
    /// Its files.
    pub paths: BlobPaths,
    file: File,
    identity: (u64, u64),
    present: RwLock<RangeSet>,
    inflight: Mutex<HashSet<usize>>,
    landed: Condvar,
    detached: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for StoredBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredBlob")
            .field("digest", &self.digest)
            .field("len", &self.len)
            .finish()
    }
}

/// Blobs open in this process, so every reader of one blob shares its in-flight set.
fn open_blobs() -> &'static Mutex<HashMap<PathBuf, Weak<StoredBlob>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<StoredBlob>>>> = OnceLock::new();
    OPEN.get_or_init(|| Mutex::new(HashMap::new()))
}

fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

/// The store under a cache root.
#[derive(Clone, Debug)]
pub struct BlobStore {
    root: PathBuf,
}

impl BlobStore {
    /// The store of the cache rooted at `cache_root`.
    pub fn new(cache_root: &Path) -> BlobStore {
        BlobStore {
            root: cache_root.join("blobs"),
        }
    }

    /// The store's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens (creating if needed) the store entry of a blob of `len` bytes.
    pub fn open(&self, digest: &Digest, len: u64) -> io::Result<Arc<StoredBlob>> {
        let paths = BlobPaths::of(&self.root, digest);
        let mut open = open_blobs().lock().map_err(|_| poisoned())?;
        if let Some(b) = open.get(&paths.data).and_then(Weak::upgrade) {
            if b.len == len && !b.is_detached() {
                return Ok(b);
            }
        }
        let blob = Arc::new(StoredBlob::open(digest.clone(), len, paths)?);
        open.retain(|_, w| w.strong_count() > 0);
        open.insert(blob.paths.data.clone(), Arc::downgrade(&blob));
        Ok(blob)
    }
}

fn poisoned() -> io::Error {
    io::Error::other("blob store lock poisoned")
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

/// An exclusive flock on `path`, released when dropped.
pub(crate) fn lock_file(path: &Path, wait: bool) -> io::Result<Option<nix::fcntl::Flock<File>>> {
    use nix::fcntl::{Flock, FlockArg};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    match Flock::lock(f, arg) {
        Ok(l) => Ok(Some(l)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) if !wait => Ok(None),
        Err((_, e)) => Err(e.into()),
    }
}

/// An OFD write lock on bytes `[start, end)` of a lock file, released when dropped (the
/// file description is its own, so threads of one process exclude each other too).
struct RangeLock {
    _file: File,
}

impl RangeLock {
    /// Waits for the lock. `None` (after logging why) when it cannot be had: then the piece
    /// may be fetched twice, which wastes bytes but is safe.
    fn acquire(path: &Path, start: u64, end: u64) -> Option<RangeLock> {
        use nix::fcntl::{FcntlArg, fcntl};
        let r = (|| {
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path)?;
            let to_off =
                |v: u64| i64::try_from(v).map_err(|_| io::Error::other("offset too large"));
            let lock = libc::flock {
                l_type: libc::F_WRLCK as libc::c_short,
                l_whence: libc::SEEK_SET as libc::c_short,
                l_start: to_off(start)?,
                // A zero length would mean "to the end of the file".
                l_len: to_off(end.max(start + 1) - start)?,
                l_pid: 0,
            };
            loop {
                match fcntl(&file, FcntlArg::F_OFD_SETLKW(&lock)) {
                    Ok(_) => return Ok(RangeLock { _file: file }),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(io::Error::from(e)),
                }
            }
        })();
        r.map_err(|e| log::warn!("{}: range lock {start}-{end}: {e}", path.display()))
            .ok()
    }
}

/// Writes `bytes` to `dest` through a temporary file and a rename.
pub(crate) fn replace_file(dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp.{}.{:?}.{}",
        std::process::id(),
        std::thread::current().id(),
        dest.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let r = (|| {
        let f = File::create(&tmp)?;
        f.write_all_at(bytes, 0)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn read_record(path: &Path) -> RangeSet {
    std::fs::read(path)
        .ok()
        .and_then(|d| RangeSet::decode(&d))
        .unwrap_or_default()
}

/// Counts foreground fetches in progress, so background fill can wait for none.
struct Gate {
    active: Mutex<usize>,
    idle: Condvar,
}

fn gate() -> &'static Gate {
    static GATE: OnceLock<Gate> = OnceLock::new();
    GATE.get_or_init(|| Gate {
        active: Mutex::new(0),
        idle: Condvar::new(),
    })
}

/// Holds the gate open while a foreground fetch runs.
struct Foreground;

impl Foreground {
    fn enter() -> Foreground {
        if let Ok(mut n) = gate().active.lock() {
            *n += 1;
        }
        Foreground
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Ok(mut n) = gate().active.lock() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                gate().idle.notify_all();
            }
        }
    }
}

/// Waits (a bounded time) until no foreground fetch runs.
pub fn wait_for_foreground_idle(max: Duration) {
    let g = gate();
    if let Ok(n) = g.active.lock() {
        let _ = g.idle.wait_timeout_while(n, max, |n| *n > 0);
    }
}

impl StoredBlob {
    fn open(digest: Digest, len: u64, paths: BlobPaths) -> io::Result<StoredBlob> {
        let _l = lock_file(&paths.lock, true)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&paths.data)?;
        let meta = file.metadata()?;
        let mut present = read_record(&paths.ranges);
        if meta.len() != len {
            // A new file, or one the record cannot describe: start empty.
            file.set_len(len)?;
            present = RangeSet::new();
            if paths.ranges.exists() {
                std::fs::remove_file(&paths.ranges)?;
            }
        }
        // The last use, for least-recently-used eviction (mtime stays the file's own).
        use nix::sys::time::TimeSpec;
        let _ = nix::sys::stat::futimens(&file, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_OMIT);
        Ok(StoredBlob {
            digest,
            len,
            paths,
            identity: identity(&meta),
            file,
            present: RwLock::new(present),
            inflight: Mutex::new(HashSet::new()),
            landed: Condvar::new(),
            detached: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn is_detached(&self) -> bool {
        self.detached.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether all of `[a, b)` is present (as this process knows).
    pub fn has(&self, a: u64, b: u64) -> bool {
        self.present.read().is_ok_and(|p| p.contains(a, b))
    }

    /// Bytes present, as this process knows.
    pub fn present_bytes(&self) -> u64 {
        self.present.read().map_or(0, |p| p.covered())
    }

    /// The parts of `[a, b)` not present.
    pub fn missing(&self, a: u64, b: u64) -> Vec<(u64, u64)> {
        self.present
            .read()
            .map_or_else(|_| vec![(a, b)], |p| p.missing(a, b))
    }

    /// Reads stored bytes; the caller has made sure they are present.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(offset)) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file.read_at(&mut buf[..n], offset)
    }

    /// Writes bytes that are not yet recorded as present (see [`StoredBlob::commit`]).
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(bytes, offset)
    }

    /// Records `[a, b)` as present: its bytes are written and verified. Syncs them first.
    pub fn commit(&self, a: u64, b: u64) -> io::Result<()> {
        self.file.sync_data()?;
        let mut merged = RangeSet::new();
        merged.insert(a, b);
        if !self.is_detached() {
            let _l = lock_file(&self.paths.lock, true)?;
            let same =
                std::fs::metadata(&self.paths.data).is_ok_and(|m| identity(&m) == self.identity);
            if same {
                merged.union(&read_record(&self.paths.ranges));
                if let Ok(p) = self.present.read() {
                    merged.union(&p);
                }
                replace_file(&self.paths.ranges, &merged.encode())?;
            } else {
                log::info!(
                    "{}: evicted from the cache while in use; serving from memory",
                    self.digest
                );
                self.detached
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let mut p = self.present.write().map_err(|_| poisoned())?;
        p.union(&merged);
        Ok(())
    }

    /// Picks up ranges other processes recorded since this one read the record.
    pub fn refresh(&self) {
        if self.is_detached() {
            return;
        }
        let same = std::fs::metadata(&self.paths.data).is_ok_and(|m| identity(&m) == self.identity);
        if same {
            let disk = read_record(&self.paths.ranges);
            if let Ok(mut p) = self.present.write() {
                p.union(&disk);
            }
        }
    }

    /// Makes `[a, b)` present, fetching the missing pieces of `units` from `origin`.
    pub fn ensure(
        &self,
        origin: &Origin,
        units: &dyn Units,
        a: u64,
        b: u64,
        prio: Priority,
    ) -> io::Result<()> {
        if self.has(a, b) {
            return Ok(());
        }
        self.refresh();
        for i in units.covering(a, b) {
            let (s, e) = units.bounds(i);
            if !self.has(s, e) {
                self.fetch_unit(origin, units, i, prio)?;
            }
        }
        Ok(())
    }

    /// Fetches piece `i` once, however many threads ask at the same time.
    fn fetch_unit(
        &self,
        origin: &Origin,
        units: &dyn Units,
        i: usize,
        prio: Priority,
    ) -> io::Result<()> {
        let (s, e) = units.bounds(i);
        {
            let mut f = self.inflight.lock().map_err(|_| poisoned())?;
            let deadline = std::time::Instant::now() + INFLIGHT_WAIT;
            while f.contains(&i) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                f = self.landed.wait_timeout(f, left).map_err(|_| poisoned())?.0;
            }
            if self.has(s, e) {
                return Ok(());
            }
            f.insert(i);
        }
        let r = self.fetch_across_processes(origin, units, i, prio);
        if let Ok(mut f) = self.inflight.lock() {
            f.remove(&i);
        }
        self.landed.notify_all();
        r
    }

    /// Fetches piece `i` unless another process, holding its range lock first, recorded it.
    fn fetch_across_processes(
        &self,
        origin: &Origin,
        units: &dyn Units,
        i: usize,
        prio: Priority,
    ) -> io::Result<()> {
        let (s, e) = units.bounds(i);
        // Offline or sourceless reads fail at once; they need no lock.
        let fetchable = origin.fetch.is_some() && !origin.offline;
        if fetchable && prio == Priority::Background {
            // Before taking the lock, so a foreground reader elsewhere never waits on it.
            wait_for_foreground_idle(INFLIGHT_WAIT);
        }
        let _range = if fetchable && !self.is_detached() {
            RangeLock::acquire(&self.paths.lock, s, e)
        } else {
            None
        };
        self.refresh();
        if self.has(s, e) {
            return Ok(());
        }
        self.fetch_verified(origin, units, i, prio)
    }

    fn fetch_verified(
        &self,
        origin: &Origin,
        units: &dyn Units,
        i: usize,
        prio: Priority,
    ) -> io::Result<()> {
        let (s, e) = units.bounds(i);
        let what = || format!("blob {} bytes {s}-{e}", self.digest);
        let fetch = match (&origin.fetch, origin.offline) {
            (Some(f), false) => f,
            (_, true) => {
                log::error!(
                    "{}: not in the cache, and --offline forbids fetching it",
                    what()
                );
                return Err(eio());
            }
            (None, false) => {
                log::error!("{}: not in the cache, and its source is unknown", what());
                return Err(eio());
            }
        };
        let _fg = (prio == Priority::Foreground).then(Foreground::enter);
        let mut pause = RETRY_PAUSE;
        let mut last = String::new();
        for attempt in 1..=FETCH_ATTEMPTS {
            if attempt > 1 {
                std::thread::sleep(pause);
                pause *= 2;
            }
            let got = fetch.range(&self.digest, s, e - s).and_then(|bytes| {
                if bytes.len() as u64 != e - s {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("got {} bytes instead of {}", bytes.len(), e - s),
                    ));
                }
                units.verify(i, &bytes)?;
                Ok(bytes)
            });
            match got {
                Ok(bytes) => {
                    self.write_at(&bytes, s)?;
                    return self.commit(s, e);
                }
                Err(err) if Spent::is(&err) => {
                    // The fetcher retried already and names the repository.
                    log::error!("{}: {err}", what());
                    return Err(eio());
                }
                Err(err) => {
                    log::debug!(
                        "{} from {}: attempt {attempt}: {err}",
                        what(),
                        fetch.describe()
                    );
                    last = err.to_string();
                }
            }
        }
        log::error!(
            "{} from {}: {last} (after {FETCH_ATTEMPTS} attempts)",
            what(),
            fetch.describe()
        );
        Err(eio())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::image::digest::Algorithm;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Serves a blob from memory, counting requests, failing the first `fail` of them.
    #[derive(Debug)]
    pub struct MemFetch {
        pub data: Vec<u8>,
        pub requests: AtomicUsize,
        pub fail: AtomicUsize,
        pub delay: Duration,
    }

    impl MemFetch {
        pub fn new(data: Vec<u8>) -> MemFetch {
            MemFetch {
                data,
                requests: AtomicUsize::new(0),
                fail: AtomicUsize::new(0),
                delay: Duration::ZERO,
            }
        }
    }

    impl BlobFetch for MemFetch {
        fn stream(&self, _: &Digest, offset: u64) -> io::Result<Box<dyn io::Read + Send>> {
            Ok(Box::new(io::Cursor::new(
                self.data[offset as usize..].to_vec(),
            )))
        }
        fn range(&self, _: &Digest, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(self.delay);
            if self.fail.load(Ordering::SeqCst) > 0 {
                self.fail.fetch_sub(1, Ordering::SeqCst);
                return Err(io::Error::other("injected failure"));
            }
            Ok(self.data[offset as usize..(offset + len) as usize].to_vec())
        }
        fn describe(&self) -> String {
            "mem://test".into()
        }
    }

    /// Fixed-size pieces, each verified against its sha256.
    pub struct Fixed {
        pub size: u64,
        pub digests: Vec<Digest>,
        pub len: u64,
    }

    impl Fixed {
        pub fn of(data: &[u8], size: u64) -> Fixed {
            Fixed {
                size,
                digests: data
                    .chunks(size as usize)
                    .map(|c| Digest::of_bytes(Algorithm::Sha256, c))
                    .collect(),
                len: data.len() as u64,
            }
        }
    }

    impl Units for Fixed {
        fn covering(&self, a: u64, b: u64) -> Range<usize> {
            (a / self.size) as usize..b.div_ceil(self.size) as usize
        }
        fn bounds(&self, i: usize) -> (u64, u64) {
            let s = i as u64 * self.size;
            (s, (s + self.size).min(self.len))
        }
        fn verify(&self, i: usize, bytes: &[u8]) -> io::Result<()> {
            if Digest::of_bytes(Algorithm::Sha256, bytes) == self.digests[i] {
                Ok(())
            } else {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "digest mismatch",
                ))
            }
        }
    }

    fn setup(data: &[u8]) -> (tempfile::TempDir, Arc<StoredBlob>, Arc<MemFetch>) {
        let dir = tempfile::tempdir().unwrap();
        let d = Digest::of_bytes(Algorithm::Sha256, data);
        let blob = BlobStore::new(dir.path())
            .open(&d, data.len() as u64)
            .unwrap();
        (dir, blob, Arc::new(MemFetch::new(data.to_vec())))
    }

    #[test]
    fn store_fetches_each_piece_once_for_concurrent_readers() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let (_dir, blob, mut fetch) = setup(&data);
        Arc::get_mut(&mut fetch).unwrap().delay = Duration::from_millis(50);
        let origin = Origin {
            fetch: Some(fetch.clone()),
            offline: false,
        };
        let units = Fixed::of(&data, 10_000);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    blob.ensure(&origin, &units, 15_000, 25_000, Priority::Foreground)
                        .unwrap()
                });
            }
        });
        // Pieces 1 and 2, once each.
        assert_eq!(fetch.requests.load(Ordering::SeqCst), 2);
        let mut buf = vec![0u8; 10_000];
        blob.read_at(&mut buf, 15_000).unwrap();
        assert_eq!(&buf[..], &data[15_000..25_000]);
        // Another handle (another process, as far as the record goes) sees them present.
        let again = StoredBlob::open(blob.digest.clone(), blob.len, blob.paths.clone()).unwrap();
        assert!(again.has(10_000, 30_000) && !again.has(0, 10_001));
    }

    #[test]
    fn store_retries_then_gives_eio_and_never_records_bad_bytes() {
        let data = vec![5u8; 30_000];
        let (_dir, blob, fetch) = setup(&data);
        let units = Fixed::of(&data, 10_000);
        let origin = Origin {
            fetch: Some(fetch.clone()),
            offline: false,
        };
        fetch
            .fail
            .store(FETCH_ATTEMPTS as usize - 1, Ordering::SeqCst);
        blob.ensure(&origin, &units, 0, 1, Priority::Foreground)
            .unwrap();
        fetch.fail.store(FETCH_ATTEMPTS as usize, Ordering::SeqCst);
        let e = blob
            .ensure(&origin, &units, 10_000, 10_001, Priority::Foreground)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        assert!(!blob.has(10_000, 10_001));
        // Wrong bytes fail verification on every attempt and are never recorded.
        let bad = Fixed {
            digests: vec![Digest::of_bytes(Algorithm::Sha256, b"x"); 3],
            ..Fixed::of(&data, 10_000)
        };
        assert!(
            blob.ensure(&origin, &bad, 20_000, 20_001, Priority::Foreground)
                .is_err()
        );
        assert!(!blob.has(20_000, 20_001));
        // Offline: present bytes still read, missing ones are EIO without a request.
        let before = fetch.requests.load(Ordering::SeqCst);
        let off = Origin {
            fetch: Some(fetch.clone()),
            offline: true,
        };
        blob.ensure(&off, &units, 0, 10_000, Priority::Foreground)
            .unwrap();
        assert!(
            blob.ensure(&off, &units, 25_000, 25_001, Priority::Foreground)
                .is_err()
        );
        assert_eq!(fetch.requests.load(Ordering::SeqCst), before);
    }

    /// Serves a blob from memory, each request held until [`Held::release`].
    #[derive(Debug, Default)]
    struct Held {
        data: Vec<u8>,
        requests: AtomicUsize,
        released: Mutex<bool>,
        wake: Condvar,
    }

    impl Held {
        fn release(&self) {
            *self.released.lock().unwrap() = true;
            self.wake.notify_all();
        }
    }

    impl BlobFetch for Held {
        fn stream(&self, _: &Digest, _: u64) -> io::Result<Box<dyn io::Read + Send>> {
            Err(io::Error::other("ranges only"))
        }
        fn range(&self, _: &Digest, offset: u64, len: u64) -> io::Result<Vec<u8>> {
            self.requests.fetch_add(1, Ordering::SeqCst);
            let r = self.released.lock().unwrap();
            drop(self.wake.wait_while(r, |r| !*r).unwrap());
            Ok(self.data[offset as usize..(offset + len) as usize].to_vec())
        }
        fn describe(&self) -> String {
            "mem://held".into()
        }
    }

    /// Whether an OFD lock request on `path` waits in the kernel (`/proc/locks` shows it as
    /// `->`, with the file's inode).
    fn an_ofd_lock_waits(path: &Path) -> bool {
        let Ok(ino) = std::fs::metadata(path).map(|m| m.ino()) else {
            return false;
        };
        std::fs::read_to_string("/proc/locks").is_ok_and(|l| {
            l.lines().any(|l| {
                l.contains("->") && l.contains("OFDLCK") && l.contains(&format!(":{ino} "))
            })
        })
    }

    #[test]
    fn store_fetches_a_piece_once_across_processes() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i * 13) as u8).collect();
        let (_dir, first, _) = setup(&data);
        // Another process's view of the same files: its own handle, record and fetcher.
        let second =
            StoredBlob::open(first.digest.clone(), first.len, first.paths.clone()).unwrap();
        let units = Fixed::of(&data, 10_000);
        let fetches = [first.as_ref(), &second].map(|_| {
            Arc::new(Held {
                data: data.clone(),
                ..Default::default()
            })
        });
        let origin = |f: &Arc<Held>| Origin {
            fetch: Some(f.clone() as Arc<dyn BlobFetch>),
            offline: false,
        };
        std::thread::scope(|s| {
            let a = s.spawn(|| {
                first.ensure(
                    &origin(&fetches[0]),
                    &units,
                    12_000,
                    13_000,
                    Priority::Foreground,
                )
            });
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while fetches[0].requests.load(Ordering::SeqCst) == 0 {
                assert!(std::time::Instant::now() < deadline, "no first request");
                std::thread::yield_now();
            }
            let b = s.spawn(|| {
                second.ensure(
                    &origin(&fetches[1]),
                    &units,
                    12_500,
                    12_600,
                    Priority::Foreground,
                )
            });
            // The second reader either waits for the lock or (wrongly) asks itself.
            while !an_ofd_lock_waits(&first.paths.lock)
                && fetches[1].requests.load(Ordering::SeqCst) == 0
            {
                assert!(std::time::Instant::now() < deadline, "second reader stuck");
                std::thread::yield_now();
            }
            fetches[0].release();
            fetches[1].release();
            a.join().unwrap().unwrap();
            b.join().unwrap().unwrap();
        });
        assert_eq!(fetches[0].requests.load(Ordering::SeqCst), 1);
        assert_eq!(fetches[1].requests.load(Ordering::SeqCst), 0);
        let mut buf = vec![0u8; 100];
        second.read_at(&mut buf, 12_500).unwrap();
        assert_eq!(&buf[..], &data[12_500..12_600]);
    }

    #[test]
    fn store_detaches_when_evicted_under_it() {
        let data = vec![9u8; 20_000];
        let (_dir, blob, fetch) = setup(&data);
        let units = Fixed::of(&data, 10_000);
        let origin = Origin {
            fetch: Some(fetch),
            offline: false,
        };
        std::fs::remove_file(&blob.paths.data).unwrap();
        std::fs::remove_file(&blob.paths.ranges).ok();
        blob.ensure(&origin, &units, 0, 20_000, Priority::Foreground)
            .unwrap();
        // Served from the file it has; no record claims bytes for the new name.
        let mut buf = vec![0u8; 100];
        blob.read_at(&mut buf, 15_000).unwrap();
        assert_eq!(buf, vec![9u8; 100]);
        assert!(!blob.paths.ranges.exists());
    }
}
