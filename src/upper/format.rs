//! The upper directory's format as pure rules: what an upper entry means to the merged view.
//! One reader for the live mount (`Upper::classify`) and for `diff` and `commit`
//! (`changes::scan`), so both always see the same tree.
//!
//! The format is kernel overlayfs's (`Documentation/filesystems/overlayfs.rst`), with its
//! private attributes in either namespace: `trusted.overlay.` (the kernel, a root daemon) or
//! `user.overlay.` (overlayfs `userxattr`, fuse-overlayfs and rimgfs without privileges). One
//! upper may hold both, written by daemons of both kinds; each entry is read by what it
//! carries, `trusted.` first:
//! - a whiteout is a 0/0 character device, an empty file or a character device carrying
//!   `overlay.whiteout`, or a `.wh.NAME` file beside `NAME` (fuse-overlayfs's, where it may
//!   not `mknod`) unless `NAME` has an entry of its own;
//! - an opaque directory carries `overlay.opaque=y` (`x` only marks a directory holding
//!   xattr whiteouts) or holds a `.wh..wh..opq` entry;
//! - a renamed directory carries `overlay.redirect`: a path from the lower root, or a name in
//!   its parent's lower directory;
//! - a metadata-only copy carries `overlay.metacopy`: its data is the lower file at its own
//!   path, or at its redirect;
//! - an owner and mode the daemon could not set are in `user.containers.override_stat`;
//! - an entry's own attribute in an overlay namespace is stored escaped,
//!   `trusted.overlay.overlay.X` for `trusted.overlay.X` (as Linux 6.7 does), and is no flag.
//!
//! Other `.wh.` names (the opaque marker, AUFS's `.wh..wh.*`) are bookkeeping, not entries.
//! Dependencies: layer (tar path rules, whiteout names).

use crate::layer::entry::{Xattr, normalize_path};
use crate::layer::whiteout::{self, Class, WHITEOUT_PREFIX};

/// Private attributes of kernel overlayfs.
pub const KERNEL_PREFIX: &[u8] = b"trusted.overlay.";
/// Private attributes of overlayfs with `userxattr`, and of unprivileged daemons.
pub const USER_PREFIX: &[u8] = b"user.overlay.";
/// Both namespaces, in the order they are read.
const PREFIXES: [&[u8]; 2] = [KERNEL_PREFIX, USER_PREFIX];

/// Where an unprivileged daemon records the owner and mode an entry should show but that it
/// may not set: `uid:gid:mode` (octal), as fuse-overlayfs and containers/storage do.
pub const OVERRIDE_STAT: &[u8] = b"user.containers.override_stat";

/// The value of the opaque attribute that makes a directory opaque.
const OPAQUE_YES: &[u8] = b"y";

/// Which conventions a daemon writes with (it reads both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Kernel overlayfs: 0/0 character-device whiteouts, `trusted.overlay.*` xattrs.
    Kernel,
    /// Unprivileged fallback: `.wh.NAME` whiteout files, `user.overlay.*` xattrs.
    User,
}

impl Format {
    /// The prefix of the private xattrs this format writes.
    pub fn xattr_prefix(self) -> &'static [u8] {
        match self {
            Format::Kernel => KERNEL_PREFIX,
            Format::User => USER_PREFIX,
        }
    }

    /// The full name of `flag` in this format.
    pub fn xattr(self, flag: Flag) -> Vec<u8> {
        [self.xattr_prefix(), flag.suffix()].concat()
    }
}

/// An overlayfs private attribute, by its name after the namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flag {
    /// `opaque`: the directory hides its lower one.
    Opaque,
    /// `redirect`: where a renamed directory's lower content is.
    Redirect,
    /// `metacopy`: the file's data is still the lower file's.
    Metacopy,
    /// `whiteout`: an empty file or character device that is a whiteout.
    Whiteout,
}

impl Flag {
    /// The name after the namespace prefix.
    pub fn suffix(self) -> &'static [u8] {
        match self {
            Flag::Opaque => b"opaque",
            Flag::Redirect => b"redirect",
            Flag::Metacopy => b"metacopy",
            Flag::Whiteout => b"whiteout",
        }
    }
}

