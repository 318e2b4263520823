//! HTTP to registries: one blocking client shared by every thread (the FUSE workers read
//! through it), with the distribution API's auth, redirects and retries.
//!
//! - Transport: ureq with rustls (no async runtime, so a FUSE worker just blocks in a read),
//!   one `Agent` per host with that host's TLS trust (`tls`), connect and per-read timeouts
//!   (a stalled body fails instead of hanging).
//! - A [`Session`] is one registry endpoint. Its first request pings `GET /v2/` to learn the
//!   scheme (HTTPS; plain HTTP too only when the endpoint is insecure) and the auth challenge.
//!   Basic sends the credential on each request; Bearer gets a token per scope from the
//!   realm (anonymously, or with the credential), caches it until shortly before it expires,
//!   and renews it on a 401.
//! - Redirects (blob storage) are followed here, not by ureq, so the `Authorization` header
//!   goes only to the registry's own scheme and host, and a redirect's URL, which may carry a
//!   signature in its query, is logged without its query.
//! - 429 and 5xx answers and transport failures are retried with exponential backoff,
//!   honouring `Retry-After`; a few attempts, then a one-line error naming the host.
//!
//! No lock is held across a request: locks guard only the cached challenge and tokens.
//! Dependencies: auth, creds, tls, error, ureq.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use ureq::http::{Response, Uri};
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Body};

use super::auth::{self, Challenge, TOKEN_RENEW_MARGIN, TokenAnswer};
use super::creds::{self, CredKind, CredOptions, Credential, Secret};
use super::tls;

/// Time to establish a connection (TCP and TLS).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for any read from the network; a body stalled longer fails.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts of one request, the first included, before its error is reported.
pub const ATTEMPTS: u32 = 5;
/// First backoff between attempts; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// Longest `Retry-After` honoured; a registry that asks for more is reported at once.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Redirect hops followed (registry → storage is one; a few more for CDNs).
const MAX_REDIRECTS: usize = 5;
/// Largest token-server answer read.
const MAX_TOKEN_ANSWER: u64 = 1 << 20;
/// OAuth2 client id sent with identity tokens (the token spec wants one).
const CLIENT_ID: &str = "rimgfs";

/// How requests are made: timeouts, retries, trust, credentials.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Per-read timeout.
    pub read_timeout: Duration,
    /// Attempts per request.
    pub attempts: u32,
    /// `--cert-dir`.
    pub cert_dir: Option<std::path::PathBuf>,
    /// `--creds` and `--authfile`.
    pub creds: CredOptions,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            connect_timeout: CONNECT_TIMEOUT,
            read_timeout: READ_TIMEOUT,
            attempts: ATTEMPTS,
            cert_dir: None,
            creds: CredOptions::default(),
        }
    }
}

/// A failed request, as a one-line message naming the host (never a credential).
#[derive(Clone, Debug)]
pub struct Failure {
    /// The message.
    pub message: String,
    /// The HTTP status, when the registry answered.
    pub status: Option<u16>,
    /// Whether another attempt may succeed, and how long the server asked to wait.
    retry: Option<Option<Duration>>,
}

impl Failure {
    /// A failure that no retry will fix.
    pub fn fatal(message: String) -> Failure {
        Failure {
            message,
            status: None,
            retry: None,
        }
    }

    /// The same failure, its message prefixed with what was being fetched.
    pub fn context(self, what: &str) -> Failure {
        Failure {
            message: format!("{what}: {}", self.message),
            ..self
        }
    }

    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        self.retry.is_some()
    }

    /// A failure another attempt may not have (a broken body, a short read).
    pub fn transient(message: String) -> Failure {
        Failure {
            message,
            status: None,
            retry: Some(None),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The agents, one per (host, insecure), shared by every session.
#[derive(Debug)]
pub struct Net {
    /// The options.
    pub opts: NetOptions,
    agents: Mutex<HashMap<(String, bool), Agent>>,
}

impl Net {
    /// A client with these options; nothing is connected yet.
    pub fn new(opts: NetOptions) -> Arc<Net> {
        Arc::new(Net {
            opts,
            agents: Mutex::new(HashMap::new()),
        })
    }

    /// The agent for `host`, made on first use with the host's TLS trust.
    fn agent(&self, host: &str, insecure: bool) -> Result<Agent, Failure> {
        let key = (host.to_string(), insecure);
        if let Some(a) = self.agents.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(a);
        }
        let material = tls::load(host, self.opts.cert_dir.as_deref())
            .map_err(|e| Failure::fatal(crate::error::chain(&e)))?;
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(RootCerts::new_with_certs(&material.roots))
            .client_cert(material.client)
            .disable_verification(insecure)
            .build();
        let agent: Agent = Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(self.opts.connect_timeout))
            .timeout_per_read(Some(self.opts.read_timeout))
            .user_agent(concat!("rimgfs/", env!("CARGO_PKG_VERSION")))
            // Blobs are compressed already, and a byte range must be the blob's bytes.
            .accept_encoding(ureq::config::AutoHeaderValue::None)
            .tls_config(tls)
            .build()
            .into();
        if let Ok(mut m) = self.agents.lock() {
            m.insert(key, agent.clone());
        }
        Ok(agent)
    }
}

