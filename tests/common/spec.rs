//! A small line-based language for layer contents, and the layer tars built from it.
//!
//! ```text
//! # comment
//! L0: dir / 0755 mtime=1000; dir /etc; file /etc/hosts 0644 'a\n'
//! L0: symlink /etc/localtime /usr/share/zoneinfo/UTC; hardlink /etc/h2 /etc/hosts
//! L1: whiteout /etc/hosts; opaque /var; char /dev/null 1 3 0666; fifo /run/p
//! ```
//! Several lines may name the same layer; their statements are appended in order.
//!
//! Statements (`;`-separated; PATH is image-absolute; MODE is octal, e.g. `4755`):
//! - `dir PATH [MODE]`, `file PATH [MODE] ['CONTENT']`, `symlink PATH TARGET`,
//!   `hardlink PATH TARGET`, `char PATH MAJOR MINOR [MODE]`, `block PATH MAJOR MINOR [MODE]`,
//!   `fifo PATH [MODE]`;
//! - `whiteout PATH` (writes `.wh.NAME` beside it), `opaque DIR` (writes `DIR/.wh..wh..opq`);
//! - a `raw` prefix writes PATH (and a hard link's TARGET) into the header exactly as given
//!   (`raw dir ./ 0700`, `raw file a/../b`); without it the leading `/` is dropped and a
//!   directory gets a trailing `/`, as Docker writes layers.
//!
//! Options after the arguments: `uid=N gid=N mtime=N` (negative N uses GNU base-256),
//! `mtime=pax:S` (PAX `mtime` record, e.g. `-1.5`), `xattr=NAME=VALUE` (a PAX
//! `SCHILY.xattr.NAME` record; VALUE may be empty), `pax` (path and link target in PAX records
//! instead of the header or GNU long-name entries), `paxrec=KEY=VALUE` (one more PAX record,
//! any key), `paxraw=BYTES` (the PAX header's body is exactly BYTES, framed or not), `gen=N`
//! (file content: N deterministic pseudo-random bytes). Tokens may be single-quoted with `\n \t \0 \\ \' \xNN` escapes, so any byte
//! (non-UTF-8, spaces, `;`) can be written. Names longer than 100 bytes get a GNU `L`/`K`
//! entry (or PAX with `pax`).
//!
//! Defaults: dir 0755, file 0644, symlink 0777, device 0600, fifo 0644, owner 0:0,
//! mtime [`DEFAULT_MTIME`].

use std::collections::BTreeMap;

/// mtime of entries that do not give one: far from 0, so implicit directories (mtime 0)
/// are told apart.
pub const DEFAULT_MTIME: i64 = 1_700_000_000;

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(Vec<u8>),
    HardLink(Vec<u8>),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One tar entry.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The statement's path, image-absolute (for expectations); for `raw`, as written.
    pub path: Vec<u8>,
    /// The name written in the tar header.
    pub name: Vec<u8>,
    pub kind: Kind,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    /// A PAX `mtime` record, overriding `mtime`.
    pub pax_mtime: Option<String>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Names and link targets go in PAX records rather than the header or GNU `L`/`K`
    /// entries.
    pub pax_path: bool,
    /// More PAX records, after the others.
    pub pax_records: Vec<(Vec<u8>, Vec<u8>)>,
    /// The exact body of the PAX header, instead of the records.
    pub pax_raw: Option<Vec<u8>>,
}

/// A parsed spec: entries per layer, bottom first.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    pub layers: Vec<Vec<Entry>>,
}

impl Spec {
    /// Parses a spec; panics with the offending line on a syntax error (it is test input).
    pub fn parse(text: &str) -> Spec {
        let mut layers: BTreeMap<usize, Vec<Entry>> = BTreeMap::new();
        for (lineno, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (layer, body) = match line.split_once(':') {
                Some((l, body)) if l.starts_with('L') && l[1..].parse::<usize>().is_ok() => {
                    (l[1..].parse::<usize>().unwrap(), body)
                }
                _ => panic!("spec line {}: expected `L<n>: ...`: {line}", lineno + 1),
            };
            let entries = layers.entry(layer).or_default();
            for stmt in split_statements(body) {
                if stmt.is_empty() {
                    continue;
                }
                entries.push(
                    parse_statement(&stmt)
                        .unwrap_or_else(|e| panic!("spec line {}: {e}: {line}", lineno + 1)),
                );
            }
        }
        let n = layers.keys().next_back().map_or(0, |k| k + 1);
        let mut out = vec![Vec::new(); n];
        for (k, v) in layers {
            out[k] = v;
        }
        Spec { layers: out }
    }

