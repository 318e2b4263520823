//! The writable view over temporary directories, without a mount: the merge rule's table of
//! cases through the live upper reader, and operations checked against the upper on disk.

use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;

use super::Cow;
use crate::merge::cases::{CASES, Case, LOWER, Up, Want, lower, redirect_value, role};
use crate::tree::LowerTree;
use crate::upper::format::{Format, Role};
use crate::upper::{Flag, Upper};
use crate::view::{Caller, Ino, LowerView, SetAttr};

const ROOT: Caller = Caller { uid: 0, gid: 0 };

/// A writable view of `tree` over a fresh upper in `dir`, made by `prepare` first.
fn view(dir: &Path, tree: LowerTree, prepare: impl FnOnce(&Path)) -> Cow {
    let upper = dir.join("upper");
    std::fs::create_dir_all(&upper).unwrap();
    prepare(&upper);
    let u = Upper::open(&upper, &dir.join("work")).unwrap();
    Cow::new(LowerView::new(Arc::new(tree), Vec::new()), u)
}

fn set_xattr(p: &Path, name: Flag, value: &[u8]) {
    let dir = crate::sys::DirFd::open_root(p.parent().unwrap()).unwrap();
    let k = Format::User.xattr(name);
    dir.set_xattr(p.file_name().unwrap(), &k, value, 0).unwrap();
}

/// Writes a case's upper in the unprivileged format, which every daemon reads.
fn write_case(upper: &Path, c: &Case) {
    let dir = upper.join(c.dir);
    std::fs::create_dir_all(&dir).unwrap();
    if c.opaque {
        set_xattr(&dir, Flag::Opaque, b"y");
    }
    let at = dir.join(c.name);
    let redirect = |r: Option<&str>| {
        if let Some(r) = r {
            let v = redirect_value(&crate::upper::format::parse_redirect(r.as_bytes()).unwrap());
            set_xattr(&at, Flag::Redirect, &v);
        }
    };
    match c.up {
        Up::Nothing => {}
        Up::Whiteout => std::fs::write(dir.join(format!(".wh.{}", c.name)), "").unwrap(),
        Up::Dir(opaque, r) => {
            std::fs::create_dir(&at).unwrap();
            if opaque {
                set_xattr(&at, Flag::Opaque, b"y");
            }
            redirect(r);
        }
        Up::Metacopy(r) => {
            std::fs::write(&at, "").unwrap();
            set_xattr(&at, Flag::Metacopy, b"");
            redirect(r);
        }
        Up::File => std::fs::write(&at, "u").unwrap(),
    }
}

/// The merge rule's table, through the live view: lookups find what the table says, and
/// the inode continues the lower node the table names.
#[test]
fn cow_lookup_follows_the_merge_table() {
    for c in CASES {
        assert!(
            !(c.dir.is_empty() && c.opaque),
            "no case makes the root opaque"
        );
        let t = tempfile::tempdir().unwrap();
        let cow = view(t.path(), lower(LOWER), |u| write_case(u, c));
        let tree = cow.tree();
        let id = |p: &str| tree.resolve(p.as_bytes());
        let parent = match c.dir {
            "" => Ino::ROOT,
            d => cow.lookup(Ino::ROOT, d.as_bytes()).unwrap().ino,
        };
        let got = cow.lookup(parent, c.name.as_bytes());
        let path = [c.dir, c.name].join("/");
        match c.want {
            Want::Nothing => assert_eq!(got.map(|a| a.ino), Err(Errno::ENOENT), "{c:?}"),
            Want::Lower(p) => {
                let a = got.unwrap_or_else(|e| panic!("{c:?}: {e}"));
                let i = cow.inode(a.ino).unwrap();
                assert_eq!(a.ino, Ino::of(id(p).unwrap()), "{c:?}");
                assert!(!i.upper, "{c:?}");
            }
            Want::Upper(origin) => {
                let a = got.unwrap_or_else(|e| panic!("{c:?}: {e}"));
                let i = cow.inode(a.ino).unwrap();
                assert!(i.upper, "{c:?}");
                let continues = match role(c.up) {
                    Some(Role::Dir { .. } | Role::Metacopy { .. }) => origin.and_then(id),
                    // A file whole in the upper continues the lower file of its name (its
                    // inode number, its hard links), if there is one.
                    _ => id(path.trim_start_matches('/'))
                        .filter(|&l| tree.node(l).is_some_and(|n| !n.is_dir())),
                };
                assert_eq!(i.lower, continues, "{c:?}");
            }
        }
    }
}

