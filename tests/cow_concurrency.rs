//! Many writers at once on a writable mount, with kernel overlayfs as the oracle for errors.
//!
//! Worker threads create, write, rename and remove files and directories in the same few
//! directories of a lower-populated image, from fixed seeds, while a reader lists and stats
//! them. The same program runs on kernel overlayfs over the image's layers and on rimgfs.
//! Outcomes race, so the two runs are not compared call by call; instead rimgfs must not see
//! an error kind the kernel never saw (the races give ENOENT, EEXIST and ENOTEMPTY on both:
//! file names are only ever files and directory names only ever directories), never EIO,
//! and must finish within a deadline (no deadlock). Afterwards the mount must be consistent:
//! a full walk succeeds, kernel overlayfs over rimgfs's upper shows the same tree, and so does
//! rimgfs mounted again with the same upper.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use common::listing::Listing;
use common::overlay::{OverlayMount, extract_layers, kernel_overlay};
use common::{ImageDef, Sandbox};

const DIRS: usize = 4;
const WORKERS: u64 = 4;
const OPS: usize = 300;
/// How long all workers together may take on either filesystem.
const RUN_TIMEOUT: Duration = Duration::from_secs(180);
const KERNEL_OPTS: &str = "redirect_dir=on,metacopy=on";

/// Error kinds the races make on any overlay.
const RACE_ERRNOS: &[&str] = &["ENOENT", "EEXIST", "ENOTEMPTY"];

fn spec() -> String {
    let mut s = String::from("L0: dir /w\n");
    for d in 0..DIRS {
        s.push_str(&format!("L0: dir /w/d{d}\n"));
        for f in 0..6 {
            s.push_str(&format!("L0: file /w/d{d}/f{f} 0644 'lower {d} {f}\\n'\n"));
        }
        for k in 0..3 {
            s.push_str(&format!(
                "L0: dir /w/d{d}/s{k}; file /w/d{d}/s{k}/g0 0644 'inner'\n"
            ));
        }
    }
    // A second layer with a whiteout, an opaque directory and a replaced file.
    s.push_str(
        "L1: dir /w; dir /w/d1; whiteout /w/d1/f5; dir /w/d2; file /w/d2/f0 0644 'L1'\n\
         L1: dir /w/d3; dir /w/d3/s2; opaque /w/d3/s2; file /w/d3/s2/g1 0644 'opq'\n",
    );
    s
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

type Counts = BTreeMap<String, u64>;

/// Counts an outcome under `"<op> <ERRNO>"` (or `"<op> ok"`).
fn note<T>(c: &mut Counts, op: &str, r: std::io::Result<T>) -> Option<T> {
    let (k, v) = match r {
        Ok(v) => ("ok".to_string(), Some(v)),
        Err(e) => match e.raw_os_error() {
            Some(code) => (format!("{:?}", nix::errno::Errno::from_raw(code)), None),
            None => (format!("other:{}", e.kind()), None),
        },
    };
    *c.entry(format!("{op} {k}")).or_default() += 1;
    v
}

/// One worker's series of operations under `root`.
fn worker(root: &Path, seed: u64) -> Counts {
    let mut rng = Rng::new(seed);
    let mut c = Counts::new();
    let dir = |rng: &mut Rng| root.join(format!("w/d{}", rng.below(DIRS)));
    for i in 0..OPS {
        let d = dir(&mut rng);
        let f = d.join(format!("f{}", rng.below(8)));
        let s = d.join(format!("s{}", rng.below(4)));
        let g = s.join(format!("g{}", rng.below(2)));
        let payload = format!("worker {seed} op {i}\n");
        match rng.below(11) {
            0 => {
                let r = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&f)
                    .and_then(|mut h| h.write_all(payload.as_bytes()));
                note(&mut c, "create", r);
            }
            1 => {
                let trunc = rng.below(3) == 0;
                let r = std::fs::OpenOptions::new()
                    .write(true)
                    .append(!trunc)
                    .truncate(trunc)
                    .open(&f)
                    .and_then(|mut h| h.write_all(payload.as_bytes()));
                note(&mut c, "write", r);
            }
            2 => {
                let to = dir(&mut rng).join(format!("f{}", rng.below(8)));
                note(&mut c, "rename-file", std::fs::rename(&f, &to));
            }
            3 => {
                note(&mut c, "unlink", std::fs::remove_file(&f));
            }
            4 => {
                note(&mut c, "mkdir", std::fs::create_dir(&s));
            }
            5 => {
                note(&mut c, "rmdir", std::fs::remove_dir(&s));
            }
            6 => {
                let to = dir(&mut rng).join(format!("s{}", rng.below(4)));
                note(&mut c, "rename-dir", std::fs::rename(&s, &to));
            }
            7 => {
                note(
                    &mut c,
                    "write-nested",
                    std::fs::write(&g, payload.as_bytes()),
                );
            }
            8 => {
                note(&mut c, "unlink-nested", std::fs::remove_file(&g));
            }
            9 => {
                let r = std::fs::File::open(&f).and_then(|mut h| {
                    let mut v = Vec::new();
                    h.read_to_end(&mut v)
                });
                note(&mut c, "read", r);
            }
            _ => {
                // A directory listing while others change it; entries may vanish meanwhile.
                if let Some(rd) = note(&mut c, "readdir", std::fs::read_dir(&d)) {
                    for e in rd {
                        if let Some(e) = note(&mut c, "readdir-next", e) {
                            let _ = std::fs::symlink_metadata(e.path());
                        }
                    }
                }
            }
        }
    }
    c
}

