//! A comparable listing of a tree: one [`Info`] per path, from a host directory (a mount or
//! an extracted tree), from the library's merged tree, or from a flat spec of what the tree
//! should be. Two listings compare with a line diff.
//!
//! Directory sizes are not compared (a mount reports a block, a spec has none); hard links
//! are compared as groups named by their smallest path, not by inode numbers.

#![allow(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use rimgfs::tree::LowerTree;
use rimgfs::tree::node::NodeKind;

use super::image::sha256;
use super::spec::{Kind, Spec};

/// Attributes of one path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    /// `d - l c b p s`.
    pub kind: char,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of a file, length of a symlink target, 0 otherwise.
    pub size: u64,
    pub nlink: u64,
    pub mtime: (i64, u32),
    /// `sha256:<hex>` of a file's content.
    pub sha256: Option<String>,
    pub target: Option<Vec<u8>>,
    /// (major, minor) of a device.
    pub rdev: Option<(u32, u32)>,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The smallest path of the hard-link group, when the inode has several names here.
    pub link_group: Option<Vec<u8>>,
}

/// Paths (`/` for the root, `/etc/hosts`) to attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listing(pub BTreeMap<Vec<u8>, Info>);

/// Shows bytes as text, escaping what is not printable UTF-8.
pub fn show(b: &[u8]) -> String {
    b.utf8_chunks()
        .map(|c| {
            let mut s = c.valid().escape_debug().to_string();
            for x in c.invalid() {
                s.push_str(&format!("\\x{x:02x}"));
            }
            s
        })
        .collect()
}

impl Info {
    /// One line, for diffs.
    pub fn render(&self) -> String {
        let mut s = format!(
            "{} {:04o} {}:{} size={} nlink={} mtime={}.{:09}",
            self.kind,
            self.mode,
            self.uid,
            self.gid,
            self.size,
            self.nlink,
            self.mtime.0,
            self.mtime.1
        );
        if let Some(h) = &self.sha256 {
            s.push_str(&format!(" {}", &h[..19]));
        }
        if let Some(t) = &self.target {
            s.push_str(&format!(" -> {}", show(t)));
        }
        if let Some((ma, mi)) = self.rdev {
            s.push_str(&format!(" dev={ma},{mi}"));
        }
        for (k, v) in &self.xattrs {
            s.push_str(&format!(" xattr[{}]={:?}", show(k), show(v)));
        }
        if let Some(g) = &self.link_group {
            s.push_str(&format!(" link={}", show(g)));
        }
        s
    }
}

impl Listing {
    /// One line per path.
    pub fn render(&self) -> String {
        self.0
            .iter()
            .map(|(p, i)| format!("{} {}\n", show(p), i.render()))
            .collect()
    }

    /// The paths, shown.
    pub fn paths(&self) -> Vec<String> {
        self.0.keys().map(|p| show(p)).collect()
    }

    /// An entry by path.
    pub fn get(&self, path: &str) -> Option<&Info> {
        self.0.get(path.as_bytes())
    }

    /// Panics with a line diff unless the listings are equal.
    #[track_caller]
    pub fn assert_same(&self, want: &Listing, what: &str) {
        if self == want {
            return;
        }
        let (a, b) = (self.render(), want.render());
        let mut diff = String::new();
        let al: Vec<&str> = a.lines().collect();
        let bl: Vec<&str> = b.lines().collect();
        for l in &bl {
            if !al.contains(l) {
                diff.push_str(&format!("- {l}\n"));
            }
        }
        for l in &al {
            if !bl.contains(l) {
                diff.push_str(&format!("+ {l}\n"));
            }
        }
        panic!("{what}: listing differs (- expected, + got):\n{diff}");
    }

    /// Names the hard-link groups: every non-directory whose key is shared by several paths
    /// gets the smallest of those paths.
    fn group_links<K: std::hash::Hash + Eq>(&mut self, keys: &HashMap<Vec<u8>, K>) {
        let mut first: HashMap<&K, (Vec<u8>, usize)> = HashMap::new();
        for (p, k) in keys {
            let e = first.entry(k).or_insert_with(|| (p.clone(), 0));
            if p < &e.0 {
                e.0 = p.clone();
            }
            e.1 += 1;
        }
        for (p, k) in keys {
            let (g, n) = &first[k];
            if *n > 1 {
                if let Some(i) = self.0.get_mut(p) {
                    i.link_group = Some(g.clone());
                }
            }
        }
    }

