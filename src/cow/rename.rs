//! Renaming in the writable view, in three steps: check (what `rename(2)` allows), move (the
//! upper directory), rebind (the inode table).
//!
//! A lower directory moves with a redirect to its lower path, so it keeps its lower content
//! and renaming it works (no `EXDEV`); a directory without one becomes opaque where a lower
//! entry of its new name would otherwise merge in. The name left behind gets a whiteout if a
//! lower entry has it.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;

use super::copy::Prepared;
use super::inodes::{Child, Inode};
use super::{Cow, errno, join};
use crate::sys::DirFd;
use crate::tree::LowerTree;
use crate::tree::node::NodeId;
use crate::upper::copy_up::CopyMode;
use crate::upper::format::name_is_free;
use crate::upper::{Flag, UpperEntry, remove_tree};
use crate::view::{Ino, OpResult};

/// What a rename does to an existing target (`renameat2(2)` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum How {
    /// Replace it.
    Replace,
    /// Fail if there is one (`RENAME_NOREPLACE`).
    NoReplace,
    /// Swap the two (`RENAME_EXCHANGE`).
    Exchange,
}

impl How {
    /// The flags' meaning; `EINVAL` for flags the view does not support, or both at once.
    fn from_flags(flags: u32) -> OpResult<How> {
        const NOREPLACE: u32 = libc::RENAME_NOREPLACE;
        const EXCHANGE: u32 = libc::RENAME_EXCHANGE;
        match flags {
            0 => Ok(How::Replace),
            NOREPLACE => Ok(How::NoReplace),
            EXCHANGE => Ok(How::Exchange),
            _ => Err(Errno::EINVAL),
        }
    }
}

/// One end of a rename, as the checks see it.
#[derive(Clone, Copy, Debug)]
struct End {
    is_dir: bool,
}

/// The checks of `rename(2)` in its order, over what the merged view shows: `Ok(false)`
/// when source and target are the same name (nothing to do). `into_itself`: the target's
/// directory is the source or below it; `target_empty` is asked only when a directory would
/// replace a directory.
fn check(
    how: How,
    src: End,
    dst: Option<End>,
    same_name: bool,
    into_itself: bool,
    target_empty: impl FnOnce() -> OpResult<bool>,
) -> OpResult<bool> {
    match (how, dst) {
        (How::NoReplace, Some(_)) => return Err(Errno::EEXIST),
        (How::Exchange, None) => return Err(Errno::ENOENT),
        _ => {}
    }
    if same_name {
        return Ok(false);
    }
    if src.is_dir && into_itself {
        return Err(Errno::EINVAL);
    }
    if let (Some(d), false) = (dst, how == How::Exchange) {
        match (src.is_dir, d.is_dir) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            (true, true) if !target_empty()? => return Err(Errno::ENOTEMPTY),
            _ => {}
        }
    }
    Ok(true)
}

/// A rename the checks allowed.
struct Rename<'a> {
    how: How,
    from: (Ino, &'a OsStr),
    to: (Ino, &'a OsStr),
    /// The directories, their paths, the entries and their inodes.
    dirs: [(Inode, Vec<u8>); 2],
    src: (Child, Ino),
    dst: Option<(Child, Ino)>,
}

impl Rename<'_> {
    /// Whether a directory moves or is replaced: upper paths then name other directories.
    fn moves_dir(&self) -> bool {
        self.src.0.file_type == libc::S_IFDIR
            || self.dst.is_some_and(|(d, _)| d.file_type == libc::S_IFDIR)
    }
}

