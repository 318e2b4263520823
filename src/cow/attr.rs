//! Changing attributes in the writable view (`setattr`), dropping privileges the way the
//! kernel does for writes by users, and the filesystem's statistics.
//!
//! A lower entry is copied up first: metadata only when its data does not change (chmod,
//! chown, utimens of a regular file), whole otherwise (truncate).

use std::ffi::OsStr;
use std::fs::File;
use std::sync::Arc;

use nix::errno::Errno;

use super::lookup::meta_attr;
use super::{Cow, errno, lock, stat_attr};
use crate::sys::DirFd;
use crate::upper::copy_up::CopyMode;
use crate::view::{Attr, BLOCK_SIZE, Caller, Fh, Ino, OpResult, SetAttr, StatFs, View};

/// The file capability attribute, dropped with set-id bits on writes by users.
pub(super) const CAPABILITY_XATTR: &[u8] = b"security.capability";

impl Cow {
    /// Changes attributes; `fh` is the open file a truncate goes through, if any.
    pub(super) fn setattr(
        &self,
        ino: Ino,
        set: &SetAttr,
        fh: Option<Fh>,
        who: Caller,
    ) -> OpResult<Attr> {
        if let Some(f) = self.unlinked_file(ino, fh)? {
            let _ns = lock(&self.ns)?;
            let owner = (set.uid, set.gid);
            crate::sys::set_file_attrs(&f, owner, set.mode, set.size, set.times.as_ref())
                .map_err(errno)?;
            return Ok(meta_attr(ino, &f.metadata().map_err(errno)?));
        }
        // A truncate copies the data up first, without the namespace lock.
        let _ns = match set.size {
            Some(_) => self.lock_with_data_up(ino)?.0,
            None => lock(&self.ns)?,
        };
        let i = self.inode(ino)?;
        let copy = if set.size.is_some() || i.file_type != libc::S_IFREG {
            CopyMode::Full
        } else {
            CopyMode::MetaOnly
        };
        self.ensure_upper(ino, copy)?;
        let path = self.path_of(ino)?;
        let (dir, name) = self.split(&path)?;
        let Some(name) = name else {
            // The root's own attributes: act on it through its parent-less descriptor.
            return self.setattr_root(&dir, set);
        };
        let shown = self.upper.owner_override(&dir, Some(name));
        if set.uid.is_some() || set.gid.is_some() || (shown.is_some() && set.mode.is_some()) {
            let st = dir.stat(Some(name)).map_err(errno)?;
            let (cu, cg, cm) = shown.unwrap_or((st.st_uid, st.st_gid, st.st_mode & 0o7777));
            let (u, g, m) = (
                set.uid.unwrap_or(cu),
                set.gid.unwrap_or(cg),
                set.mode.unwrap_or(cm),
            );
            self.upper.set_owner(&dir, name, u, g, m).map_err(errno)?;
        }
        if let Some(m) = set.mode {
            dir.chmod(name, m).map_err(errno)?;
        }
        if let Some(sz) = set.size {
            self.truncate(&dir, name, sz, fh, who)?;
        }
        if let Some(t) = set.times {
            dir.utimens(name, &t).map_err(errno)?;
        }
        let st = dir.stat(Some(name)).map_err(errno)?;
        Ok(stat_attr(ino, &st))
    }

    /// The upper file of `ino` if it has no name left, which a change of its attributes
    /// goes through (`fchmod`, `ftruncate` and the like after an unlink work, as on kernel
    /// overlayfs): the handle `fh`, another open handle, or the descriptor kept at the
    /// unlink. `ESTALE` for a lower file, which can no longer be copied up.
    fn unlinked_file(&self, ino: Ino, fh: Option<Fh>) -> OpResult<Option<Arc<File>>> {
        let i = self.inode(ino)?;
        if !i.unlinked {
            return Ok(None);
        }
        let kept = || i.last.as_ref().and_then(|l| l.file.clone());
        fh.and_then(|h| self.handle_file(h))
            .or_else(|| self.open_file_of(ino))
            .or_else(kept)
            .map(Some)
            .ok_or(Errno::ESTALE)
    }

    /// Sets the size of `dir/name`, through its open handle `fh` if it has one.
    fn truncate(
        &self,
        dir: &DirFd,
        name: &OsStr,
        size: u64,
        fh: Option<Fh>,
        who: Caller,
    ) -> OpResult<()> {
        let f = match fh.map(|h| self.file_handle(h)).transpose()?.flatten() {
            Some(f) => f,
            None => Arc::new(dir.open_file(name, libc::O_WRONLY, 0).map_err(errno)?),
        };
        f.set_len(size).map_err(errno)?;
        // Truncation by a user drops set-id bits, as the kernel would for a local file.
        if who.uid != 0 {
            kill_privs(&f)?;
        }
        Ok(())
    }

    /// `setattr` of the root, whose attributes are set through its parent directory.
    fn setattr_root(&self, root: &DirFd, set: &SetAttr) -> OpResult<Attr> {
        let (parent, name) = self.upper.root_parent().map_err(errno)?;
        if set.uid.is_some() || set.gid.is_some() {
            parent.chown(name, set.uid, set.gid).map_err(errno)?;
        }
        if let Some(m) = set.mode {
            parent.chmod(name, m).map_err(errno)?;
        }
        if let Some(t) = set.times {
            root.set_own_times(&t).map_err(errno)?;
        }
        Ok(stat_attr(Ino::ROOT, &root.stat(None).map_err(errno)?))
    }

    /// Space of the upper filesystem, inodes of the image plus the upper's.
    pub(super) fn statfs(&self) -> OpResult<StatFs> {
        let s = nix::sys::statvfs::statvfs(&self.upper.path)
            .map_err(|e| e as i32)
            .map_err(Errno::from_raw)?;
        let lower = self.lower.statfs()?;
        let scale = s.fragment_size().max(1) / u64::from(BLOCK_SIZE).max(1);
        let scale = scale.max(1);
        Ok(StatFs {
            blocks: lower.blocks + s.blocks() * scale,
            bfree: s.blocks_free() * scale,
            bavail: s.blocks_available() * scale,
            files: lower.files + s.files(),
            ffree: s.files_free(),
        })
    }
}

/// Drops setuid (and setgid, when group-executable) and file capabilities, as the kernel
/// does when an unprivileged writer changes a file; the daemon writes as root, so it must.
pub(super) fn kill_privs(f: &File) -> OpResult<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mode = f.metadata().map_err(errno)?.mode();
    let mut new = mode & !libc::S_ISUID;
    if mode & libc::S_IXGRP != 0 {
        new &= !libc::S_ISGID;
    }
    if new != mode {
        f.set_permissions(std::fs::Permissions::from_mode(new & 0o7777))
            .map_err(errno)?;
    }
    match crate::sys::remove_xattr_fd(f, CAPABILITY_XATTR) {
        // An unprivileged daemon may not touch security.* (and cannot have set it either).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EOPNOTSUPP)) => Ok(()),
        r => r.map_err(errno),
    }
}
