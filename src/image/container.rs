//! The thing an image lives in: a directory (OCI layout) or a tar archive (docker-save,
//! oci-archive), the latter possibly gzip- or zstd-compressed as a whole.
//!
//! A tar is scanned once for its member names and data offsets, so every blob can then be
//! read in place by `(file, offset, len)` without extracting anything. Dependencies: error,
//! cache, tar.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::tar::{SeekInput, TarKind, TarWalker};
use crate::cache::Cache;
use crate::error::show;
use crate::error::{Context, Error, Result};

/// Largest manifest, index or config rimgfs reads into memory; real ones are a few KiB.
const MAX_METADATA_SIZE: u64 = 64 << 20;
/// How many symlink hops a member name may take (test_link-style archives use one).
const MAX_MEMBER_LINKS: usize = 16;

/// A byte range of a host file that holds one blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobLoc {
    /// The host file.
    pub file: PathBuf,
    /// Where the blob starts in it.
    pub offset: u64,
    /// The blob's length.
    pub len: u64,
}

impl BlobLoc {
    /// Reads the first bytes of the blob (for magic-number sniffing).
    pub fn head(&self, n: usize) -> Result<Vec<u8>> {
        let f = File::open(&self.file).ctx("open", &self.file)?;
        let mut buf = vec![0u8; n.min(self.len as usize)];
        let mut got = 0;
        while got < buf.len() {
            let k = f
                .read_at(&mut buf[got..], self.offset + got as u64)
                .ctx("read", &self.file)?;
            if k == 0 {
                break;
            }
            got += k;
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// A reader over exactly the blob's bytes.
    pub fn reader(&self) -> Result<io::Take<BufReader<File>>> {
        let mut f = File::open(&self.file).ctx("open", &self.file)?;
        f.seek(SeekFrom::Start(self.offset))
            .ctx("seek", &self.file)?;
        Ok(BufReader::with_capacity(1 << 20, f).take(self.len))
    }

    /// Like [`BlobLoc::reader`], with `wrap` around the file beneath the buffer, so a wrapper
    /// (a progress counter) sees one call per megabyte rather than one per tar header.
    pub fn reader_wrapped<R: Read>(
        &self,
        wrap: impl FnOnce(File) -> R,
    ) -> Result<BufReader<io::Take<R>>> {
        let mut f = File::open(&self.file).ctx("open", &self.file)?;
        f.seek(SeekFrom::Start(self.offset))
            .ctx("seek", &self.file)?;
        Ok(BufReader::with_capacity(1 << 20, wrap(f).take(self.len)))
    }
}

/// One member of a tar archive.
#[derive(Clone, Debug)]
struct Member {
    offset: u64,
    size: u64,
    /// Target of a symlink or hard-link member, already made relative to the archive root.
    link: Option<String>,
}

/// A directory or an (uncompressed view of an) archive holding an image.
#[derive(Debug)]
pub struct Container {
    /// The path the user gave; used in every error message.
    pub path: PathBuf,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Dir,
    Tar {
        file: PathBuf,
        members: HashMap<String, Member>,
    },
}

/// Compression of a stream, by magic number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain bytes.
    None,
    /// gzip (`1f 8b`).
    Gzip,
    /// zstd (`28 b5 2f fd`).
    Zstd,
}

impl Compression {
    /// The compression a layer media type declares (OCI, Docker, non-distributable), or
    /// `None` for a type that is not a layer tar. eStargz and zstd:chunked layers are gzip
    /// and zstd by type, told apart by their descriptors' annotations.
    pub fn from_media_type(mt: &str) -> Option<Compression> {
        let oci = mt
            .strip_prefix("application/vnd.oci.image.layer.v1.")
            .or_else(|| mt.strip_prefix("application/vnd.oci.image.layer.nondistributable.v1."));
        let docker = mt
            .strip_prefix("application/vnd.docker.image.rootfs.diff.")
            .or_else(|| mt.strip_prefix("application/vnd.docker.image.rootfs.foreign.diff."));
        match (oci, docker) {
            (Some("tar"), _) | (_, Some("tar")) => Some(Compression::None),
            (Some("tar+gzip"), _) | (_, Some("tar.gzip")) => Some(Compression::Gzip),
            (Some("tar+zstd"), _) | (_, Some("tar.zstd")) => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Recognises gzip and zstd magic numbers.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Wraps a reader in the matching decoder.
    pub fn decoder<'a, R: Read + 'a>(self, r: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(r),
            // MultiGzDecoder: concatenated gzip members are one valid stream (pigz, some tools).
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(r)?),
        })
    }
}

