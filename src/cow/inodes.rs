//! The writable view's inode table: every inode the kernel knows, where it stands in the
//! merged namespace, and what backs it. Pure bookkeeping, no I/O.
//!
//! A name `(parent, name)` leads to at most one inode. An inode keeps one of its names (for
//! building its path) and counts how many lead to it (several for a hard link); losing the
//! last one makes it unlinked: it lives on through open files and kernel references only, and
//! is forgotten once the kernel drops the last of those.
//!
//! Numbers: a lower node keeps its own ([`Ino::of`]) through copy-up and renames; entries born
//! in the upper get fresh numbers from a counter that is never reused, so the kernel never
//! sees one number stand for two files.
//! Dependencies: view (Ino, OpResult), tree (NodeId), nix (Errno).

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::hash::BuildHasher;
use std::num::NonZeroU8;
use std::ops::Deref;
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use hashbrown::HashTable;
use nix::errno::Errno;

use crate::tree::node::NodeId;
use crate::view::{Attr, Ino, OpResult};

/// A name: the directory inode and the name in it.
pub(super) type Key = (Ino, OsString);

/// A name as the table keeps it, in 16 bytes: up to [`Name::INLINE`] bytes in place (nearly
/// every name of an image), longer ones shared on the heap. A walk of a big image keeps one
/// per inode and one per binding, so no allocation for the common case.
#[derive(Clone)]
pub(super) enum Name {
    /// The bytes, and their count plus one (which leaves a niche for the other variant).
    Short {
        bytes: [u8; Name::INLINE],
        len: NonZeroU8,
    },
    Long(Arc<Box<OsStr>>),
}

impl Name {
    /// The longest name kept in place.
    pub const INLINE: usize = 15;

    pub fn new(name: &OsStr) -> Name {
        let b = name.as_bytes();
        // The length is checked before it is narrowed: names run to 255 bytes and more.
        let short = (b.len() <= Self::INLINE).then(|| NonZeroU8::new(b.len() as u8 + 1));
        match short.flatten() {
            Some(len) => {
                let mut bytes = [0; Self::INLINE];
                bytes[..b.len()].copy_from_slice(b);
                Name::Short { bytes, len }
            }
            _ => Name::Long(Arc::new(name.into())),
        }
    }
}

impl Deref for Name {
    type Target = OsStr;
    fn deref(&self) -> &OsStr {
        match self {
            Name::Short { bytes, len } => {
                OsStr::from_bytes(&bytes[..usize::from(len.get() - 1).min(Self::INLINE)])
            }
            Name::Long(n) => n,
        }
    }
}

impl AsRef<OsStr> for Name {
    fn as_ref(&self) -> &OsStr {
        self
    }
}

impl std::fmt::Debug for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// One binding of the name table: `(parent, name)` leads to `ino`.
#[derive(Debug)]
struct Binding {
    parent: Ino,
    name: Name,
    ino: Ino,
}

/// The table's hashes: a folded multiply, keyed per table (names come from users too), far
/// cheaper than SipHash for the integer and short-name keys of every lookup.
#[derive(Debug)]
struct Hash(u64);

impl Hash {
    fn new() -> Hash {
        Hash(RandomState::new().hash_one(0x9E37_79B9_7F4A_7C15u64) | 1)
    }

    fn mix(h: u64, v: u64) -> u64 {
        let m = u128::from(h ^ v) * u128::from(0x9E37_79B9_7F4A_7C15u64);
        (m as u64) ^ ((m >> 64) as u64)
    }

    /// A hash as the slot indexes use it: 32 bits, kept with each slot number, so growing
    /// an index and passing over other names read no slot (each a cache miss on a big
    /// table). Repeated in the high half, where the table takes its tag bits from.
    fn wide(h: u32) -> u64 {
        (u64::from(h) << 32) | u64::from(h)
    }

    fn ino(&self, ino: Ino) -> u64 {
        Self::wide(Self::mix(self.0, ino.0) as u32)
    }

    fn name(&self, parent: Ino, name: &OsStr) -> u64 {
        let b = name.as_bytes();
        let mut h = Self::mix(self.0, parent.0);
        for c in b.chunks(8) {
            let mut w = [0; 8];
            w[..c.len()].copy_from_slice(c);
            h = Self::mix(h.rotate_left(23), u64::from_le_bytes(w));
        }
        Self::wide(Self::mix(h, b.len() as u64) as u32)
    }
}

/// A slot number in an index, with its key's hash.
#[derive(Clone, Copy, Debug)]
struct Filed {
    slot: u32,
    hash: u32,
}

impl Filed {
    fn new(slot: u32, h: u64) -> Filed {
        Filed {
            slot,
            hash: h as u32,
        }
    }

    /// Whether this is filed under hash `h` (most other keys differ there already).
    fn under(&self, h: u64) -> bool {
        self.hash == h as u32
    }
}

