//! `docker save` archives, all three shapes, through their `manifest.json`:
//! legacy (`<id>/layer.tar`, `<hex>.json`), Docker 25+ (paths into `blobs/sha256/`) and the
//! containerd store's (the same, with compressed layer blobs). Layer compression is read from
//! the blob's magic, since `manifest.json` carries no media types.
//! Dependencies: image (mod), config, container, digest.

use super::config::{DockerManifestEntry, Platform};
use super::container::Container;
use super::digest::Digest;
use super::{Candidate, Image, Selector};
use crate::error::{Error, Result};

/// Opens the image chosen by `selector` from `manifest.json`.
pub(super) fn open(container: Container, selector: Option<&Selector>) -> Result<Image> {
    let path = container.path.clone();
    let bytes = container.read_small("manifest.json")?;
    let entries: Option<Vec<DockerManifestEntry>> = serde_json::from_slice(&bytes)
        .map_err(|e| Error::bad_image(&path, format!("manifest.json: {e}")))?;
    let entries = entries.ok_or_else(|| Error::bad_image(&path, "manifest.json is null"))?;
    let cands = entries
        .into_iter()
        .map(|e| Candidate {
            refs: e.repo_tags.clone().unwrap_or_default(),
            platform: None,
            target: e,
        })
        .collect();
    // docker-archive has one platform per entry; the platform filter never applies.
    let chosen = super::select(&path, cands, selector, &Platform::host())?;
    let entry = chosen.target;

    let config_bytes = container.read_small(&entry.config)?;
    let config_digest = digest_from_name(&entry.config);
    if let Some(want) = &config_digest {
        let found = Digest::of_bytes(want.algorithm(), &config_bytes);
        if &found != want {
            return Err(Error::DigestMismatch {
                path,
                what: format!("config {}", entry.config),
                expected: want.to_string(),
                found: found.to_string(),
            });
        }
    }
    let (config, config_raw) = super::parse_config(&path, &config_bytes)?;

    let mut blobs = Vec::with_capacity(entry.layers.len());
    for (i, name) in entry.layers.iter().enumerate() {
        let loc = container.get(name)?;
        let blob_digest = digest_from_name(name);
        // LayerSources (foreign layers) is keyed by diff_id and gives the media type.
        let media_type = config
            .rootfs
            .diff_ids
            .get(i)
            .and_then(|d| entry.layer_sources.as_ref()?.get(d)?.media_type.clone())
            .unwrap_or_default();
        blobs.push((loc, blob_digest, media_type));
    }
    let layers = super::layer_refs(&container, &config, blobs)?;
    Ok(Image {
        origin: path,
        refs: chosen.refs,
        manifest_digest: None,
        config_digest,
        config,
        config_raw,
        layers,
    })
}

/// The digest a member name encodes, if any: only content-addressed `blobs/<alg>/<hex>`
/// paths (Docker 25+, containerd). Legacy `<hex>.json` and `<id>/layer.tar` names are not
/// digests (tools rewrite configs without renaming them), so they are not held to one.
fn digest_from_name(name: &str) -> Option<Digest> {
    let rest = name.trim_start_matches("./").strip_prefix("blobs/")?;
    let (alg, hex) = rest.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_from_member_names() {
        let hex = "a".repeat(64);
        let cases = [
            (format!("blobs/sha256/{hex}"), true),
            (format!("{hex}.json"), false),
            (format!("{hex}.tar.gz"), false),
            (format!("{hex}/layer.tar"), false),
            ("blobs/sha256/../../x".to_string(), false),
            ("manifest.json".to_string(), false),
        ];
        for (name, some) in cases {
            assert_eq!(digest_from_name(&name).is_some(), some, "{name}");
        }
    }
}