/// A tree with file data, from `(path, content)` (`None` for a directory).
fn tree_with_data(dir: &Path, entries: &[(&str, Option<&[u8]>)]) -> LowerTree {
    use crate::image::container::BlobLoc;
    use crate::layer::data::LayerData;
    tree_over(entries, |data| {
        let file = dir.join("layer.data");
        std::fs::write(&file, &data).unwrap();
        let len = data.len() as u64;
        LayerData::host(BlobLoc {
            file,
            offset: 0,
            len,
        })
    })
}

/// A tree of `(path, content)` whose layer bytes (the contents one after another) are
/// served by `bytes`.
fn tree_over(
    entries: &[(&str, Option<&[u8]>)],
    bytes: impl FnOnce(Vec<u8>) -> crate::layer::data::LayerData,
) -> LowerTree {
    use crate::layer::LayerIndex;
    use crate::layer::entry::{EntryKind, LayerEntry};
    use crate::layer::prepare::PreparedLayer;
    let mut data = Vec::new();
    let entries = entries
        .iter()
        .map(|(p, content)| LayerEntry {
            path: p.as_bytes().into(),
            meta: crate::merge::cases::META,
            kind: match content {
                None => EntryKind::Dir,
                Some(b) => {
                    let offset = data.len() as u64;
                    data.extend_from_slice(b);
                    EntryKind::File {
                        offset,
                        size: b.len() as u64,
                    }
                }
            },
            xattrs: Vec::new(),
        })
        .collect();
    let len = data.len() as u64;
    let layer = PreparedLayer::new(
        LayerIndex {
            entries,
            tar_size: len,
        },
        bytes(data),
    );
    LowerTree::build(&[layer]).unwrap()
}

fn read_all(cow: &Cow, ino: Ino, flags: i32) -> Vec<u8> {
    let fh = cow.open(ino, flags, ROOT).unwrap();
    let data = cow.read(ino, fh, 0, 1 << 16).unwrap();
    cow.release(fh);
    data
}

fn names(cow: &Cow, dir: Ino) -> Vec<String> {
    let fh = cow.opendir(dir).unwrap();
    let mut out = Vec::new();
    cow.readdir(dir, fh, 0, &mut |l| {
        out.push(String::from_utf8_lossy(l.name).into_owned());
        false
    })
    .unwrap();
    cow.release(fh);
    out
}

#[test]
fn cow_writes_reach_the_upper_and_keep_inode_numbers() {
    let t = tempfile::tempdir().unwrap();
    let tree = tree_with_data(
        t.path(),
        &[
            ("etc", None),
            ("etc/hosts", Some(b"hosts")),
            ("etc/gone", Some(b"gone")),
        ],
    );
    let cow = view(t.path(), tree, |_| {});
    let up = t.path().join("upper");
    let etc = cow.lookup(Ino::ROOT, b"etc").unwrap().ino;
    let hosts = cow.lookup(etc, b"hosts").unwrap();
    assert_eq!(read_all(&cow, hosts.ino, libc::O_RDONLY), b"hosts");
    assert!(!up.join("etc").exists(), "reading copies nothing up");

    // Writing copies up; the inode keeps its number.
    let fh = cow.open(hosts.ino, libc::O_WRONLY, ROOT).unwrap();
    assert_eq!(cow.write(fh, 0, b"HOSTS", false, false), Ok(5));
    cow.release(fh);
    assert_eq!(std::fs::read(up.join("etc/hosts")).unwrap(), b"HOSTS");
    assert_eq!(cow.lookup(etc, b"hosts").unwrap().ino, hosts.ino);

    // chmod: a metadata-only copy-up, whose data is still read from the lower file.
    let set = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    let gone = cow.lookup(etc, b"gone").unwrap().ino;
    assert_eq!(
        cow.setattr(gone, &set, None, ROOT).unwrap().mode & 0o7777,
        0o600
    );
    assert_eq!(read_all(&cow, gone, libc::O_RDONLY), b"gone");
    assert!(cow.is_metacopy(gone).unwrap());

    // Create, rename over, unlink; the listing follows.
    let (a, fh) = cow
        .create(etc, b"new", 0o644, libc::O_WRONLY, ROOT)
        .unwrap();
    cow.write(fh, 0, b"new", false, false).unwrap();
    cow.release(fh);
    cow.rename(etc, b"new", etc, b"hosts", 0).unwrap();
    assert_eq!(cow.lookup(etc, b"hosts").unwrap().ino, a.ino);
    // The replaced inode lives on for open files only, with no name.
    assert_eq!(cow.getattr(hosts.ino, None).unwrap().nlink, 0);
    cow.unlink(etc, b"gone").unwrap();
    assert_eq!(names(&cow, etc), [".", "..", "hosts"]);
    assert_eq!(cow.lookup(etc, b"gone").map(|a| a.ino), Err(Errno::ENOENT));

    // The upper holds what the view shows, and diff reads it the same way.
    let scanned = crate::changes::UpperTree::scan(&up).unwrap();
    let view = crate::changes::MergedView::new(cow.tree(), &scanned);
    let list: Vec<String> = crate::changes::diff(&view)
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), String::from_utf8_lossy(&c.path)))
        .collect();
    assert_eq!(list, ["C /etc", "D /etc/gone", "C /etc/hosts"]);
}

