//! `docker-daemon:IMAGE`: an image of the Docker Engine, named by reference or ID.
//!
//! `GET /images/{name}/json` gives the image ID (the digest of its config). An image already
//! exported is found in the cache by that ID and costs nothing more; otherwise
//! `GET /images/{id}/get` is streamed once through [`export::split`], which leaves each layer
//! as the cache's `layers/<alg>/<hex>.tar` (shared with every other source, verified against
//! its diff_id) and keeps only the config, as `images/<alg>/<hex>.json`. Exporting by ID, not
//! by name, means a tag moved meanwhile cannot mix two images. The layers are then served
//! like any uncompressed local layer. Dependencies: error, cache, image (mod, container,
//! digest), client, export.

pub mod client;
pub mod export;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::container::{BlobLoc, Compression};
use super::digest::Digest;
use super::{Blob, Image, LayerRef, OpenOptions};
use crate::cache::Cache;
use crate::error::{Context, Error, Result};
use client::{Engine, Inspect};

/// The transport prefix.
pub const PREFIX: &str = "docker-daemon:";
/// The media type of an uncompressed layer: what the cache holds.
const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Where the cache keeps the config of an image exported from a daemon.
fn config_path(cache: &Cache, id: &Digest) -> PathBuf {
    cache
        .root()
        .join("images")
        .join(id.algorithm_name())
        .join(format!("{}.json", id.hex()))
}

/// Opens `docker-daemon:REFERENCE` (the part after the prefix).
pub fn open(reference: &str, opts: &OpenOptions, cache: &Cache) -> Result<Image> {
    let origin = PathBuf::from(format!("{PREFIX}{reference}"));
    if opts.selector.is_some() {
        return Err(Error::Usage(format!(
            "{}: --ref does not apply; name the image in the argument",
            origin.display()
        )));
    }
    let api = |e: client::ApiError| Error::bad_image(&origin, e.to_string());
    let engine = Engine::from_env().map_err(|e| Error::Usage(e.to_string()))?;
    let info = engine.inspect(reference).map_err(api)?;
    let id = Digest::parse_in(&info.id, &origin)?;
    let config = match cached(cache, &id)? {
        Some(c) => c,
        None => {
            log::info!(
                "{}: exporting {id} from {}",
                origin.display(),
                engine.describe()
            );
            let stream = engine.export(id.as_str()).map_err(api)?;
            import(stream, &info, &id, cache, &origin)?
        }
    };
    image(&origin, &info, id, &config, cache)
}

/// The config of an image exported before, if it and all its layers are still cached.
fn cached(cache: &Cache, id: &Digest) -> Result<Option<Vec<u8>>> {
    let path = config_path(cache, id);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(None);
    };
    // Content-addressed: a damaged entry is simply not one.
    if Digest::of_bytes(id.algorithm(), &bytes) != *id {
        log::info!("{}: damaged; exporting again", path.display());
        return Ok(None);
    }
    let diff_ids = match super::parse_config(&path, &bytes) {
        Ok((c, _)) => c.rootfs.diff_ids,
        Err(_) => return Ok(None),
    };
    for d in diff_ids {
        let Ok(d) = Digest::parse(&d) else {
            return Ok(None);
        };
        if !cache.layer_path(&d).is_file() {
            return Ok(None);
        }
    }
    Ok(Some(bytes))
}

/// Splits an export into the cache and returns the image's config.
fn import(
    stream: impl std::io::Read,
    info: &Inspect,
    id: &Digest,
    cache: &Cache,
    origin: &Path,
) -> Result<Vec<u8>> {
    // The daemon says which layers the image has (RootFS.Layers); the config checked
    // below must agree.
    let wanted: BTreeSet<Digest> = info
        .root_fs
        .as_ref()
        .map(|r| {
            r.layers
                .iter()
                .map(|d| Digest::parse_in(d, origin))
                .collect()
        })
        .transpose()?
        .unwrap_or_default();
    let got = export::split(stream, &wanted, cache, origin)?;
    let config = got
        .small
        .iter()
        .find(|(name, bytes)| {
            (name.ends_with(".json") || name.starts_with("blobs/"))
                && Digest::of_bytes(id.algorithm(), bytes) == *id
        })
        .map(|(_, b)| b.clone())
        .ok_or_else(|| {
            Error::bad_image(origin, format!("the export holds no config for image {id}"))
        })?;
    let (parsed, _) = super::parse_config(origin, &config)?;
    for d in &parsed.rootfs.diff_ids {
        let d = Digest::parse_in(d, origin)?;
        if !got.layers.contains(&d) && !cache.layer_path(&d).is_file() {
            return Err(Error::MissingBlob {
                path: origin.to_path_buf(),
                digest: format!("layer {d} (not in the export)"),
            });
        }
    }
    let path = config_path(cache, id);
    cache.write_atomic(&path, |w| {
        std::io::Write::write_all(w, &config).ctx("write", &path)
    })?;
    Ok(config)
}

/// The image, its layers in the cache.
fn image(origin: &Path, info: &Inspect, id: Digest, config: &[u8], cache: &Cache) -> Result<Image> {
    let (config, config_raw) = super::parse_config(origin, config)?;
    let mut layers = Vec::with_capacity(config.rootfs.diff_ids.len());
    for (index, d) in config.rootfs.diff_ids.iter().enumerate() {
        let diff_id = Digest::parse_in(d, origin)?;
        let file = cache.layer_path(&diff_id);
        let len = std::fs::metadata(&file).ctx("stat", &file)?.len();
        let loc = BlobLoc {
            file,
            offset: 0,
            len,
        };
        layers.push(LayerRef {
            index,
            blob_digest: None,
            diff_id,
            media_type: MT_LAYER_TAR.into(),
            compression: Compression::None,
            blob: Blob::Local(loc),
        });
    }
    let mut refs = info.repo_tags.clone().unwrap_or_default();
    refs.extend(info.repo_digests.iter().flatten().cloned());
    Ok(Image {
        origin: origin.to_path_buf(),
        refs,
        manifest_digest: None,
        config_digest: Some(id),
        config,
        config_raw,
        layers,
    })
}