    /// Parses a single-layer description without `L<n>:` prefixes (every line is layer 0).
    pub fn parse_flat(text: &str) -> Spec {
        let mut s = String::new();
        for line in text.lines() {
            let t = line.trim();
            if !t.is_empty() && !t.starts_with('#') {
                s.push_str("L0: ");
                s.push_str(t);
                s.push('\n');
            }
        }
        Spec::parse(&s)
    }

    /// One uncompressed tar per layer.
    pub fn layer_tars(&self) -> Vec<Vec<u8>> {
        self.layers.iter().map(|l| layer_tar(l)).collect()
    }
}

/// A token and whether any part of it was quoted.
struct Token {
    bytes: Vec<u8>,
    /// Any part was quoted.
    quoted: bool,
    /// The token began with a quote: file content, never an option.
    starts_quoted: bool,
}

/// Splits a line body into statements of tokens, honouring quotes.
fn split_statements(body: &str) -> Vec<Vec<Token>> {
    let b = body.as_bytes();
    let mut stmts = vec![Vec::new()];
    let mut cur: Option<Token> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b' ' | b'\t' => {
                if let Some(t) = cur.take() {
                    stmts.last_mut().unwrap().push(t);
                }
            }
            b';' => {
                if let Some(t) = cur.take() {
                    stmts.last_mut().unwrap().push(t);
                }
                stmts.push(Vec::new());
            }
            b'\'' => {
                let t = cur.get_or_insert(Token {
                    bytes: Vec::new(),
                    quoted: false,
                    starts_quoted: true,
                });
                t.quoted = true;
                i += 1;
                while i < b.len() && b[i] != b'\'' {
                    if b[i] == b'\\' && i + 1 < b.len() {
                        i += 1;
                        match b[i] {
                            b'n' => t.bytes.push(b'\n'),
                            b't' => t.bytes.push(b'\t'),
                            b'0' => t.bytes.push(0),
                            b'x' => {
                                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
                                t.bytes.push(u8::from_str_radix(hex, 16).unwrap());
                                i += 2;
                            }
                            other => t.bytes.push(other),
                        }
                    } else {
                        t.bytes.push(b[i]);
                    }
                    i += 1;
                }
                assert!(i < b.len(), "unterminated quote in {body:?}");
            }
            _ => cur
                .get_or_insert(Token {
                    bytes: Vec::new(),
                    quoted: false,
                    starts_quoted: false,
                })
                .bytes
                .push(c),
        }
        i += 1;
    }
    if let Some(t) = cur.take() {
        stmts.last_mut().unwrap().push(t);
    }
    stmts
}

fn is_mode(t: &Token) -> bool {
    !t.quoted && t.bytes.len() >= 3 && t.bytes.iter().all(|b| (b'0'..=b'7').contains(b))
}

fn text(t: &Token) -> Result<&str, String> {
    std::str::from_utf8(&t.bytes).map_err(|_| format!("{:?} is not UTF-8", t.bytes))
}

fn number<T: std::str::FromStr>(t: Option<&Token>, what: &str) -> Result<T, String> {
    let t = t.ok_or_else(|| format!("missing {what}"))?;
    text(t)?
        .parse()
        .map_err(|_| format!("bad {what} {:?}", String::from_utf8_lossy(&t.bytes)))
}

/// Deterministic pseudo-random content (xorshift), the same for the same `n` and `seed`.
pub fn generated(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n);
    out
}