/// What the table knows of one inode.
#[derive(Clone, Debug)]
pub(super) struct Inode {
    /// Where it is: parent inode and name (the root is its own parent, with an empty name).
    pub parent: Ino,
    pub name: Name,
    /// The lower node it continues: its data and attributes until copied up; for a directory,
    /// the lower directory merged under it (`None` when opaque or born in the upper).
    pub lower: Option<NodeId>,
    /// It has an entry in the upper directory.
    pub upper: bool,
    /// `S_IFMT` bits.
    pub file_type: u32,
    /// Kernel references (lookups minus forgets).
    pub lookups: u64,
    /// Names in the merged view known to lead here (several for a hard link).
    pub names: u32,
    /// No name leads here any more: the inode lives on only through open files.
    pub unlinked: bool,
    /// What it was when it lost its last name, if it had an upper entry then: it answers
    /// for it as long as open files still reach it. Boxed: rare, and every inode of a walk
    /// carries the field.
    pub last: Option<Box<Last>>,
    /// Its own name (`parent`, `name`) leads here, filed in the table's `at` index under
    /// this inode's slot.
    bound: bool,
}

/// An upper entry that lost its last name, as it was then.
#[derive(Clone, Debug)]
pub(super) struct Last {
    /// Its attributes then (link count 0).
    pub attr: Attr,
    /// The file itself (an `O_PATH` descriptor), whose attributes still change through the
    /// descriptors open on it.
    pub file: Option<Arc<File>>,
}

impl Inode {
    /// An inode just found at `(parent, name)`, not yet counted anywhere.
    pub fn at(parent: Ino, name: &OsStr, c: &Child) -> Inode {
        Inode {
            parent,
            name: Name::new(name),
            lower: c.lower,
            upper: c.upper,
            file_type: c.file_type,
            lookups: 0,
            names: 0,
            unlinked: false,
            last: None,
            bound: false,
        }
    }

    /// Whether this is a directory.
    pub fn is_dir(&self) -> bool {
        self.file_type == libc::S_IFDIR
    }
}

/// What the merged view shows under a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Child {
    /// The lower node it continues (see [`Inode::lower`]).
    pub lower: Option<NodeId>,
    /// It has an upper entry.
    pub upper: bool,
    /// The host inode of its upper file, when that file has several names (a hard link).
    pub linked: Option<u64>,
    /// `S_IFMT` bits.
    pub file_type: u32,
}

/// The table.
///
/// Inodes sit in slots (reused after a forget) indexed by number, rather than in a map of
/// whole inodes: a hash table keeps up to twice the room its entries need, which on a walk of
/// a big image is most of the daemon's memory, and an index of slot numbers keeps that room
/// small.
#[derive(Debug)]
pub(super) struct Inodes {
    slots: Vec<(Ino, Inode)>,
    /// Slots free for reuse.
    free: Vec<u32>,
    /// Inode number → slot.
    by_ino: HashTable<Filed>,
    /// Names: `(parent, name)` → inode. A name that is its inode's own is filed by slot
    /// number and hash, 8 bytes, with the name read from the slot: that is every name of a
    /// walk.
    at: HashTable<Filed>,
    /// The other names (hard links, a name left bound while its inode moved on).
    extra: HashTable<Binding>,
    hash: Hash,
    /// Host inode number of a hard-linked upper file → its inode here, so every name of it
    /// answers one inode, across mounts too.
    by_upper: HashMap<u64, Ino>,
    /// The next number for an entry born in the upper.
    next: u64,
}

impl Inodes {
    /// A table holding the root, whose lower directory is `root_lower` (none when the upper
    /// root is opaque); numbers from `first_free` on are free for entries born in the upper.
    pub fn new(first_free: u64, root_lower: Option<NodeId>) -> Inodes {
        let root = Inode {
            parent: Ino::ROOT,
            name: Name::new(OsStr::new("")),
            lower: root_lower,
            upper: true,
            file_type: libc::S_IFDIR,
            lookups: 1,
            names: 0,
            unlinked: false,
            last: None,
            bound: false,
        };
        let mut t = Inodes {
            slots: Vec::new(),
            free: Vec::new(),
            by_ino: HashTable::new(),
            at: HashTable::new(),
            extra: HashTable::new(),
            hash: Hash::new(),
            by_upper: HashMap::new(),
            next: first_free,
        };
        t.insert(Ino::ROOT, root);
        t
    }

    /// The slot of `ino`.
    fn slot(&self, ino: Ino) -> Option<u32> {
        let (slots, h) = (&self.slots, self.hash.ino(ino));
        self.by_ino
            .find(h, |f| f.under(h) && slots[f.slot as usize].0 == ino)
            .map(|f| f.slot)
    }

    fn get_mut(&mut self, ino: Ino) -> Option<&mut Inode> {
        let s = self.slot(ino)?;
        Some(&mut self.slots[s as usize].1)
    }

    fn contains(&self, ino: Ino) -> bool {
        self.slot(ino).is_some()
    }

    /// Number of inodes.
    fn len(&self) -> usize {
        self.by_ino.len()
    }

    /// Puts `inode` at `ino`, replacing what was there.
    fn insert(&mut self, ino: Ino, inode: Inode) -> &mut Inode {
        if let Some(s) = self.slot(ino) {
            self.unfile(s);
            self.slots[s as usize].1 = Inode {
                bound: false,
                ..inode
            };
            self.refile(s);
            return &mut self.slots[s as usize].1;
        }
        let s = self.insert_new(ino, inode);
        &mut self.slots[s as usize].1
    }

