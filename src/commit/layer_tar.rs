//! The new layer: an uncompressed OCI layer tar (image-spec `layer.md`) of what an overlayfs
//! upper directory changes, written from the merged view ([`crate::changes::MergedView`]), so
//! mounting the result shows exactly what overlayfs showed:
//! - every upper entry with its mode (setuid, setgid, sticky included), owner, mtime (PAX
//!   `mtime` when it has nanoseconds), PAX `SCHILY.xattr.*` attributes (overlayfs's private
//!   ones left out), link targets and device numbers; names of one upper inode become tar hard
//!   links to the first; a metacopy file takes its data from its lower file;
//! - a whiteout becomes `.wh.NAME`, written only where the lower layers still have `NAME`;
//! - a directory whose content no longer matches the lower layers' directory at its path
//!   (opaque, or renamed: its lower content comes from elsewhere) gets `DIR/.wh..wh..opq`
//!   right after its own entry, so extractors that apply entries in order clear it before its
//!   new children; a renamed directory is then written whole, its lower content included.
//!   The old path of a rename is hidden by the whiteout overlayfs left there;
//! - the root is written as `./` with the upper root's attributes, which are the merged
//!   root's.
//!
//! Headers are ustar, preceded by a PAX extended header for what ustar cannot hold: names
//! and link targets past 100 bytes, ids past 7 octal digits, nanoseconds or out-of-range
//! times, xattrs.
//! Dependencies: changes, tree, layer (entry, whiteout), image::digest, error.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::output::{Exact, sync_buffered};
use crate::changes::{Merged, MergedView, UpperKind, UpperNode, join};
use crate::error::{Context, Error, Result};
use crate::image::digest::{Algorithm, Digest, Hasher};
use crate::layer::entry::{Meta, Xattr};
use crate::layer::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::tree::LowerTree;
use crate::tree::node::{NodeId, NodeKind};

/// Bytes of the ustar name and link-name fields; longer ones go in PAX records.
const NAME_FIELD: usize = 100;
/// Largest uid/gid the 8-byte octal ustar field holds; larger ones go in PAX records.
const MAX_USTAR_ID: u32 = 0o7_777_777;
/// Largest mtime the 12-byte octal ustar field holds.
const MAX_USTAR_TIME: i64 = 0o77_777_777_777;

/// A writer hashing and counting what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes the layer tar of `view`'s changes to `dest`; its digest and size.
pub(super) fn write_layer(view: &MergedView<'_>, dest: &Path) -> Result<(Digest, u64)> {
    let f = File::create(dest).ctx("create", dest)?;
    let w = HashingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, f),
        hasher: Hasher::new(Algorithm::Sha256),
        count: 0,
    };
    let mut lw = LayerWriter {
        tar: tar::Builder::new(w),
        view,
        links: HashMap::new(),
        dest,
    };
    let root = view.root()?;
    let Merged::Upper { node, .. } = root else {
        return Err(Error::BadUpper {
            path: view.upper.path.clone(),
            reason: "not a directory".into(),
        });
    };
    lw.append(b".", &node.meta, refs(&public(node)), Body::Dir)?;
    lw.dir_body(b"", &root, Some(LowerTree::ROOT), false, &node.meta)?;
    let w = lw.tar.into_inner().ctx("write", dest)?;
    let (digest, count) = (w.hasher.finish(), w.count);
    sync_buffered(w.inner, dest)?;
    Ok((digest, count))
}

type XattrRef<'a> = Vec<(&'a [u8], &'a [u8])>;

fn public(n: &UpperNode) -> Vec<Xattr> {
    n.public_xattrs().collect()
}

fn refs(x: &[Xattr]) -> XattrRef<'_> {
    x.iter().map(|(k, v)| (&**k, &**v)).collect()
}

/// Which inode a hard-link group is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum LinkKey {
    Upper(u64, u64),
    Lower(NodeId),
}

struct LayerWriter<'v, 'a, W: Write> {
    tar: tar::Builder<W>,
    view: &'v MergedView<'a>,
    /// The first path written of each multiply-linked inode.
    links: HashMap<LinkKey, Vec<u8>>,
    dest: &'v Path,
}

impl<W: Write> LayerWriter<'_, '_, W> {
    fn tree(&self) -> &LowerTree {
        self.view.tree
    }

