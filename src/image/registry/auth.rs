//! The registry auth protocol's documents: `WWW-Authenticate` challenges (RFC 7235, as the
//! distribution token spec uses them) and token-server answers.
//!
//! Pure: parsed from strings, table-tested; the requests are made by `client`.
//! Dependencies: serde.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// How long a token lives when its server does not say (the token spec's default).
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens are renewed this long before they expire, so none expires in flight.
pub const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(10);

/// What a registry asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm=...`: the user and password on every request.
    Basic,
    /// `Bearer realm=...,service=...`: a token from the realm, per scope.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter to pass it.
        service: Option<String>,
        /// The scope the registry wants, if it said.
        scope: Option<String>,
    },
}

/// Parses the challenges of `WWW-Authenticate` header values; the first Bearer or Basic
/// one is used (Bearer preferred, as containers/image does).
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Option<Challenge> {
    let mut basic = false;
    for v in values {
        for (scheme, params) in split_challenges(v) {
            match scheme.to_ascii_lowercase().as_str() {
                "bearer" => {
                    if let Some(realm) = params.get("realm") {
                        return Some(Challenge::Bearer {
                            realm: realm.clone(),
                            service: params.get("service").cloned(),
                            scope: params.get("scope").cloned(),
                        });
                    }
                }
                "basic" => basic = true,
                _ => {}
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

/// Splits one header value into `(scheme, params)` challenges. Parameter names are
/// lower-cased; values may be quoted with `\` escapes.
fn split_challenges(v: &str) -> Vec<(String, BTreeMap<String, String>)> {
    let b = v.as_bytes();
    let mut i = 0;
    let mut out: Vec<(String, BTreeMap<String, String>)> = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && (b[*i] == b' ' || b[*i] == b'\t' || b[*i] == b',') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && !matches!(b[*i], b' ' | b'\t' | b',' | b'=') {
            *i += 1;
        }
        v[start..*i].to_string()
    };
    loop {
        skip_ws(&mut i);
        if i >= b.len() {
            break;
        }
        let word = token(&mut i);
        if i < b.len() && b[i] == b'=' && !out.is_empty() {
            // A parameter of the current challenge.
            i += 1;
            let value = if i < b.len() && b[i] == b'"' {
                i += 1;
                let mut s = String::new();
                while i < b.len() && b[i] != b'"' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    let ch_len = v[i..].chars().next().map_or(1, char::len_utf8);
                    s.push_str(&v[i..i + ch_len]);
                    i += ch_len;
                }
                i += 1;
                s
            } else {
                token(&mut i)
            };
            if let Some((_, params)) = out.last_mut() {
                params.insert(word.to_ascii_lowercase(), value);
            }
        } else {
            out.push((word, BTreeMap::new()));
        }
    }
    out
}

/// A token server's answer (distribution token spec, and the OAuth2 form).
#[derive(Debug, Deserialize)]
pub struct TokenAnswer {
    /// The token (docker's name).
    #[serde(default)]
    pub token: Option<String>,
    /// The token (OAuth2's name).
    #[serde(default)]
    pub access_token: Option<String>,
    /// Lifetime in seconds.
    #[serde(default)]
    pub expires_in: Option<u64>,
}

impl TokenAnswer {
    /// The token and its lifetime, or `None` when the answer carries no token.
    pub fn into_token(self) -> Option<(String, Duration)> {
        let t = self.token.filter(|t| !t.is_empty()).or(self.access_token)?;
        let life = self
            .expires_in
            .filter(|&s| s > 0)
            .map_or(DEFAULT_TOKEN_LIFETIME, Duration::from_secs);
        Some((t, life))
    }
}

/// The scope to pull from `repository`.
pub fn pull_scope(repository: &str) -> String {
    format!("repository:{repository}:pull")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_parse_table() {
        let bearer = |realm: &str, service: Option<&str>, scope: Option<&str>| {
            Some(Challenge::Bearer {
                realm: realm.into(),
                service: service.map(Into::into),
                scope: scope.map(Into::into),
            })
        };
        let cases: Vec<(Vec<&str>, Option<Challenge>)> = vec![
            (
                vec![
                    r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#,
                ],
                bearer(
                    "https://auth.docker.io/token",
                    Some("registry.docker.io"),
                    Some("repository:library/alpine:pull"),
                ),
            ),
            (
                vec![r#"Basic realm="Registry Realm""#],
                Some(Challenge::Basic),
            ),
            (vec![r#"basic realm=x"#], Some(Challenge::Basic)),
            (
                vec![r#"Basic realm="a", Bearer Realm="http://t/token""#],
                bearer("http://t/token", None, None),
            ),
            (
                vec![r#"Basic realm="a""#, r#"Bearer realm="r\"q""#],
                bearer("r\"q", None, None),
            ),
            (
                vec![
                    r#"Bearer realm="https://t/tok",error="insufficient_scope",scope="a:b:pull,push""#,
                ],
                bearer("https://t/tok", None, Some("a:b:pull,push")),
            ),
            (vec!["Negotiate"], None),
            (vec!["Bearer service=x"], None),
            (vec![""], None),
        ];
        for (values, want) in cases {
            assert_eq!(parse_challenges(values.iter().copied()), want, "{values:?}");
        }
    }

    #[test]
    fn token_answers() {
        let a: TokenAnswer = serde_json::from_str(r#"{"token":"t","expires_in":300}"#).unwrap();
        assert_eq!(a.into_token(), Some(("t".into(), Duration::from_secs(300))));
        let a: TokenAnswer = serde_json::from_str(r#"{"access_token":"o"}"#).unwrap();
        assert_eq!(a.into_token(), Some(("o".into(), DEFAULT_TOKEN_LIFETIME)));
        let a: TokenAnswer = serde_json::from_str(r#"{"token":"","access_token":"o"}"#).unwrap();
        assert_eq!(a.into_token().unwrap().0, "o");
        let a: TokenAnswer = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(a.into_token(), None);
        assert_eq!(
            pull_scope("library/alpine"),
            "repository:library/alpine:pull"
        );
    }
}
