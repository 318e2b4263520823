//! rimgfs's own tar reader, for image archives and layers alike: walks a tar's 512-byte header blocks and yields each member with
//! its GNU and PAX extensions applied and the offset of its payload, without reading payloads.
//!
//! The `tar` crate is not used for this: tar 0.4 splits a PAX extended header on `\n` before
//! it uses each record's length, so it refuses a value holding a newline (a binary xattr, a
//! `security.capability`, a name), and frames a value holding `\n22 linkpath=/etc/evil\n` as
//! a record of its own. Here every record is read by its decimal length, as POSIX pax says
//! (`"%d %s=%s\n"`, the length counting itself), so a value may hold any byte.
//!
//! The rules are those of Go's archive/tar, which Docker, containerd and podman extract layers
//! with (GNU tar agrees except where noted):
//! - ustar (`prefix/name`, star's shorter prefix), GNU (`ustar  ` magic, no prefix) and v7
//!   headers; numbers in octal or GNU base-256 (two's complement, so mtimes may be negative);
//!   the checksum as an unsigned or a signed byte sum;
//! - GNU `L`/`K` entries give the next member's name and link target, PAX `x` records its
//!   `path`, `linkpath`, `size`, `uid`, `gid`, `mtime` (with a fraction) and `SCHILY.xattr.*`
//!   (a later one of the same name wins); a GNU long name wins over a PAX `path`, which wins
//!   over the header; a second extension of the same kind replaces the first;
//! - PAX `g` (global) records are checked but not applied, since the engines ignore them
//!   (GNU tar applies them to the members that follow);
//! - links, devices, directories and fifos have no payload whatever their size field says
//!   (GNU tar skips a size given to anything but a hard link);
//! - a pre-POSIX member (typeflag `\0`) whose name ends in `/` is a directory (GNU tar
//!   takes a `0` or `7` member so too);
//! - the archive ends at the first zero block, or where the input ends on a block boundary;
//! - GNU sparse members (`S`, or `GNU.sparse.*` records) are refused: their payload is not
//!   the file's bytes, and layer writers never make them.
//!
//! # Input
//!
//! The walker reads through [`TarInput`]: header blocks and the bodies of extension entries
//! (`x`, `g`, `L`, `K`) with [`TarInput::read_exact_or_end`], member payloads and block
//! padding with [`TarInput::skip`] only. So an input may hold just the header bytes and stand
//! for payloads with holes that it skips over: a layer reconstructed from containers-storage
//! `tar-split` metadata, whose file bytes are not there to read, is walked like the tar
//! itself, and [`TarEntry::data_offset`] still gives where each payload lies in the layer
//! tar. Every [`Read`] is an input (skipping by reading and discarding); [`SeekInput`] skips
//! by seeking.
//!
//! ```no_run
//! use rimgfs::image::tar::TarWalker;
//!
//! let mut walker = TarWalker::new(std::io::stdin().lock());
//! while let Some(e) = walker.next_entry()? {
//!     println!("{:?} {} bytes at {}", e.kind, e.size, e.data_offset);
//! }
//! # Ok::<(), rimgfs::image::tar::TarError>(())
//! ```
//!
//! Dependencies: error (how names are shown in messages).

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Range;

use crate::error::show;

/// Size of a tar block: headers, and the unit payloads are padded to.
pub const BLOCK: u64 = 512;
/// Largest body of an extension entry (`x`, `g`, `L`, `K`) read into memory: Go's
/// archive/tar refuses larger ones, so no engine extracts a layer that has one.
const MAX_EXTENSION: u64 = 1 << 20;
/// At most this many bytes of a bad value are quoted in a message.
const QUOTE_MAX: usize = 40;

// Header fields (POSIX ustar; GNU and star differ only after `version`, in fields rimgfs
// does not read, except star's shorter prefix).
const NAME: Range<usize> = 0..100;
const MODE: Range<usize> = 100..108;
const UID: Range<usize> = 108..116;
const GID: Range<usize> = 116..124;
const SIZE: Range<usize> = 124..136;
const MTIME: Range<usize> = 136..148;
const CHKSUM: Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const LINKNAME: Range<usize> = 157..257;
const MAGIC: Range<usize> = 257..263;
const VERSION: Range<usize> = 263..265;
const DEVMAJOR: Range<usize> = 329..337;
const DEVMINOR: Range<usize> = 337..345;
const PREFIX: Range<usize> = 345..500;
const STAR_PREFIX: Range<usize> = 345..476;
const STAR_TRAILER: Range<usize> = 508..512;