    /// Writes the entries of merged directory `m` at `path`. `same` is the directory the lower
    /// layers have at `path` (after what this layer already hid); `full` says an ancestor's
    /// content was spelled out, so nothing of the lower layers shows here.
    fn dir_body(
        &mut self,
        path: &[u8],
        m: &Merged<'_>,
        same: Option<NodeId>,
        mut full: bool,
        meta: &Meta,
    ) -> Result<()> {
        let origin = match *m {
            Merged::Upper { lower, .. } => lower,
            Merged::Lower(id) => Some(id),
        };
        let mut same = same;
        if !full && origin != same {
            // The lower layers' directory here is not what the view merges: hide it, and
            // spell out the view's lower content when it comes from elsewhere (a rename).
            if same.is_some() || origin.is_some() {
                let marker = join(path, OPAQUE_MARKER);
                self.append(&marker, meta, Vec::new(), Body::Empty)?;
            }
            full = origin.is_some();
            same = None;
        }
        let dir = self.view.dir(path, m)?;
        if !full {
            for (name, w) in &dir.whiteouts {
                if same.and_then(|s| self.tree().lookup(s, name)).is_some() {
                    let wh = join(path, &[WHITEOUT_PREFIX, name].concat());
                    self.append(&wh, &w.meta, Vec::new(), Body::Empty)?;
                }
            }
        }
        for (name, child) in &dir.entries {
            if !full && matches!(child, Merged::Lower(_)) {
                continue;
            }
            let p = join(path, name);
            let below = if full {
                None
            } else {
                same.and_then(|s| self.tree().lookup(s, name))
            };
            if let Some(meta) = self.entry(&p, child)? {
                let below = below.filter(|&b| self.tree().node(b).is_some_and(|n| n.is_dir()));
                self.dir_body(&p, child, below, full, &meta)?;
            }
        }
        Ok(())
    }

    /// Writes one entry; for a directory, returns its attributes (its body comes next).
    fn entry(&mut self, path: &[u8], m: &Merged<'_>) -> Result<Option<Meta>> {
        use tar::EntryType as T;
        match *m {
            Merged::Upper {
                node,
                lower,
                metacopy,
            } => {
                if !node.is_dir()
                    && node.nlink > 1
                    && self.linked(LinkKey::Upper(node.inode.0, node.inode.1), path)?
                {
                    return Ok(None);
                }
                let body = match &node.kind {
                    UpperKind::Dir(_) => Body::Dir,
                    UpperKind::File { .. } if metacopy => Body::File(self.lower_data(lower, path)?),
                    UpperKind::File { size } => {
                        let f = self.view.upper.open_file(path)?;
                        Body::File(Data {
                            reader: Box::new(io::BufReader::new(f)),
                            size: *size,
                            what: self.host(path),
                        })
                    }
                    UpperKind::Symlink(t) => Body::Symlink(t),
                    UpperKind::CharDev { major, minor } => Body::Device(T::Char, *major, *minor),
                    UpperKind::BlockDev { major, minor } => Body::Device(T::Block, *major, *minor),
                    UpperKind::Fifo => Body::Fifo,
                    UpperKind::Socket => {
                        let host = self.host(path);
                        log::warn!("{}: a socket has no tar form; left out", host.display());
                        return Ok(None);
                    }
                };
                self.entry_body(path, &node.meta, refs(&public(node)), body)
            }
            Merged::Lower(id) => {
                let Some(n) = self.tree().node(id) else {
                    return Ok(None);
                };
                if !n.is_dir() && n.nlink > 1 && self.linked(LinkKey::Lower(id), path)? {
                    return Ok(None);
                }
                let body = match &n.kind {
                    NodeKind::Dir { .. } => Body::Dir,
                    NodeKind::File(_) => Body::File(self.lower_data(Some(id), path)?),
                    NodeKind::Symlink(t) => Body::Symlink(t),
                    NodeKind::CharDev { major, minor } => Body::Device(T::Char, *major, *minor),
                    NodeKind::BlockDev { major, minor } => Body::Device(T::Block, *major, *minor),
                    NodeKind::Fifo => Body::Fifo,
                };
                let x = n.xattrs.iter().map(|(k, v)| (&**k, &**v)).collect();
                self.entry_body(path, &n.meta, x, body)
            }
        }
    }

