//! `containers-storage:` against real stores that podman filled: a private overlay store as
//! root, and a rootless user's own store.
//!
//! Two images go into the store: one built by `podman build --isolation chroot` (whiteouts,
//! an opaque directory, hard links, symlinks, set-id bits, a fifo, owners, as
//! containers/storage writes them), and one `podman load`ed from an archive made in code with
//! what a build cannot make portably (extended attributes, a file capability, devices).
//! rimgfs's view of each must equal `podman image mount` (kernel overlayfs over the same
//! layer directories) entry by entry, read-only and writable, and `umoci unpack` of `skopeo
//! copy containers-storage:… oci:…`.
#![allow(missing_docs)]

mod common;

use std::path::{Path, PathBuf};

use common::engines::{self, Podman};
use common::harness::{MountOpts, as_user, test_user};
use common::{Codec, ImageDef, Listing, MountGuard, Sandbox, Shape, rimgfs, run_ok};

const TOOLS: &[&str] = &["podman", "skopeo", "umoci", "busybox", "python3"];

/// The image made in code: what the build cannot make. Hard links carry their target's
/// mode and every layer names the directories it writes into, as Docker's layers do (a
/// store applies a link header's mode to the shared inode, and creates a missing parent
/// with the time of extraction).
const SPEC: &str = r"
L0: dir /etc; file /etc/hosts 0644 'a\n'; file /etc/gone 'x'; dir /opt; file /opt/old 'o'
L0: dir /opt/sub; file /opt/sub/deep 'd'; dir /bin; file /bin/tool 0755 gen=300000
L0: hardlink /bin/tool2 /bin/tool 0755; symlink /bin/sh tool
L0: dir /dev; char /dev/null0 1 3 0666; block /dev/loop9 7 9 0660; dir /run; fifo /run/p
L0: file /etc/attrs 0640 'attrs' uid=1000 gid=1000 mtime=1234 xattr=user.test=hello
L0: file /bin/ping 0755 'ping' xattr=security.capability='\x01\x00\x00\x02\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00'
L1: dir /etc; whiteout /etc/gone; dir /opt; opaque /opt; file /opt/new 'n'; file /etc/hosts 0600 'b\n'
L1: file /setuid 4755 's'; dir /var 0700 uid=5 gid=6; hardlink /var/setuid2 /setuid 4755
";

/// A private overlay store in a sandbox of its own.
struct Store {
    /// Dropped first: it undoes the store's private mount inside the sandbox.
    podman: Podman,
    sb: Sandbox,
}

impl Store {
    /// An empty store; `None` (a skip) when `tools` are missing.
    fn new(tools: &[&str]) -> Option<Store> {
        if !engines::require_tools(tools) {
            return None;
        }
        let sb = Sandbox::new();
        let podman = Podman::new(&sb.path("store"), "overlay");
        Some(Store { podman, sb })
    }

    /// `podman load`s the image a spec describes, named `name`.
    fn load_spec(&self, spec: &str, name: &str) {
        let file = format!("{}.tar", name.replace(['/', ':'], "_"));
        let archive = self.sb.write(
            &file,
            Shape::DockerLegacy,
            &[ImageDef::from_spec(spec).with_ref(name)],
            Codec::None,
        );
        self.podman.load(&archive);
    }
}

/// The name of the image built by podman.
const BUILT: &str = "localhost/rimgfs-built:1";
/// The name of the image made from [`SPEC`].
const SPEC_IMAGE: &str = "localhost/rimgfs-spec:1";

/// A store holding both test images.
fn fill_store() -> Option<Store> {
    let store = Store::new(TOOLS)?;
    let ctx = engines::busybox_context(store.sb.dir.path());
    store.podman.build(&ctx, BUILT);
    store.load_spec(SPEC, SPEC_IMAGE);
    Some(store)
}

/// A listing without the root and without link counts. Kernel overlayfs reports a lower
/// file's count from its layer directory, which still counts a hard link that a later layer
/// deleted (and 1 for merged directories); rimgfs counts the names in the merged tree, as
/// `umoci unpack` does, which the treesum comparison checks. Hard-link groups are compared.
fn comparable(root: &Path) -> Listing {
    let mut l = Listing::walk(root);
    l.0.remove(&b"/"[..]);
    for i in l.0.values_mut() {
        i.nlink = 0;
    }
    l
}

