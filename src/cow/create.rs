//! New names in the writable view: files, directories, nodes, symlinks and hard links.
//!
//! Each new entry is built in the work directory with its owner, then renamed into place
//! (over a whiteout of its name if there is one), so the name never shows a half-made entry.
//! A directory made where a deleted lower entry was is opaque, so nothing of the lower
//! layers shows through it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use nix::errno::Errno;

use super::io::Handle;
use super::{Cow, errno, stat_attr};
use crate::sys::DirFd;
use crate::upper::copy_up::CopyMode;
use crate::upper::format::name_is_free;
use crate::upper::{Flag, UpperEntry, remove_tree};
use crate::view::{Attr, Caller, Fh, Ino, OpResult};

/// Where a new entry goes: its parent's upper directory, and whether a lower entry of its
/// name is hidden there by a whiteout.
struct Place {
    dir: DirFd,
    hides_lower: bool,
}

impl Cow {
    /// Prepares `parent` for a new entry `name`: the parent copied up, the name free in the
    /// merged view (`EEXIST` otherwise) and not one the upper's format reserves (`EINVAL`,
    /// as fuse-overlayfs answers).
    fn prepare_new(&self, parent: Ino, name: &OsStr) -> OpResult<Place> {
        let (p, ppath) = self.dir_for(parent, name.as_bytes())?;
        if !name_is_free(name.as_bytes()) {
            return Err(Errno::EINVAL);
        }
        if self.resolve_child(&p, &ppath, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        if !p.upper {
            self.ensure_upper(parent, CopyMode::Full)?;
        }
        Ok(Place {
            dir: self.upper_dir(&ppath)?,
            hides_lower: self.lower_child(&p, name).is_some(),
        })
    }

    /// Owner and group of a new entry: the caller's, or the parent's group under setgid.
    fn new_owner(&self, dir: &DirFd, who: Caller) -> OpResult<(u32, u32, bool)> {
        let st = dir.stat(None).map_err(errno)?;
        let sgid = st.st_mode & libc::S_ISGID != 0;
        Ok((who.uid, if sgid { st.st_gid } else { who.gid }, sgid))
    }

    /// Builds a new entry in the work directory with `make`, owns it, gives it permission
    /// bits `mode` (none for a symlink or a link), and moves it to `dir/name` (over a
    /// whiteout if there is one).
    fn install(
        &self,
        dir: &DirFd,
        name: &OsStr,
        who: Caller,
        opaque: bool,
        mode: Option<u32>,
        make: impl FnOnce(&DirFd, &OsStr) -> std::io::Result<()>,
    ) -> OpResult<()> {
        let work = self.upper.work();
        let tmp = self.upper.temp_name();
        let (uid, gid, sgid) = self.new_owner(dir, who)?;
        let built = (|| {
            make(work, &tmp)?;
            work.chown(&tmp, Some(uid), Some(gid))?;
            if let Some(mode) = mode {
                // Exactly the bits asked for: the kernel has applied the caller's umask, and
                // the daemon's own must not apply again (chown has also dropped set-id bits).
                let st = work.stat(Some(&tmp))?;
                let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                let inherit = if sgid && is_dir { libc::S_ISGID } else { 0 };
                work.chmod(&tmp, (mode & 0o7777) | inherit)?;
            }
            if opaque {
                self.upper.set_flag(work, &tmp, Flag::Opaque, b"y")?;
            }
            Ok(())
        })();
        let moved = built.and_then(|()| {
            match self.upper.classify(dir, name)? {
                UpperEntry::Whiteout { beside: false } => {
                    // Exchange with the whiteout, then drop it: the name never shows empty.
                    work.rename(&tmp, dir, name, libc::RENAME_EXCHANGE)?;
                    work.unlink(&tmp, false)
                }
                UpperEntry::Whiteout { beside: true } => {
                    work.rename(&tmp, dir, name, libc::RENAME_NOREPLACE)?;
                    self.upper.clear_whiteout(dir, name, true)
                }
                _ => work.rename(&tmp, dir, name, libc::RENAME_NOREPLACE),
            }
        });
        if let Err(e) = moved {
            let _ = remove_tree(work, &tmp);
            return Err(errno(e));
        }
        Ok(())
    }

    /// Registers a new entry and answers its attributes.
    fn created(&self, parent: Ino, name: &OsStr, file_type: u32, dir: &DirFd) -> OpResult<Attr> {
        let ino = self.write_inodes()?.created(parent, name, file_type);
        let st = dir.stat(Some(name)).map_err(errno)?;
        Ok(stat_attr(ino, &st))
    }

    /// Makes the entry `name` of `file_type` and permission bits `mode` in `parent` with
    /// `build` (given the work
    /// directory and a temporary name) and registers it; the caller is changing names. Returns
    /// its attributes and the directory it is in.
    fn make(
        &self,
        parent: Ino,
        name: &OsStr,
        who: Caller,
        file_type: u32,
        mode: Option<u32>,
        build: impl FnOnce(&DirFd, &OsStr) -> std::io::Result<()>,
    ) -> OpResult<(Attr, DirFd)> {
        let at = self.prepare_new(parent, name)?;
        let dir = file_type == libc::S_IFDIR;
        self.install(&at.dir, name, who, dir && at.hides_lower, mode, build)?;
        if dir {
            self.dirs_changed(parent);
        }
        Ok((self.created(parent, name, file_type, &at.dir)?, at.dir))
    }

    /// Creates and opens a regular file.
    pub(super) fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        flags: i32,
        who: Caller,
    ) -> OpResult<(Attr, Fh)> {
        let name = OsStr::from_bytes(name);
        let _change = self.change_names()?;
        let (attr, dir) = self.make(parent, name, who, libc::S_IFREG, Some(mode), |w, tmp| {
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
            w.open_file(tmp, flags, mode & 0o7777).map(drop)
        })?;
        let keep = flags & (libc::O_ACCMODE | libc::O_TRUNC);
        let f = dir.open_file(name, keep, 0).map_err(errno)?;
        Ok((attr, self.new_handle(Handle::File(Arc::new(f)))?))
    }

