#!/usr/bin/env python3
"""Format the results of scripts/bench.sh as tables, and write them as JSON.

    scripts/bench-report.py OUT_DIR RESULTS.json

OUT_DIR holds hyperfine's JSON exports (NAME.json, or FIGURE@FS.json for a figure measured one
filesystem at a time; each command is named by its filesystem), `metrics` (lines "FIGURE FS
VALUE", one per run; FS "-" for a property of the image) and `meta` (lines "KEY<TAB>VALUE").
Every figure is the median of its runs. Ratios are to kernel overlayfs (plain): for times lower
is better, for rates (MB/s) higher is better. rimgfs mounted writable and read-only get tables
of their own.
"""

import json
import os
import re
import statistics
import sys

MB = 1e6
MIB = 1 << 20
REFS = ["overlayfs", "overlayfs-meta", "fuse-overlayfs"]
COL = 19


def load(out):
    """{figure: {fs: [values]}} from the hyperfine exports and the metrics file."""
    data = {}
    for name in sorted(os.listdir(out)):
        if not name.endswith(".json") or name == "busy.json":
            continue
        with open(os.path.join(out, name)) as f:
            results = json.load(f)["results"]
        figure = name[:-5].split("@")[0]
        for r in results:
            data.setdefault(figure, {})[r["command"]] = r["times"]
    path = os.path.join(out, "metrics")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                figure, fs, value = line.split()
                if value != "None":
                    data.setdefault(figure, {}).setdefault(fs, []).append(float(value))
    return data