fn cache_args(sb: &Sandbox) -> Vec<String> {
    vec!["--cache-dir".into(), sb.cache().display().to_string()]
}

#[test]
fn storage_images_match_podman_image_mount_and_umoci() {
    let Some(f) = fill_store() else { return };
    let (podman, sb, built, spec) = (&f.podman, &f.sb, BUILT, SPEC_IMAGE);
    for name in [built, spec] {
        let reference = podman.reference(name);
        let want = {
            let m = podman.image_mount(name);
            comparable(&m.path)
        };
        assert!(want.0.len() > 10, "{name}: podman shows {:?}", want.paths());
        for mode in [&["-o", "ro"][..], &[][..]] {
            let Some(m) = MountGuard::start(MountOpts::new(&reference, &sb.cache()).args(mode))
            else {
                return;
            };
            comparable(m.path()).assert_same(&want, &format!("{name} {mode:?} vs podman"));
            m.unmount();
        }
        // The same image through skopeo and umoci.
        let rootfs =
            engines::umoci_rootfs(&reference, sb.dir.path(), &name.replace(['/', ':'], "_"));
        let Some(m) = MountGuard::start(MountOpts::new(&reference, &sb.cache())) else {
            return;
        };
        if let Err(diff) = common::treesum_compare(&rootfs, m.path(), &["--ignore-root"]) {
            panic!("{name} differs from umoci unpack:\n{diff}");
        }
        m.unmount();
    }
}

#[test]
fn storage_names_ids_and_commands() {
    let Some(f) = fill_store() else { return };
    let (podman, sb, built, spec) = (&f.podman, &f.sb, BUILT, SPEC_IMAGE);
    let id = podman.id(spec);
    let store = format!(
        "[overlay@{}+{}]",
        podman.root.display(),
        podman.run.display()
    );
    let cache = cache_args(sb);
    let inspect = |name: &str| {
        let mut args = vec!["inspect", "--json"];
        let r = format!("containers-storage:{store}{name}");
        args.push(&r);
        args.extend(cache.iter().map(String::as_str));
        let out = rimgfs(&args);
        (out.code, out.stdout, out.stderr)
    };
    // Every way podman names an image finds the same one.
    for name in [
        spec.to_string(),
        "rimgfs-spec:1".into(),
        id.clone(),
        id[..12].into(),
        format!("@{}", &id[..8]),
        format!("rimgfs-spec:1@{id}"),
        format!("sha256:{id}"),
    ] {
        let (code, out, err) = inspect(&name);
        assert_eq!(code, Some(0), "{name}: {err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["config_digest"],
            format!("sha256:{id}"),
            "{name} found another image"
        );
        assert_eq!(v["refs"][0], spec);
    }
    // Unknown names: one line naming the store and listing what it holds, exit 1.
    let (code, _, err) = inspect("nothere:1");
    assert_eq!(code, Some(1));
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("no image named nothere:1") && err.contains(spec),
        "{err}"
    );

    // Without a specifier, the store that CONTAINERS_STORAGE_CONF's file names.
    let conf = sb.path("storage.conf");
    std::fs::write(
        &conf,
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            podman.root.display(),
            podman.run.display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(common::harness::bin());
    cmd.args(["ls", "containers-storage:rimgfs-spec:1", "/etc"])
        .args(&cache)
        .env("CONTAINERS_STORAGE_CONF", &conf);
    let out = common::harness::run_command(cmd).success();
    assert_eq!(out.stdout, "attrs\nhosts\n");

    // ls, cat, diff and commit take it like any image.
    let r = podman.reference(spec);
    let mut args = vec!["ls".to_string(), r.clone(), "/etc".into()];
    args.extend(cache.clone());
    assert_eq!(rimgfs(&args).success().stdout, "attrs\nhosts\n");
    let mut args = vec!["cat".to_string(), r.clone(), "/etc/hosts".into()];
    args.extend(cache.clone());
    assert_eq!(rimgfs(&args).success().stdout, "b\n");
    let upper = sb.path("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(upper.join("etc/added"), "new\n").unwrap();
    let mut args = vec![
        "diff".to_string(),
        r.clone(),
        "--upper".into(),
        upper.display().to_string(),
    ];
    args.extend(cache.clone());
    assert_eq!(rimgfs(&args).success().stdout, "C /etc\nA /etc/added\n");
    // commit replays each layer's tar from the store (verified against its diff_id): the
    // new image is the old one plus the change.
    for name in [built, spec] {
        let r = podman.reference(name);
        let out = sb.path(&format!("{}.tar", name.replace(['/', ':'], "_")));
        let mut args = vec![
            "commit".to_string(),
            r.clone(),
            "--upper".into(),
            upper.display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        args.extend(cache.clone());
        rimgfs(&args).success();
        let (Some(a), Some(b)) = (
            MountGuard::start(MountOpts::new(&r, &sb.cache()).args(&["-o", "ro"])),
            MountGuard::start(MountOpts::new(&out, &sb.cache()).args(&["-o", "ro"])),
        ) else {
            return;
        };
        let mut want = comparable(a.path());
        let mut got = comparable(b.path());
        got.0.remove(&b"/etc/added"[..]);
        // The change's parent directory comes from the upper.
        want.0.remove(&b"/etc"[..]);
        got.0.remove(&b"/etc"[..]);
        got.assert_same(&want, &format!("{name}: committed image"));
        a.unmount();
        b.unmount();
    }
}

/// Every file of every layer directory, with attributes and content hashes, and the
/// store's records.
fn store_state(podman: &Podman) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let overlay = podman.root.join("overlay");
    let mut layers: Vec<PathBuf> = std::fs::read_dir(&overlay)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("diff").is_dir())
        .collect();
    layers.sort();
    for l in layers {
        out.push((l.clone(), Listing::walk(&l.join("diff")).render()));
    }
    for f in ["overlay-layers/layers.json", "overlay-images/images.json"] {
        let p = podman.root.join(f);
        out.push((
            p.clone(),
            common::image::sha256(&std::fs::read(&p).unwrap()),
        ));
    }
    out
}