    /// Walks a host directory (a mount, or an extracted tree) with lstat, reading every file
    /// and every extended attribute.
    pub fn walk(root: &Path) -> Listing {
        let mut l = Listing::default();
        let mut inodes = HashMap::new();
        let mut todo = vec![(b"/".to_vec(), root.to_path_buf())];
        while let Some((rel, host)) = todo.pop() {
            let m = std::fs::symlink_metadata(&host)
                .unwrap_or_else(|e| panic!("lstat {}: {e}", host.display()));
            let ft = m.file_type();
            let kind = if ft.is_dir() {
                'd'
            } else if ft.is_file() {
                '-'
            } else if ft.is_symlink() {
                'l'
            } else if ft.is_char_device() {
                'c'
            } else if ft.is_block_device() {
                'b'
            } else if ft.is_fifo() {
                'p'
            } else {
                's'
            };
            let sha = (kind == '-').then(|| {
                let mut buf = Vec::new();
                std::fs::File::open(&host)
                    .and_then(|mut f| f.read_to_end(&mut buf))
                    .unwrap_or_else(|e| panic!("read {}: {e}", host.display()));
                assert_eq!(
                    buf.len() as u64,
                    m.size(),
                    "{}: read length vs st_size",
                    host.display()
                );
                sha256(&buf)
            });
            let target = (kind == 'l').then(|| {
                std::fs::read_link(&host)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec()
            });
            let rdev = matches!(kind, 'c' | 'b').then(|| {
                let r = m.rdev();
                (libc::major(r), libc::minor(r))
            });
            let xattrs = list_xattrs(&host)
                .unwrap_or_else(|e| panic!("listxattr {}: {e}", host.display()))
                .into_iter()
                .map(|k| {
                    let v = get_xattr(&host, &k).unwrap_or_else(|e| {
                        panic!("getxattr {} {}: {e}", host.display(), show(&k))
                    });
                    (k, v)
                })
                .collect();
            let info = Info {
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: if kind == 'd' { 0 } else { m.size() },
                nlink: m.nlink(),
                mtime: (m.mtime(), m.mtime_nsec() as u32),
                sha256: sha,
                target,
                rdev,
                xattrs,
                link_group: None,
            };
            if kind != 'd' {
                inodes.insert(rel.clone(), (m.dev(), m.ino()));
            }
            l.0.insert(rel.clone(), info);
            if kind == 'd' {
                for e in std::fs::read_dir(&host)
                    .unwrap_or_else(|e| panic!("readdir {}: {e}", host.display()))
                {
                    let e = e.unwrap();
                    let mut child = rel.clone();
                    if child != b"/" {
                        child.push(b'/');
                    }
                    child.extend_from_slice(e.file_name().as_bytes());
                    todo.push((child, e.path()));
                }
            }
        }
        l.group_links(&inodes);
        l
    }

    /// The library's merged tree, file contents read from the layer data files.
    pub fn of_tree(tree: &LowerTree) -> Listing {
        let mut l = Listing::default();
        let mut ids = HashMap::new();
        tree.walk(|path, id| {
            let n = tree.node(id).unwrap();
            let mut p = b"/".to_vec();
            p.extend_from_slice(path);
            let (kind, sha, target, rdev) = match &n.kind {
                NodeKind::Dir { .. } => ('d', None, None, None),
                NodeKind::File(d) => {
                    let mut buf = vec![0u8; d.size as usize];
                    tree.data_files[usize::from(d.layer)]
                        .read_exact_at(&mut buf, d.offset)
                        .unwrap();
                    ('-', Some(sha256(&buf)), None, None)
                }
                NodeKind::Symlink(t) => ('l', None, Some(t.to_vec()), None),
                NodeKind::CharDev { major, minor } => ('c', None, None, Some((*major, *minor))),
                NodeKind::BlockDev { major, minor } => ('b', None, None, Some((*major, *minor))),
                NodeKind::Fifo => ('p', None, None, None),
            };
            if kind != 'd' {
                ids.insert(p.clone(), id);
            }
            let info = Info {
                kind,
                mode: n.mode() & 0o7777,
                uid: n.meta.uid,
                gid: n.meta.gid,
                size: if kind == 'd' { 0 } else { n.kind.size() },
                nlink: u64::from(n.nlink),
                mtime: (n.meta.mtime, n.meta.mtime_nsec),
                sha256: sha,
                target,
                rdev,
                xattrs: n
                    .xattrs
                    .iter()
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect(),
                link_group: None,
            };
            l.0.insert(p, info);
        });
        l.group_links(&ids);
        l
    }