/// An HTTP method rimgfs uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// HEAD.
    Head,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

/// A cached token (a [`Secret`], so no `Debug` of a session shows it).
#[derive(Clone, Debug)]
struct Token {
    value: Secret,
    renew_at: Instant,
}

/// What a session learnt from the registry.
#[derive(Debug, Default)]
struct State {
    /// `https` or `http`, once pinged.
    scheme: Option<&'static str>,
    /// The auth challenge (`None` inside: no auth needed).
    challenge: Option<Challenge>,
    /// The credential, once looked up (`None` inside: none found).
    cred: Option<Option<Credential>>,
    /// Bearer tokens by scope.
    tokens: HashMap<String, Token>,
}

/// One registry endpoint: `host[:port]`, with its scheme, challenge and tokens.
#[derive(Debug)]
pub struct Session {
    net: Arc<Net>,
    /// `host[:port]` connected to.
    pub host: String,
    /// The registry name credentials are looked up by.
    registry: String,
    /// Plain HTTP and unverified TLS allowed.
    insecure: bool,
    state: Mutex<State>,
}

/// An answer with a body still to read.
pub type Answer = Response<Body>;

impl Session {
    /// A session for `host`; nothing is sent until the first request.
    pub fn new(net: Arc<Net>, host: &str, registry: &str, insecure: bool) -> Session {
        Session {
            net,
            host: host.to_string(),
            registry: registry.to_string(),
            insecure,
            state: Mutex::new(State::default()),
        }
    }

    /// The options of the client.
    pub fn options(&self) -> &NetOptions {
        &self.net.opts
    }

