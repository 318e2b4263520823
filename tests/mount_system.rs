//! rimgfs as the system mounts it: mount(8) and fstab entries (through mount.fuse3), the
//! type and source the kernel lists, and who may enter a mount made by root.
//!
//! The mount(8) tests run in a private mount namespace (`unshare --mount`) in which the
//! binary under test is bind-mounted as `/usr/local/bin/rimgfs`, where mount.fuse3's shell
//! finds it, so the host's `/usr/local/bin` and mount table are never touched. Every test
//! needs root; without it (or FUSE) they print `skipped: <reason>`, except under `CI=true`.

#![allow(missing_docs)]

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::harness::{self, is_mounted, mount_entry, poll_until};
use common::overlay::{extract_layers, kernel_overlay};
use common::spec::Spec;
use common::*;

/// Root and FUSE, or a skip (a failure under CI).
fn require_root_fuse() -> bool {
    if !nix::unistd::geteuid().is_root() {
        return harness::skip("mounting as root needs root");
    }
    harness::require_fuse()
}

/// The fields of a mountinfo line after the ` - ` separator: type, source, super options.
fn fs_fields(line: &str) -> (String, String, String) {
    let tail = line.split(" - ").nth(1).unwrap_or_else(|| panic!("{line}"));
    let mut f = tail.split(' ').map(str::to_string);
    let mut next = || f.next().unwrap_or_default();
    (next(), next(), next())
}

/// The per-mount options of a mountinfo line (`ro,nosuid,...`).
fn mount_flags(line: &str) -> Vec<String> {
    let flags = line.split(' ').nth(5).unwrap_or_default();
    flags.split(',').map(str::to_string).collect()
}

/// Kills, at drop, the daemons still serving any of these mount points: a daemon left in a
/// private mount namespace is out of reach of any unmount of ours, and its namespace (and
/// mount) ends with it.
struct Daemons(Vec<PathBuf>);

