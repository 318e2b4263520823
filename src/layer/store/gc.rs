//! Keeping the cache in bounds: what it holds ([`scan`]), eviction of the least recently
//! used entries down to a size ([`trim`]: blob data of every kind first, records and indexes
//! last, nothing a live process uses), removal of leftovers ([`clean`]) and of one image's
//! layers ([`prune`]).
//!
//! "Last used" is the access time, which rimgfs sets itself when it opens an entry (so
//! `noatime` mounts do not matter); an entry's modification time stays its own, since the
//! index of a decompressed layer is tied to it.
//! Dependencies: store (paths, locks, live), cache, image::digest.

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{BlobPaths, live, lock_file};
use crate::image::digest::Digest;

/// Temporary files younger than this may belong to a write in progress.
const TMP_GRACE: Duration = Duration::from_secs(3600);

/// What a cache entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A layer blob in the blob store (`blobs/`), with its range record.
    Blob,
    /// A decompressed layer tar (`layers/`).
    Layer,
    /// A decompressed whole archive (`archives/`).
    Archive,
    /// Files copied out for kernel passthrough (`passthrough/<layer>/`).
    Passthrough,
    /// A lazily read layer's record (`lazy/`).
    Record,
    /// A layer index (`index/`).
    Index,
    /// The merged tree of a layer stack (`trees/`), derived from the indexes.
    Tree,
    /// Anything else (verification stamps, the image source's own files).
    Other,
}

impl Kind {
    /// Data is evicted before records and indexes.
    pub fn is_data(self) -> bool {
        matches!(
            self,
            Kind::Blob | Kind::Layer | Kind::Archive | Kind::Passthrough
        )
    }

    /// A short name for listings.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Blob => "blob",
            Kind::Layer => "layer",
            Kind::Archive => "archive",
            Kind::Passthrough => "passthrough",
            Kind::Record => "record",
            Kind::Index => "index",
            Kind::Tree => "tree",
            Kind::Other => "other",
        }
    }
}

/// One entry of the cache: the files that go together.
#[derive(Clone, Debug)]
pub struct Entry {
    /// What it is.
    pub kind: Kind,
    /// Its name (a digest, a directory).
    pub name: String,
    /// Its files (or one directory).
    pub files: Vec<PathBuf>,
    /// Bytes allocated on disk.
    pub bytes: u64,
    /// When rimgfs last used it.
    pub last_used: SystemTime,
    /// A live process uses it.
    pub in_use: bool,
}

/// Bytes freed by an operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Freed {
    /// Entries removed.
    pub entries: usize,
    /// Bytes they took.
    pub bytes: u64,
}

fn allocated(p: &Path) -> u64 {
    let Ok(m) = std::fs::symlink_metadata(p) else {
        return 0;
    };
    if m.is_dir() {
        return std::fs::read_dir(p)
            .map(|rd| rd.flatten().map(|e| allocated(&e.path())).sum())
            .unwrap_or(0);
    }
    m.blocks() * 512
}