#[test]
fn cow_refuses_names_the_upper_format_reserves() {
    let t = tempfile::tempdir().unwrap();
    let cow = view(t.path(), lower(LOWER), |_| {});
    for name in [&b".wh.x"[..], b".wh..wh..opq", b".wh..wh.plnk"] {
        let made = cow.mkdir(Ino::ROOT, name, 0o755, ROOT).map(|a| a.ino);
        assert_eq!(made, Err(Errno::EINVAL), "{name:?}");
        let made = cow.create(Ino::ROOT, name, 0o644, libc::O_WRONLY, ROOT);
        assert_eq!(made.map(|(a, _)| a.ino), Err(Errno::EINVAL));
        assert_eq!(
            cow.rename(Ino::ROOT, b"top", Ino::ROOT, name, 0),
            Err(Errno::EINVAL)
        );
    }
    // Nothing reached the upper.
    let left: Vec<_> = std::fs::read_dir(t.path().join("upper"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(cow.lookup(Ino::ROOT, b"top").is_ok());
}

/// A read that finds its entry by path, with a rename of a directory above it in between
/// (as from another thread: the read holds no lock), runs again; the second run sees the
/// names still.
#[test]
fn cow_reads_racing_a_rename_run_again() {
    let t = tempfile::tempdir().unwrap();
    let tree = tree_with_data(t.path(), &[("a", None), ("a/f", Some(b"f"))]);
    let cow = view(t.path(), tree, |_| {});
    let a = cow.lookup(Ino::ROOT, b"a").unwrap().ino;
    let f = cow.lookup(a, b"f").unwrap().ino;
    // Copied up, so its attributes are read from the upper, by path.
    let fh = cow.open(f, libc::O_WRONLY, ROOT).unwrap();
    cow.release(fh);
    let runs = std::cell::Cell::new(0);
    let got = cow.stable(|| {
        runs.set(runs.get() + 1);
        let path = cow.path_of(f)?;
        if runs.get() == 1 {
            cow.rename(Ino::ROOT, b"a", Ino::ROOT, b"b", 0).unwrap();
        }
        let i = cow.inode(f)?;
        cow.attr(f, &i, &path)
    });
    assert_eq!(runs.get(), 2);
    assert_eq!(got.map(|a| a.size), Ok(1));
    // Without a change in between, once.
    runs.set(0);
    let once = cow.stable(|| {
        runs.set(runs.get() + 1);
        Ok(())
    });
    assert_eq!(once, Ok(()));
    assert_eq!(runs.get(), 1);
}

/// A merged directory's link count counted while a subdirectory is made in it is not kept:
/// the count is stale, and the change has dropped the cached one already.
#[test]
fn cow_link_count_counted_across_a_change_is_not_cached() {
    let t = tempfile::tempdir().unwrap();
    let tree = tree_with_data(t.path(), &[("d", None), ("d/sub", None)]);
    let cow = view(t.path(), tree, |_| {});
    let d = cow.lookup(Ino::ROOT, b"d").unwrap().ino;
    // Counted (as a getattr without the namespace lock would), then a mkdir lands before
    // the count is stored.
    let before = cow.names.load(std::sync::atomic::Ordering::SeqCst);
    let stale = cow.merged_nlink(d).unwrap();
    cow.mkdir(d, b"new", 0o755, ROOT).unwrap();
    cow.keep_nlink(d, stale, before).unwrap();
    assert_eq!(stale, 3);
    assert_eq!(cow.getattr(d, None).unwrap().nlink, 4);
    // Counted with no change in between: kept, and dropped by the next change.
    assert_eq!(cow.cached_nlink(d).unwrap(), 4);
    assert_eq!(cow.dir_nlink.lock().unwrap().get(&d), Some(&4));
    cow.rmdir(d, b"new").unwrap();
    assert_eq!(cow.getattr(d, None).unwrap().nlink, 3);
}

/// How long a test waits for something that must happen at once, before it calls it hung.
const HUNG: std::time::Duration = std::time::Duration::from_secs(60);

/// Layer bytes whose reads wait until the gate opens, so that a copy-up from them stays in
/// progress for as long as a test needs; counts the reads begun.
#[derive(Debug, Default)]
struct Gate {
    bytes: Vec<u8>,
    /// (reads begun, open)
    state: std::sync::Mutex<(u32, bool)>,
    changed: std::sync::Condvar,
}

impl Gate {
    /// Waits until a read has begun (and waits at the gate).
    fn wait_reading(&self) {
        let s = self.state.lock().unwrap();
        let (s, t) = self
            .changed
            .wait_timeout_while(s, HUNG, |s| s.0 == 0)
            .unwrap();
        assert!(!t.timed_out() && s.0 > 0, "no read began");
    }

    fn open(&self) {
        self.state.lock().unwrap().1 = true;
        self.changed.notify_all();
    }

    /// Asserts that the reads begun copied `len` bytes once (8 KiB each, and one at the end).
    fn assert_read_once(&self, len: usize) {
        let reads = self.state.lock().unwrap().0;
        let per_copy = len.div_ceil(8192) as u32;
        assert!(
            reads <= per_copy + 1,
            "{reads} reads for one copy of {per_copy}"
        );
    }
}

/// Runs `op` on a thread of `s` and waits at most [`HUNG`] for its result, so that a test
/// fails rather than hangs when `op` waits for what a copy holds.
fn meanwhile<'scope, T: Send + 'scope>(
    s: &'scope std::thread::Scope<'scope, '_>,
    op: impl FnOnce() -> T + Send + 'scope,
) -> Result<T, std::sync::mpsc::RecvTimeoutError> {
    let (tx, rx) = std::sync::mpsc::channel();
    s.spawn(move || {
        let _ = tx.send(op());
    });
    rx.recv_timeout(HUNG)
}

impl crate::layer::data::LayerBytes for Gate {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        s.0 += 1;
        self.changed.notify_all();
        let (_s, t) = self.changed.wait_timeout_while(s, HUNG, |s| !s.1).unwrap();
        if t.timed_out() {
            return Err(std::io::Error::from_raw_os_error(libc::EIO));
        }
        let start = (offset as usize).min(self.bytes.len());
        let n = buf.len().min(self.bytes.len() - start);
        buf[..n].copy_from_slice(&self.bytes[start..start + n]);
        Ok(n)
    }
}

/// A writable view over a tree whose file data waits at a gate.
fn gated_view(dir: &Path, entries: &[(&str, Option<&[u8]>)]) -> (Cow, Arc<Gate>) {
    let mut gate = None;
    let tree = tree_over(entries, |bytes| {
        let g = Arc::new(Gate {
            bytes,
            ..Gate::default()
        });
        gate = Some(g.clone());
        crate::layer::data::LayerData::shared(g)
    });
    (view(dir, tree, |_| {}), gate.unwrap())
}

/// While a file's data is being copied up (its layer's reads held at the gate), other files
/// can be looked up, stat'ed and created, and the copy-up then completes with the data.
#[test]
fn cow_copy_up_in_progress_leaves_the_rest_usable() {
    let t = tempfile::tempdir().unwrap();
    let big = vec![b'b'; 300_000];
    let (cow, gate) = gated_view(
        t.path(),
        &[
            ("etc", None),
            ("etc/big", Some(&big)),
            ("etc/other", Some(b"other")),
        ],
    );
    let etc = cow.lookup(Ino::ROOT, b"etc").unwrap().ino;
    let big_ino = cow.lookup(etc, b"big").unwrap().ino;
    std::thread::scope(|s| {
        let writer = s.spawn(|| cow.open(big_ino, libc::O_WRONLY, ROOT));
        gate.wait_reading();
        let got = meanwhile(s, || {
            let other = cow.lookup(etc, b"other").map(|a| a.size);
            let stat = cow.getattr(etc, None).map(|a| a.mode & libc::S_IFMT);
            let made = cow.create(etc, b"new", 0o644, libc::O_WRONLY, ROOT);
            let dir = cow.mkdir(Ino::ROOT, b"d", 0o755, ROOT).map(|_| ());
            if let Ok((_, fh)) = &made {
                cow.release(*fh);
            }
            (other, stat, made.map(|_| ()), dir)
        });
        gate.open();
        let fh = writer.join().unwrap().unwrap();
        assert_eq!(got, Ok((Ok(5), Ok(libc::S_IFDIR), Ok(()), Ok(()))));
        cow.write(fh, 0, b"B", false, false).unwrap();
        cow.release(fh);
    });
    let up = t.path().join("upper");
    let mut want = big.clone();
    want[0] = b'B';
    assert!(std::fs::read(up.join("etc/big")).unwrap() == want);
    assert!(up.join("etc/new").is_file() && up.join("d").is_dir());
    assert_eq!(std::fs::read_dir(t.path().join("work")).unwrap().count(), 0);
}

/// Two writers opening one lower file at once: one copy-up, one upper file, both handles on
/// it, nothing left in the work directory.
#[test]
fn cow_racing_copy_ups_of_one_file_make_one_upper_file() {
    let t = tempfile::tempdir().unwrap();
    let data = vec![b'x'; 200_000];
    let (cow, gate) = gated_view(t.path(), &[("f", Some(&data))]);
    let f = cow.lookup(Ino::ROOT, b"f").unwrap().ino;
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| cow.open(f, libc::O_RDWR, ROOT));
        let b = s.spawn(|| cow.open(f, libc::O_RDWR, ROOT));
        gate.wait_reading();
        gate.open();
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_ne!(a, b);
    // One file behind both: a write through one shows through the other.
    cow.write(a, 1, b"A", false, false).unwrap();
    let got = cow.read(f, b, 0, 4).unwrap();
    assert_eq!(got, b"xAxx");
    cow.release(a);
    cow.release(b);
    let up = t.path().join("upper");
    let mut want = data.clone();
    want[1] = b'A';
    assert!(std::fs::read(up.join("f")).unwrap() == want);
    assert!(!cow.is_metacopy(f).unwrap());
    assert_eq!(std::fs::read_dir(t.path().join("work")).unwrap().count(), 0);
    // The data was read once: the second writer waited for the first one's copy.
    gate.assert_read_once(data.len());
}

