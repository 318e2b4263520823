//! `docker://` images against a real registry (docker-registry, filled by skopeo): inspect
//! equals skopeo's view, blob ranges equal the stored blobs, faults end in success or a
//! one-line error, auth from every credential source, TLS trust, the cache and `--offline`,
//! and no secret in any output. Mounts of registry images are in `registry_mount.rs`.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use common::harness::{Output, bin, poll_until, run_command};
use common::image::{ImageDef, oci_multiplatform, sha256};
use common::proxy::{Fault, Proxy};
use common::registry::{
    Auth, Format, PASSWORD, Registry, RegistryConfig, USER, age_tag_resolutions, files_below,
};
use common::{Codec, Sandbox};
use rimgfs::cache::Cache;
use rimgfs::image::remote::RemoteBlob;
use rimgfs::image::{self, Blob, ImageSpec, OpenOptions};

const SPEC: &str = "\
L0: dir /etc; file /etc/hosts 0644 'hosts\\n'; file /etc/big 0644 gen=300000
L1: file /etc/motd 0644 'motd'; dir /usr; file /usr/data 0600 gen=200000
";

/// The environment of a rimgfs run: a private HOME and an empty registries.conf, so no
/// file of the machine's changes the outcome.
struct Env {
    sb: Sandbox,
    vars: Vec<(String, OsString)>,
    /// Every run gets a cache of its own (for tests of what the registry is asked).
    fresh_cache: bool,
    runs: std::cell::Cell<usize>,
}

impl Env {
    fn new() -> Env {
        let sb = Sandbox::new();
        let home = sb.path("home");
        std::fs::create_dir_all(&home).unwrap();
        let conf = sb.path("registries.conf");
        std::fs::write(&conf, "").unwrap();
        let vars = vec![
            ("HOME".into(), home.into_os_string()),
            ("CONTAINERS_REGISTRIES_CONF".into(), conf.into_os_string()),
        ];
        Env {
            sb,
            vars,
            fresh_cache: false,
            runs: std::cell::Cell::new(0),
        }
    }

    /// An environment whose every run starts with an empty cache.
    fn uncached() -> Env {
        Env {
            fresh_cache: true,
            ..Env::new()
        }
    }

    fn home(&self) -> PathBuf {
        self.sb.path("home")
    }

    fn set(&mut self, k: &str, v: impl Into<OsString>) {
        self.vars.retain(|(x, _)| x != k);
        self.vars.push((k.into(), v.into()));
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        let mut cache = self.sb.cache();
        if self.fresh_cache {
            self.runs.set(self.runs.get() + 1);
            cache = self.sb.path(&format!("cache-{}", self.runs.get()));
        }
        cmd.arg("--cache-dir").arg(&cache);
        for k in [
            "XDG_RUNTIME_DIR",
            "XDG_CONFIG_HOME",
            "DOCKER_CONFIG",
            "REGISTRY_AUTH_FILE",
            "SSL_CERT_FILE",
        ] {
            cmd.env_remove(k);
        }
        for (k, v) in &self.vars {
            cmd.env(k, v);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        run_command(self.command(args))
    }

    /// `rimgfs inspect --json` that must succeed.
    #[track_caller]
    fn inspect(&self, reference: &str, extra: &[&str]) -> Value {
        let mut args = vec!["inspect", "--json", reference];
        args.extend(extra);
        let out = self.run(&args).success();
        serde_json::from_str(&out.stdout).unwrap()
    }

    /// `rimgfs inspect` that must fail; its one-line message.
    #[track_caller]
    fn inspect_err(&self, reference: &str, extra: &[&str]) -> String {
        let mut args = vec!["inspect", reference];
        args.extend(extra);
        let out = self.run(&args);
        assert_eq!(out.code, Some(1), "expected failure, got {out:?}");
        let lines: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| !l.contains("warning"))
            .collect();
        assert_eq!(lines.len(), 1, "not one line: {}", out.stderr);
        assert!(lines[0].starts_with("rimgfs: docker://"), "{}", out.stderr);
        lines[0].to_string()
    }
}

fn insecure() -> &'static [&'static str] {
    &["--tls-verify=false"]
}

fn def(codec: Codec) -> ImageDef {
    ImageDef::from_spec(SPEC).codec(codec)
}

