//! Passthrough copies of big lower files on a writable mount: this mount's own, in the work
//! directory, never the cache's shared ones.
//!
//! A big lower file is read through the daemon until [`PASSTHROUGH_MIN_SIZE`] bytes of it have
//! been and the open that read them is closed (a copy made during the reads would compete
//! with them for the disk); then one background thread copies its data into the work
//! directory under one of the
//! upper's temporary names (a crash leaves nothing the next mount keeps), flushed to disk as a
//! copy-up's data is, and read-only opens after that pass through to it. A copy-up of the file
//! takes that copy as the upper file's data ([`crate::upper::copy_up::Staged::adopt`]): the
//! readers passed through to it keep the same host inode, so they see every later write, as
//! on kernel overlayfs. A copy-up finding the copy unfinished copies as before and the copy
//! under way is dropped when done. Copies not taken are removed at unmount. None are made
//! once the kernel turns passthrough down. Disk cost: one
//! copy per big lower file read on a writable mount, while it is mounted.
//!
//! Locking: one mutex over the copies' states, held for a lookup or an update, never across
//! I/O (the copy itself holds nothing).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, mpsc};

use crate::layer::data::LayerData;
use crate::sys::DirFd;
use crate::tree::node::DataRef;
use crate::view::PASSTHROUGH_MIN_SIZE;

/// Added to a copy's name once it is finished: a copy-up may then take it.
const READY: &str = ".ready";

/// A lower file's data: its layer and offset.
type Key = (u16, u64);

/// Where a big lower file's copy stands.
enum State {
    /// Bytes read through the daemon so far.
    Read(u64),
    /// Being copied, under this name in the work directory.
    Copying(OsString),
    /// Finished, under this name (the first one with [`READY`] added).
    Ready(OsString, Arc<File>),
    /// Taken by a copy-up, dropped, or failed: never copied again by this mount.
    Done,
}

/// The copies of one writable mount.
pub(super) struct PrivateCopies {
    shared: Option<Arc<Shared>>,
    /// Whether new copies are made: not once the kernel turned passthrough down.
    making: AtomicBool,
    copier: OnceLock<Option<mpsc::Sender<Job>>>,
}

