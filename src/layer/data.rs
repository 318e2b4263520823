//! Where a prepared layer's bytes are read from: the uncompressed tar, addressed by the
//! offsets its index records (`EntryKind::File { offset, .. }`, relative to the tar's start).
//!
//! A local layer's tar lies in a host file (an archive member, a blob file, or a decompressed
//! copy in the cache). Other sources (a registry blob fetched on demand, an engine's store)
//! implement [`LayerBytes`] their own way; the views above only ever see [`LayerData`], so a
//! new source changes nothing there. Reads take no lock: a host file is opened once and read
//! with `pread`.
//! Dependencies: image::container (BlobLoc).

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

use crate::image::container::BlobLoc;

/// Bytes of one layer's uncompressed tar, read at offsets from the tar's start.
pub trait LayerBytes: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many (0 only at the end).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// The host file range holding the whole tar, where there is one, so that copies can be
    /// done by the kernel (`copy_file_range`, a reflink where the filesystem can).
    fn host_range(&self) -> Option<&BlobLoc> {
        None
    }

    /// A host file that holds exactly the `len` bytes at `offset` and nothing else, where the
    /// source keeps one (an engine's extracted layer), so the kernel can read it directly.
    fn own_file(&self, _offset: u64, _len: u64) -> Option<io::Result<File>> {
        None
    }
}

/// A shared handle on a layer's bytes.
#[derive(Clone, Debug)]
pub struct LayerData(Arc<dyn LayerBytes>);

impl LayerData {
    /// Bytes from any source.
    pub fn new(bytes: impl LayerBytes + 'static) -> LayerData {
        LayerData(Arc::new(bytes))
    }

    /// Bytes from a source that is shared with something else (a background fill).
    pub fn shared(bytes: Arc<dyn LayerBytes>) -> LayerData {
        LayerData(bytes)
    }

    /// The tar in a range of a host file.
    pub fn host(loc: BlobLoc) -> LayerData {
        LayerData::new(HostFile {
            loc,
            file: OnceLock::new(),
        })
    }

    /// See [`LayerBytes::host_range`].
    pub fn host_range(&self) -> Option<&BlobLoc> {
        self.0.host_range()
    }

    /// See [`LayerBytes::own_file`].
    pub fn own_file(&self, offset: u64, len: u64) -> Option<io::Result<File>> {
        self.0.own_file(offset, len)
    }

    /// Fills `buf` from `offset`; a source shorter than its index says is an error.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.0.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "layer data is shorter than its index says",
                    ));
                }
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A reader over the `len` bytes at `offset`.
    pub fn reader(&self, offset: u64, len: u64) -> RangeReader {
        RangeReader {
            data: self.clone(),
            pos: offset,
            end: offset.saturating_add(len),
        }
    }

    /// Copies the `len` bytes at `offset` into `out` (at its current position).
    pub fn copy_to(&self, offset: u64, len: u64, out: &mut File) -> io::Result<()> {
        let n = match self.host_range() {
            Some(loc) => {
                use std::io::{Seek, SeekFrom};
                let mut src = File::open(&loc.file)?;
                src.seek(SeekFrom::Start(loc.offset + offset))?;
                let inside = len.min(loc.len.saturating_sub(offset));
                // std::io::copy uses copy_file_range between two files.
                io::copy(&mut src.take(inside), out)?
            }
            None => io::copy(&mut self.reader(offset, len), out)?,
        };
        if n != len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }
}

/// Reads a range of a layer's bytes in order.
#[derive(Debug)]
pub struct RangeReader {
    data: LayerData,
    pos: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.data.0.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A tar lying in a host file: opened on first read, then kept open for the mount's life.
#[derive(Debug)]
struct HostFile {
    loc: BlobLoc,
    file: OnceLock<File>,
}

impl HostFile {
    fn file(&self) -> io::Result<&File> {
        if let Some(f) = self.file.get() {
            return Ok(f);
        }
        // A racing opener may win; its descriptor is then used and this one dropped.
        let _ = self.file.set(File::open(&self.loc.file)?);
        self.file
            .get()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
    }
}

impl LayerBytes for HostFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let left = self.loc.len.saturating_sub(offset);
        let n = left.min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.file()?
            .read_at(&mut buf[..n], self.loc.offset + offset)
    }

    fn host_range(&self) -> Option<&BlobLoc> {
        Some(&self.loc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_file_reads_within_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"xxhello worldyy").unwrap();
        let d = LayerData::host(BlobLoc {
            file: p,
            offset: 2,
            len: 11,
        });
        let mut buf = [0u8; 5];
        d.read_exact_at(&mut buf, 6).unwrap();
        assert_eq!(&buf, b"world");
        // Past the range is the end, even though the host file goes on.
        let mut long = [0u8; 6];
        let e = d.read_exact_at(&mut long, 6).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut s = String::new();
        d.reader(0, 5).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
        let mut out = tempfile::tempfile().unwrap();
        d.copy_to(6, 5, &mut out).unwrap();
        assert_eq!(out.metadata().unwrap().len(), 5);
        assert!(d.copy_to(6, 6, &mut tempfile::tempfile().unwrap()).is_err());
    }
}
