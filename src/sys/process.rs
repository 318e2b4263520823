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

/// Raises this process's open-file limit to its hard limit: the daemon holds a descriptor
/// per open file and per upper directory in use, and the usual soft limit (1,024) is a
/// default for programs that use few, not a ceiling the system needs (as Go and systemd
/// services do), though never past 2^20, which leaves a huge hard limit to what needs it.
/// Returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    const MOST: libc::rlim_t = 1 << 20;
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reading and setting this process's own limit through a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        let want = l.rlim_max.min(MOST);
        if l.rlim_cur < want {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: l.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                l = raised;
            }
        }
    }
    l.rlim_cur
}

/// Rewrites this process's argument strings in place, as `/proc/PID/cmdline` (and so `ps`)
/// shows them to every user: `edit` gets the NUL-separated area and returns whether it
/// changed it; a changed area is written back with the same length.
///
/// The area is the stack memory the kernel placed argv in (`arg_start`..`arg_end` of
/// `/proc/self/stat`). It is written through `/proc/self/mem`, so a wrong address fails with
/// an error rather than corrupting memory; Rust holds no reference into that memory (std
/// copies the arguments when they are read), so no invariant of the program is broken.
/// Call it while single-threaded, before anything reads the arguments again.
pub fn edit_own_args(edit: impl FnOnce(&mut [u8]) -> bool) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name, which may itself hold spaces; arg_start
    // and arg_end are fields 48 and 49 (proc(5)), i.e. the 46th and 47th after it.
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::other("/proc/self/stat has no argument area"))
    };
    let (start, end) = (field(48)?, field(49)?);
    if end <= start {
        return Ok(());
    }
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/proc/self/mem")?;
    let mut area = vec![0u8; (end - start) as usize];
    mem.read_exact_at(&mut area, start)?;
    if edit(&mut area) {
        mem.write_all_at(&area, start)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    fn fd_limit() -> libc::rlimit {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reading this process's limit into a valid struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) }, 0);
        l
    }

    #[test]
    fn the_fd_limit_rises_to_the_hard_limit_within_bounds() {
        let before = fd_limit();
        let now = super::raise_fd_limit();
        assert_eq!(now, before.rlim_cur.max(before.rlim_max.min(1 << 20)));
        let after = fd_limit();
        assert_eq!((after.rlim_cur, after.rlim_max), (now, before.rlim_max));
    }
}