/// Compares `rimgfs inspect --json` with the raw manifest and config skopeo sees.
#[track_caller]
fn assert_inspect_matches(got: &Value, manifest_raw: &[u8], config_raw: &[u8]) {
    assert_eq!(
        got["manifest_digest"],
        sha256(manifest_raw),
        "manifest digest"
    );
    let manifest: Value = serde_json::from_slice(manifest_raw).unwrap();
    let config: Value = serde_json::from_slice(config_raw).unwrap();
    assert_eq!(got["image_config"], config, "config");
    assert_eq!(got["config_digest"], manifest["config"]["digest"]);
    let layers = got["layers"].as_array().unwrap();
    let want = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), want.len());
    for ((l, w), diff_id) in layers
        .iter()
        .zip(want)
        .zip(config["rootfs"]["diff_ids"].as_array().unwrap())
    {
        assert_eq!(l["digest"], w["digest"]);
        assert_eq!(l["size"], w["size"]);
        assert_eq!(l["media_type"], w["mediaType"]);
        assert_eq!(&l["diff_id"], diff_id);
        assert!(l["uncompressed_size"].is_null(), "no layer was read");
    }
}

#[test]
fn inspect_equals_skopeo_for_each_manifest_kind() {
    let Some(reg) = Registry::plain() else { return };
    let proxy = Proxy::start(&reg.addr);
    let env = Env::new();
    let cases = [
        ("oci/gzip:1", def(Codec::Gzip), Format::Oci, "gzip"),
        ("oci/zstd:1", def(Codec::Zstd), Format::Oci, "zstd"),
        ("oci/plain:1", def(Codec::None), Format::Oci, "none"),
        ("docker/gzip:1", def(Codec::Gzip), Format::DockerV2, "gzip"),
    ];
    for (name, d, format, compression) in cases {
        let r = reg.push_def(&d, name, format);
        let raw = reg.skopeo_inspect(&r, "--raw");
        let config = reg.skopeo_inspect(&r, "--config");
        proxy.clear();
        let got = env.inspect(&proxy.reference(name), insecure());
        assert_inspect_matches(&got, &raw, &config);
        assert_eq!(got["layers"][0]["compression"], compression, "{name}");
        assert_eq!(got["source"], format!("docker://{}/{name}", proxy.addr));
        // Manifest and config alone: no layer blob was asked for.
        for l in got["layers"].as_array().unwrap() {
            assert_eq!(proxy.count(l["digest"].as_str().unwrap()), 0, "{name}");
        }
        let manifest: Value = serde_json::from_slice(&raw).unwrap();
        if format == Format::DockerV2 {
            assert_eq!(
                manifest["mediaType"],
                "application/vnd.docker.distribution.manifest.v2+json"
            );
        }
    }
    // Text output names the source and every layer.
    let out = env
        .run(&[
            "inspect",
            &proxy.reference("oci/gzip:1"),
            "--tls-verify=false",
        ])
        .success();
    assert!(
        out.stdout
            .contains(&format!("docker://{}/oci/gzip:1", proxy.addr)),
        "{}",
        out.stdout
    );
}

#[test]
fn inspect_picks_the_platform_from_an_index() {
    let Some(reg) = Registry::plain() else { return };
    let env = Env::new();
    let amd = def(Codec::Gzip).platform("linux/amd64");
    let arm = ImageDef::from_spec("L0: file /arm 0644 'arm'")
        .codec(Codec::Gzip)
        .platform("linux/arm64/v8");
    let files = oci_multiplatform(&[amd, arm], "multi", true);
    let r = reg.push_files(&files, "multi", "multi/app:1");
    let index: Value = serde_json::from_slice(&reg.skopeo_inspect(&r, "--raw")).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    for (platform, i) in [("linux/amd64", 0), ("linux/arm64", 1)] {
        let entry = &index["manifests"][i];
        let digest = entry["digest"].as_str().unwrap();
        let by_digest = reg.reference(&format!("multi/app@{digest}"));
        let raw = reg.skopeo_inspect(&by_digest, "--raw");
        let config = reg.skopeo_inspect(&by_digest, "--config");
        let got = env.inspect(&r, &["--tls-verify=false", "--platform", platform]);
        assert_inspect_matches(&got, &raw, &config);
        assert_eq!(
            got["platform"].as_str().unwrap(),
            entry["platform"]["os"].as_str().unwrap().to_owned()
                + "/"
                + entry["platform"]["architecture"].as_str().unwrap()
                + if i == 1 { "/v8" } else { "" }
        );
    }
    let msg = env.inspect_err(&r, &["--tls-verify=false", "--platform", "linux/s390x"]);
    assert!(msg.contains("no image for platform linux/s390x"), "{msg}");
}

