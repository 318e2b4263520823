//! A recording, fault-injecting HTTP proxy on loopback, between rimgfs and a plain-HTTP
//! registry: it counts requests and body bytes per path, and breaks chosen requests.
//!
//! ```ignore
//! let proxy = Proxy::start(&reg.addr);
//! proxy.inject("/blobs/", Fault::CutShort, 1);     // the next blob answer is cut in half
//! rimgfs(&["inspect", &proxy.reference("team/app:1"), "--tls-verify=false"]);
//! assert_eq!(proxy.count("/blobs/sha256:abc"), 0);
//! ```
//! Each request is forwarded on its own upstream connection (HTTP/1.0, so the registry
//! closes it and the body needs no de-chunking) and answered to the client with a
//! `Content-Length`, keeping the client's connection alive. Plain threads, no async.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The longest a stalled answer is held before the proxy gives up on it (the test or the
/// client normally ends it much sooner).
const STALL_LIMIT: Duration = Duration::from_secs(90);

/// What to do to a request instead of forwarding it faithfully.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Drop the `Range` header: the registry answers 200 with the whole blob.
    WholeBody,
    /// Answer `429 Too Many Requests` with this `Retry-After`.
    TooMany(String),
    /// Answer `503 Service Unavailable`.
    Unavailable,
    /// Forward, then send the full `Content-Length` but only half the body, and close.
    CutShort,
    /// Forward, then send the headers and half the body, and hold the connection until
    /// [`Proxy::release`] (or drop).
    Stall,
    /// Hold the request until [`Proxy::release`] (or drop), then forward it faithfully.
    Hold,
    /// Answer `307` to the same path at this base URL (`http://host:port`).
    Redirect(String),
    /// Close the connection without answering.
    Reset,
}

/// One request as the proxy saw it.
#[derive(Clone, Debug)]
pub struct Record {
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The `Range` header.
    pub range: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The status sent back (0 for a reset).
    pub status: u16,
    /// Body bytes sent back.
    pub bytes: u64,
    /// The fault applied.
    pub fault: Option<Fault>,
}

struct Rule {
    path_contains: String,
    fault: Fault,
    times: usize,
}

struct State {
    upstream: String,
    /// Replaces the client's `Authorization` upstream (storage that has its own way in).
    upstream_auth: Option<String>,
    rules: Mutex<Vec<Rule>>,
    log: Mutex<Vec<Record>>,
    released: Mutex<bool>,
    wake: Condvar,
    stop: AtomicBool,
}

/// A running proxy; stops accepting and releases stalls on drop.
pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    state: Arc<State>,
}

impl Proxy {
    /// A proxy to `upstream` (`host:port`, plain HTTP).
    pub fn start(upstream: &str) -> Proxy {
        Proxy::start_with(upstream, None)
    }

    /// A proxy that sends `upstream_auth` as the `Authorization` of every forwarded request.
    pub fn start_with(upstream: &str, upstream_auth: Option<String>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            upstream_auth,
            rules: Mutex::new(Vec::new()),
            log: Mutex::new(Vec::new()),
            released: Mutex::new(false),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(&st, conn));
            }
        });
        Proxy { addr, state }
    }

    /// `docker://ADDR/name` for a `name[:tag|@digest]` behind the proxy.
    pub fn reference(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.addr)
    }

    /// Applies `fault` to the next `times` requests whose path contains `path_contains`.
    pub fn inject(&self, path_contains: &str, fault: Fault, times: usize) {
        self.state.rules.lock().unwrap().push(Rule {
            path_contains: path_contains.to_string(),
            fault,
            times,
        });
    }

    /// Removes every fault not applied yet.
    pub fn heal(&self) {
        self.state.rules.lock().unwrap().clear();
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Record> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests whose path contains `s`.
    pub fn count(&self, s: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.contains(s))
            .count()
    }

    /// Body bytes sent for requests whose path contains `s`.
    pub fn bytes(&self, s: &str) -> u64 {
        self.requests()
            .iter()
            .filter(|r| r.path.contains(s))
            .map(|r| r.bytes)
            .sum()
    }

    /// Requests per path.
    pub fn per_path(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.requests() {
            *m.entry(r.path).or_insert(0) += 1;
        }
        m
    }

    /// Forgets the requests seen so far.
    pub fn clear(&self) {
        self.state.log.lock().unwrap().clear();
    }

    /// Ends every stall and hold now and from now on (until [`Proxy::rearm`]).
    pub fn release(&self) {
        *self.state.released.lock().unwrap() = true;
        self.state.wake.notify_all();
    }

    /// Makes stalls and holds wait again for the next [`Proxy::release`].
    pub fn rearm(&self) {
        *self.state.released.lock().unwrap() = false;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        self.release();
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
    }
}