/// An upper file unlinked while open still answers `fstat` (a getattr without a handle) as
/// it is now, writes through the open handle included, and keeps that handle's file rather
/// than opening another; one unlinked with nothing open answers too (an `O_PATH` descriptor,
/// which the daemon never hears of, may still hold it).
#[test]
fn cow_unlinked_file_answers_stat_as_it_is_now() {
    let t = tempfile::tempdir().unwrap();
    let cow = view(t.path(), tree_with_data(t.path(), &[("d", None)]), |_| {});
    let d = cow.lookup(Ino::ROOT, b"d").unwrap().ino;
    let (open, fh) = cow.create(d, b"open", 0o640, libc::O_RDWR, ROOT).unwrap();
    let (closed, cfh) = cow.create(d, b"closed", 0o600, libc::O_RDWR, ROOT).unwrap();
    cow.write(cfh, 0, b"cl", false, false).unwrap();
    cow.release(cfh);
    let held = cow.open_file_of(open.ino).unwrap();
    assert!(cow.open_file_of(closed.ino).is_none());
    cow.unlink(d, b"open").unwrap();
    cow.unlink(d, b"closed").unwrap();
    cow.write(fh, 0, b"written after", false, false).unwrap();
    let a = cow.getattr(open.ino, None).unwrap();
    assert_eq!((a.nlink, a.size, a.mode & 0o7777), (0, 13, 0o640));
    let a = cow.getattr(closed.ino, None).unwrap();
    assert_eq!((a.nlink, a.size, a.mode & 0o7777), (0, 2, 0o600));
    let kept = |ino| {
        let t = cow.read_inodes().unwrap();
        t.get(ino)
            .unwrap()
            .last
            .as_ref()
            .and_then(|l| l.file.clone())
    };
    assert!(Arc::ptr_eq(&kept(open.ino).unwrap(), &held));
    cow.release(fh);
    assert!(cow.open_file_of(open.ino).is_none());
    assert_eq!(names(&cow, d), [".", ".."]);
}

