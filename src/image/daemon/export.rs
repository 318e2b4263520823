//! Splitting a `docker save` stream into the cache as it arrives: every layer becomes (or is
//! found to be) the cache's `layers/<alg>/<hex>.tar` for its diff_id, and only the image's
//! small documents are kept in memory. Nothing is stored twice: a layer already cached is
//! skipped, and one whose identity is known only by hashing it (the legacy `<id>/layer.tar`
//! members) is dropped once hashed if the cache had it.
//!
//! Members are recognised by content, not by name: a big member is a layer if its
//! uncompressed bytes hash to one of the image's diff_ids (gzip or zstd members are
//! decompressed on the way, as the containerd image store exports them).
//! Dependencies: error, cache, image (container, digest), tar.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read};
use std::path::Path;

use crate::cache::Cache;
use crate::error::{Context, Error, Result};
use crate::image::container::{BlobLoc, Compression, Container};
use crate::image::digest::{Digest, HashingReader};

/// Members up to this size are read into memory (configs, manifests; and tiny layers).
const SMALL_MEMBER: u64 = 1 << 20;
/// Bytes read to sniff a member's compression.
const MAGIC_LEN: usize = 8;

/// What an export left: its small members by name, and the diff_ids found among its layers.
#[derive(Debug, Default)]
pub struct Split {
    /// Members of at most [`SMALL_MEMBER`] bytes.
    pub small: BTreeMap<String, Vec<u8>>,
    /// The diff_ids whose layer is now in the cache.
    pub layers: BTreeSet<Digest>,
}

/// Reads the `docker save` tar `stream` to its end, storing the layers whose diff_ids are in
/// `wanted` into `cache`. `origin` names the image in messages.
pub fn split(
    stream: impl Read,
    wanted: &BTreeSet<Digest>,
    cache: &Cache,
    origin: &Path,
) -> Result<Split> {
    let bad = |e: io::Error| Error::bad_image(origin, format!("export: {e}"));
    let mut out = Split::default();
    let mut ar = tar::Archive::new(stream);
    for (n, entry) in ar.entries().map_err(bad)?.enumerate() {
        let mut entry = entry.map_err(bad)?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = String::from_utf8_lossy(&entry.path_bytes())
            .trim_start_matches("./")
            .to_string();
        let size = entry.size();
        // Docker 25+ names layers by digest; one already cached need not be read.
        if let Some(d) = digest_of_name(&name).filter(|d| wanted.contains(d)) {
            if cache.layer_path(&d).is_file() {
                out.layers.insert(d);
                continue;
            }
        }
        if size <= SMALL_MEMBER {
            let mut bytes = Vec::with_capacity(size as usize);
            entry.read_to_end(&mut bytes).map_err(bad)?;
            if let Some(d) = as_layer(&bytes, wanted) {
                if !cache.layer_path(&d).is_file() {
                    store(&mut &bytes[..], &d, cache)?;
                }
                out.layers.insert(d);
            } else if Compression::sniff(&bytes) != Compression::None {
                // A small compressed layer (containerd's store exports layers compressed).
                if let Some(d) = store_unknown(&mut &bytes[..], wanted, cache, n, origin)? {
                    out.layers.insert(d);
                }
            }
            out.small.insert(name, bytes);
            continue;
        }
        if let Some(d) = store_unknown(&mut entry, wanted, cache, n, origin)? {
            out.layers.insert(d);
        }
    }
    Ok(out)
}

/// The digest a member name `blobs/<alg>/<hex>` carries.
fn digest_of_name(name: &str) -> Option<Digest> {
    let (alg, hex) = name.strip_prefix("blobs/")?.split_once('/')?;
    Digest::parse(&format!("{alg}:{hex}")).ok()
}

/// The diff_id a small member has, if it is one of the layers (uncompressed only: a
/// compressed layer is never this small and worth the decompression).
fn as_layer(bytes: &[u8], wanted: &BTreeSet<Digest>) -> Option<Digest> {
    let mut algs = Vec::new();
    for a in wanted.iter().map(Digest::algorithm) {
        if !algs.contains(&a) {
            algs.push(a);
        }
    }
    algs.into_iter()
        .map(|a| Digest::of_bytes(a, bytes))
        .find(|d| wanted.contains(d))
}

/// Writes `tar`, which hashes to `diff_id`, as the cache's layer `diff_id`.
fn store(tar: &mut dyn Read, diff_id: &Digest, cache: &Cache) -> Result<()> {
    let dest = cache.layer_path(diff_id);
    cache.write_atomic(&dest, |w| io::copy(tar, w).map(drop).ctx("write", &dest))?;
    mark_verified(&dest, diff_id, cache)
}

/// Records that a layer file just written was hashed, so its first mount need not hash it
/// again.
fn mark_verified(file: &Path, diff_id: &Digest, cache: &Cache) -> Result<()> {
    let len = std::fs::metadata(file).ctx("stat", file)?.len();
    let loc = BlobLoc {
        file: file.to_path_buf(),
        offset: 0,
        len,
    };
    cache.mark_verified(&Container::fingerprint(&loc)?, diff_id)
}

