//! `rimgfs commit`: a new image made of an image's layers, copied as they are, and one more
//! layer holding what an overlayfs upper directory changed.
//!
//! The new layer is an uncompressed OCI layer tar (image-spec `layer.md`) written from the
//! merged view ([`crate::changes::MergedView`]), so mounting the result shows exactly what
//! overlayfs showed:
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
//! The output (`docker-archive`, `oci-archive`, `oci`) is built in a temporary directory
//! beside it and renamed into place. Dependencies: changes, stack, tree, image, error.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::changes::{Merged, MergedView, UpperKind, UpperNode, join};
use crate::error::{Context, Error, Result};
use crate::image;
use crate::image::config::{MT_OCI_INDEX, MT_OCI_MANIFEST};
use crate::image::container::Compression;
use crate::image::digest::{Algorithm, Digest, Hasher, HashingReader};
use crate::layer::entry::Meta;
use crate::layer::whiteout::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::stack::Stack;
use crate::tree::LowerTree;
use crate::tree::node::{NodeId, NodeKind};

/// Media type of the new layer and of uncompressed copied ones.
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The history entry's `created_by`.
pub const CREATED_BY: &str = "rimgfs commit";
/// Bytes of the ustar name and link-name fields; longer ones go in PAX records.
const NAME_FIELD: usize = 100;
/// Largest uid/gid the 8-byte octal ustar field holds; larger ones go in PAX records.
const MAX_USTAR_ID: u32 = 0o7_777_777;
/// Largest mtime the 12-byte octal ustar field holds.
const MAX_USTAR_TIME: i64 = 0o77_777_777_777;

/// The output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A `docker save` archive in Docker 25's shape: an OCI layout plus `manifest.json`.
    DockerArchive,
    /// An OCI image layout in a tar.
    OciArchive,
    /// An OCI image layout directory.
    Oci,
}