/// PAX key prefix of extended attributes (GNU tar, Docker, podman, Go's archive/tar).
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// PAX key prefix of GNU sparse-file records.
const PAX_SPARSE_PREFIX: &[u8] = b"GNU.sparse.";

/// Where the walker's bytes come from. See the module header for what is read and what is
/// only skipped.
pub trait TarInput {
    /// Fills `buf`. Returns `Ok(false)`, having read nothing, when the input is at its end;
    /// an input that ends part-way through `buf` is an `UnexpectedEof` error.
    fn read_exact_or_end(&mut self, buf: &mut [u8]) -> io::Result<bool>;

    /// Passes over the next `n` bytes without returning them. An input that can tell should
    /// fail with `UnexpectedEof` when fewer than `n` bytes are left.
    fn skip(&mut self, n: u64) -> io::Result<()>;
}

impl<R: Read> TarInput for R {
    fn read_exact_or_end(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        let mut got = 0;
        while got < buf.len() {
            match self.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(false),
                Ok(0) => return Err(truncated()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let got = io::copy(&mut self.by_ref().take(n), &mut io::sink())?;
        if got < n {
            return Err(truncated());
        }
        Ok(())
    }
}

/// An input that skips payloads by seeking (an archive on disk). Seeking past the end is not
/// an error, so the caller checks each member's extent against the file's length.
pub struct SeekInput<R>(pub R);

impl<R: Read + Seek> TarInput for SeekInput<R> {
    fn read_exact_or_end(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.0.read_exact_or_end(buf)
    }

    fn skip(&mut self, n: u64) -> io::Result<()> {
        let n = i64::try_from(n).map_err(|_| truncated())?;
        self.0.seek(SeekFrom::Current(n)).map(drop)
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "the archive is truncated")
}

/// What a member is, from its typeflag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarKind {
    /// A regular file (`0`, `\0`, or `7`, contiguous).
    Regular,
    /// A directory (`5`, or a pre-POSIX `\0` member whose name ends in `/`).
    Dir,
    /// A symbolic link (`2`).
    Symlink,
    /// A hard link to an earlier member (`1`).
    HardLink,
    /// A character device (`3`).
    Char,
    /// A block device (`4`).
    Block,
    /// A named pipe (`6`).
    Fifo,
    /// Any other typeflag; its payload is skipped.
    Other(u8),
}

impl TarKind {
    /// Types whose members never have a payload (Go's `isHeaderOnlyType`).
    fn header_only(self) -> bool {
        matches!(
            self,
            TarKind::Dir
                | TarKind::Symlink
                | TarKind::HardLink
                | TarKind::Char
                | TarKind::Block
                | TarKind::Fifo
        )
    }
}

/// One member of the archive, with its extensions applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TarEntry {
    /// The name as the archive gives it (not normalised).
    pub path: Vec<u8>,
    /// The link target (symlinks, hard links); empty when there is none.
    pub link: Vec<u8>,
    /// What it is.
    pub kind: TarKind,
    /// The mode field as written (permission bits, maybe file-type bits too).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds of the modification time (from a PAX `mtime`).
    pub mtime_nsec: u32,
    /// Length of the payload (0 for members that have none).
    pub size: u64,
    /// Offset of the payload from the start of the tar.
    pub data_offset: u64,
    /// Offset of the member's own header block (after its extension entries).
    pub header_offset: u64,
    /// Device numbers of a character or block device.
    pub dev_major: u32,
    /// See `dev_major`.
    pub dev_minor: u32,
    /// Extended attributes (`SCHILY.xattr.*`), in archive order, names unique.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why the archive cannot be read further: a one-line reason that names the member (or the
/// offset) concerned.
#[derive(Debug)]
pub struct TarError(String);

impl fmt::Display for TarError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TarError {}

/// A malformed PAX record: where it starts in the extended header's body, and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub struct PaxError {
    /// Byte offset of the record in the body.
    pub at: usize,
    /// What is wrong with it.
    pub what: String,
}