fn parse_statement(toks: &[Token]) -> Result<Entry, String> {
    let (raw, toks) = match toks.first() {
        Some(t) if !t.quoted && t.bytes == b"raw" => (true, &toks[1..]),
        _ => (false, toks),
    };
    let verb = text(toks.first().ok_or("empty statement")?)?.to_string();
    let path = toks.get(1).ok_or("missing path")?.bytes.clone();
    let mut rest = &toks[2..];
    let strip = |p: &[u8]| -> Vec<u8> {
        if raw {
            p.to_vec()
        } else {
            p.strip_prefix(b"/").unwrap_or(p).to_vec()
        }
    };
    let split_last = |p: &[u8]| -> (Vec<u8>, Vec<u8>) {
        let p = p.strip_suffix(b"/").unwrap_or(p);
        match p.iter().rposition(|&b| b == b'/') {
            Some(i) => (p[..=i].to_vec(), p[i + 1..].to_vec()),
            None => (Vec::new(), p.to_vec()),
        }
    };
    let mut e = Entry {
        path: path.clone(),
        name: strip(&path),
        kind: Kind::Dir,
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: DEFAULT_MTIME,
        pax_mtime: None,
        xattrs: Vec::new(),
        pax_path: false,
        pax_records: Vec::new(),
        pax_raw: None,
    };
    match verb.as_str() {
        "dir" => {
            if !raw && !e.name.ends_with(b"/") {
                e.name.push(b'/');
            }
            if e.name == b"/" {
                e.name = b"./".to_vec();
            }
        }
        "file" => {
            e.mode = 0o644;
            e.kind = Kind::File(Vec::new());
        }
        "symlink" | "hardlink" => {
            let target = rest.first().ok_or("missing link target")?.bytes.clone();
            rest = &rest[1..];
            if verb == "symlink" {
                e.mode = 0o777;
                e.kind = Kind::Symlink(target);
            } else {
                e.mode = 0o644;
                e.kind = Kind::HardLink(strip(&target));
            }
        }
        "char" | "block" => {
            let major = number(rest.first(), "major")?;
            let minor = number(rest.get(1), "minor")?;
            rest = &rest[2..];
            e.mode = 0o600;
            e.kind = if verb == "char" {
                Kind::Char(major, minor)
            } else {
                Kind::Block(major, minor)
            };
        }
        "fifo" => {
            e.mode = 0o644;
            e.kind = Kind::Fifo;
        }
        "whiteout" | "opaque" => {
            e.mode = 0o644;
            e.kind = Kind::File(Vec::new());
            let stripped = strip(&path);
            e.name = if verb == "whiteout" {
                let (dir, name) = split_last(&stripped);
                [dir, b".wh.".to_vec(), name].concat()
            } else {
                let mut d = stripped.strip_suffix(b"/").unwrap_or(&stripped).to_vec();
                if !d.is_empty() {
                    d.push(b'/');
                }
                d.extend_from_slice(b".wh..wh..opq");
                d
            };
        }
        other => return Err(format!("unknown statement {other:?}")),
    }
    for t in rest {
        if is_mode(t) {
            e.mode = u32::from_str_radix(text(t)?, 8).map_err(|err| err.to_string())?;
            continue;
        }
        if t.starts_quoted {
            match &mut e.kind {
                Kind::File(c) => *c = t.bytes.clone(),
                _ => return Err("content is only for files".into()),
            }
            continue;
        }
        let (k, v) = match t.bytes.iter().position(|&b| b == b'=') {
            Some(i) => (&t.bytes[..i], &t.bytes[i + 1..]),
            None => (&t.bytes[..], &[][..]),
        };
        let vs = || std::str::from_utf8(v).map_err(|_| "option value is not UTF-8".to_string());
        match k {
            b"uid" => e.uid = vs()?.parse().map_err(|_| "bad uid")?,
            b"gid" => e.gid = vs()?.parse().map_err(|_| "bad gid")?,
            b"mtime" => match vs()?.strip_prefix("pax:") {
                Some(p) => e.pax_mtime = Some(p.to_string()),
                None => e.mtime = vs()?.parse().map_err(|_| "bad mtime")?,
            },
            b"xattr" => {
                let i = v
                    .iter()
                    .position(|&b| b == b'=')
                    .ok_or("xattr=NAME=VALUE")?;
                e.xattrs.push((v[..i].to_vec(), v[i + 1..].to_vec()));
            }
            b"pax" => e.pax_path = true,
            b"paxrec" => {
                let i = v
                    .iter()
                    .position(|&b| b == b'=')
                    .ok_or("paxrec=KEY=VALUE")?;
                e.pax_records.push((v[..i].to_vec(), v[i + 1..].to_vec()));
            }
            b"paxraw" => e.pax_raw = Some(v.to_vec()),
            b"gen" => {
                let n: usize = vs()?.parse().map_err(|_| "bad gen size")?;
                match &mut e.kind {
                    Kind::File(c) => *c = generated(n, n as u64),
                    _ => return Err("gen= is only for files".into()),
                }
            }
            other => {
                return Err(format!(
                    "unknown option {:?}",
                    String::from_utf8_lossy(other)
                ));
            }
        }
    }
    Ok(e)
}

/// PAX extended-header records: `"<len> <key>=<value>\n"`, where len counts itself.
pub fn pax_records(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
        out.push(b'\n');
    }
    out
}

