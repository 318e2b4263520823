//! What the kernel keeps of a writable mount stays right: POSIX ACLs, which the kernel caches
//! and enforces, behave as on kernel overlayfs over the same layers (and outlive the mount);
//! a lower file's cached pages give way to its data once it is written; cached listings
//! follow every change made through the mount.
#![allow(missing_docs)]

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::listing::get_xattr;
use common::overlay::{extract_layers, kernel_overlay, remove_xattr, set_xattr};
use common::{ImageDef, Sandbox};

const KERNEL_OPTS: &str = "redirect_dir=on,metacopy=on";
const ACL: &str = "system.posix_acl_access";
/// The user the ACL names (nobody), who runs the reads.
const NOBODY: u32 = 65534;

/// An access ACL in the kernel's xattr form: owner `rw-`, `user:NOBODY:---`, group `r--`,
/// mask `mask`, other `r--`.
fn acl_denying_nobody(mask: u16) -> Vec<u8> {
    const UNDEFINED: u32 = u32::MAX;
    let entries: [(u16, u16, u32); 5] = [
        (0x01, 6, UNDEFINED), // ACL_USER_OBJ
        (0x02, 0, NOBODY),    // ACL_USER
        (0x04, 4, UNDEFINED), // ACL_GROUP_OBJ
        (0x10, mask, UNDEFINED),
        (0x20, 4, UNDEFINED), // ACL_OTHER
    ];
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

fn set_acl(p: &Path, value: &[u8]) -> String {
    outcome(set_xattr(p, ACL.as_bytes(), value))
}

fn remove_acl(p: &Path) -> String {
    outcome(remove_xattr(p, ACL.as_bytes()))
}

fn get_acl(p: &Path) -> String {
    match get_xattr(p, ACL.as_bytes()) {
        Ok(v) => format!("{v:02x?}"),
        Err(e) => outcome(Err(e)),
    }
}

fn outcome(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

/// Whether nobody can read `p`.
fn nobody_reads(p: &Path) -> bool {
    std::process::Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "cat"])
        .arg(p)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv")
        .success()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// One run of ACL changes and reads on a mount, as lines to compare.
fn acl_steps(m: &Path) -> Vec<String> {
    let (f, g) = (m.join("d/f"), m.join("d/g"));
    let mut out = vec![
        format!("read before: {}", nobody_reads(&f)),
        format!("set: {}", set_acl(&f, &acl_denying_nobody(4))),
        format!("read f: {}", nobody_reads(&f)),
        format!("read g: {}", nobody_reads(&g)),
        format!("acl: {}", get_acl(&f)),
        format!("mode: {:o}", mode(&f)),
    ];
    // chmod sets the mask from the group bits, which the kernel must not answer from a
    // stale cached ACL.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o604)).unwrap();
    out.push(format!("acl after chmod: {}", get_acl(&f)));
    out.push(format!("read after chmod: {}", nobody_reads(&f)));
    out.push(format!("remove: {}", remove_acl(&f)));
    out.push(format!("read after remove: {}", nobody_reads(&f)));
    out.push(format!("acl after remove: {}", get_acl(&f)));
    // Set again, to outlive the mount.
    out.push(format!(
        "set again: {}",
        set_acl(&f, &acl_denying_nobody(4))
    ));
    out.push(format!("read f again: {}", nobody_reads(&f)));
    out
}

#[test]
fn cow_cache_acls_are_enforced_and_kept_as_on_overlayfs() {
    const SPEC: &str = "L0: dir /d; file /d/f 0644 'secret'; file /d/g 0644 'open'\n";
    let sb = Sandbox::new();
    let def = ImageDef::from_spec(SPEC);
    let image = sb.image(SPEC);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let Some(k) = kernel_overlay(&lowers, sb.dir.path(), KERNEL_OPTS) else {
        return;
    };
    let want = acl_steps(&k.mnt);
    k.unmount();
    assert!(
        want.contains(&"read f: false".to_string()),
        "the kernel enforces the ACL: {want:#?}"
    );
    // As root, the mount lets other users in by default (allow_other).
    let (cache, ru) = (sb.cache(), sb.path("r-upper"));
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &ru) else {
        return;
    };
    let got = acl_steps(m.path());
    m.unmount();
    assert_eq!(got, want);
    // Kept in the upper: a new mount still enforces it.
    let Some(m) = common::harness::mount_with_upper(&image, &cache, &ru) else {
        return;
    };
    let f = m.at("/d/f");
    let again = (nobody_reads(&f), get_acl(&f));
    m.unmount();
    assert_eq!(again, (false, get_acl(&sb.path("k-upper/d/f"))));
}

