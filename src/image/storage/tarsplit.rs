//! containers/storage's tar-split files: a layer tar's headers and padding as they were when
//! the layer was applied, with each file's payload left out (its bytes are the file in the
//! layer's directory). Replaying the records gives the original tar, byte for byte.
//!
//! The format (vbatts/tar-split `tar/storage`, version 1, the only one there is): a gzip
//! stream of JSON lines, one record each, numbered from 0 by `position`:
//! - `{"type":2,"payload":"<base64>","position":N}`: raw bytes of the tar (headers, PAX and
//!   GNU long-name records, padding, the end-of-archive blocks);
//! - `{"type":1,"name":"etc/hosts","size":N,"payload":"<crc64>","position":N}`: the next
//!   `size` bytes are the payload of file `name` (`name_raw`, base64, when it is not UTF-8).
//!
//! A record of another type, or out of sequence, is refused: it means a format this reader
//! does not know. [`TarStream`] replays a file with payloads either read from the layer's
//! directory (the whole tar, for `commit`) or given as zeros (enough for an index, which only
//! records where payloads start). Dependencies: error, sys (DirFd), storage (open_layer_file).

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;

use crate::sys::DirFd;

/// `type` of a record naming a file's payload.
const FILE_RECORD: u8 = 1;
/// `type` of a record holding raw tar bytes.
const SEGMENT_RECORD: u8 = 2;

/// One record as stored.
#[derive(Deserialize)]
struct RawRecord {
    #[serde(rename = "type")]
    kind: u8,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    name_raw: Option<String>,
    #[serde(default)]
    size: Option<i64>,
    #[serde(default)]
    payload: Option<String>,
    position: i64,
}

/// One record, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Record {
    /// Raw tar bytes.
    Segment(Vec<u8>),
    /// The payload of the file at `name` (as the tar names it), `size` bytes.
    File {
        /// The path, relative to the layer root.
        name: Vec<u8>,
        /// Its length.
        size: u64,
    },
}

/// The records of a tar-split stream, in order. Read a line at a time (the writer ends
/// each record with a newline), each line parsed from memory: several times faster than
/// parsing from the reader a byte at a time.
pub struct Records<R: Read> {
    reader: io::BufReader<R>,
    /// The current line and where its next record starts.
    line: Vec<u8>,
    at: usize,
    next: i64,
}

impl<F: Read> Records<BufReader<flate2::read::GzDecoder<BufReader<F>>>> {
    /// Reads a gzip-compressed tar-split file.
    pub fn open(f: F) -> Self {
        // serde_json reads a byte at a time: the buffer in front of the decoder makes that
        // cheap.
        let gz = flate2::read::GzDecoder::new(BufReader::with_capacity(1 << 16, f));
        Records::new(BufReader::with_capacity(1 << 16, gz))
    }
}

impl<R: Read> Records<R> {
    /// Reads records from the uncompressed JSON lines in `r`.
    pub fn new(r: R) -> Self {
        Records {
            reader: io::BufReader::with_capacity(1 << 16, r),
            line: Vec::new(),
            at: 0,
            next: 0,
        }
    }

    fn decode(&mut self, raw: RawRecord) -> Result<Record, String> {
        if raw.position != self.next {
            return Err(format!(
                "tar-split record {} where {} was expected",
                raw.position, self.next
            ));
        }
        self.next += 1;
        let b64 = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .map_err(|e| format!("tar-split record {}: bad base64: {e}", raw.position))
        };
        match raw.kind {
            SEGMENT_RECORD => Ok(Record::Segment(match &raw.payload {
                Some(p) => b64(p)?,
                None => Vec::new(),
            })),
            FILE_RECORD => {
                let name = match (&raw.name_raw, &raw.name) {
                    (Some(r), _) if !r.is_empty() => b64(r)?,
                    (_, Some(n)) => n.clone().into_bytes(),
                    _ => return Err(format!("tar-split record {}: no name", raw.position)),
                };
                let size = u64::try_from(raw.size.unwrap_or(0))
                    .map_err(|_| format!("tar-split record {}: negative size", raw.position))?;
                Ok(Record::File { name, size })
            }
            k => Err(format!(
                "tar-split record {} has type {k}, which this version of rimgfs does not know",
                raw.position
            )),
        }
    }
}