/// Whether an xattr name is in the overlay's namespaces (`trusted.overlay.`,
/// `user.overlay.`, the owner override): users may not set or remove one through a mount.
pub fn is_private_xattr(name: &[u8]) -> bool {
    PREFIXES.iter().any(|p| name.starts_with(p)) || name == OVERRIDE_STAT
}

/// What sets an entry's own overlay-namespaced attribute apart from bookkeeping in the upper.
const ESCAPE: &[u8] = b"overlay.";

/// The name an entry's own attribute is stored under in the upper. One in an overlay
/// namespace (an image may carry `trusted.overlay.opaque`, say) is escaped as kernel
/// overlayfs does since Linux 6.7, `trusted.overlay.X` as `trusted.overlay.overlay.X`
/// (likewise `user.overlay.`), so it can never act as bookkeeping; others are kept as they
/// are.
pub fn escape_xattr(name: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    match PREFIXES.iter().find(|p| name.starts_with(p)) {
        Some(p) => [p, ESCAPE, &name[p.len()..]].concat().into(),
        None => name.into(),
    }
}

/// The entry's own attribute a name stored in the upper stands for (the inverse of
/// [`escape_xattr`]); `None` for bookkeeping, which belongs to no entry.
pub fn unescape_xattr(stored: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    if stored == OVERRIDE_STAT {
        return None;
    }
    match PREFIXES.iter().find(|p| stored.starts_with(p)) {
        Some(p) => stored[p.len()..]
            .strip_prefix(ESCAPE)
            .map(|rest| [p, rest].concat().into()),
        None => Some(stored.into()),
    }
}

/// Whether a name stored in the upper is overlay bookkeeping rather than part of the entry
/// (never shown to users, never copied, never committed).
pub fn is_bookkeeping(stored: &[u8]) -> bool {
    unescape_xattr(stored).is_none()
}

/// The value of `flag` among an entry's attributes, `trusted.` first.
pub fn flag(xattrs: &[Xattr], flag: Flag) -> Option<&[u8]> {
    let key = flag.suffix();
    PREFIXES.iter().find_map(|p| {
        xattrs
            .iter()
            .find(|(k, _)| k.len() == p.len() + key.len() && k.starts_with(p) && k.ends_with(key))
            .map(|(_, v)| &**v)
    })
}

/// Parses an [`OVERRIDE_STAT`] value: `(uid, gid, permission bits)`.
pub fn parse_override(v: &[u8]) -> Option<(u32, u32, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let mut it = s.trim().split(':');
    let uid = it.next()?.parse().ok()?;
    let gid = it.next()?.parse().ok()?;
    let mode = u32::from_str_radix(it.next()?, 8).ok()?;
    Some((uid, gid, mode & 0o7777))
}

/// The [`OVERRIDE_STAT`] value recording an owner and permission bits.
pub fn override_value(uid: u32, gid: u32, mode: u32) -> String {
    format!("{uid}:{gid}:{:o}", mode & 0o7777)
}

/// Where a renamed directory (or metacopy file) has its lower content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// A path from the lower root (normalised: no leading `/`).
    Absolute(Vec<u8>),
    /// A name in the parent's lower directory.
    Relative(Vec<u8>),
}

/// Reads a redirect value: `/a/b` (from the lower root) or `name` (beside the entry).
/// `None` for a value that could climb out or name nothing.
pub fn parse_redirect(v: &[u8]) -> Option<Redirect> {
    if let Some(abs) = v.strip_prefix(b"/") {
        return normalize_path(abs).ok().map(Redirect::Absolute);
    }
    let bad = v.is_empty() || v.contains(&b'/') || v.contains(&0) || v == b"." || v == b"..";
    (!bad).then(|| Redirect::Relative(v.to_vec()))
}

/// What an upper entry means to the merged view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Hides the lower entry of its name.
    Whiteout,
    /// A directory; `opaque` ones show no lower entries, redirected ones merge with the lower
    /// directory the redirect names.
    Dir {
        /// Lower entries are hidden.
        opaque: bool,
        /// The lower directory it merges with, when not the one at its own path.
        redirect: Option<Redirect>,
    },
    /// A regular file whose metadata is here and whose data is the lower file at its own
    /// path, or at its redirect.
    Metacopy {
        /// The lower file, when not the one at its own path.
        redirect: Option<Redirect>,
    },
    /// Anything else: whole in the upper.
    Plain,
}