/// What the copying thread shares.
struct Shared {
    work: DirFd,
    /// The states; `None` once the mount has ended.
    states: Mutex<Option<HashMap<Key, State>>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<HashMap<Key, State>>> {
        // Every update is one insert: a poisoned map is still consistent.
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One copy to make.
struct Job {
    shared: Arc<Shared>,
    data: LayerData,
    d: DataRef,
    name: OsString,
}

impl Job {
    fn run(self) {
        let made = (|| -> std::io::Result<File> {
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
            let mut f = self.shared.work.open_file(&self.name, flags, 0o600)?;
            self.data.copy_to(self.d.offset, self.d.size, &mut f)?;
            // Durable before it may become an upper file's data, as a copy-up's.
            f.sync_data()?;
            Ok(f)
        })();
        let mut states = self.shared.lock();
        let key = (self.d.layer, self.d.offset);
        let wanted = states
            .as_ref()
            .is_some_and(|m| matches!(m.get(&key), Some(State::Copying(_))));
        let mut done = self.name.clone();
        done.push(READY);
        let work = &self.shared.work;
        // Renamed holding the lock, so that the name says what the state does.
        let placed = match made {
            Ok(f) if wanted => work
                .rename(&self.name, work, &done, libc::RENAME_NOREPLACE)
                .map(|()| f),
            other => other,
        };
        match placed {
            Ok(f) if wanted => {
                if let Some(m) = states.as_mut() {
                    m.insert(key, State::Ready(done, Arc::new(f)));
                }
                return;
            }
            Ok(_) => {}
            Err(e) => log::warn!("passthrough copy of a lower file failed: {e}"),
        }
        if let Some(m) = states.as_mut() {
            m.insert(key, State::Done);
        }
        let _ = self.shared.work.unlink(&self.name, false);
    }
}

impl PrivateCopies {
    /// No copies: reads stay with the daemon.
    pub(super) fn off() -> PrivateCopies {
        PrivateCopies {
            shared: None,
            making: AtomicBool::new(false),
            copier: OnceLock::new(),
        }
    }

    /// Copies made in `work` (the upper's work directory).
    pub(super) fn new(work: DirFd) -> PrivateCopies {
        PrivateCopies {
            shared: Some(Arc::new(Shared {
                work,
                states: Mutex::new(Some(HashMap::new())),
            })),
            making: AtomicBool::new(true),
            copier: OnceLock::new(),
        }
    }

    /// Whether copies are made at all.
    pub(super) fn on(&self) -> bool {
        self.shared.is_some()
    }

    /// Makes no new copies: the kernel would not use them.
    pub(super) fn stop(&self) {
        self.making.store(false, Ordering::Relaxed);
    }

    /// Counts `len` bytes of lower data `d` read through the daemon.
    pub(super) fn count(&self, d: &DataRef, len: u64) {
        let Some(shared) = &self.shared else {
            return;
        };
        if d.size < PASSTHROUGH_MIN_SIZE || !self.making.load(Ordering::Relaxed) {
            return;
        }
        if let Some(m) = shared.lock().as_mut() {
            if let State::Read(seen) = m.entry((d.layer, d.offset)).or_insert(State::Read(0)) {
                *seen = seen.saturating_add(len);
            }
        }
    }

    /// An open that read lower data `d` through the daemon was closed: past the threshold,
    /// queues its copy from `data` under a fresh work name from `name` (once).
    pub(super) fn closed(
        &self,
        d: &DataRef,
        data: Option<&LayerData>,
        name: impl FnOnce() -> OsString,
    ) {
        let (Some(shared), Some(data)) = (&self.shared, data) else {
            return;
        };
        if d.size < PASSTHROUGH_MIN_SIZE || !self.making.load(Ordering::Relaxed) {
            return;
        }
        let name = {
            let mut states = shared.lock();
            let Some(m) = states.as_mut() else {
                return;
            };
            let Some(s) = m.get_mut(&(d.layer, d.offset)) else {
                return;
            };
            if !matches!(s, State::Read(seen) if *seen >= PASSTHROUGH_MIN_SIZE) {
                return;
            }
            let name = name();
            *s = State::Copying(name.clone());
            name
        };
        self.send(Job {
            shared: shared.clone(),
            data: data.clone(),
            d: *d,
            name,
        });
    }

    fn send(&self, job: Job) {
        let copier = self.copier.get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            // One copy at a time: they compete for the same disk.
            std::thread::Builder::new()
                .name("passthrough-copy".into())
                .spawn(move || rx.into_iter().for_each(Job::run))
                .map_err(|e| log::warn!("no passthrough copies: {e}"))
                .ok()
                .map(|_| tx)
        });
        match copier {
            Some(tx) => drop(tx.send(job)),
            None => {
                if let Some(m) = job.shared.lock().as_mut() {
                    m.insert((job.d.layer, job.d.offset), State::Done);
                }
            }
        }
    }

    /// The finished copy of lower data `d`, if there is one.
    pub(super) fn ready(&self, d: &DataRef) -> Option<Arc<File>> {
        let states = self.shared.as_ref()?.lock();
        match states.as_ref()?.get(&(d.layer, d.offset)) {
            Some(State::Ready(_, f)) => Some(f.clone()),
            _ => None,
        }
    }

    /// For a copy-up of lower data `d`: the work name of its finished copy, which the caller
    /// now owns. A copy not finished is dropped, and none is made after: readers passed
    /// through to it could not see the copy-up's writes.
    pub(super) fn take(&self, d: &DataRef) -> Option<OsString> {
        let shared = self.shared.as_ref()?;
        if d.size < PASSTHROUGH_MIN_SIZE {
            return None;
        }
        let mut states = shared.lock();
        let old = states.as_mut()?.insert((d.layer, d.offset), State::Done);
        match old {
            Some(State::Ready(name, _)) => Some(name),
            _ => None,
        }
    }
}

