//! OCI image layouts (image-spec image-layout.md), as a directory or inside a tar:
//! `index.json` → (nested indexes, chosen by platform) → manifest → config and layer blobs
//! under `blobs/<alg>/<hex>`. Every document is verified against its descriptor's digest and
//! size before it is parsed. Dependencies: image (mod), config, container, digest.

use std::collections::BTreeMap;

use super::config::{Descriptor, DocKind, IMAGE_CONFIG_TYPES, Index, Manifest, Platform, doc_kind};
use super::container::{BlobLoc, Container};
use super::digest::Digest;
use super::{Candidate, Image, Selector};
use crate::error::{Error, Result};

/// Indexes nest (Docker 25 and containerd exports do it once); more than this is a loop.
const MAX_INDEX_DEPTH: usize = 8;

const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// Opens the image chosen by `selector` and `platform` from `index.json`.
pub(super) fn open(
    container: Container,
    selector: Option<&Selector>,
    platform: &Platform,
) -> Result<Image> {
    let path = container.path.clone();
    let bytes = container.read_small("index.json")?;
    let index: Index = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_image(&path, format!("index.json: {e}")))?;
    let cands = index
        .manifests
        .into_iter()
        .map(|d| Candidate {
            refs: refs_of(&d),
            platform: d.platform.clone(),
            target: d,
        })
        .collect();
    let chosen = super::select(&path, cands, selector, platform)?;
    let (manifest_digest, manifest) = resolve(&container, &chosen.target, platform, 0)?;

    // Artifacts (Helm charts, signatures, SBOMs) use OCI manifests too; their config type
    // says they are not container images.
    if let Some(mt) = manifest.config.media_type.as_deref() {
        if !IMAGE_CONFIG_TYPES.contains(&mt) {
            return Err(Error::bad_image(
                &path,
                format!("{manifest_digest}: not a container image (config media type {mt})"),
            ));
        }
    }
    let config_digest = Digest::parse_in(&manifest.config.digest, &path)?;
    let config_bytes = read_blob(&container, &manifest.config)?;
    let (config, config_raw) = super::parse_config(&path, &config_bytes)?;

    let mut blobs = Vec::with_capacity(manifest.layers.len());
    for d in &manifest.layers {
        let digest = Digest::parse_in(&d.digest, &path)?;
        let loc = blob_loc(&container, &digest, d.size)?;
        blobs.push((loc, Some(digest), d.media_type.clone().unwrap_or_default()));
    }
    let layers = super::layer_refs(&container, &config, blobs)?;
    Ok(Image {
        origin: container.path.clone(),
        refs: chosen.refs,
        manifest_digest: Some(manifest_digest),
        config_digest: Some(config_digest),
        config,
        config_raw,
        layers,
    })
}

/// The references an index entry carries in its annotations.
fn refs_of(d: &Descriptor) -> Vec<String> {
    let ann = d.annotations.clone().unwrap_or_default();
    let mut refs = Vec::new();
    for key in [ANN_CONTAINERD_NAME, ANN_REF_NAME] {
        if let Some(v) = ann.get(key).filter(|v| !refs.contains(*v)) {
            refs.push(v.clone());
        }
    }
    refs
}

/// Follows a descriptor through nested indexes down to an image manifest.
fn resolve(
    container: &Container,
    desc: &Descriptor,
    platform: &Platform,
    depth: usize,
) -> Result<(Digest, Manifest)> {
    let path = &container.path;
    if depth > MAX_INDEX_DEPTH {
        return Err(Error::bad_image(path, "indexes nest too deeply"));
    }
    let digest = Digest::parse_in(&desc.digest, path)?;
    let bytes = read_blob(container, desc)?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_image(path, format!("{digest}: {e}")))?;
    match doc_kind(desc.media_type.as_deref(), &value) {
        DocKind::Index => {
            let index: Index = serde_json::from_value(value)
                .map_err(|e| Error::bad_image(path, format!("{digest}: {e}")))?;
            let next = pick_platform(path, &index.manifests, platform)?;
            return resolve(container, next, platform, depth + 1);
        }
        DocKind::Manifest => {}
        DocKind::Schema1 => {
            return Err(Error::bad_image(
                path,
                format!("{digest}: Docker schema 1 manifests are not supported"),
            ));
        }
        DocKind::Other(media_type) => {
            return Err(Error::bad_image(
                path,
                format!("{digest}: unsupported media type {media_type:?}"),
            ));
        }
    }
    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| Error::bad_image(path, format!("{digest}: {e}")))?;
    Ok((digest, manifest))
}

/// Chooses the manifest for `platform` from an index's entries.
fn pick_platform<'a>(
    path: &std::path::Path,
    entries: &'a [Descriptor],
    platform: &Platform,
) -> Result<&'a Descriptor> {
    if let Some(d) = entries
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
    {
        return Ok(d);
    }
    // An index whose single entry carries no platform is just an indirection.
    if let [only] = entries {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    let offered: BTreeMap<String, ()> = entries
        .iter()
        .filter_map(|d| d.platform.as_ref().map(|p| (p.to_string(), ())))
        .collect();
    Err(Error::UnknownRef {
        path: path.to_path_buf(),
        reason: format!(
            "no image for platform {platform} (offered: {}); choose with --platform",
            offered.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    })
}

/// Locates a blob and checks its size against the descriptor.
fn blob_loc(container: &Container, digest: &Digest, size: Option<u64>) -> Result<BlobLoc> {
    let loc = container
        .find(&digest.blob_path())
        .ok_or_else(|| Error::MissingBlob {
            path: container.path.clone(),
            digest: digest.to_string(),
        })?;
    if let Some(size) = size {
        if size != loc.len {
            return Err(Error::SizeMismatch {
                path: container.path.clone(),
                what: format!("blob {digest}"),
                expected: size,
                found: loc.len,
            });
        }
    }
    Ok(loc)
}

/// Reads a small blob and verifies its digest.
fn read_blob(container: &Container, desc: &Descriptor) -> Result<Vec<u8>> {
    let digest = Digest::parse_in(&desc.digest, &container.path)?;
    blob_loc(container, &digest, desc.size)?;
    let bytes = container.read_small(&digest.blob_path())?;
    let found = Digest::of_bytes(digest.algorithm(), &bytes);
    if found != digest {
        return Err(Error::DigestMismatch {
            path: container.path.clone(),
            what: format!("blob {digest}"),
            expected: digest.to_string(),
            found: found.to_string(),
        });
    }
    Ok(bytes)
}