/// What [`classify`] looks at of an entry besides its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryStat {
    /// `st_mode` (only the type bits matter).
    pub mode: u32,
    /// `st_rdev`.
    pub rdev: u64,
    /// `st_size`.
    pub size: u64,
    /// For a directory: it holds a `.wh..wh..opq` entry.
    pub opaque_marker: bool,
}

impl EntryStat {
    fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// Whether the entry's private attributes can change its role: only directories,
    /// regular files and character devices other than 0/0 (a whiteout whatever it
    /// carries) have any that matter, so a reader may skip reading the others'.
    pub fn reads_xattrs(&self) -> bool {
        match self.file_type() {
            libc::S_IFDIR | libc::S_IFREG => true,
            libc::S_IFCHR => self.rdev != 0,
            _ => false,
        }
    }

    /// Whether the entry may be a whiteout at all (a reader listing a directory needs to
    /// know no more about the others).
    pub fn may_be_whiteout(&self) -> bool {
        match self.file_type() {
            libc::S_IFCHR => true,
            libc::S_IFREG => self.size == 0,
            _ => false,
        }
    }
}

/// What an upper entry means, from its type and its private attributes (pure). The error
/// says why an entry is malformed (a redirect that climbs out).
pub fn classify(st: &EntryStat, xattrs: &[Xattr]) -> Result<Role, String> {
    let redirect = || match flag(xattrs, Flag::Redirect) {
        None => Ok(None),
        Some(v) => parse_redirect(v)
            .map(Some)
            .ok_or_else(|| format!("bad redirect {:?}", String::from_utf8_lossy(v))),
    };
    let marked_whiteout = st.may_be_whiteout() && flag(xattrs, Flag::Whiteout).is_some();
    Ok(match st.file_type() {
        libc::S_IFCHR if st.rdev == 0 => Role::Whiteout,
        _ if marked_whiteout => Role::Whiteout,
        libc::S_IFDIR => Role::Dir {
            opaque: flag(xattrs, Flag::Opaque) == Some(OPAQUE_YES) || st.opaque_marker,
            redirect: redirect()?,
        },
        libc::S_IFREG if flag(xattrs, Flag::Metacopy).is_some() => Role::Metacopy {
            redirect: redirect()?,
        },
        _ => Role::Plain,
    })
}

/// What a name in an upper directory stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Name<'a> {
    /// The entry of this name.
    Entry,
    /// A `.wh.NAME` file: a whiteout of `NAME`, unless `NAME` has an entry of its own.
    WhiteoutOf(&'a [u8]),
    /// Bookkeeping, no entry: the opaque marker, AUFS's `.wh..wh.*`.
    Hidden,
}

/// What `name` stands for, given whether its entry is a regular file (pure). A `.wh.` name
/// that is not a file is an ordinary entry to overlayfs.
pub fn name(name: &[u8], is_file: bool) -> Name<'_> {
    match whiteout::classify(name) {
        Class::Normal => Name::Entry,
        Class::Whiteout(target) if is_file => Name::WhiteoutOf(target),
        Class::Whiteout(_) => Name::Entry,
        Class::Opaque | Class::Ignored => Name::Hidden,
    }
}

