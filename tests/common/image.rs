//! Image writers: the same layers as every source shape rimgfs reads, with correct sha256
//! digests, sizes and diff_ids unless a test asks for a lie.
//!
//! A writer produces [`Files`], the members of the archive or layout in order, so a test
//! can remove or damage one before writing it out as a tar or a directory.

use std::io::Write;
use std::path::Path;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::spec::Spec;

pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// `sha256:<hex>` of some bytes.
pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

/// Lower-case hex SHA-256 of some bytes.
pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A compression for a layer or a whole archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Zstd,
}

/// Compresses `data`.
pub fn compress(data: &[u8], c: Codec) -> Vec<u8> {
    match c {
        Codec::None => data.to_vec(),
        Codec::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Codec::Zstd => zstd::stream::encode_all(data, 3).unwrap(),
    }
}

/// What a layer descriptor says its media type is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MediaType {
    /// The OCI type matching the layer's compression.
    Correct,
    /// No `mediaType` field.
    Omit,
    /// This string, true or not.
    Claim(String),
}

/// One image: its layers and how to write them.
#[derive(Clone, Debug)]
pub struct ImageDef {
    /// Uncompressed layer tars, bottom first.
    pub layers: Vec<Vec<u8>>,
    /// Per layer (default: none).
    pub codecs: Vec<Codec>,
    /// Per layer (default: correct).
    pub media_types: Vec<MediaType>,
    /// Full references, e.g. `example.com/app:v1`.
    pub refs: Vec<String>,
    /// `os/arch[/variant]`.
    pub platform: String,
    /// The config lists a wrong diff_id for this layer.
    pub bad_diff_id: Option<usize>,
    /// The manifest names (and the layout stores the blob under) a wrong digest.
    pub bad_blob_digest: Option<usize>,
    /// Per layer: the diff_id to declare instead of the tar's digest (for layers given
    /// already encoded, e.g. a damaged compressed stream).
    pub diff_id_overrides: Vec<Option<String>>,
}

/// A blob and its descriptor facts.
#[derive(Clone, Debug)]
pub struct Blob {
    pub digest: String,
    pub bytes: Vec<u8>,
    pub media_type: Option<String>,
}

impl Blob {
    fn new(bytes: Vec<u8>, media_type: Option<&str>) -> Blob {
        Blob {
            digest: sha256(&bytes),
            bytes,
            media_type: media_type.map(str::to_string),
        }
    }

    /// The member path of the blob in an OCI layout.
    pub fn path(&self) -> String {
        format!("blobs/sha256/{}", self.digest.trim_start_matches("sha256:"))
    }

    /// An OCI descriptor of the blob.
    pub fn descriptor(&self) -> Value {
        let mut d = json!({ "digest": self.digest, "size": self.bytes.len() });
        if let Some(mt) = &self.media_type {
            d["mediaType"] = json!(mt);
        }
        d
    }
}

/// An image's blobs, as written.
#[derive(Clone, Debug)]
pub struct Built {
    pub layers: Vec<Blob>,
    pub diff_ids: Vec<String>,
    pub config: Blob,
    pub manifest: Blob,
}

impl ImageDef {
    /// An image of the layers a spec describes (see `spec.rs`), uncompressed, no refs,
    /// linux/amd64.
    pub fn from_spec(text: &str) -> ImageDef {
        ImageDef::from_layers(Spec::parse(text).layer_tars())
    }

    /// An image of these layer tars.
    pub fn from_layers(layers: Vec<Vec<u8>>) -> ImageDef {
        let n = layers.len();
        ImageDef {
            layers,
            codecs: vec![Codec::None; n],
            media_types: vec![MediaType::Correct; n],
            refs: Vec::new(),
            platform: "linux/amd64".into(),
            bad_diff_id: None,
            bad_blob_digest: None,
            diff_id_overrides: vec![None; n],
        }
    }

    /// Every layer compressed with `c`.
    pub fn codec(mut self, c: Codec) -> ImageDef {
        self.codecs.iter_mut().for_each(|x| *x = c);
        self
    }

    /// Layer `i` compressed with `c`.
    pub fn layer_codec(mut self, i: usize, c: Codec) -> ImageDef {
        self.codecs[i] = c;
        self
    }

    /// Layer `i`'s declared media type.
    pub fn media_type(mut self, i: usize, m: MediaType) -> ImageDef {
        self.media_types[i] = m;
        self
    }

