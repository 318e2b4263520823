//! Writing the image layout in one of the three output formats: an OCI layout directory
//! (`oci`) or a tar of it (`oci-archive`, and `docker-archive`, which only adds
//! `manifest.json`). Everything is built in a staging directory beside the output and renamed
//! into place once complete, so a failed commit leaves no partial image.
//! Dependencies: error.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use super::Format;
use super::manifest::{Blob, Source};
use crate::error::{Context, Error, Result};

/// Refuses to write an OCI layout directory over an existing path (a directory cannot be
/// replaced by a rename as an archive file is).
pub(super) fn check_target(format: Format, out: &Path) -> Result<()> {
    if format == Format::Oci && fs::symlink_metadata(out).is_ok() {
        return Err(Error::Io {
            op: "create",
            path: out.to_path_buf(),
            source: io::Error::from(io::ErrorKind::AlreadyExists),
        });
    }
    Ok(())
}

/// A directory beside the output for everything written before the final rename; removed
/// when dropped.
pub(super) struct Staging {
    pub(super) path: PathBuf,
}

impl Staging {
    pub(super) fn new(out: &Path) -> Result<Staging> {
        let name = out.file_name().ok_or_else(|| Error::Io {
            op: "create",
            path: out.to_path_buf(),
            source: io::Error::from(io::ErrorKind::InvalidInput),
        })?;
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".tmp.{}", std::process::id()));
        let path = parent.join(tmp);
        if fs::symlink_metadata(&path).is_ok() {
            let _ = fs::remove_dir_all(&path);
        }
        fs::create_dir(&path).ctx("create directory", &path)?;
        Ok(Staging { path })
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Writes `members` (layout path, blob) as `format` at `out`.
pub(super) fn write(
    format: Format,
    members: &[(String, Blob)],
    staging: &Staging,
    out: &Path,
) -> Result<()> {
    match format {
        Format::Oci => write_dir(members, &staging.path.join("layout"), out),
        Format::DockerArchive | Format::OciArchive => {
            write_tar(members, &staging.path.join("out.tar"), out)
        }
    }
}

/// The layout as a directory, built at `dir` and renamed to `out`.
fn write_dir(members: &[(String, Blob)], dir: &Path, out: &Path) -> Result<()> {
    for (name, blob) in members {
        let dest = dir.join(name);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).ctx("create directory", parent)?;
        }
        match &blob.source {
            // The new layer is a file in the staging directory already: move it.
            Source::File(p) => fs::rename(p, &dest).ctx("rename", &dest)?,
            _ => {
                let mut f = File::create(&dest).ctx("create", &dest)?;
                copy_blob(blob, &mut f)?;
                f.sync_all().ctx("sync", &dest)?;
            }
        }
    }
    fs::rename(dir, out).ctx("rename", out)
}

/// The layout as a tar, built at `tmp` and renamed to `out`.
fn write_tar(members: &[(String, Blob)], tmp: &Path, out: &Path) -> Result<()> {
    let f = File::create(tmp).ctx("create", tmp)?;
    let mut b = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, f));
    for dir in ["blobs/", "blobs/sha256/"] {
        append_member(&mut b, dir, tar::EntryType::Directory, 0, io::empty(), tmp)?;
    }
    for (name, blob) in members {
        let reader = blob.reader()?;
        let r = Exact::new(reader, blob.size, Path::new(name));
        append_member(&mut b, name, tar::EntryType::Regular, blob.size, r, tmp)?;
    }
    sync_buffered(b.into_inner().ctx("write", tmp)?, tmp)?;
    fs::rename(tmp, out).ctx("rename", out)
}

/// Flushes a buffered file and syncs it to disk, so that the rename that publishes it never
/// publishes less than was written.
pub(super) fn sync_buffered(w: io::BufWriter<File>, path: &Path) -> Result<()> {
    let f = w
        .into_inner()
        .map_err(|e| e.into_error())
        .ctx("write", path)?;
    f.sync_all().ctx("sync", path)
}

fn copy_blob(blob: &Blob, w: &mut dyn Write) -> Result<()> {
    let name = PathBuf::from(blob.digest.as_str());
    let mut r = Exact::new(blob.reader()?, blob.size, &name);
    io::copy(&mut r, w).ctx("copy", &name).map(drop)
}

/// Adds a member of the output archive.
fn append_member<W: Write>(
    b: &mut tar::Builder<W>,
    name: &str,
    ty: tar::EntryType,
    size: u64,
    data: impl Read,
    archive: &Path,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(ty);
    h.set_mode(if ty.is_dir() { 0o755 } else { 0o644 });
    h.set_size(size);
    h.set_mtime(0);
    h.set_path(name).ctx("write", archive)?;
    h.set_cksum();
    b.append(&h, data).ctx("write", archive)
}

/// A reader yielding exactly `len` bytes of `inner`, failing if it ends sooner (a file that
/// shrank while being archived would otherwise shift every later tar entry).
pub(super) struct Exact<'p, R> {
    inner: io::Take<R>,
    left: u64,
    what: &'p Path,
}

impl<'p, R: Read> Exact<'p, R> {
    pub(super) fn new(inner: R, len: u64, what: &'p Path) -> Self {
        Exact {
            inner: inner.take(len),
            left: len,
            what,
        }
    }
}

impl<R: Read> Read for Exact<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: shorter than expected", self.what.display()),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
