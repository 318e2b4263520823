//! A real registry for the tests: Debian's `docker-registry` (distribution 2.8) on
//! 127.0.0.1 with a free port and its storage in a temporary directory, stopped on drop even
//! when the test fails (its log is printed then).
//!
//! ```ignore
//! let reg = Registry::start(RegistryConfig::default())?;          // plain HTTP, no auth
//! let r = reg.push_def(&ImageDef::from_spec(SPEC).codec(Codec::Gzip), "team/app:1", Format::Oci);
//! rimgfs(&["inspect", &r, "--tls-verify=false"]);                // r = docker://127.0.0.1:P/team/app:1
//! let proxy = Proxy::start(&reg.addr);                           // count and break requests
//! ```
//! Variants: TLS with a CA made here (`tls: true`; `client_certs: true` also demands a
//! client certificate), htpasswd Basic auth, and Bearer tokens from `token_server.py`,
//! which the registry trusts through `auth.token.rootcertbundle`. Images are pushed with
//! `skopeo copy` from OCI layouts the builders of `image.rs` write. Readiness is polled
//! with `GET /v2/` against a deadline.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use super::harness::{poll_until, run_command, skip};
use super::image::{Files, ImageDef, Shape, write_files};
use super::{Codec, run_ok};

/// The user the auth variants accept.
pub const USER: &str = "tester";
/// Its password: distinctive, so a leak into any output is easy to find.
pub const PASSWORD: &str = "pw-7f3b9e-s3cret";
/// The token server's service and issuer names (the registry checks both).
const SERVICE: &str = "rimgfs-test-registry";
const ISSUER: &str = "rimgfs-test-token-issuer";
/// How long the registry (or token server) may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports are picked free and may be taken before the registry binds: tries.
const START_TRIES: usize = 3;
/// Debian's python3, which has python3-jwt and python3-cryptography.
const PYTHON: &str = "/usr/bin/python3";
/// Lifetime of the tests' TLS material.
const CERT_DAYS: &str = "2";

/// The registry's auth.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// Anyone may pull and push.
    #[default]
    None,
    /// htpasswd: [`USER`]/[`PASSWORD`] on every request.
    Basic,
    /// Tokens from the test token server; anonymous pulls allowed or not.
    Bearer {
        /// Whether anonymous requests get `pull`.
        anonymous_pull: bool,
        /// An identity (refresh) token the server accepts for [`USER`].
        identity_token: Option<String>,
    },
}

impl Auth {
    /// Bearer tokens, with or without anonymous pulls.
    pub fn bearer(anonymous_pull: bool) -> Auth {
        Auth::Bearer {
            anonymous_pull,
            identity_token: None,
        }
    }
}

/// Which registry to start.
#[derive(Clone, Debug, Default)]
pub struct RegistryConfig {
    /// Serve HTTPS with a certificate of a CA made for the test.
    pub tls: bool,
    /// With `tls`, demand a client certificate signed by that CA.
    pub client_certs: bool,
    /// The auth.
    pub auth: Auth,
}

/// Manifest format of a push (`skopeo copy --format`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OCI manifest (or index), as the layout has it.
    Oci,
    /// Docker schema 2 (layers must be gzip or uncompressed).
    DockerV2,
}

/// A CA and the certificates it signed, in `dir`.
#[derive(Debug)]
pub struct TestCa {
    pub dir: PathBuf,
}

impl TestCa {
    /// A CA with a server certificate for 127.0.0.1/localhost and a client certificate.
    pub fn new(dir: &Path) -> TestCa {
        fs::create_dir_all(dir).unwrap();
        let p = |n: &str| dir.join(n).display().to_string();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut args = vec![
            "req",
            "-x509",
            "-days",
            CERT_DAYS,
            "-subj",
            "/CN=rimgfs test CA",
        ];
        args.extend(ec);
        let (ca_key, ca_crt) = (p("ca.key"), p("ca.crt"));
        args.extend(["-keyout", &ca_key, "-out", &ca_crt]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        run_ok("openssl", &args);
        let sign = |name: &str, cn: &str, ext: &str| {
            let (key, csr, crt, extf) = (
                p(&format!("{name}.key")),
                p(&format!("{name}.csr")),
                p(&format!("{name}.crt")),
                p(&format!("{name}.ext")),
            );
            let mut a = vec!["req", "-subj", cn, "-keyout", &key, "-out", &csr];
            a.extend(ec);
            run_ok("openssl", &a);
            fs::write(&extf, ext).unwrap();
            run_ok(
                "openssl",
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_crt,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-days",
                    CERT_DAYS,
                    "-out",
                    &crt,
                    "-extfile",
                    &extf,
                ],
            );
        };
        sign(
            "server",
            "/CN=127.0.0.1",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
             extendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\n",
        );
        sign(
            "client",
            "/CN=rimgfs test client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n\
             keyUsage=critical,digitalSignature\n",
        );
        TestCa {
            dir: dir.to_path_buf(),
        }
    }

