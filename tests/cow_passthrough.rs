//! A big lower file on a writable mount is read by the kernel from a copy of the mount's own
//! in the work directory, once read through the daemon: a reader holding it open that way
//! sees a later append and truncate as on kernel overlayfs; the copy-up takes that copy as the
//! upper file (no second copy); the upper and `diff` are as after any copy-up; and no copy is
//! left in the work directory after an unmount or a crash and the next mount.
#![allow(missing_docs)]

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::harness::{self, poll_until, rimgfs};
use common::overlay::{extract_layers, kernel_overlay};
use common::{ImageDef, Sandbox};

const SIZE: usize = 3 << 20;

fn spec() -> String {
    format!("L0: dir /d; file /d/big 0640 gen={SIZE}; file /d/other 0644 'x'\n")
}

/// The work directory's finished passthrough copies.
fn copies(work: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(work) else {
        return Vec::new();
    };
    dir.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("#rimgfs."))
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        .map(|e| e.path())
        .collect()
}

/// Whether the kernel has FUSE passthrough (6.9 on) and the daemon may use it (root).
fn passthrough_possible() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut v = release
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    nix::unistd::geteuid().is_root() && (major, minor) >= (6, 9)
}

/// Reads `f` whole through the daemon, then waits for its copy in `work`: the data read and
/// the copy's inode number.
fn read_until_copied(f: &Path, work: &Path) -> (Vec<u8>, u64) {
    let data = std::fs::read(f).unwrap();
    assert_eq!(data.len(), SIZE);
    let made = poll_until(Duration::from_secs(60), || copies(work).len() == 1);
    assert!(made, "no passthrough copy in {}", work.display());
    (data, std::fs::metadata(&copies(work)[0]).unwrap().ino())
}

/// Where passthrough runs, the copy-up took the copy: the upper file `up` is that inode.
fn assert_upper_is_the_copy(up: &Path, copy_ino: u64) {
    if passthrough_possible() {
        assert_eq!(std::fs::metadata(up).unwrap().ino(), copy_ino);
    }
}

/// What a reader opened before a writer sees, step by step.
fn steps(big: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut reader = std::fs::File::open(big).unwrap();
    let mut head = vec![0u8; 4096];
    reader.read_exact(&mut head).unwrap();
    let mut w = std::fs::OpenOptions::new().append(true).open(big).unwrap();
    w.write_all(b"+tail").unwrap();
    drop(w);
    let mut all = Vec::new();
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_to_end(&mut all).unwrap();
    out.push(format!(
        "after append: {} bytes, ends {:?}",
        all.len(),
        tail(&all)
    ));
    nix::unistd::truncate(big, 100).unwrap();
    all.clear();
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_to_end(&mut all).unwrap();
    out.push(format!("after truncate: {} bytes", all.len()));
    let mut w = std::fs::OpenOptions::new().write(true).open(big).unwrap();
    w.write_all(b"HEAD").unwrap();
    drop(w);
    let mut four = [0u8; 4];
    reader.seek(SeekFrom::Start(0)).unwrap();
    reader.read_exact(&mut four).unwrap();
    out.push(format!(
        "after a write: {:?}",
        String::from_utf8_lossy(&four)
    ));
    out.push(format!("size {}", reader.metadata().unwrap().len()));
    out
}

fn tail(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[b.len().saturating_sub(5)..]).into_owned()
}

