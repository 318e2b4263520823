//! The Docker Engine API over its unix socket (`DOCKER_HOST=unix://PATH`, by default
//! `/var/run/docker.sock`), with ureq's HTTP/1.1: ureq speaks the protocol (chunked bodies,
//! keep-alive, timeouts) and a connector of ours hands it the socket instead of a TCP
//! connection. That connector API is ureq's `unversioned` one, so Cargo.lock pins the version
//! it was written against; the alternative, a hand-written HTTP client, would be more code
//! to get right than this adapter.
//!
//! Only what rimgfs needs: `GET /images/{name}/json` and `GET /images/{id}/get`.
//! Dependencies: error, ureq, serde.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};

/// The Engine's socket when `DOCKER_HOST` is not set.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may stay silent while answering (an export of a big image starts
/// only once the daemon has gathered its layers).
const RECV_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest inspect answer read (real ones are a few KiB).
const MAX_JSON: u64 = 16 << 20;
/// Characters of a reference Docker accepts; anything else would need URL escaping and
/// could never name an image.
const REF_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:@";

/// Why a request failed, in words for a one-line error.
#[derive(Debug)]
pub enum ApiError {
    /// The socket cannot be reached: the daemon is not running, or not here.
    Unreachable(String),
    /// The socket exists but this user may not use it.
    Denied(String),
    /// The daemon has no such image.
    NoSuchImage(String),
    /// Anything else: a bad answer, a broken connection, a timeout.
    Other(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Unreachable(s)
            | ApiError::Denied(s)
            | ApiError::NoSuchImage(s)
            | ApiError::Other(s) => f.write_str(s),
        }
    }
}

/// What `GET /images/{name}/json` says about an image (the fields rimgfs uses).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inspect {
    /// The image ID: the digest of its config.
    pub id: String,
    /// Its tags.
    #[serde(default)]
    pub repo_tags: Option<Vec<String>>,
    /// Its digests in registries (`name@sha256:…`).
    #[serde(default)]
    pub repo_digests: Option<Vec<String>>,
    /// Its layers.
    #[serde(default, rename = "RootFS")]
    pub root_fs: Option<RootFs>,
}

/// `RootFS` of an inspect answer.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    /// The diff_ids, bottom first.
    #[serde(default)]
    pub layers: Vec<String>,
}

/// A connection to one Engine.
pub struct Engine {
    socket: PathBuf,
    agent: ureq::Agent,
}

impl Engine {
    /// The Engine `DOCKER_HOST` names (only `unix://` sockets), or the default socket.
    pub fn from_env() -> Result<Engine, String> {
        let host = std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty());
        Ok(Engine::new(socket_of(host.as_deref())?))
    }

    /// The Engine listening on `socket`.
    pub fn new(socket: PathBuf) -> Engine {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_recv_response(Some(RECV_TIMEOUT))
            .timeout_recv_body(None)
            .build();
        let agent = ureq::Agent::with_parts(config, UnixConnector(socket.clone()), AnyHost);
        Engine { socket, agent }
    }

    /// Names the socket in messages.
    pub fn describe(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn get(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        // The host part is not used: the connector always dials the socket.
        let url = format!("http://docker{path}");
        self.agent
            .get(&url)
            .call()
            .map_err(|e| self.transport_error(e))
    }

    fn transport_error(&self, e: ureq::Error) -> ApiError {
        let sock = self.describe();
        match e {
            ureq::Error::Io(io) => match io.kind() {
                io::ErrorKind::PermissionDenied => ApiError::Denied(format!(
                    "permission denied on the Docker daemon socket {sock} \
                     (it is usually for root and the docker group)"
                )),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                    ApiError::Unreachable(format!(
                        "cannot connect to the Docker daemon at {sock}: {io}; is it running?"
                    ))
                }
                _ => ApiError::Other(format!("Docker daemon at {sock}: {io}")),
            },
            other => ApiError::Other(format!("Docker daemon at {sock}: {other}")),
        }
    }

    /// Checks a response's status, turning the daemon's `{"message": ...}` into an error.
    fn check(
        &self,
        mut resp: ureq::http::Response<ureq::Body>,
        name: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, ApiError> {
        let status = resp.status().as_u16();
        if status == 200 {
            return Ok(resp);
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        if status == 404 {
            return Err(ApiError::NoSuchImage(format!(
                "no image {name} in the Docker daemon at {}",
                self.describe()
            )));
        }
        Err(ApiError::Other(format!(
            "the Docker daemon at {} answered {status}: {message}",
            self.describe()
        )))
    }

    /// `GET /images/{name}/json`.
    pub fn inspect(&self, name: &str) -> Result<Inspect, ApiError> {
        if name.is_empty() || !name.chars().all(|c| REF_CHARS.contains(c)) {
            return Err(ApiError::NoSuchImage(format!(
                "{name:?} is not an image reference"
            )));
        }
        let resp = self.get(&format!("/images/{name}/json"))?;
        let mut resp = self.check(resp, name)?;
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_JSON)
            .read_to_vec()
            .map_err(|e| self.transport_error(e))?;
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::Other(format!(
                "the Docker daemon at {} sent an image description rimgfs cannot read: {e}",
                self.describe()
            ))
        })
    }

    /// `GET /images/{id}/get`: the image as a `docker save` tar, streamed.
    pub fn export(&self, id: &str) -> Result<impl Read + Send + 'static, ApiError> {
        let resp = self.get(&format!("/images/{id}/get"))?;
        let resp = self.check(resp, id)?;
        Ok(resp.into_body().into_reader())
    }
}