    /// Adds a reference.
    pub fn with_ref(mut self, r: &str) -> ImageDef {
        self.refs.push(r.to_string());
        self
    }

    /// Sets the platform.
    pub fn platform(mut self, p: &str) -> ImageDef {
        self.platform = p.to_string();
        self
    }

    /// Computes the blobs.
    pub fn build(&self) -> Built {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, tar) in self.layers.iter().enumerate() {
            let c = self.codecs[i];
            let mt = match &self.media_types[i] {
                MediaType::Correct => Some(
                    match c {
                        Codec::None => MT_LAYER_TAR,
                        Codec::Gzip => MT_LAYER_GZIP,
                        Codec::Zstd => MT_LAYER_ZSTD,
                    }
                    .to_string(),
                ),
                MediaType::Omit => None,
                MediaType::Claim(s) => Some(s.clone()),
            };
            let bytes = compress(tar, c);
            let mut blob = Blob {
                digest: sha256(&bytes),
                bytes,
                media_type: mt,
            };
            if self.bad_blob_digest == Some(i) {
                blob.digest = sha256(b"not this layer");
            }
            layers.push(blob);
            diff_ids.push(if self.bad_diff_id == Some(i) {
                sha256(b"not this diff")
            } else if let Some(d) = &self.diff_id_overrides[i] {
                d.clone()
            } else {
                sha256(tar)
            });
        }
        let mut p = self.platform.split('/');
        let (os, arch, variant) = (p.next().unwrap(), p.next().unwrap(), p.next());
        let mut config = json!({
            "created": "2024-01-02T03:04:05Z",
            "architecture": arch,
            "os": os,
            "config": { "Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/" },
            "rootfs": { "type": "layers", "diff_ids": diff_ids },
            "history": (0..self.layers.len())
                .map(|i| json!({ "created": "2024-01-02T03:04:05Z", "created_by": format!("layer {i}") }))
                .collect::<Vec<_>>(),
        });
        if let Some(v) = variant {
            config["variant"] = json!(v);
        }
        let config = Blob::new(serde_json::to_vec(&config).unwrap(), Some(MT_OCI_CONFIG));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_OCI_MANIFEST,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(
            serde_json::to_vec(&manifest).unwrap(),
            Some(MT_OCI_MANIFEST),
        );
        Built {
            layers,
            diff_ids,
            config,
            manifest,
        }
    }

    /// The OCI platform object.
    fn platform_json(&self) -> Value {
        let mut p = self.platform.split('/');
        let mut v = json!({ "os": p.next().unwrap(), "architecture": p.next().unwrap() });
        if let Some(var) = p.next() {
            v["variant"] = json!(var);
        }
        v
    }
}

/// The tag of a reference (`example.com/app:v1` → `v1`), as `ref.name` annotations carry.
fn tag_of(r: &str) -> &str {
    match r.rsplit_once(':') {
        Some((_, t)) if !t.contains('/') => t,
        _ => "latest",
    }
}

/// The members of an archive or layout, in order.
#[derive(Clone, Debug, Default)]
pub struct Files(pub Vec<(String, Vec<u8>)>);

impl Files {
    /// Adds a member unless one of that name exists (shared blobs are stored once).
    pub fn add(&mut self, name: &str, data: Vec<u8>) {
        if !self.0.iter().any(|(n, _)| n == name) {
            self.0.push((name.to_string(), data));
        }
    }

    /// Removes a member; panics if absent.
    pub fn remove(&mut self, name: &str) {
        let before = self.0.len();
        self.0.retain(|(n, _)| n != name);
        assert!(self.0.len() < before, "no member {name}");
    }

    /// A member's bytes, to damage; panics if absent.
    pub fn get_mut(&mut self, name: &str) -> &mut Vec<u8> {
        let names: Vec<_> = self.0.iter().map(|(n, _)| n.clone()).collect();
        self.0
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d)
            .unwrap_or_else(|| panic!("no member {name} in {names:?}"))
    }

    /// A tar of the members (directories are implied by the paths, as `docker save` writes
    /// them for blobs/sha256).
    pub fn to_tar(&self) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut dirs = std::collections::BTreeSet::new();
        for (name, data) in &self.0 {
            let mut parent = Path::new(name).parent();
            let mut todo = Vec::new();
            while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
                todo.push(p.to_path_buf());
                parent = p.parent();
            }
            for d in todo.into_iter().rev() {
                if dirs.insert(d.clone()) {
                    let mut h = tar::Header::new_ustar();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_mtime(1_700_000_000);
                    h.set_size(0);
                    b.append_data(&mut h, d, &[][..]).unwrap();
                }
            }
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, name, &data[..]).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// Writes the members as a tar archive, optionally compressed as a whole.
    pub fn write_tar(&self, path: &Path, c: Codec) {
        std::fs::write(path, compress(&self.to_tar(), c)).unwrap();
    }

    /// Writes the members as files under `dir` (an OCI layout directory).
    pub fn write_dir(&self, dir: &Path) {
        for (name, data) in &self.0 {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
    }
}

