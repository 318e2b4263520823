//! `containers-storage:[[driver@]graphroot[+runroot][:options]]IMAGE`: images in the store
//! of podman, buildah and CRI-O, read in place (containers/storage's on-disk format).
//!
//! ```text
//! <graphroot>/<driver>-images/images.json     image records: id, names, top layer, big data
//!            /<driver>-images/<id>/<key>      big data: "manifest", the config (key = its
//!                                             digest), named "=" + base64(key) unless the key
//!                                             is only [0-9a-z.]
//!            /<driver>-layers/layers.json     layer records: id, parent, diff digest and size
//!            /<driver>-layers/volatile-layers.json   (also in <runroot>/<driver>-layers/)
//!            /<driver>-layers/<id>.tar-split.gz      the layer tar without file payloads
//!            /overlay/<id>/diff/  or  /vfs/dir/<id>/  the files, at their paths in the tar
//! ```
//! The JSON files and big data are read under shared locks on `layers.lock` and `images.lock`
//! (taken in that order, as containers/storage does when it needs both). The layout carries no
//! version number, so what is read is checked instead: the driver is `overlay` or `vfs`; the
//! records parse with the fields rimgfs relies on; manifests are OCI or Docker schema 2; a
//! layer marked incomplete, or stored as composefs objects, is refused; tar-split records are of
//! the two known types. The manifest and config are verified against their digests; a layer's
//! recorded diff digest must be the config's diff_id. Nothing is ever written into the store.
//! Dependencies: error, sys (DirFd), image (mod, config, digest), conf, names, lock, tarsplit.

pub mod conf;
pub mod lock;
pub mod names;
pub mod tarsplit;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use super::config::{MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_INDEX, MT_OCI_MANIFEST, Manifest};
use super::container::Compression;
use super::digest::{Digest, Hasher};
use super::{Blob, Image, LayerRef, OpenOptions};
use crate::error::{Context, Error, Result};
use crate::sys::DirFd;
use conf::Location;
use lock::SharedLock;

/// The transport prefix.
pub const PREFIX: &str = "containers-storage:";
/// Largest big-data item read into memory (manifests and configs are a few KiB).
const MAX_BIG_DATA: u64 = 64 << 20;
/// Length of the hex IDs containers/storage gives images and layers.
const ID_LEN: usize = 64;
/// The `flags` key containers/storage sets on a layer until it is fully written.
const INCOMPLETE_FLAG: &str = "incomplete";
/// The media type of an uncompressed layer, which is what a store holds.
const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// An image record of `images.json` (the fields rimgfs uses).
#[derive(Debug, Deserialize)]
struct ImageRecord {
    id: String,
    #[serde(default)]
    digest: Option<String>,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default, rename = "layer")]
    top_layer: Option<String>,
    #[serde(default, rename = "big-data-digests")]
    big_data_digests: BTreeMap<String, String>,
}

/// A layer record of `layers.json`.
#[derive(Debug, Deserialize)]
struct LayerRecord {
    id: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default, rename = "diff-digest")]
    diff_digest: Option<String>,
    #[serde(default, rename = "diff-size")]
    diff_size: Option<i64>,
    #[serde(default)]
    flags: HashMap<String, serde_json::Value>,
}

/// A layer kept in a store: its tar is its tar-split records plus its directory's files.
/// Both are opened while the store is locked, so a layer removed afterwards is still read
/// whole, or not at all.
#[derive(Clone, Debug)]
pub struct StoreLayer {
    /// The layer's ID in the store.
    pub id: String,
    /// The directory holding its files at their tar paths (`overlay/<id>/diff`), for messages.
    pub dir: PathBuf,
    /// That directory, open.
    pub dir_fd: Arc<DirFd>,
    /// Its tar-split file, for messages and cache keys.
    pub tar_split: PathBuf,
    /// That file, open.
    pub tar_split_file: Arc<File>,
    /// Length of its tar.
    pub size: u64,
    /// Its diff_id, which the tar hashes to.
    pub diff_id: Digest,
}

impl StoreLayer {
    /// The tar-split records, from the start.
    pub fn records(&self) -> tarsplit::Records<impl Read + use<>> {
        tarsplit::Records::open(FileAt {
            file: self.tar_split_file.clone(),
            pos: 0,
        })
    }