impl Drop for Daemons {
    fn drop(&mut self) {
        for m in &self.0 {
            let gone = poll_until(harness::EXIT_TIMEOUT, || {
                harness::processes_mentioning(m).is_empty()
            });
            if !gone {
                for pid in harness::processes_mentioning(m) {
                    eprintln!("killing daemon {pid} of {}", m.display());
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }
}

/// Runs `script` with `sh -eu` in a private mount namespace where `/usr/local/bin` holds
/// only `rimgfs` (the binary under test), with `args` as `$1...`. The script unmounts what
/// it mounted, lazily on failure.
fn in_namespace(sb: &Sandbox, script: &str, args: &[&Path]) -> Output {
    let bin = sb.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let link = bin.join("rimgfs");
    if !link.exists() {
        std::os::unix::fs::symlink(harness::bin(), &link).unwrap();
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-eu", "-c"])
        .arg(format!("mount --bind \"$0\" /usr/local/bin\n{script}"))
        .arg(&bin)
        .args(args);
    harness::run_command(cmd)
}

/// The lines of `info` (a copy of mountinfo) that mount on `mnt`.
fn entries_on<'a>(info: &'a str, mnt: &Path) -> Vec<&'a str> {
    let want = mnt.to_str().unwrap();
    info.lines()
        .filter(|l| l.split(' ').nth(4) == Some(want))
        .collect()
}

const IMAGE: &str = "L0: dir /etc; file /etc/hosts 0644 'hosts\\n'; file /etc/shadow 0600 'x'\n";

// See: mount -t fuse.rimgfs SOURCE MNT -o OPTS, and fstab entries, through mount.fuse3.
#[test]
fn mount8_mounts_through_mount_fuse3() {
    if !require_root_fuse() {
        return;
    }
    let sb = Sandbox::new();
    let image = sb.image(IMAGE);
    let [m0, m1, m2, out] = ["m0", "m1", "m2", "out"].map(|d| {
        let p = sb.path(d);
        std::fs::create_dir(&p).unwrap();
        p
    });
    let _daemons = Daemons(vec![m0.clone(), m1.clone(), m2.clone()]);
    let (cache, upper) = (sb.cache(), sb.path("upper"));
    let source = format!("docker-archive:{}", image.display());
    let fstab = sb.path("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# rimgfs images\n\
             {source} {m1} fuse.rimgfs ro,nofail,x-systemd.automount,x-systemd.requires=a.service,_netdev,cache_dir={cache} 0 0\n\
             {image} {m2} fuse.rimgfs noauto,defaults,nosuid,nodev,upper={upper},cache_dir={cache} 0 0\n",
            m1 = m1.display(),
            m2 = m2.display(),
            image = image.display(),
            cache = cache.display(),
            upper = upper.display(),
        ),
    )
    .unwrap();
    let script = r#"
        src=$1 fstab=$2 m0=$3 m1=$4 m2=$5 out=$6 cache=$7
        trap 'for m in "$m0" "$m1" "$m2"; do umount -l "$m" 2>/dev/null || true; done' EXIT
        mount -t fuse.rimgfs -o "ro,cache_dir=$cache" "$src" "$m0"
        cp /proc/self/mountinfo "$out/m0.info"
        cat "$m0/etc/hosts" > "$out/m0.hosts"
        umount "$m0"
        mount -a -T "$fstab"
        mount -a -T "$fstab"
        cp /proc/self/mountinfo "$out/all.info"
        mount -T "$fstab" "$m2"
        echo changed > "$m2/etc/hosts"
        cp /proc/self/mountinfo "$out/m2.info"
        umount "$m1"
        umount "$m2"
        cp /proc/self/mountinfo "$out/end.info"
    "#;
    let args = [Path::new(&source), &fstab, &m0, &m1, &m2, &out, &cache];
    let r = in_namespace(&sb, script, &args);
    assert_eq!(r.code, Some(0), "{r:?}");
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();

    // mount -t fuse.rimgfs: the type, the source as given, and what mount.fuse3 passed.
    let info = read("m0.info");
    let lines = entries_on(&info, &m0);
    assert_eq!(lines.len(), 1, "{info}");
    let (fstype, src, opts) = fs_fields(lines[0]);
    assert_eq!(
        (fstype.as_str(), src.as_str()),
        ("fuse.rimgfs", source.as_str())
    );
    assert!(opts.contains("default_permissions"), "{opts}");
    assert!(opts.contains("allow_other"), "root's default: {opts}");
    let flags = mount_flags(lines[0]);
    assert!(flags.contains(&"ro".to_string()), "{flags:?}");
    // mount.fuse3 appends dev and suid, mount(8)'s defaults, unless told nodev, nosuid.
    assert!(!flags.contains(&"nosuid".to_string()), "{flags:?}");
    assert_eq!(read("m0.hosts"), "hosts\n");

    // mount -a, twice: the auto entry mounted once, ignoring nofail, _netdev and x-systemd.*;
    // the noauto entry left alone.
    let info = read("all.info");
    assert_eq!(entries_on(&info, &m1).len(), 1, "{info}");
    assert_eq!(fs_fields(entries_on(&info, &m1)[0]).1, source);
    assert!(entries_on(&info, &m2).is_empty(), "{info}");

    // mount -T FSTAB MNT: the noauto entry, writable with its upper, nosuid and nodev.
    let info = read("m2.info");
    let lines = entries_on(&info, &m2);
    assert_eq!(lines.len(), 1, "{info}");
    assert_eq!(fs_fields(lines[0]).1, image.to_str().unwrap());
    let flags = mount_flags(lines[0]);
    for f in ["rw", "nosuid", "nodev"] {
        assert!(flags.contains(&f.to_string()), "{f}: {flags:?}");
    }
    assert_eq!(
        std::fs::read_to_string(upper.join("etc/hosts")).unwrap(),
        "changed\n"
    );
    // umount(8) unmounted both, and every daemon exited.
    let info = read("end.info");
    assert!(entries_on(&info, &m1).is_empty() && entries_on(&info, &m2).is_empty());
    for m in [&m0, &m1, &m2] {
        assert!(
            poll_until(harness::EXIT_TIMEOUT, || harness::processes_mentioning(m)
                .is_empty()),
            "daemon of {} still running",
            m.display()
        );
    }
}

// See: the mount shows as type fuse.rimgfs with the image as its source, also as root.
#[test]
fn mount_lists_type_and_source() {
    if !require_root_fuse() {
        return;
    }
    let sb = Sandbox::new();
    // A comma and a space: fusermount3 needs the first escaped, mountinfo escapes the second.
    let image = sb.path("app, v1.tar");
    std::fs::rename(sb.image(IMAGE), &image).unwrap();
    let source = format!("docker-archive:{}", image.display());
    let Some(m) = MountGuard::start(MountOpts::new(&source, &sb.cache())) else {
        return;
    };
    let line = mount_entry(&m.mnt).unwrap();
    let (fstype, src, _) = fs_fields(&line);
    assert_eq!(fstype, "fuse.rimgfs", "{line}");
    assert_eq!(src, source.replace(' ', "\\040"), "{line}");
    m.unmount();

    // A user's mount, through fusermount3.
    let Some(ids) = user_who_can_mount() else {
        return;
    };
    for d in [sb.dir.path(), &image] {
        nix::unistd::chown(d, Some(ids.0.into()), Some(ids.1.into())).unwrap();
    }
    let xdg = sb.path("xdg");
    std::fs::create_dir(&xdg).unwrap();
    nix::unistd::chown(&xdg, Some(ids.0.into()), Some(ids.1.into())).unwrap();
    let mut opts = MountOpts::new(&source, &sb.cache());
    opts.cache_dir = None;
    opts.env = vec![("XDG_CACHE_HOME".into(), xdg.into())];
    opts.wrapper = setpriv(ids);
    opts.owner = Some(ids);
    let Some(m) = MountGuard::start(opts) else {
        return;
    };
    let line = mount_entry(&m.mnt).unwrap();
    let (fstype, src, super_opts) = fs_fields(&line);
    assert_eq!(fstype, "fuse.rimgfs", "{line}");
    assert_eq!(src, source.replace(' ', "\\040"), "{line}");
    assert!(!super_opts.contains("allow_other"), "a user's own: {line}");
    m.unmount();
}

/// `setpriv` switching to `ids` without supplementary groups, as a wrapper.
fn setpriv(ids: (u32, u32)) -> Vec<std::ffi::OsString> {
    [
        "setpriv".to_string(),
        format!("--reuid={}", ids.0),
        format!("--regid={}", ids.1),
        "--clear-groups".to_string(),
    ]
    .iter()
    .map(Into::into)
    .collect()
}

/// The test user, when it may mount through fusermount3 here (/dev/fuse 0666); else a skip.
fn user_who_can_mount() -> Option<(u32, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let world = std::fs::metadata("/dev/fuse").is_ok_and(|m| m.permissions().mode() & 0o006 == 6);
    if !world {
        harness::skip("/dev/fuse is not 0666, so no unprivileged user can mount FUSE here");
        return None;
    }
    Some(harness::test_user().expect("could not create the unprivileged test user"))
}

/// What a user gets from a command: exit code, stdout, and whether it was refused with
/// EACCES.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    code: Option<i32>,
    stdout: String,
    denied: bool,
}

