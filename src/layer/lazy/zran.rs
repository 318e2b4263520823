//! Random access into gzip streams (zlib's `zran`): while a blob streams by once, record a
//! checkpoint every [`SPAN`] bytes of output, at a deflate block boundary: where the next
//! block starts in the compressed stream (a byte offset plus the bits of the byte before it
//! that belong to the block), and the 32 KiB of output before it (the window its
//! back-references may reach). A later read at any offset inflates from the nearest
//! checkpoint below it instead of from the start.
//!
//! Each stretch of compressed bytes between two checkpoints (a *span*) also gets a digest, so a
//! span can be fetched again on its own and verified before it is inflated. Spans overlap by
//! one byte where a checkpoint falls inside a byte. Multi-member gzip (pigz, eStargz) is one
//! stream here: a member start is a checkpoint that needs no window.
//!
//! Windows are stored deflate-compressed, which keeps the index near 0.2% of the output for
//! ordinary layers and under 1% for incompressible ones (32 KiB per 4 MiB).
//! Dependencies: sys::zlib, image::digest, codec (wire helpers), flate2.

use std::io::{self, Read, Write};
use std::sync::Mutex;

use crate::image::digest::{Algorithm, Digest, Hasher};
use crate::layer::codec::{Cursor, put_bytes, put_u64};
use crate::sys::zlib::{Inflater, Wrap};

/// Output bytes between checkpoints: a read inflates at most this much before its data.
pub const SPAN: u64 = 4 << 20;
/// Length of a gzip member trailer (CRC-32, ISIZE), which raw inflating leaves unread.
const GZIP_TRAILER: u64 = 8;
/// Compressed bytes read at a time.
const INPUT_CHUNK: usize = 256 << 10;
/// Inflate states kept per layer for reads that continue where an earlier one stopped.
const PARKED_CURSORS: usize = 4;

/// How to resume inflating at a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// A gzip member starts here: nothing before it is needed.
    Member,
    /// Raw deflate resumes at a block boundary.
    Raw {
        /// Bits (1..=7) of the byte before `input` that belong to the block; 0 for none.
        bits: u8,
        /// The window (up to 32 KiB of preceding output), deflate-compressed.
        window: Box<[u8]>,
    },
}

/// A place where inflating can start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// Offset in the uncompressed output.
    pub out: u64,
    /// First whole compressed byte to feed.
    pub input: u64,
    /// How to start there.
    pub resume: Resume,
}

impl Checkpoint {
    /// First compressed byte this checkpoint needs (one before `input` when it starts
    /// mid-byte).
    pub fn first_byte(&self) -> u64 {
        match self.resume {
            Resume::Raw { bits, .. } if bits > 0 => self.input - 1,
            _ => self.input,
        }
    }
}

/// The checkpoints of one gzip blob, with a digest per span of compressed bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZranIndex {
    /// Checkpoints by increasing `out`; the first is at 0.
    pub checkpoints: Vec<Checkpoint>,
    /// Per checkpoint: digest of its span, compressed bytes `span(i)`.
    pub span_digests: Vec<Digest>,
    /// Length of the uncompressed output.
    pub out_len: u64,
    /// Length of the compressed blob.
    pub in_len: u64,
}

impl ZranIndex {
    /// The compressed bytes `[start, end)` that inflating from checkpoint `i` to checkpoint
    /// `i + 1` (or the end) reads.
    pub fn span(&self, i: usize) -> (u64, u64) {
        let start = self.checkpoints[i].first_byte();
        let end = self
            .checkpoints
            .get(i + 1)
            .map_or(self.in_len, |c| c.input.max(start));
        (start, end)
    }

    /// The last checkpoint at or before output offset `out`.
    pub fn checkpoint_for(&self, out: u64) -> usize {
        self.checkpoints
            .partition_point(|c| c.out <= out)
            .saturating_sub(1)
    }