    /// Creates a directory (opaque where it replaces a deleted lower entry).
    pub(super) fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, who: Caller) -> OpResult<Attr> {
        let name = OsStr::from_bytes(name);
        let _change = self.change_names()?;
        let build = |w: &DirFd, tmp: &OsStr| w.mkdir(tmp, mode & 0o7777);
        Ok(self
            .make(parent, name, who, libc::S_IFDIR, Some(mode), build)?
            .0)
    }

    /// Creates a device, fifo, socket or regular file node.
    pub(super) fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        rdev: u64,
        who: Caller,
    ) -> OpResult<Attr> {
        let name = OsStr::from_bytes(name);
        let _change = self.change_names()?;
        let build = |w: &DirFd, tmp: &OsStr| w.mknod(tmp, mode, rdev);
        Ok(self
            .make(parent, name, who, mode & libc::S_IFMT, Some(mode), build)?
            .0)
    }

    /// Creates a symlink.
    pub(super) fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        who: Caller,
    ) -> OpResult<Attr> {
        let name = OsStr::from_bytes(name);
        let _change = self.change_names()?;
        let build = |w: &DirFd, tmp: &OsStr| w.symlink(OsStr::from_bytes(target), tmp);
        Ok(self.make(parent, name, who, libc::S_IFLNK, None, build)?.0)
    }

    /// Makes a hard link to `ino` (copied up first) as `newparent/newname`.
    pub(super) fn link(
        &self,
        ino: Ino,
        newparent: Ino,
        newname: &[u8],
        who: Caller,
    ) -> OpResult<Attr> {
        let newname = OsStr::from_bytes(newname);
        let _change = self.change_names()?;
        let i = self.inode(ino)?;
        if i.is_dir() {
            return Err(Errno::EPERM);
        }
        self.ensure_upper(ino, CopyMode::Full)?;
        let src_path = self.path_of(ino)?;
        let (sdir, sname) = self.split(&src_path)?;
        let sname = sname.ok_or(Errno::EPERM)?.to_os_string();
        let at = self.prepare_new(newparent, newname)?;
        self.install(&at.dir, newname, who, false, None, |w, tmp| {
            w.link(&sdir, &sname, tmp)
        })?;
        let ust = at.dir.stat(Some(newname)).map_err(errno)?;
        let key = (newparent, newname.to_os_string());
        self.write_inodes()?.linked(key, ino, ust.st_ino);
        Ok(stat_attr(ino, &ust))
    }
}
