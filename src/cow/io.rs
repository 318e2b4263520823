//! Open files of the writable view: handles, open, read, write, sync.
//!
//! Opening to write copies the file up first, and the handle holds the upper file. A
//! read-only open of a file still in the lower layer (or a metadata-only copy) holds nothing
//! ([`Fh::NONE`]): reads follow the inode, so the descriptor keeps seeing one file when it is
//! copied up later; once a big file has its passthrough copy ([`super::private`]), such opens
//! go to the kernel, which reads that copy. I/O on a handle takes the handle lock only to
//! find the file.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use nix::errno::Errno;

use super::attr::{CAPABILITY_XATTR, kill_privs};
use super::{Cow, errno, lock};
use crate::view::{Caller, Fh, Ino, OpResult};

/// An open file (directories need no handle: see [`super::dir`]).
pub(super) enum Handle {
    /// A file of the upper layer.
    File(Arc<File>),
}

/// The open handles, numbered from 1 ([`Fh::NONE`] is no handle), each with its inode.
#[derive(Default)]
pub(super) struct Handles {
    last: u64,
    map: HashMap<Fh, (Ino, Handle)>,
    /// Open handles per inode: an inode losing its last name keeps one's file instead of
    /// opening its own (see [`Cow::last_attr`]).
    open: HashMap<Ino, u32>,
}

impl Cow {
    /// Opens a file; writing (or truncating) copies it up first.
    pub(super) fn open(&self, ino: Ino, flags: i32, who: Caller) -> OpResult<Fh> {
        let i = self.inode(ino)?;
        if i.is_dir() {
            return Err(Errno::EISDIR);
        }
        let writing = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if i.unlinked {
            // Reopened through /proc after its last name went: a lower file can no longer be
            // copied up (EEXIST, as kernel overlayfs answers); read-only opens still read it.
            return match (writing, i.upper, i.lower) {
                (false, false, Some(_)) => Ok(Fh::NONE),
                (true, false, _) => Err(Errno::EEXIST),
                _ => Err(Errno::ESTALE),
            };
        }
        // The namespace lock is held until the upper file is open, so an unlink or rename
        // in between cannot leave the path naming a whiteout or another file. A data copy
        // is made before it is taken.
        let (ns, copied) = match writing {
            true => self.lock_with_data_up(ino)?,
            false => (lock(&self.ns)?, false),
        };
        let opened = (|| {
            if !writing && (!i.upper || self.is_metacopy(ino)?) {
                return Ok(Fh::NONE);
            }
            let path = self.path_of(ino)?;
            let (dir, name) = self.split(&path)?;
            let name = name.ok_or(Errno::EISDIR)?;
            let keep = flags & (libc::O_ACCMODE | libc::O_TRUNC | libc::O_APPEND);
            // O_NONBLOCK: opening a fifo or device here must never wait or reach a driver.
            let f = dir
                .open_file(name, (keep & !libc::O_APPEND) | libc::O_NONBLOCK, 0)
                .map_err(errno)?;
            if flags & libc::O_TRUNC != 0 && who.uid != 0 {
                kill_privs(&f)?;
            }
            self.new_handle(ino, Handle::File(Arc::new(f)))
        })();
        drop(ns);
        if copied {
            self.invalidate(ino);
        }
        opened
    }

    /// For a handleless open (data still lower): the file's passthrough copy, once made. Not
    /// for set-id or capability-carrying files: a writer would join the same backing file
    /// after a copy-up (see [`Cow::may_pass_through`]).
    pub(super) fn lower_backing(&self, ino: Ino) -> Option<OpResult<Arc<File>>> {
        let data = self.data_still_lower(ino)?;
        let f = self.private.ready(&data)?;
        let attr = self.getattr(ino, None).ok()?;
        let privileged = attr.mode & (libc::S_ISUID | libc::S_ISGID) != 0
            || self.getxattr(ino, CAPABILITY_XATTR).is_ok();
        (!privileged).then_some(Ok(f))
    }

    /// A handleless open of `ino` was closed: the passthrough copy of its data starts now if
    /// it was read enough, so that it does not compete with the reads that earned it.
    pub(super) fn lower_closed(&self, ino: Ino) {
        if let Some(data) = self.data_still_lower(ino) {
            let layer = self.tree().data_files.get(usize::from(data.layer));
            self.private.closed(&data, layer, || self.upper.temp_name());
        }
    }

    /// The lower data a handleless open of file `ino` reads, where this mount makes
    /// passthrough copies.
    fn data_still_lower(&self, ino: Ino) -> Option<crate::tree::node::DataRef> {
        if !self.private.on() {
            return None;
        }
        self.stable(|| {
            let i = self.inode(ino)?;
            if i.file_type != libc::S_IFREG || i.unlinked {
                return Ok(None);
            }
            let lower = !i.upper || self.is_metacopy(ino)?;
            lower.then(|| self.lower_data(&i)).transpose()
        })
        .ok()?
    }

