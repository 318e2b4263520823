//! Layers served as if from a registry: a [`BlobFetch`] over an OCI layout's blob files that
//! counts requests and bytes and injects faults, an opener that turns a local layout into an
//! `Image` whose layers are `Blob::Remote`, and a writer of eStargz layers per
//! containerd/stargz-snapshotter `docs/estargz.md` (a gzip member per file payload or
//! chunk, the TOC as the last tar entry, the 51-byte footer).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use rimgfs::cache::Cache;
use rimgfs::image::digest::Digest;
use rimgfs::image::remote::{BlobFetch, RemoteBlob};
use rimgfs::image::{Blob, Image, ImageSpec, OpenOptions};
use serde_json::{Value, json};

use super::image::{MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_MANIFEST, sha256};
use super::spec::{Entry, Kind, append_entry};

/// Faults to inject, each counted down as it is used.
#[derive(Debug, Default)]
pub struct Faults {
    /// Range requests that fail with an error.
    pub fail: usize,
    /// Range requests that return one byte less.
    pub short: usize,
    /// Range requests whose first byte is flipped.
    pub corrupt: usize,
    /// Every request fails (the registry is gone).
    pub dead: bool,
    /// Streams that break after this many bytes, and how many of them.
    pub cut_streams: usize,
    pub cut_after: u64,
    /// A pause before each range request's answer.
    pub delay: Duration,
}

/// Serves the blobs of an OCI layout by range, counting what it serves.
#[derive(Debug)]
pub struct FileFetch {
    pub dir: PathBuf,
    pub requests: AtomicUsize,
    pub streams: AtomicUsize,
    pub bytes: AtomicU64,
    pub faults: Mutex<Faults>,
}

impl FileFetch {
    pub fn new(layout: &Path) -> Arc<FileFetch> {
        Arc::new(FileFetch {
            dir: layout.to_path_buf(),
            requests: AtomicUsize::new(0),
            streams: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            faults: Mutex::new(Faults::default()),
        })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.blob_path())
    }

    /// Requests of any kind so far.
    pub fn total_requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst) + self.streams.load(Ordering::SeqCst)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    pub fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap()
    }
}

fn take(n: &mut usize) -> bool {
    if *n > 0 {
        *n -= 1;
        true
    } else {
        false
    }
}

/// A stream that fails after `left` bytes.
struct Cut {
    inner: std::fs::File,
    left: Option<u64>,
    served: Arc<FileFetch>,
}

impl Read for Cut {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = match self.left {
            Some(0) => return Err(std::io::Error::other("connection reset (injected)")),
            Some(l) => buf.len().min(l as usize),
            None => buf.len(),
        };
        let n = self.inner.read(&mut buf[..want])?;
        if let Some(l) = &mut self.left {
            *l -= n as u64;
        }
        self.served.bytes.fetch_add(n as u64, Ordering::SeqCst);
        Ok(n)
    }
}

/// A handle that can be shared as the `Arc<dyn BlobFetch>` of a `RemoteBlob`.
#[derive(Debug, Clone)]
pub struct Shared(pub Arc<FileFetch>);

impl BlobFetch for Shared {
    fn stream(&self, d: &Digest, offset: u64) -> std::io::Result<Box<dyn Read + Send>> {
        let me = &self.0;
        me.streams.fetch_add(1, Ordering::SeqCst);
        let left = {
            let mut f = me.faults();
            if f.dead {
                return Err(std::io::Error::other("connection refused (injected)"));
            }
            let after = f.cut_after;
            take(&mut f.cut_streams).then_some(after)
        };
        let mut file = std::fs::File::open(me.path(d))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(offset))?;
        Ok(Box::new(Cut {
            inner: file,
            left,
            served: me.clone(),
        }))
    }

    fn range(&self, d: &Digest, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
        let me = &self.0;
        me.requests.fetch_add(1, Ordering::SeqCst);
        let (fail, short, corrupt, delay) = {
            let mut f = me.faults();
            if f.dead {
                return Err(std::io::Error::other("connection refused (injected)"));
            }
            (
                take(&mut f.fail),
                take(&mut f.short),
                take(&mut f.corrupt),
                f.delay,
            )
        };
        std::thread::sleep(delay);
        if fail {
            return Err(std::io::Error::other("503 Service Unavailable (injected)"));
        }
        let mut buf = vec![0u8; len as usize];
        std::fs::File::open(me.path(d))?.read_exact_at(&mut buf, offset)?;
        if short {
            buf.pop();
        }
        if corrupt {
            buf[0] ^= 0xff;
        }
        me.bytes.fetch_add(buf.len() as u64, Ordering::SeqCst);
        Ok(buf)
    }

    fn describe(&self) -> String {
        "docker://test.invalid/image".into()
    }
}

