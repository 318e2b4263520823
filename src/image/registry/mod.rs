//! The `docker://` transport: an image in a registry (OCI distribution API), opened from its
//! manifest and config alone; layer blobs become [`RemoteBlob`]s, read by range later.
//!
//! ```text
//! Reference ──registries.conf──▶ endpoints (mirrors, then the location)
//!     ──tag→digest (cache, TTL; HEAD)──▶ index ──platform──▶ manifest ──▶ config
//!     ──▶ Image { layers: Blob::Remote(RemoteBlob { fetch: RepoBlobs, .. }) }
//! ```
//! Every document is verified against its digest before it is parsed and kept in the
//! cache by digest, so an image opened once opens again with no request while its tag
//! resolution is fresh, and with none at all under `--offline`.
//! Dependencies: reference, conf, client, auth, creds, tls, fetch, store, image (mod,
//! config, container, digest, remote), cache, error.

pub mod auth;
pub mod client;
pub mod conf;
pub mod creds;
mod fetch;
pub mod reference;
mod store;
mod tls;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use super::config::{DocKind, IMAGE_CONFIG_TYPES, Index, Manifest, Platform, doc_kind};
use super::container::Compression;
use super::digest::Digest;
use super::remote::RemoteBlob;
use super::{Blob, Candidate, Image, LayerRef, OpenOptions};
use crate::cache::Cache;
use crate::error::{Error, Result};
use client::{Method, Net, NetOptions, Session};
use conf::{Endpoint, RegistriesConf};
pub use fetch::RepoBlobs;
pub use reference::Reference;
use store::Store;
pub use store::TAG_TTL;

/// Indexes nest rarely; more than this is a loop.
const MAX_INDEX_DEPTH: usize = 8;
/// Largest manifest or index read (the distribution spec lets registries refuse more).
const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Largest config read.
const MAX_CONFIG_SIZE: u64 = 64 << 20;
/// The manifest types asked for, most wanted first; schema 1 is not among them, so a
/// registry that could convert a schema 2 image down to it does not.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// How to reach registries: the command line's part.
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Timeouts, retries, `--cert-dir`, `--creds`, `--authfile`.
    pub net: NetOptions,
    /// `--tls-verify`: `Some(false)` allows plain HTTP and unverified TLS everywhere,
    /// `Some(true)` forbids them even where registries.conf allows them.
    pub tls_verify: Option<bool>,
    /// `--offline`: the cache only, no request.
    pub offline: bool,
}

/// Opens `r` with the options' platform (and `--ref @N` position in an index).
pub fn open(r: &Reference, opts: &OpenOptions, cache: &Cache) -> Result<Image> {
    let image = format!("docker://{r}");
    let fail = |reason: String| Error::Registry {
        image: image.clone(),
        reason,
    };
    let ro = &opts.registry;
    let store = Store::new(cache);
    if ro.offline {
        return Opener {
            r,
            opts,
            store,
            image: &image,
            session: None,
            endpoint: offline_endpoint(r),
        }
        .open()
        .map_err(fail);
    }
    let conf = RegistriesConf::load()?;
    let endpoints = conf.endpoints(r, ro.tls_verify).map_err(fail)?;
    let net = Net::new(ro.net.clone());
    let mut last = None;
    for ep in endpoints {
        let session = Arc::new(Session::new(
            net.clone(),
            &ep.host,
            &ep.registry,
            ep.insecure,
        ));
        let mirror = ep.mirror;
        let host = ep.host.clone();
        let opener = Opener {
            r,
            opts,
            store,
            image: &image,
            session: Some(session),
            endpoint: ep,
        };
        match opener.open() {
            Ok(img) => return Ok(img),
            Err(e) if mirror => {
                log::warn!("{image}: mirror {host}: {e}; trying the next source");
                last = Some(e);
            }
            Err(e) => return Err(fail(e)),
        }
    }
    Err(fail(
        last.unwrap_or_else(|| "no registry to pull from".into()),
    ))
}