/// What `commit` writes, and where.
#[derive(Clone, Debug)]
pub struct CommitOptions {
    /// The output file (directory for [`Format::Oci`]).
    pub output: PathBuf,
    /// The reference to name the image by.
    pub tag: Option<String>,
    /// The output format.
    pub format: Format,
    /// The history entry's comment.
    pub message: Option<String>,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct Committed {
    /// Digest of the new manifest.
    pub manifest: Digest,
    /// diff_id (= blob digest) of the new layer.
    pub layer: Digest,
}

/// Writes the new image: `stack`'s layers plus a layer of `view`'s changes.
pub fn commit(stack: &Stack, view: &MergedView<'_>, opts: &CommitOptions) -> Result<Committed> {
    let out = &opts.output;
    if opts.format == Format::Oci && fs::symlink_metadata(out).is_ok() {
        return Err(Error::Io {
            op: "create",
            path: out.clone(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    let staging = Staging::new(out)?;
    let layer_path = staging.path.join("layer.tar");
    let (layer, layer_size) = write_layer(view, &layer_path)?;

    let mut blobs = Vec::new();
    for l in &stack.image.layers {
        let digest = match (&l.blob_digest, l.compression) {
            (Some(d), _) => d.clone(),
            // An uncompressed blob is its tar, already verified against its diff_id.
            (None, Compression::None) => l.diff_id.clone(),
            (None, _) => hash_blob(&l.blob)?,
        };
        let media_type = match l.compression {
            Compression::None => MT_LAYER_TAR,
            Compression::Gzip => MT_LAYER_GZIP,
            Compression::Zstd => MT_LAYER_ZSTD,
        };
        blobs.push(Blob {
            digest,
            size: l.blob.len(),
            media_type,
            source: Source::Layer(l.blob.clone()),
        });
    }
    blobs.push(Blob {
        digest: layer.clone(),
        size: layer_size,
        media_type: MT_LAYER_TAR,
        source: Source::File(layer_path.clone()),
    });

    let now = rfc3339(SystemTime::now());
    let config = new_config(
        &stack.image.config_raw,
        &layer,
        &now,
        opts.message.as_deref(),
    )
    .ok_or_else(|| Error::bad_image(&stack.image.origin, "config is not an object"))?;
    let config = Blob::bytes(config, MT_OCI_CONFIG);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": blobs.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    let manifest = Blob::bytes(to_json(&manifest), MT_OCI_MANIFEST);
    let committed = Committed {
        manifest: manifest.digest.clone(),
        layer,
    };

    let mut manifest_desc = manifest.descriptor();
    let tag = opts.tag.as_deref();
    let mut members: Vec<(String, Blob)> = Vec::new();
    match (opts.format, tag) {
        (Format::DockerArchive, _) => {
            let full = tag.map(docker_tag);
            if let Some(t) = &full {
                manifest_desc["annotations"] = json!({
                    ANN_CONTAINERD_NAME: t,
                    ANN_REF_NAME: t.rsplit_once(':').map_or("latest", |(_, v)| v),
                });
            }
            let entry = json!([{
                "Config": config.digest.blob_path(),
                "RepoTags": full.iter().collect::<Vec<_>>(),
                "Layers": blobs.iter().map(|b| b.digest.blob_path()).collect::<Vec<_>>(),
            }]);
            members.push(("manifest.json".into(), Blob::bytes(to_json(&entry), "")));
        }
        (_, Some(t)) => manifest_desc["annotations"] = json!({ ANN_REF_NAME: t }),
        (_, None) => {}
    }
    let index = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [manifest_desc],
    });
    members.push(("index.json".into(), Blob::bytes(to_json(&index), "")));
    members.push((
        "oci-layout".into(),
        Blob::bytes(br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(), ""),
    ));
    blobs.push(config);
    blobs.push(manifest);
    let mut all: Vec<(String, Blob)> = blobs
        .into_iter()
        .map(|b| (b.digest.blob_path(), b))
        .collect();
    all.append(&mut members);

    match opts.format {
        Format::Oci => {
            let dir = staging.path.join("layout");
            for (name, blob) in &all {
                let dest = dir.join(name);
                if let Some(parent) = dest.parent() {
                    fs::create_dir_all(parent).ctx("create directory", parent)?;
                }
                match &blob.source {
                    Source::File(p) => fs::rename(p, &dest).ctx("rename", &dest)?,
                    _ => {
                        let mut f = File::create(&dest).ctx("create", &dest)?;
                        blob.copy_to(&mut f)?;
                        f.sync_all().ctx("sync", &dest)?;
                    }
                }
            }
            fs::rename(&dir, out).ctx("rename", out)?;
        }
        Format::DockerArchive | Format::OciArchive => {
            let tmp = staging.path.join("out.tar");
            let f = File::create(&tmp).ctx("create", &tmp)?;
            let mut b = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, f));
            for dir in ["blobs/", "blobs/sha256/"] {
                append_member(&mut b, dir, tar::EntryType::Directory, 0, io::empty(), &tmp)?;
            }
            for (name, blob) in &all {
                let reader = blob.reader()?;
                let r = Exact::new(reader, blob.size, Path::new(name));
                append_member(&mut b, name, tar::EntryType::Regular, blob.size, r, &tmp)?;
            }
            let w = b.into_inner().ctx("write", &tmp)?;
            let f = w
                .into_inner()
                .map_err(|e| e.into_error())
                .ctx("write", &tmp)?;
            f.sync_all().ctx("sync", &tmp)?;
            fs::rename(&tmp, out).ctx("rename", out)?;
        }
    }
    Ok(committed)
}

/// A blob of the new image and where its bytes come from.
struct Blob {
    digest: Digest,
    size: u64,
    media_type: &'static str,
    source: Source,
}

enum Source {
    Layer(image::Blob),
    File(PathBuf),
    Bytes(Vec<u8>),
}

impl Blob {
    fn bytes(data: Vec<u8>, media_type: &'static str) -> Blob {
        Blob {
            digest: Digest::of_bytes(Algorithm::Sha256, &data),
            size: data.len() as u64,
            media_type,
            source: Source::Bytes(data),
        }
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest.as_str(), "size": self.size })
    }

    fn reader(&self) -> Result<Box<dyn Read + '_>> {
        Ok(match &self.source {
            Source::Layer(b) => b.reader()?,
            Source::File(p) => Box::new(io::BufReader::new(File::open(p).ctx("open", p)?)),
            Source::Bytes(b) => Box::new(&b[..]),
        })
    }

    fn copy_to(&self, w: &mut dyn Write) -> Result<()> {
        let name = PathBuf::from(self.digest.as_str());
        let mut r = Exact::new(self.reader()?, self.size, &name);
        io::copy(&mut r, w).ctx("copy", &name).map(drop)
    }
}

