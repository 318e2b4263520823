//! `rimgfs ls`: a directory of the merged image, without mounting it, in `ls` or `ls -l`
//! form, recursively with `-R`, each entry's layer with `--layers`.
//! Dependencies: stack, tree, error.

use std::io::Write;

use super::{open_stack, write_out};
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
    };
    ls(&stack, &tree, &a.path, o, out)
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
}

/// Lists `path` of an opened image's merged tree.
pub fn ls(
    stack: &Stack,
    tree: &LowerTree,
    path: &str,
    o: LsOptions,
    out: &mut dyn Write,
) -> Result<()> {
    let id = tree.resolve(path.as_bytes()).ok_or(Error::NotFound {
        path: path.into(),
        reason: "no such file or directory",
    })?;
    let labels = stack.layer_labels();
    let mut buf = Vec::new();
    let node = |id: NodeId| {
        tree.node(id).ok_or(Error::NotFound {
            path: path.into(),
            reason: "bad node",
        })
    };
    let base = path.trim_end_matches('/').to_string();
    let print = |buf: &mut Vec<u8>, name: &[u8], n: &Node| {
        if o.long {
            buf.extend_from_slice(
                long_line(
                    n,
                    o.layers.then(|| labels.get(usize::from(n.layer))).flatten(),
                )
                .as_bytes(),
            );
        }
        buf.extend_from_slice(name);
        if let (true, NodeKind::Symlink(t)) = (o.long, &n.kind) {
            buf.extend_from_slice(b" -> ");
            buf.extend_from_slice(t);
        }
        buf.push(b'\n');
    };
    let top = node(id)?;
    if !top.is_dir() {
        print(&mut buf, path.as_bytes(), top);
    } else if o.recursive {
        let mut stack_ids = vec![(base.clone().into_bytes(), id)];
        while let Some((dir_path, dir)) = stack_ids.pop() {
            let mut subdirs = Vec::new();
            for e in tree.children(dir) {
                let mut p = dir_path.clone();
                p.push(b'/');
                p.extend_from_slice(tree.name(e));
                let n = node(e.node)?;
                print(&mut buf, &p, n);
                if n.is_dir() {
                    subdirs.push((p, e.node));
                }
            }
            stack_ids.extend(subdirs.into_iter().rev());
        }
    } else {
        for e in tree.children(id) {
            print(&mut buf, tree.name(e), node(e.node)?);
        }
    }
    write_out(out, &buf)
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