def main():
    out, json_path = sys.argv[1], sys.argv[2]
    data = load(out)
    meta = {}
    with open(os.path.join(out, "meta")) as f:
        for line in f:
            k, _, v = line.rstrip("\n").partition("\t")
            meta[k] = v
    med = {fig: {fs: statistics.median(v) for fs, v in per.items() if v}
           for fig, per in data.items()}
    labels = [k[4:] for k in meta if k.startswith("bin_")]

    def get(fig, fs):
        return med.get(fig, {}).get(fs)

    def const(name):
        return get(name, "-")

    # Derived: the kernel's "image file → mounted" is extraction + its mount.
    for kind in ["plain", "gzip"]:
        for fs in REFS:
            e, m = get(f"extract-{kind}", "overlayfs"), get("mount-warm", fs)
            if e is not None and m is not None:
                med.setdefault(f"image-mounted-{kind}", {})[fs] = e + m
        for fs, v in med.get("mount-first", {}).items():
            key = "image-mounted-gzip" if fs.endswith("-gz") else "image-mounted-plain"
            med.setdefault(key, {})[fs.removesuffix("-gz")] = v
    for fs, v in med.get("lslr-warm", {}).items():
        if fs.endswith("-gz") or fs in REFS:
            med.setdefault("lslr-warm-gz", {})[fs.removesuffix("-gz")] = v

    lines = [
        f"rimgfs benchmark: scripts/bench.sh, {meta.get('started')}"
        f"{' (QUICK=1)' if meta.get('quick') == '1' else ''}",
        f"sections:{meta.get('sections')}; RUNS={meta.get('runs')} (every figure the median of "
        "its runs; cold = after echo 3 > /proc/sys/vm/drop_caches)",
        f"host: {host()}",
        f"load at start: {meta.get('load_start', '?').strip()}",
        f"load at end:   {meta.get('load_end', '?').strip()}",
        f"image: {meta.get('image', '?')}; git {meta.get('git', '?')}",
    ]
    lines += [f"binary {k[4:]}: {v}" for k, v in meta.items() if k.startswith("bin_")]
    if "randread" in meta:
        lines.append(f"random reads: {meta['randread']}")
    entries = const("entries")
    big, small = const("big_bytes"), const("small_bytes")
    tables = []

    def fmt_time(v):
        if v is None:
            return "-"
        if v < 0.01:
            return f"{v * 1e3:.2f} ms"
        return f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"

    def cell(kind, v, ref, nbytes=None):
        """The value, then its ratio to overlayfs's."""
        if v is None:
            return "-"
        if kind == "bytes":
            return f"{v / MIB:.1f} MiB"
        if kind == "rate":
            text = f"{nbytes / MB / v:.0f} MB/s"
            ratio = ref / v if ref else None
        else:
            text = fmt_time(v)
            ratio = v / ref if ref else None
        return text + (f" {ratio:.2f}x" if ratio is not None else "")

    def table(title, rows, cols, ref="overlayfs", note=None):
        head = f"  {'':<44}" + "".join(f"{c:>{COL}}" for c in cols)
        body = []
        for label, fig, kind, nbytes in rows:
            if fig not in med:
                continue
            r = get(fig, ref)
            cells = []
            for c in cols:
                v = get(fig, c)
                if c == ref:
                    cells.append(cell(kind, v, None, nbytes))
                else:
                    cells.append(cell(kind, v, r, nbytes))
            if all(x == "-" for x in cells):
                continue
            body.append(f"  {label:<44}" + "".join(f"{x:>{COL}}" for x in cells))
            tables.append({"table": title, "figure": fig, "label": label, "kind": kind,
                           "values": {c: get(fig, c) for c in cols},
                           **({"bytes": nbytes} if nbytes else {})})
        if body:
            lines.extend(["", title, head, *body])
            if note:
                lines.append(note)

    gb = f"{big / 2**30:.0f} GiB" if big and big >= 2**30 else f"{(big or 0) / MIB:.0f} MiB"
    nsmall = int(const("small_files") or 0)
    read_rows = [
        ("image file → mounted: docker-archive", "image-mounted-plain", "time", None),
        ("image file → mounted: gzip oci-archive", "image-mounted-gzip", "time", None),
        ("warm re-mount", "mount-warm", "time", None),
        ("find walk, warm", "walk-warm", "time", None),
        ("find walk, cold", "walk-cold", "time", None),
        ("ls -lR, warm", "lslr-warm", "time", None),
        ("ls -lR, warm, gzip oci-archive", "lslr-warm-gz", "time", None),
        (f"{gb} file sequential read, warm", "seq-warm", "rate", big),
        (f"{gb} file sequential read, cold", "seq-cold", "rate", big),
        ("4 KiB random reads, warm", "rand-warm", "rate", const("rand_bytes")),
        ("4 KiB random reads, cold", "rand-cold", "rate", const("rand_bytes")),
        (f"read {nsmall} small files once, cold", "small-cold", "rate", small),
        (f"read {nsmall} small files once, warm", "small-warm", "rate", small),
        *[(f"small files, {w} parallel reader{'s' if w > 1 else ''}, {t}", f"par{w}-{t}",
           "rate", small) for t in ["cold", "warm"] for w in [1, 2, 4]],
        (f"head -c 4096 of the {gb} file, cold, 1st open", "head-cold", "time", None),
        ("  cache growth by that head", "head-cache-growth", "bytes", None),
        ("daemon RSS, mounted", "rss-mounted", "bytes", None),
        ("daemon RSS, after the reads", "rss-read", "bytes", None),
    ]
    note = (f"  (value, then ratio to overlayfs; kernel 'image file → mounted' = layer "
            f"extraction + mount; {int(entries or 0)} entries)")
    for mode, suffix in [("WRITABLE (--upper)", "rw"), ("READ-ONLY (--read-only)", "ro")]:
        cols = REFS + [f"{lb}-{suffix}" for lb in labels]
        table(f"Reads, rimgfs mounted {mode}: median; overlayfs-meta = metacopy=on,"
              "redirect_dir=on", read_rows, cols, note=note)

    wseq = const("wseq_bytes")
    write_rows = [
        (f"copy-up of the {gb} file (append 1 byte)", "w-copyup", "time", None),
        (f"chmod of the {gb} file", "w-chmod", "time", None),
        ("rm -rf of a 1,000-file lower tree", "w-rmrf", "time", None),
        ("create files in a new directory", "w-create", "time", None),
        ("delete them", "w-delete", "time", None),
        (f"sequential write + fsync, {(wseq or 0) / MIB:.0f} MiB", "w-seq-fsync", "rate", wseq),
        (f"during a {gb} copy-up: create, max", "busy-create-max", "time", None),
        ("  create, median", "busy-create-median", "time", None),
        ("  stat of an unlooked-up file, max", "busy-stat-max", "time", None),
        ("  stat, median", "busy-stat-median", "time", None),
        ("  the copy-up itself", "busy-copyup", "time", None),
    ]
    table("Writes, rimgfs mounted WRITABLE (--upper), each run on a fresh upper: median",
          write_rows, REFS + [f"{lb}-rw" for lb in labels])
    for lb in labels:
        c, st = get("busy-create-max", f"{lb}-rw"), get("busy-stat-max", f"{lb}-rw")
        if c is not None and st is not None:
            ok = "met" if c <= 0.010 and st <= 0.005 else "NOT met"
            lines.append(f"  target {lb}-rw: during the copy-up a create within 10 ms and a stat "
                         f"within 5 ms: {c * 1e3:.1f} / {st * 1e3:.1f} ms, {ok}")

    # Scale: one table per image; bytes per entry from RSS after the walk.
    scale_tags = sorted({f.split("-")[1] for f in med if f.startswith("scale-")},
                        key=lambda t: (len(t), t))
    for tag in scale_tags:
        n = const(f"scale-{tag}-entries")
        files, nl = re.fullmatch(r"(\d+)f(\d+)l", tag).groups()
        cols = ["overlayfs"] + [f"{lb}-{k}" for lb in labels for k in ["rw", "ro"]]
        ext = get(f"scale-{tag}-extract", "overlayfs")
        first = med.get(f"scale-{tag}-first", {})
        if ext is not None and "overlayfs" in first:
            med.setdefault(f"scale-{tag}-image-mounted", {})["overlayfs"] = ext + first["overlayfs"]
            for c in cols[1:]:
                if c in first:
                    med[f"scale-{tag}-image-mounted"][c] = first[c]
        rows = [
            ("image file → mounted (kernel: extract+mount)", f"scale-{tag}-image-mounted",
             "time", None),
            ("warm mount (kernel: mount)", f"scale-{tag}-warm", "time", None),
            ("first walk after mounting (find)", f"scale-{tag}-walk", "time", None),
            ("daemon RSS after the first mount", f"scale-{tag}-rss-mounted", "bytes", None),
            ("daemon RSS after a warm mount", f"scale-{tag}-rss-warm", "bytes", None),
            ("daemon RSS after the walk", f"scale-{tag}-rss-walked", "bytes", None),
        ]
        if "overlayfs" in first:
            med.setdefault(f"scale-{tag}-warm", {})["overlayfs"] = first["overlayfs"]
        table(f"Scale: {int(files):,} files in {nl} layers ({int(n or 0):,} entries), page cache "
              "warm: median", rows, cols)
        per = []
        for c in cols[1:]:
            v = get(f"scale-{tag}-rss-walked", c)
            if v is not None and n:
                per.append(f"{c} {v / n:.0f}")
        if per:
            lines.append("  bytes per entry after the walk (RSS / entries): " + ", ".join(per))

    # Registry: against skopeo copy and podman pull + image mount.
    for kind in ["gzip", "zstd-chunked"]:
        fig = f"reg-{kind}-first"
        if fig not in med:
            continue
        total = const(f"reg-{kind}-image-bytes")
        cols = [c for c in med[fig] if c not in ("skopeo", "podman")] + \
            [c for c in ("skopeo", "podman") if c in med[fig]]
        head = f"  {'':<44}" + "".join(f"{c:>{COL}}" for c in cols)
        body = []

        def row(label, f, kind_, ref=None):
            cells = []
            for c in cols:
                v = get(f, c)
                if v is None:
                    cells.append("-")
                elif kind_ == "time":
                    r = get(f, ref) if ref else None
                    cells.append(fmt_time(v) + (f" {v / r:.2f}x" if r and c != ref else ""))
                elif kind_ == "bytes":
                    share = f" {v / total:.1%}" if total else ""
                    cells.append(f"{v / MB:.1f} MB{share}")
                else:
                    cells.append(f"{v:.0f}")
            body.append(f"  {label:<44}" + "".join(f"{x:>{COL}}" for x in cells))
            tables.append({"table": f"registry {kind}", "figure": f, "label": label,
                           "values": {c: get(f, c) for c in cols}})

        row("first mount + read 1 file (x skopeo)", fig, "time", "skopeo")
        row("  x podman pull + image mount", fig, "time", "podman")
        row("  requests", f"{fig}-requests", "count")
        row("  blob bytes fetched (share of the image)", f"{fig}-bytes", "bytes")
        row("warm remount + read 1 file", f"reg-{kind}-warm", "time")
        row("  requests", f"reg-{kind}-warm-requests", "count")
        row("  blob bytes fetched", f"reg-{kind}-warm-bytes", "bytes")
        lines += ["", f"Registry ({kind} layers, {(total or 0) / MB:.0f} MB of blobs, "
                  "docker-registry on 127.0.0.1, rimgfs with --no-prefetch): median", head, *body]
    if "zstd_chunked" in meta:
        lines.append(f"  zstd:chunked {meta['zstd_chunked']}")
    if "bench_seconds" in meta:
        lines += ["", f"total benchmark time: {float(meta['bench_seconds']) / 60:.1f} min"]
    print("\n".join(lines))
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "medians": med, "rows": tables, "raw": data}, f, indent=1)


def host():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return f"Linux {os.uname().release}, {os.cpu_count()} CPUs ({cpu}), {mem_kib / 2**20:.0f} GiB RAM"


if __name__ == "__main__":
    main()