impl fmt::Display for PaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad pax record at byte {}: {}", self.at, self.what)
    }
}

/// One PAX record: key and value.
pub type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// Splits the body of a PAX extended header into `(key, value)` records, each framed by its
/// decimal length (`"%d %s=%s\n"`, the length counting the whole record), so a value may hold
/// any byte, `\n` and NUL included. Every byte of the body must belong to a record.
pub fn parse_pax_records(body: &[u8]) -> Result<Vec<PaxRecord<'_>>, PaxError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        let err = |what: String| PaxError { at, what };
        let rest = &body[at..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(err("no length".into()));
        }
        if rest.get(digits) != Some(&b' ') {
            return Err(err("no space after the length".into()));
        }
        let len = std::str::from_utf8(&rest[..digits])
            .ok()
            .and_then(|d| d.parse::<usize>().ok())
            .ok_or_else(|| err("length out of range".into()))?;
        if len > rest.len() {
            return Err(err(format!(
                "length {len} runs past the end of the header ({} bytes left)",
                rest.len()
            )));
        }
        // The shortest record is "N k=\n".
        if len < digits + 4 {
            return Err(err(format!("length {len} is too short")));
        }
        let record = &rest[digits + 1..len];
        let Some(kv) = record.strip_suffix(b"\n") else {
            return Err(err(format!(
                "record of length {len} does not end in a newline"
            )));
        };
        let Some(eq) = kv.iter().position(|&b| b == b'=') else {
            return Err(err("no '=' in the record".into()));
        };
        let (key, value) = (&kv[..eq], &kv[eq + 1..]);
        if key.is_empty() {
            return Err(err("empty key".into()));
        }
        if key.contains(&0) {
            return Err(err("NUL in the key".into()));
        }
        // Go's archive/tar refuses these, so no engine would take such a layer.
        if matches!(key, b"path" | b"linkpath" | b"uname" | b"gname") && value.contains(&0) {
            return Err(err(format!("NUL in the {} value", show(key))));
        }
        out.push((key, value));
        at += len;
    }
    Ok(out)
}

/// Parses a PAX time: `[-]seconds[.fraction]`. Returns seconds and nanoseconds with the POSIX
/// convention that the nanoseconds are added (so -1.5 is (-2, 500000000)).
pub fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let mut ns: u32 = 0;
    for (i, c) in frac.bytes().take(9).enumerate() {
        ns += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
    }
    if !neg {
        return Some((secs, ns));
    }
    if ns == 0 {
        Some((-secs, 0))
    } else {
        Some((-secs - 1, 1_000_000_000 - ns))
    }
}

/// A numeric header field: GNU base-256 when the first byte's top bit is set (two's
/// complement, bit 6 the sign), else octal padded with spaces or NULs, cut at a NUL (Go's
/// archive/tar rules). `None` for garbage or overflow.
fn number(field: &[u8]) -> Option<i64> {
    if let Some(&first) = field.first().filter(|&&b| b & 0x80 != 0) {
        let inv = if first & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, &c) in field.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 != 0 {
                return None;
            }
            x = (x << 8) | u64::from(c);
        }
        let v = i64::try_from(x).ok()?;
        return Some(if inv == 0xff { !v } else { v });
    }
    octal(field)
}

fn octal(field: &[u8]) -> Option<i64> {
    let is_pad = |b: &u8| *b == b' ' || *b == 0;
    let start = field.iter().position(|b| !is_pad(b)).unwrap_or(field.len());
    let end = field
        .iter()
        .rposition(|b| !is_pad(b))
        .map_or(start, |i| i + 1);
    let t = cstr(&field[start..end]);
    if t.is_empty() {
        return Some(0);
    }
    if !t.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    i64::from_str_radix(std::str::from_utf8(t).ok()?, 8).ok()
}