    /// The span whose bytes include compressed offset `pos` (the later one where two share
    /// a byte).
    pub fn span_at(&self, pos: u64) -> usize {
        self.checkpoints
            .partition_point(|c| c.first_byte() <= pos)
            .saturating_sub(1)
    }

    /// Bytes the index takes when encoded (what the 1% target is about).
    pub fn encoded_len(&self) -> usize {
        let mut b = Vec::new();
        self.put(&mut b);
        b.len()
    }

    /// Appends the index in the cache's wire format.
    pub(crate) fn put(&self, b: &mut Vec<u8>) {
        put_u64(b, self.out_len);
        put_u64(b, self.in_len);
        put_u64(b, self.checkpoints.len() as u64);
        for (c, d) in self.checkpoints.iter().zip(&self.span_digests) {
            put_u64(b, c.out);
            put_u64(b, c.input);
            match &c.resume {
                Resume::Member => b.push(0xff),
                Resume::Raw { bits, window } => {
                    b.push(*bits);
                    put_bytes(b, window);
                }
            }
            put_bytes(b, d.as_str().as_bytes());
        }
    }

    /// Reads what [`ZranIndex::put`] wrote, checking that it is consistent.
    pub(crate) fn get(r: &mut Cursor<'_>) -> Option<ZranIndex> {
        let out_len = r.u64()?;
        let in_len = r.u64()?;
        let n = r.u64()?;
        let mut checkpoints = Vec::with_capacity((n as usize).min(r.data.len() / 16));
        let mut span_digests = Vec::with_capacity(checkpoints.capacity());
        for _ in 0..n {
            let out = r.u64()?;
            let input = r.u64()?;
            let resume = match r.u8()? {
                0xff => Resume::Member,
                bits @ 0..=7 => Resume::Raw {
                    bits,
                    window: r.bytes()?.into(),
                },
                _ => return None,
            };
            let d = Digest::parse(std::str::from_utf8(r.bytes()?).ok()?).ok()?;
            checkpoints.push(Checkpoint { out, input, resume });
            span_digests.push(d);
        }
        let ordered = checkpoints
            .windows(2)
            .all(|w| w[0].out < w[1].out && w[0].input < w[1].input);
        let first_ok = checkpoints
            .first()
            .is_some_and(|c| c.out == 0 && c.input == 0 && c.resume == Resume::Member);
        let in_range = checkpoints.last().is_some_and(|c| {
            c.out <= out_len && c.input <= in_len && c.first_byte() < in_len.max(1)
        });
        (ordered && first_ok && in_range).then_some(ZranIndex {
            checkpoints,
            span_digests,
            out_len,
            in_len,
        })
    }
}

/// Where inflating stands between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Inside a member (or raw deflate data that continues one).
    InMember { raw: bool },
    /// A member ended; the next byte, if any, starts another.
    Between,
}

fn compress_window(w: &[u8]) -> io::Result<Box<[u8]>> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(w)?;
    Ok(e.finish()?.into())
}

fn expand_window(w: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(crate::sys::zlib::WINDOW_SIZE);
    flate2::read::DeflateDecoder::new(w)
        .take(crate::sys::zlib::WINDOW_SIZE as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > crate::sys::zlib::WINDOW_SIZE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "checkpoint window too long",
        ));
    }
    Ok(out)
}

/// Decompresses a gzip stream read from `inner` (as a `Read` of the output) and records
/// its checkpoints and span digests on the way.
pub struct Builder<R> {
    inner: R,
    span: u64,
    inf: Inflater,
    state: State,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    eof: bool,
    consumed: u64,
    out: u64,
    member_out: u64,
    last_byte: u8,
    hasher: Hasher,
    checkpoints: Vec<Checkpoint>,
    span_digests: Vec<Digest>,
}