/// Opens a registry image through the library, as the layer level will.
fn open_remote(
    reference: &str,
    cache: &Path,
    tweak: impl FnOnce(&mut OpenOptions),
) -> image::Image {
    let spec = ImageSpec::parse(reference).unwrap();
    let mut opts = OpenOptions::default();
    opts.registry.tls_verify = Some(false);
    tweak(&mut opts);
    image::open(&spec, &opts, &Cache::new(cache.to_path_buf()))
        .unwrap_or_else(|e| panic!("open {reference}: {}", rimgfs::error::chain(&e)))
}

fn remote(img: &image::Image, layer: usize) -> RemoteBlob {
    match &img.layers[layer].blob {
        Blob::Remote(r) => r.clone(),
        other => panic!("not a remote blob: {other:?}"),
    }
}

/// The stored bytes of every blob of `reference`, copied out with skopeo.
fn stored_blobs(reg: &Registry, reference: &str, at: &Path) -> BTreeMap<String, Vec<u8>> {
    let dir = reg.pull_layout(reference, at);
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let name = format!("sha256:{}", e.file_name().to_string_lossy());
        out.insert(name, std::fs::read(e.path()).unwrap());
    }
    out
}

/// `team/app:1` (two gzip layers) in a registry with `auth`, its stored blobs (copied out
/// with skopeo), a proxy in front, and the image opened through the proxy by the library.
struct Remote {
    reg: Registry,
    _sb: Sandbox,
    blobs: BTreeMap<String, Vec<u8>>,
    proxy: Proxy,
    img: image::Image,
}

fn remote_image(auth: Auth, tweak: impl FnOnce(&mut OpenOptions)) -> Option<Remote> {
    let reg = Registry::with_auth(auth)?;
    let sb = Sandbox::new();
    reg.push_def(&def(Codec::Gzip), "team/app:1", Format::Oci);
    let blobs = stored_blobs(&reg, &reg.reference("team/app:1"), &sb.path("layout"));
    let proxy = Proxy::start(&reg.addr);
    let img = open_remote(&proxy.reference("team/app:1"), &sb.cache(), tweak);
    Some(Remote {
        reg,
        _sb: sb,
        blobs,
        proxy,
        img,
    })
}

#[test]
fn fetcher_ranges_and_streams_equal_the_stored_blobs() {
    // Every field bound: the registry must outlive the test.
    let Some(Remote {
        reg: _reg,
        _sb,
        blobs,
        proxy,
        img,
    }) = remote_image(Auth::None, |_| {})
    else {
        return;
    };
    assert_eq!(img.layers.len(), 2);
    for i in 0..2 {
        let rb = remote(&img, i);
        let want = &blobs[rb.digest.as_str()];
        assert_eq!(rb.len, want.len() as u64);
        assert_eq!(
            rb.fetch.describe(),
            format!("docker://{}/team/app", proxy.addr)
        );
        let n = want.len() as u64;
        for (off, len) in [
            (0, 1),
            (0, n),
            (n / 3, 4096.min(n - n / 3)),
            (n - 1, 1),
            (7, 0),
        ] {
            proxy.clear();
            let got = rb.fetch.range(&rb.digest, off, len).unwrap_or_else(|e| {
                panic!("range {off}+{len} of {n}: {e}: {:?}", proxy.requests())
            });
            assert_eq!(
                got,
                want[off as usize..(off + len) as usize],
                "range {off}+{len}"
            );
            if len > 0 {
                let reqs = proxy.requests();
                assert_eq!(reqs.len(), 1, "{reqs:?}");
                assert_eq!(
                    reqs[0].range.as_deref(),
                    Some(&*format!("bytes={off}-{}", off + len - 1))
                );
                assert_eq!(reqs[0].status, 206);
                assert_eq!(reqs[0].bytes, len, "only the range travels");
            }
        }
        for off in [0, n / 2, n] {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut rb.fetch.stream(&rb.digest, off).unwrap(), &mut got)
                .unwrap();
            assert_eq!(got, want[off as usize..], "stream from {off}");
        }
        let err = rb
            .fetch
            .range(&rb.digest, n - 1, 2)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(rb.digest.as_str()) && err.contains("beyond"),
            "{err}"
        );
    }
}