/// Bytes up to the first NUL.
fn cstr(b: &[u8]) -> &[u8] {
    &b[..b.iter().position(|&c| c == 0).unwrap_or(b.len())]
}

/// A decimal PAX number (`size`, `uid`, `gid`).
fn decimal(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Whether a header block's checksum field matches its bytes, summed as unsigned or (as some
/// historic writers did) signed bytes, with the field itself counted as spaces.
fn checksum_ok(b: &[u8; BLOCK as usize]) -> bool {
    let Some(want) = octal(&b[CHKSUM]) else {
        return false;
    };
    let (mut unsigned, mut signed) = (0i64, 0i64);
    for (i, &c) in b.iter().enumerate() {
        let c = if CHKSUM.contains(&i) { b' ' } else { c };
        unsigned += i64::from(c);
        signed += i64::from(c as i8);
    }
    want == unsigned || want == signed
}

/// Rounds a payload length up to whole blocks.
fn padded(n: u64) -> Option<u64> {
    n.checked_add(BLOCK - 1).map(|v| v / BLOCK * BLOCK)
}

/// Header formats, by magic (Go's `getFormat`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

impl Format {
    fn of(b: &[u8; BLOCK as usize]) -> Format {
        match (&b[MAGIC], &b[VERSION]) {
            (b"ustar\0", _) if &b[STAR_TRAILER] == b"tar\0" => Format::Star,
            (b"ustar\0", _) => Format::Ustar,
            (b"ustar ", b" \0") => Format::Gnu,
            _ => Format::V7,
        }
    }
}

/// The name a header block gives, with the ustar prefix.
fn header_name(b: &[u8; BLOCK as usize], format: Format) -> Vec<u8> {
    let name = cstr(&b[NAME]);
    let prefix = match format {
        Format::Ustar => cstr(&b[PREFIX]),
        Format::Star => cstr(&b[STAR_PREFIX]),
        Format::V7 | Format::Gnu => &[],
    };
    if prefix.is_empty() {
        return name.to_vec();
    }
    [prefix, b"/", name].concat()
}

/// Quotes the start of a bad value for a message.
fn quote(v: &[u8]) -> String {
    let cut = &v[..v.len().min(QUOTE_MAX)];
    let more = if v.len() > QUOTE_MAX { "..." } else { "" };
    format!("\"{}{more}\"", show(cut))
}

/// Walks the members of a tar; see the module header.
pub struct TarWalker<I> {
    input: I,
    pos: u64,
    done: bool,
}

impl<I: TarInput> TarWalker<I> {
    /// A walker at the start of `input`.
    pub fn new(input: I) -> Self {
        TarWalker {
            input,
            pos: 0,
            done: false,
        }
    }

    /// Bytes of the tar consumed so far (read or skipped).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Gives back the input, positioned after the last block the walker consumed (after the
    /// first zero block, once the end was found).
    pub fn into_inner(self) -> I {
        self.input
    }

    /// The next member, its payload skipped; `None` at the end of the archive.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        if self.done {
            return Ok(None);
        }
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut pax: Option<Vec<u8>> = None;
        loop {
            let at = self.pos;
            let mut block = [0u8; BLOCK as usize];
            let more = self
                .input
                .read_exact_or_end(&mut block)
                .map_err(|e| self.io_error(e, at, "a header"))?;
            // A dangling extension (one with no member after it) is ignored, as Go does.
            if !more || block.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            self.pos += BLOCK;
            if !checksum_ok(&block) {
                return Err(TarError(if at == 0 {
                    "not a tar archive (no tar header at its start)".into()
                } else {
                    format!("bad tar header at offset {at}: checksum mismatch")
                }));
            }
            let format = Format::of(&block);
            match block[TYPEFLAG] {
                t @ (b'x' | b'g' | b'L' | b'K') => {
                    let body = self.extension_body(&block, format, at)?;
                    match t {
                        b'x' => pax = Some(body),
                        b'g' => {
                            parse_pax_records(&body).map_err(|e| {
                                TarError(format!("global pax header at offset {at}: {e}"))
                            })?;
                            // Go returns a global header as a member of its own, which ends
                            // the extensions read before it.
                            (long_name, long_link, pax) = (None, None, None);
                        }
                        b'L' => long_name = Some(cstr(&body).to_vec()),
                        _ => long_link = Some(cstr(&body).to_vec()),
                    }
                }
                _ => {
                    let ext = Extensions {
                        long_name,
                        long_link,
                        pax,
                    };
                    return self.member(&block, format, at, ext).map(Some);
                }
            }
        }
    }

    /// Reads the body of an extension entry whose header is `block`.
    fn extension_body(
        &mut self,
        block: &[u8; BLOCK as usize],
        format: Format,
        at: u64,
    ) -> Result<Vec<u8>, TarError> {
        let what = || {
            format!(
                "extension header \"{}\" at offset {at}",
                show(&header_name(block, format))
            )
        };
        let size = number(&block[SIZE])
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| TarError(format!("{}: bad size field", what())))?;
        if size > MAX_EXTENSION {
            return Err(TarError(format!(
                "{}: {size} bytes, more than the {MAX_EXTENSION} an extension may have",
                what()
            )));
        }
        let mut body = vec![0u8; size as usize];
        let full = self
            .input
            .read_exact_or_end(&mut body)
            .map_err(|e| self.io_error(e, at, &what()))?;
        if !full && size > 0 {
            return Err(TarError(format!("{}: the archive is truncated", what())));
        }
        self.pos += size;
        self.skip(padded(size).unwrap_or(size) - size, at, &what())?;
        Ok(body)
    }

    /// Builds the member whose header is `block`, applying its extensions, and skips its
    /// payload.
    fn member(
        &mut self,
        block: &[u8; BLOCK as usize],
        format: Format,
        at: u64,
        ext: Extensions,
    ) -> Result<TarEntry, TarError> {
        let header_path = header_name(block, format);
        // Messages name the member by the name known before its PAX records are read.
        let shown = show(ext.long_name.as_deref().unwrap_or(&header_path));
        let field = |r: Range<usize>, what: &str| {
            number(&block[r]).ok_or_else(|| TarError(format!("{shown}: bad {what} field")))
        };
        let unsigned = |v: i64, what: &str| {
            u64::try_from(v).map_err(|_| TarError(format!("{shown}: negative {what}")))
        };
        let typeflag = block[TYPEFLAG];
        let mode = field(MODE, "mode")?;
        let mut e = TarEntry {
            path: header_path.clone(),
            link: cstr(&block[LINKNAME]).to_vec(),
            kind: match typeflag {
                b'0' | b'\0' | b'7' => TarKind::Regular,
                b'1' => TarKind::HardLink,
                b'2' => TarKind::Symlink,
                b'3' => TarKind::Char,
                b'4' => TarKind::Block,
                b'5' => TarKind::Dir,
                b'6' => TarKind::Fifo,
                b'S' => {
                    return Err(TarError(format!(
                        "{shown}: GNU sparse files are not supported"
                    )));
                }
                t => TarKind::Other(t),
            },
            mode: u32::try_from(mode).map_err(|_| TarError(format!("{shown}: bad mode field")))?,
            uid: unsigned(field(UID, "uid")?, "uid")?,
            gid: unsigned(field(GID, "gid")?, "gid")?,
            mtime: field(MTIME, "mtime")?,
            mtime_nsec: 0,
            size: unsigned(field(SIZE, "size")?, "size")?,
            data_offset: 0,
            header_offset: at,
            dev_major: 0,
            dev_minor: 0,
            xattrs: Vec::new(),
        };
        if let Some(body) = &ext.pax {
            apply_pax(&mut e, body, &shown)?;
        }
        if let Some(n) = ext.long_name {
            e.path = n;
        }
        if let Some(l) = ext.long_link {
            e.link = l;
        }
        if typeflag == b'\0' && e.path.ends_with(b"/") {
            e.kind = TarKind::Dir;
        }
        if matches!(e.kind, TarKind::Char | TarKind::Block) && format != Format::V7 {
            let dev = |r: Range<usize>| {
                field(r, "device number").and_then(|v| {
                    u32::try_from(v).map_err(|_| TarError(format!("{shown}: bad device number")))
                })
            };
            e.dev_major = dev(DEVMAJOR)?;
            e.dev_minor = dev(DEVMINOR)?;
        }
        if e.kind.header_only() {
            e.size = 0;
        }
        e.data_offset = self.pos;
        let span = padded(e.size)
            .ok_or_else(|| TarError(format!("{shown}: size {} out of range", e.size)))?;
        self.skip(span, at, &format!("the data of \"{shown}\""))?;
        Ok(e)
    }

    fn skip(&mut self, n: u64, at: u64, what: &str) -> Result<(), TarError> {
        if n == 0 {
            return Ok(());
        }
        self.input.skip(n).map_err(|e| self.io_error(e, at, what))?;
        self.pos += n;
        Ok(())
    }

    /// Describes a failure of the input: truncation in `what`, or the input's own error.
    fn io_error(&self, e: io::Error, at: u64, what: &str) -> TarError {
        if e.kind() == io::ErrorKind::UnexpectedEof && at == 0 && self.pos == 0 {
            return TarError("not a tar archive (shorter than one header)".into());
        }
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return TarError(format!("{e} (in {what} at offset {at})"));
        }
        TarError(e.to_string())
    }
}