    /// Puts `inode` at `ino`, which has no slot yet; returns its slot.
    fn insert_new(&mut self, ino: Ino, inode: Inode) -> u32 {
        let s = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = (ino, inode);
                s
            }
            None => {
                // Slot numbers are u32: the kernel cannot hold 4 Gi inodes of one mount.
                self.slots.push((ino, inode));
                (self.slots.len() - 1) as u32
            }
        };
        let h = self.hash.ino(ino);
        self.by_ino
            .insert_unique(h, Filed::new(s, h), |f| Hash::wide(f.hash));
        s
    }

    /// Forgets `ino`, freeing its slot.
    fn remove(&mut self, ino: Ino) {
        let h = self.hash.ino(ino);
        let slots = &self.slots;
        if let Ok(e) = self
            .by_ino
            .find_entry(h, |f| f.under(h) && slots[f.slot as usize].0 == ino)
        {
            let s = e.remove().0.slot;
            self.unfile(s);
            // Drops what the inode held on the heap now, not when the slot is reused.
            let i = &mut self.slots[s as usize].1;
            i.name = Name::new(OsStr::new(""));
            i.last = None;
            self.free.push(s);
        }
    }

    /// An inode.
    pub fn get(&self, ino: Ino) -> Option<&Inode> {
        let s = self.slot(ino)?;
        Some(&self.slots[s as usize].1)
    }

    /// Checks that every name is filed once: by its inode's slot in `at` exactly when it is
    /// that inode's own name and the slot says so, else in `extra`.
    #[cfg(test)]
    fn check(&self) {
        let mut filed = 0;
        for s in self.at.iter().map(|f| f.slot) {
            let (ino, i) = &self.slots[s as usize];
            assert!(i.bound, "slot {s} filed but not bound");
            assert_eq!(self.slot(*ino), Some(s));
            assert!(
                self.extra_get(i.parent, &i.name).is_none(),
                "{:?} twice",
                i.name
            );
            filed += 1;
        }
        let bound = self
            .by_ino
            .iter()
            .filter(|f| self.slots[f.slot as usize].1.bound)
            .count();
        assert_eq!(filed, bound);
        for b in self.extra.iter() {
            assert!(
                self.at_find(b.parent, &b.name).is_none(),
                "{:?} twice",
                b.name
            );
        }
    }

    /// The inode a name leads to, if known.
    #[cfg(test)]
    pub fn named(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.at_get(parent, name)
    }

    /// The slot whose own name `(parent, name)` is filed in `at`.
    fn at_find(&self, parent: Ino, name: &OsStr) -> Option<u32> {
        self.at_find_hashed(self.hash.name(parent, name), parent, name)
    }

    /// [`Inodes::at_find`] with the name's hash already made.
    fn at_find_hashed(&self, h: u64, parent: Ino, name: &OsStr) -> Option<u32> {
        let slots = &self.slots;
        self.at
            .find(h, |f| {
                let i = &slots[f.slot as usize].1;
                f.under(h) && i.parent == parent && *i.name == *name
            })
            .map(|f| f.slot)
    }

    /// Files slot `s` in `at` under its inode's own name, which leads nowhere yet.
    fn file(&mut self, s: u32) {
        let i = &self.slots[s as usize].1;
        self.file_hashed(s, self.hash.name(i.parent, &i.name));
    }

    /// [`Inodes::file`] with the name's hash already made.
    fn file_hashed(&mut self, s: u32, h: u64) {
        self.at
            .insert_unique(h, Filed::new(s, h), |f| Hash::wide(f.hash));
        self.slots[s as usize].1.bound = true;
    }

    /// Takes slot `s` out of `at` before its inode's own name changes or the slot goes: the
    /// name keeps leading to the inode, among the other names.
    fn unfile(&mut self, s: u32) {
        let i = &self.slots[s as usize].1;
        if !i.bound {
            return;
        }
        let (h, b) = (
            self.hash.name(i.parent, &i.name),
            Binding {
                parent: i.parent,
                name: i.name.clone(),
                ino: self.slots[s as usize].0,
            },
        );
        if let Ok(e) = self.at.find_entry(h, |f| f.slot == s) {
            e.remove();
        }
        self.slots[s as usize].1.bound = false;
        self.extra_insert(b);
    }

    /// Files slot `s` by its inode's own name if that name, among the other names, leads to
    /// it.
    fn refile(&mut self, s: u32) {
        let (ino, i) = &self.slots[s as usize];
        let (ino, parent, name) = (*ino, i.parent, i.name.clone());
        if self.extra_get(parent, &name) == Some(ino) {
            self.extra_remove(parent, &name);
            self.file(s);
        }
    }

    /// Moves the inode's own name to `(parent, name)`.
    fn set_place(&mut self, ino: Ino, parent: Ino, name: &OsStr) {
        let Some(s) = self.slot(ino) else {
            return;
        };
        self.unfile(s);
        let i = &mut self.slots[s as usize].1;
        (i.parent, i.name) = (parent, Name::new(name));
        self.refile(s);
    }

    /// The inode the name `(parent, name)` leads to.
    fn at_get(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        match self.at_find(parent, name) {
            Some(s) => Some(self.slots[s as usize].0),
            None => self.extra_get(parent, name),
        }
    }

    /// Forgets where the name `(parent, name)` leads.
    fn at_remove(&mut self, parent: Ino, name: &OsStr) -> Option<Ino> {
        match self.at_find(parent, name) {
            Some(s) => {
                let h = self.hash.name(parent, name);
                if let Ok(e) = self.at.find_entry(h, |f| f.slot == s) {
                    e.remove();
                }
                self.slots[s as usize].1.bound = false;
                Some(self.slots[s as usize].0)
            }
            None => self.extra_remove(parent, name),
        }
    }

    /// Makes the name `(parent, name)` lead to `ino`; returns where it led before.
    fn at_insert(&mut self, parent: Ino, name: &OsStr, ino: Ino) -> Option<Ino> {
        let old = self.at_remove(parent, name);
        let own = self.slot(ino).filter(|&s| {
            let i = &self.slots[s as usize].1;
            !i.bound && i.parent == parent && *i.name == *name
        });
        match own {
            Some(s) => self.file(s),
            None => self.extra_insert(Binding {
                parent,
                name: Name::new(name),
                ino,
            }),
        }
        old
    }

    fn extra_get(&self, parent: Ino, name: &OsStr) -> Option<Ino> {
        self.extra_get_hashed(self.hash.name(parent, name), parent, name)
    }

    fn extra_get_hashed(&self, h: u64, parent: Ino, name: &OsStr) -> Option<Ino> {
        if self.extra.is_empty() {
            return None;
        }
        self.extra
            .find(h, |b| b.parent == parent && *b.name == *name)
            .map(|b| b.ino)
    }

    fn extra_remove(&mut self, parent: Ino, name: &OsStr) -> Option<Ino> {
        if self.extra.is_empty() {
            return None;
        }
        let h = self.hash.name(parent, name);
        let e = self
            .extra
            .find_entry(h, |b| b.parent == parent && *b.name == *name)
            .ok()?;
        Some(e.remove().0.ino)
    }

    /// Adds a binding for a name that leads nowhere yet.
    fn extra_insert(&mut self, b: Binding) {
        let hash = &self.hash;
        self.extra
            .insert_unique(hash.name(b.parent, &b.name), b, |b| {
                hash.name(b.parent, &b.name)
            });
    }

    fn fresh_number(&mut self) -> Ino {
        self.next += 1;
        Ino(self.next - 1)
    }

    /// Makes `key` lead to `ino`; an inode it led to before loses that name.
    pub fn bind(&mut self, key: Key, ino: Ino) {
        self.bind_name(key.0, &key.1, ino);
    }

    /// [`Inodes::bind`] of a borrowed name: a walk binds a name per lookup.
    fn bind_name(&mut self, parent: Ino, name: &OsStr, ino: Ino) {
        match self.at_insert(parent, name, ino) {
            Some(old) if old == ino => return,
            Some(old) => self.lose_name(old, parent, name),
            None => {}
        }
        let relinked = self.get_mut(ino).is_some_and(|i| {
            i.names += 1;
            let was = i.unlinked;
            if was {
                i.unlinked = false;
                i.last = None;
            }
            was
        });
        if relinked {
            self.set_place(ino, parent, name);
        }
    }

    /// Keeps `attr` (taken before its entry went) as what `ino` answers if it is now
    /// unlinked.
    pub fn remember(&mut self, ino: Ino, last: Option<Last>) {
        if let Some(i) = self.get_mut(ino).filter(|i| i.unlinked) {
            i.last = last.map(|l| {
                Box::new(Last {
                    attr: Attr { nlink: 0, ..l.attr },
                    ..l
                })
            });
        }
    }

    /// Removes the name `key`: the inode it led to moves to another of its names, or is
    /// unlinked when it has none left.
    pub fn unbind(&mut self, key: &Key) {
        if let Some(ino) = self.at_remove(key.0, &key.1) {
            self.lose_name(ino, key.0, &key.1);
        }
    }

    fn lose_name(&mut self, ino: Ino, parent: Ino, name: &OsStr) {
        let Some(i) = self.get_mut(ino) else {
            return;
        };
        i.names = i.names.saturating_sub(1);
        if (i.parent, &*i.name) != (parent, name) {
            return;
        }
        if i.names == 0 {
            i.unlinked = true;
            return;
        }
        // A hard link with other names: rare, so a scan is fine.
        // Its own name has just gone from `at`, so the others are all in `extra`.
        let other = self
            .extra
            .iter()
            .find(|b| b.ino == ino)
            .map(|b| (b.parent, b.name.clone()));
        if let Some((p, n)) = other {
            self.set_place(ino, p, &n);
        }
    }

    /// Registers (or refreshes) the inode the merged view shows at `(parent, name)` and counts
    /// a kernel reference if asked. A name already known keeps its inode; otherwise the inode
    /// is the one of the same hard-linked upper file, or the lower node's own number if no
    /// other inode holds it, or the one already showing the same lower hard link under
    /// another name; else a fresh number.
    pub fn register(&mut self, parent: Ino, name: &OsStr, c: &Child, count: bool) -> Ino {
        let linked = c.linked;
        // One hash of the name for every look at it: a walk registers a name per entry.
        let h = self.hash.name(parent, name);
        let known = match self.at_find_hashed(h, parent, name) {
            Some(s) => Some(self.slots[s as usize].0),
            None => self.extra_get_hashed(h, parent, name),
        };
        let ino = match known {
            Some(ino) => ino,
            None => {
                let by_upper = linked
                    .and_then(|u| self.by_upper.get(&u).copied())
                    .filter(|&i| self.contains(i));
                let by_lower = c.lower.map(Ino::of).filter(|&i| !self.contains(i));
                // A lower hard link seen under a second name shares the inode.
                let shared = c.lower.map(Ino::of).filter(|i| {
                    c.file_type != libc::S_IFDIR && self.get(*i).is_some_and(|n| n.lower == c.lower)
                });
                match by_upper.or(by_lower).or(shared) {
                    Some(i) => i,
                    None => self.fresh_number(),
                }
            }
        };
        let (s, new) = match self.slot(ino) {
            Some(s) => (s, false),
            None => (self.insert_new(ino, Inode::at(parent, name, c)), true),
        };
        let entry = &mut self.slots[s as usize].1;
        // A lookup that resolved before a copy-up of this inode can register after it. The
        // daemon is the only writer of the upper, so a live inode's upper copy never goes away
        // and a stale resolution must not mark the inode lower-only again.
        entry.upper |= c.upper;
        entry.lower = c.lower;
        entry.file_type = c.file_type;
        if count {
            entry.lookups += 1;
        }
        match (known, new) {
            (Some(_), _) => {}
            // A new inode at a name that leads nowhere: that is its own name, filed by slot,
            // what `bind_name` would come to after looking the name up twice more.
            (None, true) => {
                entry.names = 1;
                self.file_hashed(s, h);
            }
            (None, false) => self.bind_name(parent, name, ino),
        }
        if let Some(u) = linked {
            self.by_upper.insert(u, ino);
        }
        ino
    }

    /// Registers an entry just created in the upper at `(parent, name)`, counted once: a fresh
    /// inode, even where a deleted lower entry had a number.
    pub fn created(&mut self, parent: Ino, name: &OsStr, file_type: u32) -> Ino {
        let key = (parent, name.to_os_string());
        self.unbind(&key);
        let ino = self.fresh_number();
        let c = Child {
            lower: None,
            upper: true,
            linked: None,
            file_type,
        };
        let inode = Inode {
            lookups: 1,
            ..Inode::at(parent, name, &c)
        };
        self.insert(ino, inode);
        self.bind(key, ino);
        ino
    }

    /// Records a new hard link `key` to `ino`, whose upper file is host inode `upper_ino`.
    pub fn linked(&mut self, key: Key, ino: Ino, upper_ino: u64) {
        self.bind(key, ino);
        self.by_upper.insert(upper_ino, ino);
        if let Some(n) = self.get_mut(ino) {
            n.lookups += 1;
        }
    }

    /// Records a rename of `from` to `to`: the inode `moving` leaves its old name without
    /// being unlinked by it. With `exchanged`, that inode (which was at `to`) takes `from`;
    /// otherwise whatever `to` led to loses it (unlinked unless it has other names).
    pub fn moved(&mut self, from: Key, to: Key, moving: Ino, exchanged: Option<Ino>) {
        self.at_remove(from.0, &from.1);
        if let Some(n) = self.get_mut(moving) {
            n.names = n.names.saturating_sub(1);
            n.upper = true;
        }
        self.set_place(moving, to.0, &to.1);
        match exchanged {
            Some(other) => {
                if let Some(n) = self.get_mut(other) {
                    n.upper = true;
                }
                self.set_place(other, from.0, &from.1);
                self.at_insert(to.0, &to.1, moving);
                self.at_insert(from.0, &from.1, other);
                if let Some(n) = self.get_mut(moving) {
                    n.names += 1;
                }
            }
            None => self.bind(to, moving),
        }
    }

    /// Drops `n` kernel references; an inode no name leads to is forgotten with the last one.
    pub fn forget(&mut self, ino: Ino, n: u64) {
        if ino == Ino::ROOT {
            return;
        }
        let Some(i) = self.get_mut(ino) else {
            return;
        };
        i.lookups = i.lookups.saturating_sub(n);
        if i.lookups > 0 {
            return;
        }
        let (parent, name) = (i.parent, i.name.clone());
        if self.at_get(parent, &name) != Some(ino) {
            self.remove(ino);
        }
    }

    /// Marks the inode upper (just copied up).
    pub fn set_upper(&mut self, ino: Ino) {
        if let Some(i) = self.get_mut(ino) {
            i.upper = true;
        }
    }

    /// Marks the known inodes along `path` (directories just copied up) as upper.
    pub fn mark_path_upper(&mut self, path: &[u8]) {
        let mut cur = Ino::ROOT;
        for comp in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            let Some(next) = self.at_get(cur, OsStr::from_bytes(comp)) else {
                break;
            };
            if let Some(n) = self.get_mut(next) {
                n.upper = true;
            }
            cur = next;
        }
    }

    /// The merged path of an inode, components joined by `/` (empty for the root); `ESTALE`
    /// once no name leads to it or to a directory above it.
    pub fn path_of(&self, ino: Ino) -> OpResult<Vec<u8>> {
        let mut names: Vec<&OsStr> = Vec::new();
        let mut cur = ino;
        while cur != Ino::ROOT {
            let i = self.get(cur).ok_or(Errno::ESTALE)?;
            if i.unlinked {
                return Err(Errno::ESTALE);
            }
            names.push(&i.name);
            cur = i.parent;
            // Any depth the tree holds; only a loop (a bug) is longer than the table.
            if names.len() > self.len() {
                log::error!("inode {ino}: its parents form a loop");
                return Err(Errno::EIO);
            }
        }
        let mut p = Vec::new();
        for n in names.iter().rev() {
            if !p.is_empty() {
                p.push(b'/');
            }
            p.extend_from_slice(n.as_bytes());
        }
        Ok(p)
    }

    /// Whether `anc` is `ino` or a directory above it.
    pub fn is_ancestor(&self, anc: Ino, mut ino: Ino) -> bool {
        for _ in 0..=self.len() {
            if ino == anc {
                return true;
            }
            if ino == Ino::ROOT {
                return false;
            }
            ino = self.get(ino).map_or(Ino::ROOT, |i| i.parent);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST_FREE: u64 = 100;

    fn table() -> Inodes {
        Inodes::new(FIRST_FREE, Some(NodeId(0)))
    }

    fn key(parent: Ino, name: &str) -> Key {
        (parent, OsString::from(name))
    }

    fn lower(id: u32, file_type: u32) -> Child {
        Child {
            lower: Some(NodeId(id)),
            upper: false,
            linked: None,
            file_type,
        }
    }

    fn upper(host_ino: u64, nlink: u64) -> Child {
        Child {
            lower: None,
            upper: true,
            linked: (nlink > 1).then_some(host_ino),
            file_type: libc::S_IFREG,
        }
    }

    #[test]
    fn inodes_lower_nodes_keep_their_numbers_upper_entries_get_fresh_ones() {
        let mut t = table();
        let etc = t.register(Ino::ROOT, OsStr::new("etc"), &lower(3, libc::S_IFDIR), true);
        assert_eq!(etc, Ino::of(NodeId(3)));
        let new = t.register(etc, OsStr::new("new"), &upper(77, 1), true);
        assert_eq!(new, Ino(FIRST_FREE));
        // Known names keep their inode, and count each lookup.
        assert_eq!(t.register(etc, OsStr::new("new"), &upper(77, 1), true), new);
        assert_eq!(t.get(new).unwrap().lookups, 2);
        assert_eq!(t.path_of(new).unwrap(), b"etc/new");
        // A fresh entry never takes a number back, even after the old one is forgotten.
        t.unbind(&key(etc, "new"));
        t.forget(new, 2);
        assert!(t.get(new).is_none());
        assert_eq!(
            t.created(etc, OsStr::new("new"), libc::S_IFREG),
            Ino(FIRST_FREE + 1)
        );
    }

    #[test]
    fn inodes_names_kept_in_place_or_shared() {
        for n in [
            "",
            "f",
            "fifteen-bytes-x",
            "sixteen-bytes-xy",
            &"long".repeat(64),
        ] {
            let name = Name::new(OsStr::new(n));
            assert_eq!(&*name, OsStr::new(n));
            assert_eq!(
                matches!(name, Name::Short { .. }),
                n.len() <= Name::INLINE,
                "{n}"
            );
            assert_eq!(&*name.clone(), OsStr::new(n));
        }
        // Any bytes, not only UTF-8.
        let raw = OsStr::from_bytes(b"\xff\x00a");
        assert_eq!(&*Name::new(raw), raw);
    }

    #[test]
    fn inodes_moves_rebind_names() {
        let mut t = table();
        let f = t.register(Ino::ROOT, OsStr::new("f"), &lower(5, libc::S_IFREG), true);
        let long = "a-name-longer-than-fifteen-bytes";
        let g = t.created(Ino::ROOT, OsStr::new(long), libc::S_IFREG);
        t.moved(key(Ino::ROOT, long), key(Ino::ROOT, "h"), g, None);
        assert_eq!(t.named(Ino::ROOT, OsStr::new("h")), Some(g));
        assert_eq!(t.named(Ino::ROOT, OsStr::new(long)), None);
        assert_eq!(t.path_of(g).unwrap(), b"h");
        t.moved(key(Ino::ROOT, "f"), key(Ino::ROOT, long), f, None);
        assert_eq!(t.named(Ino::ROOT, OsStr::new(long)), Some(f));
        assert_eq!(t.path_of(f).unwrap(), long.as_bytes());
    }

    #[test]
    fn inodes_slots_are_reused_and_numbers_stay_apart() {
        let mut t = table();
        let mut seen = Vec::new();
        for round in 0..3 {
            for k in 0..100u32 {
                let name = format!("f{k}");
                let id = 1000 * round + k + 1;
                let i = t.register(
                    Ino::ROOT,
                    OsStr::new(&name),
                    &lower(id, libc::S_IFREG),
                    true,
                );
                assert_eq!(i, Ino::of(NodeId(id)));
                seen.push(i);
            }
            for k in 0..100u32 {
                let name = format!("f{k}");
                let i = t.named(Ino::ROOT, OsStr::new(&name)).unwrap();
                t.unbind(&key(Ino::ROOT, &name));
                t.forget(i, 1);
                assert!(t.get(i).is_none());
            }
        }
        // Freed slots were taken again, not added.
        assert!(t.slots.len() <= 101, "{} slots", t.slots.len());
        assert_eq!(t.len(), 1);
        assert!(t.get(Ino::ROOT).is_some());
    }

    #[test]
    fn inodes_unbind_last_name_unlinks_until_forgotten() {
        let mut t = table();
        let f = t.register(Ino::ROOT, OsStr::new("f"), &lower(5, libc::S_IFREG), true);
        t.unbind(&key(Ino::ROOT, "f"));
        let i = t.get(f).unwrap();
        assert!(i.unlinked);
        assert_eq!(i.names, 0);
        assert_eq!(t.path_of(f), Err(Errno::ESTALE));
        assert_eq!(t.named(Ino::ROOT, OsStr::new("f")), None);
        // Still known to the kernel: kept until its last reference goes.
        t.forget(f, 0);
        assert!(t.get(f).is_some());
        t.forget(f, 1);
        assert!(t.get(f).is_none());
    }

    #[test]
    fn inodes_remember_attributes_of_unlinked_inodes_only() {
        let mut t = table();
        let a = Attr {
            ino: Ino(0),
            mode: libc::S_IFREG | 0o640,
            nlink: 1,
            uid: 1,
            gid: 2,
            size: 3,
            blocks: 0,
            rdev: 0,
            mtime: 4,
            mtime_nsec: 5,
            atime: 0,
            atime_nsec: 0,
            ctime: 0,
            ctime_nsec: 0,
        };
        let f = t.register(Ino::ROOT, OsStr::new("f"), &upper(40, 2), true);
        t.linked(key(Ino::ROOT, "g"), f, 40);
        // Still named elsewhere: nothing to remember.
        t.unbind(&key(Ino::ROOT, "f"));
        let last = || {
            Some(Last {
                attr: a,
                file: None,
            })
        };
        let kept = |t: &Inodes| t.get(f).unwrap().last.as_ref().map(|l| l.attr);
        t.remember(f, last());
        assert_eq!(kept(&t), None);
        t.unbind(&key(Ino::ROOT, "g"));
        t.remember(f, last());
        assert_eq!(kept(&t), Some(Attr { nlink: 0, ..a }));
        // Named again (a link made through /proc): the entry answers for itself again.
        t.bind(key(Ino::ROOT, "h"), f);
        assert!(t.get(f).unwrap().last.is_none());
    }

    #[test]
    fn inodes_named_inode_survives_forget() {
        let mut t = table();
        let f = t.register(Ino::ROOT, OsStr::new("f"), &lower(5, libc::S_IFREG), true);
        t.forget(f, 1);
        assert_eq!(t.get(f).unwrap().lookups, 0);
        assert_eq!(t.named(Ino::ROOT, OsStr::new("f")), Some(f));
        // The root is never forgotten.
        t.forget(Ino::ROOT, 10);
        assert!(t.get(Ino::ROOT).is_some());
    }

    #[test]
    fn inodes_hard_links_share_an_inode_and_move_to_a_remaining_name() {
        let mut t = table();
        // A lower hard link: one node under two names.
        let a = t.register(Ino::ROOT, OsStr::new("a"), &lower(7, libc::S_IFREG), true);
        let b = t.register(Ino::ROOT, OsStr::new("b"), &lower(7, libc::S_IFREG), true);
        assert_eq!(a, b);
        assert_eq!(t.get(a).unwrap().names, 2);
        // Its first name goes: the inode now stands at the other one.
        t.unbind(&key(Ino::ROOT, "a"));
        let i = t.get(a).unwrap();
        assert!(!i.unlinked);
        assert_eq!((i.names, t.path_of(a).unwrap()), (1, b"b".to_vec()));
        // Upper hard links: one host inode under two names is one inode, found by host inode.
        let x = t.register(Ino::ROOT, OsStr::new("x"), &upper(40, 2), true);
        let y = t.register(Ino::ROOT, OsStr::new("y"), &upper(40, 2), true);
        assert_eq!(x, y);
        // A new link made through the view.
        t.linked(key(Ino::ROOT, "z"), x, 40);
        assert_eq!(t.get(x).unwrap().names, 3);
        assert_eq!(t.named(Ino::ROOT, OsStr::new("z")), Some(x));
    }

    #[test]
    fn inodes_a_resolution_older_than_a_copy_up_keeps_the_inode_upper() {
        let mut t = table();
        let d = t.register(Ino::ROOT, OsStr::new("d"), &lower(9, libc::S_IFDIR), true);
        t.set_upper(d);
        // A lookup of `d` that resolved it (lower-only) before the copy-up registers now.
        let again = t.register(Ino::ROOT, OsStr::new("d"), &lower(9, libc::S_IFDIR), true);
        assert_eq!(again, d);
        assert!(
            t.get(d).unwrap().upper,
            "a stale resolution made the inode lower-only"
        );
    }

    #[test]
    fn inodes_directories_never_share_a_lower_number() {
        let mut t = table();
        let d = t.register(Ino::ROOT, OsStr::new("d"), &lower(9, libc::S_IFDIR), true);
        // The same lower directory seen under a second name (a copy left behind a rename) is
        // another inode: directories have one name.
        let e = t.register(Ino::ROOT, OsStr::new("e"), &lower(9, libc::S_IFDIR), true);
        assert_ne!(d, e);
    }

    #[test]
    fn inodes_bind_over_a_name_unlinks_what_it_led_to() {
        let mut t = table();
        let a = t.register(Ino::ROOT, OsStr::new("a"), &lower(5, libc::S_IFREG), true);
        let b = t.register(Ino::ROOT, OsStr::new("b"), &lower(6, libc::S_IFREG), true);
        t.bind(key(Ino::ROOT, "a"), b);
        assert!(t.get(a).unwrap().unlinked);
        assert_eq!(t.get(b).unwrap().names, 2);
        // Binding an unlinked inode again brings it back at that name.
        t.bind(key(Ino::ROOT, "c"), a);
        let i = t.get(a).unwrap();
        assert!(!i.unlinked);
        assert_eq!(t.path_of(a).unwrap(), b"c");
    }

    #[test]
    fn inodes_rename_moves_and_exchanges() {
        let mut t = table();
        let d = t.register(Ino::ROOT, OsStr::new("d"), &lower(2, libc::S_IFDIR), true);
        let f = t.register(Ino::ROOT, OsStr::new("f"), &lower(5, libc::S_IFREG), true);
        let g = t.register(d, OsStr::new("g"), &lower(6, libc::S_IFREG), true);
        // f → d/g replaces g.
        t.moved(key(Ino::ROOT, "f"), key(d, "g"), f, None);
        assert_eq!(t.named(d, OsStr::new("g")), Some(f));
        assert_eq!(t.named(Ino::ROOT, OsStr::new("f")), None);
        assert_eq!(t.path_of(f).unwrap(), b"d/g");
        let fi = t.get(f).unwrap();
        assert!(fi.upper && !fi.unlinked && fi.names == 1);
        assert!(t.get(g).unwrap().unlinked);
        // Exchange d/g with d: each takes the other's name (d is now below itself: the
        // view's checks refuse that; the table only records).
        let h = t.register(Ino::ROOT, OsStr::new("h"), &lower(8, libc::S_IFREG), true);
        t.moved(key(d, "g"), key(Ino::ROOT, "h"), f, Some(h));
        assert_eq!(t.named(Ino::ROOT, OsStr::new("h")), Some(f));
        assert_eq!(t.named(d, OsStr::new("g")), Some(h));
        assert_eq!(t.path_of(h).unwrap(), b"d/g");
        assert_eq!((t.get(f).unwrap().names, t.get(h).unwrap().names), (1, 1));
        assert!(t.is_ancestor(d, h) && t.is_ancestor(Ino::ROOT, h) && !t.is_ancestor(h, d));
    }

    #[test]
    fn inodes_mark_path_upper_stops_at_unknown_names() {
        let mut t = table();
        let a = t.register(Ino::ROOT, OsStr::new("a"), &lower(2, libc::S_IFDIR), true);
        let b = t.register(a, OsStr::new("b"), &lower(3, libc::S_IFDIR), true);
        t.mark_path_upper(b"a/b/unknown/c");
        assert!(t.get(a).unwrap().upper && t.get(b).unwrap().upper);
    }

    #[test]
    fn inodes_names_filed_once_through_links_moves_and_exchanges() {
        let mut t = table();
        let a = t.register(Ino::ROOT, OsStr::new("a"), &lower(7, libc::S_IFREG), true);
        let b = t.register(Ino::ROOT, OsStr::new("b"), &lower(7, libc::S_IFREG), true);
        assert_eq!(a, b);
        t.check();
        // The first name goes: the inode's own name becomes "b", filed by slot.
        t.unbind(&key(Ino::ROOT, "a"));
        t.check();
        assert_eq!(t.path_of(a).unwrap(), b"b");
        assert!(t.at_find(Ino::ROOT, OsStr::new("b")).is_some());
        // A link and a move of the inode's own name: the link stays where it was.
        t.linked(key(Ino::ROOT, "c"), a, 40);
        t.moved(key(Ino::ROOT, "b"), key(Ino::ROOT, "d"), a, None);
        t.check();
        assert_eq!(t.named(Ino::ROOT, OsStr::new("c")), Some(a));
        assert_eq!(t.named(Ino::ROOT, OsStr::new("d")), Some(a));
        assert_eq!(t.named(Ino::ROOT, OsStr::new("b")), None);
        // An exchange with another inode.
        let e = t.register(Ino::ROOT, OsStr::new("e"), &lower(8, libc::S_IFREG), true);
        t.moved(key(Ino::ROOT, "d"), key(Ino::ROOT, "e"), a, Some(e));
        t.check();
        assert_eq!(t.named(Ino::ROOT, OsStr::new("e")), Some(a));
        assert_eq!(t.named(Ino::ROOT, OsStr::new("d")), Some(e));
        assert_eq!(t.path_of(e).unwrap(), b"d");
        // Every name gone, the inode forgotten: nothing of it is left filed.
        for n in ["c", "e"] {
            t.unbind(&key(Ino::ROOT, n));
            t.check();
        }
        assert!(t.get(a).unwrap().unlinked);
        t.forget(a, 3);
        t.check();
        assert!(t.get(a).is_none());
        assert_eq!(t.named(Ino::ROOT, OsStr::new("d")), Some(e));
    }
}