/// Lists and stats everything under `root/w` until told to stop.
fn reader(root: &Path, stop: &AtomicBool) -> Counts {
    let mut c = Counts::new();
    while !stop.load(Ordering::Relaxed) {
        for d in 0..DIRS {
            let dir = root.join(format!("w/d{d}"));
            if let Some(rd) = note(&mut c, "reader-readdir", std::fs::read_dir(&dir)) {
                for e in rd {
                    if let Some(e) = note(&mut c, "reader-next", e) {
                        let m = std::fs::symlink_metadata(e.path());
                        if let Some(m) = note(&mut c, "reader-lstat", m) {
                            if m.is_dir() {
                                let sub = std::fs::read_dir(e.path());
                                if let Some(sub) = note(&mut c, "reader-subdir", sub) {
                                    sub.for_each(|x| drop(note(&mut c, "reader-next", x)));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    c
}

/// Runs every worker and the reader on `root`; the merged error counts, or `None` when they
/// did not all finish within [`RUN_TIMEOUT`] (the threads are then left behind, stuck).
fn run_all(root: &Path) -> Option<Counts> {
    let (tx, rx) = mpsc::channel();
    for w in 0..WORKERS {
        let (root, tx) = (root.to_path_buf(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send(worker(&root, 1000 + w));
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (rtx, rrx) = mpsc::channel();
    {
        let (root, stop) = (root.to_path_buf(), stop.clone());
        std::thread::spawn(move || {
            let _ = rtx.send(reader(&root, &stop));
        });
    }
    let deadline = std::time::Instant::now() + RUN_TIMEOUT;
    let mut all = Counts::new();
    for _ in 0..WORKERS {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let c = rx.recv_timeout(left).ok()?;
        for (k, v) in c {
            *all.entry(k).or_default() += v;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let left = deadline.saturating_duration_since(std::time::Instant::now());
    for (k, v) in rrx.recv_timeout(left).ok()? {
        *all.entry(k).or_default() += v;
    }
    Some(all)
}

fn kinds(c: &Counts) -> Vec<String> {
    let mut v: Vec<String> = c
        .keys()
        .filter_map(|k| k.rsplit(' ').next())
        .filter(|k| *k != "ok")
        .map(str::to_string)
        .collect();
    v.dedup();
    v.sort();
    v.dedup();
    v
}

/// The tree with what legitimately differs between an overlay's views removed: the root
/// (the kernel's merged root is its upper root) and directory link counts (overlayfs
/// reports 1 for merged directories).
fn comparable(l: &Listing) -> Listing {
    let mut l = l.clone();
    l.0.remove(&b"/"[..]);
    for i in l.0.values_mut().filter(|i| i.kind == 'd') {
        i.nlink = 0;
    }
    l
}

#[test]
fn cow_concurrent_writers_match_kernel_errors_and_stay_consistent() {
    let sb = Sandbox::new();
    let text = spec();
    let def = ImageDef::from_spec(&text);
    let image = sb.image(&text);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let Some(k) = kernel_overlay(&lowers, sb.dir.path(), KERNEL_OPTS) else {
        return;
    };
    let kernel = run_all(&k.mnt).expect("kernel overlayfs run did not finish in time");
    k.unmount();

    let cache = sb.cache();
    let upper = sb.path("r-upper");
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &upper) else {
        return;
    };
    let ours = run_all(m.path());
    eprintln!("kernel overlayfs: {kernel:?}\nrimgfs: {ours:?}");
    let ours = ours.unwrap_or_else(|| {
        panic!("rimgfs: the workers did not finish within {RUN_TIMEOUT:?} (deadlock?)")
    });
    assert!(
        !kinds(&ours).iter().any(|k| k == "EIO"),
        "rimgfs returned EIO: {ours:?}"
    );
    let kernel_kinds = kinds(&kernel);
    let extra: Vec<String> = kinds(&ours)
        .into_iter()
        .filter(|k| !kernel_kinds.contains(k))
        .collect();
    assert!(
        extra.is_empty(),
        "rimgfs saw errors kernel overlayfs never did: {extra:?}\nrimgfs: {ours:?}\n\
         kernel: {kernel:?}"
    );
    // The oracle itself behaved as the design says, or the comparison means little.
    for k in &kernel_kinds {
        assert!(
            RACE_ERRNOS.contains(&k.as_str()),
            "kernel overlayfs saw {k}: {kernel:?}"
        );
    }

    // Consistent afterwards: a walk succeeds (every file reads its st_size bytes).
    let tree = Listing::walk(m.path());
    m.unmount();
    assert!(tree.get("/w/d0").is_some(), "{:?}", tree.paths());

    // The upper is overlayfs's: the kernel shows the same tree from it.
    let kw2 = sb.path("k-work2");
    std::fs::create_dir_all(&kw2).unwrap();
    let k2 = OverlayMount::mount(
        &lowers,
        Some((&upper, &kw2)),
        KERNEL_OPTS,
        &sb.path("k-mnt2"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let interop = Listing::walk(&k2.mnt);
    k2.unmount();
    comparable(&interop).assert_same(&comparable(&tree), "kernel overlayfs over rimgfs's upper");

    // The same upper mounted again shows the same tree.
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &upper) else {
        return;
    };
    Listing::walk(m.path()).assert_same(&tree, "remounted with the same upper");
    m.unmount();
}

/// A file replaced by a rename (or unlinked) while a process still holds it must never let a
/// later open of that process's descriptor reach whatever now has the name. The concurrent run
/// above hits this as ENXIO (the open reaches a whiteout) and EIO; here it is deterministic:
/// reopening through `/proc/self/fd` sends the daemon an open of the replaced inode.
/// Kernel overlayfs refuses (EEXIST: it cannot copy up an unlinked lower file).
#[test]

fn cow_reopen_of_replaced_file_never_reaches_the_new_file() {
    const SPEC: &str = "L0: dir /etc; file /etc/a 0644 'A'; file /etc/c 0644 'C'";
    fn ops(m: &Path) -> Vec<String> {
        let mut log = Vec::new();
        // The plain case first: an unlinked lower file stays readable through its descriptor.
        let held = std::fs::File::open(m.join("etc/c")).unwrap();
        std::fs::remove_file(m.join("etc/c")).unwrap();
        let mut old = String::new();
        let r = (&held).read_to_string(&mut old);
        log.push(format!(
            "read unlinked: {:?} {old:?}",
            r.map_err(|e| e.raw_os_error())
        ));
        std::fs::write(m.join("etc/c"), "C").unwrap();
        drop(held);
        let held = std::fs::File::open(m.join("etc/a")).unwrap();
        std::fs::write(m.join("etc/b"), "B").unwrap();
        std::fs::rename(m.join("etc/b"), m.join("etc/a")).unwrap();
        let reopened = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&held));
        let r = std::fs::OpenOptions::new()
            .append(true)
            .open(&reopened)
            .and_then(|mut f| f.write_all(b"!"));
        log.push(format!(
            "reopen replaced: {:?}",
            r.map_err(|e| e.raw_os_error())
        ));
        log.push(format!(
            "etc/a: {:?}",
            std::fs::read_to_string(m.join("etc/a")).unwrap()
        ));
        // An upper file held open and unlinked: still there for its holder.
        let held = std::fs::File::open(m.join("etc/c")).unwrap();
        std::fs::remove_file(m.join("etc/c")).unwrap();
        let st = held.metadata().map(|m| (m.len(), m.nlink()));
        log.push(format!(
            "fstat unlinked: {:?}",
            st.map_err(|e| e.raw_os_error())
        ));
        let mut old = String::new();
        let r = (&held).read_to_string(&mut old);
        log.push(format!(
            "read unlinked upper: {:?} {old:?}",
            r.map_err(|e| e.raw_os_error())
        ));
        let names: Vec<String> = std::fs::read_dir(m.join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        log.push(format!("etc: {names:?}"));
        log
    }
    let sb = Sandbox::new();
    let def = ImageDef::from_spec(SPEC);
    let image = sb.image(SPEC);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let Some(k) = kernel_overlay(&lowers, sb.dir.path(), KERNEL_OPTS) else {
        return;
    };
    let klog = ops(&k.mnt);
    k.unmount();
    let cache = sb.cache();
    let upper = sb.path("r-upper");
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &upper) else {
        return;
    };
    let rlog = ops(m.path());
    m.unmount();
    eprintln!("kernel: {klog:#?}\nrimgfs: {rlog:#?}");
    // What matters: the new /etc/a is untouched, and the unlinked file stays unlinked.
    assert_eq!(rlog[0], klog[0], "reading an unlinked file");
    assert_eq!(
        rlog[2], "etc/a: \"B\"",
        "a write reached the file that replaced /etc/a"
    );
    assert_eq!(rlog[3], klog[3], "fstat of an unlinked upper file");
    assert_eq!(rlog[4], klog[4], "reading an unlinked upper file");
    assert_eq!(rlog[5], klog[5], "names after the unlink");
}

/// What `fstat` of a descriptor says once the entry it was opened on lost its name: an
/// `O_PATH` descriptor carries no open file, so the daemon must answer for the inode itself.
fn fstat_after_removal(dir: &Path, make: impl Fn(&Path) -> std::io::Result<()>) -> String {
    use std::os::unix::fs::OpenOptionsExt;
    let at = dir.join("victim");
    let r = make(&at).and_then(|()| {
        let held = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
            .open(&at)?;
        match std::fs::symlink_metadata(&at)?.is_dir() {
            true => std::fs::remove_dir(&at)?,
            false => std::fs::remove_file(&at)?,
        }
        held.metadata()
    });
    match r {
        // Overlayfs reports merged directories' link counts as 1, removed or not.
        Ok(m) if m.is_dir() => format!("dir mode={:o}", m.mode()),
        Ok(m) => format!("nlink={} mode={:o} size={}", m.nlink(), m.mode(), m.len()),
        Err(e) => format!("{:?}", e.raw_os_error()),
    }
}

/// An entry removed while a process still holds it answers `stat` through that descriptor:
/// the removed directory a reader had just opened, which the concurrent run above hit as
/// ESTALE (`reader-subdir`), and removed files, with a link count of 0 as on kernel
/// overlayfs.
#[test]
fn cow_removed_entries_answer_stat_through_descriptors() {
    const SPEC: &str = "L0: dir /d; file /d/lower 0644 'l'; dir /d/lowerdir";
    fn ops(m: &Path) -> Vec<String> {
        let d = m.join("d");
        let mut log = Vec::new();
        log.push(fstat_after_removal(&d, |p| {
            std::fs::DirBuilder::new().mode(0o750).create(p)
        }));
        log.push(fstat_after_removal(&d, |p| {
            std::fs::write(p, "new")?;
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o640))
        }));
        log.push(fstat_after_removal(&d, |p| {
            std::fs::rename(d.join("lower"), p)
        }));
        log.push(fstat_after_removal(&d, |p| {
            std::fs::rename(d.join("lowerdir"), p)
        }));
        log
    }
    let sb = Sandbox::new();
    let def = ImageDef::from_spec(SPEC);
    let image = sb.image(SPEC);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let Some(k) = kernel_overlay(&lowers, sb.dir.path(), KERNEL_OPTS) else {
        return;
    };
    let klog = ops(&k.mnt);
    k.unmount();
    let Some(m) = common::harness::mount_with_upper(&image, &sb.cache(), &sb.path("r-upper"))
    else {
        return;
    };
    let rlog = ops(m.path());
    m.unmount();
    assert_eq!(rlog, klog, "left rimgfs, right kernel overlayfs");
}