/// What every fault must end in: the right bytes, or an error naming the blob.
#[test]
fn fetcher_faults_end_in_success_or_a_named_error() {
    // Every field bound: the registry must outlive the test.
    let Some(Remote {
        reg: _reg,
        _sb,
        blobs,
        proxy,
        img,
    }) = remote_image(Auth::None, |o| {
        o.registry.net.read_timeout = Duration::from_secs(2);
        o.registry.net.attempts = 3;
    })
    else {
        return;
    };
    let rb = remote(&img, 0);
    let want = &blobs[rb.digest.as_str()];
    let n = want.len() as u64;
    let (off, len) = (n / 4, n / 2);
    let expect = &want[off as usize..(off + len) as usize];
    let blob_path = format!("/blobs/{}", rb.digest);
    let read_stream = |from: u64| {
        let mut got = Vec::new();
        rb.fetch
            .stream(&rb.digest, from)
            .and_then(|mut s| std::io::Read::read_to_end(&mut s, &mut got))
            .map(|_| got)
    };
    let transient = [
        Fault::WholeBody,
        Fault::TooMany("1".into()),
        Fault::Unavailable,
        Fault::CutShort,
        Fault::Stall,
        Fault::Reset,
    ];
    for fault in &transient {
        proxy.clear();
        proxy.inject(&blob_path, fault.clone(), 1);
        let got = rb
            .fetch
            .range(&rb.digest, off, len)
            .unwrap_or_else(|e| panic!("{fault:?}: {e}"));
        assert_eq!(got, expect, "{fault:?}: range");
        let statuses: Vec<u16> = proxy.requests().iter().map(|r| r.status).collect();
        match fault {
            Fault::WholeBody => assert_eq!(statuses, [200], "a 200 is read past the offset"),
            _ => assert_eq!(statuses.len(), 2, "{fault:?}: one retry: {statuses:?}"),
        }
        proxy.inject(&blob_path, fault.clone(), 1);
        assert_eq!(
            read_stream(off).unwrap(),
            want[off as usize..],
            "{fault:?}: stream"
        );
    }
    // A stream that breaks midway resumes where it broke.
    proxy.clear();
    let mut s = rb.fetch.stream(&rb.digest, 0).unwrap();
    proxy.inject(&blob_path, Fault::CutShort, 1);
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut got).unwrap();
    assert_eq!(&got, want);

    // Faults that do not clear: a one-line error naming the blob, after bounded attempts.
    for fault in [
        Fault::Unavailable,
        Fault::CutShort,
        Fault::TooMany("120".into()),
    ] {
        proxy.inject(&blob_path, fault.clone(), 100);
        let err = rb
            .fetch
            .range(&rb.digest, off, len)
            .unwrap_err()
            .to_string();
        assert!(err.contains(rb.digest.as_str()), "{fault:?}: {err}");
        assert!(!err.contains('\n'), "{err}");
        let err = read_stream(off).unwrap_err().to_string();
        assert!(
            err.contains(rb.digest.as_str()) || err.contains(&blob_path),
            "{fault:?}: {err}"
        );
        proxy.heal();
    }
    proxy.release();
}

