//! Image references of the `docker://` transport, parsed and normalised as containers/image's
//! `docker/reference` does (`ParseNormalizedNamed`): `alpine` is
//! `docker.io/library/alpine:latest`, and the first path component names a registry only when
//! it holds a `.` or a `:`, is `localhost`, or has upper-case letters.
//!
//! Pure: no I/O, table-tested. Dependencies: image::digest.

use std::fmt;

use crate::image::digest::Digest;

/// The registry of references that name none.
pub const DEFAULT_REGISTRY: &str = "docker.io";
/// Where [`DEFAULT_REGISTRY`] is served from (it answers no API requests itself).
pub const DEFAULT_REGISTRY_HOST: &str = "registry-1.docker.io";
/// An older name of Docker Hub that references may still use.
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
/// The namespace of Docker Hub's official images (`alpine` = `library/alpine`).
const OFFICIAL_NAMESPACE: &str = "library";
/// The tag of a reference that gives neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest repository name (registry and path) the distribution spec allows.
const MAX_NAME_LEN: usize = 255;
/// Longest tag (distribution spec: `[\w][\w.-]{0,127}`).
const MAX_TAG_LEN: usize = 128;

/// A normalised reference: `registry/repository[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`, e.g. `docker.io`, `localhost:5000`.
    pub registry: String,
    /// The repository path inside the registry, e.g. `library/alpine`.
    pub repository: String,
    /// The tag; `latest` when the reference names neither a tag nor a digest.
    pub tag: Option<String>,
    /// The manifest digest, which wins over the tag when both are given.
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses a reference (without the `docker://` prefix). The error says what is wrong.
    pub fn parse(s: &str) -> Result<Reference, String> {
        if s.is_empty() {
            return Err("empty image reference".into());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(Digest::parse(d).map_err(|_| format!("invalid digest {d:?}"))?),
            ),
            None => (s, None),
        };
        // A tag is what follows the last ':' after the last '/' (a ':' before it is a port).
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
            None => (rest, None),
        };
        if let Some(t) = tag {
            check_tag(t)?;
        }
        let (registry, repository) = split_registry(name);
        let registry = if registry == LEGACY_DEFAULT_REGISTRY {
            DEFAULT_REGISTRY.to_string()
        } else {
            registry.to_string()
        };
        check_registry(&registry)?;
        let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            format!("{OFFICIAL_NAMESPACE}/{repository}")
        } else {
            repository.to_string()
        };
        check_repository(&repository)?;
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(format!(
                "repository name longer than {MAX_NAME_LEN} characters"
            ));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, what registries.conf prefixes match.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// What the manifest endpoint is asked for: the digest if known, else the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Splits `name` into registry and repository by docker/reference's rule.
fn split_registry(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (first, rest)
        }
        _ => (DEFAULT_REGISTRY, name),
    }
}

/// `host[:port]`: DNS labels or an IPv4 address, or `[IPv6]`, and a numeric port.
fn check_registry(r: &str) -> Result<(), String> {
    let bad = || Err(format!("invalid registry {r:?}"));
    let (host, port) = if let Some(v6) = r.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return bad();
        };
        if addr.is_empty() || !addr.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return bad();
        }
        match after {
            "" => (addr, None),
            p => match p.strip_prefix(':') {
                Some(p) => (addr, Some(p)),
                None => return bad(),
            },
        }
    } else {
        match r.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (r, None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return bad();
        }
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !r.starts_with('[') && !host.split('.').all(label_ok) {
        return bad();
    }
    Ok(())
}

/// Path components of lower-case alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn check_repository(repo: &str) -> Result<(), String> {
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository name {repo:?} must be lower-case"));
    }
    for comp in repo.split('/') {
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        let mut ok = !b.is_empty() && alnum(b[0]) && alnum(b[b.len() - 1]);
        let mut i = 0;
        while ok && i < b.len() {
            if alnum(b[i]) {
                i += 1;
                continue;
            }
            // A separator: `.`, `_`, `__`, or one or more `-`.
            let start = i;
            while i < b.len() && !alnum(b[i]) {
                i += 1;
            }
            let sep = &comp[start..i];
            ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
        }
        if !ok {
            return Err(format!("invalid repository name {repo:?}"));
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`.
fn check_tag(t: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let ok = t.len() <= MAX_TAG_LEN
        && t.chars().next().is_some_and(word)
        && t.chars().all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {t:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_normalisation_table() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases: Vec<(String, String)> = [
            ("alpine".into(), "docker.io/library/alpine:latest".into()),
            ("alpine:3.19".into(), "docker.io/library/alpine:3.19".into()),
            (
                "library/alpine".into(),
                "docker.io/library/alpine:latest".into(),
            ),
            (
                "docker.io/alpine".into(),
                "docker.io/library/alpine:latest".into(),
            ),
            (
                "index.docker.io/alpine".into(),
                "docker.io/library/alpine:latest".into(),
            ),
            ("user/app".into(), "docker.io/user/app:latest".into()),
            ("a/b/c".into(), "docker.io/a/b/c:latest".into()),
            ("quay.io/org/tool:1".into(), "quay.io/org/tool:1".into()),
            ("localhost/app".into(), "localhost/app:latest".into()),
            (
                "localhost:5000/app".into(),
                "localhost:5000/app:latest".into(),
            ),
            (
                "127.0.0.1:5000/team/app:1.4".into(),
                "127.0.0.1:5000/team/app:1.4".into(),
            ),
            ("[::1]:5000/app".into(), "[::1]:5000/app:latest".into()),
            ("Example/app".into(), "Example/app:latest".into()),
            (
                format!("alpine@{d}"),
                format!("docker.io/library/alpine@{d}"),
            ),
            (format!("h.io/x:t@{d}"), format!("h.io/x:t@{d}")),
            (
                "my-reg.io/a.b/c__d/e--f:v_1.0-x".into(),
                "my-reg.io/a.b/c__d/e--f:v_1.0-x".into(),
            ),
        ]
        .into();
        for (input, want) in &cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(&r.to_string(), want, "{input}");
        }
        let r = Reference::parse("127.0.0.1:5000/team/app:1.4").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("1.4"))
        );
        assert_eq!(r.manifest_ref(), "1.4");
        let r = Reference::parse(&format!("h.io/x:t@{d}")).unwrap();
        assert_eq!(r.manifest_ref(), d, "the digest wins over the tag");
    }

    #[test]
    fn reference_rejects_bad_input() {
        for bad in [
            "",
            "UPPER",
            "docker.io/Alpine",
            "alpine:",
            "alpine:-x",
            "alpine@sha256:abc",
            "a//b",
            "-a/b",
            "a./b:c",
            "host:port/x",
            "reg.io/a_-b",
            "reg.io/a...b",
            "reg..io/x",
            "[::1/x",
            &format!("x:{}", "t".repeat(129)),
            &format!("reg.io/{}", "a".repeat(250)),
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} parsed");
        }
    }
}
