//! `rimgfs cat`: a file of the merged image to stdout, read as a mount would read it,
//! following symlinks inside the image only. Dependencies: stack, tree, view, error.

use std::io::Write;
use std::sync::Arc;

use super::{open_stack, write_out};
use crate::cli::CatCommand;
use crate::error::{Error, Result};
use crate::stack::Stack;
use crate::tree::LowerTree;
use crate::tree::node::{NodeId, NodeKind};
use crate::view::LowerView;

/// Symlink hops `cat` follows before giving up (the kernel's limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// Runs `rimgfs cat`.
pub fn run(a: CatCommand, out: &mut dyn Write) -> Result<()> {
    let stack = open_stack(&a.image, &a.select, a.layer)?;
    let tree = Arc::new(stack.tree()?);
    cat(&stack, tree, &a.path, out)
}

/// Writes file `path` of an opened image's merged tree; follows symlinks inside the image
/// (never onto the host).
pub fn cat(stack: &Stack, tree: Arc<LowerTree>, path: &str, out: &mut dyn Write) -> Result<()> {
    let not_found = |reason| Error::NotFound {
        path: path.into(),
        reason,
    };
    let id = resolve_following(&tree, path.as_bytes()).ok_or(not_found("no such file"))?;
    let n = tree.node(id).ok_or(not_found("no such file"))?;
    let size = match n.kind {
        NodeKind::File(d) => d.size,
        NodeKind::Dir { .. } => return Err(not_found("is a directory")),
        _ => return Err(not_found("not a regular file")),
    };
    let ov = LowerView::new(tree.clone(), stack.layer_labels());
    let ino = crate::view::Ino::of(id);
    let mut off = 0;
    const CHUNK: u32 = 1 << 20;
    while off < size {
        let data = ov.read(ino, off, CHUNK).map_err(|e| Error::NotFound {
            path: path.into(),
            reason: if e == nix::errno::Errno::EIO {
                "layer data unreadable"
            } else {
                "read failed"
            },
        })?;
        if data.is_empty() {
            break;
        }
        write_out(out, &data)?;
        off += data.len() as u64;
    }
    Ok(())
}

/// Resolves a path inside the image, following symlinks (absolute ones from the image root,
/// `..` stopping at the root), as a container would see it.
fn resolve_following(tree: &LowerTree, path: &[u8]) -> Option<NodeId> {
    let mut pending: Vec<Vec<u8>> = split_rev(path);
    let mut stack: Vec<NodeId> = vec![LowerTree::ROOT];
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        let cur = *stack.last()?;
        match comp.as_slice() {
            b"." => continue,
            b".." => {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            _ => {}
        }
        let next = tree.lookup(cur, &comp)?;
        match &tree.node(next)?.kind {
            NodeKind::Symlink(t) => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return None;
                }
                if t.starts_with(b"/") {
                    stack.truncate(1);
                }
                pending.extend(split_rev(t));
            }
            _ => stack.push(next),
        }
    }
    stack.last().copied()
}

fn split_rev(p: &[u8]) -> Vec<Vec<u8>> {
    p.split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .rev()
        .map(<[u8]>::to_vec)
        .collect()
}