fn outcome(out: Output) -> Outcome {
    Outcome {
        code: out.code,
        denied: out.stderr.contains("Permission denied"),
        stdout: out.stdout,
    }
}

/// An image whose entries a user may or may not read or write by their modes.
fn access_spec(ids: (u32, u32)) -> String {
    let (u, g) = ids;
    format!(
        "L0: dir / 0755; dir /etc 0755; file /etc/hosts 0644 'hosts'; file /etc/shadow 0600 'secret'\n\
         L0: dir /root 0700; file /root/note 0644 'deep'; dir /tmp 1777\n\
         L0: dir /home 0755; dir /home/u 0755 uid={u} gid={g}; file /home/u/own 0600 uid={u} gid={g} 'mine'\n\
         L1: file /etc/group-only 0640 gid={g} 'group'; file /etc/root-group 0640 'no'\n"
    )
}

/// Every access the tests compare: (what, program, argument relative to the mount).
const READS: &[(&str, &str)] = &[
    ("cat", "etc/hosts"),
    ("cat", "etc/shadow"),
    ("cat", "root/note"),
    ("ls", "root"),
    ("cat", "home/u/own"),
    ("cat", "etc/group-only"),
    ("cat", "etc/root-group"),
    ("ls", "etc"),
];
const WRITES: &[&str] = &["home/u/new", "tmp/new", "etc/new", "home/u/own"];