/// A parsed request head.
struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Head {
    fn get(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

fn read_head(r: &mut impl BufRead) -> Option<Head> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    Some(Head {
        method,
        path,
        headers,
    })
}

/// Serves one client connection, request after request.
fn serve(st: &State, conn: TcpStream) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    while let Some(head) = read_head(&mut reader) {
        let len: usize = head
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let fault = take_fault(st, &head.path);
        let mut rec = Record {
            method: head.method.clone(),
            path: head.path.clone(),
            range: head.get("range"),
            authorization: head.get("authorization"),
            status: 0,
            bytes: 0,
            fault: fault.clone(),
        };
        // Logged on arrival (a stalled request is seen while it stalls), completed later.
        let idx = {
            let mut log = st.log.lock().unwrap();
            log.push(rec.clone());
            log.len() - 1
        };
        let keep = answer(st, &head, &body, fault.as_ref(), &mut out, &mut rec, idx);
        publish(st, idx, &rec);
        if !keep {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// Updates a logged record (unless the log was cleared meanwhile).
fn publish(st: &State, idx: usize, rec: &Record) {
    let mut log = st.log.lock().unwrap();
    if let Some(r) = log.get_mut(idx).filter(|r| r.path == rec.path) {
        *r = rec.clone();
    }
}

fn take_fault(st: &State, path: &str) -> Option<Fault> {
    let mut rules = st.rules.lock().unwrap();
    let i = rules
        .iter()
        .position(|r| r.times > 0 && path.contains(&r.path_contains))?;
    rules[i].times -= 1;
    let f = rules[i].fault.clone();
    if rules[i].times == 0 {
        rules.remove(i);
    }
    Some(f)
}

/// Answers one request; returns whether the connection stays usable. The record is
/// published before the answer is written, so a client that has read the answer finds
/// it complete in the log.
fn answer(
    st: &State,
    head: &Head,
    body: &[u8],
    fault: Option<&Fault>,
    out: &mut TcpStream,
    rec: &mut Record,
    idx: usize,
) -> bool {
    let canned = |out: &mut TcpStream, rec: &mut Record, status: u16, extra: &str| {
        rec.status = status;
        rec.bytes = 2;
        publish(st, idx, rec);
        let msg = format!(
            "HTTP/1.1 {status} Fault\r\nContent-Length: 2\r\n{extra}Connection: keep-alive\r\n\r\n{{}}"
        );
        out.write_all(msg.as_bytes()).is_ok()
    };
    match fault {
        Some(Fault::TooMany(after)) => {
            return canned(out, rec, 429, &format!("Retry-After: {after}\r\n"));
        }
        Some(Fault::Unavailable) => return canned(out, rec, 503, ""),
        Some(Fault::Redirect(base)) => {
            return canned(out, rec, 307, &format!("Location: {base}{}\r\n", head.path));
        }
        Some(Fault::Reset) => return false,
        Some(Fault::Hold) => wait_for_release(st),
        _ => {}
    }
    let Some((status_line, headers, resp_body)) = forward(st, head, body, fault) else {
        return canned(out, rec, 502, "");
    };
    rec.status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let is_head = head.method == "HEAD";
    let mut msg = status_line.replacen("HTTP/1.0", "HTTP/1.1", 1);
    msg.push_str("\r\n");
    let mut declared = None;
    for (k, v) in &headers {
        let lk = k.to_ascii_lowercase();
        if lk == "content-length" {
            declared = Some(v.clone());
            continue;
        }
        if matches!(
            lk.as_str(),
            "connection" | "keep-alive" | "transfer-encoding"
        ) {
            continue;
        }
        msg.push_str(&format!("{k}: {v}\r\n"));
    }
    let length = if is_head {
        declared.unwrap_or_else(|| "0".into())
    } else {
        resp_body.len().to_string()
    };
    msg.push_str(&format!(
        "Content-Length: {length}\r\nConnection: keep-alive\r\n\r\n"
    ));
    let broken = matches!(fault, Some(Fault::CutShort | Fault::Stall));
    let sent = match (is_head, broken) {
        (true, _) => &resp_body[..0],
        (false, true) => &resp_body[..resp_body.len() / 2],
        (false, false) => &resp_body[..],
    };
    rec.bytes = sent.len() as u64;
    publish(st, idx, rec);
    if out.write_all(msg.as_bytes()).is_err() || out.write_all(sent).is_err() {
        return false;
    }
    if fault == Some(&Fault::Stall) {
        let _ = out.flush();
        wait_for_release(st);
    }
    !broken
}

/// Waits (at most [`STALL_LIMIT`]) until [`Proxy::release`] or the proxy's drop.
fn wait_for_release(st: &State) {
    let released = st.released.lock().unwrap();
    let _ = st.wake.wait_timeout_while(released, STALL_LIMIT, |r| {
        !*r && !st.stop.load(Ordering::SeqCst)
    });
}

/// An upstream answer: status line, headers, body.
type Upstream = (String, Vec<(String, String)>, Vec<u8>);

/// Sends the request upstream on a fresh connection; the status line, headers and body.
fn forward(st: &State, head: &Head, body: &[u8], fault: Option<&Fault>) -> Option<Upstream> {
    let mut up = TcpStream::connect(&st.upstream).ok()?;
    let mut msg = format!("{} {} HTTP/1.0\r\n", head.method, head.path);
    for (k, v) in &head.headers {
        let lk = k.to_ascii_lowercase();
        let skip = matches!(
            lk.as_str(),
            "connection" | "keep-alive" | "proxy-connection"
        ) || (lk == "range" && fault == Some(&Fault::WholeBody))
            || (lk == "authorization" && st.upstream_auth.is_some());
        if !skip {
            msg.push_str(&format!("{k}: {v}\r\n"));
        }
    }
    if let Some(a) = &st.upstream_auth {
        msg.push_str(&format!("Authorization: {a}\r\n"));
    }
    msg.push_str("Connection: close\r\n\r\n");
    up.write_all(msg.as_bytes()).ok()?;
    up.write_all(body).ok()?;
    let mut r = BufReader::new(up);
    let mut status = String::new();
    r.read_line(&mut status).ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            break;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let mut resp_body = Vec::new();
    if head.method != "HEAD" {
        r.read_to_end(&mut resp_body).ok()?;
    }
    Some((status.trim_end().to_string(), headers, resp_body))
}
