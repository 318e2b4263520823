//! [`BlobFetch`] for a registry repository: blob bytes by `Range` request.
//!
//! - A range asks for `bytes=A-B` and expects 206 with that `Content-Range`; a 200 with the
//!   whole blob is legal, and is read past the offset. Anything shorter, longer or elsewhere
//!   is an error naming the blob, retried when another attempt may fix it (a cut body, a
//!   stall, a 5xx), never served.
//! - A stream resumes where it broke with a new range request, a bounded number of times.
//! - Nothing is verified here: the layer level checks what it reads against the digests it
//!   knows. Sizes from the manifest are checked, since a registry that disagrees about a
//!   blob's size is serving something else.
//!
//! Dependencies: client, image::remote, digest.

use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Arc;

use super::client::{Failure, Method, Session};
use crate::image::digest::Digest;
use crate::image::remote::{BlobFetch, Spent};

/// The blobs of one repository on one endpoint (`None`: `--offline`, nothing is fetched).
#[derive(Clone, Debug)]
pub struct RepoBlobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    session: Option<Arc<Session>>,
    repository: String,
    name: String,
    sizes: HashMap<Digest, u64>,
}

type Body = ureq::BodyReader<'static>;

impl RepoBlobs {
    /// The blobs of `repository` through `session`; `sizes` are the manifest's, `name`
    /// (`docker://host/repository`) names it in messages.
    pub fn new(
        session: Option<Arc<Session>>,
        repository: &str,
        name: String,
        sizes: HashMap<Digest, u64>,
    ) -> RepoBlobs {
        RepoBlobs {
            inner: Arc::new(Inner {
                session,
                repository: repository.to_string(),
                name,
                sizes,
            }),
        }
    }
}

impl Inner {
    fn session(&self, digest: &Digest) -> Result<&Session, Failure> {
        self.session.as_deref().ok_or_else(|| {
            Failure::fatal(format!(
                "blob {digest}: not in the cache, and --offline forbids fetching it"
            ))
        })
    }

    /// Requests the blob from `offset` (to `offset + len`, or its end) and returns the body
    /// positioned at `offset` with the number of bytes that are to follow, when known.
    fn open_at(
        &self,
        digest: &Digest,
        offset: u64,
        len: Option<u64>,
    ) -> Result<(Body, Option<u64>), Failure> {
        let session = self.session(digest)?;
        let host = &session.host;
        let known = self.sizes.get(digest).copied();
        if let (Some(size), Some(l)) = (known, len) {
            if offset + l > size {
                return Err(Failure::fatal(format!(
                    "blob {digest}: range {offset}+{l} is beyond its end ({size} bytes)"
                )));
            }
        }
        let mut headers = Vec::new();
        match len {
            Some(l) => headers.push(("Range", format!("bytes={offset}-{}", offset + l - 1))),
            None if offset > 0 => headers.push(("Range", format!("bytes={offset}-"))),
            None => {}
        }
        let path = format!("/v2/{}/blobs/{digest}", self.repository);
        let resp = session
            .request(Method::Get, &path, &headers, &self.repository)
            .map_err(|f| f.context(&format!("blob {digest}")))?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_length = header("content-length").and_then(|v| v.parse::<u64>().ok());
        let wrong = |what: String| Failure::fatal(format!("blob {digest}: {what} from {host}"));
        let size_check = |total: Option<u64>| match (known, total) {
            (Some(k), Some(t)) if k != t => Err(wrong(format!(
                "the registry's blob is {t} bytes, the manifest says {k}"
            ))),
            _ => Ok(()),
        };
        match status {
            206 => {
                let cr = header("content-range").unwrap_or_default();
                let (start, last, total) = parse_content_range(&cr)
                    .ok_or_else(|| wrong(format!("a 206 with Content-Range {cr:?}")))?;
                size_check(total)?;
                let count = last + 1 - start;
                let want = len.or_else(|| total.or(known).map(|t| t - offset));
                if start != offset || want.is_some_and(|w| w != count) {
                    return Err(wrong(format!(
                        "bytes {start}-{last} instead of the range asked for"
                    )));
                }
                if content_length.is_some_and(|c| c != count) {
                    return Err(wrong(format!(
                        "a body of {} bytes for a range of {count}",
                        content_length.unwrap_or(0)
                    )));
                }
                Ok((resp.into_body().into_reader(), Some(count)))
            }
            200 => {
                // The whole blob: legal, if wasteful; skip to the offset.
                let total = content_length.or(known);
                size_check(content_length)?;
                if let Some(t) = total {
                    if offset > t {
                        return Err(wrong(format!("offset {offset} beyond its end ({t} bytes)")));
                    }
                }
                let mut body = resp.into_body().into_reader();
                let skipped = io::copy(&mut (&mut body).take(offset), &mut io::sink())
                    .map_err(|e| Failure::transient(format!("blob {digest}: {e} from {host}")))?;
                if skipped != offset {
                    return Err(Failure::transient(format!(
                        "blob {digest}: body cut short after {skipped} bytes from {host}"
                    )));
                }
                let rest = len.or_else(|| total.map(|t| t - offset));
                Ok((body, rest))
            }
            416 => Err(wrong(format!("range from {offset} not satisfiable"))),
            404 => Err(Failure::fatal(format!(
                "blob {digest} is unknown to {host} (repository {})",
                self.repository
            ))),
            s => Err(wrong(format!(
                "unexpected answer {}",
                super::client::status_text(s)
            ))),
        }
    }

