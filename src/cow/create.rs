//! New names in the writable view: files, directories, nodes, symlinks and hard links.
//!
//! The name never shows a half-made entry: a new entry is made in place as its caller, born
//! with its owner and mode, or, where that cannot be done (a whiteout of its name to
//! replace, an opaque directory, no privileges), built in the work directory and renamed
//! into place. A directory made where a deleted lower entry was is opaque, so nothing of
//! the lower layers shows through it.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use nix::errno::Errno;

use super::copy::Prepared;
use super::io::Handle;
use super::{Cow, errno, stat_attr};
use crate::sys::{DirFd, creds};
use crate::upper::copy_up::CopyMode;
use crate::upper::format::name_is_free;
use crate::upper::{Flag, Format, UpperEntry, remove_tree};
use crate::view::{Attr, Caller, Fh, Ino, OpResult};

/// Where a new entry goes: its parent's upper directory, and whether a lower entry of its
/// name is hidden there by a whiteout.
struct Place {
    dir: Arc<DirFd>,
    hides_lower: bool,
}

/// What a new entry is: its name, its owner (`None`: a hard link, whose inode keeps its
/// owner), its permission bits (none for a symlink or a link), and whether it is a directory
/// that must be opaque.
struct NewEntry<'a> {
    name: &'a OsStr,
    who: Option<Caller>,
    mode: Option<u32>,
    opaque: bool,
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
        // One descriptor of the parent's upper directory serves the whole creation.
        let dir = match p.upper {
            true => Some(self.upper_dir(&ppath)?),
            false => None,
        };
        if self.resolve_child_in(&p, dir.as_deref(), name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let dir = match dir {
            Some(d) => d,
            None => {
                self.ensure_upper(parent, CopyMode::Full)?;
                self.upper_dir(&ppath)?
            }
        };
        Ok(Place {
            dir,
            hides_lower: self.lower_child(&p, name).is_some(),
        })
    }

    /// Owner and group of a new entry: the caller's, or the parent's group under setgid.
    fn new_owner(&self, dir: &DirFd, who: Caller) -> OpResult<(u32, u32, bool)> {
        let st = dir.stat(None).map_err(errno)?;
        let sgid = st.st_mode & libc::S_ISGID != 0;
        Ok((who.uid, if sgid { st.st_gid } else { who.gid }, sgid))
    }

    /// Makes the new entry `e` in its place `at` with `make` (given a directory and a name).
    /// `make` may hand back the file it made open, which is then returned.
    ///
    /// Where nothing stands in the way, the entry is made in place, born with its owner and
    /// mode in one call, as kernel overlayfs makes it. Otherwise (a whiteout to replace, an
    /// opaque directory, the fallback format, no privileges, or a parent with a default ACL,
    /// which would change the mode asked for) it is built in the work directory and moved.
    fn install(
        &self,
        at: &Place,
        e: &NewEntry<'_>,
        make: impl Fn(&DirFd, &OsStr) -> std::io::Result<Option<File>>,
    ) -> OpResult<Option<File>> {
        let dir = &at.dir;
        // (An opaque directory always hides a lower entry.)
        if !at.hides_lower
            && self.upper.format == Format::Kernel
            && !dir.has_own_xattr(b"system.posix_acl_default")
        {
            let made = match e.who {
                Some(w) => creds::as_caller(w.uid, w.gid, || make(dir, e.name)),
                None => Some(make(dir, e.name)),
            };
            match made {
                // A kernel-format whiteout left at the name: the full way deals with it.
                Some(Err(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
                Some(r) => return r.map_err(errno),
                None => {}
            }
        }
        self.install_through_work(at, e, make)
    }

    /// [`Cow::install`] by way of the work directory: the entry is built there under a
    /// temporary name, owned, given its mode and flags, then renamed into place (over a
    /// whiteout if there is one).
    fn install_through_work(
        &self,
        at: &Place,
        e: &NewEntry<'_>,
        make: impl Fn(&DirFd, &OsStr) -> std::io::Result<Option<File>>,
    ) -> OpResult<Option<File>> {
        let (dir, name, mode) = (&at.dir, e.name, e.mode);
        let work = self.upper.work();
        let tmp = self.upper.temp_name();
        let owner = match e.who {
            Some(w) => Some(self.new_owner(dir, w)?),
            None => None,
        };
        let built = (|| {
            let file = make(work, &tmp)?;
            let Some((uid, gid, sgid)) = owner else {
                return Ok(file);
            };
            if let Some(f) = &file {
                // Through the open file: no path to resolve again.
                std::os::unix::fs::fchown(f, Some(uid), Some(gid))?;
                if let Some(mode) = mode {
                    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))?;
                }
            } else {
                work.chown(&tmp, Some(uid), Some(gid))?;
                if let Some(mode) = mode {
                    // Exactly the bits asked for: the kernel has applied the caller's umask,
                    // and the daemon's own must not apply again (chown has also dropped
                    // set-id bits).
                    let st = work.stat(Some(&tmp))?;
                    let is_dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
                    let inherit = if sgid && is_dir { libc::S_ISGID } else { 0 };
                    work.chmod(&tmp, (mode & 0o7777) | inherit)?;
                }
            }
            if e.opaque {
                self.upper.set_flag(work, &tmp, Flag::Opaque, b"y")?;
            }
            Ok(file)
        })();
        let moved = built.and_then(|file| {
            // A name no lower entry has is usually free in the upper too: try that first.
            // Kernel-format whiteouts stand at the name itself, so one left there anyway
            // makes the rename fail and is dealt with below; the fallback format's stand
            // beside it and are always looked for.
            if !at.hides_lower && self.upper.format == Format::Kernel {
                match work.rename(&tmp, dir, name, libc::RENAME_NOREPLACE) {
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                    r => return r.map(|()| file),
                }
            }
            match self.upper.classify(dir, name)? {
                UpperEntry::Whiteout { beside: false } => {
                    // Exchange with the whiteout, then drop it: the name never shows empty.
                    work.rename(&tmp, dir, name, libc::RENAME_EXCHANGE)?;
                    work.unlink(&tmp, false)?;
                }
                UpperEntry::Whiteout { beside: true } => {
                    work.rename(&tmp, dir, name, libc::RENAME_NOREPLACE)?;
                    self.upper.clear_whiteout(dir, name, true)?;
                }
                _ => work.rename(&tmp, dir, name, libc::RENAME_NOREPLACE)?,
            }
            Ok(file)
        });
        match moved {
            Ok(file) => Ok(file),
            Err(e) => {
                let _ = remove_tree(work, &tmp);
                Err(errno(e))
            }
        }
    }

    /// Registers a new entry and answers its attributes.
    fn created(&self, parent: Ino, name: &OsStr, file_type: u32, dir: &DirFd) -> OpResult<Attr> {
        let ino = self.write_inodes()?.created(parent, name, file_type);
        let st = dir.stat(Some(name)).map_err(errno)?;
        Ok(stat_attr(ino, &st))
    }

    /// Makes the entry `name` of `file_type` and permission bits `mode` in `parent` with
    /// `build` (given a directory and a name) and registers it; the caller is changing names.
    /// Returns its attributes and the file `build` made open, if any.
    fn make(
        &self,
        parent: Ino,
        name: &OsStr,
        who: Caller,
        file_type: u32,
        mode: Option<u32>,
        build: impl Fn(&DirFd, &OsStr) -> std::io::Result<Option<File>>,
    ) -> OpResult<(Attr, Option<File>)> {
        let at = self.prepare_new(parent, name)?;
        let dir = file_type == libc::S_IFDIR;
        let e = NewEntry {
            name,
            who: Some(who),
            mode,
            opaque: dir && at.hides_lower,
        };
        let file = self.install(&at, &e, build)?;
        if dir {
            self.dirs_changed(parent);
        }
        Ok((self.created(parent, name, file_type, &at.dir)?, file))
    }

    /// Creates and opens a regular file.
    pub(super) fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        _flags: i32,
        who: Caller,
    ) -> OpResult<(Attr, Fh)> {
        let name = OsStr::from_bytes(name);
        let _change = self.change_names()?;
        // Made open for reading and writing, so the new file needs no second open: the
        // kernel keeps to the access mode asked for.
        let (attr, f) = self.make(parent, name, who, libc::S_IFREG, Some(mode), |w, tmp| {
            let flags = libc::O_CREAT | libc::O_EXCL | libc::O_RDWR;
            w.open_file(tmp, flags, mode & 0o7777).map(Some)
        })?;
        let f = f.ok_or(Errno::EIO)?;
        Ok((attr, self.new_handle(attr.ino, Handle::File(Arc::new(f)))?))
    }

    /// Creates a directory (opaque where it replaces a deleted lower entry).
    pub(super) fn mkdir(&self, parent: Ino, name: &[u8], mode: u32, who: Caller) -> OpResult<Attr> {
        let name = OsStr::from_bytes(name);
        let _change = self.change_names()?;
        let build = |w: &DirFd, tmp: &OsStr| w.mkdir(tmp, mode & 0o7777).map(|()| None);
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
        let build = |w: &DirFd, tmp: &OsStr| w.mknod(tmp, mode, rdev).map(|()| None);
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
        let build =
            |w: &DirFd, tmp: &OsStr| w.symlink(OsStr::from_bytes(target), tmp).map(|()| None);
        Ok(self.make(parent, name, who, libc::S_IFLNK, None, build)?.0)
    }

    /// Makes a hard link to `ino` (copied up first) as `newparent/newname`.
    pub(super) fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> OpResult<Attr> {
        let newname = OsStr::from_bytes(newname);
        // A lower file is copied up whole, its data staged before `ns` is taken.
        self.with_data_staged(ino, |staged| self.link_now(ino, newparent, newname, staged))
    }

    fn link_now(
        &self,
        ino: Ino,
        newparent: Ino,
        newname: &OsStr,
        staged: Option<Prepared<'_>>,
    ) -> OpResult<Attr> {
        let _change = self.change_names()?;
        let i = self.inode(ino)?;
        if i.is_dir() {
            return Err(Errno::EPERM);
        }
        self.ensure_upper_with(ino, CopyMode::Full, staged)?;
        let src_path = self.path_of(ino)?;
        let (sdir, sname) = self.split(&src_path)?;
        let sname = sname.ok_or(Errno::EPERM)?.to_os_string();
        let at = self.prepare_new(newparent, newname)?;
        let e = NewEntry {
            name: newname,
            who: None,
            mode: None,
            opaque: false,
        };
        self.install(&at, &e, |w, tmp| w.link(&sdir, &sname, tmp).map(|()| None))?;
        let ust = at.dir.stat(Some(newname)).map_err(errno)?;
        let key = (newparent, newname.to_os_string());
        self.write_inodes()?.linked(key, ino, ust.st_ino);
        Ok(stat_attr(ino, &ust))
    }
}
