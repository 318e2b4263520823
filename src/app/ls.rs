//! `rimgfs ls`: a directory of the merged image, without mounting it, in `ls` or `ls -l`
//! form, recursively with `-R`, each entry's layer with `--layers`.
//! Dependencies: stack, tree, error.

use std::io::Write;

use serde_json::{Map, Value, json};

use super::{json, open_stack, write_out};
use crate::cli::LsCommand;
use crate::error::{Error, Result};
use crate::stack::Stack;
use crate::tree::LowerTree;
use crate::tree::node::{Node, NodeId, NodeKind};

/// Runs `rimgfs ls`.
pub fn run(a: LsCommand, out: &mut dyn Write) -> Result<()> {
    let stack = open_stack(&a.image, &a.select, a.layer)?;
    let tree = stack.tree()?;
    let o = LsOptions {
        long: a.long,
        recursive: a.recursive,
        layers: a.layers,
        json: a.json,
    };
    ls(&stack, &tree, &a.path, a.layer, o, out)
}

/// Options of `rimgfs ls`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LsOptions {
    /// `-l`.
    pub long: bool,
    /// `-R`.
    pub recursive: bool,
    /// `--layers`.
    pub layers: bool,
    /// `--json`: every attribute of every entry, whatever `long` and `layers` say.
    pub json: bool,
}

/// One listed entry: what the text form prints as its name (the name, or with `-R` the
/// path), and its path in the image.
struct Listed {
    shown: Vec<u8>,
    path: Vec<u8>,
    node: Node,
}

/// Lists `path` of an opened image's merged tree (`layer`: the `--layer` it was opened
/// with, which the JSON form names).
pub fn ls(
    stack: &Stack,
    tree: &LowerTree,
    path: &str,
    layer: Option<usize>,
    o: LsOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let listed = walk(tree, path, o.recursive)?;
    if o.json {
        return json_listing(stack, path, layer, &listed, out);
    }
    let labels = stack.layer_labels();
    let mut buf = Vec::new();
    for l in &listed {
        if o.long {
            let label = o.layers.then(|| labels.get(usize::from(l.node.layer)));
            buf.extend_from_slice(long_line(&l.node, label.flatten()).as_bytes());
        }
        buf.extend_from_slice(&l.shown);
        if let (true, NodeKind::Symlink(t)) = (o.long, &l.node.kind) {
            buf.extend_from_slice(b" -> ");
            buf.extend_from_slice(t);
        }
        buf.push(b'\n');
    }
    write_out(out, &buf)
}

/// The entries `ls` shows for `path`: the path itself when it is not a directory, else its
/// children, depth first with `recursive`, each directory's sorted by name.
fn walk(tree: &LowerTree, path: &str, recursive: bool) -> Result<Vec<Listed>> {
    let missing = |reason| Error::NotFound {
        path: path.into(),
        reason,
    };
    let id = tree
        .resolve(path.as_bytes())
        .ok_or(missing("no such file or directory"))?;
    let node = |id: NodeId| tree.node(id).ok_or(missing("bad node"));
    // The image path `resolve` walked: absolute, without empty or `.` components.
    let mut base = Vec::new();
    for c in path
        .as_bytes()
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
    {
        base.push(b'/');
        base.extend_from_slice(c);
    }
    let top = node(id)?;
    if !top.is_dir() {
        let path = if base.is_empty() { b"/".to_vec() } else { base };
        return Ok(vec![Listed {
            shown: path.clone(),
            path,
            node: top,
        }]);
    }
    // Text paths keep the argument's spelling, as `ls -R` does.
    let shown_base = path.trim_end_matches('/').as_bytes().to_vec();
    let mut listed = Vec::new();
    let mut dirs = vec![(shown_base, base, id)];
    while let Some((shown_dir, dir_path, dir)) = dirs.pop() {
        let mut subdirs = Vec::new();
        for e in tree.children(dir) {
            let name = tree.name(e);
            let join = |dir: &[u8]| [dir, b"/", name].concat();
            let n = node(e.node)?;
            let shown = if recursive {
                join(&shown_dir)
            } else {
                name.to_vec()
            };
            if recursive && n.is_dir() {
                subdirs.push((shown.clone(), join(&dir_path), e.node));
            }
            listed.push(Listed {
                shown,
                path: join(&dir_path),
                node: n,
            });
        }
        dirs.extend(subdirs.into_iter().rev());
    }
    Ok(listed)
}

/// `ls --json`: the listed path and every entry with all its attributes.
fn json_listing(
    stack: &Stack,
    path: &str,
    layer: Option<usize>,
    listed: &[Listed],
    out: &mut dyn Write,
) -> Result<()> {
    let entries: Vec<Value> = listed
        .iter()
        .map(|l| json_entry(&l.path, &l.node))
        .collect();
    let fields = json!({ "path": path, "layer": layer, "entries": entries });
    json::write(out, &json::document(&stack.image.origin, fields))
}

/// One entry of `ls --json`.
fn json_entry(path: &[u8], n: &Node) -> Value {
    let (kind, target, device) = match &n.kind {
        NodeKind::Dir { .. } => ("dir", None, None),
        NodeKind::File(_) => ("file", None, None),
        NodeKind::Symlink(t) => ("symlink", Some(&t[..]), None),
        NodeKind::CharDev { major, minor } => ("char", None, Some((major, minor))),
        NodeKind::BlockDev { major, minor } => ("block", None, Some((major, minor))),
        NodeKind::Fifo => ("fifo", None, None),
    };
    let mut e = Map::new();
    json::bytes_fields(&mut e, "path", Some(path));
    e.insert("type".into(), json!(kind));
    e.insert("mode".into(), json!(n.mode() & 0o7777));
    e.insert("uid".into(), json!(n.meta.uid));
    e.insert("gid".into(), json!(n.meta.gid));
    e.insert("nlink".into(), json!(n.nlink));
    e.insert("size".into(), json!(n.kind.size()));
    e.insert("mtime".into(), json!(n.meta.mtime));
    e.insert("mtime_nsec".into(), json!(n.meta.mtime_nsec));
    json::bytes_fields(&mut e, "target", target);
    e.insert("major".into(), json!(device.map(|d| d.0)));
    e.insert("minor".into(), json!(device.map(|d| d.1)));
    e.insert("layer".into(), json!(n.layer));
    Value::Object(e)
}

fn long_line(n: &Node, layer: Option<&String>) -> String {
    let t = match n.kind {
        NodeKind::Dir { .. } => 'd',
        NodeKind::File(_) => '-',
        NodeKind::Symlink(_) => 'l',
        NodeKind::CharDev { .. } => 'c',
        NodeKind::BlockDev { .. } => 'b',
        NodeKind::Fifo => 'p',
    };
    let m = n.mode();
    let bit = |mask: u32, c: char| if m & mask != 0 { c } else { '-' };
    let special = |x: u32, s: u32, lo: char, hi: char| match (m & x != 0, m & s != 0) {
        (true, true) => lo,
        (false, true) => hi,
        (true, false) => 'x',
        (false, false) => '-',
    };
    let perms: String = [
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        special(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        special(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        special(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect();
    let size = match n.kind {
        NodeKind::CharDev { major, minor } | NodeKind::BlockDev { major, minor } => {
            format!("{major}, {minor}")
        }
        ref k => k.size().to_string(),
    };
    let layer = layer.map(|l| format!(" [{l}]")).unwrap_or_default();
    format!(
        "{t}{perms} {:>3} {:>5} {:>5} {:>10} {:>11}{layer} ",
        n.nlink, n.meta.uid, n.meta.gid, size, n.meta.mtime
    )
}
