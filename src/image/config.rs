//! JSON documents of an image: OCI index and manifest, Docker `manifest.json`, image config.
//!
//! Parsing is separate from I/O: every type here is built from bytes, so it is tested on
//! strings. Unknown fields are ignored, as the image-spec requires. Dependencies: serde.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// OCI image index media type.
pub const MT_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const MT_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list media type.
pub const MT_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest media type.
pub const MT_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Docker's schema 1 manifest media types, which rimgfs refuses.
pub const MT_DOCKER_SCHEMA1: [&str; 2] = [
    "application/vnd.docker.distribution.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v1+prettyjws",
];

/// Config media types of container images (OCI and Docker); artifacts (Helm charts,
/// signatures, SBOMs) use OCI manifests with other config types.
pub const IMAGE_CONFIG_TYPES: &[&str] = &[
    "application/vnd.oci.image.config.v1+json",
    "application/vnd.docker.container.image.v1+json",
];

/// What a manifest-like document is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocKind {
    /// An OCI index or Docker manifest list.
    Index,
    /// An OCI or Docker v2 image manifest.
    Manifest,
    /// A Docker schema 1 manifest.
    Schema1,
    /// Something else, with its media type.
    Other(String),
}

/// Classifies a parsed document by its declared media type (a descriptor's or the
/// document's own), or by its shape when it declares none.
pub fn doc_kind(declared: Option<&str>, value: &serde_json::Value) -> DocKind {
    let media_type = declared
        .map(str::to_string)
        .or_else(|| {
            value
                .get("mediaType")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default();
    let schema1 = value.get("schemaVersion").and_then(|v| v.as_u64()) == Some(1);
    if schema1 || MT_DOCKER_SCHEMA1.contains(&media_type.as_str()) {
        DocKind::Schema1
    } else if media_type == MT_OCI_INDEX
        || media_type == MT_DOCKER_LIST
        || (media_type.is_empty() && value.get("manifests").is_some())
    {
        DocKind::Index
    } else if media_type == MT_OCI_MANIFEST
        || media_type == MT_DOCKER_MANIFEST
        || (media_type.is_empty() && value.get("layers").is_some())
    {
        DocKind::Manifest
    } else {
        DocKind::Other(media_type)
    }
}

/// A content descriptor (image-spec descriptor.md).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type, if given.
    #[serde(default)]
    pub media_type: Option<String>,
    /// `alg:hex`.
    pub digest: String,
    /// Blob size in bytes.
    #[serde(default)]
    pub size: Option<u64>,
    /// Platform of a manifest inside an index.
    #[serde(default)]
    pub platform: Option<Platform>,
    /// Annotations such as `org.opencontainers.image.ref.name`.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A platform: `os/arch[/variant]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Platform {
    /// e.g. `linux`.
    #[serde(default)]
    pub os: String,
    /// e.g. `amd64`.
    #[serde(default)]
    pub architecture: String,
    /// e.g. `v8`.
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Option<Platform> {
        let mut it = s.split('/');
        let os = it.next().filter(|x| !x.is_empty())?.to_string();
        let architecture = it.next().filter(|x| !x.is_empty())?.to_string();
        let variant = it.next().map(str::to_string);
        if it.next().is_some() {
            return None;
        }
        Some(Platform {
            os,
            architecture,
            variant,
        })
    }

    /// The platform this program runs on, in OCI names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        let variant = (architecture == "arm64").then(|| "v8".to_string());
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant,
        }
    }

    /// Whether `self` (wanted) accepts `other` (offered). A missing variant on either side
    /// matches any, and arm64's implicit `v8` equals no variant.
    pub fn matches(&self, other: &Platform) -> bool {
        if self.os != other.os || self.architecture != other.architecture {
            return false;
        }
        match (self.variant.as_deref(), other.variant.as_deref()) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An OCI index or Docker manifest list.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Media type, if given.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The manifests (or nested indexes).
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An OCI or Docker v2 image manifest.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Media type, if given.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// One entry of a Docker `manifest.json`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DockerManifestEntry {
    /// Path of the config inside the archive.
    pub config: String,
    /// Tags, e.g. `busybox:latest`.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Paths of the layer tars, bottom first.
    #[serde(default)]
    pub layers: Vec<String>,
    /// Descriptors of foreign layers, by digest (gives media types).
    #[serde(default)]
    pub layer_sources: Option<BTreeMap<String, Descriptor>>,
}