impl<R: Read> Builder<R> {
    /// Starts on the stream `inner`, with a checkpoint about every `span` output bytes.
    pub fn new(inner: R, span: u64) -> io::Result<Builder<R>> {
        Ok(Builder {
            inner,
            span,
            inf: Inflater::new(Wrap::Gzip)?,
            state: State::InMember { raw: false },
            buf: vec![0; INPUT_CHUNK],
            pos: 0,
            end: 0,
            eof: false,
            consumed: 0,
            out: 0,
            member_out: 0,
            last_byte: 0,
            hasher: Hasher::new(Algorithm::Sha256),
            checkpoints: vec![Checkpoint {
                out: 0,
                input: 0,
                resume: Resume::Member,
            }],
            span_digests: Vec::new(),
        })
    }

    /// Ends the current span at `consumed` and starts the next at checkpoint `c`.
    fn checkpoint(&mut self, c: Checkpoint) {
        let next = Hasher::new(Algorithm::Sha256);
        let done = std::mem::replace(&mut self.hasher, next);
        self.span_digests.push(done.finish());
        if matches!(c.resume, Resume::Raw { bits, .. } if bits > 0) {
            self.hasher.update(&[self.last_byte]);
        }
        self.checkpoints.push(c);
    }

    fn refill(&mut self) -> io::Result<()> {
        self.buf.copy_within(self.pos..self.end, 0);
        self.end -= self.pos;
        self.pos = 0;
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The index and the inner reader, once the stream has been read to its end.
    pub fn finish(mut self) -> io::Result<(ZranIndex, R)> {
        if !self.eof || self.state != State::Between || self.pos != self.end {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "gzip stream not read to its end",
            ));
        }
        self.span_digests.push(self.hasher.finish());
        let index = ZranIndex {
            checkpoints: self.checkpoints,
            span_digests: self.span_digests,
            out_len: self.out,
            in_len: self.consumed,
        };
        Ok((index, self.inner))
    }
}

impl<R: Read> Read for Builder<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos == self.end && !self.eof {
                self.refill()?;
            }
            if self.state == State::Between {
                if self.pos == self.end {
                    return Ok(0);
                }
                if self.out - self.checkpoints.last().map_or(0, |c| c.out) >= self.span {
                    self.checkpoint(Checkpoint {
                        out: self.out,
                        input: self.consumed,
                        resume: Resume::Member,
                    });
                }
                self.inf.reset(Wrap::Gzip)?;
                self.state = State::InMember { raw: false };
                self.member_out = 0;
            }
            let step = self.inf.inflate(&self.buf[self.pos..self.end], out, true)?;
            let used = &self.buf[self.pos..self.pos + step.consumed];
            self.hasher.update(used);
            if let Some(&b) = used.last() {
                self.last_byte = b;
            }
            self.pos += step.consumed;
            self.consumed += step.consumed as u64;
            self.out += step.produced as u64;
            self.member_out += step.produced as u64;
            if step.end {
                self.state = State::Between;
            } else if let Some(bits) = step.boundary {
                let since = self.out - self.checkpoints.last().map_or(0, |c| c.out);
                if self.member_out > 0 && since >= self.span {
                    let window = compress_window(&self.inf.window()?)?;
                    self.checkpoint(Checkpoint {
                        out: self.out,
                        input: self.consumed,
                        resume: Resume::Raw { bits, window },
                    });
                }
            }
            if step.produced > 0 {
                return Ok(step.produced);
            }
            let stuck = step.consumed == 0 && step.boundary.is_none() && !step.end;
            if stuck {
                if self.eof {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "gzip stream ends inside a member",
                    ));
                }
                self.refill()?;
            }
        }
    }
}

