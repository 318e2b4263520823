//! Registry credentials, looked up in containers' order:
//!
//! 1. `--creds USER[:PASS]`;
//! 2. `--authfile FILE`, or `$REGISTRY_AUTH_FILE`: that file alone, as skopeo does;
//! 3. otherwise `$XDG_RUNTIME_DIR/containers/auth.json` (`/run/containers/UID/auth.json`
//!    without it), `$XDG_CONFIG_HOME/containers/auth.json` (`~/.config/...`), and
//!    `$DOCKER_CONFIG/config.json` (`~/.docker/config.json`).
//!
//! In a file, `credHelpers[REGISTRY]` names a `docker-credential-NAME` program to ask; else an
//! `auths` entry answers, the most specific first (`host/ns/repo`, `host/ns`, `host`, then
//! legacy keys such as `https://index.docker.io/v1/`); else `credsStore` names the program.
//! A secret lives only in a [`Secret`], whose `Debug` and `Display` print no secret, and
//! every message names where a credential came from, never what it is.
//! Dependencies: error, serde_json, base64.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde::Deserialize;

use crate::error::{Error, Result};

/// A secret string (password, token): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Secret {
        Secret(s)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// What a credential is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredKind {
    /// A user name and password (Basic auth, or sent to a token server).
    Password {
        /// The user.
        username: String,
        /// The password.
        password: Secret,
    },
    /// An OAuth2 refresh token for the token server (`identitytoken`).
    IdentityToken(Secret),
}

/// A credential and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credential {
    /// The secret part.
    pub kind: CredKind,
    /// Where it was found, for messages: `--creds`, a file, a helper program.
    pub source: String,
}

/// Where to look for credentials (the command line's part; files come from the
/// environment).
#[derive(Clone, Debug, Default)]
pub struct CredOptions {
    /// `--creds`: user and password.
    pub creds: Option<(String, Secret)>,
    /// `--authfile`.
    pub authfile: Option<PathBuf>,
}

/// Every auth file in the order they are consulted, with how each is named in messages.
pub fn auth_files(opts: &CredOptions) -> Vec<(PathBuf, String)> {
    if let Some(f) = &opts.authfile {
        return vec![(f.clone(), format!("--authfile {}", f.display()))];
    }
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        return vec![(f.clone(), format!("$REGISTRY_AUTH_FILE {}", f.display()))];
    }
    let home = env("HOME").unwrap_or_else(|| PathBuf::from("/"));
    let runtime = env("XDG_RUNTIME_DIR").map_or_else(
        || PathBuf::from(format!("/run/containers/{}", nix::unistd::getuid())),
        |d| d.join("containers"),
    );
    let config = env("XDG_CONFIG_HOME").unwrap_or_else(|| home.join(".config"));
    let docker = env("DOCKER_CONFIG").unwrap_or_else(|| home.join(".docker"));
    [
        runtime.join("auth.json"),
        config.join("containers/auth.json"),
        docker.join("config.json"),
    ]
    .into_iter()
    .map(|p| {
        let name = p.display().to_string();
        (p, name)
    })
    .collect()
}