/// Opens the OCI layout at `dir` as an image whose layers are fetched through `fetch`
/// (annotations from the manifest, as a registry's manifest would carry them). `scratch`
/// is a cache the local open may use; the remote image shares nothing with it.
pub fn open_remote(dir: &Path, fetch: &Arc<FileFetch>, scratch: &Path) -> Image {
    let spec = ImageSpec::parse(&format!("oci:{}", dir.display())).unwrap();
    let mut img = rimgfs::image::open(
        &spec,
        &OpenOptions::default(),
        &Cache::new(scratch.to_path_buf()),
    )
    .unwrap();
    let manifest: Value = {
        let d = img.manifest_digest.clone().unwrap();
        serde_json::from_slice(&std::fs::read(dir.join(d.blob_path())).unwrap()).unwrap()
    };
    for (l, desc) in img
        .layers
        .iter_mut()
        .zip(manifest["layers"].as_array().unwrap())
    {
        let annotations: BTreeMap<String, String> = desc["annotations"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let digest = l.blob_digest.clone().unwrap();
        l.blob = Blob::Remote(RemoteBlob {
            fetch: Arc::new(Shared(fetch.clone())),
            len: l.blob.len(),
            digest,
            annotations,
        });
    }
    img.origin = PathBuf::from("docker://test.invalid/image");
    img
}

/// A layer blob to put in a layout.
pub struct LayerBlob {
    pub bytes: Vec<u8>,
    pub diff_id: String,
    pub media_type: String,
    pub annotations: Value,
}

/// Writes an OCI layout of one image with these layers.
pub fn write_layout(dir: &Path, layers: &[LayerBlob]) {
    let put = |bytes: &[u8]| {
        let d = sha256(bytes);
        let p = dir
            .join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
        d
    };
    let config = json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>() },
    });
    let config = serde_json::to_vec(&config).unwrap();
    let descs: Vec<Value> = layers
        .iter()
        .map(|l| {
            let mut d = json!({ "mediaType": l.media_type, "digest": put(&l.bytes), "size": l.bytes.len() });
            if !l.annotations.is_null() {
                d["annotations"] = l.annotations.clone();
            }
            d
        })
        .collect();
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": { "mediaType": MT_OCI_CONFIG, "digest": put(&config), "size": config.len() },
        "layers": descs,
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    let index = json!({ "schemaVersion": 2, "mediaType": MT_OCI_INDEX,
        "manifests": [{ "mediaType": MT_OCI_MANIFEST, "digest": put(&manifest), "size": manifest.len() }] });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// RFC 3339 of a Unix time, as the TOC's `modtime` has it.
fn rfc3339(t: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(t).expect("mtime after 1970"));
    rimgfs::commit::rfc3339(t)
}

/// The layers of `spec` as eStargz blobs (see [`estargz`]), each with its TOC annotation.
pub fn estargz_layers(spec: &str, chunk: usize) -> Vec<LayerBlob> {
    super::spec::Spec::parse(spec)
        .layers
        .iter()
        .map(|entries| {
            let (bytes, diff_id, toc) = estargz(entries, chunk);
            LayerBlob {
                bytes,
                diff_id,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
                annotations: json!({ "containerd.io/snapshot/stargz/toc.digest": toc }),
            }
        })
        .collect()
}

