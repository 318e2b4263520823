//! `rimgfs cache`: what the cache holds, trimming it, and removing one image's layers. Each
//! action says what it freed. Dependencies: cli, layer::store::gc, image, cache, error.

use std::io::Write;
use std::path::PathBuf;
use std::time::SystemTime;

use crate::cache::Cache;
use crate::cli::{CacheAction, CacheCommand, parse_size};
use crate::error::{Error, Result};
use crate::image::{self, Blob};
use crate::layer::store::gc::{self, Freed};

/// Runs a `rimgfs cache` action, writing its report to `out`.
pub fn run(a: CacheCommand, out: &mut dyn Write) -> Result<()> {
    let root = |dir: Option<PathBuf>| dir.unwrap_or_else(Cache::default_root);
    let text = match a.action {
        CacheAction::Ls { cache_dir } => list(&root(cache_dir)),
        CacheAction::Gc {
            cache_dir,
            cache_max,
        } => {
            let r = root(cache_dir);
            let mut freed = gc::clean(&r);
            if let Some(max) = cache_max.as_deref().map(parse_size).transpose()? {
                let t = gc::trim(&r, max);
                freed.entries += t.entries;
                freed.bytes += t.bytes;
            }
            format!(
                "{}; the cache now takes {}\n",
                freed_text(freed),
                human(gc::usage(&r))
            )
        }
        CacheAction::Prune { image, select } => {
            let cfg = select.to_config(&image)?;
            let img = image::open(&cfg.spec, &cfg.open, &cfg.cache)?;
            let mut blobs = Vec::new();
            for l in &img.layers {
                blobs.extend(l.blob_digest.clone());
                if let Blob::Remote(r) = &l.blob {
                    blobs.push(r.digest.clone());
                }
            }
            let diff_ids: Vec<_> = img.layers.iter().map(|l| l.diff_id.clone()).collect();
            let p = gc::prune(cfg.cache.root(), &blobs, &diff_ids);
            let mut s = format!(
                "{} of {} ({} layers)\n",
                freed_text(p.freed),
                img.origin.display(),
                img.layers.len()
            );
            for k in &p.kept {
                s.push_str(&format!("kept {k}: a live mount uses it\n"));
            }
            s
        }
    };
    out.write_all(text.as_bytes()).map_err(|e| Error::Io {
        op: "write",
        path: "stdout".into(),
        source: e,
    })
}

fn freed_text(f: Freed) -> String {
    format!("freed {} in {} entries", human(f.bytes), f.entries)
}

/// The listing of `rimgfs cache ls`.
fn list(root: &std::path::Path) -> String {
    let mut entries = gc::scan(root);
    entries.sort_by(|a, b| (a.kind, b.last_used).cmp(&(b.kind, a.last_used)));
    let now = SystemTime::now();
    let mut s = format!(
        "{:<12} {:>10} {:>9} {:<6} NAME\n",
        "KIND", "SIZE", "USED", "LIVE"
    );
    let mut totals: Vec<(gc::Kind, u64, usize)> = Vec::new();
    for e in &entries {
        let age = now.duration_since(e.last_used).map_or(0, |d| d.as_secs());
        s.push_str(&format!(
            "{:<12} {:>10} {:>9} {:<6} {}\n",
            e.kind.name(),
            human(e.bytes),
            ago(age),
            if e.in_use { "yes" } else { "" },
            e.name
        ));
        match totals.iter_mut().find(|t| t.0 == e.kind) {
            Some(t) => {
                t.1 += e.bytes;
                t.2 += 1;
            }
            None => totals.push((e.kind, e.bytes, 1)),
        }
    }
    let parts: Vec<String> = totals
        .iter()
        .map(|(k, b, n)| format!("{} {} ({n})", k.name(), human(*b)))
        .collect();
    s.push_str(&format!(
        "total {} in {}: {}\n",
        human(gc::usage(root)),
        root.display(),
        if parts.is_empty() {
            "empty".to_string()
        } else {
            parts.join(", ")
        }
    ));
    s
}

fn ago(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// A size in the largest binary unit that keeps it at least 1.
pub fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1023), "1023 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