    /// The whole layer tar, replayed from the tar-split records with each payload read from
    /// the layer's directory; the read that reaches the end fails unless the tar hashes to
    /// the diff_id and has the recorded length.
    pub fn reader(&self) -> Result<Box<dyn Read + Send>> {
        let stream =
            tarsplit::TarStream::new(self.records(), tarsplit::Payloads::Dir(self.dir_fd.clone()));
        Ok(Box::new(Verified {
            inner: stream,
            hasher: Some(Hasher::new(self.diff_id.algorithm())),
            count: 0,
            want: self.diff_id.clone(),
            len: self.size,
        }))
    }

    /// Names the layer in messages.
    pub fn describe(&self) -> String {
        format!("store layer {}", self.id)
    }
}

/// Reads a shared file from a position of its own (`pread`), so readers never share an
/// offset.
struct FileAt {
    file: Arc<File>,
    pos: u64,
}

impl Read for FileAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Checks a stream's digest and length once it ends.
struct Verified<R: Read> {
    inner: R,
    hasher: Option<Hasher>,
    count: u64,
    want: Digest,
    len: u64,
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        match &mut self.hasher {
            Some(h) if n > 0 => h.update(&buf[..n]),
            Some(_) if !buf.is_empty() => {
                let found = self.hasher.take().map(Hasher::finish);
                if self.count != self.len || found.as_ref() != Some(&self.want) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "the layer's files no longer match it: {} bytes hashing to {} \
                             where {} bytes hashing to {} were recorded",
                            self.count,
                            found.map_or_else(|| "?".into(), |d| d.to_string()),
                            self.len,
                            self.want
                        ),
                    ));
                }
            }
            _ => {}
        }
        Ok(n)
    }
}

/// Opens the regular file at `path` (relative to the layer root, as a tar names it) in the
/// layer directory `dir`, refusing symlinks and `..` on the way (the kernel resolves beneath
/// `dir`), and checks that it holds `size` bytes.
pub fn open_layer_file(dir: &DirFd, path: &[u8], size: u64) -> io::Result<File> {
    use std::ffi::OsStr;
    let rel = {
        let mut p = path;
        while let Some(rest) = p.strip_prefix(b"/").or_else(|| p.strip_prefix(b"./")) {
            p = rest;
        }
        p
    };
    let not_here = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: not a regular file of {size} bytes in the layer's directory",
                String::from_utf8_lossy(path)
            ),
        )
    };
    // O_NONBLOCK: a fifo planted where a file should be must not block the open.
    let flags = libc::O_RDONLY | libc::O_NONBLOCK;
    let f = match rel.iter().rposition(|&b| b == b'/') {
        Some(i) => dir
            .open_beneath(Path::new(OsStr::from_bytes(&rel[..i])))?
            .open_file(OsStr::from_bytes(&rel[i + 1..]), flags, 0)?,
        None => dir.open_file(OsStr::from_bytes(rel), flags, 0)?,
    };
    let m = f.metadata()?;
    if !m.is_file() || m.len() != size {
        return Err(not_here());
    }
    Ok(f)
}

/// Splits off the transport and store specifier: the store's location and the image name.
fn locate(reference: &str) -> Result<(Location, &str)> {
    let (spec, name) = conf::split_reference(reference)?;
    let loc = conf::locate_here(spec.as_ref())?;
    if !conf::DRIVERS.contains(&loc.driver.as_str()) {
        return Err(Error::bad_image(
            &loc.graph_root,
            format!(
                "containers-storage driver {:?} is not supported (only {})",
                loc.driver,
                conf::DRIVERS.join(", ")
            ),
        ));
    }
    Ok((loc, name))
}

/// Opens `containers-storage:REFERENCE` (the part after the prefix).
pub fn open(reference: &str, opts: &OpenOptions) -> Result<Image> {
    let origin = PathBuf::from(format!("{PREFIX}{reference}"));
    if opts.selector.is_some() {
        return Err(Error::Usage(format!(
            "{}: --ref does not apply; name the image in the argument",
            origin.display()
        )));
    }
    let (loc, name) = locate(reference)?;
    Store::new(loc, origin).open(name)
}

/// A store being read.
struct Store {
    loc: Location,
    origin: PathBuf,
}

impl Store {
    fn new(loc: Location, origin: PathBuf) -> Store {
        Store { loc, origin }
    }

    fn dir(&self, kind: &str) -> PathBuf {
        self.loc
            .graph_root
            .join(format!("{}-{kind}", self.loc.driver))
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::bad_image(&self.origin, reason)
    }