    /// Reads exactly `n` bytes of a body.
    fn read_exact(&self, digest: &Digest, body: &mut Body, n: u64) -> Result<Vec<u8>, Failure> {
        let host = self.session.as_ref().map_or("", |s| s.host.as_str());
        let mut buf = Vec::with_capacity(n.min(1 << 24) as usize);
        let got = io::copy(&mut body.take(n), &mut buf)
            .map_err(|e| Failure::transient(format!("blob {digest}: {e} from {host}")))?;
        if got != n {
            return Err(Failure::transient(format!(
                "blob {digest}: body cut short after {got} of {n} bytes from {host}"
            )));
        }
        Ok(buf)
    }
}

/// `bytes A-B/TOTAL` (or `/*`) → (A, B, TOTAL).
fn parse_content_range(v: &str) -> Option<(u64, u64, Option<u64>)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b): (u64, u64) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    if b < a || total.is_some_and(|t| b >= t) {
        return None;
    }
    Some((a, b, total))
}

/// A failure as an I/O error; one the client will not retry (its attempts spent, or final)
/// is marked so the layer level does not multiply the attempts.
fn io_error(name: &str, f: Failure) -> io::Error {
    let msg = format!("{name}: {}", f.message);
    if !f.retryable() {
        Spent::error(msg)
    } else {
        io::Error::other(msg)
    }
}

impl BlobFetch for RepoBlobs {
    fn stream(&self, digest: &Digest, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        let end = self.inner.sizes.get(digest).copied();
        if let Some(size) = end.filter(|&size| offset >= size) {
            if offset > size {
                return Err(io_error(
                    &self.inner.name,
                    Failure::fatal(format!(
                        "blob {digest}: offset {offset} is beyond its end ({size} bytes)"
                    )),
                ));
            }
            // At the end: nothing to ask for (a range there is not satisfiable).
            return Ok(Box::new(io::empty()));
        }
        let mut s = Stream {
            inner: self.inner.clone(),
            digest: digest.clone(),
            pos: offset,
            end,
            body: None,
            failures: 0,
        };
        s.reopen().map_err(|f| io_error(&self.inner.name, f))?;
        Ok(Box::new(s))
    }

    fn range(&self, digest: &Digest, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let session = inner
            .session(digest)
            .map_err(|f| io_error(&inner.name, f))?;
        session
            .retrying(|| {
                let (mut body, _) = inner.open_at(digest, offset, Some(len))?;
                inner.read_exact(digest, &mut body, len)
            })
            .map_err(|f| io_error(&inner.name, f))
    }

    fn describe(&self) -> String {
        self.inner.name.clone()
    }
}

/// A blob read from an offset to its end, resuming with a new range request when the body
/// breaks.
struct Stream {
    inner: Arc<Inner>,
    digest: Digest,
    pos: u64,
    /// Where the blob ends, once known.
    end: Option<u64>,
    body: Option<Body>,
    /// Breaks so far; after the client's attempts the stream fails.
    failures: u32,
}

impl Stream {
    fn reopen(&mut self) -> Result<(), Failure> {
        let session = self.inner.session(&self.digest)?;
        let (body, rest) = session.retrying(|| self.inner.open_at(&self.digest, self.pos, None))?;
        if let Some(r) = rest {
            self.end = Some(self.pos + r);
        }
        self.body = Some(body);
        Ok(())
    }

    fn broke(&mut self, why: String) -> io::Result<()> {
        self.body = None;
        self.failures += 1;
        let attempts = self
            .inner
            .session
            .as_ref()
            .map_or(1, |s| s.options().attempts);
        let msg = format!("blob {}: {why}", self.digest);
        if self.failures >= attempts {
            return Err(io::Error::other(format!(
                "{}: {msg} (after {} attempts)",
                self.inner.name, self.failures
            )));
        }
        log::info!("{}: {msg}; resuming at byte {}", self.inner.name, self.pos);
        std::thread::sleep(super::client::backoff(self.failures));
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.end == Some(self.pos) {
                return Ok(0);
            }
            if self.body.is_none() {
                self.reopen().map_err(|f| io_error(&self.inner.name, f))?;
            }
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            // Never read past the known end: bytes beyond it are not this blob's.
            let want = self
                .end
                .map_or(buf.len(), |e| (e - self.pos).min(buf.len() as u64) as usize);
            match body.read(&mut buf[..want]) {
                Ok(0) if self.end.is_none() => return Ok(0),
                Ok(0) => {
                    let why = format!(
                        "body cut short at byte {} of {}",
                        self.pos,
                        self.end.unwrap_or(0)
                    );
                    self.broke(why)?;
                }
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) => self.broke(e.to_string())?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_table() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some((0, 99, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-5/*"), Some((5, 5, None)));
        assert_eq!(parse_content_range("bytes 10-5/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
    }
}
