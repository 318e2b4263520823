//! registries.conf (containers-registries.conf(5), version 2): which location serves a
//! reference, its mirrors, and whether it is insecure or blocked.
//!
//! Files, as containers/image reads them: `$CONTAINERS_REGISTRIES_CONF` alone when set; else
//! `$HOME/.config/containers/registries.conf` if it exists, or `/etc/containers/registries.conf`,
//! then the drop-ins `*.conf` of `/etc/containers/registries.conf.d/` and
//! `$HOME/.config/containers/registries.conf.d/` in name order, where a `[[registry]]` with
//! the prefix of an earlier one replaces it. Keys rimgfs does not use (short-name aliases,
//! search registries, credential helpers) are ignored. Parsing is separate from the files,
//! so it is tested on strings. Dependencies: reference, error, toml, serde.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::reference::{DEFAULT_REGISTRY, DEFAULT_REGISTRY_HOST, Reference};
use crate::error::{Error, Result};

/// The system-wide file.
const SYSTEM_CONF: &str = "/etc/containers/registries.conf";
/// The system-wide drop-in directory.
const SYSTEM_CONF_D: &str = "/etc/containers/registries.conf.d";
/// The user's file and drop-in directory, under `$HOME`.
const USER_CONF: &str = ".config/containers/registries.conf";
const USER_CONF_D: &str = ".config/containers/registries.conf.d";

/// The `[[registry]]` entries in force.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistriesConf {
    /// In file order; a later file's entry replaces an earlier one with the same prefix.
    pub registries: Vec<RegistryEntry>,
}

/// One `[[registry]]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RegistryEntry {
    /// The references it applies to: `host[/path]`, or `*.domain` for every subdomain.
    #[serde(default)]
    pub prefix: String,
    /// Where those references are served from (the prefix is replaced by it).
    #[serde(default)]
    pub location: String,
    /// Plain HTTP or unverified TLS is allowed.
    #[serde(default)]
    pub insecure: bool,
    /// Pulling is refused.
    #[serde(default)]
    pub blocked: bool,
    /// Mirrors are used only for references by digest.
    #[serde(default)]
    pub mirror_by_digest_only: bool,
    /// Tried in order before the location.
    #[serde(default, rename = "mirror")]
    pub mirrors: Vec<MirrorEntry>,
}

/// One `[[registry.mirror]]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MirrorEntry {
    /// Where the mirror serves the prefix.
    pub location: String,
    /// Plain HTTP or unverified TLS is allowed.
    #[serde(default)]
    pub insecure: bool,
    /// `all` (default), `digest-only` or `tag-only`.
    #[serde(default)]
    pub pull_from_mirror: Option<String>,
}

/// The parts of a file rimgfs reads.
#[derive(Deserialize)]
struct File {
    #[serde(default)]
    registry: Vec<RegistryEntry>,
    /// Version 1 files have a `[registries.*]` table instead; only noticed, to warn.
    #[serde(default)]
    registries: Option<toml::Value>,
}

/// A place to pull a reference from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` to connect to.
    pub host: String,
    /// The registry name credentials are looked up by (`docker.io` for Docker Hub).
    pub registry: String,
    /// The repository path there.
    pub repository: String,
    /// Plain HTTP or unverified TLS is allowed.
    pub insecure: bool,
    /// A mirror (its failure falls through to the next endpoint).
    pub mirror: bool,
}