/// The socket path of a `DOCKER_HOST` value.
fn socket_of(host: Option<&str>) -> Result<PathBuf, String> {
    match host {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(h) => match h.strip_prefix("unix://") {
            Some(p) if Path::new(p).is_absolute() => Ok(PathBuf::from(p)),
            Some(_) => Err(format!("DOCKER_HOST={h}: the socket path must be absolute")),
            None => Err(format!(
                "DOCKER_HOST={h}: only unix:// sockets are supported"
            )),
        },
    }
}

/// Every host resolves to a placeholder address: the connector never dials it.
#[derive(Debug)]
struct AnyHost;

impl Resolver for AnyHost {
    fn resolve(
        &self,
        _uri: &ureq::http::Uri,
        _config: &ureq::config::Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        Ok(addrs)
    }
}

/// Dials the Engine's socket for every connection.
#[derive(Debug)]
struct UnixConnector(PathBuf);

impl<In: Transport> Connector<In> for UnixConnector {
    type Out = UnixTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        _chained: Option<In>,
    ) -> Result<Option<Self::Out>, ureq::Error> {
        let stream = UnixStream::connect(&self.0)?;
        let config = details.config;
        Ok(Some(UnixTransport {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
        }))
    }
}

/// An HTTP connection over a unix socket.
#[derive(Debug)]
struct UnixTransport {
    stream: UnixStream,
    buffers: LazyBuffers,
}

/// A socket error as ureq expects it: timeouts as timeouts.
fn io_error(e: io::Error, timeout: &NextTimeout) -> ureq::Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ureq::Error::Timeout(timeout.reason),
        _ => ureq::Error::Io(e),
    }
}

impl Transport for UnixTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), ureq::Error> {
        let timeout = timeout.for_write();
        self.stream
            .set_write_timeout(timeout.not_zero().map(|d| *d))?;
        let output = &self.buffers.output()[..amount];
        self.stream
            .write_all(output)
            .map_err(|e| io_error(e, &timeout))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, ureq::Error> {
        let timeout = timeout.for_read();
        self.stream
            .set_read_timeout(timeout.not_zero().map(|d| *d))?;
        let input = self.buffers.input_append_buf();
        let n = loop {
            match self.stream.read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| io_error(e, &timeout))?,
            }
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    fn is_open(&mut self) -> bool {
        // Open means: nothing to read now (a closed peer reads as end of file).
        if self.stream.set_nonblocking(true).is_err() {
            return false;
        }
        let open = matches!(
            self.stream.read(&mut [0u8]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        );
        open && self.stream.set_nonblocking(false).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_table() {
        assert_eq!(socket_of(None).unwrap(), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(
            socket_of(Some("unix:///tmp/d.sock")).unwrap(),
            PathBuf::from("/tmp/d.sock")
        );
        for bad in ["tcp://127.0.0.1:2375", "unix://rel.sock", "ssh://h"] {
            assert!(socket_of(Some(bad)).is_err(), "{bad}");
        }
    }

    /// A one-shot server on a socket: answers each request with `reply` and records it.
    fn serve(
        reply: &'static [u8],
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<Vec<u8>>) {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("d.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.ends_with(b"\r\n\r\n") {
                let n = c.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            c.write_all(reply).unwrap();
            req
        });
        (dir, sock, t)
    }

    #[test]
    fn inspect_over_a_socket_with_a_chunked_body() {
        let (_d, sock, t) = serve(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
              a\r\n{\"Id\":\"sha\r\n10\r\n256:1\",\"RepoTags\r\n8\r\n\":[\"a\"]}\r\n0\r\n\r\n",
        );
        let info = Engine::new(sock).inspect("a:latest").unwrap();
        assert_eq!(info.id, "sha256:1");
        assert_eq!(info.repo_tags, Some(vec!["a".to_string()]));
        let req = String::from_utf8(t.join().unwrap()).unwrap();
        assert!(
            req.starts_with("GET /images/a:latest/json HTTP/1.1\r\n"),
            "{req}"
        );
    }

    #[test]
    fn daemon_errors_are_one_line_and_name_the_socket() {
        let (_d, sock, t) = serve(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 35\r\n\r\n\
              {\"message\":\"No such image: nope:1\"}",
        );
        let e = Engine::new(sock.clone()).inspect("nope:1").unwrap_err();
        assert!(matches!(e, ApiError::NoSuchImage(_)), "{e}");
        assert!(e.to_string().contains(&sock.display().to_string()), "{e}");
        t.join().unwrap();
        let e = Engine::new(sock.with_file_name("none.sock"))
            .inspect("x")
            .unwrap_err();
        assert!(matches!(e, ApiError::Unreachable(_)), "{e}");
        assert!(!e.to_string().contains('\n'));
        let e = Engine::new(sock).inspect("a b").unwrap_err();
        assert!(e.to_string().contains("not an image reference"), "{e}");
    }
}
