//! Image sources: find the chosen image in a `docker save` archive or an OCI layout and
//! describe its layer stack, bottom first.
//!
//! ```text
//! ImageSpec ──open──▶ Container (dir | tar, members by offset)
//!                        │  manifest.json (docker.rs)  or  index.json (oci.rs)
//!                        ▼
//!                   candidates (refs) ──select──▶ Image { config, layers: Vec<LayerRef> }
//! ```
//! The local engines' images (`storage` for containers-storage, `daemon` for the Docker
//! Engine) are named by references and found by those modules directly.
//! Nothing here reads a layer: `LayerRef` only says where its bytes are. Small documents
//! (indexes, manifests, configs) are verified against their digests as they are read.
//! Dependencies: error, cache, digest, config, container, tar, registry, storage, daemon.

pub mod config;
pub mod container;
pub mod daemon;
pub mod digest;
mod docker;
mod oci;
pub mod registry;
pub mod remote;
pub mod storage;
pub mod tar;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::cache::Cache;
use crate::error::{Error, Result};
use config::{ImageConfig, Platform};
use container::{BlobLoc, Compression, Container};
use digest::Digest;
use remote::RemoteBlob;
use storage::StoreLayer;

/// How the image argument names its source (skopeo-style transport prefixes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Detect from the contents.
    Auto,
    /// `docker-archive:`: a `docker save` tar.
    DockerArchive,
    /// `oci:`: an OCI layout directory.
    OciDir,
    /// `oci-archive:`: an OCI layout in a tar.
    OciArchive,
    /// `docker://`: an image in a registry.
    Docker,
    /// `containers-storage:`: an image in podman's store; `path` holds the reference.
    ContainersStorage,
    /// `docker-daemon:`: an image of the Docker Engine; `path` holds the reference.
    DockerDaemon,
}

/// Which image of a multi-image source to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// By reference (`busybox:latest`, `latest`).
    Ref(String),
    /// By position (`@N`), counting from 0 in `manifest.json` / `index.json` order.
    Index(usize),
}

/// A parsed image argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    /// The transport.
    pub transport: Transport,
    /// The file or directory (for `docker://`, the normalised reference with its prefix,
    /// which names the image in messages).
    pub path: PathBuf,
    /// The image within it, if given in the argument.
    pub selector: Option<Selector>,
    /// The registry reference of a `docker://` image.
    pub reference: Option<registry::Reference>,
}

impl ImageSpec {
    /// Parses `[transport:]PATH[:REF|:@N]`. A path that exists as given wins over splitting off
    /// a `:REF` suffix, so file names with colons keep working.
    pub fn parse(arg: &str) -> Result<ImageSpec> {
        if let Some(r) = arg.strip_prefix(DOCKER_PREFIX) {
            let reference =
                registry::Reference::parse(r).map_err(|e| Error::Usage(format!("{arg}: {e}")))?;
            return Ok(ImageSpec {
                transport: Transport::Docker,
                path: PathBuf::from(format!("{DOCKER_PREFIX}{reference}")),
                selector: None,
                reference: Some(reference),
            });
        }
        // An engine's images are named by references, not paths: no `:REF` split.
        for (p, t) in [
            (storage::PREFIX, Transport::ContainersStorage),
            (daemon::PREFIX, Transport::DockerDaemon),
        ] {
            if let Some(r) = arg.strip_prefix(p) {
                if r.is_empty() {
                    return Err(Error::Usage(format!("{arg}: no image named")));
                }
                return Ok(ImageSpec {
                    transport: t,
                    path: PathBuf::from(r),
                    selector: None,
                    reference: None,
                });
            }
        }
        let (transport, rest) = [
            ("docker-archive:", Transport::DockerArchive),
            ("oci-archive:", Transport::OciArchive),
            ("oci:", Transport::OciDir),
        ]
        .iter()
        .find_map(|(p, t)| arg.strip_prefix(p).map(|r| (*t, r)))
        .unwrap_or((Transport::Auto, arg));
        if rest.is_empty() {
            return Err(Error::Usage(format!("{arg}: no image path given")));
        }
        // `img.tar:busybox:latest`: the reference may hold colons itself, so the first
        // prefix that exists as a path is the image.
        let existing = rest
            .match_indices(':')
            .map(|(i, _)| (&rest[..i], &rest[i + 1..]))
            .find(|(p, sel)| !p.is_empty() && !sel.is_empty() && Path::new(p).exists());
        let (path, selector) = if Path::new(rest).exists() {
            (rest, None)
        } else if let Some((p, sel)) = existing {
            (p, Some(parse_selector(sel)?))
        } else {
            match rest.rsplit_once(':') {
                Some((p, sel)) if !p.is_empty() && !sel.contains('/') => {
                    (p, Some(parse_selector(sel)?))
                }
                _ => (rest, None),
            }
        };
        Ok(ImageSpec {
            transport,
            path: PathBuf::from(path),
            selector,
            reference: None,
        })
    }