#[test]
fn cow_passthrough_reader_sees_writes_and_the_copy_becomes_the_upper_file() {
    let sb = Sandbox::new();
    let spec = spec();
    let def = ImageDef::from_spec(&spec);
    let image = sb.image(&spec);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let Some(k) = kernel_overlay(&lowers, sb.dir.path(), "redirect_dir=on,metacopy=on") else {
        return;
    };
    let want = steps(&k.mnt.join("d/big"));
    k.unmount();
    let (upper, work) = (sb.path("p-upper"), sb.path("p-upper.work"));
    let Some(m) = harness::mount_with_upper(&image, &sb.cache(), &upper) else {
        return;
    };
    let big = m.at("/d/big");
    let (lower, copy_ino) = read_until_copied(&big, &work);
    let got = steps(&big);
    assert_eq!(got, want, "as on kernel overlayfs");
    // The copy-up took the copy, and nothing is left in work.
    let up = upper.join("d/big");
    assert_upper_is_the_copy(&up, copy_ino);
    assert!(copies(&work).is_empty(), "a copy left: {:?}", copies(&work));
    m.unmount();
    let mut expect = lower[..100].to_vec();
    expect[..4].copy_from_slice(b"HEAD");
    assert!(
        std::fs::read(&up).unwrap() == expect,
        "the upper file's data"
    );
    let (meta, kmeta) = (
        std::fs::metadata(&up).unwrap(),
        std::fs::metadata(sb.path("k-upper/d/big")).unwrap(),
    );
    assert_eq!(
        (meta.mode(), meta.uid(), meta.gid()),
        (kmeta.mode(), kmeta.uid(), kmeta.gid())
    );
    let out = harness::diff(&image, &upper, &sb.cache()).success();
    let diff: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(diff, ["C /d", "C /d/big"]);
}

#[test]
fn cow_passthrough_chmod_keeps_the_copy_and_a_write_then_uses_it() {
    let sb = Sandbox::new();
    let image = sb.image(&spec());
    let (upper, work) = (sb.path("p-upper"), sb.path("p-upper.work"));
    let Some(m) = harness::mount_with_upper(&image, &sb.cache(), &upper) else {
        return;
    };
    let big = m.at("/d/big");
    let (lower, copy_ino) = read_until_copied(&big, &work);
    let mut reader = std::fs::File::open(&big).unwrap();
    // A metadata-only copy-up leaves the data (and the copy) alone.
    std::fs::set_permissions(&big, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    assert_eq!(copies(&work).len(), 1);
    let mut w = std::fs::OpenOptions::new().append(true).open(&big).unwrap();
    w.write_all(b"+tail").unwrap();
    drop(w);
    let mut all = Vec::new();
    reader.read_to_end(&mut all).unwrap();
    assert_eq!((all.len(), tail(&all)), (SIZE + 5, "+tail".to_string()));
    drop(reader);
    let up = upper.join("d/big");
    assert_upper_is_the_copy(&up, copy_ino);
    m.unmount();
    let meta = std::fs::metadata(&up).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600);
    let data = std::fs::read(&up).unwrap();
    assert!(data[..SIZE] == lower[..] && &data[SIZE..] == b"+tail");
    assert!(copies(&work).is_empty());
}

#[test]
fn cow_passthrough_copies_go_at_unmount_and_after_a_crash() {
    let sb = Sandbox::new();
    let image = sb.image(&spec());
    let (upper, work) = (sb.path("p-upper"), sb.path("p-upper.work"));
    let Some(m) = harness::mount_with_upper(&image, &sb.cache(), &upper) else {
        return;
    };
    read_until_copied(&m.at("/d/big"), &work);
    // Read again from the copy: still the mount's own, nothing in the upper.
    assert_eq!(std::fs::read(m.at("/d/big")).unwrap().len(), SIZE);
    m.unmount();
    assert!(copies(&work).is_empty(), "left at unmount");
    assert!(!upper.join("d").exists(), "a read made an upper entry");
    // A crash leaves the copy; the next mount removes it.
    let Some(mut m) = harness::mount_with_upper(&image, &sb.cache(), &upper) else {
        return;
    };
    read_until_copied(&m.at("/d/big"), &work);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(m.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    assert!(m.wait_exit(harness::EXIT_TIMEOUT).is_some());
    let out = rimgfs(&["umount".as_ref(), m.path().as_os_str()]);
    assert_eq!(out.code, Some(0), "{out:?}");
    m.unmount();
    assert_eq!(copies(&work).len(), 1, "a crash leaves the copy");
    assert_eq!(
        std::fs::metadata(&copies(&work)[0]).unwrap().len(),
        SIZE as u64
    );
    let Some(m) = harness::mount_with_upper(&image, &sb.cache(), &upper) else {
        return;
    };
    assert!(copies(&work).is_empty(), "the next mount removes it");
    assert!(!upper.join("d").exists());
    m.unmount();
}
