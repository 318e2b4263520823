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

/// The `*xattrat` calls (Linux 6.13; the same numbers on every architecture): an entry's
/// attributes by directory descriptor and name, with no path to resolve through `/proc`,
/// which costs as much again as the call itself.
mod at {
    pub const SET: libc::c_long = 463;
    pub const GET: libc::c_long = 464;
    pub const LIST: libc::c_long = 465;
    pub const REMOVE: libc::c_long = 466;

    /// `struct xattr_args`.
    #[repr(C)]
    struct Args {
        value: u64,
        size: u32,
        flags: u32,
    }

    /// `getxattrat`/`setxattrat` (`call`) of attribute `attr` of the entry `name` of the
    /// directory `fd`, never following a symlink, with the value buffer at `value`.
    ///
    /// # Safety
    /// `value` must be valid for `size` bytes (written by GET, read by SET), or null with
    /// size 0.
    pub unsafe fn with_value(
        call: libc::c_long,
        fd: libc::c_int,
        name: &std::ffi::CStr,
        attr: &std::ffi::CStr,
        value: u64,
        size: usize,
        flags: u32,
    ) -> libc::ssize_t {
        let args = Args {
            value,
            size: size as u32,
            flags,
        };
        // SAFETY: valid C strings and struct; the caller vouches for the buffer.
        unsafe {
            libc::syscall(
                call,
                fd,
                name.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
                attr.as_ptr(),
                &args,
                std::mem::size_of::<Args>(),
            ) as libc::ssize_t
        }
    }
}

/// Whether the kernel has the `*xattrat` calls: until one answers `ENOSYS`.
static XATTRAT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// How an entry's attributes are reached.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Via {
    /// The `*xattrat` calls.
    At,
    /// The `l*xattr` calls on `/proc/self/fd/N/name`.
    Proc,
}

impl Via {
    fn best() -> Via {
        match XATTRAT.load(std::sync::atomic::Ordering::Relaxed) {
            true => Via::At,
            false => Via::Proc,
        }
    }
}