    /// Whether the image is in a registry (its layers are fetched, not read from a file).
    pub fn is_remote(&self) -> bool {
        self.transport == Transport::Docker
    }
}

/// The prefix of registry references (skopeo's transport name).
pub const DOCKER_PREFIX: &str = "docker://";

/// Parses `@N` or a reference.
pub fn parse_selector(s: &str) -> Result<Selector> {
    if let Some(n) = s.strip_prefix('@') {
        return n
            .parse()
            .map(Selector::Index)
            .map_err(|_| Error::Usage(format!("bad image index {s:?}: expected @N")));
    }
    if s.is_empty() {
        return Err(Error::Usage("empty image reference".into()));
    }
    Ok(Selector::Ref(s.to_string()))
}

/// Options for opening an image.
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    /// Overrides the selector of the spec (`--ref`).
    pub selector: Option<Selector>,
    /// Platform wanted from a multi-platform index (default: the host's).
    pub platform: Option<Platform>,
    /// How to reach registries (`docker://` images).
    pub registry: registry::RegistryOptions,
}

/// One layer of the chosen image.
#[derive(Clone, Debug)]
pub struct LayerRef {
    /// Position, bottom = 0.
    pub index: usize,
    /// Digest of the blob as stored, when the source names it.
    pub blob_digest: Option<Digest>,
    /// Digest of the uncompressed tar, from the config.
    pub diff_id: Digest,
    /// Declared media type ("" when the source declares none).
    pub media_type: String,
    /// Compression, from the blob's magic number (which wins over the media type).
    pub compression: Compression,
    /// Where the blob's bytes are.
    pub blob: Blob,
}

/// Where a layer blob's bytes are.
#[derive(Clone, Debug)]
pub enum Blob {
    /// In a range of a host file (an archive member, a blob file).
    Local(BlobLoc),
    /// In a repository, fetched by range.
    Remote(RemoteBlob),
    /// In a containers-storage store: tar-split records and a directory of files.
    Store(StoreLayer),
}

impl Blob {
    /// The blob's length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Blob::Local(l) => l.len,
            Blob::Remote(r) => r.len,
            Blob::Store(s) => s.size,
        }
    }

    /// Whether the blob is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A reader over the whole blob, from its first byte.
    pub fn reader(&self) -> Result<Box<dyn Read + Send>> {
        match self {
            Blob::Local(l) => Ok(Box::new(l.reader()?)),
            Blob::Remote(r) => r.fetch.stream(&r.digest, 0).map_err(|e| Error::Io {
                op: "fetch",
                path: PathBuf::from(format!("{} {}", r.fetch.describe(), r.digest)),
                source: e,
            }),
            Blob::Store(s) => s.reader(),
        }
    }

    /// Names the blob in messages: its file, or its repository and digest.
    pub fn describe(&self) -> String {
        match self {
            Blob::Local(l) => l.file.display().to_string(),
            Blob::Remote(r) => format!("{} {}", r.fetch.describe(), r.digest),
            Blob::Store(s) => s.describe(),
        }
    }
}