impl<R: Read> Iterator for Records<R> {
    type Item = Result<Record, String>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::io::BufRead;
        loop {
            let rest = self.line.get(self.at..).unwrap_or_default();
            if rest.iter().any(|b| !b.is_ascii_whitespace()) {
                let mut values = serde_json::Deserializer::from_slice(rest).into_iter();
                let raw = match values.next()? {
                    Ok(raw) => raw,
                    Err(e) => return Some(Err(format!("bad tar-split data: {e}"))),
                };
                self.at += values.byte_offset();
                return Some(self.decode(raw));
            }
            self.line.clear();
            self.at = 0;
            match self.reader.read_until(b'\n', &mut self.line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(Err(format!("bad tar-split data: {e}"))),
            }
        }
    }
}

/// Where file payloads come from while replaying.
pub enum Payloads {
    /// Zeros of the right length: the tar's layout without reading any file.
    Zeros,
    /// The files of the layer's directory.
    Dir(Arc<DirFd>),
}

/// What is being replayed now.
enum Current {
    /// Bytes of a segment, from `pos`.
    Segment {
        bytes: Vec<u8>,
        pos: usize,
    },
    /// `left` more payload bytes of a file (`None`: zeros).
    Payload {
        file: Option<File>,
        name: Vec<u8>,
        left: u64,
    },
    Idle,
}

/// The layer tar replayed from its tar-split records.
pub struct TarStream<R: Read> {
    records: Records<R>,
    payloads: Payloads,
    current: Current,
}

impl<R: Read> TarStream<R> {
    /// Replays `records` with payloads from `payloads`.
    pub fn new(records: Records<R>, payloads: Payloads) -> Self {
        TarStream {
            records,
            payloads,
            current: Current::Idle,
        }
    }

    /// Moves to the next record; false at the end.
    fn advance(&mut self) -> io::Result<bool> {
        let bad = |e: String| io::Error::new(io::ErrorKind::InvalidData, e);
        self.current = match self.records.next() {
            None => return Ok(false),
            Some(Err(e)) => return Err(bad(e)),
            Some(Ok(Record::Segment(bytes))) => Current::Segment { bytes, pos: 0 },
            Some(Ok(Record::File { size: 0, .. })) => Current::Idle,
            Some(Ok(Record::File { name, size })) => {
                let file = match &self.payloads {
                    Payloads::Zeros => None,
                    Payloads::Dir(dir) => Some(super::open_layer_file(dir, &name, size)?),
                };
                Current::Payload {
                    file,
                    name,
                    left: size,
                }
            }
        };
        Ok(true)
    }
}

impl<R: Read> Read for TarStream<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            match &mut self.current {
                Current::Segment { bytes, pos } if *pos < bytes.len() => {
                    let n = (bytes.len() - *pos).min(buf.len());
                    buf[..n].copy_from_slice(&bytes[*pos..*pos + n]);
                    *pos += n;
                    return Ok(n);
                }
                Current::Payload { file, name, left } if *left > 0 => {
                    let want = (*left).min(buf.len() as u64) as usize;
                    let n = match file {
                        None => {
                            buf[..want].fill(0);
                            want
                        }
                        Some(f) => f.read(&mut buf[..want])?,
                    };
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!(
                                "{}: shorter than the layer's tar-split says",
                                String::from_utf8_lossy(name)
                            ),
                        ));
                    }
                    *left -= n as u64;
                    return Ok(n);
                }
                _ => {
                    if !self.advance()? {
                        return Ok(0);
                    }
                }
            }
        }
    }
}