    /// Whether an open handle may be given to the kernel (passthrough): not for set-id or
    /// capability-carrying files, whose privileges a write by a user must drop, which the
    /// kernel's passthrough write (done with the daemon's rights) would not do.
    pub(super) fn may_pass_through(&self, fh: Fh) -> bool {
        self.handle_file(fh).is_some_and(|f| {
            f.metadata().is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt;
                m.mode() & (libc::S_ISUID | libc::S_ISGID) == 0
            }) && !crate::sys::has_xattr(&f, CAPABILITY_XATTR)
        })
    }

    /// Keeps a new handle of `ino`.
    pub(super) fn new_handle(&self, ino: Ino, h: Handle) -> OpResult<Fh> {
        let mut hs = lock(&self.handles)?;
        hs.last += 1;
        let fh = Fh(hs.last);
        *hs.open.entry(ino).or_default() += 1;
        hs.map.insert(fh, (ino, h));
        Ok(fh)
    }

    /// The upper file of one of `ino`'s open handles, if it has any.
    pub(super) fn open_file_of(&self, ino: Ino) -> Option<Arc<File>> {
        let hs = self.handles.lock().ok()?;
        if !hs.open.contains_key(&ino) {
            return None;
        }
        hs.map
            .values()
            .find_map(|(i, Handle::File(f))| (*i == ino).then(|| f.clone()))
    }

    /// The upper file behind an open handle, if it is one.
    pub(super) fn handle_file(&self, fh: Fh) -> Option<Arc<File>> {
        self.file_handle(fh).ok().flatten()
    }

    /// The upper file behind a handle; `EISDIR` for a directory's.
    pub(super) fn file_handle(&self, fh: Fh) -> OpResult<Option<Arc<File>>> {
        match lock(&self.handles)?.map.get(&fh) {
            Some((_, Handle::File(f))) => Ok(Some(f.clone())),
            None => Ok(None),
        }
    }

    /// Closes a handle.
    pub(super) fn release(&self, fh: Fh) {
        if let Ok(mut hs) = self.handles.lock() {
            if let Some((ino, _)) = hs.map.remove(&fh) {
                if let std::collections::hash_map::Entry::Occupied(mut n) = hs.open.entry(ino) {
                    *n.get_mut() -= 1;
                    if *n.get() == 0 {
                        n.remove();
                    }
                }
            }
        }
    }

    /// Reads from an open file (or, for [`Fh::NONE`], from wherever the inode's data is now).
    pub(super) fn read(&self, ino: Ino, fh: Fh, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        if let Some(f) = self.file_handle(fh)? {
            return pread(&f, offset, size);
        }
        // The upper file, opened by its path (with the names still); the read itself takes
        // no lock.
        let upper = self.stable(|| {
            let i = self.inode(ino)?;
            if !i.upper || i.unlinked || self.is_metacopy(ino)? {
                return Ok(Err(i));
            }
            let path = self.path_of(ino)?;
            let (dir, name) = self.split(&path)?;
            let f = dir.open_file(name.ok_or(Errno::EISDIR)?, libc::O_RDONLY, 0);
            Ok(Ok(f.map_err(errno)?))
        })?;
        match upper {
            Ok(f) => pread(&f, offset, size),
            Err(i) => {
                let data = self.lower_data(&i)?;
                let out = self.lower.read_data(&data, offset, size)?;
                self.private.count(&data, out.len() as u64);
                Ok(out)
            }
        }
    }

    /// Writes to an open file; `kill` (the kernel's `FUSE_WRITE_KILL_SUIDGID`): the writer
    /// may not keep set-id bits.
    pub(super) fn write(
        &self,
        fh: Fh,
        offset: u64,
        data: &[u8],
        append: bool,
        kill: bool,
    ) -> OpResult<u32> {
        let f = self.file_handle(fh)?.ok_or(Errno::EBADF)?;
        if kill {
            kill_privs(&f)?;
        }
        let offset = if append {
            f.metadata().map_err(errno)?.len()
        } else {
            offset
        };
        f.write_all_at(data, offset).map_err(errno)?;
        Ok(data.len() as u32)
    }

    /// Flushes an open file to disk.
    pub(super) fn fsync(&self, fh: Fh, datasync: bool) -> OpResult<()> {
        match self.file_handle(fh)? {
            Some(f) if datasync => f.sync_data().map_err(errno),
            Some(f) => f.sync_all().map_err(errno),
            None => Ok(()),
        }
    }

    /// Preallocates or punches space in an open file.
    pub(super) fn fallocate(&self, fh: Fh, offset: u64, length: u64, mode: i32) -> OpResult<()> {
        let f = self.file_handle(fh)?.ok_or(Errno::EBADF)?;
        crate::sys::fallocate(&f, mode, offset, length).map_err(errno)
    }
}

/// Reads up to `size` bytes at `offset`, short only at the end of the file.
fn pread(f: &File, offset: u64, size: u32) -> OpResult<Vec<u8>> {
    let mut buf = vec![0u8; size as usize];
    let mut got = 0;
    while got < buf.len() {
        match f.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(errno(e)),
        }
    }
    buf.truncate(got);
    Ok(buf)
}