#[test]
fn redirects_never_carry_credentials_to_another_host() {
    let Some(Remote {
        reg,
        _sb,
        blobs,
        proxy,
        img,
    }) = remote_image(Auth::Basic, |o| {
        o.registry.net.creds.creds = Some((
            USER.into(),
            rimgfs::image::registry::creds::Secret::new(PASSWORD.into()),
        ));
    })
    else {
        return;
    };
    // "Storage": another host:port, let in by its own means rather than the client's.
    let basic = format!(
        "Basic {}",
        base64_encode(format!("{USER}:{PASSWORD}").as_bytes())
    );
    let storage = Proxy::start_with(&reg.addr, Some(basic));
    let rb = remote(&img, 1);
    let want = &blobs[rb.digest.as_str()];
    proxy.inject(
        "/blobs/",
        Fault::Redirect(format!("http://{}", storage.addr)),
        1,
    );
    let got = rb.fetch.range(&rb.digest, 10, 100).unwrap();
    assert_eq!(got, want[10..110]);
    let at_registry = proxy.requests();
    let authorised = at_registry.iter().filter(|r| r.path != "/v2/");
    assert!(authorised.clone().count() >= 3, "{at_registry:?}");
    assert!(
        authorised.into_iter().all(|r| r.authorization.is_some()),
        "{at_registry:?}"
    );
    let at_storage = storage.requests();
    assert_eq!(at_storage.len(), 1, "{at_storage:?}");
    assert_eq!(
        at_storage[0].authorization, None,
        "credentials leaked to another host"
    );
    assert_eq!(at_storage[0].range.as_deref(), Some("bytes=10-109"));
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// `team/app:1` in a registry with `auth`, and its reference.
fn pushed(auth: Auth) -> Option<(Registry, String)> {
    let reg = Registry::with_auth(auth)?;
    let r = reg.push_def(&def(Codec::Gzip), "team/app:1", Format::Oci);
    Some((reg, r))
}

/// `team/app:1` in a registry with `auth`, a proxy in front of it, an environment, and the
/// image's reference through the proxy.
fn proxied(auth: Auth) -> Option<(Registry, Proxy, Env, String)> {
    let reg = Registry::with_auth(auth)?;
    reg.push_def(&def(Codec::Gzip), "team/app:1", Format::Oci);
    let proxy = Proxy::start(&reg.addr);
    let r = proxy.reference("team/app:1");
    Some((reg, proxy, Env::new(), r))
}

#[test]
fn offline_after_a_warm_inspect_makes_no_request() {
    let Some((reg, proxy, env, r)) = proxied(Auth::None) else {
        return;
    };
    let cold = env.run(&["inspect", "--json", &r, "--offline"]);
    assert_eq!(cold.code, Some(1));
    assert!(cold.stderr.contains("not in the cache"), "{}", cold.stderr);
    let first = env.inspect(&r, insecure());
    assert!(proxy.count("/manifests/") >= 1);
    proxy.clear();
    // Within the tag's time to live, even without --offline nothing is asked again.
    let again = env.inspect(&r, insecure());
    assert_eq!(again["manifest_digest"], first["manifest_digest"]);
    assert_eq!(proxy.requests().len(), 0, "{:?}", proxy.requests());
    let out = env.run(&["inspect", "--json", &r, "--offline"]).success();
    assert!(
        out.stderr
            .contains("--offline: using the tag's resolution of"),
        "{}",
        out.stderr
    );
    let offline: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(offline, first);
    let by_digest = proxy.reference(&format!(
        "team/app@{}",
        first["manifest_digest"].as_str().unwrap()
    ));
    let out = env
        .run(&["inspect", "--json", &by_digest, "--offline"])
        .success();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
    assert_eq!(proxy.requests().len(), 0, "{:?}", proxy.requests());
    // Offline with the registry gone.
    drop(proxy);
    drop(reg);
    env.run(&["inspect", &r, "--offline"]).success();
}

#[test]
fn a_stale_tag_is_checked_with_head_and_a_moved_tag_followed() {
    let Some((reg, proxy, env, r)) = proxied(Auth::None) else {
        return;
    };
    let first = env.inspect(&r, insecure());
    let past_ttl = rimgfs::image::registry::TAG_TTL + Duration::from_secs(1);
    age_tag_resolutions(&env.sb.cache(), past_ttl);
    proxy.clear();
    assert_eq!(env.inspect(&r, insecure()), first);
    let asked: Vec<(String, String)> = proxy
        .requests()
        .into_iter()
        .filter(|q| q.path != "/v2/")
        .map(|q| (q.method, q.path))
        .collect();
    assert_eq!(
        asked,
        [("HEAD".to_string(), "/v2/team/app/manifests/1".to_string())]
    );
    // The tag moves: the HEAD sees a digest not in the cache, and the new image is read.
    reg.push_def(
        &ImageDef::from_spec("L0: file /new 0644 'x'").codec(Codec::Gzip),
        "team/app:1",
        Format::Oci,
    );
    age_tag_resolutions(&env.sb.cache(), past_ttl);
    let moved = env.inspect(&r, insecure());
    assert_ne!(moved["manifest_digest"], first["manifest_digest"]);
    assert_eq!(moved["layers"].as_array().unwrap().len(), 1);
    // Offline, the age of the resolution is reported.
    age_tag_resolutions(&env.sb.cache(), Duration::from_secs(3 * 3600));
    let out = env.run(&["inspect", &r, "--offline"]).success();
    assert!(
        out.stderr.contains("resolution of 3 h ago"),
        "{}",
        out.stderr
    );
}

#[test]
fn plain_http_needs_tls_verify_false_or_an_insecure_entry() {
    let Some(reg) = Registry::plain() else { return };
    let mut env = Env::uncached();
    let r = reg.push_def(&def(Codec::None), "team/app:1", Format::Oci);
    let msg = env.inspect_err(&r, &[]);
    assert!(msg.contains(&reg.addr), "{msg}");
    // registries.conf: a prefix rewritten to the registry, marked insecure.
    let conf = env.sb.path("insecure.conf");
    std::fs::write(
        &conf,
        format!("[[registry]]\nprefix = \"example.test/app\"\nlocation = \"{}/team/app\"\ninsecure = true\n", reg.addr),
    )
    .unwrap();
    env.set("CONTAINERS_REGISTRIES_CONF", &conf);
    let got = env.inspect("docker://example.test/app:1", &[]);
    assert_eq!(got["refs"][0], "example.test/app:1");
    // --tls-verify=true overrides the entry.
    let msg = env.inspect_err("docker://example.test/app:1", &["--tls-verify=true"]);
    assert!(msg.contains(&reg.addr), "{msg}");
    // A mirror that is down falls through to the location.
    let dead = format!("127.0.0.1:{}", common::registry::free_port());
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nprefix = \"example.test/app\"\nlocation = \"{}/team/app\"\n\
             insecure = true\n[[registry.mirror]]\nlocation = \"{dead}/app\"\ninsecure = true\n",
            reg.addr
        ),
    )
    .unwrap();
    let out = env
        .run(&["inspect", "--json", "docker://example.test/app:1"])
        .success();
    assert!(
        out.stderr.contains(&format!("mirror {dead}")),
        "{}",
        out.stderr
    );
    std::fs::write(
        &conf,
        "[[registry]]\nprefix = \"example.test\"\nblocked = true\n",
    )
    .unwrap();
    let msg = env.inspect_err("docker://example.test/app:1", &[]);
    assert!(msg.contains("blocked"), "{msg}");
}