    /// A certs.d-style directory: the CA as `ca.crt`, and with `client` the client pair
    /// as `client.cert`/`client.key`.
    pub fn cert_dir(&self, at: &Path, client: bool) -> PathBuf {
        fs::create_dir_all(at).unwrap();
        fs::copy(self.dir.join("ca.crt"), at.join("ca.crt")).unwrap();
        if client {
            fs::copy(self.dir.join("client.crt"), at.join("client.cert")).unwrap();
            fs::copy(self.dir.join("client.key"), at.join("client.key")).unwrap();
        }
        at.to_path_buf()
    }
}

/// A child process killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
    name: &'static str,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- {} log (last lines) ---", self.name);
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A running registry.
pub struct Registry {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub config: RegistryConfig,
    /// The test CA, with `tls`.
    pub ca: Option<TestCa>,
    /// Token server requests, one line each (`token_server.py`), with Bearer auth.
    pub token_log: Option<PathBuf>,
    /// Everything of the registry's: config, storage, logs, certificates.
    pub dir: tempfile::TempDir,
    daemons: Vec<Daemon>,
}

/// Whether the registry binary is there; skips (or fails under CI) when not.
pub fn available() -> bool {
    let found = Command::new("docker-registry")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found || skip("docker-registry is not installed (scripts/test.sh installs it)")
}