    fn lock(&self, path: PathBuf) -> Result<SharedLock> {
        SharedLock::acquire(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::bad_image(
                &self.origin,
                format!(
                    "no {} store at {} ({} is missing)",
                    self.loc.driver,
                    self.loc.graph_root.display(),
                    path.display()
                ),
            ),
            _ => Error::Io {
                op: "lock",
                path,
                source: e,
            },
        })
    }

    /// Reads a JSON list of records; an absent file is an empty list.
    fn records<T: serde::de::DeserializeOwned>(&self, path: &Path) -> Result<Vec<T>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).ctx("read", path),
        };
        if bytes.is_empty() {
            return Ok(Vec::new());
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            self.bad(format!(
                "{}: not a containers-storage record list rimgfs knows: {e}",
                path.display()
            ))
        })
    }

    fn open(&self, name: &str) -> Result<Image> {
        // Layers first, then images: containers/storage's order when it holds both.
        let _layers_lock = self.lock(self.dir("layers").join("layers.lock"))?;
        let _images_lock = self.lock(self.dir("images").join("images.lock"))?;
        let images: Vec<ImageRecord> = self.records(&self.dir("images").join("images.json"))?;
        let named: Vec<names::Named<'_>> = images
            .iter()
            .map(|i| names::Named {
                id: &i.id,
                names: &i.names,
                digests: i.manifest_digests(),
            })
            .collect();
        let chosen = names::find(&named, name).map_err(|e| {
            let mut all: Vec<&str> = images
                .iter()
                .flat_map(|i| i.names.iter().map(String::as_str))
                .collect();
            all.truncate(20);
            Error::UnknownRef {
                path: self.origin.clone(),
                reason: format!(
                    "{e} in the store at {} (images: {})",
                    self.loc.graph_root.display(),
                    if all.is_empty() {
                        "none named".into()
                    } else {
                        all.join(", ")
                    }
                ),
            }
        })?;
        let img = &images[chosen];
        check_id(&img.id).map_err(|e| self.bad(e))?;
        let (manifest_digest, manifest) = self.manifest(img)?;
        let config_digest = Digest::parse_in(&manifest.config.digest, &self.origin)?;
        let config_bytes = self.big_data(img, config_digest.as_str(), Some(&config_digest))?;
        let (config, config_raw) = super::parse_config(&self.origin, &config_bytes)?;
        let layers = self.layers(img, &config.rootfs.diff_ids, &manifest)?;
        Ok(Image {
            origin: self.origin.clone(),
            refs: img.names.clone(),
            manifest_digest: Some(manifest_digest),
            config_digest: Some(config_digest),
            config,
            config_raw,
            layers,
        })
    }

    /// Reads an image's big-data item `key`, verifying it against `want` (or the digest the
    /// record holds for it).
    fn big_data(&self, img: &ImageRecord, key: &str, want: Option<&Digest>) -> Result<Vec<u8>> {
        let path = self.dir("images").join(&img.id).join(big_data_name(key));
        let f = File::open(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::MissingBlob {
                path: self.origin.clone(),
                digest: format!("{key} (image {})", img.id),
            },
            _ => Error::Io {
                op: "open",
                path: path.clone(),
                source: e,
            },
        })?;
        let mut bytes = Vec::new();
        f.take(MAX_BIG_DATA + 1)
            .read_to_end(&mut bytes)
            .ctx("read", &path)?;
        if bytes.len() as u64 > MAX_BIG_DATA {
            return Err(self.bad(format!("{}: too large", path.display())));
        }
        let recorded = img
            .big_data_digests
            .get(key)
            .map(|d| Digest::parse_in(d, &self.origin))
            .transpose()?;
        if let Some(want) = want.or(recorded.as_ref()) {
            let found = Digest::of_bytes(want.algorithm(), &bytes);
            if &found != want {
                return Err(Error::DigestMismatch {
                    path: self.origin.clone(),
                    what: format!("{key} of image {}", img.id),
                    expected: want.to_string(),
                    found: found.to_string(),
                });
            }
        }
        Ok(bytes)
    }

    /// The image's manifest: OCI or Docker schema 2.
    fn manifest(&self, img: &ImageRecord) -> Result<(Digest, Manifest)> {
        let bytes = self.big_data(img, "manifest", None)?;
        let digest = match img.big_data_digests.get("manifest").or(img.digest.as_ref()) {
            Some(d) => Digest::parse_in(d, &self.origin)?,
            None => Digest::of_bytes(super::digest::Algorithm::Sha256, &bytes),
        };
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| self.bad(format!("manifest of image {}: {e}", img.id)))?;
        let media_type = value
            .get("mediaType")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let schema = value.get("schemaVersion").and_then(|v| v.as_u64());
        if [MT_OCI_INDEX, MT_DOCKER_LIST].contains(&media_type) {
            return Err(self.bad(format!(
                "image {} is a manifest list; name one of its images",
                img.id
            )));
        }
        let known = [MT_OCI_MANIFEST, MT_DOCKER_MANIFEST, ""].contains(&media_type);
        if schema != Some(2) || !known {
            return Err(self.bad(format!(
                "image {}: unsupported manifest (schemaVersion {}, mediaType {media_type:?})",
                img.id,
                schema.map_or_else(|| "missing".into(), |s| s.to_string())
            )));
        }
        let manifest: Manifest = serde_json::from_value(value)
            .map_err(|e| self.bad(format!("manifest of image {}: {e}", img.id)))?;
        Ok((digest, manifest))
    }

    /// The image's layer chain, bottom first, checked against the config's diff_ids.
    fn layers(
        &self,
        img: &ImageRecord,
        diff_ids: &[String],
        manifest: &Manifest,
    ) -> Result<Vec<LayerRef>> {
        let layers_dir = self.dir("layers");
        let mut records: Vec<LayerRecord> = self.records(&layers_dir.join("layers.json"))?;
        // Layers of a transient store live in the run root; containers/storage reads both
        // places (a record that appears twice counts once).
        for dir in [
            layers_dir.clone(),
            self.loc
                .run_root
                .join(format!("{}-layers", self.loc.driver)),
        ] {
            records.extend(self.records::<LayerRecord>(&dir.join("volatile-layers.json"))?);
        }
        let mut by_id: HashMap<&str, &LayerRecord> = HashMap::new();
        for r in &records {
            by_id.entry(r.id.as_str()).or_insert(r);
        }
        let mut chain = Vec::new();
        let mut next = img.top_layer.as_deref().filter(|l| !l.is_empty());
        while let Some(id) = next {
            let rec = by_id.get(id).ok_or_else(|| {
                self.bad(format!("image {}: layer {id} is not in the store", img.id))
            })?;
            if chain.len() > diff_ids.len() {
                return Err(self.bad(format!(
                    "image {}: its layer chain is longer than its {} diff_ids",
                    img.id,
                    diff_ids.len()
                )));
            }
            chain.push(*rec);
            next = rec.parent.as_deref().filter(|p| !p.is_empty());
        }
        chain.reverse();
        if chain.len() != diff_ids.len() {
            return Err(self.bad(format!(
                "image {}: the store has {} layers for it but its config lists {} diff_ids",
                img.id,
                chain.len(),
                diff_ids.len()
            )));
        }
        chain
            .into_iter()
            .zip(diff_ids)
            .enumerate()
            .map(|(index, (rec, diff_id))| self.layer(index, rec, diff_id, manifest))
            .collect()
    }

    fn layer(
        &self,
        index: usize,
        rec: &LayerRecord,
        diff_id: &str,
        manifest: &Manifest,
    ) -> Result<LayerRef> {
        let id = &rec.id;
        check_id(id).map_err(|e| self.bad(e))?;
        let diff_id = Digest::parse_in(diff_id, &self.origin)?;
        if rec.flags.get(INCOMPLETE_FLAG).is_some_and(|v| v == true) {
            return Err(self.bad(format!(
                "layer {id} is incomplete (being written or damaged)"
            )));
        }
        if let Some(d) = rec.diff_digest.as_deref().filter(|d| !d.is_empty()) {
            if d != diff_id.as_str() {
                return Err(Error::DigestMismatch {
                    path: self.origin.clone(),
                    what: format!("layer {index} (store layer {id})"),
                    expected: diff_id.to_string(),
                    found: d.to_string(),
                });
            }
        }
        let dir = match self.loc.driver.as_str() {
            "vfs" => self.loc.graph_root.join("vfs/dir").join(id),
            _ => {
                let base = self.loc.graph_root.join("overlay").join(id);
                // composefs layers keep files as content-addressed objects, not at their paths.
                if base.join("composefs-data").exists() {
                    return Err(self.bad(format!(
                        "layer {id} is stored as composefs objects, which rimgfs does not read"
                    )));
                }
                base.join("diff")
            }
        };
        if !dir.is_dir() {
            return Err(self.bad(format!(
                "layer {id}: its directory {} is missing",
                dir.display()
            )));
        }
        let dir_fd = DirFd::open_root(&dir).ctx("open", &dir)?;
        let tar_split = self.dir("layers").join(format!("{id}.tar-split.gz"));
        let f = Arc::new(File::open(&tar_split).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => self.bad(format!("layer {id} has no tar-split data")),
            _ => Error::Io {
                op: "open",
                path: tar_split.clone(),
                source: e,
            },
        })?);
        let size = match rec.diff_size.and_then(|s| u64::try_from(s).ok()) {
            Some(s) if s > 0 => s,
            // Older records may lack the size; the records themselves give it.
            _ => tarsplit::tar_len(FileAt {
                file: f.clone(),
                pos: 0,
            })
            .map_err(|e| self.bad(format!("layer {id}: {e}")))?,
        };
        Ok(LayerRef {
            index,
            blob_digest: None,
            diff_id: diff_id.clone(),
            media_type: manifest
                .layers
                .get(index)
                .and_then(|d| d.media_type.clone())
                .filter(|m| m.ends_with(".tar") || m.ends_with(".tar.layer"))
                .unwrap_or_else(|| MT_LAYER_TAR.to_string()),
            compression: Compression::None,
            blob: Blob::Store(StoreLayer {
                id: id.clone(),
                dir,
                dir_fd: Arc::new(dir_fd),
                tar_split,
                tar_split_file: f,
                size,
                diff_id,
            }),
        })
    }
}

