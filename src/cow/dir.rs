//! Directory listings of the writable view: the merged listing, the snapshot a listing from
//! its start takes, readdir over it, and merged directories' link counts.
//!
//! A listing is the lower directory's names and the upper directory's, sorted, without the
//! names the upper whites out; an upper entry stands for its name whatever is below.
//!
//! Directories need no handle (the kernel skips opendir and releasedir): a readdir from
//! offset 0 takes a snapshot and numbers it, and every offset it hands out carries that
//! number above its position, so a listing read in several requests goes on in its own
//! snapshot while the directory changes, as it would with a handle. The snapshot goes when
//! its end is read (the request past the last entry); a few are kept for listings left
//! unfinished, and an offset whose snapshot is gone resumes at its position in a new one.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nix::errno::Errno;

use super::inodes::Child;
use super::{Cow, errno, lock};
use crate::tree::node::NodeId;
use crate::view::{Attr, DirListing, Fh, Ino, OpResult};

/// A directory's entries: `(name, inode, S_IFMT bits)`.
type Listing = Vec<(OsString, Ino, u32)>;

/// Snapshots kept for listings not read to their end: past this, the oldest goes.
const KEPT_LISTINGS: usize = 256;

/// The snapshots of listings being read, by number (see the module header).
#[derive(Default)]
pub(super) struct Listings {
    last: u32,
    pub(super) map: BTreeMap<u32, (Ino, Arc<Listing>)>,
}

/// A readdir offset: the snapshot's number above, the position (`.` 0→1, `..` 1→2, entry
/// `k` at `k + 3`) below.
fn dir_offset(snapshot: u32, pos: u64) -> u64 {
    (u64::from(snapshot) << 32) | pos
}

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

    /// Opens a directory (when the kernel asks: it is told no handle is needed).
    pub(super) fn opendir(&self, ino: Ino) -> OpResult<Fh> {
        let i = self.inode(ino)?;
        if !i.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        if i.unlinked {
            return Err(Errno::ENOENT);
        }
        Ok(Fh::NONE)
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
        if let Some(l) = i.lower.filter(|_| !i.upper && !i.unlinked) {
            return self.take_lower_listing(ino, l);
        }
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

    /// [`Cow::take_listing`] of a directory with no upper entry (nearly every one of a
    /// walk): the lower directory's entries, already sorted, registered under one hold of
    /// the table lock.
    fn take_lower_listing(&self, ino: Ino, l: NodeId) -> OpResult<Listing> {
        let tree = self.tree();
        let kids = tree.children(l);
        let mut items = Vec::with_capacity(kids.len());
        let mut t = self.write_inodes()?;
        for e in kids {
            let Some(n) = tree.node(e.node) else {
                continue;
            };
            let name = OsStr::from_bytes(tree.name(e));
            let c = Child {
                lower: Some(e.node),
                upper: false,
                linked: None,
                file_type: n.kind.file_type_bits(),
            };
            let cino = t.register(ino, name, &c, false);
            items.push((name.to_os_string(), cino, c.file_type));
        }
        Ok(items)
    }

    /// Lists a directory from `offset` (see [`dir_offset`]).
    pub(super) fn readdir(
        &self,
        ino: Ino,
        _fh: Fh,
        offset: u64,
        add: &mut dyn FnMut(DirListing<'_>) -> bool,
    ) -> OpResult<()> {
        let (snapshot, pos) = ((offset >> 32) as u32, offset & u64::from(u32::MAX));
        let kept = match pos {
            0 => None,
            _ => self.kept_listing(snapshot, ino)?,
        };
        let (snapshot, items) = match kept {
            Some(items) => (snapshot, items),
            None => self.keep_listing(ino, Arc::new(self.take_listing(ino)?))?,
        };
        let parent = self.inode(ino)?.parent;
        let mut any = false;
        let mut add = |l: DirListing<'_>| {
            any = true;
            add(l)
        };
        let dot = |name: &'static [u8], ino, pos| DirListing {
            ino,
            next: dir_offset(snapshot, pos),
            file_type: libc::S_IFDIR,
            name,
        };
        if pos == 0 && add(dot(b".", ino, 1)) {
            return Ok(());
        }
        if pos <= 1 && add(dot(b"..", parent, 2)) {
            return Ok(());
        }
        let skip = pos.saturating_sub(2) as usize;
        for (k, (name, cino, ft)) in items.iter().enumerate().skip(skip) {
            let full = add(DirListing {
                ino: *cino,
                next: dir_offset(snapshot, k as u64 + 3),
                file_type: *ft,
                name: name.as_bytes(),
            });
            if full {
                break;
            }
        }
        if !any {
            // The end, read: this listing is done with its snapshot.
            lock(&self.listings)?.map.remove(&snapshot);
        }
        Ok(())
    }

    /// The snapshot numbered `snapshot`, if kept and of directory `ino`.
    fn kept_listing(&self, snapshot: u32, ino: Ino) -> OpResult<Option<Arc<Listing>>> {
        let kept = lock(&self.listings)?;
        Ok(kept
            .map
            .get(&snapshot)
            .filter(|(dir, _)| *dir == ino)
            .map(|(_, items)| items.clone()))
    }

    /// Numbers and keeps a snapshot just taken of directory `ino`.
    fn keep_listing(&self, ino: Ino, items: Arc<Listing>) -> OpResult<(u32, Arc<Listing>)> {
        let mut kept = lock(&self.listings)?;
        if kept.map.len() >= KEPT_LISTINGS {
            kept.map.pop_first();
        }
        // Never 0, so an offset of 1 or 2 from no snapshot (a seek) is no snapshot's.
        kept.last = kept.last.checked_add(1).unwrap_or(1);
        let n = kept.last;
        kept.map.insert(n, (ino, items.clone()));
        Ok((n, items))
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