/// Compressed bytes of a blob, read by offset (from a cache file that fetches what it lacks).
pub trait Compressed {
    /// Reads up to `buf.len()` bytes at `offset`; 0 only at the blob's end.
    fn read_compressed(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
}

/// A live inflate state positioned at some output offset.
pub struct ZCursor {
    inf: Inflater,
    state: State,
    out: u64,
    input: u64,
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl ZCursor {
    /// Opens an inflate state at checkpoint `i`.
    pub fn open(index: &ZranIndex, i: usize, src: &dyn Compressed) -> io::Result<ZCursor> {
        let c = index
            .checkpoints
            .get(i)
            .ok_or_else(|| corrupt("no such checkpoint"))?;
        let (inf, state) = match &c.resume {
            Resume::Member => (Inflater::new(Wrap::Gzip)?, State::InMember { raw: false }),
            Resume::Raw { bits, window } => {
                let mut inf = Inflater::new(Wrap::Raw)?;
                if *bits > 0 {
                    let mut b = [0u8; 1];
                    if src.read_compressed(&mut b, c.input - 1)? != 1 {
                        return Err(corrupt("gzip blob shorter than its index"));
                    }
                    inf.prime(*bits, b[0] >> (8 - bits))?;
                }
                inf.set_dictionary(&expand_window(window)?)?;
                (inf, State::InMember { raw: true })
            }
        };
        Ok(ZCursor {
            inf,
            state,
            out: c.out,
            input: c.input,
            buf: Vec::new(),
            pos: 0,
            end: 0,
        })
    }

    /// The output offset of the next byte [`ZCursor::read`] returns.
    pub fn out_pos(&self) -> u64 {
        self.out
    }

    /// Inflates the next bytes into `out`; 0 at the end of the stream.
    pub fn read(
        &mut self,
        index: &ZranIndex,
        src: &dyn Compressed,
        out: &mut [u8],
    ) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            if self.pos == self.end && self.input < index.in_len {
                // Read within the current span only, so a read never fetches the next span
                // before it needs it.
                let (_, span_end) = index.span(index.span_at(self.input));
                let want = (span_end.max(self.input + 1) - self.input).min(INPUT_CHUNK as u64);
                self.buf.resize(want as usize, 0);
                let n = src.read_compressed(&mut self.buf, self.input)?;
                if n == 0 {
                    return Err(corrupt("gzip blob shorter than its index"));
                }
                self.pos = 0;
                self.end = n;
            }
            if self.state == State::Between {
                if self.pos == self.end {
                    return Ok(0);
                }
                self.inf.reset(Wrap::Gzip)?;
                self.state = State::InMember { raw: false };
            }
            let step = self
                .inf
                .inflate(&self.buf[self.pos..self.end], out, false)?;
            self.pos += step.consumed;
            self.input += step.consumed as u64;
            self.out += step.produced as u64;
            if step.end {
                if self.state == (State::InMember { raw: true }) {
                    // Raw inflating stops before the member's trailer.
                    let skip = (GZIP_TRAILER as usize).min(self.end - self.pos);
                    self.pos += skip;
                    self.input += GZIP_TRAILER;
                    if skip < GZIP_TRAILER as usize {
                        self.pos = self.end;
                    }
                }
                self.state = State::Between;
            }
            if step.produced > 0 {
                return Ok(step.produced);
            }
            if step.consumed == 0 && !step.end {
                if self.pos < self.end {
                    // zlib takes all the input it is given; not doing so is a broken state.
                    return Err(corrupt("inflate made no progress"));
                }
                if self.input >= index.in_len {
                    return Err(corrupt("gzip blob ends inside a member"));
                }
            }
        }
    }

    /// Inflates and drops `n` bytes.
    pub fn skip(&mut self, index: &ZranIndex, src: &dyn Compressed, mut n: u64) -> io::Result<()> {
        let mut sink = vec![0u8; (n.min(256 << 10)) as usize];
        while n > 0 {
            let want = n.min(sink.len() as u64) as usize;
            let got = self.read(index, src, &mut sink[..want])?;
            if got == 0 {
                return Err(corrupt("gzip blob shorter than its index"));
            }
            n -= got as u64;
        }
        Ok(())
    }
}