impl ImageRecord {
    /// The digests of the manifests the image holds (its own and any `manifest-<digest>`).
    fn manifest_digests(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.digest.iter().map(String::as_str).collect();
        for (k, d) in &self.big_data_digests {
            if k.starts_with("manifest") && !v.contains(&d.as_str()) {
                v.push(d);
            }
        }
        v
    }
}

/// Refuses an ID that is not 64 lower-case hex digits, so it can name a path safely.
fn check_id(id: &str) -> std::result::Result<(), String> {
    if id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("invalid ID {id:?} in the store's records"))
    }
}

/// The file name containers/storage gives a big-data item (`makeBigDataBaseName`).
fn big_data_name(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b == b'.' || b.is_ascii_digit() || b.is_ascii_lowercase())
    {
        key.to_string()
    } else {
        format!(
            "={}",
            base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_data_names() {
        assert_eq!(big_data_name("manifest"), "manifest");
        assert_eq!(
            big_data_name(
                "sha256:18f73bae53b8b0459639e0509ccacdc3209e83db999613ec69f4f824a068aef7"
            ),
            "=c2hhMjU2OjE4ZjczYmFlNTNiOGIwNDU5NjM5ZTA1MDljY2FjZGMzMjA5ZTgzZGI5OTk2MTNlYzY5ZjRmODI0YTA2OGFlZjc="
        );
        assert_eq!(big_data_name("Manifest"), "=TWFuaWZlc3Q=");
    }

    #[test]
    fn ids_must_be_hex() {
        assert!(check_id(&"a".repeat(64)).is_ok());
        for bad in ["../../etc", "", &"A".repeat(64), &"a".repeat(63)] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn records_parse_with_unknown_fields() {
        let layers: Vec<LayerRecord> = serde_json::from_str(
            r#"[{"id":"x","parent":"y","diff-digest":"sha256:1","diff-size":5,
                "flags":{"incomplete":true},"uidset":[0],"future":{"a":1}}]"#,
        )
        .unwrap();
        assert_eq!(layers[0].diff_size, Some(5));
        assert!(layers[0].flags.contains_key(INCOMPLETE_FLAG));
        let images: Vec<ImageRecord> = serde_json::from_str(
            r#"[{"id":"x","names":["a:1"],"layer":"l","big-data-digests":
                {"manifest":"sha256:m","manifest-sha256:n":"sha256:n","sha256:c":"sha256:c"}}]"#,
        )
        .unwrap();
        assert_eq!(images[0].manifest_digests(), ["sha256:m", "sha256:n"]);
    }

    #[test]
    fn layer_files_open_beneath_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), b"1234").unwrap();
        std::fs::write(dir.path().join("top"), b"").unwrap();
        std::os::unix::fs::symlink("/etc", dir.path().join("a/up")).unwrap();
        nix::unistd::mkfifo(&dir.path().join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let d = DirFd::open_root(dir.path()).unwrap();
        assert!(open_layer_file(&d, b"a/b/f", 4).is_ok());
        assert!(open_layer_file(&d, b"./a/b/f", 4).is_ok());
        assert!(open_layer_file(&d, b"/top", 0).is_ok());
        for (p, size) in [
            (&b"a/b/f"[..], 3),
            (b"a/up/passwd", 0),
            (b"../x", 0),
            (b"a", 0),
            (b"fifo", 0),
            (b"missing", 0),
        ] {
            assert!(open_layer_file(&d, p, size).is_err(), "{p:?}");
        }
    }
}