/// What user `ids` gets from each of [`READS`] and [`WRITES`] on the tree mounted at `mnt`.
fn accesses(ids: (u32, u32), mnt: &Path) -> Vec<(String, Outcome)> {
    let mut v = Vec::new();
    for (prog, rel) in READS {
        let p = mnt.join(rel);
        v.push((
            format!("{prog} {rel}"),
            outcome(harness::as_user(ids, prog, &[p.as_os_str()])),
        ));
    }
    for rel in WRITES {
        let p = mnt.join(rel);
        let args = [
            OsStr::new("-c"),
            OsStr::new("echo written > \"$1\" && cat \"$1\""),
            OsStr::new("sh"),
            p.as_os_str(),
        ];
        v.push((
            format!("write {rel}"),
            outcome(harness::as_user(ids, "sh", &args)),
        ));
    }
    v
}

/// Lets other users reach a mount point inside `dir` (a 0700 temporary directory).
fn open_to_all(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
}

// See: a rimgfs mount made by root lets only root in.
#[test]
fn root_mount_lets_users_in_as_kernel_overlayfs_does() {
    if !require_root_fuse() {
        return;
    }
    let ids = harness::test_user().expect("could not create the unprivileged test user");
    let sb = Sandbox::new();
    open_to_all(sb.dir.path());
    let spec = access_spec(ids);
    let tars = Spec::parse(&spec).layer_tars();
    let image = sb.image(&spec);
    let lowers = extract_layers(&tars, &sb.path("lower"));
    let Some(k) = kernel_overlay(&lowers, sb.dir.path(), "") else {
        return;
    };
    let want = accesses(ids, &k.mnt);
    k.unmount();

    let Some(m) = MountGuard::start(MountOpts::new(&image, &sb.cache())) else {
        return;
    };
    open_to_all(m.mnt.parent().unwrap());
    let got = accesses(ids, &m.mnt);
    assert!(
        harness::mount_entry(&m.mnt)
            .unwrap()
            .contains("allow_other"),
        "root mounts allow_other by default"
    );
    m.unmount();
    for ((what, g), (_, w)) in got.iter().zip(&want) {
        assert_eq!(
            g, w,
            "{what}: rimgfs (left) and kernel overlayfs (right) differ"
        );
    }
    // Not a comparison of two refusals: the modes decide both ways.
    let find = |what: &str| &got.iter().find(|(w, _)| w == what).unwrap().1;
    assert_eq!(find("cat etc/hosts").stdout, "hosts");
    assert_eq!(find("cat home/u/own").stdout, "mine");
    assert_eq!(find("cat etc/group-only").stdout, "group");
    assert_eq!(find("write home/u/new").stdout, "written\n");
    for refused in [
        "cat etc/shadow",
        "cat root/note",
        "ls root",
        "cat etc/root-group",
    ] {
        assert!(find(refused).denied, "{refused}: {:?}", find(refused));
    }
    assert!(find("write etc/new").denied, "{:?}", find("write etc/new"));
}