/// A TLS registry holding `team/app:1`, an environment without its CA, and the reference.
fn tls_registry(client_certs: bool) -> Option<(Registry, Env, String)> {
    let reg = Registry::start(RegistryConfig {
        tls: true,
        client_certs,
        ..Default::default()
    })?;
    let r = reg.push_def(&def(Codec::Gzip), "team/app:1", Format::Oci);
    Some((reg, Env::uncached(), r))
}

#[test]
fn tls_trust_from_cert_dir_and_certs_d() {
    let Some((reg, env, r)) = tls_registry(false) else {
        return;
    };
    let ca = reg.ca.as_ref().unwrap();
    let msg = env.inspect_err(&r, &[]);
    assert!(msg.contains("TLS") || msg.contains("certificate"), "{msg}");
    let dir = ca.cert_dir(&env.sb.path("certs"), false);
    env.inspect(&r, &["--cert-dir", dir.to_str().unwrap()]);
    env.inspect(&r, &["--tls-verify=false"]);
    // The containers certs.d convention, under $HOME.
    ca.cert_dir(
        &env.home()
            .join(".config/containers/certs.d")
            .join(&reg.addr),
        false,
    );
    env.inspect(&r, &[]);
}

#[test]
fn tls_client_certificates_from_certs_d() {
    let Some((reg, env, r)) = tls_registry(true) else {
        return;
    };
    let ca = reg.ca.as_ref().unwrap();
    let without = ca.cert_dir(&env.sb.path("ca-only"), false);
    let msg = env.inspect_err(&r, &["--cert-dir", without.to_str().unwrap()]);
    assert!(msg.contains(&reg.addr), "{msg}");
    let with = ca.cert_dir(&env.sb.path("with-client"), true);
    env.inspect(&r, &["--cert-dir", with.to_str().unwrap()]);
}