/// A rename of a lower file copies its data before taking the namespace lock: while the
/// copy waits at the gate, creates go on; a writer opening the file meanwhile makes no copy
/// of its own and writes to the file under its new name.
#[test]
fn cow_rename_of_a_lower_file_racing_a_writer_makes_one_copy() {
    let t = tempfile::tempdir().unwrap();
    let data = vec![b'r'; 200_000];
    let (cow, gate) = gated_view(t.path(), &[("d", None), ("d/f", Some(&data))]);
    let d = cow.lookup(Ino::ROOT, b"d").unwrap().ino;
    let f = cow.lookup(d, b"f").unwrap().ino;
    let fh = std::thread::scope(|s| {
        let renamer = s.spawn(|| cow.rename(d, b"f", Ino::ROOT, b"g", 0));
        gate.wait_reading();
        let writer = s.spawn(|| cow.open(f, libc::O_RDWR, ROOT));
        let made = meanwhile(s, || {
            let made = cow.create(d, b"new", 0o644, libc::O_WRONLY, ROOT);
            if let Ok((_, fh)) = &made {
                cow.release(*fh);
            }
            made.map(|_| ())
        });
        gate.open();
        assert_eq!(made, Ok(Ok(())));
        assert_eq!(renamer.join().unwrap(), Ok(()));
        writer.join().unwrap().unwrap()
    });
    cow.write(fh, 0, b"R", false, false).unwrap();
    cow.release(fh);
    let up = t.path().join("upper");
    let mut want = data.clone();
    want[0] = b'R';
    assert!(std::fs::read(up.join("g")).unwrap() == want);
    assert!(up.join("d/new").is_file());
    assert_eq!(cow.lookup(Ino::ROOT, b"g").unwrap().ino, f);
    assert_eq!(cow.lookup(d, b"f").map(|a| a.ino), Err(Errno::ENOENT));
    assert_eq!(std::fs::read_dir(t.path().join("work")).unwrap().count(), 0);
    gate.assert_read_once(data.len());
}