impl Container {
    /// Opens a directory or archive; a compressed archive is decompressed once into the cache.
    pub fn open(path: &Path, cache: &Cache) -> Result<Container> {
        let meta = std::fs::metadata(path).ctx("open", path)?;
        if meta.is_dir() {
            return Ok(Container {
                path: path.to_path_buf(),
                kind: Kind::Dir,
            });
        }
        let head = BlobLoc {
            file: path.to_path_buf(),
            offset: 0,
            len: meta.len(),
        }
        .head(8)?;
        let file = match Compression::sniff(&head) {
            Compression::None => path.to_path_buf(),
            c => decompress_archive(path, &meta, c, cache)?,
        };
        let members = scan_tar(&file, path)?;
        Ok(Container {
            path: path.to_path_buf(),
            kind: Kind::Tar { file, members },
        })
    }

    /// True for a directory (OCI layout).
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir)
    }

    /// Whether a member or file exists.
    pub fn exists(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// Locates a member (following member symlinks) or a file of the directory.
    pub fn find(&self, name: &str) -> Option<BlobLoc> {
        let name = clean_member_name(name)?;
        match &self.kind {
            Kind::Dir => {
                let p = self.path.join(&name);
                // A layout's blobs must be files inside it: no symlinks out of the layout.
                let meta = std::fs::symlink_metadata(&p).ok()?;
                meta.is_file().then_some(BlobLoc {
                    file: p,
                    offset: 0,
                    len: meta.len(),
                })
            }
            Kind::Tar { file, members } => {
                let mut cur = name;
                for _ in 0..MAX_MEMBER_LINKS {
                    let m = members.get(&cur)?;
                    match &m.link {
                        Some(t) => cur = t.clone(),
                        None => {
                            return Some(BlobLoc {
                                file: file.clone(),
                                offset: m.offset,
                                len: m.size,
                            });
                        }
                    }
                }
                None
            }
        }
    }

    /// Like [`Container::find`], but a missing member is an error naming it.
    pub fn get(&self, name: &str) -> Result<BlobLoc> {
        self.find(name).ok_or_else(|| Error::MissingBlob {
            path: self.path.clone(),
            digest: name.to_string(),
        })
    }

    /// Reads a small member (manifest, index, config) whole.
    pub fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let loc = self.get(name)?;
        if loc.len > MAX_METADATA_SIZE {
            return Err(Error::bad_image(
                &self.path,
                format!("{name}: too large ({} bytes)", loc.len),
            ));
        }
        let mut buf = Vec::with_capacity(loc.len as usize);
        loc.reader()?
            .read_to_end(&mut buf)
            .ctx("read", &self.path)?;
        if (buf.len() as u64) != loc.len {
            return Err(Error::bad_image(&self.path, format!("{name}: truncated")));
        }
        Ok(buf)
    }

    /// A stable fingerprint of the host file(s) behind a blob, for cache keys: path, device,
    /// inode, size and mtime, so a replaced or rewritten archive never matches an old entry.
    pub fn fingerprint(loc: &BlobLoc) -> Result<String> {
        let m = std::fs::metadata(&loc.file).ctx("stat", &loc.file)?;
        let canon = std::fs::canonicalize(&loc.file).ctx("resolve", &loc.file)?;
        Ok(format!(
            "{}\0{}\0{}\0{}\0{}.{}\0{}\0{}",
            canon.display(),
            m.dev(),
            m.ino(),
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            loc.offset,
            loc.len
        ))
    }
}