fn to_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn hash_blob(blob: &image::Blob) -> Result<Digest> {
    let what = PathBuf::from(blob.describe());
    let mut r = HashingReader::new(blob.reader()?, Some(Algorithm::Sha256));
    r.drain().ctx("read", &what)?;
    r.finish()
        .0
        .ok_or_else(|| Error::bad_image(&what, "blob could not be hashed"))
}

/// The config with the new layer: its diff_id, a history entry, a new creation time.
fn new_config(raw: &Value, diff_id: &Digest, now: &str, message: Option<&str>) -> Option<Vec<u8>> {
    let mut cfg = raw.clone();
    let obj = cfg.as_object_mut()?;
    obj.insert("created".into(), json!(now));
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| json!({ "type": "layers", "diff_ids": [] }));
    let ids = rootfs
        .as_object_mut()?
        .entry("diff_ids")
        .or_insert_with(|| json!([]));
    ids.as_array_mut()?.push(json!(diff_id.as_str()));
    let mut h = json!({ "created": now, "created_by": CREATED_BY });
    if let Some(m) = message {
        h["comment"] = json!(m);
    }
    let history = obj.entry("history").or_insert_with(|| json!([]));
    history.as_array_mut()?.push(h);
    Some(to_json(&cfg))
}

/// A Docker `RepoTags` entry: `name` means `name:latest`.
fn docker_tag(t: &str) -> String {
    let last = t.rsplit('/').next().unwrap_or(t);
    if last.contains(':') || t.contains('@') {
        t.to_string()
    } else {
        format!("{t}:latest")
    }
}

/// RFC 3339 in UTC with nanoseconds, as Docker writes `created`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// A directory beside the output for everything written before the final rename; removed
/// when dropped.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn new(out: &Path) -> Result<Staging> {
        let name = out.file_name().ok_or_else(|| Error::Io {
            op: "create",
            path: out.to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".tmp.{}", std::process::id()));
        let path = parent.join(tmp);
        if fs::symlink_metadata(&path).is_ok() {
            let _ = fs::remove_dir_all(&path);
        }
        fs::create_dir(&path).ctx("create directory", &path)?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Adds a member of the output archive.
fn append_member<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    ty: tar::EntryType,
    size: u64,
    data: impl Read,
    archive: &Path,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(ty);
    h.set_mode(if ty.is_dir() { 0o755 } else { 0o644 });
    h.set_size(size);
    h.set_mtime(0);
    h.set_path(name).ctx("write", archive)?;
    h.set_cksum();
    b.append(&h, data).ctx("write", archive)
}

/// A reader yielding exactly `len` bytes of `inner`, failing if it ends sooner (a file that
/// shrank while being archived would otherwise shift every later tar entry).
struct Exact<'p, R> {
    inner: io::Take<R>,
    left: u64,
    what: &'p Path,
}

