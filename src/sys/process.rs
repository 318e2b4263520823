//! The process itself: forking the daemon, standard descriptors, the allocator, threads.
//! Dependencies: libc, nix.

use std::io;

/// Which side of a fork we are on.
pub enum Forked {
    /// The original process; the child's pid.
    Parent(nix::unistd::Pid),
    /// The new process.
    Child,
}

/// Forks the process.
///
/// Must be called while the process has a single thread (before any worker thread is
/// started, after scoped threads were joined), so the child inherits no lock held by a thread
/// that does not exist in it.
pub fn fork_single_threaded() -> io::Result<Forked> {
    // SAFETY: the caller guarantees the process is single-threaded, which is the condition
    // under which fork(2) leaves the child in a consistent state.
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        nix::unistd::ForkResult::Child => Ok(Forked::Child),
    }
}

/// Number of threads of this process, from `/proc/self/status` (`None` if unreadable).
pub fn thread_count() -> Option<usize> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Makes the standard descriptor `target` (0, 1 or 2) refer to `file`.
pub fn redirect_fd(file: &std::fs::File, target: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    if !(0..=2).contains(&target) {
        return Err(io::Error::from_raw_os_error(libc::EBADF));
    }
    // SAFETY: both descriptors are valid for the duration of the call (`file` is borrowed,
    // `target` is a standard descriptor); dup2 only replaces what `target` refers to.
    let r = unsafe { libc::dup2(file.as_raw_fd(), target) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Keeps the daemon's resident memory to what it uses: returns memory freed after indexing to
/// the kernel, and pins glibc's mmap threshold so the large per-thread FUSE request buffers
/// are always fresh, lazily-touched mappings (glibc's dynamic threshold would otherwise move
/// them onto the heap after the first one is freed, where calloc must zero every page).
pub fn tune_allocator() {
    /// Allocations from this size on get their own mapping.
    const MMAP_THRESHOLD: i32 = 1 << 20;
    // SAFETY: mallopt and malloc_trim only adjust glibc allocator state; they are safe to call
    // at any time from any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::malloc_trim(0);
    }
}