/// Whether a new entry may take `name`: names the format gives a meaning (`.wh.*`) would not
/// read back as what was made, nor commit to a layer as it, so they are refused.
pub fn name_is_free(name: &[u8]) -> bool {
    !name.starts_with(WHITEOUT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(k: &str, v: &str) -> Xattr {
        (k.as_bytes().into(), v.as_bytes().into())
    }

    fn st(mode: u32) -> EntryStat {
        EntryStat {
            mode,
            rdev: 0,
            size: 1,
            opaque_marker: false,
        }
    }

    const DIR: u32 = libc::S_IFDIR | 0o755;
    const FILE: u32 = libc::S_IFREG | 0o644;

    fn empty_file() -> EntryStat {
        EntryStat {
            size: 0,
            ..st(FILE)
        }
    }

    fn chardev(rdev: u64) -> EntryStat {
        EntryStat {
            rdev,
            ..st(libc::S_IFCHR | 0o600)
        }
    }

    fn dir(opaque: bool, redirect: Option<Redirect>) -> Role {
        Role::Dir { opaque, redirect }
    }

    #[test]
    fn classify_table() {
        let abs = || Some(Redirect::Absolute(b"a/b".to_vec()));
        let marked = EntryStat {
            opaque_marker: true,
            ..st(DIR)
        };
        let cases: Vec<(EntryStat, Vec<Xattr>, Role)> = vec![
            (chardev(0), vec![], Role::Whiteout),
            (chardev(libc::makedev(1, 3)), vec![], Role::Plain),
            (
                chardev(libc::makedev(1, 3)),
                vec![x("trusted.overlay.whiteout", "")],
                Role::Whiteout,
            ),
            (
                empty_file(),
                vec![x("trusted.overlay.whiteout", "")],
                Role::Whiteout,
            ),
            (
                empty_file(),
                vec![x("user.overlay.whiteout", "")],
                Role::Whiteout,
            ),
            (st(FILE), vec![x("user.overlay.whiteout", "")], Role::Plain),
            (st(FILE), vec![], Role::Plain),
            (empty_file(), vec![], Role::Plain),
            (st(DIR), vec![], dir(false, None)),
            (
                st(DIR),
                vec![x("trusted.overlay.opaque", "y")],
                dir(true, None),
            ),
            (
                st(DIR),
                vec![x("user.overlay.opaque", "y")],
                dir(true, None),
            ),
            // `x` marks a directory holding xattr whiteouts, not an opaque one.
            (
                st(DIR),
                vec![x("trusted.overlay.opaque", "x")],
                dir(false, None),
            ),
            (marked, vec![], dir(true, None)),
            (
                st(DIR),
                vec![x("trusted.overlay.redirect", "/a/b")],
                dir(false, abs()),
            ),
            (
                st(DIR),
                vec![x("user.overlay.redirect", "old")],
                dir(false, Some(Redirect::Relative(b"old".to_vec()))),
            ),
            // Both namespaces on one entry (daemons of both kinds wrote it): trusted wins.
            (
                st(DIR),
                vec![
                    x("trusted.overlay.redirect", "/a/b"),
                    x("user.overlay.redirect", "/c"),
                ],
                dir(false, abs()),
            ),
            (
                st(DIR),
                vec![
                    x("trusted.overlay.opaque", "x"),
                    x("user.overlay.opaque", "y"),
                ],
                dir(false, None),
            ),
            (
                empty_file(),
                vec![x("trusted.overlay.metacopy", "")],
                Role::Metacopy { redirect: None },
            ),
            (
                empty_file(),
                vec![
                    x("user.overlay.metacopy", ""),
                    x("user.overlay.redirect", "/a/b"),
                ],
                Role::Metacopy { redirect: abs() },
            ),
            // Other namespaces' look-alikes mean nothing.
            (
                st(DIR),
                vec![x("user.overlayx.opaque", "y")],
                dir(false, None),
            ),
            (
                st(DIR),
                vec![x("security.overlay.opaque", "y")],
                dir(false, None),
            ),
            // Only directories and files take the flags.
            (
                st(libc::S_IFLNK | 0o777),
                vec![x("trusted.overlay.opaque", "y")],
                Role::Plain,
            ),
            (st(libc::S_IFIFO | 0o644), vec![], Role::Plain),
            (st(libc::S_IFSOCK | 0o644), vec![], Role::Plain),
        ];
        for (s, xattrs, want) in cases {
            assert_eq!(classify(&s, &xattrs), Ok(want.clone()), "{s:?} {xattrs:?}");
            // A reader may skip the attributes of entries they cannot change, and the
            // directory listing may skip entries that cannot be whiteouts.
            if !s.reads_xattrs() {
                assert_eq!(classify(&s, &[]), Ok(want.clone()), "{s:?}");
            }
            if want == Role::Whiteout {
                assert!(s.may_be_whiteout(), "{s:?}");
            }
        }
        let bad = vec![x("trusted.overlay.redirect", "/../etc")];
        assert!(classify(&st(DIR), &bad).is_err());
        let bad = vec![x("user.overlay.redirect", "a/b")];
        assert!(classify(&st(DIR), &bad).is_err());
    }

    #[test]
    fn parse_redirect_table() {
        let cases: &[(&[u8], Option<Redirect>)] = &[
            (b"/a//b/", Some(Redirect::Absolute(b"a/b".to_vec()))),
            (b"/", Some(Redirect::Absolute(Vec::new()))),
            (b"name", Some(Redirect::Relative(b"name".to_vec()))),
            (b"a/b", None),
            (b"..", None),
            (b"", None),
            (b"/a/../b", None),
        ];
        for (v, want) in cases {
            assert_eq!(&parse_redirect(v), want, "{v:?}");
        }
    }

    #[test]
    fn overlay_xattrs_of_entries_are_escaped_and_back() {
        for (own, stored) in [
            ("trusted.overlay.opaque", "trusted.overlay.overlay.opaque"),
            ("user.overlay.redirect", "user.overlay.overlay.redirect"),
            (
                "trusted.overlay.overlay.x",
                "trusted.overlay.overlay.overlay.x",
            ),
            ("user.k", "user.k"),
            ("security.capability", "security.capability"),
            ("trusted.overlayx", "trusted.overlayx"),
        ] {
            assert_eq!(&*escape_xattr(own.as_bytes()), stored.as_bytes());
            assert_eq!(
                unescape_xattr(stored.as_bytes()).as_deref(),
                Some(own.as_bytes())
            );
            assert!(!is_bookkeeping(stored.as_bytes()));
        }
        // Bookkeeping stands for no attribute of the entry, and is never the escape of one.
        for b in [
            "trusted.overlay.opaque",
            "user.overlay.metacopy",
            "trusted.overlay.redirect",
            "user.containers.override_stat",
        ] {
            assert_eq!(unescape_xattr(b.as_bytes()), None, "{b}");
            assert!(is_bookkeeping(b.as_bytes()));
        }
        // What an escaped attribute reads as is not a flag.
        let stored = vec![x("trusted.overlay.overlay.opaque", "y")];
        assert_eq!(flag(&stored, Flag::Opaque), None);
    }

    #[test]
    fn private_xattrs_table() {
        assert!(is_private_xattr(b"trusted.overlay.origin"));
        assert!(is_private_xattr(b"user.overlay.impure"));
        assert!(is_private_xattr(OVERRIDE_STAT));
        assert!(!is_private_xattr(b"user.overlayx"));
        assert!(!is_private_xattr(b"security.capability"));
        assert!(!is_private_xattr(b"user.containers.other"));
    }

    #[test]
    fn override_stat_round_trips() {
        let v = override_value(1000, 100, 0o104755);
        assert_eq!(v, "1000:100:4755");
        assert_eq!(parse_override(v.as_bytes()), Some((1000, 100, 0o4755)));
        assert_eq!(parse_override(b"0:0:644\n"), Some((0, 0, 0o644)));
        for bad in [&b"0:0"[..], b"a:0:644", b"0:0:9", b""] {
            assert_eq!(parse_override(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn names_table() {
        let cases: &[(&[u8], bool, Name<'_>)] = &[
            (b"passwd", true, Name::Entry),
            (b".wh.passwd", true, Name::WhiteoutOf(b"passwd")),
            // A `.wh.` name that is not a file is an entry of that name.
            (b".wh.passwd", false, Name::Entry),
            (b".wh..wh..opq", true, Name::Hidden),
            (b".wh..wh..opq", false, Name::Hidden),
            (b".wh..wh.plnk", false, Name::Hidden),
            (b".wh.", true, Name::Hidden),
        ];
        for (n, is_file, want) in cases {
            assert_eq!(name(n, *is_file), *want, "{n:?} {is_file}");
        }
        assert!(name_is_free(b"passwd") && name_is_free(b"x.wh.y"));
        assert!(!name_is_free(b".wh.passwd") && !name_is_free(b".wh..wh..opq"));
    }

    #[test]
    fn formats_write_their_namespace() {
        assert_eq!(
            Format::Kernel.xattr(Flag::Opaque),
            b"trusted.overlay.opaque"
        );
        assert_eq!(Format::User.xattr(Flag::Redirect), b"user.overlay.redirect");
        let written = vec![(
            Format::User.xattr(Flag::Metacopy).into_boxed_slice(),
            Box::from(&b""[..]),
        )];
        assert_eq!(flag(&written, Flag::Metacopy), Some(&b""[..]));
    }
}
