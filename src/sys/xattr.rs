//! Extended attributes: of an open file, and of an entry of a [`DirFd`] (never through a
//! symlink). Dependencies: libc.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::dirfd::{DirFd, one_component};
use super::{c_bytes, cvt, cvt_size};

/// Whether an open file or directory has the extended attribute `name` (errors count as no).
pub fn has_xattr(f: &impl AsRawFd, name: &[u8]) -> bool {
    let Ok(n) = CString::new(name) else {
        return false;
    };
    // SAFETY: valid descriptor and C string; a null buffer of size 0 asks for the size only.
    unsafe { libc::fgetxattr(f.as_raw_fd(), n.as_ptr(), std::ptr::null_mut(), 0) >= 0 }
}

/// Removes the extended attribute `name` of an open file, if it has it.
pub fn remove_xattr_fd(f: &File, name: &[u8]) -> io::Result<()> {
    let n = c_bytes(name)?;
    // SAFETY: valid descriptor and C string.
    match cvt(unsafe { libc::fremovexattr(f.as_raw_fd(), n.as_ptr()) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENODATA) => Ok(()),
        r => r.map(drop),
    }
}

/// Reads a value of unknown size with a `l*xattr`-style call `f(buf, size)`: first into a
/// buffer that fits most values and lists (one call where it fits); if it does not
/// (`ERANGE`), a null buffer of size 0 answers the size, then a buffer of that size, again
/// if the value grew in between.
fn read_sized(mut f: impl FnMut(*mut libc::c_void, usize) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; FIRST_TRY];
    loop {
        match cvt_size(f(buf.as_mut_ptr().cast(), buf.len())) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => {
                let size = cvt_size(f(std::ptr::null_mut(), 0))?;
                buf = vec![0u8; size.max(buf.len() + 1)];
            }
            Err(e) => return Err(e),
        }
    }
}

/// Bytes of the first buffer [`read_sized`] tries.
const FIRST_TRY: usize = 256;

impl DirFd {
    /// The path of an entry through this directory's descriptor, for the calls that have no
    /// `*at()` form (`l*xattr`): `/proc/self/fd/N/name` resolves the descriptor itself, and
    /// the `l*` calls do not follow the final component.
    fn proc_path(&self, name: &OsStr) -> io::Result<CString> {
        use std::os::unix::ffi::OsStrExt;
        let mut p = super::fd_path(&self.0).into_bytes();
        p.push(b'/');
        p.extend_from_slice(one_component(name)?.as_bytes());
        c_bytes(&p)
    }

    /// Whether the directory itself has the extended attribute `attr` (errors count as no).
    pub fn has_own_xattr(&self, attr: &[u8]) -> bool {
        has_xattr(&self.0, attr)
    }

    /// Reads an extended attribute of an entry, not following a symlink.
    pub fn get_xattr(&self, name: &OsStr, attr: &[u8]) -> io::Result<Vec<u8>> {
        let p = self.proc_path(name)?;
        let a = c_bytes(attr)?;
        // SAFETY: valid C strings; `read_sized` passes a buffer writable for `size` bytes (or
        // null with size 0, which asks for the size only).
        read_sized(|buf, size| unsafe { libc::lgetxattr(p.as_ptr(), a.as_ptr(), buf, size) })
    }

    /// Sets an extended attribute of an entry (`flags`: `XATTR_CREATE`/`XATTR_REPLACE`).
    pub fn set_xattr(&self, name: &OsStr, attr: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        let p = self.proc_path(name)?;
        let a = c_bytes(attr)?;
        // SAFETY: valid C strings; `value` is readable for its length.
        cvt(unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                a.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                flags,
            )
        })
        .map(drop)
    }

    /// Removes an extended attribute of an entry.
    pub fn remove_xattr(&self, name: &OsStr, attr: &[u8]) -> io::Result<()> {
        let p = self.proc_path(name)?;
        let a = c_bytes(attr)?;
        // SAFETY: valid C strings.
        cvt(unsafe { libc::lremovexattr(p.as_ptr(), a.as_ptr()) }).map(drop)
    }

    /// Lists the extended attribute names of an entry.
    pub fn list_xattr(&self, name: &OsStr) -> io::Result<Vec<Vec<u8>>> {
        let p = self.proc_path(name)?;
        // SAFETY: valid C string; `read_sized` passes a buffer writable for `size` bytes (or
        // null with size 0, which asks for the size only).
        let buf =
            read_sized(|buf, size| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), size) })?;
        // The kernel's list is NUL-terminated names, one after the other.
        Ok(buf
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(<[u8]>::to_vec)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn xattr_calls_round_trip_on_entries_and_open_files() {
        let t = tempfile::tempdir().unwrap();
        let d = DirFd::open_root(t.path()).unwrap();
        std::fs::write(t.path().join("f"), "x").unwrap();
        let f = OsStr::new("f");
        let big = vec![b'v'; 1000];
        d.set_xattr(f, b"user.small", b"1", 0).unwrap();
        d.set_xattr(f, b"user.big", &big, 0).unwrap();
        let mut names = d.list_xattr(f).unwrap();
        names.sort();
        assert_eq!(names, vec![b"user.big".to_vec(), b"user.small".to_vec()]);
        // Past the first buffer, within it, and empty.
        assert_eq!(d.get_xattr(f, b"user.big").unwrap(), big);
        assert_eq!(d.get_xattr(f, b"user.small").unwrap(), b"1");
        d.set_xattr(f, b"user.empty", b"", 0).unwrap();
        assert_eq!(d.get_xattr(f, b"user.empty").unwrap(), b"");
        d.remove_xattr(f, b"user.empty").unwrap();
        let e = d.get_xattr(f, b"user.none").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODATA));
        let e = d
            .set_xattr(f, b"user.small", b"2", libc::XATTR_CREATE)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        assert_eq!(
            d.set_xattr(f, b"user.\0", b"", 0)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::EINVAL)
        );

        let open = File::open(t.path().join("f")).unwrap();
        assert!(has_xattr(&open, b"user.small"));
        remove_xattr_fd(&open, b"user.small").unwrap();
        assert!(!has_xattr(&open, b"user.small"));
        // Removing what is not there is not an error.
        remove_xattr_fd(&open, b"user.small").unwrap();
        d.remove_xattr(f, b"user.big").unwrap();
        assert!(d.list_xattr(f).unwrap().is_empty());
    }
}