#[test]
fn noallow_other_keeps_a_root_mount_to_root() {
    if !require_root_fuse() {
        return;
    }
    let ids = harness::test_user().expect("could not create the unprivileged test user");
    let sb = Sandbox::new();
    let image = sb.image(&access_spec(ids));
    let Some(m) =
        MountGuard::start(MountOpts::new(&image, &sb.cache()).args(&["-o", "noallow_other"]))
    else {
        return;
    };
    open_to_all(m.mnt.parent().unwrap());
    assert!(
        !harness::mount_entry(&m.mnt)
            .unwrap()
            .contains("allow_other")
    );
    // Every path is refused, the mount point and the user's own files included.
    let stat = outcome(harness::as_user(ids, "stat", &[m.mnt.as_os_str()]));
    assert!(stat.denied && stat.code != Some(0), "stat: {stat:?}");
    for (what, o) in accesses(ids, &m.mnt) {
        assert!(o.denied && o.code != Some(0), "{what}: {o:?}");
    }
    let chroot = chroot_as(ids, &m.mnt, &["/etc/hosts"]);
    assert!(chroot.denied, "{chroot:?}");
    // Root, the owner, is let in.
    assert_eq!(std::fs::read(m.at("/etc/shadow")).unwrap(), b"secret");
    m.unmount();
}

/// `chroot --userspec=UID:GID MNT /bin/busybox cat ARGS...`.
fn chroot_as(ids: (u32, u32), mnt: &Path, cat: &[&str]) -> Outcome {
    let mut cmd = Command::new("chroot");
    cmd.arg(format!("--userspec={}:{}", ids.0, ids.1))
        .arg(mnt)
        .args(["/bin/busybox", "cat"])
        .args(cat);
    outcome(harness::run_command(cmd))
}

/// The host's static busybox (package busybox-static), which runs in a chroot.
fn static_busybox() -> Option<Vec<u8>> {
    let out = Command::new("sh")
        .args(["-c", "command -v busybox"])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?;
    std::fs::read(path.trim()).ok()
}

#[test]
fn chroot_userspec_runs_in_a_root_mount() {
    if !require_root_fuse() {
        return;
    }
    let Some(busybox) = require(static_busybox(), "busybox-static is not installed") else {
        return;
    };
    let ids = harness::test_user().expect("could not create the unprivileged test user");
    let mut spec = Spec::parse(&format!(
        "{}L2: dir /bin 0755; file /bin/busybox 0755 ''\n",
        access_spec(ids)
    ));
    for e in spec.layers.iter_mut().flatten() {
        if e.path == b"/bin/busybox" {
            e.kind = common::spec::Kind::File(busybox.clone());
        }
    }
    let sb = Sandbox::new();
    let image = sb.write(
        "image.tar",
        Shape::DockerLegacy,
        &[ImageDef::from_layers(spec.layer_tars())],
        Codec::None,
    );
    let Some(m) = MountGuard::start(MountOpts::new(&image, &sb.cache())) else {
        return;
    };
    let run = |args: &[&str]| {
        let mut cmd = Command::new("chroot");
        cmd.arg(format!("--userspec={}:{}", ids.0, ids.1))
            .arg(&m.mnt)
            .arg("/bin/busybox")
            .args(args);
        harness::run_command(cmd)
    };
    let id = run(&["id", "-u"]);
    assert_eq!(
        (id.code, id.stdout.trim()),
        (Some(0), ids.0.to_string().as_str()),
        "{id:?}"
    );
    assert_eq!(chroot_as(ids, &m.mnt, &["/etc/hosts"]).stdout, "hosts");
    assert!(chroot_as(ids, &m.mnt, &["/etc/shadow"]).denied);
    let sh = run(&[
        "sh",
        "-c",
        "echo hi > /tmp/f && /bin/busybox cat /tmp/f && /bin/busybox ls -n /tmp/f",
    ]);
    assert_eq!(sh.code, Some(0), "{sh:?}");
    let mut lines = sh.stdout.lines();
    assert_eq!(lines.next(), Some("hi"));
    let ls: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        ls.get(2..4),
        Some(&[ids.0.to_string().as_str(), ids.1.to_string().as_str()][..]),
        "the file is the user's: {ls:?}"
    );
    let mnt = m.mnt.clone();
    m.unmount();
    assert!(!is_mounted(&mnt));
}