#[test]
fn basic_auth_with_and_without_credentials() {
    let Some((reg, r)) = pushed(Auth::Basic) else {
        return;
    };
    let env = Env::uncached();
    let creds = format!("{USER}:{PASSWORD}");
    env.inspect(&r, &["--tls-verify=false", "--creds", &creds]);
    let msg = env.inspect_err(&r, &["--tls-verify=false"]);
    assert!(
        msg.contains(&format!(
            "{} refused access to team/app (401 Unauthorized) without credentials",
            reg.addr
        )),
        "{msg}"
    );
    let msg = env.inspect_err(&r, &["--tls-verify=false", "--creds", "tester:wrong"]);
    assert!(
        msg.contains("refused access") && msg.contains("with credentials from --creds"),
        "{msg}"
    );
    assert!(!msg.contains("wrong"), "{msg}");
}

/// An auth file holding `user:pass` for the registry.
fn auth_json(addr: &str, user: &str, pass: &str) -> String {
    format!(
        r#"{{"auths": {{"{addr}": {{"auth": "{}"}}}}}}"#,
        base64_encode(format!("{user}:{pass}").as_bytes())
    )
}

fn write(path: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    path.to_path_buf()
}

#[test]
fn bearer_auth_anonymous_pull() {
    let Some((reg, r)) = pushed(Auth::bearer(true)) else {
        return;
    };
    let env = Env::new();
    env.inspect(&r, insecure());
    let anon: Vec<String> = reg
        .token_requests()
        .into_iter()
        .filter(|l| l.starts_with("GET - "))
        .collect();
    // One anonymous token served the manifest and the config.
    assert_eq!(anon.len(), 1, "{anon:?}");
    assert!(anon[0].ends_with("team/app:pull"), "{anon:?}");
}