impl Cow {
    /// Renames `parent/name` to `newparent/newname`.
    pub(super) fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: u32,
    ) -> OpResult<()> {
        let how = How::from_flags(flags)?;
        if !name_is_free(newname) {
            // A name the upper's format reserves, as for a new entry.
            return Err(Errno::EINVAL);
        }
        let (from, to) = (
            (parent, OsStr::from_bytes(name)),
            (newparent, OsStr::from_bytes(newname)),
        );
        // A lower file moves copied up whole: its data is staged before `ns` is taken.
        match self.file_to_stage(from) {
            Some(ino) => self.with_data_staged(ino, |staged| {
                self.rename_now(how, from, to, staged.map(|s| (ino, s)))
            }),
            None => self.rename_now(how, from, to, None),
        }
    }

    /// The inode at `from` if it is a file whose move copies data up (one with a lower
    /// node: without an upper entry yet, or maybe a metadata-only one), found without `ns`.
    /// Errors are left for the rename itself to meet and answer.
    fn file_to_stage(&self, (parent, name): (Ino, &OsStr)) -> Option<Ino> {
        let c = self
            .stable(|| {
                let p = self.inode(parent)?;
                if !p.is_dir() {
                    return Ok(None);
                }
                self.resolve_child(&p, &self.path_of(parent)?, name)
            })
            .ok()
            .flatten()?;
        if c.file_type != libc::S_IFREG || c.lower.is_none() {
            return None;
        }
        self.register(parent, name, &c, false).ok()
    }

    /// The rename, holding `ns`; `staged`: the source's data copy made ahead, for the inode
    /// it was made for.
    fn rename_now(
        &self,
        how: How,
        from: (Ino, &OsStr),
        to: (Ino, &OsStr),
        staged: Option<(Ino, Prepared<'_>)>,
    ) -> OpResult<()> {
        let newname = to.1;
        let _change = self.change_names()?;
        let Some(r) = self.rename_check(how, from, to)? else {
            return Ok(());
        };
        // What a replaced target answers once unlinked, for open files.
        let replaced = match (&r.dst, r.how) {
            (Some((_, d)), How::Replace) => {
                let path = join(&r.dirs[1].1, newname);
                Some((*d, self.last_attr(*d, None, &path)))
            }
            _ => None,
        };
        // Used only if the name still leads to the inode it was made for.
        let staged = staged.and_then(|(ino, s)| (ino == r.src.1).then_some(s));
        self.rename_move(&r, staged)?;
        self.rename_rebind(&r)?;
        if let Some((d, last)) = replaced {
            self.write_inodes()?.remember(d, last);
        }
        Ok(())
    }

    /// Resolves both ends and checks them; `None` when there is nothing to do.
    fn rename_check<'a>(
        &self,
        how: How,
        from: (Ino, &'a OsStr),
        to: (Ino, &'a OsStr),
    ) -> OpResult<Option<Rename<'a>>> {
        let (p, np) = (self.inode(from.0)?, self.inode(to.0)?);
        let (ppath, nppath) = (self.path_of(from.0)?, self.path_of(to.0)?);
        let src = self
            .resolve_child(&p, &ppath, from.1)?
            .ok_or(Errno::ENOENT)?;
        let dst = self.resolve_child(&np, &nppath, to.1)?;
        let sino = self.register(from.0, from.1, &src, false)?;
        let dst = match dst {
            Some(d) => Some((d, self.register(to.0, to.1, &d, false)?)),
            None => None,
        };
        let into_itself = self.read_inodes()?.is_ancestor(sino, to.0);
        let end = |c: &Child| End {
            is_dir: c.file_type == libc::S_IFDIR,
        };
        let go = check(
            how,
            end(&src),
            dst.as_ref().map(|(d, _)| end(d)),
            from == to,
            into_itself,
            || self.is_empty_dir(dst.as_ref().map_or(Ino(0), |(_, i)| *i)),
        )?;
        Ok(go.then_some(Rename {
            how,
            from,
            to,
            dirs: [(p, ppath), (np, nppath)],
            src: (src, sino),
            dst,
        }))
    }

    /// Moves the entries in the upper directory: both parents and the moving entries copied
    /// up, then one rename, then the redirects, opaque flags and whiteouts that keep the
    /// merged view what it was with the names swapped.
    fn rename_move(&self, r: &Rename<'_>, staged: Option<Prepared<'_>>) -> OpResult<()> {
        let [(p, ppath), (np, nppath)] = &r.dirs;
        let ((name, newname), (src, sino)) = ((r.from.1, r.to.1), r.src);
        self.ensure_upper(r.from.0, CopyMode::Full)?;
        self.ensure_upper(r.to.0, CopyMode::Full)?;
        self.prepare_move(sino, &src, staged)?;
        if let (How::Exchange, Some((dc, d))) = (r.how, &r.dst) {
            self.prepare_move(*d, dc, None)?;
        }
        let (sdir, ddir) = (self.upper_dir(ppath)?, self.upper_dir(nppath)?);
        let lower_at_src = self.lower_child(p, name).is_some();
        let lower_at_dst = self.lower_child(np, newname).is_some();
        if r.how == How::Exchange {
            let moved = sdir.rename(name, &ddir, newname, libc::RENAME_EXCHANGE);
            self.moved_on_disk(r);
            moved.map_err(errno)?;
            // Directories now stand where the other's lower entry is: keep each merged with
            // its own lower directory (redirect) or cut off from the new place's (opaque).
            self.fix_moved_dir(&ddir, newname, &src, lower_at_dst)?;
            if let Some((dc, _)) = &r.dst {
                self.fix_moved_dir(&sdir, name, dc, lower_at_src)?;
            }
            return Ok(());
        }
        if let Some((d, _)) = &r.dst {
            if d.upper && d.file_type == libc::S_IFDIR {
                // An empty merged directory's upper copy holds only whiteouts.
                let removed = remove_tree(&ddir, newname);
                self.moved_on_disk(r);
                removed.map_err(errno)?;
            }
        }
        let whiteout = match self.upper.classify(&ddir, newname).map_err(errno)? {
            UpperEntry::Whiteout { beside } => Some(beside),
            _ => None,
        };
        if whiteout == Some(false) && src.file_type == libc::S_IFDIR {
            // rename(2) cannot put a directory over a character device.
            self.upper
                .clear_whiteout(&ddir, newname, false)
                .map_err(errno)?;
        }
        let moved = sdir.rename(name, &ddir, newname, 0);
        self.moved_on_disk(r);
        moved.map_err(errno)?;
        if whiteout == Some(true) {
            self.upper
                .clear_whiteout(&ddir, newname, true)
                .map_err(errno)?;
        }
        self.fix_moved_dir(&ddir, newname, &src, lower_at_dst)?;
        if lower_at_src {
            self.upper.whiteout(&sdir, name).map_err(errno)?;
        }
        Ok(())
    }

    /// Right after a step on disk that may have moved or removed a directory, before any
    /// other: the upper directories held open by path may not be at those paths any more.
    fn moved_on_disk(&self, r: &Rename<'_>) {
        if r.moves_dir() {
            self.upper.forget_dirs();
        }
    }

    /// Records the move in the inode table.
    fn rename_rebind(&self, r: &Rename<'_>) -> OpResult<()> {
        let key = |(ino, name): (Ino, &OsStr)| (ino, OsString::from(name));
        let exchanged = match (r.how, &r.dst) {
            (How::Exchange, Some((_, d))) => Some(*d),
            _ => None,
        };
        self.write_inodes()?
            .moved(key(r.from), key(r.to), r.src.1, exchanged);
        if r.moves_dir() {
            self.dirs_changed(r.from.0);
            self.dirs_changed(r.to.0);
        }
        Ok(())
    }

    /// Copies up an entry about to move (with the data copy staged for it, if any): files fully (a metadata-only copy's data is found by
    /// its path, which is about to change), directories alone (their children stay below).
    fn prepare_move(&self, ino: Ino, c: &Child, staged: Option<Prepared<'_>>) -> OpResult<()> {
        if c.file_type != libc::S_IFDIR {
            // Whole, and under all its names if it is a lower hard link.
            return self.ensure_upper_with(ino, CopyMode::Full, staged);
        }
        if !c.upper {
            self.mark_parents_upper(self.inode(ino)?.parent)?;
            self.copy_inode(ino, CopyMode::Full)?;
        }
        Ok(())
    }

    /// After a directory moved to `dir/name`: it keeps its own lower directory through a
    /// redirect to that directory's path, and one without a lower directory becomes opaque
    /// where a lower entry of its new name would otherwise merge in.
    fn fix_moved_dir(
        &self,
        dir: &DirFd,
        name: &OsStr,
        c: &Child,
        lower_at_new: bool,
    ) -> OpResult<()> {
        if c.file_type != libc::S_IFDIR {
            return Ok(());
        }
        match c.lower {
            Some(id) => {
                let path = self.lower_path(id)?;
                let mut abs = b"/".to_vec();
                abs.extend_from_slice(&path);
                self.upper
                    .set_flag(dir, name, Flag::Redirect, &abs)
                    .map_err(errno)
            }
            None if lower_at_new => self
                .upper
                .set_flag(dir, name, Flag::Opaque, b"y")
                .map_err(errno),
            None => Ok(()),
        }
    }

    /// The lower path of a lower directory node.
    fn lower_path(&self, id: NodeId) -> OpResult<Vec<u8>> {
        let tree = self.tree();
        let mut names = Vec::new();
        let mut cur = id;
        while cur != LowerTree::ROOT {
            let n = tree.node(cur).ok_or(Errno::EIO)?;
            let parent = n.parent;
            let e = tree
                .children(parent)
                .iter()
                .find(|e| e.node == cur)
                .ok_or(Errno::EIO)?;
            names.push(tree.name(e).to_vec());
            cur = parent;
            if names.len() > tree.len() {
                return Err(Errno::EIO);
            }
        }
        names.reverse();
        Ok(names.join(&b'/'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIR: End = End { is_dir: true };
    const FILE: End = End { is_dir: false };

    #[test]
    fn rename_flags_table() {
        assert_eq!(How::from_flags(0), Ok(How::Replace));
        assert_eq!(How::from_flags(libc::RENAME_NOREPLACE), Ok(How::NoReplace));
        assert_eq!(How::from_flags(libc::RENAME_EXCHANGE), Ok(How::Exchange));
        let both = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE;
        assert_eq!(How::from_flags(both), Err(Errno::EINVAL));
        assert_eq!(How::from_flags(libc::RENAME_WHITEOUT), Err(Errno::EINVAL));
    }

    #[test]
    fn rename_checks_table() {
        use Errno::{EEXIST, EINVAL, EISDIR, ENOENT, ENOTDIR, ENOTEMPTY};
        use How::*;
        type Case = (How, End, Option<End>, bool, bool, bool, OpResult<bool>);
        // (how, source, target, same name, into itself, target empty, verdict)
        let cases: &[Case] = &[
            (Replace, FILE, None, false, false, true, Ok(true)),
            (Replace, FILE, Some(FILE), false, false, true, Ok(true)),
            (Replace, DIR, None, false, false, true, Ok(true)),
            (Replace, DIR, Some(DIR), false, false, true, Ok(true)),
            (Replace, DIR, Some(DIR), false, false, false, Err(ENOTEMPTY)),
            (Replace, DIR, Some(FILE), false, false, true, Err(ENOTDIR)),
            (Replace, FILE, Some(DIR), false, false, true, Err(EISDIR)),
            (Replace, DIR, None, false, true, true, Err(EINVAL)),
            // A file "into itself" is a file moving into its own directory: fine.
            (Replace, FILE, None, false, true, true, Ok(true)),
            (Replace, FILE, Some(FILE), true, false, true, Ok(false)),
            (Replace, DIR, Some(DIR), true, true, false, Ok(false)),
            (NoReplace, FILE, Some(FILE), false, false, true, Err(EEXIST)),
            (NoReplace, FILE, Some(FILE), true, false, true, Err(EEXIST)),
            (NoReplace, DIR, None, false, false, true, Ok(true)),
            (Exchange, FILE, None, false, false, true, Err(ENOENT)),
            // An exchange swaps whatever the two are, full directories included.
            (Exchange, DIR, Some(FILE), false, false, false, Ok(true)),
            (Exchange, FILE, Some(DIR), false, false, false, Ok(true)),
            (Exchange, DIR, Some(DIR), false, true, true, Err(EINVAL)),
            (Exchange, FILE, Some(FILE), true, false, true, Ok(false)),
        ];
        for &(how, src, dst, same, into, empty, want) in cases {
            let mut asked = false;
            let got = check(how, src, dst, same, into, || {
                asked = true;
                Ok(empty)
            });
            assert_eq!(got, want, "{how:?} {src:?} {dst:?} same={same} into={into}");
            let replaces_dir = how != Exchange && src.is_dir && dst.is_some_and(|d| d.is_dir);
            if !replaces_dir {
                assert!(
                    !asked,
                    "emptiness asked needlessly: {how:?} {src:?} {dst:?}"
                );
            }
        }
    }
}