/// A port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts a registry, or `None` (a skip) where docker-registry is not installed.
    pub fn start(config: RegistryConfig) -> Option<Registry> {
        if !available() {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("rimgfs-registry-")
            .tempdir()
            .unwrap();
        let ca = config.tls.then(|| TestCa::new(&dir.path().join("tls")));
        let mut daemons = Vec::new();
        let mut auth_yaml = String::new();
        let mut token_log = None;
        match &config.auth {
            Auth::None => {}
            Auth::Basic => {
                let out = run_ok("htpasswd", &["-Bbn", USER, PASSWORD]);
                fs::write(dir.path().join("htpasswd"), out.stdout).unwrap();
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: rimgfs-test\n    path: {}\n",
                    dir.path().join("htpasswd").display()
                );
            }
            Auth::Bearer {
                anonymous_pull,
                identity_token,
            } => {
                let (daemon, port) =
                    start_token_server(dir.path(), *anonymous_pull, identity_token);
                daemons.push(daemon);
                token_log = Some(dir.path().join("token.log"));
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: http://127.0.0.1:{port}/token\n    \
                     service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    dir.path().join("token.crt").display()
                );
            }
        }
        let mut tls_yaml = String::new();
        if let Some(ca) = &ca {
            tls_yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                ca.dir.join("server.crt").display(),
                ca.dir.join("server.key").display()
            );
            if config.client_certs {
                tls_yaml.push_str(&format!(
                    "    clientcas:\n      - {}\n",
                    ca.dir.join("ca.crt").display()
                ));
            }
        }
        for _ in 0..START_TRIES {
            let addr = format!("127.0.0.1:{}", free_port());
            let conf = dir.path().join("config.yml");
            fs::write(
                &conf,
                format!(
                    "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n  secret: rimgfs-test-secret\n{tls_yaml}{auth_yaml}",
                    dir.path().join("storage").display()
                ),
            )
            .unwrap();
            let log = dir.path().join("registry.log");
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(fs::File::create(&log).unwrap())
                .stderr(fs::File::create(&log).unwrap())
                .spawn()
                .expect("start docker-registry");
            let mut daemon = Daemon {
                child,
                log,
                name: "docker-registry",
            };
            let agent = probe_agent(ca.as_ref());
            let scheme = if ca.is_some() { "https" } else { "http" };
            let mut exited = false;
            let up = poll_until(START_TIMEOUT, || {
                if daemon.child.try_wait().ok().flatten().is_some() {
                    exited = true;
                    return true;
                }
                agent.get(&format!("{scheme}://{addr}/v2/")).call().is_ok()
            });
            assert!(
                up,
                "docker-registry did not answer on {addr} within {START_TIMEOUT:?}"
            );
            if exited {
                // Most likely the port was taken meanwhile: try another.
                drop(daemon);
                continue;
            }
            daemons.push(daemon);
            return Some(Registry {
                addr,
                config,
                ca,
                token_log,
                dir,
                daemons,
            });
        }
        panic!("docker-registry did not start in {START_TRIES} tries; see its log above");
    }

    /// A plain HTTP registry without auth.
    pub fn plain() -> Option<Registry> {
        Registry::start(RegistryConfig::default())
    }

    /// A plain HTTP registry with `auth`.
    pub fn with_auth(auth: Auth) -> Option<Registry> {
        Registry::start(RegistryConfig {
            auth,
            ..Default::default()
        })
    }

    /// `docker://ADDR/name` for a `name[:tag|@digest]` in this registry.
    pub fn reference(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr)
    }

    /// skopeo's options to reach this registry (TLS trust and credentials), for `side`
    /// `"dest"` or `"src"`, or `""` for `skopeo inspect`.
    pub fn skopeo_args(&self, side: &str) -> Vec<String> {
        let flag = |n: &str| {
            if side.is_empty() {
                format!("--{n}")
            } else {
                format!("--{side}-{n}")
            }
        };
        let mut a = Vec::new();
        match &self.ca {
            Some(ca) => {
                let d = ca.cert_dir(
                    &self.dir.path().join("skopeo-certs"),
                    self.config.client_certs,
                );
                a.push(flag("cert-dir"));
                a.push(d.display().to_string());
            }
            None => a.push(format!("{}=false", flag("tls-verify"))),
        }
        if self.config.auth != Auth::None {
            a.push(flag("creds"));
            a.push(format!("{USER}:{PASSWORD}"));
        }
        a
    }

    /// Copies `src` (any skopeo source, e.g. `oci:DIR:ref`) to `name:tag` here.
    pub fn push(&self, src: &str, name: &str, format: Format, all: bool) -> String {
        let dest = self.reference(name);
        let mut args: Vec<String> = vec!["copy".into(), "-q".into()];
        if all {
            args.push("--all".into());
        }
        if format == Format::DockerV2 {
            args.extend(["--format".into(), "v2s2".into()]);
        } else {
            // Else skopeo compresses uncompressed layers for a registry.
            args.push("--preserve-digests".into());
        }
        args.extend(self.skopeo_args("dest"));
        args.push(src.into());
        args.push(dest.clone());
        skopeo(&args);
        dest
    }

    /// Writes `def` as an OCI layout and pushes it as `name:tag`; returns its reference.
    pub fn push_def(&self, def: &ImageDef, name: &str, format: Format) -> String {
        let layout = self.layout(&format!("def-{}", name.replace([':', '/', '@'], "_")));
        write_files(
            &Shape::OciDir.files(std::slice::from_ref(def)),
            Shape::OciDir,
            &layout,
            Codec::None,
        );
        self.push(&format!("oci:{}", layout.display()), name, format, false)
    }

    /// Pushes a layout's files (e.g. `oci_multiplatform`) with `--all` as `name:tag`.
    pub fn push_files(&self, files: &Files, layout_ref: &str, name: &str) -> String {
        let layout = self.layout(&format!("files-{}", name.replace([':', '/', '@'], "_")));
        write_files(files, Shape::OciDir, &layout, Codec::None);
        self.push(
            &format!("oci:{}:{layout_ref}", layout.display()),
            name,
            Format::Oci,
            true,
        )
    }

    /// Copies a reference of this registry out to an OCI layout (the blobs as stored).
    pub fn pull_layout(&self, reference: &str, at: &Path) -> PathBuf {
        let mut args: Vec<String> = vec!["copy".into(), "-q".into()];
        args.extend(self.skopeo_args("src"));
        args.push(reference.into());
        args.push(format!("oci:{}:x", at.display()));
        skopeo(&args);
        at.to_path_buf()
    }

    /// `skopeo inspect --raw` (or `--config`) of a reference here: the exact bytes.
    pub fn skopeo_inspect(&self, reference: &str, what: &str) -> Vec<u8> {
        let mut args: Vec<String> = vec!["inspect".into(), what.into()];
        args.extend(self.skopeo_args(""));
        args.push(reference.into());
        skopeo(&args).stdout_bytes
    }

    /// The token server's log lines.
    pub fn token_requests(&self) -> Vec<String> {
        self.token_log
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .map(|s| s.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }

    fn layout(&self, name: &str) -> PathBuf {
        self.dir.path().join("layouts").join(name)
    }
}