/// Legacy `docker save` (Docker < 25): `manifest.json`, `<id>/layer.tar`, `<hex>.json`,
/// `repositories`.
pub fn docker_legacy(images: &[ImageDef]) -> Files {
    let mut f = Files::default();
    let mut manifest = Vec::new();
    let mut repositories = serde_json::Map::new();
    for img in images {
        let b = img.build();
        let mut parent = String::new();
        let mut layer_paths = Vec::new();
        for (i, blob) in b.layers.iter().enumerate() {
            // Legacy v1 ids chain the parent, so a layer shared by two images at the same
            // position and with the same parents has the same id.
            let id = sha256_hex(format!("{parent}\n{}", b.diff_ids[i]).as_bytes());
            f.add(&format!("{id}/VERSION"), b"1.0".to_vec());
            let mut v1 = json!({ "id": id, "created": "2024-01-02T03:04:05Z" });
            if !parent.is_empty() {
                v1["parent"] = json!(parent);
            }
            f.add(&format!("{id}/json"), serde_json::to_vec(&v1).unwrap());
            f.add(&format!("{id}/layer.tar"), blob.bytes.clone());
            layer_paths.push(format!("{id}/layer.tar"));
            parent = id;
        }
        let cfg_name = format!("{}.json", b.config.digest.trim_start_matches("sha256:"));
        f.add(&cfg_name, b.config.bytes.clone());
        manifest.push(json!({ "Config": cfg_name, "RepoTags": img.refs, "Layers": layer_paths }));
        for r in &img.refs {
            if let Some((repo, tag)) = r.rsplit_once(':') {
                repositories
                    .entry(repo.to_string())
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .unwrap()
                    .insert(tag.to_string(), json!(parent));
            }
        }
    }
    f.add("repositories", serde_json::to_vec(&repositories).unwrap());
    f.add("manifest.json", serde_json::to_vec(&manifest).unwrap());
    f
}

/// The blobs of an image (layers, config, manifest) as layout members.
fn add_blobs(f: &mut Files, b: &Built) {
    for l in &b.layers {
        f.add(&l.path(), l.bytes.clone());
    }
    f.add(&b.config.path(), b.config.bytes.clone());
    f.add(&b.manifest.path(), b.manifest.bytes.clone());
}

/// Annotations naming an image as Docker 25+ and containerd write them.
fn ref_annotations(r: Option<&String>) -> Option<Value> {
    r.map(|r| {
        json!({
            "io.containerd.image.name": r,
            "org.opencontainers.image.ref.name": tag_of(r),
        })
    })
}

fn docker_manifest_entry(img: &ImageDef, b: &Built) -> Value {
    json!({
        "Config": b.config.path(),
        "RepoTags": img.refs,
        "Layers": b.layers.iter().map(Blob::path).collect::<Vec<_>>(),
    })
}

