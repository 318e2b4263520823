//! `docker-daemon:` against a real Docker Engine that the test starts (and always stops):
//! `dockerd` with the vfs driver, its data and socket in a temporary directory, no network,
//! filled with `docker load` of images built by `podman build --isolation chroot`.
//!
//! The view of `docker-daemon:IMAGE` must equal rimgfs's mount of the same image's
//! `docker save` and `umoci unpack` of it; a second mount must cost one API request (counted
//! by a proxy in front of the socket); layers shared by two images are stored once.
#![allow(missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::engines::{self, CountingProxy, Dockerd, Podman};
use common::harness::{MountOpts, as_user, test_user};
use common::{Listing, MountGuard, Sandbox, rimgfs};

const TOOLS: &[&str] = &[
    "dockerd", "docker", "podman", "skopeo", "umoci", "busybox", "python3",
];

/// Runs rimgfs with `DOCKER_HOST`.
fn rimgfs_at(host: &str, args: &[&str]) -> common::Output {
    let mut cmd = std::process::Command::new(common::harness::bin());
    cmd.args(args).env("DOCKER_HOST", host);
    common::harness::run_command(cmd)
}

/// The layer files in a cache, with their inode numbers.
fn cached_layers(cache: &Path) -> BTreeSet<(String, u64)> {
    let dir = cache.join("layers/sha256");
    match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().unwrap().ino(),
                )
            })
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

