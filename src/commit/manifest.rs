//! The new image's JSON and blobs: the copied layers' descriptors, the config with the new
//! layer (image-spec `config.md`), the manifest, the index, and for a Docker archive its
//! `manifest.json`. Everything here is bytes and descriptors; [`super::output`] writes them.
//! Dependencies: image, error.

use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::Format;
use crate::error::{Context, Error, Result};
use crate::image::config::{MT_OCI_INDEX, MT_OCI_MANIFEST};
use crate::image::container::Compression;
use crate::image::digest::{Algorithm, Digest, HashingReader};
use crate::image::{self, Image};

/// Media type of the new layer and of uncompressed copied ones.
pub const MT_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MT_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
const ANN_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The history entry's `created_by`.
pub const CREATED_BY: &str = "rimgfs commit";

/// A blob of the new image and where its bytes come from.
pub(super) struct Blob {
    pub(super) digest: Digest,
    pub(super) size: u64,
    media_type: &'static str,
    pub(super) source: Source,
}

/// Where a blob's bytes are.
pub(super) enum Source {
    /// A layer of the source image, copied as it is.
    Layer(image::Blob),
    /// A file in the staging directory (the new layer), moved rather than copied when it can.
    File(PathBuf),
    /// JSON made here.
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

    /// The new layer, written to `path`.
    pub(super) fn file(digest: Digest, size: u64, path: PathBuf) -> Blob {
        Blob {
            digest,
            size,
            media_type: MT_LAYER_TAR,
            source: Source::File(path),
        }
    }

    fn descriptor(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest.as_str(), "size": self.size })
    }

    /// Its bytes, from the start.
    pub(super) fn reader(&self) -> Result<Box<dyn Read + '_>> {
        Ok(match &self.source {
            Source::Layer(b) => b.reader()?,
            Source::File(p) => Box::new(io::BufReader::new(File::open(p).ctx("open", p)?)),
            Source::Bytes(b) => Box::new(&b[..]),
        })
    }
}

/// The source image's layer blobs, as they are: same bytes, digest and compression.
pub(super) fn copied_layers(image: &Image) -> Result<Vec<Blob>> {
    let mut blobs = Vec::new();
    for l in &image.layers {
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
    Ok(blobs)
}

/// The new config: `image`'s with the new layer's diff_id, a history entry, a new creation
/// time.
pub(super) fn config(image: &Image, diff_id: &Digest, message: Option<&str>) -> Result<Blob> {
    let now = rfc3339(SystemTime::now());
    let config = new_config(&image.config_raw, diff_id, &now, message)
        .ok_or_else(|| Error::bad_image(&image.origin, "config is not an object"))?;
    Ok(Blob::bytes(config, MT_OCI_CONFIG))
}

/// The OCI manifest of `config` and `layers`.
pub(super) fn manifest(config: &Blob, layers: &[Blob]) -> Blob {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    Blob::bytes(to_json(&manifest), MT_OCI_MANIFEST)
}

/// Every member of the image layout, by its path in the layout: the blobs (layers, config,
/// manifest), then Docker's `manifest.json` for [`Format::DockerArchive`], `index.json` and
/// `oci-layout`. `tag` names the image in the index (and in `RepoTags`).
pub(super) fn layout(
    format: Format,
    tag: Option<&str>,
    layers: Vec<Blob>,
    config: Blob,
    manifest: Blob,
) -> Vec<(String, Blob)> {
    let mut manifest_desc = manifest.descriptor();
    let mut members: Vec<(String, Blob)> = Vec::new();
    match (format, tag) {
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
                "Layers": layers.iter().map(|b| b.digest.blob_path()).collect::<Vec<_>>(),
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
    let mut all: Vec<(String, Blob)> = layers
        .into_iter()
        .chain([config, manifest])
        .map(|b| (b.digest.blob_path(), b))
        .collect();
    all.append(&mut members);
    all
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
    fn docker_tags_get_latest() {
        assert_eq!(docker_tag("app"), "app:latest");
        assert_eq!(
            docker_tag("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(docker_tag("app:v1"), "app:v1");
    }

    /// The layout's members in order, and the index's annotations.
    fn members(format: Format, tag: Option<&str>) -> (Vec<String>, Value) {
        let layer = Blob::bytes(b"layer".to_vec(), MT_LAYER_TAR);
        let config = Blob::bytes(b"{}".to_vec(), MT_OCI_CONFIG);
        let manifest = manifest(&config, std::slice::from_ref(&layer));
        let m = layout(format, tag, vec![layer], config, manifest);
        let index = m.iter().find(|(n, _)| n == "index.json").unwrap();
        let Source::Bytes(b) = &index.1.source else {
            panic!("index.json is not made here");
        };
        let index: Value = serde_json::from_slice(b).unwrap();
        let names = m.iter().map(|(n, _)| n.clone()).collect();
        (names, index["manifests"][0]["annotations"].clone())
    }

    #[test]
    fn layout_members_and_tags_per_format() {
        // Layers, config, manifest, then the layout's own files.
        let config = Blob::bytes(b"{}".to_vec(), MT_OCI_CONFIG);
        let layer = Blob::bytes(b"layer".to_vec(), MT_LAYER_TAR);
        let blobs = [
            layer.digest.blob_path(),
            config.digest.blob_path(),
            manifest(&config, &[layer]).digest.blob_path(),
        ];
        let with = |files: &[&str]| -> Vec<String> {
            blobs
                .iter()
                .cloned()
                .chain(files.iter().map(|f| f.to_string()))
                .collect()
        };
        let oci = with(&["index.json", "oci-layout"]);
        assert_eq!(members(Format::Oci, None), (oci.clone(), Value::Null));
        let (names, ann) = members(Format::OciArchive, Some("app:v1"));
        assert_eq!(names, oci);
        assert_eq!(ann, json!({ ANN_REF_NAME: "app:v1" }));
        let (names, ann) = members(Format::DockerArchive, Some("app"));
        assert_eq!(names, with(&["manifest.json", "index.json", "oci-layout"]));
        assert_eq!(
            ann,
            json!({ ANN_CONTAINERD_NAME: "app:latest", ANN_REF_NAME: "latest" })
        );
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
