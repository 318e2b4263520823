//! Every `unsafe` host call of rimgfs, behind safe wrappers, grouped by what they touch:
//! [`dirfd`] the upper tree through directory descriptors, [`xattr`] extended attributes,
//! [`creds`] acting as a request's caller, [`mod@file`] open files, [`process`] the process
//! itself (fork, descriptors, allocator), [`mod@fusermount`] the setuid mount helper,
//! [`zlib`] inflate with block stops and bit priming (gzip checkpoints).
//!
//! SAFETY (module-wide): each wrapper documents the condition its unsafe call needs; callers
//! get a safe function whose contract is stated in its doc comment. No module outside `sys`
//! may use `unsafe` (the crate denies it).
//! Dependencies: libc, nix.
#![allow(unsafe_code)]

pub mod creds;
pub mod dirfd;
pub mod file;
pub mod fusermount;
pub mod mapped;
pub mod process;
pub mod xattr;
pub mod zlib;

use std::ffi::{CString, OsStr};
use std::io;

pub use dirfd::{DirFd, FileStat};
pub use file::{copy_file_range, fallocate, set_file_attrs, start_writeback};
pub use fusermount::{FUSERMOUNT, fuse_unmount, fusermount};
pub use process::{
    Forked, edit_own_args, fork_single_threaded, raise_fd_limit, redirect_fd, thread_count,
    tune_allocator,
};
pub use xattr::{has_xattr, remove_xattr_fd};

/// A C string of `bytes`; `EINVAL` if they hold a NUL (no host name or attribute can).
fn c_bytes(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// `/proc/self/fd/N`: the file descriptor `fd` is open on, for calls that take only a path;
/// the kernel follows that link to the descriptor's own file, named or not.
fn fd_path(fd: &impl std::os::fd::AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    use std::os::unix::ffi::OsStrExt;
    c_bytes(name.as_bytes())
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}
