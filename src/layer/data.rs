//! Where a prepared layer's bytes are read from: the uncompressed tar, addressed by the
//! offsets its index records (`EntryKind::File { offset, .. }`, relative to the tar's start).
//!
//! A local layer's tar lies in a host file (an archive member, a blob file, or a decompressed
//! copy in the cache). Other sources (a registry blob fetched on demand, an engine's store)
//! implement [`LayerBytes`] their own way; the views above only ever see [`LayerData`], so a
//! new source changes nothing there. Reads take no lock: a host file is opened once and read
//! with `pread`.
//! Dependencies: image::container (BlobLoc), sys (copy_file_range).

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

    /// Copies the `len` bytes at `offset` into `out` (at its current position, which it
    /// leaves after them). The kernel moves the bytes where the source is a host file
    /// (`copy_file_range`: a reflink where the filesystem can, else an in-kernel copy), else
    /// they go through a buffer. Writeback of each step starts as the next one is copied, so
    /// a flush after it (every caller makes one) finds little left to write, and the copy
    /// and the disk work at once instead of one after the other. A big copy's blocks are
    /// allocated before it starts.
    pub fn copy_to(&self, offset: u64, len: u64, out: &mut File) -> io::Result<()> {
        use std::io::{Seek, SeekFrom};
        let pos = out.stream_position()?;
        let host = match self.host_range() {
            Some(loc) => Some((File::open(&loc.file)?, loc.offset + offset)),
            None => None,
        };
        // Past the host range is another member of the archive: never copied.
        let len_in = match self.host_range() {
            Some(loc) => len.min(loc.len.saturating_sub(offset)),
            None => len,
        };
        // One allocation for the whole copy up front: a file the writeback below allocates
        // 8 MiB at a time copies a quarter slower. Only speed depends on it.
        if len_in >= COPY_STEP {
            let _ = crate::sys::fallocate(out, libc::FALLOC_FL_KEEP_SIZE, pos, len_in);
        }
        let mut kernel = host.is_some();
        let mut buf = Vec::new();
        let mut done = 0u64;
        while done < len_in {
            let step = (len_in - done).min(COPY_STEP) as usize;
            let n = match &host {
                Some((src, base)) if kernel => {
                    match crate::sys::copy_file_range(src, base + done, out, pos + done, step) {
                        Ok(n) => n,
                        // Not between these two files (another filesystem type, say): the
                        // buffer does it.
                        Err(e) if done == 0 && no_kernel_copy(&e) => {
                            kernel = false;
                            continue;
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    }
                }
                _ => {
                    buf.resize(step, 0);
                    let k = match self.0.read_at(&mut buf[..step], offset + done) {
                        Ok(k) => k,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    out.write_all_at(&buf[..k], pos + done)?;
                    k
                }
            };
            if n == 0 {
                break;
            }
            // Only a head start for the flush: a refusal changes nothing but speed.
            let _ = crate::sys::start_writeback(out, pos + done, n as u64);
            done += n as u64;
        }
        out.seek(SeekFrom::Start(pos + done))?;
        if done != len {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        Ok(())
    }
}

/// Bytes per step of [`LayerData::copy_to`]: big enough that the calls cost nothing next to
/// the bytes, small enough that writeback starts early.
const COPY_STEP: u64 = 8 << 20;

/// Whether `copy_file_range` refused this pair of files (rather than failing to read or
/// write), so a copy through a buffer may do it.
fn no_kernel_copy(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
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

    /// A source with no host file, read through a buffer.
    #[derive(Debug)]
    struct Mem(Vec<u8>);

    impl LayerBytes for Mem {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let rest = self.0.get(offset as usize..).unwrap_or_default();
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            Ok(n)
        }
    }

    #[test]
    fn copy_to_writes_at_the_position_in_steps() {
        use std::io::{Seek, Write};
        let bytes: Vec<u8> = (0..COPY_STEP + 5000).map(|i| (i % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, &bytes).unwrap();
        let host = LayerData::host(BlobLoc {
            file: p,
            offset: 0,
            len: bytes.len() as u64,
        });
        let mem = LayerData::new(Mem(bytes.clone()));
        for d in [host, mem] {
            let mut out = tempfile::tempfile().unwrap();
            out.write_all(b"head").unwrap();
            let len = bytes.len() as u64 - 7;
            d.copy_to(7, len, &mut out).unwrap();
            assert_eq!(out.stream_position().unwrap(), 4 + len);
            let mut got = Vec::new();
            out.rewind().unwrap();
            out.read_to_end(&mut got).unwrap();
            assert_eq!(&got[..4], b"head");
            assert!(got[4..] == bytes[7..], "{d:?}: wrong bytes");
            // Asking past the source's end copies what there is, then fails.
            let mut short = tempfile::tempfile().unwrap();
            let e = d.copy_to(7, len + 1, &mut short).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        }
    }
}