#[test]
fn storage_writable_mount_never_writes_the_store() {
    let Some(f) = fill_store() else { return };
    let (podman, sb, built, spec) = (&f.podman, &f.sb, BUILT, SPEC_IMAGE);
    let before = store_state(podman);
    for name in [built, spec] {
        let upper = sb.path(&format!("upper-{}", name.replace(['/', ':'], "_")));
        let Some(m) = MountGuard::start(
            MountOpts::new(podman.reference(name), &sb.cache())
                .args(&["--upper", upper.to_str().unwrap()]),
        ) else {
            return;
        };
        let p = |rel: &str| m.at(rel);
        let hosts = p("/etc/hosts");
        std::fs::write(&hosts, "changed\n").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(p("/etc/hosts"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"more\n"))
            .unwrap();
        let bin = if name == spec {
            "/bin/tool"
        } else {
            "/bin/busybox"
        };
        std::fs::OpenOptions::new()
            .write(true)
            .open(p(bin))
            .and_then(|f| f.set_len(10))
            .unwrap();
        nix::unistd::chown(&p(bin), Some(7.into()), Some(7.into())).unwrap();
        std::fs::remove_dir_all(p("/opt")).unwrap();
        std::fs::create_dir(p("/opt")).unwrap();
        std::fs::write(p("/opt/mine"), "mine").unwrap();
        assert_eq!(std::fs::read_to_string(&hosts).unwrap(), "changed\nmore\n");
        m.unmount();
        assert_eq!(
            std::fs::read_to_string(upper.join("etc/hosts")).unwrap(),
            "changed\nmore\n",
            "{name}: the change is in the upper"
        );
    }
    let after = store_state(podman);
    assert_eq!(before.len(), after.len());
    for ((p, a), (_, b)) in before.iter().zip(&after) {
        assert!(a == b, "{} changed", p.display());
    }
}

