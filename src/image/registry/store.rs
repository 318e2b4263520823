//! Registry documents kept in the cache: manifests, indexes and configs by digest (verified
//! again when read, so a damaged file is a miss, not a wrong answer), and tag resolutions
//! with the time they were made. Nothing here holds a credential.
//! Dependencies: cache, digest, reference, error.

use std::io::Write;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::reference::Reference;
use crate::cache::Cache;
use crate::error::{Context, Result};
use crate::image::digest::Digest;

/// How long a tag's resolution is used without asking the registry again: long enough for
/// the commands of one script to share it, short enough that a push is seen soon.
pub const TAG_TTL: Duration = Duration::from_secs(120);

/// A tag's resolution as recorded.
#[derive(Debug, Serialize, Deserialize)]
struct TagRecord {
    reference: String,
    digest: String,
    /// Seconds since the epoch.
    resolved: u64,
}

/// A recorded resolution, with its age.
#[derive(Clone, Debug)]
pub struct Resolution {
    /// The manifest (or index) digest.
    pub digest: Digest,
    /// How long ago it was made.
    pub age: Duration,
}

/// The registry part of the cache.
#[derive(Clone, Copy, Debug)]
pub struct Store<'a> {
    cache: &'a Cache,
}

impl<'a> Store<'a> {
    /// The store inside `cache`.
    pub fn new(cache: &'a Cache) -> Store<'a> {
        Store { cache }
    }

    /// The document with this digest, if cached and intact.
    pub fn get(&self, digest: &Digest) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.cache.manifest_path(digest)).ok()?;
        (Digest::of_bytes(digest.algorithm(), &bytes) == *digest).then_some(bytes)
    }

    /// Keeps a document already verified against `digest`. A cache that cannot be written
    /// only costs a later request, so the failure is a warning.
    pub fn put(&self, digest: &Digest, bytes: &[u8]) {
        let path = self.cache.manifest_path(digest);
        if path.exists() {
            return;
        }
        let r = self
            .cache
            .write_atomic(&path, |w| w.write_all(bytes).ctx("write", &path));
        if let Err(e) = r {
            log::warn!("cannot cache {digest}: {}", crate::error::chain(&e));
        }
    }

    /// The recorded resolution of a tag reference.
    pub fn tag(&self, r: &Reference) -> Option<Resolution> {
        let key = r.to_string();
        let bytes = std::fs::read(self.cache.tag_path(&key)).ok()?;
        let rec: TagRecord = serde_json::from_slice(&bytes).ok()?;
        if rec.reference != key {
            return None;
        }
        let digest = Digest::parse(&rec.digest).ok()?;
        let resolved = SystemTime::UNIX_EPOCH + Duration::from_secs(rec.resolved);
        let age = SystemTime::now()
            .duration_since(resolved)
            .unwrap_or(Duration::ZERO);
        Some(Resolution { digest, age })
    }

    /// Records that a tag reference resolves to `digest` now.
    pub fn put_tag(&self, r: &Reference, digest: &Digest) -> Result<()> {
        let key = r.to_string();
        let rec = TagRecord {
            reference: key.clone(),
            digest: digest.to_string(),
            resolved: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        let path = self.cache.tag_path(&key);
        let json = serde_json::to_vec(&rec).unwrap_or_default();
        self.cache
            .write_atomic(&path, |w| w.write_all(&json).ctx("write", &path))
    }
}

/// `3 min`, `2 h`, `5 d`: an age for messages.
pub fn human_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_round_trip_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        let store = Store::new(&cache);
        let doc = br#"{"schemaVersion":2}"#;
        let d = Digest::of_bytes(crate::image::digest::Algorithm::Sha256, doc);
        assert!(store.get(&d).is_none());
        store.put(&d, doc);
        assert_eq!(store.get(&d).as_deref(), Some(&doc[..]));
        std::fs::write(cache.manifest_path(&d), b"damaged").unwrap();
        assert!(store.get(&d).is_none(), "a damaged document is a miss");

        let r = Reference::parse("reg.io/a:1").unwrap();
        assert!(store.tag(&r).is_none());
        store.put_tag(&r, &d).unwrap();
        let res = store.tag(&r).unwrap();
        assert_eq!(res.digest, d);
        assert!(res.age < TAG_TTL);
        assert!(
            store
                .tag(&Reference::parse("reg.io/a:2").unwrap())
                .is_none()
        );
        assert_eq!(human_age(Duration::from_secs(59)), "59 s");
        assert_eq!(human_age(Duration::from_secs(600)), "10 min");
        assert_eq!(human_age(Duration::from_secs(3 * 86_400)), "3 d");
    }
}
