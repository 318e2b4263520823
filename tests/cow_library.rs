//! The writable view as a library: an image built and opened in code, a writable view over
//! temporary directories, driven through `rimgfs::view::View` the way the FUSE adapter drives
//! it, without a kernel mount. What it writes is checked on disk, through `changes` (what
//! `rimgfs diff` reads), and through a second view over the same upper.
#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::sync::Arc;

use nix::errno::Errno;
use rimgfs::changes::{MergedView, UpperTree, diff};
use rimgfs::cow::Cow;
use rimgfs::upper::Upper;
use rimgfs::view::{Caller, Fh, Ino, LowerView, SetAttr, View};

use common::{Sandbox, open_spec};

const SPEC: &str = "\
L0: dir /etc; file /etc/hosts 0644 'hosts'; file /etc/passwd 0644 'root:x:0:0'
L0: dir /var; dir /var/lib; file /var/lib/db 0600 'db'
L1: dir /etc; file /etc/motd 0644 'motd'
";

const ROOT: Caller = Caller { uid: 0, gid: 0 };

/// A writable view of the image over `upper` (and its work directory beside it).
fn writable(sb: &Sandbox, upper: &Path) -> Cow {
    let img = open_spec(sb, SPEC);
    let lower = LowerView::new(Arc::new(img.tree), img.stack.layer_labels());
    let work = upper.with_extension("work");
    Cow::new(lower, Upper::open(upper, &work).unwrap())
}

/// Looks a path up from the root, counting a kernel reference at each step.
fn walk(v: &dyn View, path: &str) -> Result<Ino, Errno> {
    let mut ino = Ino::ROOT;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        ino = v.lookup(ino, comp.as_bytes())?.ino;
    }
    Ok(ino)
}

fn read(v: &dyn View, path: &str) -> Vec<u8> {
    let ino = walk(v, path).unwrap();
    let fh = v.open(ino, libc::O_RDONLY, ROOT).unwrap();
    let data = v.read(ino, fh, 0, 1 << 20).unwrap();
    v.release(ino, fh);
    data
}

fn write(v: &dyn View, ino: Ino, fh: Fh, data: &[u8]) {
    assert_eq!(v.write(fh, 0, data, false, false), Ok(data.len() as u32));
    v.release(ino, fh);
}

fn listing(v: &dyn View, path: &str) -> Vec<String> {
    let ino = walk(v, path).unwrap();
    let fh = v.opendir(ino).unwrap();
    let mut names = Vec::new();
    v.readdir(ino, fh, 0, &mut |l| {
        names.push(String::from_utf8_lossy(l.name).into_owned());
        false
    })
    .unwrap();
    v.release(ino, fh);
    names
}