#[test]
fn storage_rootless_user_store() {
    if !engines::require_tools(TOOLS) {
        return;
    }
    let Some(user) = test_user() else {
        assert!(!common::harness::in_ci(), "no test user");
        return;
    };
    let sb = Sandbox::new();
    // The user's home: podman and rimgfs find the store there, as they would in ~.
    let home = sb.path("home");
    let runtime = sb.path("run");
    for d in [&sb.dir.path().to_path_buf(), &home, &runtime] {
        std::fs::create_dir_all(d).unwrap();
        nix::unistd::chown(d, Some(user.0.into()), Some(user.1.into())).unwrap();
    }
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    // Files owned by root only: a user without subordinate IDs maps no other owner.
    let spec = "L0: dir /etc; file /etc/hosts 0644 'h\\n'; dir /bin; file /bin/tool 0755 gen=200000\n\
                L0: hardlink /bin/tool2 /bin/tool 0755; symlink /bin/sh tool; dir /opt; file /opt/x 'x'\n\
                L1: whiteout /opt/x; file /etc/motd 0644 'hello'";
    let archive = sb.write(
        "user.tar",
        Shape::DockerLegacy,
        &[ImageDef::from_spec(spec).with_ref("localhost/rimgfs-user:1")],
        Codec::None,
    );
    std::fs::set_permissions(
        &archive,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let env: Vec<(String, String)> = [
        ("HOME", home.clone()),
        ("XDG_RUNTIME_DIR", runtime.clone()),
        ("XDG_CONFIG_HOME", home.join(".config")),
        ("XDG_DATA_HOME", home.join(".local/share")),
        ("XDG_CACHE_HOME", home.join(".cache")),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.display().to_string()))
    .collect();
    let mut podman = Podman::new(&home, "vfs");
    podman.env = env.clone();
    podman.user = Some(user);
    podman.load(&archive);
    assert!(
        home.join(".local/share/containers/storage").is_dir(),
        "podman did not use the user's default store"
    );
    // The same listing and bytes as the archive, from the user's default store.
    let bin = common::harness::bin();
    let as_them = |args: &[&str]| {
        let mut full: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        full.push(bin.to_string());
        full.extend(args.iter().map(|s| s.to_string()));
        as_user(user, "env", &full)
    };
    let from_store = as_them(&["ls", "-lR", "containers-storage:rimgfs-user:1", "/"]);
    assert_eq!(from_store.code, Some(0), "{}", from_store.stderr);
    let cache = sb.cache();
    let from_archive = rimgfs(&[
        "ls",
        "-lR",
        archive.to_str().unwrap(),
        "/",
        "--cache-dir",
        cache.to_str().unwrap(),
    ])
    .success();
    assert_eq!(from_store.stdout, from_archive.stdout);
    let cat = as_them(&[
        "cat",
        "containers-storage:localhost/rimgfs-user:1",
        "/bin/tool2",
    ]);
    assert_eq!(cat.code, Some(0), "{}", cat.stderr);
    assert_eq!(cat.stdout_bytes, common::spec::generated(200000, 200000));
    // Its index went to the user's own cache.
    assert!(home.join(".cache/rimgfs/index/store").is_dir());
    // A mount by the user, through fusermount3.
    let Some(m) = MountGuard::start(MountOpts {
        image: "containers-storage:rimgfs-user:1".into(),
        env: env.iter().map(|(k, v)| (k.into(), v.into())).collect(),
        wrapper: vec![
            "setpriv".into(),
            format!("--reuid={}", user.0).into(),
            format!("--regid={}", user.1).into(),
            "--clear-groups".into(),
        ],
        owner: Some(user),
        ..Default::default()
    }) else {
        return;
    };
    let read = as_user(user, "cat", &[m.at("/etc/motd")]);
    assert_eq!(read.stdout, "hello");
    let gone = as_user(user, "ls", &[m.at("/opt")]);
    assert_eq!(gone.stdout, "");
    m.unmount();
}