fn atime(p: &Path) -> SystemTime {
    std::fs::metadata(p)
        .and_then(|m| m.accessed())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_in(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn is_tmp(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(".tmp."))
}

/// Everything the cache at `root` holds.
pub fn scan(root: &Path) -> Vec<Entry> {
    let used = live::in_use(root);
    let mut out = Vec::new();
    let mut entry = |kind, name: String, files: Vec<PathBuf>| {
        let bytes = files.iter().map(|f| allocated(f)).sum();
        let last_used = files
            .iter()
            .map(|f| atime(f))
            .max()
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let in_use = files.iter().any(|f| used.contains(f));
        out.push(Entry {
            kind,
            name,
            files,
            bytes,
            last_used,
            in_use,
        });
    };
    // Blob store: group .data/.ranges/.lock by digest.
    for f in files_in(&root.join("blobs")) {
        if is_tmp(&f) || f.extension().is_none_or(|e| e != "data") {
            continue;
        }
        let (Some(hex), Some(alg)) = (
            f.file_stem().map(|s| s.to_string_lossy().into_owned()),
            f.parent()
                .and_then(|p| p.file_name())
                .map(|s| s.to_string_lossy().into_owned()),
        ) else {
            continue;
        };
        let p = BlobPaths {
            data: f.clone(),
            ranges: f.with_extension("ranges"),
            lock: f.with_extension("lock"),
        };
        entry(Kind::Blob, format!("{alg}:{hex}"), vec![p.data, p.ranges]);
    }
    for (dir, kind) in [
        ("layers", Kind::Layer),
        ("archives", Kind::Archive),
        ("lazy", Kind::Record),
        ("index", Kind::Index),
        ("trees", Kind::Tree),
    ] {
        for f in files_in(&root.join(dir)) {
            if is_tmp(&f) || f.extension().is_some_and(|e| e == "lock") {
                continue;
            }
            let name = f
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            entry(kind, name, vec![f]);
        }
    }
    if let Ok(rd) = std::fs::read_dir(root.join("passthrough")) {
        for e in rd.flatten() {
            entry(
                Kind::Passthrough,
                e.file_name().to_string_lossy().into_owned(),
                vec![e.path()],
            );
        }
    }
    let known = [
        "blobs",
        "layers",
        "archives",
        "lazy",
        "index",
        "trees",
        "passthrough",
        "live",
        "ephemeral",
    ];
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if !known.contains(&n.as_str()) {
                entry(Kind::Other, n, vec![e.path()]);
            }
        }
    }
    out
}

/// Removes an entry's files; a blob only under its lock, so no process is recording it.
fn remove(e: &Entry) -> bool {
    let _guard = if e.kind == Kind::Blob {
        match e
            .files
            .first()
            .map(|f| lock_file(&f.with_extension("lock"), false))
        {
            Some(Ok(Some(l))) => Some(l),
            _ => return false,
        }
    } else {
        None
    };
    let mut ok = true;
    for f in &e.files {
        let r = if f.is_dir() {
            std::fs::remove_dir_all(f)
        } else {
            std::fs::remove_file(f)
        };
        if let Err(err) = r {
            if err.kind() != std::io::ErrorKind::NotFound {
                log::warn!("removing {}: {err}", f.display());
                ok = false;
            }
        }
    }
    ok
}

/// Bytes the cache takes on disk.
pub fn usage(root: &Path) -> u64 {
    allocated(root)
}

/// Evicts the least recently used entries until the cache takes at most `max` bytes: data
/// (blobs, decompressed layers, archives, passthrough copies) first, then records and
/// indexes; never an entry a live process uses.
pub fn trim(root: &Path, max: u64) -> Freed {
    let mut total = usage(root);
    let mut freed = Freed::default();
    if total <= max {
        return freed;
    }
    let mut entries: Vec<Entry> = scan(root)
        .into_iter()
        .filter(|e| !e.in_use && e.kind != Kind::Other)
        .collect();
    entries.sort_by_key(|e| (!e.kind.is_data(), e.last_used));
    for e in entries {
        if total <= max {
            break;
        }
        if remove(&e) {
            log::info!("evicted {} {} ({} bytes)", e.kind.name(), e.name, e.bytes);
            total = total.saturating_sub(e.bytes);
            freed.entries += 1;
            freed.bytes += e.bytes;
        }
    }
    freed
}

/// Removes leftovers: temporary files of interrupted writes, blob records without data,
/// lock files of entries that are gone.
pub fn clean(root: &Path) -> Freed {
    let mut freed = Freed::default();
    let now = SystemTime::now();
    for f in files_in(root) {
        let old = std::fs::metadata(&f)
            .and_then(|m| m.modified())
            .is_ok_and(|t| now.duration_since(t).unwrap_or_default() > TMP_GRACE);
        let orphan = match f.extension().and_then(|e| e.to_str()) {
            Some("ranges") => !f.with_extension("data").exists(),
            Some("lock") if f.starts_with(root.join("blobs")) => !f.with_extension("data").exists(),
            Some("lock") if f.starts_with(root.join("lazy")) => !f.with_extension("lzx").exists(),
            _ => false,
        };
        if (is_tmp(&f) && old) || orphan {
            let bytes = allocated(&f);
            if std::fs::remove_file(&f).is_ok() {
                freed.entries += 1;
                freed.bytes += bytes;
            }
        }
    }
    // Lists of dead processes go as a side effect.
    let _ = live::in_use(root);
    freed
}