impl<'p, R: Read> Exact<'p, R> {
    fn new(inner: R, len: u64, what: &'p Path) -> Self {
        Exact {
            inner: inner.take(len),
            left: len,
            what,
        }
    }
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: shorter than expected", self.what.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

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
fn write_layer(view: &MergedView<'_>, dest: &Path) -> Result<(Digest, u64)> {
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
    lw.append(
        b".",
        tar::EntryType::Directory,
        &node.meta,
        public(node),
        None,
        None,
    )?;
    lw.dir_body(b"", &root, Some(LowerTree::ROOT), false, &node.meta)?;
    let w = lw.tar.into_inner().ctx("write", dest)?;
    let (digest, count) = (w.hasher.finish(), w.count);
    let f = w
        .inner
        .into_inner()
        .map_err(|e| e.into_error())
        .ctx("write", dest)?;
    f.sync_all().ctx("sync", dest)?;
    Ok((digest, count))
}

type XattrRef<'a> = Vec<(&'a [u8], &'a [u8])>;

fn public(n: &UpperNode) -> XattrRef<'_> {
    n.public_xattrs().map(|(k, v)| (&**k, &**v)).collect()
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
                self.append(
                    &marker,
                    tar::EntryType::Regular,
                    meta,
                    Vec::new(),
                    None,
                    None,
                )?;
            }
            full = origin.is_some();
            same = None;
        }
        let dir = self.view.dir(path, m)?;
        if !full {
            for (name, w) in &dir.whiteouts {
                if same.and_then(|s| self.tree().lookup(s, name)).is_some() {
                    let wh = join(path, &[WHITEOUT_PREFIX, name].concat());
                    self.append(
                        &wh,
                        tar::EntryType::Regular,
                        &w.meta,
                        Vec::new(),
                        None,
                        None,
                    )?;
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
                let x = public(node);
                if !node.is_dir()
                    && node.nlink > 1
                    && self.linked(LinkKey::Upper(node.inode.0, node.inode.1), path)?
                {
                    return Ok(None);
                }
                match &node.kind {
                    UpperKind::Dir(_) => {
                        self.append(path, T::Directory, &node.meta, x, None, None)?;
                        return Ok(Some(node.meta));
                    }
                    UpperKind::File { .. } if metacopy => {
                        let data = self.lower_data(lower, path)?;
                        self.append(path, T::Regular, &node.meta, x, None, Some(data))?;
                    }
                    UpperKind::File { size } => {
                        let f = self.view.upper.open_file(path)?;
                        let host = self.view.upper.path.join(std::ffi::OsStr::from_bytes(path));
                        let data = Data {
                            reader: Box::new(io::BufReader::new(f)),
                            size: *size,
                            what: host,
                        };
                        self.append(path, T::Regular, &node.meta, x, None, Some(data))?;
                    }
                    UpperKind::Symlink(t) => {
                        self.append(path, T::Symlink, &node.meta, x, Some(t), None)?;
                    }
                    UpperKind::CharDev { major, minor } => {
                        self.device(path, T::Char, &node.meta, x, *major, *minor)?;
                    }
                    UpperKind::BlockDev { major, minor } => {
                        self.device(path, T::Block, &node.meta, x, *major, *minor)?;
                    }
                    UpperKind::Fifo => self.append(path, T::Fifo, &node.meta, x, None, None)?,
                    UpperKind::Socket => {
                        log::warn!(
                            "{}: a socket has no tar form; left out",
                            self.view
                                .upper
                                .path
                                .join(std::ffi::OsStr::from_bytes(path))
                                .display()
                        );
                    }
                }
                Ok(None)
            }
            Merged::Lower(id) => {
                let Some(n) = self.tree().node(id).cloned() else {
                    return Ok(None);
                };
                let x: XattrRef<'_> = n.xattrs.iter().map(|(k, v)| (&**k, &**v)).collect();
                if !n.is_dir() && n.nlink > 1 && self.linked(LinkKey::Lower(id), path)? {
                    return Ok(None);
                }
                match &n.kind {
                    NodeKind::Dir { .. } => {
                        self.append(path, T::Directory, &n.meta, x, None, None)?;
                        return Ok(Some(n.meta));
                    }
                    NodeKind::File(_) => {
                        let data = self.lower_data(Some(id), path)?;
                        self.append(path, T::Regular, &n.meta, x, None, Some(data))?;
                    }
                    NodeKind::Symlink(t) => {
                        self.append(path, T::Symlink, &n.meta, x, Some(t), None)?;
                    }
                    NodeKind::CharDev { major, minor } => {
                        self.device(path, T::Char, &n.meta, x, *major, *minor)?;
                    }
                    NodeKind::BlockDev { major, minor } => {
                        self.device(path, T::Block, &n.meta, x, *major, *minor)?;
                    }
                    NodeKind::Fifo => self.append(path, T::Fifo, &n.meta, x, None, None)?,
                }
                Ok(None)
            }
        }
    }

    /// For a later name of a multiply-linked inode, writes a hard link to its first name and
    /// returns true; records a first name and returns false.
    fn linked(&mut self, key: LinkKey, path: &[u8]) -> Result<bool> {
        let Some(first) = self.links.get(&key).cloned() else {
            self.links.insert(key, path.to_vec());
            return Ok(false);
        };
        let meta = Meta::default();
        self.append(
            path,
            tar::EntryType::Link,
            &meta,
            Vec::new(),
            Some(&first),
            None,
        )?;
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
            path: self.view.upper.path.join(std::ffi::OsStr::from_bytes(path)),
            reason: "no lower file holds its data".into(),
        })?;
        let data = tree
            .data_files
            .get(usize::from(d.layer))
            .ok_or_else(|| Error::BadUpper {
                path: self.view.upper.path.join(std::ffi::OsStr::from_bytes(path)),
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

    fn device(
        &mut self,
        path: &[u8],
        ty: tar::EntryType,
        meta: &Meta,
        x: XattrRef<'_>,
        major: u32,
        minor: u32,
    ) -> Result<()> {
        let dev = Some((major, minor));
        self.append_full(path, ty, meta, x, None, None, dev)
    }

    fn append(
        &mut self,
        path: &[u8],
        ty: tar::EntryType,
        meta: &Meta,
        x: XattrRef<'_>,
        link: Option<&[u8]>,
        data: Option<Data>,
    ) -> Result<()> {
        self.append_full(path, ty, meta, x, link, data, None)
    }

    /// Writes a header (with a PAX header before it for what ustar cannot hold) and data.
    #[allow(clippy::too_many_arguments)]
    fn append_full(
        &mut self,
        path: &[u8],
        ty: tar::EntryType,
        meta: &Meta,
        x: XattrRef<'_>,
        link: Option<&[u8]>,
        data: Option<Data>,
        dev: Option<(u32, u32)>,
    ) -> Result<()> {
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
    fn rfc3339_table() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000000005Z"),
            (1_700_000_000, 0, "2023-11-14T22:13:20.000000000Z"),
        ];
        for (s, n, want) in cases {
            let t = UNIX_EPOCH + std::time::Duration::new(s, n);
            assert_eq!(rfc3339(t), want);
        }
    }

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

    #[test]
    fn docker_tags_get_latest() {
        assert_eq!(docker_tag("app"), "app:latest");
        assert_eq!(
            docker_tag("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(docker_tag("app:v1"), "app:v1");
    }

    #[test]
    fn config_gets_layer_and_history() {
        let raw = json!({"rootfs": {"type": "layers", "diff_ids": ["sha256:00"]}, "history": []});
        let d = Digest::of_bytes(Algorithm::Sha256, b"x");
        let out = new_config(&raw, &d, "T", Some("msg")).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["rootfs"]["diff_ids"][1], json!(d.as_str()));
        assert_eq!(v["history"][0]["created_by"], json!(CREATED_BY));
        assert_eq!(v["history"][0]["comment"], json!("msg"));
        assert_eq!(v["created"], json!("T"));
    }
}