    /// Sends `method path` (`/v2/...`) with `headers`, authorised for `repository`, and
    /// returns the final answer of any status but 401/403 (an error naming the registry and
    /// the credential's source), 429 and 5xx (retried, then an error).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        repository: &str,
    ) -> Result<Answer, Failure> {
        self.retrying(|| self.exchange(method, path, headers, repository))
    }

    /// Runs `f` until it succeeds, fails for good, or has used its attempts.
    pub fn retrying<T>(&self, mut f: impl FnMut() -> Result<T, Failure>) -> Result<T, Failure> {
        let attempts = self.net.opts.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match f() {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let Some(asked) = e.retry else {
                        return Err(e);
                    };
                    if attempt >= attempts {
                        // Spent: a caller's own retry loop must not try again.
                        return Err(Failure {
                            message: format!("{} (after {attempt} attempts)", e.message),
                            status: e.status,
                            retry: None,
                        });
                    }
                    let wait = match asked {
                        Some(w) if w > MAX_RETRY_AFTER => {
                            return Err(Failure::fatal(format!(
                                "{} (asks to retry after {} s)",
                                e.message,
                                w.as_secs()
                            )));
                        }
                        Some(w) => w,
                        None => backoff(attempt),
                    };
                    log::info!("{}; retrying in {} ms", e.message, wait.as_millis());
                    std::thread::sleep(wait);
                }
            }
        }
    }

    /// One authorised exchange: on a 401, the challenge is read again and the token
    /// renewed, once.
    fn exchange(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, String)],
        repository: &str,
    ) -> Result<Answer, Failure> {
        let scheme = self.scheme()?;
        let url = format!("{scheme}://{}{path}", self.host);
        let scope = auth::pull_scope(repository);
        let mut renewed = false;
        loop {
            let authorization = self.authorization(&scope, repository)?;
            let resp = self.call(method, &url, headers, authorization.as_deref())?;
            let status = resp.status().as_u16();
            if status == 401 && !renewed {
                // An expired token, or a repository that needs auth where /v2/ did not.
                renewed = true;
                let challenge = challenge_of(&resp);
                self.update(|s| {
                    s.tokens.remove(&scope);
                    if challenge.is_some() {
                        s.challenge = challenge;
                    }
                });
                continue;
            }
            if status == 401 || status == 403 {
                return Err(self.refused(&resp, repository));
            }
            return Ok(resp);
        }
    }

    /// The error of a refusal, naming the registry and where the credential came from.
    fn refused(&self, resp: &Answer, repository: &str) -> Failure {
        let cred = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.cred.clone())
            .flatten();
        let with = match cred {
            Some(c) => format!("with credentials from {}", c.source),
            None => "without credentials (none found: give --creds or --authfile)".into(),
        };
        Failure {
            message: format!(
                "{} refused access to {repository} ({}) {with}",
                self.host,
                status_text(resp.status().as_u16())
            ),
            status: Some(resp.status().as_u16()),
            retry: None,
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    /// The scheme, pinging `/v2/` first if this is the session's first request.
    fn scheme(&self) -> Result<&'static str, Failure> {
        if let Some(s) = self.state.lock().ok().and_then(|s| s.scheme) {
            return Ok(s);
        }
        let ping = |scheme: &'static str, attempts: bool| {
            let url = format!("{scheme}://{}/v2/", self.host);
            let once = || self.call(Method::Get, &url, &[], None);
            if attempts {
                self.retrying(once)
            } else {
                once()
            }
        };
        let (scheme, resp) = if self.insecure {
            // Unverified HTTPS first, then plain HTTP (containers/image's order).
            match ping("https", false) {
                Ok(r) => ("https", r),
                Err(e) if e.status.is_none() => {
                    log::debug!("{}: HTTPS failed ({e}); trying HTTP", self.host);
                    ("http", ping("http", true)?)
                }
                Err(e) => return Err(e),
            }
        } else {
            ("https", ping("https", true)?)
        };
        let status = resp.status().as_u16();
        let challenge = match status {
            200..=299 => None,
            401 => challenge_of(&resp),
            _ => {
                return Err(Failure::fatal(format!(
                    "{}: not a registry (GET /v2/ answered {})",
                    self.host,
                    status_text(status)
                )));
            }
        };
        log::debug!("{}: {scheme}, auth {challenge:?}", self.host);
        self.update(|s| {
            s.scheme = Some(scheme);
            s.challenge = challenge;
        });
        Ok(scheme)
    }

    /// The credential for this registry, looked up once.
    fn credential(&self, repository: &str) -> Result<Option<Credential>, Failure> {
        if let Some(c) = self.state.lock().ok().and_then(|s| s.cred.clone()) {
            return Ok(c);
        }
        let c = creds::lookup(&self.net.opts.creds, &self.registry, repository)
            .map_err(|e| Failure::fatal(crate::error::chain(&e)))?;
        if let Some(c) = &c {
            log::debug!("{}: credentials from {}", self.registry, c.source);
        }
        self.update(|s| s.cred = Some(c.clone()));
        Ok(c)
    }

    /// The `Authorization` value for a request in `scope`, if the registry wants one.
    fn authorization(&self, scope: &str, repository: &str) -> Result<Option<String>, Failure> {
        let challenge = self.state.lock().ok().and_then(|s| s.challenge.clone());
        match challenge {
            None => Ok(None),
            Some(Challenge::Basic) => match self.credential(repository)? {
                Some(Credential {
                    kind: CredKind::Password { username, password },
                    ..
                }) => Ok(Some(basic(&username, password.expose()))),
                Some(c) => Err(Failure::fatal(format!(
                    "{} wants a password, but {} has only an identity token",
                    self.host, c.source
                ))),
                None => Ok(None),
            },
            Some(Challenge::Bearer { realm, service, .. }) => {
                let now = Instant::now();
                let cached = self
                    .state
                    .lock()
                    .ok()
                    .and_then(|s| s.tokens.get(scope).cloned())
                    .filter(|t| t.renew_at > now);
                let token = match cached {
                    Some(t) => t.value.expose().to_string(),
                    None => self.fetch_token(&realm, service.as_deref(), scope, repository)?,
                };
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Gets a token for `scope` from `realm`, with the credential if there is one.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        repository: &str,
    ) -> Result<String, Failure> {
        let realm_uri: Uri = realm
            .parse()
            .map_err(|_| Failure::fatal(format!("{}: bad token realm {realm:?}", self.host)))?;
        if realm_uri.scheme_str() != Some("https") && !self.insecure {
            return Err(Failure::fatal(format!(
                "{}: its token server {realm} is not HTTPS (allowed only with --tls-verify=false \
                 or an insecure registries.conf entry)",
                self.host
            )));
        }
        let realm_host = realm_uri.authority().map_or("", |a| a.as_str()).to_string();
        let agent = self.net.agent(&realm_host, self.insecure)?;
        let cred = self.credential(repository)?;
        let resp = self.retrying(|| {
            let sent = match &cred {
                Some(Credential {
                    kind: CredKind::IdentityToken(t),
                    ..
                }) => {
                    let mut form = vec![
                        ("grant_type", "refresh_token"),
                        ("refresh_token", t.expose()),
                        ("client_id", CLIENT_ID),
                        ("scope", scope),
                    ];
                    if let Some(s) = service {
                        form.push(("service", s));
                    }
                    agent.post(realm).send_form(form)
                }
                _ => {
                    let mut req = agent.get(realm).query("scope", scope);
                    if let Some(s) = service {
                        req = req.query("service", s);
                    }
                    if let Some(Credential {
                        kind: CredKind::Password { username, password },
                        ..
                    }) = &cred
                    {
                        req = req.header("Authorization", basic(username, password.expose()));
                    }
                    req.call()
                }
            };
            let resp = sent.map_err(|e| transport(&realm_host, e))?;
            classify(&realm_host, resp)
        })?;
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            let mut f = self.refused(&resp, repository);
            f.message = format!("{} (token server {realm_host})", f.message);
            return Err(f);
        }
        if status != 200 {
            return Err(Failure::fatal(format!(
                "{}: token server {realm_host} answered {}",
                self.host,
                status_text(status)
            )));
        }
        let body = resp
            .into_body()
            .into_with_config()
            .limit(MAX_TOKEN_ANSWER)
            .read_to_vec()
            .map_err(|e| transport(&realm_host, e))?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|_| {
            Failure::fatal(format!(
                "{}: token server {realm_host} answered no JSON",
                self.host
            ))
        })?;
        let (token, life) = answer.into_token().ok_or_else(|| {
            Failure::fatal(format!(
                "{}: token server {realm_host} gave no token",
                self.host
            ))
        })?;
        let renew_at = Instant::now() + life.saturating_sub(TOKEN_RENEW_MARGIN);
        self.update(|s| {
            s.tokens.insert(
                scope.to_string(),
                Token {
                    value: Secret::new(token.clone()),
                    renew_at,
                },
            );
        });
        Ok(token)
    }

    /// One exchange, following redirects, without retries. 429 and 5xx become retryable
    /// failures; every other answer is returned.
    fn call(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, String)],
        authorization: Option<&str>,
    ) -> Result<Answer, Failure> {
        let origin = origin_of(url);
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let uri: Uri = url
                .parse()
                .map_err(|_| Failure::fatal(format!("{}: bad URL {}", self.host, redact(&url))))?;
            let host = uri.authority().map_or("", |a| a.as_str()).to_string();
            let agent = self.net.agent(&host, self.insecure)?;
            log::debug!("{} {}", method.as_str(), redact(&url));
            let mut req = match method {
                Method::Get => agent.get(&url),
                Method::Head => agent.head(&url),
            };
            for (k, v) in headers {
                req = req.header(*k, v);
            }
            // Credentials go only to the registry itself, never to a host it redirects to.
            if let Some(a) = authorization.filter(|_| origin_of(&url) == origin) {
                req = req.header("Authorization", a);
            }
            let resp = req.call().map_err(|e| transport(&host, e))?;
            let status = resp.status().as_u16();
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let Some(loc) = resp.headers().get("location").and_then(|v| v.to_str().ok()) else {
                    return Err(Failure::fatal(format!(
                        "{host}: redirect ({status}) without a Location"
                    )));
                };
                let next = resolve(&url, loc).ok_or_else(|| {
                    Failure::fatal(format!("{host}: bad redirect to {}", redact(loc)))
                })?;
                if url.starts_with("https:") && next.starts_with("http:") && !self.insecure {
                    return Err(Failure::fatal(format!(
                        "{host}: refusing a redirect from HTTPS to {}",
                        redact(&next)
                    )));
                }
                log::debug!("{host}: redirected to {}", redact(&next));
                url = next;
                continue;
            }
            return classify(&host, resp);
        }
        Err(Failure::fatal(format!(
            "{}: more than {MAX_REDIRECTS} redirects",
            self.host
        )))
    }
}

