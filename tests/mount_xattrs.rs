//! Attributes the kernel asks of every entry, on read-only and writable mounts alike: the
//! image's POSIX ACLs, which the kernel caches and enforces as on kernel overlayfs over the
//! same layers, and `security.selinux`, answered as a filesystem without labels does when the
//! image has none.
#![allow(missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::harness::{self, MountGuard, MountOpts};
use common::listing::{get_xattr, list_xattrs};
use common::overlay::{extract_layers, kernel_overlay};
use common::{ImageDef, Sandbox};

const ACL: &[u8] = b"system.posix_acl_access";
const SELINUX: &[u8] = b"security.selinux";
/// The user the ACL names (nobody), who runs the reads.
const NOBODY: u32 = 65534;

/// An access ACL in the kernel's xattr form, as a spec token: owner `rw-`,
/// `user:nobody:---`, group `r--`, mask `r--`, other `r--`.
const ACL_DENYING_NOBODY: &str = concat!(
    r"\x02\x00\x00\x00",
    r"\x01\x00\x06\x00\xff\xff\xff\xff",
    r"\x02\x00\x00\x00\xfe\xff\x00\x00",
    r"\x04\x00\x04\x00\xff\xff\xff\xff",
    r"\x10\x00\x04\x00\xff\xff\xff\xff",
    r"\x20\x00\x04\x00\xff\xff\xff\xff",
);

/// Whether nobody can read `p`.
fn nobody_reads(p: &Path) -> bool {
    Command::new("setpriv")
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "cat"])
        .arg(p)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("setpriv")
        .success()
}

/// The errno of a getxattr, or its value.
fn answer(p: &Path, name: &[u8]) -> Result<Vec<u8>, Option<i32>> {
    get_xattr(p, name).map_err(|e| e.raw_os_error())
}

/// What reading and asking for the ACL gives, as lines to compare.
fn acl_view(m: &Path) -> Vec<String> {
    let (f, g) = (m.join("d/f"), m.join("d/g"));
    vec![
        format!("read f: {}", nobody_reads(&f)),
        format!("read g: {}", nobody_reads(&g)),
        format!("acl f: {:02x?}", answer(&f, ACL)),
        format!("acl g: {:?}", answer(&g, ACL)),
    ]
}

/// `ls -l` of `dir` succeeds and shows `n` entries.
fn ls_lists(dir: &Path, n: usize) {
    let out = Command::new("ls").arg("-l").arg(dir).output().expect("ls");
    assert!(out.status.success(), "ls -l {}: {out:?}", dir.display());
    let lines = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(lines, n + 1, "ls -l {}: {out:?}", dir.display());
}

fn read_only(image: &Path, sb: &Sandbox) -> Option<MountGuard> {
    MountGuard::start(MountOpts::new(image, &sb.cache()).args(&["--read-only"]))
}

#[test]
fn mount_xattrs_image_acls_are_enforced_as_on_overlayfs() {
    let spec = format!(
        "L0: dir /d; file /d/f 0644 'secret' xattr=system.posix_acl_access='{ACL_DENYING_NOBODY}'; file /d/g 0644 'open'\n"
    );
    let sb = Sandbox::new();
    let def = ImageDef::from_spec(&spec);
    let image = sb.image(&spec);
    let lowers = extract_layers(&def.layers, &sb.path("lower"));
    let Some(k) = kernel_overlay(&lowers, sb.dir.path(), "") else {
        return;
    };
    let want = acl_view(&k.mnt);
    k.unmount();
    assert!(
        want.contains(&"read f: false".to_string()),
        "the kernel enforces the ACL: {want:#?}"
    );
    let Some(m) = read_only(&image, &sb) else {
        return;
    };
    let got = acl_view(m.path());
    m.unmount();
    assert_eq!(got, want, "read-only");
    let Some(m) = harness::mount_with_upper(&image, &sb.cache(), &sb.path("r-upper")) else {
        return;
    };
    let got = acl_view(m.path());
    m.unmount();
    assert_eq!(got, want, "writable");
}

#[test]
fn mount_xattrs_selinux_of_an_unlabelled_image_is_unsupported() {
    const SPEC: &str = "L0: dir /d; file /d/f 0644 'f'; file /d/g 0644 'g' xattr=user.k=v\n";
    let sb = Sandbox::new();
    let image = sb.image(SPEC);
    let Some(m) = read_only(&image, &sb) else {
        return;
    };
    let (f, g) = (m.at("/d/f"), m.at("/d/g"));
    let unsupported = Err(Some(libc::EOPNOTSUPP));
    assert_eq!(answer(&f, SELINUX), unsupported);
    assert_eq!(answer(&m.at("/d"), SELINUX), unsupported);
    // Every other name, and the list, as before.
    assert_eq!(answer(&g, b"user.k"), Ok(b"v".to_vec()));
    assert_eq!(answer(&f, b"user.nothing"), Err(Some(libc::ENODATA)));
    assert_eq!(list_xattrs(&g).unwrap(), [&b"user.k"[..]]);
    ls_lists(&m.at("/d"), 2);
    m.unmount();

    // Writable: lower entries the same; upper ones answer what their upper file holds.
    let up = sb.path("r-upper");
    let Some(m) = harness::mount_with_upper(&image, &sb.cache(), &up) else {
        return;
    };
    assert_eq!(answer(&m.at("/d/f"), SELINUX), unsupported);
    std::fs::write(m.at("/d/new"), "new").unwrap();
    std::fs::set_permissions(
        m.at("/d/g"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let (new, g) = (
        answer(&m.at("/d/new"), SELINUX),
        answer(&m.at("/d/g"), SELINUX),
    );
    ls_lists(&m.at("/d"), 3);
    m.unmount();
    assert_eq!(new, answer(&up.join("d/new"), SELINUX), "created");
    assert_eq!(g, answer(&up.join("d/g"), SELINUX), "copied up");
    assert_ne!(new, unsupported);
}

#[test]
fn mount_xattrs_selinux_of_a_labelled_image_is_its_labels() {
    const LABEL: &str = "system_u:object_r:etc_t:s0";
    let spec = format!(
        "L0: dir /d; file /d/f 0644 'f'; file /d/l 0644 'l' xattr=security.selinux={LABEL}\n"
    );
    let sb = Sandbox::new();
    let image = sb.image(&spec);
    let Some(m) = read_only(&image, &sb) else {
        return;
    };
    let (l, f) = (
        answer(&m.at("/d/l"), SELINUX),
        answer(&m.at("/d/f"), SELINUX),
    );
    ls_lists(&m.at("/d"), 2);
    m.unmount();
    assert_eq!(l, Ok(LABEL.as_bytes().to_vec()));
    assert_eq!(f, Err(Some(libc::ENODATA)));
    let Some(m) = harness::mount_with_upper(&image, &sb.cache(), &sb.path("r-upper")) else {
        return;
    };
    let f = answer(&m.at("/d/f"), SELINUX);
    m.unmount();
    assert_eq!(f, Err(Some(libc::ENODATA)));
}