/// The image configuration (image-spec config.md), with the fields rimgfs shows.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ImageConfig {
    /// Creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// Architecture variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Execution parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RunConfig>,
    /// The layer diff_ids.
    #[serde(default)]
    pub rootfs: RootFs,
    /// One entry per build step, including empty layers.
    #[serde(default)]
    pub history: Vec<History>,
}

/// `config` of an image config.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    /// Default user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Environment, `NAME=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Exposed ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    /// Volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, serde_json::Value>>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

/// `rootfs` of an image config.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(default, rename = "type")]
    pub kind: String,
    /// Digest of each uncompressed layer tar, bottom first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// One history entry.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct History {
    /// When the step ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The build step, e.g. `/bin/sh -c #(nop) ADD file:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// True when the step made no layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_layer: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_parse_and_match() {
        let p = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(p.to_string(), "linux/arm64/v8");
        assert!(Platform::parse("linux").is_none());
        assert!(Platform::parse("a/b/c/d").is_none());
        let plain = Platform::parse("linux/arm64").unwrap();
        assert!(plain.matches(&p));
        assert!(
            !Platform::parse("linux/arm/v7")
                .unwrap()
                .matches(&Platform::parse("linux/arm/v6").unwrap())
        );
        assert!(!Platform::parse("linux/amd64").unwrap().matches(&p));
    }

    #[test]
    fn doc_kind_table() {
        let v = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();
        let cases = [
            (
                None,
                r#"{"mediaType":"application/vnd.oci.image.index.v1+json"}"#,
                DocKind::Index,
            ),
            (None, r#"{"manifests":[]}"#, DocKind::Index),
            (Some(MT_DOCKER_MANIFEST), r#"{}"#, DocKind::Manifest),
            (
                None,
                r#"{"schemaVersion":2,"layers":[]}"#,
                DocKind::Manifest,
            ),
            (
                None,
                r#"{"schemaVersion":1,"fsLayers":[]}"#,
                DocKind::Schema1,
            ),
            (Some(MT_DOCKER_SCHEMA1[1]), r#"{}"#, DocKind::Schema1),
            (None, r#"{"mediaType":"x/y"}"#, DocKind::Other("x/y".into())),
        ];
        for (declared, doc, want) in cases {
            assert_eq!(doc_kind(declared, &v(doc)), want, "{doc}");
        }
    }

    #[test]
    fn docker_manifest_parses() {
        let s = r#"[{"Config":"abc.json","RepoTags":["busybox:latest"],"Layers":["x/layer.tar"]}]"#;
        let v: Vec<DockerManifestEntry> = serde_json::from_str(s).unwrap();
        assert_eq!(v[0].layers, ["x/layer.tar"]);
        assert_eq!(v[0].repo_tags.as_ref().unwrap()[0], "busybox:latest");
    }

    #[test]
    fn config_parses_with_unknown_fields() {
        let s = r#"{"architecture":"amd64","os":"linux","weird":1,
            "config":{"Env":["A=b"],"Cmd":["sh"],"WorkingDir":"/w"},
            "rootfs":{"type":"layers","diff_ids":["sha256:00"]},
            "history":[{"created_by":"RUN x"},{"empty_layer":true}]}"#;
        let c: ImageConfig = serde_json::from_str(s).unwrap();
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert_eq!(c.config.unwrap().working_dir.as_deref(), Some("/w"));
        assert_eq!(c.history[1].empty_layer, Some(true));
    }
}