/// Docker 25+ `docker save`: an OCI layout (index.json → manifests) plus `manifest.json`
/// whose paths point into `blobs/sha256/`.
pub fn docker25(images: &[ImageDef]) -> Files {
    let mut f = Files::default();
    let mut index = Vec::new();
    let mut manifest = Vec::new();
    for img in images {
        let b = img.build();
        add_blobs(&mut f, &b);
        let mut d = b.manifest.descriptor();
        if let Some(a) = ref_annotations(img.refs.first()) {
            d["annotations"] = a;
        }
        index.push(d);
        manifest.push(docker_manifest_entry(img, &b));
    }
    f.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    let idx = json!({ "schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index });
    f.add("index.json", serde_json::to_vec(&idx).unwrap());
    f.add("manifest.json", serde_json::to_vec(&manifest).unwrap());
    f
}

/// `docker save` with the containerd image store: gzip layers (unless a codec is set),
/// `index.json` → a per-image index (with platform) → manifest, plus `manifest.json`.
pub fn containerd(images: &[ImageDef]) -> Files {
    let mut f = Files::default();
    let mut index = Vec::new();
    let mut manifest = Vec::new();
    for img in images {
        let mut img = img.clone();
        for c in &mut img.codecs {
            if *c == Codec::None {
                *c = Codec::Gzip;
            }
        }
        let b = img.build();
        add_blobs(&mut f, &b);
        let mut md = b.manifest.descriptor();
        md["platform"] = img.platform_json();
        let nested = json!({ "schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [md] });
        let nested = Blob::new(serde_json::to_vec(&nested).unwrap(), Some(MT_OCI_INDEX));
        f.add(&nested.path(), nested.bytes.clone());
        let mut d = nested.descriptor();
        if let Some(a) = ref_annotations(img.refs.first()) {
            d["annotations"] = a;
        }
        index.push(d);
        manifest.push(docker_manifest_entry(&img, &b));
    }
    f.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    let idx = json!({ "schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index });
    f.add("index.json", serde_json::to_vec(&idx).unwrap());
    f.add("manifest.json", serde_json::to_vec(&manifest).unwrap());
    f
}

/// An OCI image layout (skopeo `oci:`/`oci-archive:`, umoci): index.json with one entry
/// per image and reference (`org.opencontainers.image.ref.name` = the tag).
pub fn oci_layout(images: &[ImageDef]) -> Files {
    let mut f = Files::default();
    f.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    let mut index = Vec::new();
    for img in images {
        let b = img.build();
        add_blobs(&mut f, &b);
        if img.refs.is_empty() {
            index.push(b.manifest.descriptor());
        }
        for r in &img.refs {
            let mut d = b.manifest.descriptor();
            d["annotations"] = json!({ "org.opencontainers.image.ref.name": r });
            index.push(d);
        }
    }
    let idx = json!({ "schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": index });
    f.add("index.json", serde_json::to_vec(&idx).unwrap());
    f
}

/// A multi-platform OCI layout. `nested`: index.json → one image index (named `reference`)
/// → one manifest per platform, as registries publish; otherwise index.json lists the
/// per-platform manifests directly.
pub fn oci_multiplatform(images: &[ImageDef], reference: &str, nested: bool) -> Files {
    let mut f = Files::default();
    f.add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec());
    let mut entries = Vec::new();
    for img in images {
        let b = img.build();
        add_blobs(&mut f, &b);
        let mut d = b.manifest.descriptor();
        d["platform"] = img.platform_json();
        if !nested {
            d["annotations"] = json!({ "org.opencontainers.image.ref.name": reference });
        }
        entries.push(d);
    }
    let top = if nested {
        let list = json!({ "schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": entries });
        let list = Blob::new(serde_json::to_vec(&list).unwrap(), Some(MT_OCI_INDEX));
        f.add(&list.path(), list.bytes.clone());
        let mut d = list.descriptor();
        d["annotations"] = json!({ "org.opencontainers.image.ref.name": reference });
        vec![d]
    } else {
        entries
    };
    let idx = json!({ "schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": top });
    f.add("index.json", serde_json::to_vec(&idx).unwrap());
    f
}

/// Every source shape, for table tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    DockerLegacy,
    Docker25,
    Containerd,
    OciDir,
    OciArchive,
}

impl Shape {
    pub const ALL: [Shape; 5] = [
        Shape::DockerLegacy,
        Shape::Docker25,
        Shape::Containerd,
        Shape::OciDir,
        Shape::OciArchive,
    ];

    /// The members of `images` in this shape.
    pub fn files(self, images: &[ImageDef]) -> Files {
        match self {
            Shape::DockerLegacy => docker_legacy(images),
            Shape::Docker25 => docker25(images),
            Shape::Containerd => containerd(images),
            Shape::OciDir | Shape::OciArchive => oci_layout(images),
        }
    }

    /// Writes `images` in this shape at `path` (a directory for `OciDir`, else a tar
    /// compressed with `c`).
    pub fn write(self, images: &[ImageDef], path: &Path, c: Codec) {
        write_files(&self.files(images), self, path, c);
    }
}

/// Writes members as the shape wants: a directory for `OciDir`, else a tar.
pub fn write_files(files: &Files, shape: Shape, path: &Path, c: Codec) {
    if shape == Shape::OciDir {
        files.write_dir(path);
    } else {
        files.write_tar(path, c);
    }
}