/// What [`prune`] did.
#[derive(Clone, Debug, Default)]
pub struct Pruned {
    /// What was removed.
    pub freed: Freed,
    /// Entries kept because a live process uses them.
    pub kept: Vec<String>,
}

/// Removes the cache entries of layers with these blob digests and diff_ids.
pub fn prune(root: &Path, blobs: &[Digest], diff_ids: &[Digest]) -> Pruned {
    let blob_names: HashSet<String> = blobs.iter().map(|d| d.to_string()).collect();
    let hexes: HashSet<&str> = blobs.iter().chain(diff_ids).map(Digest::hex).collect();
    let mut out = Pruned::default();
    for e in scan(root) {
        let mine = match e.kind {
            Kind::Blob => blob_names.contains(&e.name),
            Kind::Layer | Kind::Record | Kind::Index | Kind::Passthrough => {
                hexes.contains(e.name.as_str())
            }
            // Named by a hash of the indexes they merge, which may include a pruned one:
            // all go, and any still wanted is rebuilt from its indexes on its next mount.
            Kind::Tree => !hexes.is_empty(),
            _ => false,
        };
        if !mine {
            continue;
        }
        if e.in_use {
            out.kept.push(format!("{} {}", e.kind.name(), e.name));
        } else if remove(&e) {
            out.freed.entries += 1;
            out.freed.bytes += e.bytes;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    fn touch(p: &Path, bytes: usize, atime_secs: i64) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, vec![1u8; bytes]).unwrap();
        let f = File::open(p).unwrap();
        let t = nix::sys::time::TimeSpec::new(atime_secs, 0);
        nix::sys::stat::futimens(&f, &t, &nix::sys::time::TimeSpec::UTIME_OMIT).unwrap();
    }

    #[test]
    fn trim_evicts_old_data_first_and_indexes_last() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let hex = |c: char| c.to_string().repeat(64);
        touch(
            &r.join(format!("blobs/sha256/{}.data", hex('a'))),
            200_000,
            1000,
        );
        touch(
            &r.join(format!("blobs/sha256/{}.data", hex('b'))),
            200_000,
            3000,
        );
        touch(
            &r.join(format!("layers/sha256/{}.tar", hex('c'))),
            200_000,
            2000,
        );
        touch(
            &r.join(format!("index/sha256/{}.idx", hex('c'))),
            50_000,
            10,
        );
        let used = r.join(format!("blobs/sha256/{}.data", hex('d')));
        touch(&used, 200_000, 1);
        let _held = live::register(r, std::slice::from_ref(&used)).unwrap();
        let before = usage(r);
        // Room for about two of the big files: the oldest data goes, not the index, not
        // what is in use.
        let freed = trim(r, before - 350_000);
        assert_eq!(freed.entries, 2, "{freed:?}");
        assert!(!r.join(format!("blobs/sha256/{}.data", hex('a'))).exists());
        assert!(!r.join(format!("layers/sha256/{}.tar", hex('c'))).exists());
        assert!(r.join(format!("blobs/sha256/{}.data", hex('b'))).exists());
        assert!(r.join(format!("index/sha256/{}.idx", hex('c'))).exists());
        assert!(used.exists());
        // Down to nothing: data, then the index; the live entry stays.
        trim(r, 0);
        assert!(!r.join(format!("index/sha256/{}.idx", hex('c'))).exists());
        assert!(used.exists());
        let p = prune(
            r,
            &[Digest::parse(&format!("sha256:{}", hex('d'))).unwrap()],
            &[],
        );
        assert_eq!((p.freed.entries, p.kept.len()), (0, 1));
    }

    #[test]
    fn clean_removes_orphans_only() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        touch(&r.join("blobs/sha256/x.ranges"), 10, 0);
        touch(&r.join("blobs/sha256/y.data"), 10, 0);
        touch(&r.join("blobs/sha256/y.ranges"), 10, 0);
        touch(&r.join("layers/sha256/.tmp.1.z.tar"), 10, 0);
        let f = clean(r);
        assert_eq!(f.entries, 1);
        assert!(r.join("blobs/sha256/y.ranges").exists());
        // A young temporary file may be a write in progress.
        assert!(r.join("layers/sha256/.tmp.1.z.tar").exists());
    }
}