/// The credential for `registry` (`host[:port]`, `docker.io` for Docker Hub) and
/// `repository`, if any source has one.
pub fn lookup(opts: &CredOptions, registry: &str, repository: &str) -> Result<Option<Credential>> {
    if let Some((user, pass)) = &opts.creds {
        return Ok(Some(Credential {
            kind: CredKind::Password {
                username: user.clone(),
                password: pass.clone(),
            },
            source: "--creds".into(),
        }));
    }
    for (path, name) in auth_files(opts) {
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(Error::Config {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let file = AuthFile::parse(&text).map_err(|reason| Error::Config {
            path: path.clone(),
            reason,
        })?;
        if let Some(c) = file.find(registry, repository, &name)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// An auth.json or docker config.json.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthFile {
    /// Parses a file; the error never quotes its content.
    pub fn parse(text: &[u8]) -> std::result::Result<AuthFile, String> {
        serde_json::from_slice(text).map_err(|e| {
            format!(
                "not an auth file (JSON error at line {}, column {})",
                e.line(),
                e.column()
            )
        })
    }

    /// The credential this file gives for `registry`/`repository`; `name` names the file.
    pub fn find(&self, registry: &str, repository: &str, name: &str) -> Result<Option<Credential>> {
        if let Some(helper) = self.cred_helpers.get(registry) {
            return run_helper(helper, registry);
        }
        // Most specific key first: host/ns/repo, host/ns, host.
        let mut keys = Vec::new();
        let mut key = format!("{registry}/{repository}");
        loop {
            keys.push(key.clone());
            match key.rsplit_once('/') {
                Some((parent, _)) => key = parent.to_string(),
                None => break,
            }
        }
        let entry = keys.iter().find_map(|k| self.auths.get(k)).or_else(|| {
            self.auths
                .iter()
                .find(|(k, _)| normalize_legacy_key(k) == registry)
                .map(|(_, e)| e)
        });
        if let Some(e) = entry {
            let bad = |what: &str| Error::Config {
                path: PathBuf::from(name),
                reason: format!("the entry for {registry} has {what}"),
            };
            if let Some(t) = e.identitytoken.as_ref().filter(|t| !t.is_empty()) {
                return Ok(Some(Credential {
                    kind: CredKind::IdentityToken(Secret(t.clone())),
                    source: name.to_string(),
                }));
            }
            let pair = match (&e.auth, &e.username, &e.password) {
                (Some(a), _, _) if !a.is_empty() => {
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .map_err(|_| bad("an \"auth\" that is not base64"))?;
                    let s = String::from_utf8(raw).map_err(|_| bad("an \"auth\" not in UTF-8"))?;
                    let (u, p) = s
                        .split_once(':')
                        .ok_or_else(|| bad("an \"auth\" without a ':'"))?;
                    Some((u.to_string(), p.to_string()))
                }
                (_, Some(u), Some(p)) => Some((u.clone(), p.clone())),
                _ => None,
            };
            if let Some((username, password)) = pair {
                return Ok(Some(Credential {
                    kind: CredKind::Password {
                        username,
                        password: Secret(password),
                    },
                    source: name.to_string(),
                }));
            }
        }
        match &self.creds_store {
            Some(helper) if !helper.is_empty() => run_helper(helper, registry),
            _ => Ok(None),
        }
    }
}

/// `https://index.docker.io/v1/` → `docker.io`, `http://host:5000/v2/` → `host:5000`.
fn normalize_legacy_key(key: &str) -> String {
    let stripped = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"));
    let host = match stripped {
        Some(rest) => rest.split('/').next().unwrap_or(rest),
        None => key,
    };
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

/// Output of `docker-credential-NAME get`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// What a helper's user name is when the secret is an identity token.
const HELPER_TOKEN_USER: &str = "<token>";

/// Asks `docker-credential-NAME get` for `registry`'s credential. A helper that is missing
/// or fails is reported and treated as having none, so public images still pull.
fn run_helper(helper: &str, registry: &str) -> Result<Option<Credential>> {
    let program = format!("docker-credential-{helper}");
    let child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            log::warn!("{program}: {e}; no credentials for {registry}");
            return Ok(None);
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = match child.wait_with_output() {
        Ok(o) => o,
        Err(e) => {
            log::warn!("{program}: {e}; no credentials for {registry}");
            return Ok(None);
        }
    };
    if !out.status.success() {
        // "credentials not found in native keychain" is the protocol's "none".
        let msg = String::from_utf8_lossy(&out.stdout);
        if !msg.contains("credentials not found") {
            log::warn!(
                "{program} get failed ({}); no credentials for {registry}",
                out.status
            );
        }
        return Ok(None);
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|_| Error::Config {
        path: PathBuf::from(&program),
        reason: "its answer is not the credential helper protocol's JSON".into(),
    })?;
    let source = program;
    let kind = if answer.username == HELPER_TOKEN_USER {
        CredKind::IdentityToken(Secret(answer.secret))
    } else {
        CredKind::Password {
            username: answer.username,
            password: Secret(answer.secret),
        }
    };
    Ok(Some(Credential { kind, source }))
}

/// Parses `--creds USER[:PASS]`; without a password, `ask` is called for it.
pub fn parse_creds(
    s: &str,
    ask: impl FnOnce(&str) -> std::io::Result<String>,
) -> Result<(String, Secret)> {
    let (user, pass) = match s.split_once(':') {
        Some((u, p)) => (u.to_string(), p.to_string()),
        None => {
            let p =
                ask(s).map_err(|e| Error::Usage(format!("--creds: reading the password: {e}")))?;
            (s.to_string(), p)
        }
    };
    if user.is_empty() {
        return Err(Error::Usage("--creds: the user name is empty".into()));
    }
    Ok((user, Secret(pass)))
}

/// Whether a path names an existing file (for `--authfile` checks).
pub fn check_authfile(p: &Path) -> Result<()> {
    if p.is_file() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--authfile {}: no such file",
            p.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    fn creds_of(c: Option<Credential>) -> Option<(String, String, String)> {
        c.map(|c| match c.kind {
            CredKind::Password { username, password } => {
                (username, password.expose().to_string(), c.source)
            }
            CredKind::IdentityToken(t) => ("<token>".into(), t.expose().to_string(), c.source),
        })
    }

    #[test]
    fn auth_file_most_specific_key_wins() {
        let text = format!(
            r#"{{"auths": {{
                "reg.io": {{"auth": "{}"}},
                "reg.io/team": {{"auth": "{}"}},
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "other.io": {{"identitytoken": "tok"}},
                "plain.io": {{"username": "u", "password": "p"}}
            }}}}"#,
            b64("all:1"),
            b64("team:2"),
            b64("hub:3")
        );
        let f = AuthFile::parse(text.as_bytes()).unwrap();
        let find = |r: &str, repo: &str| creds_of(f.find(r, repo, "F").unwrap());
        assert_eq!(
            find("reg.io", "team/app"),
            Some(("team".into(), "2".into(), "F".into()))
        );
        assert_eq!(
            find("reg.io", "other/app"),
            Some(("all".into(), "1".into(), "F".into()))
        );
        assert_eq!(find("docker.io", "library/alpine").unwrap().1, "3");
        assert_eq!(find("other.io", "x").unwrap().0, "<token>");
        assert_eq!(find("plain.io", "x").unwrap().1, "p");
        assert_eq!(find("none.io", "x"), None);
    }

    #[test]
    fn auth_file_errors_never_quote_secrets() {
        let e = AuthFile::parse(b"{\"auths\": {\"r\": {\"auth\": \"s3cret").unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
        let f = AuthFile::parse(br#"{"auths": {"r.io": {"auth": "bm9jb2xvbg=="}}}"#).unwrap();
        let e = f.find("r.io", "x", "F").unwrap_err().to_string();
        assert!(e.contains("r.io") && !e.contains("nocolon"), "{e}");
    }

    #[test]
    fn legacy_keys_normalise() {
        for (k, want) in [
            ("https://index.docker.io/v1/", "docker.io"),
            ("http://h:5000/v2/", "h:5000"),
            ("registry-1.docker.io", "docker.io"),
            ("h.io", "h.io"),
        ] {
            assert_eq!(normalize_legacy_key(k), want);
        }
    }

    #[test]
    fn creds_flag_parses_and_asks_for_missing_password() {
        let (u, p) = parse_creds("me:pa:ss", |_| unreachable!()).unwrap();
        assert_eq!((u.as_str(), p.expose()), ("me", "pa:ss"));
        let (_, p) = parse_creds("me", |u| Ok(format!("{u}-pw"))).unwrap();
        assert_eq!(p.expose(), "me-pw");
        assert!(parse_creds(":x", |_| unreachable!()).is_err());
        assert_eq!(format!("{p:?}"), "<secret>");
    }
}