impl<R: Read> TarStream<R> {
    /// Passes over up to `n` bytes (at least one) without producing them: a zero payload
    /// is only counted down. Returns how many; 0 only at the end of the records.
    fn pass(&mut self, n: u64) -> io::Result<u64> {
        loop {
            match &mut self.current {
                Current::Segment { bytes, pos } if *pos < bytes.len() => {
                    let k = ((bytes.len() - *pos) as u64).min(n);
                    *pos += k as usize;
                    return Ok(k);
                }
                Current::Payload {
                    file: None, left, ..
                } if *left > 0 => {
                    let k = (*left).min(n);
                    *left -= k;
                    return Ok(k);
                }
                Current::Payload {
                    file: Some(_),
                    left,
                    ..
                } if *left > 0 => {
                    let mut buf = [0u8; 8192];
                    let want = n.min(buf.len() as u64) as usize;
                    return self.read(&mut buf[..want]).map(|k| k as u64);
                }
                _ => {
                    if !self.advance()? {
                        return Ok(0);
                    }
                }
            }
        }
    }
}

/// A replay read by the tar walker: headers are produced, payloads only passed over (with
/// [`Payloads::Zeros`], a file's length costs nothing however big it is), and every byte
/// counted.
pub struct Skipping<R: Read> {
    stream: TarStream<R>,
    pos: u64,
}

impl<R: Read> Skipping<R> {
    /// Replays `records` with zero payloads.
    pub fn new(records: Records<R>) -> Self {
        Skipping {
            stream: TarStream::new(records, Payloads::Zeros),
            pos: 0,
        }
    }

    /// Passes over what is left; returns the length of the whole tar.
    pub fn finish(mut self) -> io::Result<u64> {
        loop {
            match self.stream.pass(u64::MAX)? {
                0 => return Ok(self.pos),
                k => self.pos += k,
            }
        }
    }
}

impl<R: Read> crate::image::tar::TarInput for Skipping<R> {
    fn read_exact_or_end(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.stream.read(&mut buf[got..])? {
                0 if got == 0 => return Ok(false),
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the tar-split data ends inside a tar header",
                    ));
                }
                n => got += n,
            }
        }
        self.pos += got as u64;
        Ok(true)
    }

    fn skip(&mut self, mut n: u64) -> io::Result<()> {
        while n > 0 {
            match self.stream.pass(n)? {
                0 => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the tar-split data ends inside a payload",
                    ));
                }
                k => {
                    n -= k;
                    self.pos += k;
                }
            }
        }
        Ok(())
    }
}

