//! Whiteout names of the OCI image-spec (`layer.md`, "Whiteouts"): a pure classifier.
//!
//! - `.wh.NAME` hides `NAME` of lower layers;
//! - `.wh..wh..opq` makes its directory opaque: lower layers' children are hidden;
//! - any other `.wh..wh.` name is AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`) and is
//!   ignored, as Docker and containerd ignore it.
//!
//! Dependencies: none.

/// The prefix of every whiteout name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of the opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// The prefix of whiteout meta files (AUFS).
pub const META_PREFIX: &[u8] = b".wh..wh.";

/// What a file name means to the layer rules.
#[derive(Debug, PartialEq, Eq)]
pub enum Class<'a> {
    /// An ordinary entry.
    Normal,
    /// Hides this sibling name of lower layers.
    Whiteout(&'a [u8]),
    /// Hides every child of lower layers in this directory.
    Opaque,
    /// AUFS metadata or a malformed whiteout: not part of the image's tree.
    Ignored,
}

/// Classifies the last component of a path.
pub fn classify(name: &[u8]) -> Class<'_> {
    if name == OPAQUE_MARKER {
        return Class::Opaque;
    }
    if name.starts_with(META_PREFIX) {
        return Class::Ignored;
    }
    match name.strip_prefix(WHITEOUT_PREFIX) {
        None => Class::Normal,
        // `.wh.`, `.wh..` and `.wh...` would hide the directory itself or its parent.
        Some(b"") | Some(b".") | Some(b"..") => Class::Ignored,
        Some(target) => Class::Whiteout(target),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_table() {
        let cases: &[(&[u8], Class<'_>)] = &[
            (b"passwd", Class::Normal),
            (b".wh.passwd", Class::Whiteout(b"passwd")),
            (b".wh..wh..opq", Class::Opaque),
            (b".wh..wh.plnk", Class::Ignored),
            (b".wh..wh.aufs", Class::Ignored),
            (b".wh.", Class::Ignored),
            (b".wh..", Class::Ignored),
            (b".wh...", Class::Ignored),
            (b".wh..hidden", Class::Whiteout(b".hidden")),
            (b"x.wh.y", Class::Normal),
            (b".WH.x", Class::Normal),
        ];
        for (name, want) in cases {
            assert_eq!(&classify(name), want, "{}", String::from_utf8_lossy(name));
        }
    }
}