#[test]
fn bearer_auth_credentials_from_each_source_in_order() {
    let Some(reg) = Registry::start(RegistryConfig {
        auth: Auth::Bearer {
            anonymous_pull: false,
            identity_token: Some("refresh-4d1c".into()),
        },
        ..Default::default()
    }) else {
        return;
    };
    let mut env = Env::uncached();
    let r = reg.push_def(&def(Codec::Gzip), "team/app:1", Format::Oci);
    let addr = &reg.addr;
    let good = auth_json(addr, USER, PASSWORD);
    let bad = auth_json(addr, USER, "nope");
    let home = env.home();
    let run = env.sb.path("run");
    env.set("XDG_RUNTIME_DIR", &run);
    let ok = |env: &Env, extra: &[&str]| {
        let mut a = vec!["--tls-verify=false"];
        a.extend(extra);
        env.inspect(&r, &a);
    };
    let refused = |env: &Env, extra: &[&str], source: &str| {
        let mut a = vec!["--tls-verify=false"];
        a.extend(extra);
        let msg = env.inspect_err(&r, &a);
        assert!(msg.contains("refused access to team/app"), "{msg}");
        assert!(msg.contains(source), "wanted {source}: {msg}");
    };
    refused(&env, &[], "without credentials");

    // Each default file on its own, then with a wrong entry in a later file: the
    // earlier file wins.
    let docker = home.join(".docker/config.json");
    let config = home.join(".config/containers/auth.json");
    let runtime = run.join("containers/auth.json");
    write(&docker, &good);
    ok(&env, &[]);
    write(&docker, &bad);
    refused(&env, &[], docker.to_str().unwrap());
    write(&config, &good);
    ok(&env, &[]);
    write(&config, &bad);
    write(&runtime, &good);
    ok(&env, &[]);
    write(&runtime, &bad);
    refused(&env, &[], runtime.to_str().unwrap());

    // $REGISTRY_AUTH_FILE and --authfile replace the default files; --authfile wins.
    let file = write(&env.sb.path("auth.json"), &good);
    env.set("REGISTRY_AUTH_FILE", &file);
    ok(&env, &[]);
    let wrong = write(&env.sb.path("wrong.json"), &bad);
    refused(&env, &["--authfile", wrong.to_str().unwrap()], "--authfile");
    ok(&env, &["--authfile", file.to_str().unwrap()]);
    // --creds comes first of all.
    refused(&env, &["--creds", "tester:nope"], "--creds");
    ok(
        &env,
        &[
            "--authfile",
            wrong.to_str().unwrap(),
            "--creds",
            &format!("{USER}:{PASSWORD}"),
        ],
    );

    // A credential helper (credHelpers for this registry; credsStore for every one).
    let helpers = env.sb.path("bin");
    let helper = write(
        &helpers.join("docker-credential-rimgfstest"),
        &format!(
            "#!/bin/sh\nread host\n[ \"$host\" = \"{addr}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\n\
             echo '{{\"ServerURL\":\"'$host'\",\"Username\":\"{USER}\",\"Secret\":\"{PASSWORD}\"}}'\n"
        ),
    );
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        helpers.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    env.set("PATH", path);
    write(
        &file,
        &format!(r#"{{"credHelpers": {{"{addr}": "rimgfstest"}}}}"#),
    );
    ok(&env, &[]);
    write(&file, r#"{"credsStore": "rimgfstest"}"#);
    ok(&env, &[]);
    // An identity token is exchanged at the token server (OAuth2 refresh grant).
    write(
        &file,
        &format!(r#"{{"auths": {{"{addr}": {{"identitytoken": "refresh-4d1c"}}}}}}"#),
    );
    ok(&env, &[]);
    assert!(
        reg.token_requests()
            .iter()
            .any(|l| l.starts_with("POST tester "))
    );
}

#[test]
fn no_secret_in_any_output_at_trace_level() {
    let Some((_reg, r)) = pushed(Auth::bearer(false)) else {
        return;
    };
    let env = Env::uncached();
    let creds = format!("{USER}:{PASSWORD}");
    let secrets = [
        PASSWORD.to_string(),
        base64_encode(creds.as_bytes()),
        // Every JWT starts with the base64 of `{"`.
        "eyJ".to_string(),
    ];
    for c in [creds.as_str(), "tester:wrong-pw-secret"] {
        let args = ["-vvv", "inspect", &r, "--tls-verify=false", "--creds", c];
        let out = env.run(&args);
        assert!(
            out.stderr.contains("debug: GET http"),
            "trace output expected: {}",
            out.stderr
        );
        for s in secrets
            .iter()
            .chain(std::iter::once(&"wrong-pw-secret".to_string()))
        {
            assert!(
                !out.stderr.contains(s.as_str()) && !out.stdout.contains(s.as_str()),
                "{s} leaked:\n{}",
                out.stderr
            );
        }
    }
    // Nothing in the caches either.
    for e in files_below(env.sb.dir.path())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("/cache-"))
    {
        let bytes = std::fs::read(&e).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for s in &secrets {
            assert!(!text.contains(s.as_str()), "{s} in {}", e.display());
        }
    }
}

#[test]
fn creds_password_is_not_in_the_process_command_line() {
    let Some((_reg, proxy, env, r)) = proxied(Auth::Basic) else {
        return;
    };
    // Hold the manifest's answer, so the process is alive and past its start-up.
    proxy.inject("/manifests/", Fault::Stall, 1);
    let creds = format!("{USER}:{PASSWORD}");
    let mut cmd = env.command(&["inspect", &r, "--tls-verify=false", "--creds", &creds]);
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let seen = poll_until(Duration::from_secs(30), || proxy.count("/manifests/") > 0);
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", child.id())).unwrap_or_default();
    proxy.release();
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen, "the manifest was never asked for");
    let shown = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(shown.contains(&format!("--creds {USER}:*")), "{shown}");
    assert!(!shown.contains(PASSWORD), "{shown}");
}

#[test]
fn bad_references_and_unknown_images() {
    let Some(reg) = Registry::plain() else { return };
    let env = Env::new();
    let out = env.run(&["inspect", "docker://Bad/Name"]);
    assert_eq!(out.code, Some(2), "{out:?}");
    let msg = env.inspect_err(&reg.reference("no/such:1"), insecure());
    assert!(msg.contains("manifest unknown"), "{msg}");
    let msg = env.inspect_err(
        &format!("docker://127.0.0.1:{}/x:1", common::registry::free_port()),
        insecure(),
    );
    assert!(msg.contains("127.0.0.1"), "{msg}");
}