/// An eStargz blob of `entries`, file payloads cut into gzip members of at most `chunk`
/// bytes. Returns the blob, its diff_id and the TOC digest annotation.
pub fn estargz(entries: &[Entry], chunk: usize) -> (Vec<u8>, String, String) {
    let landmark = Entry {
        path: b".no.prefetch.landmark".to_vec(),
        name: b".no.prefetch.landmark".to_vec(),
        kind: Kind::File(vec![0xf]),
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
        pax_mtime: None,
        xattrs: Vec::new(),
        pax_path: false,
        pax_records: Vec::new(),
        pax_raw: None,
    };
    let mut blob = Vec::new();
    let mut tar = Vec::new();
    // Bytes of the current member, not yet compressed.
    let mut pending: Vec<u8> = Vec::new();
    let mut toc = Vec::new();
    let flush = |blob: &mut Vec<u8>, pending: &mut Vec<u8>| {
        if !pending.is_empty() {
            blob.extend(gzip(pending));
            pending.clear();
        }
    };
    for e in std::iter::once(&landmark).chain(entries) {
        let mut b = tar::Builder::new(Vec::new());
        append_entry(&mut b, e);
        let mut bytes = b.into_inner().unwrap();
        bytes.truncate(bytes.len() - 1024);
        tar.extend_from_slice(&bytes);
        let data: &[u8] = match &e.kind {
            Kind::File(c) => c,
            _ => &[],
        };
        let padded = data.len().div_ceil(512) * 512;
        let header_len = bytes.len() - padded;
        pending.extend_from_slice(&bytes[..header_len]);
        let name = String::from_utf8(e.name.clone()).unwrap();
        let (kind, link) = match &e.kind {
            Kind::Dir => ("dir", None),
            Kind::File(_) => ("reg", None),
            Kind::Symlink(t) => ("symlink", Some(t)),
            Kind::HardLink(t) => ("hardlink", Some(t)),
            Kind::Char(..) => ("char", None),
            Kind::Block(..) => ("block", None),
            Kind::Fifo => ("fifo", None),
        };
        let type_bits = match &e.kind {
            Kind::Dir => 0o40000,
            Kind::File(_) | Kind::HardLink(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            _ => 0,
        };
        let mut t = json!({
            "name": name, "type": kind, "mode": e.mode | type_bits, "uid": e.uid, "gid": e.gid,
            "modtime": rfc3339(e.mtime), "NumLink": 0,
        });
        if let Some(l) = link {
            t["linkName"] = json!(String::from_utf8(l.clone()).unwrap());
        }
        if let Kind::Char(ma, mi) | Kind::Block(ma, mi) = e.kind {
            t["devMajor"] = json!(ma);
            t["devMinor"] = json!(mi);
        }
        if !e.xattrs.is_empty() {
            let x: BTreeMap<String, String> = e
                .xattrs
                .iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8(k.clone()).unwrap(),
                        base64::engine::general_purpose::STANDARD.encode(v),
                    )
                })
                .collect();
            t["xattrs"] = json!(x);
        }
        if data.is_empty() {
            toc.push(t);
            pending.extend_from_slice(&bytes[header_len..]);
            continue;
        }
        t["size"] = json!(data.len());
        t["digest"] = json!(sha256(data));
        flush(&mut blob, &mut pending);
        for (i, piece) in data.chunks(chunk).enumerate() {
            let mut c = if i == 0 {
                t.clone()
            } else {
                json!({ "name": name, "type": "chunk" })
            };
            c["offset"] = json!(blob.len());
            c["chunkOffset"] = json!(i * chunk);
            let last = (i + 1) * chunk >= data.len();
            c["chunkSize"] = json!(if last { 0 } else { piece.len() });
            c["chunkDigest"] = json!(sha256(piece));
            toc.push(c);
            blob.extend(gzip(piece));
        }
        pending.extend_from_slice(&bytes[header_len + data.len()..]);
    }
    flush(&mut blob, &mut pending);
    let toc_json = serde_json::to_vec_pretty(&json!({ "version": 1, "entries": toc })).unwrap();
    let toc_digest = sha256(&toc_json);
    let toc_at = blob.len();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(toc_json.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "stargz.index.json", &toc_json[..])
        .unwrap();
    let toc_tar = b.into_inner().unwrap();
    tar.extend_from_slice(&toc_tar);
    blob.extend(gzip(&toc_tar));
    // The footer: an empty member whose extra field names the TOC's offset.
    let mut f = vec![
        0x1f, 0x8b, 8, 4, 0, 0, 0, 0, 0, 255, 26, 0, b'S', b'G', 22, 0,
    ];
    f.extend_from_slice(format!("{toc_at:016x}STARGZ").as_bytes());
    f.extend_from_slice(&[1, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(f.len(), 51);
    blob.extend(f);
    (blob, sha256(&tar), toc_digest)
}