/// A hard link to a lower file copies its data before taking the namespace lock.
#[test]
fn cow_link_of_a_lower_file_copies_without_the_namespace_lock() {
    let t = tempfile::tempdir().unwrap();
    let data = vec![b'l'; 200_000];
    let (cow, gate) = gated_view(t.path(), &[("f", Some(&data))]);
    let f = cow.lookup(Ino::ROOT, b"f").unwrap().ino;
    std::thread::scope(|s| {
        let linker = s.spawn(|| cow.link(f, Ino::ROOT, b"h"));
        gate.wait_reading();
        let made = meanwhile(s, || cow.mkdir(Ino::ROOT, b"d", 0o755, ROOT).map(|_| ()));
        gate.open();
        assert_eq!(made, Ok(Ok(())));
        assert_eq!(linker.join().unwrap().map(|a| (a.ino, a.nlink)), Ok((f, 2)));
    });
    let up = t.path().join("upper");
    assert!(std::fs::read(up.join("h")).unwrap() == data);
    use std::os::unix::fs::MetadataExt;
    let ino = |n: &str| std::fs::metadata(up.join(n)).unwrap().ino();
    assert_eq!(ino("f"), ino("h"));
    assert_eq!(std::fs::read_dir(t.path().join("work")).unwrap().count(), 0);
}

/// Reads one entry of `dir` at `offset`: its name and the offset to go on from.
fn one_entry(cow: &Cow, dir: Ino, offset: u64) -> Option<(String, u64)> {
    let mut got = None;
    cow.readdir(dir, crate::view::Fh::NONE, offset, &mut |l| {
        got = Some((String::from_utf8_lossy(l.name).into_owned(), l.next));
        true
    })
    .unwrap();
    got
}

