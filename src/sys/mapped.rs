//! Read-only memory maps of files, 8-byte-aligned byte buffers, and views of their bytes as
//! slices of plain records (the merged tree's flat encoding, used in place).
//! Dependencies: libc.

use std::fs::File;
use std::io;
use std::ops::Deref;

/// A whole file mapped read-only and private. Its pages are read on first touch and count
/// towards the process's memory only once touched. The file must not shrink while mapped
/// (touching a page past its end raises SIGBUS): map only files that are replaced by rename,
/// never rewritten in place.
#[derive(Debug)]
pub struct Mapped {
    ptr: *mut libc::c_void,
    len: usize,
}

// SAFETY: the mapping is read-only and never changes address while it lives, so shared
// references to its bytes may cross threads like any `&[u8]`.
unsafe impl Send for Mapped {}
// SAFETY: as above; nothing in it is mutable.
unsafe impl Sync for Mapped {}

impl Mapped {
    /// Maps all of `f` (an empty file maps to an empty slice, without a mapping).
    pub fn file(f: &File) -> io::Result<Mapped> {
        use std::os::fd::AsRawFd;
        let len = usize::try_from(f.metadata()?.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        if len == 0 {
            return Ok(Mapped {
                ptr: std::ptr::null_mut(),
                len: 0,
            });
        }
        // SAFETY: a fresh mapping chosen by the kernel (null hint) of a valid descriptor
        // borrowed from `f`; the result is checked against MAP_FAILED before any use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapped { ptr, len })
    }
}

impl Deref for Mapped {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes owned by `self`, unmapped
        // only on drop, which the borrow of `self` outlives.
        unsafe { std::slice::from_raw_parts(self.ptr.cast::<u8>(), self.len) }
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping made in `file`, unmapped once.
            unsafe { libc::munmap(self.ptr, self.len) };
        }
    }
}

/// Bytes in memory that start on an 8-byte boundary (so records can be viewed in place, as
/// in a mapped file, which starts on a page).
#[derive(Clone, Debug, Default)]
pub struct Aligned {
    words: Vec<u64>,
    len: usize,
}

impl Aligned {
    /// A copy of `bytes`.
    pub fn copy_of(bytes: &[u8]) -> Aligned {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            *w = u64::from_ne_bytes(b);
        }
        Aligned {
            words,
            len: bytes.len(),
        }
    }
}

impl Deref for Aligned {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `words` holds at least `len` initialised bytes (`len.div_ceil(8)` words),
        // and u8 has no alignment or validity requirement.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr().cast::<u8>(), self.len) }
    }
}

/// Records that may be read from any bytes: `repr(C)`, no padding, every bit pattern valid.
///
/// # Safety
/// Implement only for types meeting exactly that; the impls are all in this module.
pub unsafe trait Plain: Sized {}

// SAFETY: `repr(C)` of three `u32`s (NodeId is a transparent u32): 12 bytes, no padding.
unsafe impl Plain for crate::tree::node::DirEntry {}
// SAFETY: `repr(C)`, fields laid out without padding (checked by a test in tree::flat),
// integers only.
unsafe impl Plain for crate::tree::node::NodeRec {}

/// `bytes` as a slice of `T`; `None` unless `bytes` starts aligned for `T` and holds a whole
/// number of them.
pub fn records<T: Plain>(bytes: &[u8]) -> Option<&[T]> {
    let size = std::mem::size_of::<T>();
    if size == 0
        || bytes.len() % size != 0
        || (bytes.as_ptr() as usize) % std::mem::align_of::<T>() != 0
    {
        return None;
    }
    // SAFETY: aligned for T, `len / size` whole records inside `bytes`, and `T: Plain` makes
    // every byte pattern a valid T; the result borrows `bytes`.
    Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_copies_and_records_refuse_misalignment() {
        let a = Aligned::copy_of(&[1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 9]);
        assert_eq!(a.len(), 13);
        assert_eq!((a.as_ptr() as usize) % 8, 0);
        let e: &[crate::tree::node::DirEntry] = records(&a[..12]).unwrap();
        assert_eq!(e.len(), 1);
        assert!(records::<crate::tree::node::DirEntry>(&a[..13]).is_none());
        assert!(records::<crate::tree::node::DirEntry>(&a[1..13]).is_none());
    }

    #[test]
    fn maps_a_file() {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(b"mapped bytes").unwrap();
        let m = Mapped::file(&f).unwrap();
        assert_eq!(&m[..], b"mapped bytes");
        let empty = Mapped::file(&tempfile::tempfile().unwrap()).unwrap();
        assert!(empty.is_empty());
    }
}
