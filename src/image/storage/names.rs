//! Which image of a store a reference means, in the order podman's `LookupImage`
//! (containers/common `libimage`) and skopeo's `ParseStoreReference` try:
//!
//! 1. `…@ID` (full or a unique prefix of at least [`MIN_ID_PREFIX`] characters) or
//!    `sha256:<full ID>`: that image;
//! 2. a name: as given when it has a registry (`quay.io/x/y:1`); a short name (`app:dev`) as
//!    `localhost/app:dev`, then as Docker Hub's `docker.io/library/app:dev`; a missing tag is
//!    `latest`; `name@sha256:…` matches an image of that name holding that manifest digest;
//! 3. a unique prefix of an image ID;
//! 4. a short name as the last part of any image's name (`app:dev` finds
//!    `quay.io/team/app:dev`), the first such image in the store's order, as podman does.
//!
//! Registries from `registries.conf` `unqualified-search-registries` are not consulted: step 4
//! finds images named after any registry. Dependencies: none (plain data in, index out).

/// Shortest ID prefix taken as an ID rather than a name (containers/image's minimum).
pub const MIN_ID_PREFIX: usize = 3;
/// Length of a full image ID (hex of a sha256).
const FULL_ID: usize = 64;

/// What the resolution needs to know about one image.
pub struct Named<'a> {
    /// Its ID.
    pub id: &'a str,
    /// Its names (`localhost/app:dev`, `docker.io/library/alpine:latest`, `repo@digest`).
    pub names: &'a [String],
    /// Digests of the manifests it holds.
    pub digests: Vec<&'a str>,
}

/// A name split into repository and tag or digest.
#[derive(Debug, PartialEq, Eq)]
struct Ref<'a> {
    /// Registry host, if the name has one.
    domain: Option<&'a str>,
    /// The path after the host.
    path: &'a str,
    tag: Option<&'a str>,
    digest: Option<&'a str>,
}

fn is_hex(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_ref(s: &str) -> Ref<'_> {
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    // docker/reference: a first component is a host if it has `.` or `:`, is `localhost`,
    // or has capitals.
    let (domain, path) = match name.split_once('/') {
        Some((first, p))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), p)
        }
        _ => (None, name),
    };
    Ref {
        domain,
        path,
        tag,
        digest,
    }
}

/// The fully qualified repository names a name may mean, best first.
fn candidates(r: &Ref<'_>) -> Vec<String> {
    let hub = |p: &str| {
        if p.contains('/') {
            format!("docker.io/{p}")
        } else {
            format!("docker.io/library/{p}")
        }
    };
    match r.domain {
        Some("docker.io" | "index.docker.io") => vec![hub(r.path)],
        Some(d) => vec![format!("{d}/{}", r.path)],
        None => vec![format!("localhost/{}", r.path), hub(r.path)],
    }
}

/// Splits a stored name into repository and tag/digest.
fn split_stored(name: &str) -> (&str, Option<&str>, Option<&str>) {
    let r = parse_ref(name);
    let repo_len =
        name.len() - r.tag.map_or(0, |t| t.len() + 1) - r.digest.map_or(0, |d| d.len() + 1);
    (&name[..repo_len], r.tag, r.digest)
}

/// Whether `img` is `repo` with the tag or digest `want` asks for.
fn has_name(img: &Named<'_>, repo: &str, want: &Ref<'_>) -> bool {
    img.names.iter().any(|n| {
        let (r, tag, digest) = split_stored(n);
        if r != repo {
            return false;
        }
        match want.digest {
            Some(d) => digest == Some(d) || img.digests.contains(&d),
            None => tag == Some(want.tag.unwrap_or("latest")),
        }
    })
}

/// Finds the image `wanted` names; the error says why none matched.
pub fn find(images: &[Named<'_>], wanted: &str) -> Result<usize, String> {
    let by_id = |prefix: &str| -> Result<Option<usize>, String> {
        let hits: Vec<usize> = (0..images.len())
            .filter(|&i| images[i].id.starts_with(prefix))
            .collect();
        match hits.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            _ => Err(format!("ID prefix {prefix} matches {} images", hits.len())),
        }
    };
    // 1. An explicit ID.
    if let Some(hex) = wanted.strip_prefix("sha256:") {
        if hex.len() == FULL_ID && is_hex(hex) {
            let found =
                by_id(hex)?.or_else(|| images.iter().position(|i| i.digests.contains(&wanted)));
            return found.ok_or_else(|| format!("no image with ID or digest {wanted}"));
        }
    }
    let (name, id) = match wanted.rsplit_once('@') {
        Some((n, x)) if !x.contains(':') && is_hex(x) => (n, Some(x)),
        _ => (wanted, None),
    };
    if let Some(id) = id {
        if id.len() < MIN_ID_PREFIX {
            return Err(format!("image ID {id:?} is too short"));
        }
        let i = by_id(id)?.ok_or_else(|| format!("no image with ID {id}"))?;
        if !name.is_empty() && name_matches(&images[i], name).is_none() {
            return Err(format!("image {id} is not named {name}"));
        }
        return Ok(i);
    }
    if wanted.is_empty() {
        return Err("no image named".into());
    }
    // 2. A name.
    let r = parse_ref(name);
    for repo in candidates(&r) {
        if let Some(i) = images.iter().position(|img| has_name(img, &repo, &r)) {
            return Ok(i);
        }
    }
    // 3. An ID prefix.
    if wanted.len() >= MIN_ID_PREFIX && is_hex(wanted) {
        if let Some(i) = by_id(wanted)? {
            return Ok(i);
        }
    }
    // 4. A short name as the end of any image's name.
    if r.domain.is_none() {
        if let Some(i) = images
            .iter()
            .position(|img| name_matches(img, name).is_some())
        {
            return Ok(i);
        }
    }
    Err(format!("no image named {wanted}"))
}