/// Turns 429 and 5xx answers into retryable failures (with their `Retry-After`).
fn classify(host: &str, resp: Answer) -> Result<Answer, Failure> {
    let status = resp.status().as_u16();
    if status == 429 || (500..=599).contains(&status) {
        let after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        return Err(Failure {
            message: format!("{host}: {}", status_text(status)),
            status: Some(status),
            retry: Some(after),
        });
    }
    Ok(resp)
}

/// A transport error as a failure; timeouts and broken connections may be retried,
/// TLS and name errors not.
pub fn transport(host: &str, e: ureq::Error) -> Failure {
    let retryable = matches!(
        e,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Protocol(_)
    );
    let message = match &e {
        ureq::Error::Timeout(t) => format!("{host}: timed out ({t})"),
        ureq::Error::Tls(t) => format!("{host}: TLS: {t}"),
        ureq::Error::Rustls(t) => format!("{host}: TLS: {t}"),
        ureq::Error::HostNotFound => format!("{host}: host not found"),
        // Its text would quote the URL, whose query may hold a storage signature.
        ureq::Error::BadUri(_) => format!("{host}: bad URL"),
        other => format!("{host}: {other}"),
    };
    Failure {
        message,
        status: None,
        retry: retryable.then_some(None),
    }
}

/// The challenge of a 401 answer.
fn challenge_of(resp: &Answer) -> Option<Challenge> {
    auth::parse_challenges(
        resp.headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok()),
    )
}