#[test]
fn cow_view_as_a_library_writes_an_overlayfs_upper() {
    let sb = Sandbox::new();
    let upper = sb.path("upper");
    let cow = writable(&sb, &upper);
    let v: &dyn View = &cow;
    assert_eq!(read(v, "/etc/hosts"), b"hosts");
    assert_eq!(read(v, "/etc/motd"), b"motd");

    // A write copies the file up; a new directory and file; a rename of a lower directory;
    // a deletion; a chmod (metadata only).
    let hosts = walk(v, "/etc/hosts").unwrap();
    let fh = v.open(hosts, libc::O_WRONLY, ROOT).unwrap();
    write(v, hosts, fh, b"HOSTS");
    let etc = walk(v, "/etc").unwrap();
    let d = v.mkdir(etc, b"d", 0o750, ROOT).unwrap().ino;
    let (f, fh) = v.create(d, b"f", 0o640, libc::O_WRONLY, ROOT).unwrap();
    write(v, f.ino, fh, b"new");
    let var = walk(v, "/var").unwrap();
    v.rename(var, b"lib", var, b"lib2", 0).unwrap();
    v.unlink(etc, b"passwd").unwrap();
    let motd = walk(v, "/etc/motd").unwrap();
    let chmod = SetAttr {
        mode: Some(0o600),
        ..SetAttr::default()
    };
    assert_eq!(
        v.setattr(motd, &chmod, None, ROOT).unwrap().mode & 0o7777,
        0o600
    );

    assert_eq!(read(v, "/etc/hosts"), b"HOSTS");
    assert_eq!(read(v, "/etc/d/f"), b"new");
    assert_eq!(read(v, "/var/lib2/db"), b"db");
    assert_eq!(read(v, "/etc/motd"), b"motd");
    assert_eq!(walk(v, "/etc/passwd"), Err(Errno::ENOENT));
    assert_eq!(walk(v, "/var/lib"), Err(Errno::ENOENT));
    assert_eq!(listing(v, "/etc"), [".", "..", "d", "hosts", "motd"]);
    // Inode numbers: a lower entry keeps its own through copy-up.
    assert_eq!(walk(v, "/etc/hosts").unwrap(), hosts);

    // On disk: overlayfs's upper format.
    assert_eq!(std::fs::read(upper.join("etc/hosts")).unwrap(), b"HOSTS");
    assert_eq!(std::fs::read(upper.join("etc/d/f")).unwrap(), b"new");
    let passwd = std::fs::symlink_metadata(upper.join("etc/passwd"));
    let fallback = std::fs::symlink_metadata(upper.join("etc/.wh.passwd"));
    assert!(
        passwd.is_ok() || fallback.is_ok(),
        "no whiteout of /etc/passwd"
    );
    assert!(
        !upper.join("var/lib2/db").exists(),
        "a renamed directory moves alone"
    );

    // `changes` (what diff and commit read) sees the changes the view shows.
    let scanned = UpperTree::scan(&upper).unwrap();
    let list: Vec<String> = diff(&MergedView::new(cow.lower().tree(), &scanned))
        .unwrap()
        .iter()
        .map(|c| format!("{} {}", c.kind.letter(), String::from_utf8_lossy(&c.path)))
        .collect();
    assert_eq!(
        list,
        [
            "C /etc",
            "A /etc/d",
            "A /etc/d/f",
            "C /etc/hosts",
            "C /etc/motd",
            "D /etc/passwd",
            "C /var",
            "D /var/lib",
            "A /var/lib2",
            "A /var/lib2/db",
        ]
    );

    // Another view over the same upper shows the same tree.
    drop(cow);
    let again = writable(&sb, &upper);
    let v: &dyn View = &again;
    assert_eq!(read(v, "/etc/hosts"), b"HOSTS");
    assert_eq!(read(v, "/var/lib2/db"), b"db");
    assert_eq!(walk(v, "/etc/passwd"), Err(Errno::ENOENT));
    assert_eq!(listing(v, "/etc"), [".", "..", "d", "hosts", "motd"]);
    assert_eq!(walk(v, "/etc/hosts").unwrap(), hosts);
}

#[test]
fn cow_view_as_a_library_refuses_what_rename_refuses() {
    let sb = Sandbox::new();
    let cow = writable(&sb, &sb.path("upper"));
    let v: &dyn View = &cow;
    let (etc, var) = (walk(v, "/etc").unwrap(), walk(v, "/var").unwrap());
    let lib = walk(v, "/var/lib").unwrap();
    // (directory, name, new directory, new name, flags, error)
    type Case<'a> = (Ino, &'a [u8], Ino, &'a [u8], u32, Errno);
    let cases: &[Case<'_>] = &[
        (etc, b"nope", etc, b"x", 0, Errno::ENOENT),
        (
            etc,
            b"hosts",
            etc,
            b"motd",
            libc::RENAME_NOREPLACE,
            Errno::EEXIST,
        ),
        (
            etc,
            b"hosts",
            etc,
            b"x",
            libc::RENAME_EXCHANGE,
            Errno::ENOENT,
        ),
        (var, b"lib", lib, b"x", 0, Errno::EINVAL),
        (etc, b"hosts", Ino::ROOT, b"var", 0, Errno::EISDIR),
        (var, b"lib", etc, b"hosts", 0, Errno::ENOTDIR),
        (Ino::ROOT, b"var", Ino::ROOT, b"etc", 0, Errno::ENOTEMPTY),
        (
            etc,
            b"hosts",
            etc,
            b"x",
            libc::RENAME_WHITEOUT,
            Errno::EINVAL,
        ),
    ];
    for &(p, n, np, nn, flags, want) in cases {
        let got = v.rename(p, n, np, nn, flags);
        assert_eq!(
            got,
            Err(want),
            "{:?} -> {:?}",
            String::from_utf8_lossy(n),
            nn
        );
    }
    // Nothing was copied up by a refused rename.
    assert!(
        std::fs::read_dir(sb.path("upper"))
            .unwrap()
            .next()
            .is_none()
    );
}