/// Normalises a member name the way tar writers vary it (`./x`, `/x`, `a//b`); `None` for a
/// name that climbs out with `..`.
fn clean_member_name(name: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

/// Lists the members of a tar with their data offsets, reading only headers (seeking over
/// data), so a large archive is scanned in milliseconds. `image` is the archive as the user
/// named it (`file` may be its decompressed copy in the cache).
fn scan_tar(file: &Path, image: &Path) -> Result<HashMap<String, Member>> {
    let f = File::open(file).ctx("open", file)?;
    let len = f.metadata().ctx("stat", file)?.len();
    let mut walker = TarWalker::new(SeekInput(BufReader::new(f)));
    let mut members = HashMap::new();
    let mut count = 0usize;
    while let Some(entry) = walker
        .next_entry()
        .map_err(|e| Error::bad_image(image, e.to_string()))?
    {
        count += 1;
        let raw = String::from_utf8_lossy(&entry.path).into_owned();
        let Some(name) = clean_member_name(&raw) else {
            continue;
        };
        let (offset, size) = (entry.data_offset, entry.size);
        if offset.saturating_add(size) > len {
            return Err(Error::bad_image(
                image,
                format!(
                    "the archive is truncated (in member {})",
                    show(name.as_bytes())
                ),
            ));
        }
        let link = match entry.kind {
            TarKind::Symlink | TarKind::HardLink if !entry.link.is_empty() => {
                let t = String::from_utf8_lossy(&entry.link).into_owned();
                // Symlink targets are relative to the member's directory; hard-link targets
                // are relative to the archive root.
                let joined = if entry.kind == TarKind::Symlink && !t.starts_with('/') {
                    match name.rsplit_once('/') {
                        Some((dir, _)) => format!("{dir}/{t}"),
                        None => t,
                    }
                } else {
                    t
                };
                clean_member_name(&joined)
            }
            _ => None,
        };
        members.insert(name, Member { offset, size, link });
    }
    if count == 0 {
        return Err(Error::bad_image(
            image,
            "not a tar archive (it holds no members)",
        ));
    }
    Ok(members)
}

/// Decompresses a whole-archive `.tar.gz`/`.tar.zst` into the cache once, keyed by the
/// archive's fingerprint; later opens reuse it.
fn decompress_archive(
    path: &Path,
    meta: &std::fs::Metadata,
    c: Compression,
    cache: &Cache,
) -> Result<PathBuf> {
    let loc = BlobLoc {
        file: path.to_path_buf(),
        offset: 0,
        len: meta.len(),
    };
    let key = Container::fingerprint(&loc)?;
    let dest = cache.archive_path(&key);
    // A stamp of the decompressed file (size, inode, mtime) is kept beside it, so a cache
    // entry damaged or rewritten since is decompressed again instead of being trusted.
    let stamp_path = dest.with_extension("stamp");
    let stamp_of = |p: &Path| {
        let m = std::fs::metadata(p).ok()?;
        Some(format!("{} {} {}.{}", m.len(), m.ino(), m.mtime(), m.mtime_nsec()).into_bytes())
    };
    let stamp_ok = |s: Vec<u8>| std::fs::read(&stamp_path).is_ok_and(|have| have == s);
    if dest.is_file() && stamp_of(&dest).is_some_and(stamp_ok) {
        return Ok(dest);
    }
    cache.write_atomic(&dest, |out| {
        let mut dec = c.decoder(loc.reader()?).ctx("decompress", path)?;
        io::copy(&mut dec, out)
            .map_err(|e| Error::bad_image(path, format!("corrupt {c:?} stream: {e}")))?;
        Ok(())
    })?;
    let stamp = stamp_of(&dest).unwrap_or_default();
    cache.write_atomic(&stamp_path, |w| {
        io::Write::write_all(w, &stamp).ctx("write", &stamp_path)
    })?;
    Ok(dest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_from_media_type_table() {
        use Compression::*;
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+gzip", Some(Gzip)),
            ("application/vnd.oci.image.layer.v1.tar+zstd", Some(Zstd)),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Some(Gzip),
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Some(Gzip),
            ),
            ("application/vnd.docker.image.rootfs.diff.tar", Some(None)),
            ("application/vnd.oci.image.layer.v1.tar+bzip2", Option::None),
            ("application/vnd.oci.image.config.v1+json", Option::None),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::from_media_type(mt), want, "{mt}");
        }
    }

    #[test]
    fn member_names_are_normalised() {
        let cases = [
            ("./manifest.json", Some("manifest.json")),
            ("/blobs//sha256/ab", Some("blobs/sha256/ab")),
            ("a/../b", Some("b")),
            ("../x", None),
            ("abc/./layer.tar", Some("abc/layer.tar")),
        ];
        for (input, want) in cases {
            assert_eq!(clean_member_name(input).as_deref(), want, "{input}");
        }
    }

    #[test]
    fn compression_sniff() {
        assert_eq!(Compression::sniff(&[0x1f, 0x8b, 8]), Compression::Gzip);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd
        );
        assert_eq!(Compression::sniff(b"usta"), Compression::None);
        assert_eq!(Compression::sniff(&[]), Compression::None);
    }
}