/// The extension entries read before a member.
struct Extensions {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// Applies the records of a PAX `x` header to the member they precede.
fn apply_pax(e: &mut TarEntry, body: &[u8], shown: &str) -> Result<(), TarError> {
    let records = parse_pax_records(body).map_err(|err| TarError(format!("{shown}: {err}")))?;
    let bad = |key: &[u8], v: &[u8]| {
        TarError(format!("{shown}: bad pax {} value {}", show(key), quote(v)))
    };
    for (key, value) in records {
        match key {
            b"path" => e.path = value.to_vec(),
            b"linkpath" => e.link = value.to_vec(),
            b"size" => e.size = decimal(value).ok_or_else(|| bad(key, value))?,
            b"uid" => e.uid = decimal(value).ok_or_else(|| bad(key, value))?,
            b"gid" => e.gid = decimal(value).ok_or_else(|| bad(key, value))?,
            b"mtime" => {
                (e.mtime, e.mtime_nsec) = parse_pax_time(value).ok_or_else(|| bad(key, value))?;
            }
            k if k.starts_with(PAX_SPARSE_PREFIX) => {
                return Err(TarError(format!(
                    "{shown}: GNU sparse files are not supported"
                )));
            }
            k => {
                if let Some(name) = k.strip_prefix(PAX_XATTR_PREFIX) {
                    // Go keeps xattrs in a map: a repeated name's last value wins.
                    match e.xattrs.iter_mut().find(|(n, _)| n == name) {
                        Some(x) => x.1 = value.to_vec(),
                        None => e.xattrs.push((name.to_vec(), value.to_vec())),
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with a correct length.
    fn rec(key: &[u8], value: &[u8]) -> Vec<u8> {
        let body = key.len() + value.len() + 3;
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        [len.to_string().as_bytes(), b" ", key, b"=", value, b"\n"].concat()
    }

    #[test]
    fn pax_records_are_framed_by_length() {
        let smuggle = b"x\n22 linkpath=/etc/evil\n";
        let body = [
            rec(b"path", b"a\nb"),
            rec(b"SCHILY.xattr.user.bin", b"\x00\xff\x0a\x20"),
            rec(b"SCHILY.xattr.user.empty", b""),
            rec(b"comment", smuggle),
            rec(b"k", b"v=w"),
        ]
        .concat();
        let got = parse_pax_records(&body).unwrap();
        let want: Vec<PaxRecord<'_>> = vec![
            (b"path", b"a\nb"),
            (b"SCHILY.xattr.user.bin", b"\x00\xff\x0a\x20"),
            (b"SCHILY.xattr.user.empty", b""),
            (b"comment", smuggle),
            (b"k", b"v=w"),
        ];
        assert_eq!(got, want);
        assert_eq!(parse_pax_records(b"").unwrap(), vec![]);
    }

    #[test]
    fn pax_records_malformed_table() {
        let cases: &[(&[u8], usize, &str)] = &[
            (b"30 path=a\n", 0, "runs past the end"),
            (b"9 path=a\n9 path=b", 9, "runs past the end"),
            (b"path=a\n", 0, "no length"),
            (b"9path=ab\n", 0, "no space"),
            (b"9 patha\n\n", 0, "no '='"),
            (b"9 path=ab", 0, "newline"),
            (b"9 path=abc", 0, "newline"),
            (b"5 =a\n", 0, "empty key"),
            (b"3 a\n", 0, "too short"),
            (b"0 \n", 0, "too short"),
            (b"99999999999999999999999 a=b\n", 0, "out of range"),
            (b"12 path=a\0b\n", 0, "NUL in the path"),
            (b"6 a=b\n\0\0\0", 6, "no length"),
        ];
        for (body, at, what) in cases {
            let e = parse_pax_records(body).unwrap_err();
            assert_eq!(e.at, *at, "{}: {e}", show(body));
            assert!(e.to_string().contains(what), "{}: {e}", show(body));
        }
    }

    #[test]
    fn pax_time_table() {
        let cases: &[(&str, Option<(i64, u32)>)] = &[
            ("1700000000", Some((1_700_000_000, 0))),
            ("1700000000.25", Some((1_700_000_000, 250_000_000))),
            ("1.1234567891", Some((1, 123_456_789))),
            ("-1", Some((-1, 0))),
            ("-1.5", Some((-2, 500_000_000))),
            ("12.x", None),
            ("+1", None),
            ("", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_pax_time(s.as_bytes()), *want, "{s}");
        }
    }

    #[test]
    fn numbers_octal_and_base256() {
        let cases: &[(&[u8], Option<i64>)] = &[
            (b"0000644\0", Some(0o644)),
            (b"  644 \0\0", Some(0o644)),
            (b"644\0junk", Some(0o644)),
            (b"\0\0\0\0\0\0\0\0", Some(0)),
            (b"00000009", None),
            (b"0x12\0\0\0\0", None),
            (&[0x80, 0, 0, 0, 0, 0, 0x12, 0x34], Some(0x1234)),
            (&[0xff; 12], Some(-1)),
            (
                &[
                    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe,
                ],
                Some(-2),
            ),
            (&[0x80, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], None),
        ];
        for (field, want) in cases {
            assert_eq!(number(field), *want, "{field:?}");
        }
    }

    /// A header block: name, typeflag, size, linkname, ustar magic.
    fn header(name: &[u8], typeflag: u8, size: u64, link: &[u8]) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[..name.len()].copy_from_slice(name);
        b[MODE].copy_from_slice(b"0000644\0");
        b[UID].copy_from_slice(b"0000000\0");
        b[GID].copy_from_slice(b"0000000\0");
        b[SIZE].copy_from_slice(format!("{size:011o}\0").as_bytes());
        b[MTIME].copy_from_slice(b"00000000001\0");
        b[TYPEFLAG] = typeflag;
        b[LINKNAME][..link.len()].copy_from_slice(link);
        b[MAGIC].copy_from_slice(b"ustar\0");
        b[VERSION].copy_from_slice(b"00");
        b[CHKSUM].fill(b' ');
        let sum: u32 = b.iter().map(|&c| u32::from(c)).sum();
        b[CHKSUM].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        b
    }

    /// A member with its payload, padded.
    fn member(name: &[u8], typeflag: u8, data: &[u8], link: &[u8]) -> Vec<u8> {
        let mut v = header(name, typeflag, data.len() as u64, link).to_vec();
        v.extend_from_slice(data);
        v.resize(v.len().div_ceil(512) * 512, 0);
        v
    }

    fn walk(tar: &[u8]) -> Result<Vec<TarEntry>, TarError> {
        let mut w = TarWalker::new(tar);
        let mut out = Vec::new();
        while let Some(e) = w.next_entry()? {
            out.push(e);
        }
        Ok(out)
    }

    #[test]
    fn walker_applies_extensions_in_go_order() {
        let smuggle = rec(b"comment", b"x\n22 linkpath=/etc/evil\n");
        let pax = [
            rec(b"path", b"pax/name"),
            rec(b"linkpath", b"pax-target"),
            smuggle,
            rec(b"mtime", b"-1.5"),
            rec(b"SCHILY.xattr.user.a", b"1"),
            rec(b"SCHILY.xattr.user.a", b"2\n"),
        ]
        .concat();
        let tar = [
            member(b"g", b'g', &rec(b"path", b"global/ignored"), b""),
            member(b"PaxHeaders/l", b'x', &pax, b""),
            member(b"././@LongLink", b'K', b"gnu-target\0", b""),
            member(b"l", b'2', b"", b"header-target"),
            // Extensions before a global header die with it.
            member(b"PaxHeaders/lost", b'x', &rec(b"path", b"lost"), b""),
            member(b"g2", b'g', &rec(b"comment", b"git archive\n"), b""),
            member(b"old-dir/", b'\0', b"", b""),
            member(b"file/", b'0', b"abc", b""),
            vec![0u8; 1024],
        ]
        .concat();
        let got = walk(&tar).unwrap();
        assert_eq!(got.len(), 3);
        let l = &got[0];
        assert_eq!(l.path, b"pax/name");
        assert_eq!(l.link, b"gnu-target");
        assert_eq!(l.kind, TarKind::Symlink);
        assert_eq!((l.mtime, l.mtime_nsec), (-2, 500_000_000));
        assert_eq!(l.xattrs, vec![(b"user.a".to_vec(), b"2\n".to_vec())]);
        assert_eq!(
            (got[1].kind, got[1].path.as_slice()),
            (TarKind::Dir, &b"old-dir/"[..])
        );
        // Only a pre-POSIX typeflag makes a trailing slash a directory.
        assert_eq!(got[2].kind, TarKind::Regular);
        assert_eq!((got[2].size, got[2].data_offset), (3, 512 * 13));
        assert_eq!(&tar[512 * 13..512 * 13 + 3], b"abc");
    }

    #[test]
    fn walker_header_only_types_have_no_payload() {
        // A symlink claiming 512 bytes of payload: the next block is the next member.
        let mut tar = header(b"l", b'2', 512, b"t").to_vec();
        tar.extend(member(b"f", b'0', b"x", b""));
        let got = walk(&tar).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].size, got[1].path.as_slice()), (0, &b"f"[..]));
    }

    #[test]
    fn walker_ends_at_zero_block_or_block_boundary() {
        let f = member(b"f", b'0', b"x", b"");
        assert_eq!(walk(&f).unwrap().len(), 1);
        let with_trailer = [f.clone(), vec![0u8; 512], b"garbage".to_vec()].concat();
        assert_eq!(walk(&with_trailer).unwrap().len(), 1);
    }

    #[test]
    fn walker_errors_name_the_member() {
        let pax = member(b"PaxHeaders/f", b'x', b"30 path=a\n", b"");
        let tar = [pax, member(b"dir/f\nname", b'0', b"x", b"")].concat();
        let e = walk(&tar).unwrap_err().to_string();
        assert!(
            e.starts_with("dir/f\\nname: bad pax record at byte 0"),
            "{e}"
        );
        let e = walk(&[b'x'; 600]).unwrap_err().to_string();
        assert!(e.contains("not a tar archive"), "{e}");
        let e = walk(&[b'x'; 100]).unwrap_err().to_string();
        assert!(e.contains("not a tar archive"), "{e}");
        let f = member(b"f", b'0', &[7u8; 2000], b"");
        let e = walk(&f[..1500]).unwrap_err().to_string();
        assert!(e.contains("truncated") && e.contains("\"f\""), "{e}");
        let mut bad = member(b"g", b'0', b"", b"");
        bad[SIZE].copy_from_slice(b"99999999999\0");
        let e = walk(&[member(b"f", b'0', b"", b""), bad].concat())
            .unwrap_err()
            .to_string();
        assert!(e.contains("checksum") && e.contains("offset 512"), "{e}");
        let sparse = member(b"s", b'S', b"", b"");
        assert!(walk(&sparse).unwrap_err().to_string().contains("sparse"));
    }
}