/// The name of `img` that `name` (possibly short) denotes by its last components.
fn name_matches<'a>(img: &'a Named<'_>, name: &str) -> Option<&'a str> {
    let r = parse_ref(name);
    let full = |n: &str| match r.domain {
        Some(d) => format!("{d}/{}", r.path),
        None => n.to_string(),
    };
    img.names
        .iter()
        .find(|n| {
            let (repo, _, _) = split_stored(n);
            let want = full(r.path);
            let ends = repo == want
                || repo
                    .strip_suffix(want.as_str())
                    .is_some_and(|p| p.ends_with('/'));
            ends && has_name(img, repo, &r)
        })
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111aaaa1111";
    const B: &str = "aaaa2222bbbb2222bbbb2222bbbb2222bbbb2222bbbb2222bbbb2222bbbb2222";
    const C: &str = "cccc3333cccc3333cccc3333cccc3333cccc3333cccc3333cccc3333cccc3333";
    const DIGEST: &str = "sha256:dddd4444dddd4444dddd4444dddd4444dddd4444dddd4444dddd4444dddd4444";

    fn store(names: &[Vec<String>; 3]) -> Vec<Named<'_>> {
        [A, B, C]
            .iter()
            .zip(names)
            .map(|(id, n)| Named {
                id,
                names: n,
                digests: if *id == C { vec![DIGEST] } else { vec![] },
            })
            .collect()
    }

    #[test]
    fn resolution_table() {
        let names = [
            vec!["localhost/app:dev".to_string()],
            vec![
                "docker.io/library/alpine:latest".to_string(),
                "quay.io/team/app:dev".to_string(),
            ],
            vec!["quay.io/team/tool:1".to_string()],
        ];
        let s = store(&names);
        let cases: &[(&str, Result<usize, &str>)] = &[
            ("localhost/app:dev", Ok(0)),
            // localhost first for a short name, as podman does.
            ("app:dev", Ok(0)),
            ("alpine", Ok(1)),
            ("alpine:latest", Ok(1)),
            ("docker.io/alpine", Ok(1)),
            ("docker.io/library/alpine:latest", Ok(1)),
            ("quay.io/team/app:dev", Ok(1)),
            // Short names match the end of a name at a component boundary.
            ("tool:1", Ok(2)),
            ("team/tool:1", Ok(2)),
            ("ool:1", Err("no image named")),
            ("tool", Err("no image named")),
            ("quay.io/tool:1", Err("no image named")),
            // IDs, prefixes, names with IDs, digests.
            (A, Ok(0)),
            ("cccc", Ok(2)),
            ("aaaa", Err("matches 2 images")),
            ("@aaaa2", Ok(1)),
            ("alpine@aaaa2", Ok(1)),
            ("alpine@cccc", Err("not named")),
            ("@aa", Err("too short")),
            (
                "quay.io/team/tool@sha256:dddd4444dddd4444dddd4444dddd4444dddd4444dddd4444dddd4444dddd4444",
                Ok(2),
            ),
            (
                "sha256:cccc3333cccc3333cccc3333cccc3333cccc3333cccc3333cccc3333cccc3333",
                Ok(2),
            ),
            (
                "sha256:dddd4444dddd4444dddd4444dddd4444dddd4444dddd4444dddd4444dddd4444",
                Ok(2),
            ),
            ("", Err("no image")),
        ];
        for (w, want) in cases {
            match (find(&s, w), want) {
                (Ok(i), Ok(j)) => assert_eq!(i, *j, "{w}"),
                (Err(e), Err(part)) => assert!(e.contains(part), "{w}: {e}"),
                (got, _) => panic!("{w}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn ref_parse_table() {
        let r =
            |d: Option<&'static str>, p, t: Option<&'static str>, g: Option<&'static str>| Ref {
                domain: d,
                path: p,
                tag: t,
                digest: g,
            };
        let cases = [
            ("alpine", r(None, "alpine", None, None)),
            ("a/b:1", r(None, "a/b", Some("1"), None)),
            (
                "localhost:5000/a:x",
                r(Some("localhost:5000"), "a", Some("x"), None),
            ),
            ("localhost/a", r(Some("localhost"), "a", None, None)),
            (
                "q.io/a@sha256:1",
                r(Some("q.io"), "a", None, Some("sha256:1")),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(parse_ref(s), want, "{s}");
        }
    }
}