impl LayerRef {
    /// The digest users know the layer by: the blob digest, or the diff_id.
    pub fn digest(&self) -> &Digest {
        self.blob_digest.as_ref().unwrap_or(&self.diff_id)
    }

    /// A short human name for messages: `2 (sha256:abcd…)`.
    pub fn describe(&self) -> String {
        format!("{} ({})", self.index, self.digest())
    }

    /// The error for a problem with this layer of the image from `origin`.
    pub fn error(&self, origin: &Path, reason: impl Into<String>) -> Error {
        Error::BadLayer {
            path: origin.to_path_buf(),
            layer: self.describe(),
            reason: reason.into(),
        }
    }
}

/// An image chosen from a source, with its layer stack.
#[derive(Debug)]
pub struct Image {
    /// What it was opened from (a file, a directory, or a reference such as `docker://…`);
    /// messages name it.
    pub origin: PathBuf,
    /// The references that name it.
    pub refs: Vec<String>,
    /// Digest of its manifest (OCI sources).
    pub manifest_digest: Option<Digest>,
    /// Digest of its config.
    pub config_digest: Option<Digest>,
    /// The parsed config.
    pub config: ImageConfig,
    /// The config as JSON, for `inspect --json`.
    pub config_raw: serde_json::Value,
    /// Layers, bottom first.
    pub layers: Vec<LayerRef>,
}

/// An image found in a source, before it is chosen.
#[derive(Debug)]
pub(crate) struct Candidate<T> {
    pub refs: Vec<String>,
    pub platform: Option<Platform>,
    pub target: T,
}

/// Opens the source and picks the image. Every error names the image (see
/// [`Error::in_image`]).
pub fn open(spec: &ImageSpec, opts: &OpenOptions, cache: &Cache) -> Result<Image> {
    if let Some(r) = &spec.reference {
        return registry::open(r, opts, cache);
    }
    let reference = spec.path.to_string_lossy();
    match spec.transport {
        Transport::ContainersStorage => return storage::open(&reference, opts),
        Transport::DockerDaemon => return daemon::open(&reference, opts, cache),
        _ => {}
    }
    open_source(spec, opts, cache).map_err(|e| e.in_image(&spec.path))
}

fn open_source(spec: &ImageSpec, opts: &OpenOptions, cache: &Cache) -> Result<Image> {
    let container = Container::open(&spec.path, cache)?;
    let selector = opts.selector.clone().or_else(|| spec.selector.clone());
    let platform = opts.platform.clone().unwrap_or_else(Platform::host);
    let docker = match spec.transport {
        Transport::DockerArchive => true,
        Transport::Auto => container.exists("manifest.json") && !container.is_dir(),
        _ => false,
    };
    if docker {
        docker::open(container, selector.as_ref())
    } else if container.exists("index.json") {
        oci::open(container, selector.as_ref(), &platform)
    } else {
        Err(Error::bad_image(
            &spec.path,
            "not a container image: no manifest.json or index.json found",
        ))
    }
}

