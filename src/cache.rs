//! The content cache: decompressed layers and layer indexes keyed by diff_id (so a layer shared
//! by several images is stored once), decompressed whole archives, and verification stamps.
//!
//! Layout under the cache root:
//! ```text
//! layers/<alg>/<hex>.tar     decompressed layer, verified against its diff_id when written
//! index/<alg>/<hex>.idx      binary layer index with a trailing checksum (layer::codec)
//! trees/<key>.tree           merged tree of a layer stack, mapped by mounts (tree::flat),
//!                            key = hash of the layers' index files and their identities
//! archives/<key>.tar         decompressed whole-archive, key = hash of the source fingerprint
//! verified/<key>             empty stamp: this (file, offset, len, mtime) hashed to its digest
//! manifests/<alg>/<hex>      registry manifest, index or config, verified when written and read
//! tags/<key>.json            a tag's resolution to a manifest digest and when it was made,
//!                            key = hash of the normalised reference
//! ```
//! Every write goes to a temporary file in the same directory and is renamed into place, so a
//! reader never sees a partial entry. Dependencies: error, image::digest.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Context, Result};
use crate::image::digest::{Algorithm, Digest};

/// Handle on the cache directory.
#[derive(Clone, Debug)]
pub struct Cache {
    root: PathBuf,
    policy: Policy,
}

/// How the cache may be used and grown (`--offline`, `--no-prefetch`, `--cache-max`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Serve blob data from the cache only; fetch nothing.
    pub offline: bool,
    /// Do not fill the cache with the rest of a lazily fetched layer after mounting.
    pub no_prefetch: bool,
    /// Keep the cache under this many bytes, evicting what was least recently used.
    pub max_bytes: Option<u64>,
}

impl Cache {
    /// A cache rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Cache {
        Cache {
            root,
            policy: Policy::default(),
        }
    }

    /// The same cache, used under `policy`.
    pub fn with_policy(mut self, policy: Policy) -> Cache {
        self.policy = policy;
        self
    }

    /// How the cache may be used.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The default root: `/var/cache/rimgfs` for root, else `$XDG_CACHE_HOME/rimgfs` (or
    /// `~/.cache/rimgfs`).
    pub fn default_root() -> PathBuf {
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/cache/rimgfs");
        }
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("rimgfs");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        PathBuf::from(home).join(".cache/rimgfs")
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the decompressed tar of a layer lives.
    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("layers")
            .join(diff_id.algorithm_name())
            .join(format!("{}.tar", diff_id.hex()))
    }

    /// Where the index of a layer lives.
    pub fn index_path(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join("index")
            .join(diff_id.algorithm_name())
            .join(format!("{}.idx", diff_id.hex()))
    }

    /// Where a decompressed whole archive lives, for a source fingerprint.
    pub fn archive_path(&self, fingerprint: &str) -> PathBuf {
        let key = Digest::of_bytes(Algorithm::Sha256, fingerprint.as_bytes());
        self.root
            .join("archives")
            .join(format!("{}.tar", key.hex()))
    }

    /// Where a registry document (manifest, index, config) with this digest lives.
    pub fn manifest_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("manifests")
            .join(digest.algorithm_name())
            .join(digest.hex())
    }

    /// Where the resolution of a tag reference (`registry/repository:tag`) lives.
    pub fn tag_path(&self, reference: &str) -> PathBuf {
        let key = Digest::of_bytes(Algorithm::Sha256, reference.as_bytes());
        self.root.join("tags").join(format!("{}.json", key.hex()))
    }

    /// Whether a stamp says the blob with this fingerprint was already verified as `digest`.
    pub fn is_verified(&self, fingerprint: &str, digest: &Digest) -> bool {
        self.stamp_path(fingerprint, digest).is_file()
    }

    /// Records that the blob with this fingerprint hashed to `digest`.
    pub fn mark_verified(&self, fingerprint: &str, digest: &Digest) -> Result<()> {
        // Empty: nothing a crash could leave half-written.
        self.write_checked(&self.stamp_path(fingerprint, digest), |_| Ok(()))
    }

    fn stamp_path(&self, fingerprint: &str, digest: &Digest) -> PathBuf {
        let key = Digest::of_bytes(
            Algorithm::Sha256,
            format!("{fingerprint}\0{digest}").as_bytes(),
        );
        self.root.join("verified").join(key.hex())
    }

    /// Writes `dest` atomically: `fill` writes into a temporary file beside it, which is
    /// synced and renamed over `dest` only if `fill` succeeds.
    pub fn write_atomic(
        &self,
        dest: &Path,
        fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
    ) -> Result<()> {
        self.write_renamed(dest, true, fill)
    }

    /// Like [`Cache::write_atomic`] without the sync: for entries that carry a checksum of
    /// their own, so a file a crash left incomplete is refused when read, never served.
    pub fn write_checked(
        &self,
        dest: &Path,
        fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
    ) -> Result<()> {
        self.write_renamed(dest, false, fill)
    }

    fn write_renamed(
        &self,
        dest: &Path,
        sync: bool,
        fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
    ) -> Result<()> {
        let dir = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).ctx("create directory", dir)?;
        let tmp = dir.join(format!(
            ".tmp.{}.{}",
            std::process::id(),
            dest.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        ));
        let result = (|| {
            let f = File::create(&tmp).ctx("create", &tmp)?;
            let mut w = BufWriter::with_capacity(1 << 20, f);
            fill(&mut w)?;
            w.flush().ctx("write", &tmp)?;
            let f = w
                .into_inner()
                .map_err(|e| e.into_error())
                .ctx("write", &tmp)?;
            if sync {
                f.sync_all().ctx("sync", &tmp)?;
            }
            fs::rename(&tmp, dest).ctx("rename", dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }
}
