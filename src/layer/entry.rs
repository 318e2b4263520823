//! One entry of a layer tar, as plain data, and the path rules for tar names.
//!
//! Paths are stored relative to the image root without a leading `/` or `./` (the root itself
//! is the empty path), as raw bytes so names that are not UTF-8 survive. A `..` component is
//! refused: an image path can never climb out of the root (tar-rs `unpack_in` skips such
//! entries; rimgfs rejects the layer, since a silently dropped entry changes the tree).
//! Dependencies: none.

/// Attributes every entry has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits, including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch (may be negative).
    pub mtime: i64,
    /// Nanoseconds of the modification time (from a PAX `mtime`).
    pub mtime_nsec: u32,
}

/// An extended attribute: name and value (the value may be empty).
pub type Xattr = (Box<[u8]>, Box<[u8]>);

/// What an entry is, as the layer's tar says. Not the merged tree's `NodeKind` nor the
/// upper's `changes::UpperKind`: a hard link is an entry of its own here (a name for another
/// path, resolved when layers are merged), and a file is a range of this layer's tar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Dir,
    /// A regular file whose bytes are `size` bytes at `offset` in the layer tar.
    File {
        /// Offset of the data in the uncompressed layer tar.
        offset: u64,
        /// Length of the data.
        size: u64,
    },
    /// A symbolic link with its target (not normalised: it is the link's content).
    Symlink(Box<[u8]>),
    /// A hard link to another path of the image (normalised like any path).
    HardLink(Box<[u8]>),
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A block device.
    BlockDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

/// One entry of a layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayerEntry {
    /// Normalised path (see the module header).
    pub path: Box<[u8]>,
    /// Attributes.
    pub meta: Meta,
    /// Type and payload.
    pub kind: EntryKind,
    /// Extended attributes, in archive order.
    pub xattrs: Vec<Xattr>,
}

/// Why a tar path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// The path has a `..` component.
    DotDot,
    /// The path has a NUL byte.
    Nul,
}

/// Normalises a tar path: strips leading `/` and `./`, drops `.` and empty components and a
/// trailing `/`. The root (`./`, `/`, `.`) becomes the empty path.
pub fn normalize_path(raw: &[u8]) -> Result<Vec<u8>, PathError> {
    if raw.contains(&0) {
        return Err(PathError::Nul);
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err(PathError::DotDot),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(out)
}

/// Splits a normalised path into parent and last component; the root has no parent.
pub fn split_parent(path: &[u8]) -> Option<(&[u8], &[u8])> {
    if path.is_empty() {
        return None;
    }
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => Some((&path[..i], &path[i + 1..])),
        None => Some((&[][..], path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_path_table() {
        type Case<'a> = (&'a [u8], Result<&'a [u8], PathError>);
        let cases: &[Case<'_>] = &[
            (b"./etc/passwd", Ok(b"etc/passwd")),
            (b"/etc//hosts", Ok(b"etc/hosts")),
            (b"etc/", Ok(b"etc")),
            (b"./", Ok(b"")),
            (b"/", Ok(b"")),
            (b".", Ok(b"")),
            (b"a/./b", Ok(b"a/b")),
            (b"a/../b", Err(PathError::DotDot)),
            (b"../etc", Err(PathError::DotDot)),
            (b"a\0b", Err(PathError::Nul)),
            (b"caf\xe9/x", Ok(b"caf\xe9/x")),
            (b"...", Ok(b"...")),
        ];
        for (raw, want) in cases {
            let got = normalize_path(raw);
            assert_eq!(got.as_deref(), want.as_ref().map(|v| *v), "{raw:?}");
        }
    }

    #[test]
    fn split_parent_table() {
        assert_eq!(split_parent(b""), None);
        assert_eq!(split_parent(b"a"), Some((&b""[..], &b"a"[..])));
        assert_eq!(split_parent(b"a/b/c"), Some((&b"a/b"[..], &b"c"[..])));
    }
}