#[test]
fn cow_listings_read_in_pieces_go_on_in_their_snapshot() {
    let t = tempfile::tempdir().unwrap();
    let tree = tree_with_data(
        t.path(),
        &[("d", None), ("d/b", Some(b"b")), ("d/c", Some(b"c"))],
    );
    let cow = view(t.path(), tree, |_| {});
    let d = cow.lookup(Ino::ROOT, b"d").unwrap().ino;
    // Two listings from the start, one entry per request; the directory changes between.
    let (mut first, mut second) = (Vec::new(), Vec::new());
    let mut at = 0;
    for _ in 0..3 {
        let (name, next) = one_entry(&cow, d, at).unwrap();
        first.push(name);
        at = next;
    }
    let (_, fh) = cow.create(d, b"a", 0o644, libc::O_WRONLY, ROOT).unwrap();
    cow.release(fh);
    cow.unlink(d, b"c").unwrap();
    let mut again = 0;
    while let Some((name, next)) = one_entry(&cow, d, again) {
        second.push(name);
        again = next;
    }
    while let Some((name, next)) = one_entry(&cow, d, at) {
        first.push(name);
        at = next;
    }
    assert_eq!(first, [".", "..", "b", "c"]);
    assert_eq!(second, [".", "..", "a", "b"]);
    // Both were read to their end, so neither snapshot is kept.
    assert!(cow.listings.lock().unwrap().map.is_empty());
    assert_eq!(names(&cow, d), [".", "..", "a", "b"]);
}

/// Upper directories are kept open by path; after a directory moves, is exchanged or goes,
/// each path reaches the directory now at it, never one kept from before.
#[test]
fn cow_entries_go_where_their_directory_is_now() {
    let t = tempfile::tempdir().unwrap();
    let tree = tree_with_data(t.path(), &[("d", None), ("d/low", Some(b"l"))]);
    let cow = view(t.path(), tree, |_| {});
    let up = t.path().join("upper");
    let touch = |dir: Ino, name: &[u8]| {
        let (_, fh) = cow.create(dir, name, 0o644, libc::O_WRONLY, ROOT).unwrap();
        cow.release(fh);
    };
    let mkdir = |name: &[u8]| cow.mkdir(Ino::ROOT, name, 0o755, ROOT).unwrap().ino;
    // Empties the directory (its entries are `files`), then removes it.
    let rmdir = |name: &[u8], dir: Ino, files: &[&[u8]]| {
        for f in files {
            cow.unlink(dir, f).unwrap();
        }
        cow.rmdir(Ino::ROOT, name).unwrap();
    };
    let on_disk = |dir: &str| {
        let mut n: Vec<String> = std::fs::read_dir(up.join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    };

    // Moved: the old path is a new directory.
    let a = mkdir(b"a");
    touch(a, b"f1");
    cow.rename(Ino::ROOT, b"a", Ino::ROOT, b"b", 0).unwrap();
    let a2 = mkdir(b"a");
    touch(a2, b"f2");
    touch(a, b"f1b");
    assert_eq!(
        (on_disk("a"), on_disk("b")),
        (vec!["f2".into()], vec!["f1".to_string(), "f1b".into()])
    );

    // Exchanged: each name's entries follow its directory.
    cow.rename(Ino::ROOT, b"a", Ino::ROOT, b"b", libc::RENAME_EXCHANGE)
        .unwrap();
    touch(a2, b"f3");
    assert_eq!(on_disk("b"), ["f2", "f3"]);
    assert_eq!(on_disk("a"), ["f1", "f1b"]);

    // Removed and made again.
    rmdir(b"b", a2, &[b"f2", b"f3"]);
    let b = mkdir(b"b");
    touch(b, b"f4");
    assert_eq!(on_disk("b"), ["f4"]);

    // A lower directory copied up, deleted (a whiteout over its upper copy), made again.
    let d = cow.lookup(Ino::ROOT, b"d").unwrap().ino;
    touch(d, b"x");
    rmdir(b"d", d, &[b"x", b"low"]);
    let d2 = mkdir(b"d");
    touch(d2, b"y");
    assert_eq!(on_disk("d"), ["y"]);
    assert_eq!(names(&cow, d2), [".", "..", "y"]);
}
