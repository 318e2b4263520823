//! Removing names from the writable view (unlink, rmdir).
//!
//! A name with a lower entry gets a whiteout; one that exists in the upper only is simply
//! removed there. A directory is empty when its merged listing is: whiteouts do not count.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use nix::errno::Errno;

use super::inodes::Last;
use super::lookup::meta_attr;
use super::{Cow, errno, join};
use crate::sys::DirFd;
use crate::upper::copy_up::CopyMode;
use crate::upper::remove_tree;
use crate::view::{Ino, OpResult};

impl Cow {
    /// Whether a merged directory has no entries.
    pub(super) fn is_empty_dir(&self, ino: Ino) -> OpResult<bool> {
        let mut empty = true;
        self.merged_listing(ino, |_, _, _| {
            empty = false;
            true
        })?;
        Ok(empty)
    }

    /// Removes a non-directory.
    pub(super) fn unlink(&self, parent: Ino, name: &[u8]) -> OpResult<()> {
        self.remove(parent, OsStr::from_bytes(name), false)
    }

    /// Removes an empty directory.
    pub(super) fn rmdir(&self, parent: Ino, name: &[u8]) -> OpResult<()> {
        self.remove(parent, OsStr::from_bytes(name), true)
    }

    fn remove(&self, parent: Ino, name: &OsStr, want_dir: bool) -> OpResult<()> {
        let _change = self.change_names()?;
        let p = self.inode(parent)?;
        let ppath = self.path_of(parent)?;
        // One descriptor of the parent's upper directory serves the whole removal.
        let mut dir = match p.upper {
            true => Some(self.upper_dir(&ppath)?),
            false => None,
        };
        let c = self
            .resolve_child_in(&p, dir.as_deref(), name)?
            .ok_or(Errno::ENOENT)?;
        let is_dir = c.file_type == libc::S_IFDIR;
        if want_dir && !is_dir {
            return Err(Errno::ENOTDIR);
        }
        if !want_dir && is_dir {
            return Err(Errno::EISDIR);
        }
        let ino = self.register(parent, name, &c, false)?;
        if is_dir && !self.is_empty_dir(ino)? {
            return Err(Errno::ENOTEMPTY);
        }
        if !p.upper {
            self.ensure_upper(parent, CopyMode::Full)?;
        }
        let hard_linked = !c.upper
            && c.lower
                .and_then(|id| self.tree().node(id))
                .is_some_and(|n| !is_dir && n.nlink > 1);
        if hard_linked {
            // Its other names must count one link less: copy it up under all of them, so the
            // upper's link count is the truth once this name goes (kernel overlayfs without
            // index=on keeps reporting the lower count).
            self.ensure_upper(ino, CopyMode::Full)?;
        }
        let dir = match dir.take() {
            Some(d) => d,
            None => self.upper_dir(&ppath)?,
        };
        // What it answers once unlinked, for open files: taken while its entry is there.
        let last = self.last_attr(ino, Some(&dir), &join(&ppath, name));
        let removed = if self.lower_child(&p, name).is_some() {
            self.upper.whiteout(&dir, name)
        } else if c.upper && is_dir {
            // Only whiteouts can be left in an empty merged directory's upper copy.
            remove_tree(&dir, name)
        } else if c.upper {
            dir.unlink(name, false)
        } else {
            Ok(())
        };
        if is_dir {
            // The upper directories held open by path may include the one gone (or half
            // gone, on an error).
            self.upper.forget_dirs();
        }
        removed.map_err(errno)?;
        if is_dir {
            self.dirs_changed(parent);
        }
        let mut st = self.write_inodes()?;
        st.unbind(&(parent, name.to_os_string()));
        st.remember(ino, last);
        Ok(())
    }

    /// `ino`'s upper entry at `path` (in `dir`, its parent's upper directory, if open) as it
    /// is before a change may take its last name: its attributes and, for a file, the file
    /// itself (`None` when it has no upper entry: a lower node answers for itself).
    pub(super) fn last_attr(&self, ino: Ino, dir: Option<&DirFd>, path: &[u8]) -> Option<Last> {
        let i = self.inode(ino).ok().filter(|i| i.upper && i.names <= 1)?;
        if i.is_dir() {
            // A directory answers as it was, merged link count included.
            let attr = self.attr(ino, &i, path).ok()?;
            return Some(Last { attr, file: None });
        }
        // Descriptors the daemon never hears of (`O_PATH` ones) may still reach the file, so
        // it is kept whether or not it is open; an open handle already holds it.
        let file = match self.open_file_of(ino) {
            Some(f) => f,
            None => {
                let name = OsStr::from_bytes(path.rsplit(|&b| b == b'/').next()?);
                let opened = match dir {
                    Some(d) => d.open_file(name, libc::O_PATH, 0),
                    None => self.split(path).ok()?.0.open_file(name, libc::O_PATH, 0),
                };
                Arc::new(opened.ok()?)
            }
        };
        let attr = meta_attr(ino, &file.metadata().ok()?);
        Some(Last {
            attr,
            file: Some(file),
        })
    }
}