/// `Basic base64(user:password)`.
fn basic(user: &str, password: &str) -> String {
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// `scheme://authority` of a URL, what decides whether credentials may be sent.
fn origin_of(url: &str) -> String {
    match url.find("://") {
        Some(i) => {
            let rest = &url[i + 3..];
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            url[..i + 3 + end].to_ascii_lowercase()
        }
        None => String::new(),
    }
}

/// Resolves a `Location` against the URL it answered.
fn resolve(base: &str, loc: &str) -> Option<String> {
    if loc.contains("://") {
        return loc.parse::<Uri>().ok().map(|_| loc.to_string());
    }
    let origin = origin_of(base);
    if origin.is_empty() {
        return None;
    }
    if loc.starts_with("//") {
        let scheme = &origin[..origin.find("://")?];
        return Some(format!("{scheme}:{loc}"));
    }
    if loc.starts_with('/') {
        return Some(format!("{origin}{loc}"));
    }
    // Relative to the base's directory.
    let path_start = origin.len();
    let path = base[path_start..].split(['?', '#']).next().unwrap_or("");
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    Some(format!("{origin}{dir}{loc}"))
}

/// A URL without its query and fragment (which may carry a storage signature).
pub fn redact(url: &str) -> String {
    match url.find(['?', '#']) {
        Some(i) => format!("{}?…", &url[..i]),
        None => url.to_string(),
    }
}

/// `503 Service Unavailable`.
pub fn status_text(status: u16) -> String {
    match ureq::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
    {
        Some(r) => format!("{status} {r}"),
        None => status.to_string(),
    }
}

/// The wait before attempt `attempt + 1`.
pub fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1 << attempt.saturating_sub(1).min(16))
        .min(MAX_BACKOFF)
}

/// `Retry-After`: delay-seconds or an IMF-fixdate (RFC 9110 10.2.3).
fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let mut it = v.split([' ', ':']).filter(|s| !s.is_empty());
    let _weekday = it.next()?;
    let day: i64 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let (h, m, s): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next()? != "GMT" {
        return None;
    }
    let at = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
    let now = now.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(Duration::from_secs(at.saturating_sub(now).max(0) as u64))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:40 GMT", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn redirects_resolve_and_origins_compare() {
        let base = "http://reg:5000/v2/a/blobs/sha256:1";
        assert_eq!(
            resolve(base, "/x?sig=1").unwrap(),
            "http://reg:5000/x?sig=1"
        );
        assert_eq!(resolve(base, "https://s3/b").unwrap(), "https://s3/b");
        assert_eq!(resolve(base, "//cdn:80/c").unwrap(), "http://cdn:80/c");
        assert_eq!(
            resolve(base, "other").unwrap(),
            "http://reg:5000/v2/a/blobs/other"
        );
        assert_eq!(origin_of(base), origin_of("HTTP://REG:5000/other"));
        assert_ne!(origin_of(base), origin_of("http://reg:5001/v2/"));
        assert_ne!(origin_of(base), origin_of("https://reg:5000/v2/"));
        assert_eq!(redact("https://s3/b?X-Amz-Signature=abc"), "https://s3/b?…");
    }

    #[test]
    fn backoff_grows_and_stops() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(30), MAX_BACKOFF);
        assert_eq!(status_text(503), "503 Service Unavailable");
    }
}