    /// Writes an entry of either side, once its kind is in tar terms; for a directory,
    /// returns its attributes.
    fn entry_body(
        &mut self,
        path: &[u8],
        meta: &Meta,
        x: XattrRef<'_>,
        body: Body<'_>,
    ) -> Result<Option<Meta>> {
        let dir = matches!(body, Body::Dir);
        self.append(path, meta, x, body)?;
        Ok(dir.then_some(*meta))
    }

    /// The host path of an upper entry, for messages.
    fn host(&self, path: &[u8]) -> PathBuf {
        self.view.upper.path.join(std::ffi::OsStr::from_bytes(path))
    }

    /// For a later name of a multiply-linked inode, writes a hard link to its first name and
    /// returns true; records a first name and returns false.
    fn linked(&mut self, key: LinkKey, path: &[u8]) -> Result<bool> {
        let Some(first) = self.links.get(&key).cloned() else {
            self.links.insert(key, path.to_vec());
            return Ok(false);
        };
        self.append(path, &Meta::default(), Vec::new(), Body::HardLink(&first))?;
        Ok(true)
    }

    /// The bytes of lower file `id`, read in place from its layer.
    fn lower_data(&self, id: Option<NodeId>, path: &[u8]) -> Result<Data> {
        let tree = self.tree();
        let found = id.and_then(|id| match tree.node(id)?.kind {
            NodeKind::File(d) => Some(d),
            _ => None,
        });
        let d = found.ok_or_else(|| Error::BadUpper {
            path: self.host(path),
            reason: "no lower file holds its data".into(),
        })?;
        let data = tree
            .data_files
            .get(usize::from(d.layer))
            .ok_or_else(|| Error::BadUpper {
                path: self.host(path),
                reason: format!("lower data in unknown layer {}", d.layer),
            })?;
        let what = match data.host_range() {
            Some(loc) => loc.file.clone(),
            None => format!("layer {}", d.layer).into(),
        };
        Ok(Data {
            reader: Box::new(io::BufReader::with_capacity(
                1 << 20,
                data.reader(d.offset, d.size),
            )),
            size: d.size,
            what,
        })
    }

    /// Writes a header (with a PAX header before it for what ustar cannot hold) and data.
    fn append(&mut self, path: &[u8], meta: &Meta, x: XattrRef<'_>, body: Body<'_>) -> Result<()> {
        use tar::EntryType as T;
        let (ty, link, dev, data) = match body {
            Body::Dir => (T::Directory, None, None, None),
            Body::Empty => (T::Regular, None, None, None),
            Body::File(data) => (T::Regular, None, None, Some(data)),
            Body::Symlink(t) => (T::Symlink, Some(t), None, None),
            Body::HardLink(first) => (T::Link, Some(first), None, None),
            Body::Device(ty, major, minor) => (ty, None, Some((major, minor)), None),
            Body::Fifo => (T::Fifo, None, None, None),
        };
        let dest = self.dest;
        let mut name = path.to_vec();
        if ty.is_dir() && name != b"." {
            name.push(b'/');
        } else if ty.is_dir() {
            name = b"./".to_vec();
        }
        let size = data.as_ref().map_or(0, |d| d.size);
        let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        if name.len() > NAME_FIELD {
            pax.push((b"path".to_vec(), name.clone()));
        }
        if let Some(l) = link.filter(|l| l.len() > NAME_FIELD) {
            pax.push((b"linkpath".to_vec(), l.to_vec()));
        }
        if meta.mtime_nsec != 0 || !(0..=MAX_USTAR_TIME).contains(&meta.mtime) {
            pax.push((
                b"mtime".to_vec(),
                pax_time(meta.mtime, meta.mtime_nsec).into_bytes(),
            ));
        }
        if meta.uid > MAX_USTAR_ID {
            pax.push((b"uid".to_vec(), meta.uid.to_string().into_bytes()));
        }
        if meta.gid > MAX_USTAR_ID {
            pax.push((b"gid".to_vec(), meta.gid.to_string().into_bytes()));
        }
        for (k, v) in &x {
            pax.push(([&b"SCHILY.xattr."[..], k].concat(), v.to_vec()));
        }
        if !pax.is_empty() {
            let records = pax_records(&pax);
            let mut h = tar::Header::new_ustar();
            let mut pname = b"PaxHeaders/".to_vec();
            pname.extend_from_slice(&name[..name.len().min(NAME_FIELD - pname.len())]);
            set_field(&mut h, &pname, false);
            h.set_entry_type(tar::EntryType::XHeader);
            h.set_mode(0o644);
            h.set_size(records.len() as u64);
            h.set_mtime(0);
            h.set_cksum();
            self.tar.append(&h, &records[..]).ctx("write", dest)?;
        }
        let mut h = tar::Header::new_ustar();
        set_field(&mut h, &name, false);
        if let Some(l) = link {
            set_field(&mut h, l, true);
        }
        h.set_entry_type(ty);
        h.set_mode(meta.mode & 0o7777);
        h.set_uid(u64::from(if meta.uid > MAX_USTAR_ID {
            0
        } else {
            meta.uid
        }));
        h.set_gid(u64::from(if meta.gid > MAX_USTAR_ID {
            0
        } else {
            meta.gid
        }));
        h.set_mtime(meta.mtime.clamp(0, MAX_USTAR_TIME) as u64);
        if let Some((major, minor)) = dev {
            h.set_device_major(major).ctx("write", dest)?;
            h.set_device_minor(minor).ctx("write", dest)?;
        }
        h.set_size(size);
        h.set_cksum();
        match data {
            Some(d) => {
                let what = d.what;
                let r = Exact::new(d.reader, d.size, &what);
                self.tar.append(&h, r).ctx("write", dest)
            }
            None => self.tar.append(&h, io::empty()).ctx("write", dest),
        }
    }
}