/// Picks one candidate: by index, by ref, or the only one (after filtering by platform).
pub(crate) fn select<T>(
    path: &Path,
    mut cands: Vec<Candidate<T>>,
    selector: Option<&Selector>,
    platform: &Platform,
) -> Result<Candidate<T>> {
    if cands.is_empty() {
        return Err(Error::bad_image(path, "the archive lists no images"));
    }
    let listing = |cands: &[Candidate<T>]| {
        cands
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut s = format!("@{i}");
                if !c.refs.is_empty() {
                    s.push_str(&format!(" {}", c.refs.join(" ")));
                }
                if let Some(p) = &c.platform {
                    s.push_str(&format!(" [{p}]"));
                }
                s
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match selector {
        Some(Selector::Index(n)) => {
            if *n >= cands.len() {
                return Err(Error::UnknownRef {
                    path: path.to_path_buf(),
                    reason: format!(
                        "no image @{n}: the archive has {}: {}",
                        cands.len(),
                        listing(&cands)
                    ),
                });
            }
            return Ok(cands.swap_remove(*n));
        }
        Some(Selector::Ref(r)) => {
            let all = listing(&cands);
            cands.retain(|c| c.refs.iter().any(|have| ref_matches(r, have)));
            if cands.is_empty() {
                return Err(Error::UnknownRef {
                    path: path.to_path_buf(),
                    reason: format!("no image named {r:?}; images: {all}"),
                });
            }
        }
        None => {}
    }
    if cands.len() > 1 && cands.iter().all(|c| c.platform.is_some()) {
        let all = listing(&cands);
        cands.retain(|c| c.platform.as_ref().is_some_and(|p| platform.matches(p)));
        if cands.is_empty() {
            return Err(Error::UnknownRef {
                path: path.to_path_buf(),
                reason: format!("no image for platform {platform}; choose with --platform: {all}"),
            });
        }
    }
    if cands.len() > 1 {
        return Err(Error::UnknownRef {
            path: path.to_path_buf(),
            reason: format!(
                "holds {} images; choose one with IMAGE:REF, IMAGE:@N or --ref: {}",
                cands.len(),
                listing(&cands)
            ),
        });
    }
    Ok(cands.swap_remove(0))
}

/// Whether a wanted reference names a reference the image has. `busybox`,
/// `busybox:latest`, `docker.io/library/busybox:latest` all name the same image; a bare tag
/// such as `latest` matches an OCI `ref.name` annotation of just the tag.
pub fn ref_matches(wanted: &str, have: &str) -> bool {
    wanted == have || normalize_ref(wanted) == normalize_ref(have)
}

fn normalize_ref(r: &str) -> String {
    let mut s = r;
    for p in [
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ] {
        if let Some(rest) = s.strip_prefix(p) {
            s = rest;
            break;
        }
    }
    let name_part = s.rsplit('/').next().unwrap_or(s);
    if name_part.contains(':') || s.contains('@') {
        s.to_string()
    } else {
        format!("{s}:latest")
    }
}

/// Checks the layer list against the config's diff_ids and builds the `LayerRef`s.
pub(crate) fn layer_refs(
    container: &Container,
    config: &ImageConfig,
    blobs: Vec<(BlobLoc, Option<Digest>, String)>,
) -> Result<Vec<LayerRef>> {
    let path = &container.path;
    if config.rootfs.diff_ids.len() != blobs.len() {
        return Err(Error::bad_image(
            path,
            format!(
                "the config lists {} diff_ids but the manifest {} layers",
                config.rootfs.diff_ids.len(),
                blobs.len()
            ),
        ));
    }
    let mut layers = Vec::with_capacity(blobs.len());
    for (index, ((blob, blob_digest, media_type), diff_id)) in
        blobs.into_iter().zip(&config.rootfs.diff_ids).enumerate()
    {
        let diff_id = Digest::parse_in(diff_id, path)?;
        let compression = Compression::sniff(&blob.head(8)?);
        layers.push(LayerRef {
            index,
            blob_digest,
            diff_id,
            media_type,
            compression,
            blob: Blob::Local(blob),
        });
    }
    Ok(layers)
}

/// Parses a config blob into both its typed and raw forms.
pub(crate) fn parse_config(path: &Path, bytes: &[u8]) -> Result<(ImageConfig, serde_json::Value)> {
    let raw: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::bad_image(path, format!("image config: {e}")))?;
    let config: ImageConfig = serde_json::from_value(raw.clone())
        .map_err(|e| Error::bad_image(path, format!("image config: {e}")))?;
    Ok((config, raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parse_table() {
        let cases: &[(&str, Transport, &str, Option<Selector>)] = &[
            ("img.tar", Transport::Auto, "img.tar", None),
            (
                "img.tar:busybox:latest",
                Transport::Auto,
                "img.tar:busybox",
                Some(Selector::Ref("latest".into())),
            ),
            (
                "docker-archive:x.tar:@1",
                Transport::DockerArchive,
                "x.tar",
                Some(Selector::Index(1)),
            ),
            (
                "oci:dir:v1",
                Transport::OciDir,
                "dir",
                Some(Selector::Ref("v1".into())),
            ),
            (
                "oci-archive:/a/b.tar",
                Transport::OciArchive,
                "/a/b.tar",
                None,
            ),
        ];
        for (arg, t, p, sel) in cases {
            let s = ImageSpec::parse(arg).unwrap();
            assert_eq!(
                (s.transport, s.path.to_str().unwrap(), &s.selector),
                (*t, *p, sel),
                "{arg}"
            );
        }
        assert!(ImageSpec::parse("oci:").is_err());
        let s = ImageSpec::parse("docker://alpine").unwrap();
        assert!(s.is_remote());
        assert_eq!(
            s.path,
            Path::new("docker://docker.io/library/alpine:latest")
        );
        let e = ImageSpec::parse("docker://Bad/Name").unwrap_err();
        assert!(matches!(e, Error::Usage(_)), "{e}");
        assert!(ImageSpec::parse("x.tar:@z").is_err());
    }

    #[test]
    fn spec_parse_engine_references() {
        let cases = [
            (
                "containers-storage:[overlay@/g+/r]localhost/app:dev",
                Transport::ContainersStorage,
                "[overlay@/g+/r]localhost/app:dev",
            ),
            (
                "containers-storage:app",
                Transport::ContainersStorage,
                "app",
            ),
            ("docker-daemon:app:dev", Transport::DockerDaemon, "app:dev"),
            (
                "docker-daemon:sha256:12ab",
                Transport::DockerDaemon,
                "sha256:12ab",
            ),
        ];
        for (arg, t, r) in cases {
            let s = ImageSpec::parse(arg).unwrap();
            assert_eq!(
                (s.transport, s.path.to_str().unwrap(), s.selector),
                (t, r, None)
            );
        }
        assert!(ImageSpec::parse("containers-storage:").is_err());
        assert!(ImageSpec::parse("docker-daemon:").is_err());
    }

    #[test]
    fn ref_matching_table() {
        let cases = [
            ("busybox", "busybox:latest", true),
            ("busybox", "docker.io/library/busybox:latest", true),
            ("busybox:1", "busybox:latest", false),
            ("latest", "latest", true),
            ("quay.io/x/y", "quay.io/x/y:latest", true),
            ("localhost:5000/a", "localhost:5000/a:latest", true),
        ];
        for (w, h, m) in cases {
            assert_eq!(ref_matches(w, h), m, "{w} vs {h}");
        }
    }

    fn cand(refs: &[&str], platform: Option<&str>) -> Candidate<()> {
        Candidate {
            refs: refs.iter().map(|s| s.to_string()).collect(),
            platform: platform.and_then(Platform::parse),
            target: (),
        }
    }

    #[test]
    fn select_rules() {
        let p = Path::new("x");
        let host = Platform::parse("linux/amd64").unwrap();
        let two = || vec![cand(&["a:1"], None), cand(&["b:1"], None)];
        assert!(select(p, two(), None, &host).is_err());
        assert_eq!(
            select(p, two(), Some(&Selector::Index(1)), &host)
                .unwrap()
                .refs,
            ["b:1"]
        );
        assert_eq!(
            select(p, two(), Some(&Selector::Ref("a:1".into())), &host)
                .unwrap()
                .refs,
            ["a:1"]
        );
        let err = select(p, two(), Some(&Selector::Ref("c".into())), &host)
            .unwrap_err()
            .to_string();
        assert!(err.contains("a:1") && err.contains("b:1"), "{err}");
        let plats = vec![
            cand(&[], Some("linux/arm64")),
            cand(&[], Some("linux/amd64")),
        ];
        assert_eq!(
            select(p, plats, None, &host).unwrap().platform,
            Platform::parse("linux/amd64")
        );
    }
}