/// Reads a gzip blob's output by offset, keeping a few inflate states for reads that go on
/// where the last one ended (sequential reads then inflate each byte once).
pub struct ZranReader {
    /// The checkpoints.
    pub index: ZranIndex,
    parked: Mutex<Vec<ZCursor>>,
}

impl std::fmt::Debug for ZranReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZranReader")
            .field("checkpoints", &self.index.checkpoints.len())
            .field("out_len", &self.index.out_len)
            .finish()
    }
}

impl ZranReader {
    /// A reader over `index`.
    pub fn new(index: ZranIndex) -> ZranReader {
        ZranReader {
            index,
            parked: Mutex::new(Vec::new()),
        }
    }

    /// Fills as much of `buf` as the output has from `offset`; returns how much.
    pub fn read_at(&self, src: &dyn Compressed, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.index.out_len || buf.is_empty() {
            return Ok(0);
        }
        let cp = self.index.checkpoint_for(offset);
        let cp_out = self.index.checkpoints[cp].out;
        // A parked state between the checkpoint and the offset is a shorter way there.
        let parked = self.parked.lock().ok().and_then(|mut p| {
            let best = p
                .iter()
                .enumerate()
                .filter(|(_, c)| c.out <= offset && c.out >= cp_out)
                .max_by_key(|(_, c)| c.out)
                .map(|(i, _)| i)?;
            Some(p.swap_remove(best))
        });
        let mut cur = match parked {
            Some(c) => c,
            None => ZCursor::open(&self.index, cp, src)?,
        };
        cur.skip(&self.index, src, offset - cur.out)?;
        let mut got = 0;
        while got < buf.len() {
            let n = cur.read(&self.index, src, &mut buf[got..])?;
            if n == 0 {
                break;
            }
            got += n;
        }
        if let Ok(mut p) = self.parked.lock() {
            if p.len() >= PARKED_CURSORS {
                p.remove(0);
            }
            p.push(cur);
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output that compresses like real files: text with variety, and some noise.
    fn sample(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if x % 5 == 0 {
                v.extend_from_slice(&x.to_le_bytes());
            } else {
                v.extend_from_slice(format!("line {} of {}\n", x % 977, x % 13).as_bytes());
            }
        }
        v.truncate(n);
        v
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    impl Compressed for Vec<u8> {
        fn read_compressed(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            let start = (offset as usize).min(self.len());
            let n = buf.len().min(self.len() - start);
            buf[..n].copy_from_slice(&self[start..start + n]);
            Ok(n)
        }
    }

    fn build(gz: &[u8], span: u64) -> (Vec<u8>, ZranIndex) {
        let mut b = Builder::new(gz, span).unwrap();
        let mut out = Vec::new();
        b.read_to_end(&mut out).unwrap();
        (out, b.finish().unwrap().0)
    }

    #[test]
    fn zran_round_trip_from_every_checkpoint() {
        let data = sample(3_000_000, 7);
        let gz = gzip(&data);
        let (out, idx) = build(&gz, 256 << 10);
        assert_eq!(out, data);
        assert!(idx.checkpoints.len() >= 8, "{}", idx.checkpoints.len());
        assert!(
            idx.checkpoints
                .iter()
                .skip(1)
                .any(|c| matches!(c.resume, Resume::Raw { bits, .. } if bits > 0))
        );
        let r = ZranReader::new(idx.clone());
        for c in &idx.checkpoints {
            for delta in [0u64, 1, 4095] {
                let off = c.out + delta;
                let mut buf = vec![0u8; 10_000];
                let n = r.read_at(&gz, &mut buf, off).unwrap();
                let want = &data[off as usize..(off as usize + 10_000).min(data.len())];
                assert_eq!(&buf[..n], want, "at {off}");
            }
            // From a fresh state at exactly this checkpoint.
            let i = idx.checkpoint_for(c.out);
            let mut cur = ZCursor::open(&idx, i, &gz).unwrap();
            let mut buf = vec![0u8; 1000];
            let n = cur.read(&idx, &gz, &mut buf).unwrap();
            assert_eq!(&buf[..n], &data[c.out as usize..c.out as usize + n]);
        }
        // Span digests hash exactly the spans.
        for i in 0..idx.checkpoints.len() {
            let (a, b) = idx.span(i);
            assert_eq!(
                Digest::of_bytes(Algorithm::Sha256, &gz[a as usize..b as usize]),
                idx.span_digests[i]
            );
        }
        assert_eq!(idx.span(idx.checkpoints.len() - 1).1, gz.len() as u64);
    }

    #[test]
    fn zran_crosses_member_boundaries() {
        let parts = [sample(700_000, 1), sample(10, 2), sample(900_000, 3)];
        let mut gz = Vec::new();
        for p in &parts {
            gz.extend(gzip(p));
        }
        let data: Vec<u8> = parts.concat();
        let (out, idx) = build(&gz, 200 << 10);
        assert_eq!(out, data);
        let r = ZranReader::new(idx.clone());
        // Reads that start in one member and end in another, from raw checkpoints too.
        for off in [
            0u64,
            699_990,
            700_005,
            650_000,
            1_000_000,
            data.len() as u64 - 5,
        ] {
            let mut buf = vec![0u8; 100_000];
            let n = r.read_at(&gz, &mut buf, off).unwrap();
            let end = (off as usize + 100_000).min(data.len());
            assert_eq!(&buf[..n], &data[off as usize..end], "at {off}");
        }
        let mut b = Vec::new();
        idx.put(&mut b);
        assert_eq!(ZranIndex::get(&mut Cursor { data: &b }), Some(idx));
    }

    #[test]
    fn zran_detects_damage() {
        let data = sample(1_000_000, 9);
        let gz = gzip(&data);
        let (_, idx) = build(&gz, 128 << 10);
        // A damaged window is refused when it is expanded, or inflates to other bytes; a
        // damaged span fails its digest (the caller checks before inflating).
        let i = idx
            .checkpoints
            .iter()
            .position(|c| matches!(c.resume, Resume::Raw { .. }))
            .unwrap();
        let mut bad = idx.clone();
        if let Resume::Raw { window, .. } = &mut bad.checkpoints[i].resume {
            let n = window.len();
            window[n / 2] ^= 0x55;
        }
        let off = bad.checkpoints[i].out;
        let mut buf = vec![0u8; 200_000];
        let r = ZranReader::new(bad);
        match r.read_at(&gz, &mut buf, off) {
            Err(_) => {}
            Ok(n) => assert_ne!(&buf[..n], &data[off as usize..off as usize + n]),
        }
        let (a, b) = idx.span(i);
        let mut damaged = gz[a as usize..b as usize].to_vec();
        damaged[1] ^= 1;
        assert_ne!(
            Digest::of_bytes(Algorithm::Sha256, &damaged),
            idx.span_digests[i]
        );
        // A truncated stream is an error, not a short index.
        let mut t = Builder::new(&gz[..gz.len() - 100], 128 << 10).unwrap();
        assert!(t.read_to_end(&mut Vec::new()).is_err() || t.finish().is_err());
        // An encoded index that is out of order is refused.
        let mut b = Vec::new();
        let mut swapped = idx.clone();
        swapped.checkpoints.swap(1, 2);
        swapped.put(&mut b);
        assert!(ZranIndex::get(&mut Cursor { data: &b }).is_none());
    }

    #[test]
    fn zran_index_is_small() {
        let data = sample(16 << 20, 5);
        let gz = gzip(&data);
        let (_, idx) = build(&gz, SPAN);
        let ratio = idx.encoded_len() as f64 / data.len() as f64;
        assert!(ratio < 0.01, "index is {:.3}% of the output", ratio * 100.0);
    }
}
