//! The commands that look inside an image without mounting it: `inspect`, `ls`, `cat`.
//! Each writes to the writer it is given, so tests capture the output.
//! Dependencies: stack, tree, overlay (ino numbering), image, error.

use std::io::Write;

use serde_json::json;

use crate::error::{Context, Error, Result};
use crate::image::container::Compression;
use crate::stack::Stack;
use crate::tree::LowerTree;
use crate::tree::node::{Node, NodeId, NodeKind};
use crate::view::LowerView;

/// Symlink hops `cat` follows before giving up (the kernel's limit).
const MAX_SYMLINK_HOPS: usize = 40;

/// `rimgfs inspect`.
pub fn inspect(stack: &Stack, json_out: bool, out: &mut dyn Write) -> Result<()> {
    let img = &stack.image;
    let tree = stack.tree()?;
    let cfg = &img.config;
    let layers: Vec<_> = img
        .layers
        .iter()
        .zip(&stack.layers)
        .map(|(l, p)| {
            json!({
                "index": l.index,
                "digest": l.digest().to_string(),
                "diff_id": l.diff_id.to_string(),
                "media_type": l.media_type,
                "compression": match l.compression {
                    Compression::None => "none",
                    Compression::Gzip => "gzip",
                    Compression::Zstd => "zstd",
                },
                "size": l.blob.len(),
                "uncompressed_size": p.index.tar_size,
                "entries": p.index.entries.len(),
            })
        })
        .collect();
    let platform = {
        let mut p = format!("{}/{}", cfg.os, cfg.architecture);
        if let Some(v) = &cfg.variant {
            p.push('/');
            p.push_str(v);
        }
        p
    };
    let stdout_err = |e| Error::Io {
        op: "write",
        path: "stdout".into(),
        source: e,
    };
    if json_out {
        let v = json!({
            "source": img.origin.display().to_string(),
            "refs": img.refs,
            "platform": platform,
            "manifest_digest": img.manifest_digest.as_ref().map(|d| d.to_string()),
            "config_digest": img.config_digest.as_ref().map(|d| d.to_string()),
            "created": cfg.created,
            "config": cfg.config,
            "layers": layers,
            "tree": {
                "entries": tree.entry_count(),
                "inodes": tree.len(),
                "bytes": tree.heap_bytes(),
                "file_bytes": tree.total_bytes,
            },
            "history": cfg.history,
        });
        let s = serde_json::to_string_pretty(&v).map_err(|e| Error::Usage(e.to_string()))?;
        return writeln!(out, "{s}").map_err(stdout_err);
    }
    let mut w = String::new();
    let line = |w: &mut String, k: &str, v: &str| w.push_str(&format!("{k:<12} {v}\n"));
    line(&mut w, "Source:", &img.origin.display().to_string());
    line(&mut w, "Refs:", &img.refs.join(", "));
    line(&mut w, "Platform:", &platform);
    if let Some(d) = &img.manifest_digest {
        line(&mut w, "Manifest:", d.as_str());
    }
    if let Some(d) = &img.config_digest {
        line(&mut w, "Config:", d.as_str());
    }
    if let Some(c) = &cfg.created {
        line(&mut w, "Created:", c);
    }
    line(
        &mut w,
        "Tree:",
        &format!(
            "{} entries, {} inodes, {} bytes of files; {} bytes in memory when mounted",
            tree.entry_count(),
            tree.len(),
            tree.total_bytes,
            tree.heap_bytes()
        ),
    );
    if let Some(rc) = &cfg.config {
        let join =
            |v: &Option<Vec<String>>| v.as_ref().map(|v| format!("{v:?}")).unwrap_or_default();
        line(&mut w, "User:", rc.user.as_deref().unwrap_or(""));
        line(
            &mut w,
            "WorkingDir:",
            rc.working_dir.as_deref().unwrap_or(""),
        );
        line(&mut w, "Entrypoint:", &join(&rc.entrypoint));
        line(&mut w, "Cmd:", &join(&rc.cmd));
        for e in rc.env.iter().flatten() {
            line(&mut w, "Env:", e);
        }
        for (k, v) in rc.labels.iter().flatten() {
            line(&mut w, "Label:", &format!("{k}={v}"));
        }
    }
    w.push_str("\nLAYER  DIGEST                                                                   COMPRESSION  SIZE        UNCOMPRESSED  ENTRIES\n");
    for l in &layers {
        // serde_json::Value ignores width specifiers; format each cell as a string first.
        let cell = |k: &str| match &l[k] {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        };
        w.push_str(&format!(
            "{:<6} {:<72} {:<12} {:<11} {:<13} {}\n",
            cell("index"),
            cell("digest"),
            cell("compression"),
            cell("size"),
            cell("uncompressed_size"),
            cell("entries")
        ));
    }
    w.push_str("\nHISTORY (oldest first)\n");
    for h in &cfg.history {
        let empty = if h.empty_layer == Some(true) {
            "  (no layer)"
        } else {
            ""
        };
        w.push_str(&format!(
            "{:<25} {}{empty}\n",
            h.created.as_deref().unwrap_or("-"),
            h.created_by.as_deref().unwrap_or("")
        ));
    }
    out.write_all(w.as_bytes()).map_err(stdout_err)
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

/// `rimgfs ls`.
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
    out.write_all(&buf).map_err(|e| Error::Io {
        op: "write",
        path: "stdout".into(),
        source: e,
    })
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

/// `rimgfs cat`: follows symlinks inside the image (never onto the host).
pub fn cat(
    stack: &Stack,
    tree: std::sync::Arc<LowerTree>,
    path: &str,
    out: &mut dyn Write,
) -> Result<()> {
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
        out.write_all(&data)
            .ctx("write", std::path::Path::new("stdout"))?;
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