#[test]
fn storage_refuses_damaged_and_unknown_stores() {
    let Some(f) = Store::new(&["podman"]) else {
        return;
    };
    let (podman, sb) = (&f.podman, &f.sb);
    f.load_spec(
        "L0: dir /etc; file /etc/a 'a'\nL1: file /etc/b 'b'",
        "localhost/rimgfs-a:1",
    );
    let cache = sb.cache();
    let try_ls = |reference: &str| {
        rimgfs(&[
            "ls",
            reference,
            "/etc",
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
    };
    let good = podman.reference("rimgfs-a:1");
    assert_eq!(try_ls(&good).success().stdout, "a\nb\n");
    let fails = |reference: &str, part: &str| {
        let out = try_ls(reference);
        assert_eq!(out.code, Some(1), "{reference}: {}", out.stdout);
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{reference}: {err}");
        assert!(err.contains(part), "{reference}: {err}");
    };
    let root = podman.root.display().to_string();
    fails(
        &format!("containers-storage:[btrfs@{root}]rimgfs-a:1"),
        "not supported",
    );
    fails(
        &format!("containers-storage:[overlay@{root}/nothere]rimgfs-a:1"),
        "no overlay store",
    );
    let bad = rimgfs(&["ls", "containers-storage:[rel/path]x", "/"]);
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);

    // Damage copies of the store, one way each.
    let layers = podman.root.join("overlay-layers");
    let records: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(layers.join("layers.json")).unwrap()).unwrap();
    let top = records.last().unwrap()["id"].as_str().unwrap().to_string();
    let damaged = |what: &str, damage: &dyn Fn(&Path)| {
        let copy = sb.path(&format!("copy-{what}"));
        run_ok("cp", &["-a", &root, copy.to_str().unwrap()]);
        damage(&copy);
        format!(
            "containers-storage:[overlay@{}+{}]rimgfs-a:1",
            copy.display(),
            podman.run.display()
        )
    };
    let r = damaged("json", &|c| {
        std::fs::write(
            c.join("overlay-layers/layers.json"),
            "{\"not\": \"a list\"}",
        )
        .unwrap()
    });
    fails(&r, "not a containers-storage record list");
    let r = damaged("incomplete", &|c| {
        let p = c.join("overlay-layers/layers.json");
        let mut v: Vec<serde_json::Value> =
            serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        v.last_mut().unwrap()["flags"] = serde_json::json!({"incomplete": true});
        std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    });
    fails(&r, "incomplete");
    let r = damaged("tarsplit", &|c| {
        std::fs::remove_file(c.join(format!("overlay-layers/{top}.tar-split.gz"))).unwrap()
    });
    fails(&r, "no tar-split data");
    let r = damaged("tarsplit-type", &|c| {
        let p = c.join(format!("overlay-layers/{top}.tar-split.gz"));
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, b"{\"type\":9,\"position\":0}\n").unwrap();
        std::fs::write(&p, e.finish().unwrap()).unwrap();
    });
    fails(&r, "type 9");
    let r = damaged("manifest", &|c| {
        let dir = c.join("overlay-images");
        for e in std::fs::read_dir(&dir).unwrap() {
            let m = e.unwrap().path().join("manifest");
            if m.is_file() {
                std::fs::write(&m, b"{\"schemaVersion\":1}").unwrap();
            }
        }
    });
    fails(&r, "digest mismatch");
}

