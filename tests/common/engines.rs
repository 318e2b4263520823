//! Real container engines for the tests: podman with a private store, a Docker Engine
//! started for the test (and always stopped), a counting proxy for its socket, and the image
//! every engine test builds.
//!
//! Each helper cleans up in `Drop`, so a failing test leaves no mount, daemon or thread.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::harness::{Output, in_ci, poll_until, run_command};
use super::run_ok;

/// How long dockerd may take to answer its first ping.
const DOCKERD_START: Duration = Duration::from_secs(90);
/// How long dockerd may take to stop after SIGTERM before it is killed.
const DOCKERD_STOP: Duration = Duration::from_secs(30);

/// Whether every tool is on PATH.
pub fn have(tools: &[&str]) -> bool {
    tools.iter().all(|t| which(t).is_some())
}

/// The path of a tool on PATH.
pub fn which(tool: &str) -> Option<PathBuf> {
    let o = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
    (o.status.success() && !p.is_empty()).then(|| PathBuf::from(p))
}

/// Skips a test whose tools are missing, except under CI, where that is a failure.
pub fn require_tools(tools: &[&str]) -> bool {
    let missing: Vec<&&str> = tools.iter().filter(|t| which(t).is_none()).collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        !in_ci(),
        "tools required under CI=true are missing: {missing:?}"
    );
    eprintln!("skipped: missing {missing:?}");
    false
}

/// Builds an OCI layout of `source` (any skopeo transport) with skopeo, unpacks it with
/// umoci under `work/name` and returns the unpacked root filesystem.
pub fn umoci_rootfs(source: &str, work: &Path, name: &str) -> PathBuf {
    let oci = work.join(format!("{name}.oci"));
    run_ok(
        "skopeo",
        &["copy", "-q", source, &format!("oci:{}:t", oci.display())],
    );
    let bundle = work.join(format!("{name}.bundle"));
    run_ok(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:t", oci.display()),
            bundle.to_str().unwrap(),
        ],
    );
    bundle.join("rootfs")
}

/// podman with a private store. Dropping it undoes the private mount that
/// containers/storage's overlay driver makes of its own directory.
#[derive(Debug)]
pub struct Podman {
    pub root: PathBuf,
    pub run: PathBuf,
    pub driver: String,
    /// Environment for every command (a rootless user's HOME, ...).
    pub env: Vec<(String, String)>,
    /// Run as this user (`setpriv`), for a rootless store.
    pub user: Option<(u32, u32)>,
}

impl Podman {
    /// A store in `dir` with `driver`.
    pub fn new(dir: &Path, driver: &str) -> Podman {
        Podman {
            root: dir.join("root"),
            run: dir.join("run"),
            driver: driver.into(),
            env: Vec::new(),
            user: None,
        }
    }

    /// Runs `podman ARGS...` on this store.
    pub fn try_run(&self, args: &[&str]) -> Output {
        let mut full: Vec<String> = Vec::new();
        if self.user.is_none() {
            full.extend([
                "--root".into(),
                self.root.display().to_string(),
                "--runroot".into(),
                self.run.display().to_string(),
                "--storage-driver".into(),
                self.driver.clone(),
            ]);
        }
        full.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = match self.user {
            Some((u, g)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={u}"))
                    .arg(format!("--regid={g}"))
                    .arg("--clear-groups")
                    .arg("podman");
                c
            }
            None => Command::new("podman"),
        };
        cmd.args(&full);
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        run_command(cmd)
    }

    /// Runs `podman ARGS...`, panicking unless it succeeds.
    #[track_caller]
    pub fn run(&self, args: &[&str]) -> Output {
        let out = self.try_run(args);
        assert_eq!(
            out.code,
            Some(0),
            "podman {args:?} failed:\n{}{}",
            out.stdout,
            out.stderr
        );
        out
    }

    /// `podman build --isolation chroot -t TAG CTX`.
    pub fn build(&self, ctx: &Path, tag: &str) {
        self.run(&[
            "build",
            "--isolation",
            "chroot",
            "-q",
            "-t",
            tag,
            ctx.to_str().unwrap(),
        ]);
    }