/// GNU tar's name field size.
const NAME_FIELD: usize = 100;

fn set_name_field(field: &mut [u8], name: &[u8]) {
    field.fill(0);
    let n = name.len().min(field.len());
    field[..n].copy_from_slice(&name[..n]);
}

/// A header for an extension entry (`L`, `K`, `x`) carrying `len` bytes.
fn extension_header(kind: tar::EntryType, name: &[u8], len: usize) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    set_name_field(&mut h.as_old_mut().name, name);
    h.set_mode(0o644);
    h.set_size(len as u64);
    h.set_entry_type(kind);
    h.set_cksum();
    h
}

/// Writes one entry (with its GNU long-name or PAX extension entries) to `b`.
pub fn append_entry(b: &mut tar::Builder<Vec<u8>>, e: &Entry) {
    let mut pax: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let link: Option<&[u8]> = match &e.kind {
        Kind::Symlink(t) | Kind::HardLink(t) => Some(t),
        _ => None,
    };
    if e.name.len() > NAME_FIELD {
        if e.pax_path {
            pax.push((b"path".to_vec(), e.name.clone()));
        } else {
            let mut data = e.name.clone();
            data.push(0);
            let h = extension_header(tar::EntryType::GNULongName, b"././@LongLink", data.len());
            b.append(&h, &data[..]).unwrap();
        }
    }
    if let Some(t) = link.filter(|t| t.len() > NAME_FIELD || e.pax_path) {
        if e.pax_path {
            pax.push((b"linkpath".to_vec(), t.to_vec()));
        } else {
            let mut data = t.to_vec();
            data.push(0);
            let h = extension_header(tar::EntryType::GNULongLink, b"././@LongLink", data.len());
            b.append(&h, &data[..]).unwrap();
        }
    }
    if e.pax_path && e.name.len() <= NAME_FIELD {
        pax.push((b"path".to_vec(), e.name.clone()));
    }
    if let Some(m) = &e.pax_mtime {
        pax.push((b"mtime".to_vec(), m.as_bytes().to_vec()));
    }
    for (k, v) in &e.xattrs {
        pax.push(([&b"SCHILY.xattr."[..], k].concat(), v.clone()));
    }
    pax.extend(e.pax_records.iter().cloned());
    if !pax.is_empty() || e.pax_raw.is_some() {
        let data = e.pax_raw.clone().unwrap_or_else(|| pax_records(&pax));
        let mut pname = b"PaxHeaders.0/".to_vec();
        pname.extend_from_slice(&e.name[..e.name.len().min(80)]);
        let h = extension_header(tar::EntryType::XHeader, &pname, data.len());
        b.append(&h, &data[..]).unwrap();
    }

    let mut h = tar::Header::new_gnu();
    set_name_field(&mut h.as_old_mut().name, &e.name);
    if let Some(t) = link.filter(|_| !e.pax_path) {
        set_name_field(&mut h.as_old_mut().linkname, t);
    }
    h.set_mode(e.mode);
    h.set_uid(e.uid);
    h.set_gid(e.gid);
    if e.pax_mtime.is_some() {
        h.set_mtime(0);
    } else if e.mtime >= 0 {
        h.set_mtime(e.mtime as u64);
    } else {
        // GNU base-256: a 0xff lead byte, then the value in two's complement, big-endian.
        let field = &mut h.as_old_mut().mtime;
        field[..4].fill(0xff);
        field[4..].copy_from_slice(&e.mtime.to_be_bytes());
    }
    let (ty, data): (tar::EntryType, &[u8]) = match &e.kind {
        Kind::Dir => (tar::EntryType::Directory, &[]),
        Kind::File(c) => (tar::EntryType::Regular, c),
        Kind::Symlink(_) => (tar::EntryType::Symlink, &[]),
        Kind::HardLink(_) => (tar::EntryType::Link, &[]),
        Kind::Char(..) => (tar::EntryType::Char, &[]),
        Kind::Block(..) => (tar::EntryType::Block, &[]),
        Kind::Fifo => (tar::EntryType::Fifo, &[]),
    };
    h.set_entry_type(ty);
    if let Kind::Char(ma, mi) | Kind::Block(ma, mi) = e.kind {
        h.set_device_major(ma).unwrap();
        h.set_device_minor(mi).unwrap();
    }
    h.set_size(data.len() as u64);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// An uncompressed layer tar holding `entries` in order.
pub fn layer_tar(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        append_entry(&mut b, e);
    }
    b.into_inner().unwrap()
}