#[test]
fn daemon_images_match_docker_save_and_umoci() {
    if !engines::require_tools(TOOLS) {
        return;
    }
    let sb = Sandbox::new();
    let w = sb.dir.path();
    // Two images, the second built on the first: they share its layers.
    let podman = Podman::new(&w.join("podman"), "vfs");
    podman.build(&engines::busybox_context(w), "localhost/rimgfs-base:1");
    let ctx2 = w.join("ctx2");
    std::fs::create_dir_all(&ctx2).unwrap();
    std::fs::write(
        ctx2.join("Containerfile"),
        "FROM localhost/rimgfs-base:1\nRUN [\"/bin/sh\", \"-c\", \"echo top > /etc/top && rm -r /opt\"]\n",
    )
    .unwrap();
    podman.build(&ctx2, "localhost/rimgfs-top:1");
    let (base_tar, top_tar) = (w.join("base.tar"), w.join("top.tar"));
    podman.save("localhost/rimgfs-base:1", &base_tar);
    podman.save("localhost/rimgfs-top:1", &top_tar);

    let Some(d) = Dockerd::start() else { return };
    for t in [&base_tar, &top_tar] {
        d.docker(&["load", "-q", "-i", t.to_str().unwrap()]);
    }
    let proxy = CountingProxy::start(&d.socket);
    let host = proxy.host();
    let cache = sb.cache();
    let c = cache.to_str().unwrap();

    for name in ["localhost/rimgfs-base:1", "localhost/rimgfs-top:1"] {
        // What Docker itself exports for the image, mounted by rimgfs, and unpacked by umoci.
        let saved = w.join(format!("saved-{}.tar", name.replace(['/', ':'], "_")));
        d.docker(&["save", "-o", saved.to_str().unwrap(), name]);
        let rootfs = engines::umoci_rootfs(
            &format!("docker-archive:{}", saved.display()),
            w,
            &name.replace(['/', ':'], "_"),
        );
        let Some(m) = MountGuard::start(MountOpts::new(&saved, &cache).args(&["-o", "ro"])) else {
            return;
        };
        let want = Listing::walk(m.path());
        m.unmount();

        let before = cached_layers(&cache);
        proxy.take();
        let reference = format!("docker-daemon:{name}");
        for mode in [&["-o", "ro"][..], &[][..]] {
            let mut opts = MountOpts::new(&reference, &cache).args(mode);
            opts.env = vec![("DOCKER_HOST".into(), host.clone().into())];
            let Some(m) = MountGuard::start(opts) else {
                return;
            };
            Listing::walk(m.path()).assert_same(&want, &format!("{name} {mode:?} vs docker save"));
            if let Err(diff) = common::treesum_compare(&rootfs, m.path(), &["--ignore-root"]) {
                panic!("{name} differs from umoci unpack:\n{diff}");
            }
            m.unmount();
        }
        // One export for the first mount; afterwards, one inspect request per mount.
        let reqs = proxy.take();
        let gets: Vec<&String> = reqs.iter().filter(|r| r.contains("/get ")).collect();
        assert_eq!(gets.len(), 1, "{name}: {reqs:?}");
        assert_eq!(reqs.len(), 3, "{name}: {reqs:?}");
        let out = rimgfs_at(&host, &["ls", &reference, "/etc", "--cache-dir", c]).success();
        assert!(out.stdout.contains("sub\n"), "{}", out.stdout);
        assert_eq!(
            proxy.take(),
            [format!("GET /images/{name}/json HTTP/1.1")],
            "{name}: an exported image costs one request"
        );
        // The second image's export stored only its own layer: the shared ones were kept as
        // they were (same inodes), none twice.
        let after = cached_layers(&cache);
        assert!(
            before.is_subset(&after),
            "{name}: cached layers were rewritten"
        );
        let new = after.len() - before.len();
        let expect_new = if name.contains("top") { 1 } else { 5 };
        assert_eq!(new, expect_new, "{name}: {before:?} -> {after:?}");
    }

    // inspect, cat, diff and commit take it like any image.
    let reference = "docker-daemon:localhost/rimgfs-top:1";
    let out = rimgfs_at(&host, &["inspect", "--json", reference, "--cache-dir", c]).success();
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["refs"][0], "localhost/rimgfs-top:1");
    assert_eq!(v["layers"].as_array().unwrap().len(), 6);
    let out = rimgfs_at(&host, &["cat", reference, "/etc/top", "--cache-dir", c]).success();
    assert_eq!(out.stdout, "top\n");
    let upper = w.join("upper");
    std::fs::create_dir_all(upper.join("etc")).unwrap();
    std::fs::write(upper.join("etc/added"), "x").unwrap();
    let u = upper.to_str().unwrap();
    let out = rimgfs_at(&host, &["diff", reference, "--upper", u, "--cache-dir", c]).success();
    assert_eq!(out.stdout, "C /etc\nA /etc/added\n");
    let committed = w.join("committed.tar");
    let o = committed.to_str().unwrap();
    rimgfs_at(
        &host,
        &["commit", reference, "--upper", u, "-o", o, "--cache-dir", c],
    )
    .success();
    let out = rimgfs(&["cat", o, "/etc/added", "--cache-dir", c]).success();
    assert_eq!(out.stdout, "x");
    // By image ID too, as skopeo's docker-daemon:algo:digest.
    let id = v["config_digest"].as_str().unwrap().to_string();
    let out = rimgfs_at(
        &host,
        &[
            "ls",
            &format!("docker-daemon:{id}"),
            "/etc",
            "--cache-dir",
            c,
        ],
    );
    assert!(out.success().stdout.contains("top\n"));

    // Errors: one line naming the socket or the image, exit 1.
    let one_line = |out: common::Output, part: &str| {
        assert_eq!(out.code, Some(1), "{}", out.stdout);
        let err = out.stderr.trim();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(part), "{err}");
    };
    one_line(
        rimgfs_at(
            &host,
            &["ls", "docker-daemon:nope:1", "/", "--cache-dir", c],
        ),
        "no image nope:1",
    );
    let sock = d.socket.display().to_string();
    if let Some(user) = test_user() {
        // The socket is root's and the docker group's (its directory is open to all).
        std::fs::set_permissions(
            d.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut args: Vec<String> = vec![
            format!("DOCKER_HOST=unix://{sock}"),
            common::harness::bin().into(),
        ];
        args.extend(["ls", reference, "/", "--cache-dir", c].map(String::from));
        let out = as_user(user, "env", &args);
        one_line(
            out,
            &format!("permission denied on the Docker daemon socket unix://{sock}"),
        );
    }
    drop(proxy);
    drop(d);
    // Once stopped, the socket is gone; a stale socket file refuses connections.
    one_line(
        rimgfs_at(
            &format!("unix://{sock}"),
            &["ls", reference, "/", "--cache-dir", c],
        ),
        "is it running?",
    );
    let stale = w.join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    one_line(
        rimgfs_at(
            &format!("unix://{}", stale.display()),
            &["ls", reference, "/", "--cache-dir", c],
        ),
        &format!(
            "cannot connect to the Docker daemon at unix://{}",
            stale.display()
        ),
    );
    let out = rimgfs_at(
        "tcp://127.0.0.1:2375",
        &["ls", reference, "/", "--cache-dir", c],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("only unix:// sockets"),
        "{}",
        out.stderr
    );
}
