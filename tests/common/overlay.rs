//! Kernel overlayfs over an image's layers: each layer tar extracted into a lower directory
//! with its OCI whiteouts turned into overlayfs's form (`.wh.X` → a 0/0 character device `X`,
//! `.wh..wh..opq` → `trusted.overlay.opaque=y` on its directory, as `scripts/bench.sh` does),
//! and a guard that mounts them with an upper and a work directory and unmounts on drop.
//!
//! Extraction gives what rimgfs's layer rules give: implicit parents are 0755, 0:0, mtime 0,
//! and directory attributes are applied last, deepest first, so creating children (or
//! whiteout nodes) does not disturb their mtimes.

#![allow(unsafe_code)]

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{Mode, SFlag, makedev, mknod};

/// Sets an extended attribute without following a symlink.
pub fn set_xattr(p: &Path, name: &[u8], value: &[u8]) -> std::io::Result<()> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    // SAFETY: valid C strings; `value` is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            cp.as_ptr(),
            cn.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Removes an extended attribute without following a symlink.
pub fn remove_xattr(p: &Path, name: &[u8]) -> std::io::Result<()> {
    let cp = CString::new(p.as_os_str().as_bytes()).unwrap();
    let cn = CString::new(name).unwrap();
    // SAFETY: valid C strings.
    if unsafe { libc::lremovexattr(cp.as_ptr(), cn.as_ptr()) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets owner and mtime (seconds, nanoseconds) of a path, not following a symlink.
pub fn set_owner_time(p: &Path, uid: u32, gid: u32, mtime: (i64, i64)) {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        p,
        Some(uid.into()),
        Some(gid.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    set_time(p, mtime);
}

/// Sets the access and modification times of a path, not following a symlink.
pub fn set_time(p: &Path, mtime: (i64, i64)) {
    let t = nix::sys::time::TimeSpec::new(mtime.0, mtime.1);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

struct DirMeta {
    path: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
}

/// Extracts one layer tar into `dir` in overlayfs lower-layer form.
pub fn extract_layer(tar_bytes: &[u8], dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut dirs: Vec<DirMeta> = Vec::new();
    let implicit = |p: &Path, dirs: &mut Vec<DirMeta>| {
        let mut missing = Vec::new();
        let mut cur = p.to_path_buf();
        while !cur.exists() && cur != dir {
            missing.push(cur.clone());
            cur.pop();
        }
        for m in missing.into_iter().rev() {
            std::fs::create_dir(&m).unwrap();
            dirs.push(DirMeta {
                path: m,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
            });
        }
    };
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let raw = e.path_bytes().into_owned();
        let rel: Vec<&[u8]> = raw
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
            .collect();
        let path = rel.iter().fold(dir.to_path_buf(), |p, c| {
            p.join(std::ffi::OsStr::from_bytes(c))
        });
        let h = e.header().clone();
        let (mode, uid, gid) = (
            h.mode().unwrap(),
            h.uid().unwrap() as u32,
            h.gid().unwrap() as u32,
        );
        let mut mtime = (h.mtime().unwrap() as i64, 0);
        let mut xattrs = Vec::new();
        if let Some(ext) = e.pax_extensions().unwrap() {
            for r in ext {
                let r = r.unwrap();
                if let Some(k) = r.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    xattrs.push((k.to_vec(), r.value_bytes().to_vec()));
                }
                if r.key_bytes() == b"mtime" {
                    let v = r.value().unwrap();
                    let (s, f) = v.split_once('.').unwrap_or((v, "0"));
                    let nsec = format!("{f:0<9}")[..9].parse::<i64>().unwrap();
                    mtime = (s.parse().unwrap(), nsec);
                }
            }
        }
        let name = rel.last().copied().unwrap_or(b".");
        if let Some(parent) = path.parent() {
            implicit(parent, &mut dirs);
        }
        if name == b".wh..wh..opq" {
            set_xattr(path.parent().unwrap(), b"trusted.overlay.opaque", b"y").unwrap();
            continue;
        }
        if let Some(target) = name.strip_prefix(b".wh.") {
            let wh = path.with_file_name(std::ffi::OsStr::from_bytes(target));
            mknod(&wh, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0)).unwrap();
            continue;
        }
        let ty = h.entry_type();
        if ty.is_dir() {
            if !path.exists() {
                std::fs::create_dir(&path).unwrap();
            }
            dirs.retain(|d| d.path != path);
            dirs.push(DirMeta {
                path: path.clone(),
                mode,
                uid,
                gid,
                mtime: mtime.0,
            });
        } else if ty.is_hard_link() {
            let t = e.link_name_bytes().unwrap().into_owned();
            let target = t
                .split(|&b| b == b'/')
                .filter(|c| !c.is_empty() && *c != b".")
                .fold(dir.to_path_buf(), |p, c| {
                    p.join(std::ffi::OsStr::from_bytes(c))
                });
            std::fs::hard_link(&target, &path).unwrap();
            continue;
        } else if ty.is_symlink() {
            let t = e.link_name_bytes().unwrap().into_owned();
            std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&t), &path).unwrap();
        } else if ty.is_file() {
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            std::fs::write(&path, data).unwrap();
        } else {
            let kind = match ty {
                tar::EntryType::Char => SFlag::S_IFCHR,
                tar::EntryType::Block => SFlag::S_IFBLK,
                _ => SFlag::S_IFIFO,
            };
            let dev = makedev(
                u64::from(h.device_major().ok().flatten().unwrap_or(0)),
                u64::from(h.device_minor().ok().flatten().unwrap_or(0)),
            );
            mknod(&path, kind, Mode::empty(), dev).unwrap();
        }
        for (k, v) in &xattrs {
            set_xattr(&path, k, v).unwrap();
        }
        if !ty.is_dir() {
            // Owner before mode: chown clears setuid and setgid bits.
            set_owner_time(&path, uid, gid, mtime);
            if !ty.is_symlink() {
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
                    .unwrap();
                set_time(&path, mtime);
            }
        }
    }
    // Deepest first, so setting a directory's mtime is the last change inside its parent.
    dirs.sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
    for d in dirs {
        set_owner_time(&d.path, d.uid, d.gid, (d.mtime, 0));
        std::fs::set_permissions(
            &d.path,
            std::os::unix::fs::PermissionsExt::from_mode(d.mode),
        )
        .unwrap();
        set_time(&d.path, (d.mtime, 0));
    }
}

