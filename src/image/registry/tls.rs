//! TLS trust for a registry host: the system's CA store plus the containers `certs.d`
//! convention (docker's too): in the host's directory, every `*.crt` is a further CA, and a
//! `NAME.cert` with its `NAME.key` is a client certificate.
//!
//! The directory is `--cert-dir DIR` when given, else the first of
//! `$HOME/.config/containers/certs.d/HOST[:PORT]`, `/etc/containers/certs.d/HOST[:PORT]` and
//! `/etc/docker/certs.d/HOST[:PORT]` that exists (containers/image `dockerCertDir`).
//! The system store is `$SSL_CERT_FILE`, else Debian's bundle. Dependencies: error, ureq.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ureq::tls::{Certificate, ClientCert, PemItem, PrivateKey};

use crate::error::{Error, Result};

/// Debian's bundle of the CAs in /etc/ssl/certs (update-ca-certificates writes it).
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Per-host directories, under `$HOME` first, then system-wide.
const USER_CERTS_D: &str = ".config/containers/certs.d";
const SYSTEM_CERTS_D: [&str; 2] = ["/etc/containers/certs.d", "/etc/docker/certs.d"];

/// What a TLS connection to one host trusts and presents.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    /// Trusted CAs: the system's and the host directory's.
    pub roots: Vec<Certificate<'static>>,
    /// The client certificate, if the host directory has one.
    pub client: Option<ClientCert>,
}

/// The trust for `host` (`host[:port]`), reading `cert_dir` or its `certs.d` directory.
pub fn load(host: &str, cert_dir: Option<&Path>) -> Result<TlsMaterial> {
    let mut roots = system_roots()?.to_vec();
    let dir = match cert_dir {
        Some(d) => Some(d.to_path_buf()),
        None => host_dir(host),
    };
    let mut client = None;
    if let Some(dir) = dir {
        let (cas, c) = read_dir(&dir)?;
        roots.extend(cas);
        client = c;
    }
    Ok(TlsMaterial { roots, client })
}

/// The first per-host certificate directory that exists.
fn host_dir(host: &str) -> Option<PathBuf> {
    let mut bases: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("HOME") {
        bases.push(PathBuf::from(home).join(USER_CERTS_D));
    }
    bases.extend(SYSTEM_CERTS_D.iter().map(PathBuf::from));
    bases.into_iter().map(|b| b.join(host)).find(|d| d.is_dir())
}

/// The system's CAs, read once per process.
fn system_roots() -> Result<&'static [Certificate<'static>]> {
    static ROOTS: OnceLock<std::result::Result<Vec<Certificate<'static>>, String>> =
        OnceLock::new();
    let r = ROOTS.get_or_init(|| {
        let path = std::env::var_os("SSL_CERT_FILE")
            .filter(|p| !p.is_empty())
            .map_or_else(|| PathBuf::from(SYSTEM_BUNDLE), PathBuf::from);
        match std::fs::read(&path) {
            Ok(pem) => certificates(&pem).map_err(|e| format!("{}: {e}", path.display())),
            // No store: only --cert-dir / certs.d CAs are trusted, and TLS errors say so.
            Err(e) => {
                log::warn!("{}: {e}; no system CA is trusted", path.display());
                Ok(Vec::new())
            }
        }
    });
    r.as_deref().map_err(|e| Error::Config {
        path: PathBuf::from("CA store"),
        reason: e.clone(),
    })
}

/// The certificates of a PEM file (other items are skipped).
fn certificates(pem: &[u8]) -> std::result::Result<Vec<Certificate<'static>>, String> {
    let mut out = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item.map_err(|e| e.to_string())? {
            PemItem::Certificate(c) => out.push(c),
            _ => continue,
        }
    }
    Ok(out)
}

/// Reads a certs.d directory: `*.crt` CAs, and a `*.cert`/`*.key` pair.
fn read_dir(dir: &Path) -> Result<(Vec<Certificate<'static>>, Option<ClientCert>)> {
    let bad = |path: &Path, reason: String| Error::Config {
        path: path.to_path_buf(),
        reason,
    };
    let rd = std::fs::read_dir(dir).map_err(|e| bad(dir, e.to_string()))?;
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    names.sort();
    let mut cas = Vec::new();
    let mut client = None;
    for p in &names {
        let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
        match ext {
            "crt" => {
                let pem = std::fs::read(p).map_err(|e| bad(p, e.to_string()))?;
                let certs = certificates(&pem).map_err(|e| bad(p, e))?;
                if certs.is_empty() {
                    return Err(bad(p, "no certificate in the file".into()));
                }
                cas.extend(certs);
            }
            "cert" => {
                let key_path = p.with_extension("key");
                let pem = std::fs::read(p).map_err(|e| bad(p, e.to_string()))?;
                let chain = certificates(&pem).map_err(|e| bad(p, e))?;
                let key_pem = std::fs::read(&key_path)
                    .map_err(|e| bad(&key_path, format!("key of {}: {e}", p.display())))?;
                // The message of a key parse error never quotes the key.
                let key = PrivateKey::from_pem(&key_pem)
                    .map_err(|_| bad(&key_path, "not a PEM private key".into()))?;
                client = Some(ClientCert::new_with_certs(&chain, key));
            }
            "key" if !p.with_extension("cert").exists() => {
                return Err(bad(p, "a key without its .cert".into()));
            }
            _ => {}
        }
    }
    Ok((cas, client))
}