    /// `podman save` as a docker-archive.
    pub fn save(&self, tag: &str, out: &Path) {
        self.run(&["save", "-q", "-o", out.to_str().unwrap(), tag]);
    }

    /// `podman load -i ARCHIVE`.
    pub fn load(&self, archive: &Path) {
        self.run(&["load", "-q", "-i", archive.to_str().unwrap()]);
    }

    /// The image's ID.
    pub fn id(&self, name: &str) -> String {
        self.run(&["image", "inspect", "--format", "{{.Id}}", name])
            .stdout
            .trim()
            .to_string()
    }

    /// `containers-storage:[driver@root+run]NAME`.
    pub fn reference(&self, name: &str) -> String {
        format!(
            "containers-storage:[{}@{}+{}]{name}",
            self.driver,
            self.root.display(),
            self.run.display()
        )
    }

    /// `podman image mount NAME`: kernel overlayfs over the image's layer directories.
    pub fn image_mount(&self, name: &str) -> PodmanMount<'_> {
        let path = PathBuf::from(self.run(&["image", "mount", name]).stdout.trim());
        PodmanMount {
            podman: self,
            name: name.into(),
            path,
        }
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let home = self.root.join(&self.driver);
        if self.user.is_none() && super::harness::is_mounted(&home) {
            if let Err(e) = nix::mount::umount2(&home, nix::mount::MntFlags::MNT_DETACH) {
                eprintln!("umount {}: {e}", home.display());
            }
        }
        // Rootless podman leaves a pause process holding its user namespace (and a copy of
        // every mount present when it started, which would keep those daemons serving after
        // their unmount): stop it with the store.
        if self.user.is_some() {
            let runtime = self.env.iter().find(|(k, _)| k == "XDG_RUNTIME_DIR");
            if let Some((_, dir)) = runtime {
                let pidfile = Path::new(dir).join("libpod/tmp/pause.pid");
                let pid = std::fs::read_to_string(&pidfile).ok();
                if let Some(pid) = pid.and_then(|p| p.trim().parse::<i32>().ok()) {
                    let pid = nix::unistd::Pid::from_raw(pid);
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                }
            }
        }
    }
}

/// An image mounted by podman; dropping it unmounts.
pub struct PodmanMount<'a> {
    podman: &'a Podman,
    name: String,
    pub path: PathBuf,
}