/// Extracts every layer into `dir/L<i>`; the lower directories, top layer first (the order
/// of `lowerdir=`).
pub fn extract_layers(tars: &[Vec<u8>], dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = tars
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let d = dir.join(format!("L{i}"));
            extract_layer(t, &d);
            d
        })
        .collect();
    out.reverse();
    out
}

/// A kernel overlayfs mount; dropping it unmounts.
pub struct OverlayMount {
    pub mnt: PathBuf,
    mounted: bool,
}

impl OverlayMount {
    /// Mounts `lowers` (top first) with `upper` and `work` and extra options (`redirect_dir=on`).
    /// `Err` with the reason when overlayfs cannot be mounted here.
    pub fn mount(
        lowers: &[PathBuf],
        upper: Option<(&Path, &Path)>,
        extra: &str,
        mnt: &Path,
    ) -> Result<OverlayMount, String> {
        std::fs::create_dir_all(mnt).unwrap();
        let lower = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let mut opts = format!("lowerdir={lower}");
        if let Some((u, w)) = upper {
            opts.push_str(&format!(
                ",upperdir={},workdir={}",
                u.display(),
                w.display()
            ));
        }
        if !extra.is_empty() {
            opts.push(',');
            opts.push_str(extra);
        }
        nix::mount::mount(
            Some("overlay"),
            mnt,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| format!("mount -t overlay -o {opts}: {e}"))?;
        Ok(OverlayMount {
            mnt: mnt.to_path_buf(),
            mounted: true,
        })
    }

    /// Unmounts now.
    pub fn unmount(mut self) {
        self.mounted = false;
        // EBUSY can be transient: a process forked by another test thread holds copies of
        // this test's descriptors until it execs.
        let mut last = None;
        let done = super::harness::poll_until(std::time::Duration::from_secs(10), || {
            match nix::mount::umount2(&self.mnt, nix::mount::MntFlags::empty()) {
                Ok(()) => true,
                Err(nix::errno::Errno::EBUSY) => {
                    last = Some(nix::errno::Errno::EBUSY);
                    false
                }
                Err(e) => panic!("umount {}: {e}", self.mnt.display()),
            }
        });
        assert!(done, "umount {}: {last:?}", self.mnt.display());
    }
}

impl Drop for OverlayMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.mnt, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Kernel overlayfs over `lowers` (top first) with fresh `k-upper` and `k-work` directories in
/// `dir`, mounted on `dir/k-mnt` with `extra` options; `None` after reporting why it cannot be
/// mounted here.
pub fn kernel_overlay(lowers: &[PathBuf], dir: &Path, extra: &str) -> Option<OverlayMount> {
    let (upper, work) = (dir.join("k-upper"), dir.join("k-work"));
    for d in [&upper, &work] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mnt = OverlayMount::mount(lowers, Some((&upper, &work)), extra, &dir.join("k-mnt"));
    super::require(mnt.ok(), "kernel overlayfs cannot be mounted here")
}
