//! Directory listings of the writable view: the merged listing, the snapshot an opendir
//! takes, readdir over it, and merged directories' link counts.
//!
//! A listing is the lower directory's names and the upper directory's, sorted, without the
//! names the upper whites out; an upper entry stands for its name whatever is below.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nix::errno::Errno;

use super::io::{Handle, Listing};
use super::{Cow, errno, lock};
use crate::tree::node::NodeId;
use crate::view::{Attr, DirListing, Fh, Ino, OpResult};

impl Cow {
    /// Visits the merged entries of a directory, sorted by name: `f(name, lower, upper)`
    /// returns true to stop; `lower` is the lower node of a name the upper leaves alone.
    pub(super) fn merged_listing(
        &self,
        ino: Ino,
        mut f: impl FnMut(&OsStr, Option<NodeId>, bool) -> bool,
    ) -> OpResult<()> {
        let i = self.inode(ino)?;
        // name → (lower node, upper entry, whiteout)
        let mut names: BTreeMap<OsString, (Option<NodeId>, bool, bool)> = BTreeMap::new();
        let tree = self.tree();
        if let Some(l) = i.lower {
            for e in tree.children(l) {
                names.insert(
                    OsStr::from_bytes(tree.name(e)).to_os_string(),
                    (Some(e.node), false, false),
                );
            }
        }
        if i.upper {
            let path = self.path_of(ino)?;
            let d = self.upper_dir(&path)?;
            for (n, wh) in self.upper.list(&d).map_err(errno)? {
                let slot = names.entry(n).or_insert((None, false, false));
                slot.1 = !wh;
                slot.2 = wh;
            }
        }
        for (n, (lower, up, wh)) in &names {
            if *wh {
                continue;
            }
            if f(n, if *up { None } else { *lower }, *up) {
                break;
            }
        }
        Ok(())
    }

    /// The link count of a merged directory, from the cache or counted.
    pub(super) fn cached_nlink(&self, ino: Ino) -> OpResult<u32> {
        if let Some(n) = lock(&self.dir_nlink)?.get(&ino) {
            return Ok(*n);
        }
        let before = self.names.load(Ordering::SeqCst);
        let n = self.merged_nlink(ino)?;
        self.keep_nlink(ino, n, before)?;
        Ok(n)
    }

    /// Caches a link count counted since the namespace generation was `before`, unless a name
    /// changed since: a change made after the listing may have dropped the cached count
    /// already, and this one would stay wrong.
    pub(super) fn keep_nlink(&self, ino: Ino, n: u32, before: u64) -> OpResult<()> {
        let mut cache = lock(&self.dir_nlink)?;
        if before % 2 == 0 && self.names.load(Ordering::SeqCst) == before {
            cache.insert(ino, n);
        }
        Ok(())
    }

    /// Forgets the cached link count of a directory whose subdirectories changed.
    pub(super) fn dirs_changed(&self, dir: Ino) {
        if let Ok(mut m) = self.dir_nlink.lock() {
            m.remove(&dir);
        }
    }

    /// `2 + subdirectories` of a merged directory.
    pub(super) fn merged_nlink(&self, ino: Ino) -> OpResult<u32> {
        let i = self.inode(ino)?;
        let path = self.path_of(ino)?;
        let tree = self.tree();
        let mut n = 2u32;
        let mut err = None;
        self.merged_listing(ino, |name, lower, upper| {
            let is_dir = if upper {
                match self.resolve_child(&i, &path, name) {
                    Ok(c) => c.is_some_and(|c| c.file_type == libc::S_IFDIR),
                    Err(e) => {
                        err = Some(e);
                        return true;
                    }
                }
            } else {
                lower
                    .and_then(|id| tree.node(id))
                    .is_some_and(|n| n.is_dir())
            };
            n += u32::from(is_dir);
            false
        })?;
        err.map_or(Ok(n), Err)
    }

    /// Opens a directory; its listing is taken at the first readdir.
    pub(super) fn opendir(&self, ino: Ino) -> OpResult<Fh> {
        let i = self.inode(ino)?;
        if !i.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if i.unlinked {
            return Err(Errno::ENOENT);
        }
        self.new_handle(ino, Handle::Dir(None))
    }

    /// Takes a snapshot of a directory's merged listing.
    fn take_listing(&self, ino: Ino) -> OpResult<Listing> {
        // The snapshot is taken with the namespace still: a directory renamed or removed
        // meanwhile is simply gone (ENOENT), as on kernel overlayfs.
        let _ns = lock(&self.ns)?;
        let i = self.inode(ino)?;
        let path = self
            .path_of(ino)
            .map_err(|e| if e == Errno::ESTALE { Errno::ENOENT } else { e })?;
        let mut items = Vec::new();
        let mut err = None;
        self.merged_listing(ino, |name, _, _| {
            match self.resolve_child(&i, &path, name) {
                Ok(Some(c)) => match self.register(ino, name, &c, false) {
                    Ok(cino) => items.push((name.to_os_string(), cino, c.file_type)),
                    Err(e) => err = Some(e),
                },
                Ok(None) => {}
                Err(e) => err = Some(e),
            }
            err.is_some()
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(items),
        }
    }

    /// Lists an opened directory from `offset` (`.` 0→1, `..` 1→2, entries after).
    pub(super) fn readdir(
        &self,
        ino: Ino,
        fh: Fh,
        offset: u64,
        add: &mut dyn FnMut(DirListing<'_>) -> bool,
    ) -> OpResult<()> {
        let items = match self.dir_handle(fh)? {
            Some(items) => items,
            None => self.keep_listing(fh, Arc::new(self.take_listing(ino)?))?,
        };
        let parent = self.inode(ino)?.parent;
        let dot = |name: &'static [u8], ino, next| DirListing {
            ino,
            next,
            file_type: libc::S_IFDIR,
            name,
        };
        if offset == 0 && add(dot(b".", ino, 1)) {
            return Ok(());
        }
        if offset <= 1 && add(dot(b"..", parent, 2)) {
            return Ok(());
        }
        let skip = offset.saturating_sub(2) as usize;
        for (k, (name, cino, ft)) in items.iter().enumerate().skip(skip) {
            let full = add(DirListing {
                ino: *cino,
                next: k as u64 + 3,
                file_type: *ft,
                name: name.as_bytes(),
            });
            if full {
                break;
            }
        }
        Ok(())
    }

    /// For readdirplus: counts a lookup of a listed entry and returns its attributes.
    pub(super) fn listed_attr(&self, parent: Ino, l: &DirListing<'_>) -> OpResult<Attr> {
        if l.name == b"." || l.name == b".." {
            return self.getattr(l.ino, None);
        }
        self.lookup(parent, l.name)
    }

    /// Syncs a directory's upper copy.
    pub(super) fn fsyncdir(&self, ino: Ino) -> OpResult<()> {
        let dir = self.stable(|| match self.inode(ino)?.upper {
            true => self.upper_dir(&self.path_of(ino)?).map(Some),
            false => Ok(None),
        })?;
        match dir {
            Some(d) => d.sync().map_err(errno),
            None => Ok(()),
        }
    }
}
