//! `rimgfs inspect`: an image's references, platform, config, layers, history and the size
//! of its merged tree, as text or JSON. Dependencies: stack, image, error.

use std::io::Write;

use serde_json::json;

use super::{json, write_out};
use crate::cli::InspectCommand;
use crate::error::Result;
use crate::image::container::Compression;
use crate::image::{self, Image};
use crate::stack::Stack;

/// Runs `rimgfs inspect`.
pub fn run(a: InspectCommand, out: &mut dyn Write) -> Result<()> {
    let img = a.select.to_config(&a.image)?;
    if img.spec.is_remote() {
        // Manifest and config only: no layer blob is fetched.
        let image = image::open(&img.spec, &img.open, &img.cache)?;
        return inspect(&image, None, a.json, out);
    }
    let stack = Stack::open(&img.spec, &img.open, &img.cache, None)?;
    inspect(&stack.image, Some(&stack), a.json, out)
}

/// Describes an opened image, as text or (`json_out`) JSON: what the manifest and config
/// say, and with `stack` (the layers prepared) their uncompressed sizes and entry counts and
/// the merged tree's size. Registry images are inspected without it, so no layer blob is
/// fetched.
pub fn inspect(
    img: &Image,
    stack: Option<&Stack>,
    json_out: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let tree = stack.map(Stack::tree).transpose()?;
    let cfg = &img.config;
    let layers: Vec<_> = img
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let prepared = stack.and_then(|s| s.layers.get(i));
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
                "uncompressed_size": prepared.map(|p| p.tar_size()),
                "entries": prepared.and_then(|p| p.index().ok()).map(|i| i.entries.len()),
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
    if json_out {
        let history: Vec<_> = cfg
            .history
            .iter()
            .map(|h| {
                json!({
                    "created": h.created,
                    "created_by": h.created_by,
                    "author": h.author,
                    "comment": h.comment,
                    "empty_layer": h.empty_layer == Some(true),
                })
            })
            .collect();
        let fields = json!({
            "refs": img.refs,
            "platform": platform,
            "manifest_digest": img.manifest_digest.as_ref().map(|d| d.to_string()),
            "config_digest": img.config_digest.as_ref().map(|d| d.to_string()),
            "created": cfg.created,
            // The image's own execution parameters, every field it has.
            "config": img.config_raw.get("config").filter(|c| c.is_object()),
            "layers": layers,
            "tree": tree.as_ref().map(|tree| json!({
                "entries": tree.entry_count(),
                "inodes": tree.len(),
                "bytes": tree.heap_bytes(),
                "file_bytes": tree.total_bytes,
            })),
            "history": history,
            // The whole config document, as the image has it.
            "image_config": img.config_raw,
        });
        return json::write(out, &json::document(&img.origin, fields));
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
    if let Some(tree) = &tree {
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
    }
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
            serde_json::Value::Null => "-".into(),
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
    write_out(out, w.as_bytes())
}