impl RegistriesConf {
    /// Parses one file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<RegistriesConf> {
        let bad = |reason: String| Error::Config {
            path: origin.to_path_buf(),
            reason,
        };
        let f: File = toml::from_str(text).map_err(|e| {
            // toml's messages quote the line with a caret underneath; keep the first line.
            bad(e
                .to_string()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_string())
        })?;
        if f.registries.is_some() {
            log::warn!(
                "{}: version 1 [registries.*] tables are ignored; use [[registry]]",
                origin.display()
            );
        }
        let mut conf = RegistriesConf::default();
        for mut e in f.registry {
            if e.prefix.is_empty() {
                e.prefix = e.location.clone();
            }
            if e.prefix.is_empty() {
                return Err(bad("a [[registry]] needs a prefix or a location".into()));
            }
            if e.prefix.starts_with("*.") && !e.location.is_empty() {
                return Err(bad(format!(
                    "wildcard prefix {:?} cannot have a location",
                    e.prefix
                )));
            }
            for m in &e.mirrors {
                if let Some(p) = &m.pull_from_mirror {
                    if !matches!(p.as_str(), "all" | "digest-only" | "tag-only") {
                        return Err(bad(format!(
                            "pull-from-mirror {p:?}: expected all, digest-only or tag-only"
                        )));
                    }
                }
            }
            conf.merge_entry(e);
        }
        Ok(conf)
    }

    /// Adds the entries of a later file: one with the prefix of an earlier entry replaces it.
    pub fn merge(&mut self, later: RegistriesConf) {
        for e in later.registries {
            self.merge_entry(e);
        }
    }

    fn merge_entry(&mut self, e: RegistryEntry) {
        match self.registries.iter_mut().find(|x| x.prefix == e.prefix) {
            Some(x) => *x = e,
            None => self.registries.push(e),
        }
    }

    /// Reads the files in force (see the module header).
    pub fn load() -> Result<RegistriesConf> {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(p) = std::env::var_os("CONTAINERS_REGISTRIES_CONF").filter(|p| !p.is_empty()) {
            return Self::read(Path::new(&p));
        }
        let user = home.as_ref().map(|h| h.join(USER_CONF));
        let main = match user.filter(|p| p.exists()) {
            Some(u) => u,
            None => PathBuf::from(SYSTEM_CONF),
        };
        let mut conf = if main.exists() {
            Self::read(&main)?
        } else {
            RegistriesConf::default()
        };
        let mut dirs = vec![PathBuf::from(SYSTEM_CONF_D)];
        dirs.extend(home.map(|h| h.join(USER_CONF_D)));
        for dir in dirs {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            files.sort();
            for f in files {
                conf.merge(Self::read(&f)?);
            }
        }
        Ok(conf)
    }

    fn read(path: &Path) -> Result<RegistriesConf> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Io {
            op: "read",
            path: path.to_path_buf(),
            source: e,
        })?;
        Self::parse(&text, path)
    }

    /// The entry whose prefix matches `r` best: the longest path prefix, else the most
    /// specific wildcard.
    pub fn find(&self, r: &Reference) -> Option<&RegistryEntry> {
        let name = r.name();
        let plain = self
            .registries
            .iter()
            .filter(|e| !e.prefix.starts_with("*."))
            .filter(|e| {
                name.strip_prefix(e.prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
            .max_by_key(|e| e.prefix.len());
        plain.or_else(|| {
            self.registries
                .iter()
                .filter(|e| {
                    e.prefix
                        .strip_prefix('*')
                        .is_some_and(|dot_domain| r.registry.ends_with(dot_domain))
                })
                .max_by_key(|e| e.prefix.len())
        })
    }

    /// Where to pull `r` from, mirrors first; an error if its entry blocks it.
    /// `insecure` (from `--tls-verify=false`) makes every endpoint insecure; `Some(false)`
    /// (`--tls-verify=true`) overrides `insecure = true` entries.
    pub fn endpoints(
        &self,
        r: &Reference,
        tls_verify: Option<bool>,
    ) -> Result<Vec<Endpoint>, String> {
        let entry = self.find(r);
        let insecure = |conf: bool| match tls_verify {
            Some(v) => !v,
            None => conf,
        };
        let Some(e) = entry else {
            return Ok(vec![endpoint(&r.name(), insecure(false), false)]);
        };
        if e.blocked {
            return Err(format!(
                "registry {} is blocked by registries.conf (prefix {:?})",
                r.registry, e.prefix
            ));
        }
        let by_digest = r.digest.is_some();
        let rewrite = |location: &str| {
            if e.prefix.starts_with("*.") || location.is_empty() {
                r.name()
            } else {
                format!("{location}{}", &r.name()[e.prefix.len()..])
            }
        };
        let mut out = Vec::new();
        for m in &e.mirrors {
            let policy = m.pull_from_mirror.as_deref().unwrap_or("all");
            let usable = match policy {
                "digest-only" => by_digest,
                "tag-only" => !by_digest,
                _ => by_digest || !e.mirror_by_digest_only,
            };
            if usable {
                out.push(endpoint(&rewrite(&m.location), insecure(m.insecure), true));
            }
        }
        out.push(endpoint(&rewrite(&e.location), insecure(e.insecure), false));
        Ok(out)
    }
}

/// Splits `host/path` into an endpoint, sending Docker Hub to the host that serves it.
fn endpoint(name: &str, insecure: bool, mirror: bool) -> Endpoint {
    let (registry, repository) = name.split_once('/').unwrap_or((name, ""));
    let host = if registry == DEFAULT_REGISTRY {
        DEFAULT_REGISTRY_HOST
    } else {
        registry
    };
    Endpoint {
        host: host.to_string(),
        registry: registry.to_string(),
        repository: repository.to_string(),
        insecure,
        mirror,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> RegistriesConf {
        RegistriesConf::parse(text, Path::new("test.conf")).unwrap()
    }

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    fn hosts(c: &RegistriesConf, reference: &str) -> Vec<(String, String, bool)> {
        c.endpoints(&r(reference), None)
            .unwrap()
            .into_iter()
            .map(|e| (e.host, e.repository, e.insecure))
            .collect()
    }

    const SAMPLE: &str = r#"
unqualified-search-registries = ["docker.io"]

[aliases]
"fedora" = "registry.fedoraproject.org/fedora"

[[registry]]
prefix = "example.com/foo"
location = "internal.example.com/bar"
insecure = true

[[registry.mirror]]
location = "mirror.local:5000/foo-mirror"

[[registry.mirror]]
location = "digests.local/m"
pull-from-mirror = "digest-only"

[[registry]]
location = "example.com"
blocked = true

[[registry]]
prefix = "*.corp.example"
insecure = true

[[registry]]
prefix = "docker.io"
[[registry.mirror]]
location = "hub-mirror.local"
"#;

    #[test]
    fn registries_conf_rewrites_by_longest_prefix() {
        let c = conf(SAMPLE);
        assert_eq!(c.registries.len(), 4);
        assert_eq!(
            hosts(&c, "example.com/foo/app:1"),
            [
                ("mirror.local:5000".into(), "foo-mirror/app".into(), false),
                ("internal.example.com".into(), "bar/app".into(), true),
            ]
        );
        let d = format!("example.com/foo/app@sha256:{}", "0".repeat(64));
        assert_eq!(
            hosts(&c, &d).len(),
            3,
            "digest-only mirror joins for digests"
        );
        // A prefix matches whole path components only.
        let err = c.endpoints(&r("example.com/foobar"), None).unwrap_err();
        assert!(err.contains("blocked"), "{err}");
        assert_eq!(
            hosts(&c, "quay.io/x"),
            [("quay.io".into(), "x".into(), false)]
        );
    }

    #[test]
    fn registries_conf_wildcards_insecure_and_docker_hub() {
        let c = conf(SAMPLE);
        assert_eq!(
            hosts(&c, "reg.corp.example/team/app"),
            [("reg.corp.example".into(), "team/app".into(), true)]
        );
        assert_eq!(
            hosts(&c, "alpine"),
            [
                ("hub-mirror.local".into(), "library/alpine".into(), false),
                (
                    "registry-1.docker.io".into(),
                    "library/alpine".into(),
                    false
                ),
            ]
        );
        let e = &c.endpoints(&r("alpine"), None).unwrap()[1];
        assert_eq!(
            e.registry, "docker.io",
            "credentials are looked up by docker.io"
        );
        // --tls-verify overrides the file either way.
        let e = c.endpoints(&r("reg.corp.example/a"), Some(true)).unwrap();
        assert!(!e[0].insecure);
        let e = c.endpoints(&r("quay.io/a"), Some(false)).unwrap();
        assert!(e[0].insecure);
    }

    #[test]
    fn registries_conf_drop_in_replaces_same_prefix() {
        let mut c = conf(SAMPLE);
        c.merge(conf("[[registry]]\nlocation = \"example.com\"\n"));
        assert_eq!(c.registries.len(), 4);
        assert_eq!(
            hosts(&c, "example.com/other"),
            [("example.com".into(), "other".into(), false)]
        );
        let mut c = conf(
            "[[registry]]\nprefix = \"a.io\"\nmirror-by-digest-only = true\n\
             [[registry.mirror]]\nlocation = \"m.io\"\n",
        );
        assert_eq!(hosts(&c, "a.io/x:1").len(), 1);
        c.merge(RegistriesConf::default());
        assert_eq!(
            hosts(&c, &format!("a.io/x@sha256:{}", "1".repeat(64))).len(),
            2
        );
    }

    #[test]
    fn registries_conf_rejects_bad_files() {
        for bad in [
            "[[registry]]\ninsecure = true\n",
            "[[registry]]\nprefix = \"*.x.io\"\nlocation = \"y.io\"\n",
            "[[registry]]\nprefix = \"a\"\n[[registry.mirror]]\nlocation = \"m\"\npull-from-mirror = \"some\"\n",
            "[[registry]\n",
            "[[registry]]\ninsecure = \"yes\"\n",
        ] {
            let e = RegistriesConf::parse(bad, Path::new("bad.conf")).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with("bad.conf: ") && !msg.contains('\n'),
                "{msg}"
            );
        }
        // Version 1 files are accepted (and ignored, with a warning).
        assert_eq!(
            conf("[registries.search]\nregistries = [\"docker.io\"]\n"),
            RegistriesConf::default()
        );
    }
}