/// Under `--offline` nothing is contacted; blobs are named by the reference itself.
fn offline_endpoint(r: &Reference) -> Endpoint {
    Endpoint {
        host: r.registry.clone(),
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        insecure: false,
        mirror: false,
    }
}

/// Opening one reference from one endpoint (or, without a session, from the cache).
struct Opener<'a> {
    r: &'a Reference,
    opts: &'a OpenOptions,
    store: Store<'a>,
    image: &'a str,
    session: Option<Arc<Session>>,
    endpoint: Endpoint,
}

/// What a document is fetched as.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DocType {
    Manifest,
    Config,
}

impl Opener<'_> {
    fn open(&self) -> std::result::Result<Image, String> {
        let top = self.resolve_top()?;
        let platform = self.opts.platform.clone().unwrap_or_else(Platform::host);
        let (manifest_digest, manifest) = self.manifest(top, &platform)?;
        if let Some(mt) = manifest.config.media_type.as_deref() {
            if !IMAGE_CONFIG_TYPES.contains(&mt) {
                return Err(format!(
                    "{manifest_digest}: not a container image (config media type {mt})"
                ));
            }
        }
        let config_digest = Digest::parse(&manifest.config.digest)
            .map_err(|e| format!("invalid digest {:?}", e.0))?;
        let config_bytes = self.document(&config_digest, manifest.config.size, DocType::Config)?;
        let origin = Path::new(self.image);
        let (config, config_raw) =
            super::parse_config(origin, &config_bytes).map_err(|e| e.to_string())?;
        let layers = self.layers(&manifest, &config)?;
        Ok(Image {
            origin: origin.to_path_buf(),
            refs: vec![self.r.to_string()],
            manifest_digest: Some(manifest_digest),
            config_digest: Some(config_digest),
            config,
            config_raw,
            layers,
        })
    }

    /// The digest of the document the reference names: its digest, or the tag's
    /// resolution (cached while fresh; else asked with HEAD, or learnt from a GET).
    fn resolve_top(&self) -> std::result::Result<Digest, String> {
        if let Some(d) = &self.r.digest {
            return Ok(d.clone());
        }
        let known = self.store.tag(self.r);
        let Some(session) = &self.session else {
            let res = known.ok_or_else(|| {
                "not in the cache (--offline needs an earlier inspect or mount)".to_string()
            })?;
            log::warn!(
                "{}: --offline: using the tag's resolution of {} ago ({})",
                self.image,
                store::human_age(res.age),
                res.digest
            );
            return Ok(res.digest);
        };
        if let Some(res) = &known {
            if res.age < TAG_TTL && self.store.get(&res.digest).is_some() {
                log::debug!(
                    "{}: tag resolved {} ago",
                    self.image,
                    store::human_age(res.age)
                );
                return Ok(res.digest.clone());
            }
        }
        let tag = self
            .r
            .tag
            .clone()
            .unwrap_or_else(|| reference::DEFAULT_TAG.into());
        let path = format!("/v2/{}/manifests/{tag}", self.endpoint.repository);
        let accept = [("Accept", ACCEPT.to_string())];
        let repo = &self.endpoint.repository;
        if known.is_some() {
            // A tag seen before: HEAD tells whether it moved, without the body.
            let resp = session
                .request(Method::Head, &path, &accept, repo)
                .map_err(|f| f.message)?;
            let digest = header_digest(&resp);
            if resp.status().as_u16() == 200 {
                if let Some(d) = digest.filter(|d| self.store.get(d).is_some()) {
                    self.record_tag(&d);
                    return Ok(d);
                }
            }
        }
        let (digest, bytes) = session
            .retrying(|| {
                let resp = session.request(Method::Get, &path, &accept, repo)?;
                let status = resp.status().as_u16();
                if status == 404 {
                    return Err(client::Failure::fatal(format!(
                        "{}: manifest unknown (no tag {tag} in {repo})",
                        session.host
                    )));
                }
                if status != 200 {
                    return Err(client::Failure::fatal(format!(
                        "{}: manifest {tag}: {}",
                        session.host,
                        client::status_text(status)
                    )));
                }
                let declared = header_digest(&resp);
                let bytes = read_body(resp, MAX_MANIFEST_SIZE, &session.host)?;
                Ok((declared, bytes))
            })
            .map_err(|f| f.message)
            .and_then(|(declared, bytes)| {
                let alg = declared
                    .as_ref()
                    .map_or(crate::image::digest::Algorithm::Sha256, Digest::algorithm);
                let found = Digest::of_bytes(alg, &bytes);
                match declared {
                    Some(d) if d != found => Err(format!(
                        "manifest {tag}: {} says its digest is {d}, but its bytes hash to {found}",
                        session.host
                    )),
                    _ => Ok((found, bytes)),
                }
            })?;
        self.store.put(&digest, &bytes);
        self.record_tag(&digest);
        Ok(digest)
    }

    fn record_tag(&self, d: &Digest) {
        if let Err(e) = self.store.put_tag(self.r, d) {
            log::warn!(
                "cannot cache the tag of {}: {}",
                self.image,
                crate::error::chain(&e)
            );
        }
    }

    /// A verified document by digest: from the cache, or fetched and kept.
    fn document(
        &self,
        digest: &Digest,
        size: Option<u64>,
        kind: DocType,
    ) -> std::result::Result<Vec<u8>, String> {
        if let Some(b) = self.store.get(digest) {
            return Ok(b);
        }
        let Some(session) = &self.session else {
            return Err(format!("{digest} is not in the cache (--offline)"));
        };
        let repo = &self.endpoint.repository;
        let (path, headers, limit) = match kind {
            DocType::Manifest => (
                format!("/v2/{repo}/manifests/{digest}"),
                vec![("Accept", ACCEPT.to_string())],
                MAX_MANIFEST_SIZE,
            ),
            DocType::Config => (
                format!("/v2/{repo}/blobs/{digest}"),
                vec![],
                MAX_CONFIG_SIZE,
            ),
        };
        let bytes = session
            .retrying(|| {
                let resp = session.request(Method::Get, &path, &headers, repo)?;
                match resp.status().as_u16() {
                    200 => read_body(resp, limit, &session.host),
                    404 => Err(client::Failure::fatal(format!(
                        "{}: {digest} is unknown to the registry",
                        session.host
                    ))),
                    s => Err(client::Failure::fatal(format!(
                        "{}: {digest}: {}",
                        session.host,
                        client::status_text(s)
                    ))),
                }
            })
            .map_err(|f| f.message)?;
        if let Some(s) = size {
            if s != bytes.len() as u64 {
                return Err(format!(
                    "{digest}: {} sent {} bytes, its descriptor says {s}",
                    session.host,
                    bytes.len()
                ));
            }
        }
        let found = Digest::of_bytes(digest.algorithm(), &bytes);
        if found != *digest {
            return Err(format!(
                "digest mismatch for {digest} from {}: its bytes hash to {found}",
                session.host
            ));
        }
        self.store.put(digest, &bytes);
        Ok(bytes)
    }

    /// Follows indexes from `digest` down to the image manifest for `platform`.
    fn manifest(
        &self,
        mut digest: Digest,
        platform: &Platform,
    ) -> std::result::Result<(Digest, Manifest), String> {
        let mut declared: Option<String> = None;
        let mut size = None;
        for depth in 0.. {
            if depth > MAX_INDEX_DEPTH {
                return Err("indexes nest too deeply".into());
            }
            let bytes = self.document(&digest, size, DocType::Manifest)?;
            let value: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("{digest}: {e}"))?;
            match doc_kind(declared.as_deref(), &value) {
                DocKind::Manifest => {
                    let m: Manifest =
                        serde_json::from_value(value).map_err(|e| format!("{digest}: {e}"))?;
                    return Ok((digest, m));
                }
                DocKind::Index => {
                    let index: Index =
                        serde_json::from_value(value).map_err(|e| format!("{digest}: {e}"))?;
                    let cands = index
                        .manifests
                        .into_iter()
                        .map(|d| Candidate {
                            refs: Vec::new(),
                            platform: d.platform.clone(),
                            target: d,
                        })
                        .collect();
                    // A position (`--ref @N`) selects within the top index only.
                    let selector = self.opts.selector.as_ref().filter(|_| depth == 0);
                    let chosen = super::select(Path::new(self.image), cands, selector, platform)
                        .map_err(|e| match e {
                            Error::UnknownRef { reason, .. } => reason,
                            other => other.to_string(),
                        })?;
                    digest = Digest::parse(&chosen.target.digest)
                        .map_err(|e| format!("invalid digest {:?}", e.0))?;
                    declared = chosen.target.media_type.clone();
                    size = chosen.target.size;
                }
                DocKind::Schema1 => {
                    return Err(format!(
                        "{digest}: Docker schema 1 manifests are not supported \
                         (push the image again with a current tool)"
                    ));
                }
                DocKind::Other(mt) => {
                    return Err(format!("{digest}: unsupported manifest media type {mt:?}"));
                }
            }
        }
        Err("indexes nest too deeply".into())
    }

    /// The layers, each a remote blob of this endpoint's repository.
    fn layers(
        &self,
        manifest: &Manifest,
        config: &super::config::ImageConfig,
    ) -> std::result::Result<Vec<LayerRef>, String> {
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(format!(
                "the config lists {} diff_ids but the manifest {} layers",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ));
        }
        let mut sizes = HashMap::new();
        let mut described = Vec::new();
        for (i, d) in manifest.layers.iter().enumerate() {
            let digest =
                Digest::parse(&d.digest).map_err(|e| format!("invalid digest {:?}", e.0))?;
            let size = d
                .size
                .ok_or_else(|| format!("layer {i} ({digest}) has no size in the manifest"))?;
            let media_type = d.media_type.clone().unwrap_or_default();
            let compression = Compression::from_media_type(&media_type).ok_or_else(|| {
                format!("layer {i} ({digest}): unsupported layer media type {media_type:?}")
            })?;
            sizes.insert(digest.clone(), size);
            described.push((digest, size, media_type, compression, d.annotations.clone()));
        }
        let name = format!(
            "docker://{}/{}",
            self.endpoint.registry, self.endpoint.repository
        );
        let fetch = Arc::new(RepoBlobs::new(
            self.session.clone(),
            &self.endpoint.repository,
            name,
            sizes,
        ));
        let mut layers = Vec::with_capacity(described.len());
        for (index, ((digest, len, media_type, compression, ann), diff_id)) in described
            .into_iter()
            .zip(&config.rootfs.diff_ids)
            .enumerate()
        {
            let diff_id =
                Digest::parse(diff_id).map_err(|e| format!("invalid digest {:?}", e.0))?;
            let annotations: BTreeMap<String, String> = ann.unwrap_or_default();
            layers.push(LayerRef {
                index,
                blob_digest: Some(digest.clone()),
                diff_id,
                media_type,
                compression,
                blob: Blob::Remote(RemoteBlob {
                    fetch: fetch.clone(),
                    digest,
                    len,
                    annotations,
                }),
            });
        }
        Ok(layers)
    }
}

/// The `Docker-Content-Digest` of an answer, if valid.
fn header_digest(resp: &client::Answer) -> Option<Digest> {
    resp.headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Digest::parse(v.trim()).ok())
}

/// A whole small body, at most `limit` bytes.
fn read_body(
    resp: client::Answer,
    limit: u64,
    host: &str,
) -> std::result::Result<Vec<u8>, client::Failure> {
    resp.into_body()
        .into_with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::BodyExceedsLimit(_) => {
                client::Failure::fatal(format!("{host}: a document larger than {limit} bytes"))
            }
            e => client::transport(host, e),
        })
}