/// Runs skopeo with a private, empty configuration (no user auth file or registries.conf
/// can change what it does).
fn skopeo(args: &[String]) -> super::Output {
    let mut cmd = Command::new("skopeo");
    cmd.args(args);
    let out = run_command(cmd);
    assert_eq!(out.code, Some(0), "skopeo {args:?} failed:\n{}", out.stderr);
    out
}

/// A client for readiness probes (trusting the test CA, any status accepted).
fn probe_agent(ca: Option<&TestCa>) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(ca) = ca {
        let pem = fs::read(ca.dir.join("ca.crt")).unwrap();
        let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])));
        // A registry demanding client certificates still answers the probe's handshake
        // failure quickly; presenting one makes the probe succeed.
        let key =
            ureq::tls::PrivateKey::from_pem(&fs::read(ca.dir.join("client.key")).unwrap()).unwrap();
        let chain = ureq::tls::Certificate::from_pem(&fs::read(ca.dir.join("client.crt")).unwrap())
            .unwrap();
        tls = tls.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&[chain], key)));
    }
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .tls_config(tls.build())
        .build()
        .into()
}

/// Starts `token_server.py` with a fresh signing key; returns it and its port.
fn start_token_server(
    dir: &Path,
    anonymous_pull: bool,
    identity: &Option<String>,
) -> (Daemon, u16) {
    let (key, crt) = (dir.join("token.key"), dir.join("token.crt"));
    run_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            CERT_DAYS,
            "-subj",
            "/CN=rimgfs test token signer",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            crt.to_str().unwrap(),
        ],
    );
    let port_file = dir.join("token.port");
    let log = dir.join("token.log");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/common/token_server.py");
    let mut cmd = Command::new(PYTHON);
    cmd.arg(script)
        .args([
            "--key",
            key.to_str().unwrap(),
            "--cert",
            crt.to_str().unwrap(),
        ])
        .args(["--service", SERVICE, "--issuer", ISSUER])
        .args(["--user", &format!("{USER}:{PASSWORD}")])
        .args([
            "--port-file",
            port_file.to_str().unwrap(),
            "--log",
            log.to_str().unwrap(),
        ]);
    if anonymous_pull {
        cmd.arg("--anonymous-pull");
    }
    if let Some(t) = identity {
        cmd.args(["--identity-token", t]);
    }
    let err_log = dir.join("token-server.stderr");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_log).unwrap())
        .spawn()
        .expect("start the token server");
    let mut daemon = Daemon {
        child,
        log: err_log,
        name: "token server",
    };
    let mut port = None;
    let up = poll_until(START_TIMEOUT, || {
        if daemon.child.try_wait().ok().flatten().is_some() {
            return true;
        }
        port = fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok());
        port.is_some()
    });
    let port = port.filter(|_| up).unwrap_or_else(|| {
        let err = fs::read_to_string(dir.join("token-server.stderr")).unwrap_or_default();
        panic!("the token server did not start: {err}")
    });
    (daemon, port)
}

/// The files below `dir`, at any depth (none if it does not exist).
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_below(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// Makes every tag resolution in `cache` look `age` old.
pub fn age_tag_resolutions(cache: &Path, age: Duration) {
    for f in files_below(&cache.join("tags")) {
        let mut rec: serde_json::Value = serde_json::from_slice(&fs::read(&f).unwrap()).unwrap();
        let t = rec["resolved"].as_u64().unwrap();
        rec["resolved"] = serde_json::Value::from(t - age.as_secs());
        fs::write(&f, serde_json::to_vec(&rec).unwrap()).unwrap();
    }
}