/// What one attribute call is given: the directory's descriptor and the entry's name (for
/// [`Via::At`]), or the entry's `/proc` path.
enum Entry<'a> {
    At(libc::c_int, &'a CString),
    Proc(&'a CString),
}

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

    /// Runs an attribute call on the entry `name` (one component, never followed if a
    /// symlink) the way `via` says; a kernel without the `*xattrat` calls is remembered and
    /// the call made through `/proc`.
    fn on_entry<T>(
        &self,
        via: Via,
        name: &OsStr,
        call: impl Fn(Entry<'_>) -> io::Result<T>,
    ) -> io::Result<T> {
        if via == Via::At {
            let n = super::cstr(one_component(name)?)?;
            match call(Entry::At(self.0.as_raw_fd(), &n)) {
                Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => {
                    XATTRAT.store(false, std::sync::atomic::Ordering::Relaxed);
                }
                r => return r,
            }
        }
        call(Entry::Proc(&self.proc_path(name)?))
    }

    /// Whether the directory itself has the extended attribute `attr` (errors count as no).
    pub fn has_own_xattr(&self, attr: &[u8]) -> bool {
        has_xattr(&self.0, attr)
    }

    /// Reads an extended attribute of an entry, not following a symlink.
    pub fn get_xattr(&self, name: &OsStr, attr: &[u8]) -> io::Result<Vec<u8>> {
        self.get_xattr_via(Via::best(), name, attr)
    }

    fn get_xattr_via(&self, via: Via, name: &OsStr, attr: &[u8]) -> io::Result<Vec<u8>> {
        let a = c_bytes(attr)?;
        self.on_entry(via, name, |e| {
            // SAFETY: valid descriptor and C strings; `read_sized` passes a buffer writable
            // for `size` bytes (or null with size 0, which asks for the size only).
            read_sized(|buf, size| unsafe {
                match e {
                    Entry::At(fd, n) => at::with_value(at::GET, fd, n, &a, buf as u64, size, 0),
                    Entry::Proc(p) => libc::lgetxattr(p.as_ptr(), a.as_ptr(), buf, size),
                }
            })
        })
    }

    /// Sets an extended attribute of an entry (`flags`: `XATTR_CREATE`/`XATTR_REPLACE`).
    pub fn set_xattr(&self, name: &OsStr, attr: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
        self.set_xattr_via(Via::best(), name, attr, value, flags)
    }

    fn set_xattr_via(
        &self,
        via: Via,
        name: &OsStr,
        attr: &[u8],
        value: &[u8],
        flags: i32,
    ) -> io::Result<()> {
        let a = c_bytes(attr)?;
        self.on_entry(via, name, |e| {
            // SAFETY: valid descriptor and C strings; `value` is readable for its length.
            let r = unsafe {
                match e {
                    Entry::At(fd, n) => {
                        let v = value.as_ptr() as u64;
                        at::with_value(at::SET, fd, n, &a, v, value.len(), flags as u32)
                            as libc::c_int
                    }
                    Entry::Proc(p) => libc::lsetxattr(
                        p.as_ptr(),
                        a.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        flags,
                    ),
                }
            };
            cvt(r).map(drop)
        })
    }

    /// Removes an extended attribute of an entry.
    pub fn remove_xattr(&self, name: &OsStr, attr: &[u8]) -> io::Result<()> {
        self.remove_xattr_via(Via::best(), name, attr)
    }

    fn remove_xattr_via(&self, via: Via, name: &OsStr, attr: &[u8]) -> io::Result<()> {
        let a = c_bytes(attr)?;
        self.on_entry(via, name, |e| {
            // SAFETY: valid descriptor and C strings.
            let r = unsafe {
                match e {
                    Entry::At(fd, n) => libc::syscall(
                        at::REMOVE,
                        fd,
                        n.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                        a.as_ptr(),
                    ) as libc::c_int,
                    Entry::Proc(p) => libc::lremovexattr(p.as_ptr(), a.as_ptr()),
                }
            };
            cvt(r).map(drop)
        })
    }

    /// Lists the extended attribute names of an entry.
    pub fn list_xattr(&self, name: &OsStr) -> io::Result<Vec<Vec<u8>>> {
        self.list_xattr_via(Via::best(), name)
    }

    fn list_xattr_via(&self, via: Via, name: &OsStr) -> io::Result<Vec<Vec<u8>>> {
        let buf = self.on_entry(via, name, |e| {
            // SAFETY: valid descriptor and C strings; `read_sized` passes a buffer writable
            // for `size` bytes (or null with size 0, which asks for the size only).
            read_sized(|buf, size| unsafe {
                match e {
                    Entry::At(fd, n) => libc::syscall(
                        at::LIST,
                        fd,
                        n.as_ptr(),
                        libc::AT_SYMLINK_NOFOLLOW,
                        buf,
                        size,
                    ) as libc::ssize_t,
                    Entry::Proc(p) => libc::llistxattr(p.as_ptr(), buf.cast(), size),
                }
            })
        })?;
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
        // Both ways, each on its own (a kernel without `*xattrat` takes the second).
        for via in [Via::At, Via::Proc] {
            let t = tempfile::tempdir().unwrap();
            let d = DirFd::open_root(t.path()).unwrap();
            std::fs::write(t.path().join("f"), "x").unwrap();
            let f = OsStr::new("f");
            let big = vec![b'v'; 1000];
            d.set_xattr_via(via, f, b"user.small", b"1", 0).unwrap();
            d.set_xattr_via(via, f, b"user.big", &big, 0).unwrap();
            let mut names = d.list_xattr_via(via, f).unwrap();
            names.sort();
            assert_eq!(names, vec![b"user.big".to_vec(), b"user.small".to_vec()]);
            // Past the first buffer, within it, and empty.
            assert_eq!(d.get_xattr_via(via, f, b"user.big").unwrap(), big);
            assert_eq!(d.get_xattr_via(via, f, b"user.small").unwrap(), b"1");
            d.set_xattr_via(via, f, b"user.empty", b"", 0).unwrap();
            assert_eq!(d.get_xattr_via(via, f, b"user.empty").unwrap(), b"");
            d.remove_xattr_via(via, f, b"user.empty").unwrap();
            let e = d.get_xattr_via(via, f, b"user.none").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENODATA));
            let e = d
                .set_xattr_via(via, f, b"user.small", b"2", libc::XATTR_CREATE)
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
            assert_eq!(
                d.set_xattr_via(via, f, b"user.\0", b"", 0)
                    .unwrap_err()
                    .raw_os_error(),
                Some(libc::EINVAL)
            );
            // A name of more than one component is refused before any call.
            let e = d.get_xattr_via(via, OsStr::new("../f"), b"user.small");
            assert_eq!(e.unwrap_err().raw_os_error(), Some(libc::EINVAL));

            let open = File::open(t.path().join("f")).unwrap();
            assert!(has_xattr(&open, b"user.small"));
            remove_xattr_fd(&open, b"user.small").unwrap();
            assert!(!has_xattr(&open, b"user.small"));
            // Removing what is not there is not an error.
            remove_xattr_fd(&open, b"user.small").unwrap();
            d.remove_xattr_via(via, f, b"user.big").unwrap();
            assert!(d.list_xattr_via(via, f).unwrap().is_empty());
        }
    }

    #[test]
    fn xattr_calls_never_follow_a_symlink() {
        for via in [Via::At, Via::Proc] {
            let t = tempfile::tempdir().unwrap();
            let d = DirFd::open_root(t.path()).unwrap();
            std::fs::write(t.path().join("target"), "x").unwrap();
            std::os::unix::fs::symlink("target", t.path().join("link")).unwrap();
            let link = OsStr::new("link");
            // user.* attributes are not permitted on a symlink itself; the target keeps none.
            assert!(d.set_xattr_via(via, link, b"user.a", b"1", 0).is_err());
            assert!(
                d.list_xattr_via(via, OsStr::new("target"))
                    .unwrap()
                    .is_empty()
            );
            let e = d.get_xattr_via(via, link, b"user.a").unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENODATA));
        }
    }
}