/// Streams a member whose identity is unknown into the cache while hashing its uncompressed
/// bytes, and keeps it only if it is a wanted layer the cache lacks.
fn store_unknown(
    member: &mut dyn Read,
    wanted: &BTreeSet<Digest>,
    cache: &Cache,
    n: usize,
    origin: &Path,
) -> Result<Option<Digest>> {
    let Some(alg) = wanted.iter().next().map(Digest::algorithm) else {
        io::copy(member, &mut io::sink()).ctx("read", origin)?;
        return Ok(None);
    };
    let mut head = [0u8; MAGIC_LEN];
    let got = read_full(member, &mut head).ctx("read", origin)?;
    let compression = Compression::sniff(&head[..got]);
    let raw = io::Cursor::new(head[..got].to_vec()).chain(member);
    let mut tar = compression
        .decoder(raw)
        .map_err(|e| Error::bad_image(origin, format!("export: {e}")))?;
    // The name is unique to this process and member, and the cache's layer directory keeps
    // it on the same filesystem as its final name.
    let incoming = cache
        .root()
        .join("layers")
        .join(format!(".incoming.{}.{n}", std::process::id()));
    let mut hashing = HashingReader::new(&mut tar, Some(alg));
    cache.write_atomic(&incoming, |w| {
        io::copy(&mut hashing, w)
            .map(drop)
            .map_err(|e| Error::bad_image(origin, format!("export: {e}")))
    })?;
    let digest = hashing
        .finish()
        .0
        .ok_or_else(|| Error::bad_image(origin, "export: a layer could not be hashed"))?;
    let keep = wanted.contains(&digest);
    let dest = cache.layer_path(&digest);
    let existed = dest.is_file();
    let result = if keep && !existed {
        std::fs::create_dir_all(dest.parent().unwrap_or(cache.root()))
            .and_then(|()| std::fs::rename(&incoming, &dest))
            .ctx("rename", &dest)
    } else {
        Ok(())
    };
    let _ = std::fs::remove_file(&incoming);
    result?;
    if keep && !existed {
        mark_verified(&dest, &digest, cache)?;
    }
    Ok(keep.then_some(digest))
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::digest::Algorithm;

    fn member(b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data).unwrap();
    }

    #[test]
    fn layers_land_in_the_cache_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        let big = vec![7u8; (SMALL_MEMBER + 10) as usize];
        let gz = {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            io::Write::write_all(&mut e, &big).unwrap();
            e.finish().unwrap()
        };
        let tiny = b"tiny layer".to_vec();
        let other = vec![1u8; (SMALL_MEMBER + 1) as usize];
        let d_big = Digest::of_bytes(Algorithm::Sha256, &big);
        let d_tiny = Digest::of_bytes(Algorithm::Sha256, &tiny);
        let wanted: BTreeSet<Digest> = [d_big.clone(), d_tiny.clone()].into();
        let mut b = tar::Builder::new(Vec::new());
        member(&mut b, "manifest.json", b"[]");
        member(&mut b, "abc/layer.tar", &gz);
        member(&mut b, "def/layer.tar", &tiny);
        member(&mut b, "unrelated", &other);
        let archive = b.into_inner().unwrap();
        let got = split(&archive[..], &wanted, &cache, Path::new("x")).unwrap();
        assert_eq!(got.layers, wanted);
        assert_eq!(std::fs::read(cache.layer_path(&d_big)).unwrap(), big);
        assert_eq!(std::fs::read(cache.layer_path(&d_tiny)).unwrap(), tiny);
        assert_eq!(got.small["manifest.json"], b"[]");
        assert!(!got.small.contains_key("unrelated"));
        // Nothing else was left behind, and a second export stores nothing new.
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let layer_dir = cache.layer_path(&d_big).parent().unwrap().to_path_buf();
        assert_eq!(names(&layer_dir).len(), 2);
        let before = std::fs::metadata(cache.layer_path(&d_big)).unwrap();
        split(&archive[..], &wanted, &cache, Path::new("x")).unwrap();
        let after = std::fs::metadata(cache.layer_path(&d_big)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(before.ino(), after.ino());
        assert_eq!(names(&layer_dir).len(), 2);
        assert_eq!(names(&dir.path().join("layers")), ["sha256"]);
    }

    #[test]
    fn a_truncated_export_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::new(dir.path().to_path_buf());
        let mut b = tar::Builder::new(Vec::new());
        member(
            &mut b,
            "x/layer.tar",
            &vec![3u8; (SMALL_MEMBER + 5) as usize],
        );
        let archive = b.into_inner().unwrap();
        let cut = &archive[..archive.len() / 2];
        let wanted = [Digest::of_bytes(Algorithm::Sha256, b"z")].into();
        assert!(split(cut, &wanted, &cache, Path::new("x")).is_err());
    }
}