    /// What a tree should be, from a flat spec of its final state (no `L<n>:` prefixes, no
    /// whiteouts). Directories no statement names are implicit: 0755, 0:0, mtime 0, and so
    /// is the root without a `dir /`. Hard links share their target's attributes.
    pub fn expected(flat: &str) -> Listing {
        let spec = Spec::parse_flat(flat);
        let entries = spec.layers.into_iter().next().unwrap_or_default();
        let implicit = Info {
            kind: 'd',
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            nlink: 2,
            mtime: (0, 0),
            sha256: None,
            target: None,
            rdev: None,
            xattrs: BTreeMap::new(),
            link_group: None,
        };
        let mut l = Listing::default();
        l.0.insert(b"/".to_vec(), implicit.clone());
        let mut keys: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for e in entries {
            let mut p = e.path.clone();
            if !p.starts_with(b"/") {
                p.insert(0, b'/');
            }
            while p.len() > 1 && p.ends_with(b"/") {
                p.pop();
            }
            // Implicit parents.
            let mut i = 1;
            while let Some(j) = p[i..].iter().position(|&b| b == b'/') {
                let parent = p[..i + j].to_vec();
                l.0.entry(parent).or_insert_with(|| implicit.clone());
                i += j + 1;
            }
            if let Kind::HardLink(t) = &e.kind {
                let mut t = t.clone();
                if !t.starts_with(b"/") {
                    t.insert(0, b'/');
                }
                let info =
                    l.0.get(&t)
                        .unwrap_or_else(|| panic!("hard link to unknown {}", show(&t)))
                        .clone();
                let key = keys.get(&t).cloned().unwrap_or(t);
                keys.insert(p.clone(), key);
                l.0.insert(p, info);
                continue;
            }
            let mtime = match &e.pax_mtime {
                Some(s) => {
                    let f: f64 = s.parse().unwrap();
                    let secs = f.floor() as i64;
                    (secs, ((f - secs as f64) * 1e9).round() as u32)
                }
                None => (e.mtime, 0),
            };
            let (kind, size, sha, target, rdev) = match &e.kind {
                Kind::Dir => ('d', 0, None, None, None),
                Kind::File(c) => ('-', c.len() as u64, Some(sha256(c)), None, None),
                Kind::Symlink(t) => ('l', t.len() as u64, None, Some(t.clone()), None),
                Kind::Char(a, b) => ('c', 0, None, None, Some((*a, *b))),
                Kind::Block(a, b) => ('b', 0, None, None, Some((*a, *b))),
                Kind::Fifo => ('p', 0, None, None, None),
                Kind::HardLink(_) => unreachable!(),
            };
            let info = Info {
                kind,
                mode: if kind == 'l' { 0o777 } else { e.mode & 0o7777 },
                uid: e.uid as u32,
                gid: e.gid as u32,
                size,
                nlink: if kind == 'd' { 2 } else { 1 },
                mtime,
                sha256: sha,
                target,
                rdev,
                xattrs: e.xattrs.iter().cloned().collect(),
                link_group: None,
            };
            if kind != 'd' {
                keys.insert(p.clone(), p.clone());
            }
            l.0.insert(p, info);
        }
        // Link counts: names per inode; 2 + subdirectories per directory.
        let mut names: HashMap<Vec<u8>, u64> = HashMap::new();
        for k in keys.values() {
            *names.entry(k.clone()).or_default() += 1;
        }
        for (p, k) in &keys {
            if let Some(i) = l.0.get_mut(p) {
                i.nlink = names[k];
            }
        }
        let dirs: Vec<Vec<u8>> =
            l.0.iter()
                .filter(|(_, i)| i.kind == 'd')
                .map(|(p, _)| p.clone())
                .collect();
        for d in dirs {
            let subdirs =
                l.0.iter()
                    .filter(|(p, i)| i.kind == 'd' && p.len() > 1 && parent_of(p) == d.as_slice())
                    .count() as u64;
            l.0.get_mut(&d).unwrap().nlink = 2 + subdirs;
        }
        l.group_links(&keys);
        l
    }
}

/// `/a/b` → `/a`; `/a` → `/`.
fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(0) => b"/",
        Some(i) => &p[..i],
        None => b"/",
    }
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// The extended attribute names of a path (not following symlinks).
pub fn list_xattrs(p: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let c = cpath(p);
    loop {
        // SAFETY: `c` is a valid NUL-terminated path; a null buffer of size 0 asks for the
        // needed size and writes nothing.
        let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let m = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect());
    }
}

/// An extended attribute's value (not following symlinks).
pub fn get_xattr(p: &Path, name: &[u8]) -> std::io::Result<Vec<u8>> {
    let c = cpath(p);
    let n = CString::new(name).unwrap();
    loop {
        // SAFETY: valid NUL-terminated strings; a null buffer of size 0 asks for the size.
        let len = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len as usize];
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}