/// The length of the tar that a tar-split file describes, read from its records alone.
pub fn tar_len(f: impl Read) -> Result<u64, String> {
    let mut len = 0u64;
    for r in Records::open(f) {
        len += match r? {
            Record::Segment(b) => b.len() as u64,
            Record::File { size, .. } => size,
        };
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(b: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn lines(recs: &[String]) -> Vec<u8> {
        recs.join("\n").into_bytes()
    }

    #[test]
    fn records_decode_segments_files_and_raw_names() {
        let data = lines(&[
            format!(r#"{{"type":2,"payload":"{}","position":0}}"#, b64(b"hdr")),
            r#"{"type":1,"name":"etc/hosts","size":5,"payload":"AAAAAAAAAAA=","position":1}"#
                .into(),
            format!(
                r#"{{"type":1,"name_raw":"{}","size":0,"payload":null,"position":2}}"#,
                b64(b"caf\xe9")
            ),
            r#"{"type":2,"payload":null,"position":3}"#.into(),
        ]);
        let got: Vec<_> = Records::new(&data[..]).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            [
                Record::Segment(b"hdr".to_vec()),
                Record::File {
                    name: b"etc/hosts".to_vec(),
                    size: 5
                },
                Record::File {
                    name: b"caf\xe9".to_vec(),
                    size: 0
                },
                Record::Segment(Vec::new()),
            ]
        );
    }

    #[test]
    fn records_refuse_unknown_types_and_gaps() {
        let unknown = lines(&[r#"{"type":3,"position":0}"#.into()]);
        let e = Records::new(&unknown[..]).next().unwrap().unwrap_err();
        assert!(e.contains("type 3"), "{e}");
        let gap = lines(&[
            r#"{"type":2,"payload":null,"position":0}"#.into(),
            r#"{"type":2,"payload":null,"position":2}"#.into(),
        ]);
        let r: Result<Vec<_>, _> = Records::new(&gap[..]).collect();
        assert!(r.unwrap_err().contains("where 1 was expected"));
        let junk = b"{\"type\":".to_vec();
        assert!(Records::new(&junk[..]).next().unwrap().is_err());
    }

    #[test]
    fn stream_replays_segments_and_zero_payloads() {
        let data = lines(&[
            format!(r#"{{"type":2,"payload":"{}","position":0}}"#, b64(b"ab")),
            r#"{"type":1,"name":"f","size":3,"payload":null,"position":1}"#.into(),
            format!(r#"{{"type":2,"payload":"{}","position":2}}"#, b64(b"cd")),
        ]);
        let mut out = Vec::new();
        TarStream::new(Records::new(&data[..]), Payloads::Zeros)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"ab\0\0\0cd");
    }

    #[test]
    fn skipping_passes_over_payloads_and_counts_every_byte() {
        use crate::image::tar::TarInput;
        // A payload of a terabyte is passed over without being produced.
        let data = lines(&[
            format!(r#"{{"type":2,"payload":"{}","position":0}}"#, b64(b"head")),
            r#"{"type":1,"name":"f","size":1099511627776,"position":1}"#.into(),
            format!(r#"{{"type":2,"payload":"{}","position":2}}"#, b64(b"tail")),
        ]);
        let mut s = Skipping::new(Records::new(&data[..]));
        let mut buf = [0u8; 4];
        assert!(s.read_exact_or_end(&mut buf).unwrap());
        assert_eq!(&buf, b"head");
        s.skip(1 << 40).unwrap();
        assert!(s.read_exact_or_end(&mut buf[..2]).unwrap());
        assert_eq!(&buf[..2], b"ta");
        assert_eq!(s.finish().unwrap(), 8 + (1 << 40));
        // Skipping past the end, or a header cut short, is an error.
        let mut s = Skipping::new(Records::new(&data[..]));
        let e = s.skip((1 << 40) + 9).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        let mut s = Skipping::new(Records::new(&data[..]));
        s.skip(4 + (1 << 40)).unwrap();
        let mut long = [0u8; 5];
        assert!(s.read_exact_or_end(&mut long).is_err());
        let mut s = Skipping::new(Records::new(&data[..]));
        s.skip(8 + (1 << 40)).unwrap();
        assert!(!s.read_exact_or_end(&mut long).unwrap());
    }

    #[test]
    fn stream_reads_payloads_from_the_layer_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"xyz").unwrap();
        std::os::unix::fs::symlink("d/f", dir.path().join("link")).unwrap();
        let rec = |name: &str, size: u64| {
            lines(&[
                format!(r#"{{"type":2,"payload":"{}","position":0}}"#, b64(b"<")),
                format!(r#"{{"type":1,"name":"{name}","size":{size},"position":1}}"#),
            ])
        };
        let replay = |data: Vec<u8>| {
            let d = Arc::new(DirFd::open_root(dir.path()).unwrap());
            let mut out = Vec::new();
            TarStream::new(Records::new(&data[..]), Payloads::Dir(d))
                .read_to_end(&mut out)
                .map(|_| out)
        };
        assert_eq!(replay(rec("./d/f", 3)).unwrap(), b"<xyz");
        // A payload length that disagrees with the file, a symlink, a path that climbs out:
        // all refused.
        for (name, size) in [("d/f", 4), ("link", 3), ("../x", 1), ("d/../../x", 1)] {
            assert!(replay(rec(name, size)).is_err(), "{name} {size}");
        }
    }
}