impl Drop for PrivateCopies {
    /// The mount ends: copies not taken go, and one being made (its thread may not outlive
    /// the daemon).
    fn drop(&mut self) {
        let Some(shared) = &self.shared else {
            return;
        };
        let states = shared.lock().take().unwrap_or_default();
        for s in states.into_values() {
            if let State::Ready(name, _) | State::Copying(name) = s {
                let _ = shared.work.unlink(&name, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::container::BlobLoc;

    /// Copies in a fresh work directory, and a layer of 2 MiB + 3 bytes; its data's ref.
    fn setup(dir: &std::path::Path) -> (PrivateCopies, LayerData, DataRef, Vec<u8>) {
        let bytes: Vec<u8> = (0..(2 << 20) + 3).map(|i| (i % 253) as u8).collect();
        let file = dir.join("layer");
        std::fs::write(&file, &bytes).unwrap();
        let len = bytes.len() as u64;
        let data = LayerData::host(BlobLoc {
            file,
            offset: 0,
            len,
        });
        std::fs::create_dir(dir.join("work")).unwrap();
        let work = DirFd::open_root(&dir.join("work")).unwrap();
        let d = DataRef {
            layer: 0,
            offset: 0,
            size: len,
        };
        (PrivateCopies::new(work), data, d, bytes)
    }

    /// The copy the thread would make, made here: `closed` queued it as `name`.
    fn copy_now(p: &PrivateCopies, data: &LayerData, d: DataRef, name: &str) {
        let shared = p.shared.clone().unwrap();
        let m = shared.lock();
        assert!(matches!(
            m.as_ref().unwrap().get(&(0, 0)),
            Some(State::Copying(_))
        ));
        drop(m);
        let (data, name) = (data.clone(), OsString::from(name));
        Job {
            shared,
            data,
            d,
            name,
        }
        .run();
    }

    /// Marks `d` as queued under `name` without a thread: as `closed` does past the threshold.
    fn queued(p: &PrivateCopies, d: &DataRef, name: &str) {
        let m = &mut *p.shared.as_ref().unwrap().lock();
        let copying = State::Copying(OsString::from(name));
        m.as_mut().unwrap().insert((d.layer, d.offset), copying);
    }

    #[test]
    fn the_copy_is_queued_when_an_open_that_read_enough_closes() {
        let dir = tempfile::tempdir().unwrap();
        let (p, data, d, _) = setup(dir.path());
        let reading = |p: &PrivateCopies| {
            let m = p.shared.as_ref().unwrap().lock();
            matches!(m.as_ref().unwrap().get(&(0, 0)), Some(State::Read(_)))
        };
        let name = || OsString::from("#rimgfs.1.6");
        p.count(&d, 4096);
        p.closed(&d, Some(&data), name);
        assert!(reading(&p), "a peek and a close: no copy");
        p.count(&d, PASSTHROUGH_MIN_SIZE);
        assert!(reading(&p), "no copy while the reads go on");
        p.closed(&d, Some(&data), name);
        assert!(!reading(&p), "queued at the close");
    }

    #[test]
    fn a_finished_copy_is_taken_by_the_copy_up() {
        let dir = tempfile::tempdir().unwrap();
        let (p, data, d, bytes) = setup(dir.path());
        queued(&p, &d, "#rimgfs.1.1");
        assert!(p.ready(&d).is_none(), "not before it is finished");
        copy_now(&p, &data, d, "#rimgfs.1.1");
        let work = dir.path().join("work");
        assert_eq!(
            std::fs::read(work.join("#rimgfs.1.1.ready")).unwrap(),
            bytes
        );
        assert!(p.ready(&d).is_some());
        assert_eq!(p.take(&d), Some(OsString::from("#rimgfs.1.1.ready")));
        // The caller owns it now: nothing serves it, nothing removes it.
        assert!(p.ready(&d).is_none() && p.take(&d).is_none());
        drop(p);
        assert!(work.join("#rimgfs.1.1.ready").exists());
    }

    #[test]
    fn a_copy_up_before_the_copy_is_finished_drops_it() {
        let dir = tempfile::tempdir().unwrap();
        let (p, data, d, _) = setup(dir.path());
        queued(&p, &d, "#rimgfs.1.2");
        assert_eq!(p.take(&d), None);
        // The thread finishes after: its copy goes, and no other is made.
        let shared = p.shared.clone().unwrap();
        let name = OsString::from("#rimgfs.1.2");
        Job {
            shared,
            data: data.clone(),
            d,
            name,
        }
        .run();
        let work = dir.path().join("work");
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
        assert!(p.ready(&d).is_none());
        p.count(&d, 4 << 20);
        p.closed(&d, Some(&data), || OsString::from("#rimgfs.1.3"));
        assert!(p.ready(&d).is_none() && p.take(&d).is_none());
    }

    #[test]
    fn copies_not_taken_go_with_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let (p, data, d, _) = setup(dir.path());
        queued(&p, &d, "#rimgfs.1.4");
        copy_now(&p, &data, d, "#rimgfs.1.4");
        let other = DataRef { offset: 1, ..d };
        queued(&p, &other, "#rimgfs.1.5");
        let work = dir.path().join("work");
        std::fs::write(work.join("#rimgfs.1.5"), b"half").unwrap();
        drop(p);
        assert_eq!(std::fs::read_dir(&work).unwrap().count(), 0);
    }
}