#[test]
fn storage_lock_is_the_one_podman_takes() {
    if !engines::require_tools(&["python3"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("layers.lock");
    std::fs::write(&p, b"").unwrap();
    // What containers/storage does to write: an exclusive fcntl record lock (lockf).
    let try_lock = |kind: &str| {
        let code = format!(
            "import fcntl,sys\nf=open(sys.argv[1],'r+')\n\
             try:\n fcntl.lockf(f, fcntl.{kind}|fcntl.LOCK_NB)\nexcept OSError:\n sys.exit(3)"
        );
        let mut cmd = std::process::Command::new("python3");
        cmd.args(["-c", &code]).arg(&p);
        common::harness::run_command(cmd).code
    };
    assert_eq!(try_lock("LOCK_EX"), Some(0));
    let held = rimgfs::image::storage::lock::SharedLock::acquire(&p).unwrap();
    assert_eq!(
        try_lock("LOCK_EX"),
        Some(3),
        "a writer must wait for rimgfs"
    );
    assert_eq!(try_lock("LOCK_SH"), Some(0), "readers share");
    drop(held);
    assert_eq!(try_lock("LOCK_EX"), Some(0));
}

/// Kills a child process when dropped (a failing test leaves none behind).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

#[test]
fn storage_reads_wait_for_a_writer() {
    use std::io::BufRead;
    use std::os::unix::fs::MetadataExt;
    use std::process::{Command, Stdio};
    let Some(f) = Store::new(&["podman", "python3"]) else {
        return;
    };
    let (podman, sb) = (&f.podman, &f.sb);
    f.load_spec("L0: dir /etc; file /etc/a 'a'", "localhost/rimgfs-w:1");
    let lock = podman.root.join("overlay-layers/layers.lock");
    let ino = std::fs::metadata(&lock).unwrap().ino();
    // A writer as containers/storage is one: an exclusive fcntl lock, held until told.
    let mut writer = Reaped(
        Command::new("python3")
            .args([
                "-c",
                "import fcntl,sys\nf=open(sys.argv[1],'r+')\nfcntl.lockf(f, fcntl.LOCK_EX)\n\
                 print('held', flush=True)\nsys.stdin.read()",
            ])
            .arg(&lock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufReader::new(writer.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held");
    let out = sb.path("ls.out");
    let mut reader = Reaped(
        Command::new(common::harness::bin())
            .args(["ls", &podman.reference("rimgfs-w:1"), "/etc", "--cache-dir"])
            .arg(sb.cache())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    // The kernel lists a blocked request on the lock file as `->`.
    let waiting = common::harness::poll_until(std::time::Duration::from_secs(60), || {
        std::fs::read_to_string("/proc/locks")
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("->") && l.contains(&format!(":{ino} ")))
    });
    assert!(waiting, "rimgfs did not wait for the lock");
    assert!(
        reader.0.try_wait().unwrap().is_none(),
        "rimgfs read past the writer"
    );
    drop(writer.0.stdin.take());
    let _ = writer.0.wait();
    let done = common::harness::poll_until(std::time::Duration::from_secs(60), || {
        reader.0.try_wait().unwrap().is_some()
    });
    assert!(done);
    assert!(reader.0.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "a\n");
}

#[test]
fn storage_indexes_stay_apart_from_verified_ones() {
    let Some(f) = Store::new(&["podman"]) else {
        return;
    };
    let spec = "L0: dir /etc; file /etc/a 'a'\nL1: dir /etc; file /etc/b 'b'";
    f.load_spec(spec, "localhost/rimgfs-i:1");
    let archive = f.sb.path("localhost_rimgfs-i_1.tar");
    let reference = f.podman.reference("rimgfs-i:1");
    let ls = |image: &str, cache: &Path| {
        rimgfs(&[
            "ls",
            "-lR",
            image,
            "/",
            "--cache-dir",
            cache.to_str().unwrap(),
        ])
        .success()
        .stdout
    };
    let (verified, store) = (Path::new("index/sha256"), Path::new("index/store"));
    // The store first: its index, made from unhashed records, never serves the archive.
    let c1 = f.sb.path("c1");
    let from_store = ls(&reference, &c1);
    assert!(c1.join(store).is_dir() && !c1.join(verified).exists());
    assert_eq!(ls(archive.to_str().unwrap(), &c1), from_store);
    assert!(c1.join(verified).is_dir());
    // The archive first: its hashed index serves the store, which then builds none.
    let c2 = f.sb.path("c2");
    assert_eq!(ls(archive.to_str().unwrap(), &c2), from_store);
    assert_eq!(ls(&reference, &c2), from_store);
    assert!(!c2.join(store).exists());
    // A damaged store index is rebuilt, not served.
    let mut damaged = Vec::new();
    for e in std::fs::read_dir(c1.join(store)).unwrap() {
        let p = e.unwrap().path();
        let mut bytes = std::fs::read(&p).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&p, &bytes).unwrap();
        damaged.push((p, bytes));
    }
    std::fs::remove_dir_all(c1.join(verified)).unwrap();
    assert_eq!(ls(&reference, &c1), from_store);
    for (p, bytes) in damaged {
        assert_ne!(
            std::fs::read(&p).unwrap(),
            bytes,
            "{} was not rebuilt",
            p.display()
        );
    }
}