/// What an entry is, in tar terms: the same for an upper and a lower entry.
enum Body<'a> {
    Dir,
    /// An empty regular file: a whiteout or an opaque marker.
    Empty,
    File(Data),
    Symlink(&'a [u8]),
    /// A later name of an inode already written under this first name.
    HardLink(&'a [u8]),
    /// A character or block device, with its major and minor numbers.
    Device(tar::EntryType, u32, u32),
    Fifo,
}

/// A file's bytes to archive.
struct Data {
    reader: Box<dyn Read>,
    size: u64,
    what: PathBuf,
}

/// Copies a name into the ustar name (or link-name) field, cut to its size (a PAX record
/// holds the whole name when it is longer).
fn set_field(h: &mut tar::Header, v: &[u8], link: bool) {
    let old = h.as_old_mut();
    let field = if link {
        &mut old.linkname
    } else {
        &mut old.name
    };
    field.fill(0);
    let n = v.len().min(field.len());
    field[..n].copy_from_slice(&v[..n]);
}

/// PAX time: seconds with a nanosecond fraction, negative times counted down from the epoch.
fn pax_time(secs: i64, nsec: u32) -> String {
    if nsec == 0 {
        return secs.to_string();
    }
    let total = i128::from(secs) * 1_000_000_000 + i128::from(nsec);
    let sign = if total < 0 { "-" } else { "" };
    let abs = total.unsigned_abs();
    let frac = format!("{:09}", abs % 1_000_000_000);
    format!(
        "{sign}{}.{}",
        abs / 1_000_000_000,
        frac.trim_end_matches('0')
    )
}

/// PAX extended header records: `"<len> <key>=<value>\n"`, where len counts the whole record.
fn pax_records(kv: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in kv {
        let rest = k.len() + v.len() + 3;
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(format!("{len} ").as_bytes());
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        let r = pax_records(&[(b"path".to_vec(), b"a".to_vec())]);
        assert_eq!(r, b"9 path=a\n");
        let long = vec![b'x'; 95];
        let r = pax_records(&[(b"path".to_vec(), long)]);
        let text = String::from_utf8(r.clone()).unwrap();
        let len: usize = text.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, r.len());
    }

    #[test]
    fn pax_time_table() {
        assert_eq!(pax_time(5, 0), "5");
        assert_eq!(pax_time(5, 500_000_000), "5.5");
        assert_eq!(pax_time(-2, 500_000_000), "-1.5");
        assert_eq!(pax_time(0, 1), "0.000000001");
    }
}