impl Drop for PodmanMount<'_> {
    fn drop(&mut self) {
        let out = self.podman.try_run(&["image", "unmount", "-f", &self.name]);
        if out.code != Some(0) {
            eprintln!("podman image unmount {}: {}", self.name, out.stderr);
            let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// Writes the build context of the test image: FROM scratch around the host's static
/// busybox, whose RUN steps delete files and directories, recreate a directory, make hard
/// links, symlinks, a fifo and a device, set modes and owners, so the layers carry real
/// whiteouts and opaque markers as containers/storage writes them. Returns the directory.
pub fn busybox_context(work: &Path) -> PathBuf {
    let ctx = work.join("ctx");
    std::fs::create_dir_all(ctx.join("etc/sub")).unwrap();
    std::fs::create_dir_all(ctx.join("opt/keep/deep")).unwrap();
    std::fs::copy(which("busybox").expect("busybox"), ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("etc/hello"), "hello\n").unwrap();
    std::fs::write(ctx.join("etc/sub/x"), "x\n").unwrap();
    std::fs::write(ctx.join("opt/keep/deep/file"), vec![7u8; 300_000]).unwrap();
    std::fs::write(ctx.join("opt/keep/other"), "other\n").unwrap();
    let script = [
        "rm /etc/hello",
        "ln /etc/sub/x /etc/sub/x2",
        "rm -r /opt/keep",
        "mkdir -p /opt/keep",
        "echo fresh > /opt/keep/new",
        "mkdir -p /var/lib/app",
        "ln -s ../../etc/sub/x /var/lib/app/link",
        "echo data > /var/lib/app/setuid",
        "chmod 4755 /var/lib/app/setuid",
        "chmod 1777 /var/lib/app",
        "chown 1000:1000 /etc/sub/x",
        "ln /var/lib/app/setuid /var/lib/app/setuid.hard",
        "mknod /var/lib/app/fifo p",
    ]
    .join(" && ");
    let containerfile = format!(
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY etc /etc\nCOPY opt /opt\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && {script}\"]\n\
         RUN [\"/bin/sh\", \"-c\", \"rm /etc/sub/x2 && echo later > /etc/sub/later\"]\n"
    );
    std::fs::write(ctx.join("Containerfile"), containerfile).unwrap();
    ctx
}

/// A Docker Engine of the test's own: data, run state and socket in a temporary directory,
/// no network. Dropping it stops the daemon (and kills it if it does not stop).
pub struct Dockerd {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd and waits until it answers; `None` (a skip) when dockerd is missing
    /// outside CI.
    pub fn start() -> Option<Dockerd> {
        if !require_tools(&["dockerd", "docker"]) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("rimgfs-dockerd-")
            .tempdir()
            .unwrap();
        let socket = dir.path().join("docker.sock");
        let log = std::fs::File::create(dir.path().join("dockerd.log")).unwrap();
        let mut cmd = Command::new("dockerd");
        cmd.args([
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver",
            "vfs",
        ])
        .arg("--data-root")
        .arg(dir.path().join("data"))
        .arg("--exec-root")
        .arg(dir.path().join("exec"))
        .arg("--pidfile")
        .arg(dir.path().join("dockerd.pid"))
        .arg("-H")
        .arg(format!("unix://{}", socket.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        let child = cmd.spawn().expect("spawn dockerd");
        let mut d = Dockerd {
            dir,
            socket,
            child: Some(child),
        };
        let up = poll_until(DOCKERD_START, || d.ping() || d.exited());
        assert!(up && d.ping(), "dockerd did not start:\n{}", d.log());
        Some(d)
    }

    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }

    /// Whether `GET /_ping` answers 200.
    fn ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /_ping HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200")
    }

    /// The daemon's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `unix://SOCKET`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs `docker ARGS...` against this daemon, panicking unless it succeeds.
    #[track_caller]
    pub fn docker(&self, args: &[&str]) -> Output {
        let host = self.host();
        let mut full = vec!["-H", host.as_str()];
        full.extend_from_slice(args);
        run_ok("docker", &full)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if !poll_until(DOCKERD_STOP, || c.try_wait().ok().flatten().is_some()) {
                eprintln!("dockerd did not stop; killing it");
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- dockerd log ---\n{}--- end ---", self.log());
        }
        // dockerd makes its data root a private mount of its own; a daemon that was killed
        // leaves it.
        for sub in ["data", "exec"] {
            let p = self.dir.path().join(sub);
            if super::harness::is_mounted(&p) {
                let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
}

/// A proxy in front of a unix socket that records the request line of every HTTP request
/// passing through it. Dropping it stops it.
pub struct CountingProxy {
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    accept: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl CountingProxy {
    /// Listens on a new socket, forwarding to `target`.
    pub fn start(target: &Path) -> CountingProxy {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("proxy.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stopping, target) = (requests.clone(), stop.clone(), target.to_path_buf());
        let accept = std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = UnixStream::connect(&target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let reqs = reqs.clone();
                std::thread::spawn(move || pipe_requests(client, server, &reqs));
                std::thread::spawn(move || pipe(s2, c2));
            }
        });
        CountingProxy {
            socket,
            requests,
            stop,
            accept: Some(accept),
            _dir: dir,
        }
    }

    /// `unix://SOCKET`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The request lines seen so far, and forgets them.
    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.requests.lock().unwrap())
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` until either side closes.
fn pipe(mut from: UnixStream, mut to: UnixStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Copies client bytes to the server, noting the first line of each request (requests of
/// these tests have no bodies, so each ends at its blank line).
fn pipe_requests(mut client: UnixStream, mut server: UnixStream, reqs: &Mutex<Vec<String>>) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            reqs.lock()
                .unwrap()
                .push(head.lines().next().unwrap_or("").to_string());
            pending.drain(..end + 4);
        }
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = server.shutdown(std::net::Shutdown::Write);
}