#[test]
fn cow_cache_pages_of_a_lower_file_give_way_to_its_new_data() {
    const SPEC: &str = "L0: dir /d; file /d/f 0644 'lower data'; file /d/t 0644 'truncated'\n";
    let sb = Sandbox::new();
    let image = sb.image(SPEC);
    let Some(m) = common::harness::mount_with_upper(&image, &sb.cache(), &sb.path("r-upper"))
    else {
        return;
    };
    let (f, t) = (m.at("/d/f"), m.at("/d/t"));
    // Read twice: the second open keeps the pages of the first.
    for _ in 0..2 {
        assert_eq!(std::fs::read(&f).unwrap(), b"lower data");
    }
    // A descriptor opened read-only before the copy-up, and mapped pages of it.
    let mut early = std::fs::File::open(&f).unwrap();
    {
        let mut w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        w.write_all(b"UPPER").unwrap();
    }
    assert_eq!(std::fs::read(&f).unwrap(), b"UPPER data");
    let mut s = String::new();
    early.seek(SeekFrom::Start(0)).unwrap();
    early.read_to_string(&mut s).unwrap();
    assert!(s == "UPPER data" || s == "lower data", "{s:?}");
    // Appended and truncated through the shell's redirections.
    std::fs::read(&t).unwrap();
    std::fs::write(&t, b"new").unwrap();
    assert_eq!(std::fs::read(&t).unwrap(), b"new");
    let mut a = std::fs::OpenOptions::new().append(true).open(&t).unwrap();
    a.write_all(b"+more").unwrap();
    drop(a);
    assert_eq!(std::fs::read(&t).unwrap(), b"new+more");
    drop(early);
    m.unmount();
    assert_eq!(
        std::fs::read(sb.path("r-upper/d/f")).unwrap(),
        b"UPPER data"
    );
}

fn names(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn cow_cache_listings_follow_changes_through_the_mount() {
    const SPEC: &str = "L0: dir /d; file /d/a 0644 'a'; file /d/b 0644 'b'; dir /d/s; dir /e\n";
    let sb = Sandbox::new();
    let image = sb.image(SPEC);
    let Some(m) = common::harness::mount_with_upper(&image, &sb.cache(), &sb.path("r-upper"))
    else {
        return;
    };
    let (d, e) = (m.at("/d"), m.at("/e"));
    // Each listing twice: the second comes from the kernel's cache.
    let list = |want: &[&str], what: &str| {
        for _ in 0..2 {
            assert_eq!(names(&d), want, "{what}");
        }
    };
    list(&["a", "b", "s"], "as in the image");
    std::fs::write(d.join("c"), "c").unwrap();
    list(&["a", "b", "c", "s"], "after a create");
    std::fs::remove_file(d.join("a")).unwrap();
    list(&["b", "c", "s"], "after an unlink of a lower file");
    std::fs::rename(d.join("b"), e.join("b")).unwrap();
    list(&["c", "s"], "after a rename out");
    assert_eq!(names(&e), ["b"]);
    std::fs::rename(e.join("b"), d.join("z")).unwrap();
    list(&["c", "s", "z"], "after a rename in");
    std::fs::remove_dir(d.join("s")).unwrap();
    std::fs::create_dir(d.join("s")).unwrap();
    std::fs::write(d.join("s/new"), "").unwrap();
    list(&["c", "s", "z"], "after a directory replaced");
    assert_eq!(names(&d.join("s")), ["new"]);
    std::os::unix::fs::symlink("c", d.join("l")).unwrap();
    list(&["c", "l", "s", "z"], "after a symlink");
    std::fs::hard_link(d.join("c"), e.join("c2")).unwrap();
    assert_eq!(names(&e), ["c2"]);
    std::fs::rename(d.join("c"), d.join("z")).unwrap();
    list(&["l", "s", "z"], "after a rename over another name");
    std::fs::remove_file(e.join("c2")).unwrap();
    assert!(names(&e).is_empty());
    m.unmount();
}
