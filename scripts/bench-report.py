#!/usr/bin/env python3
"""Format the results of scripts/bench.sh as a table.

    scripts/bench-report.py OUT_DIR RIMGFS_BINARY

OUT_DIR holds hyperfine's JSON exports (one per measurement) and `metrics`, lines of
"name value" written by bench.sh.
"""

import datetime
import json
import os
import platform
import subprocess
import sys

MB = 1e6
FILESYSTEMS = ["rimgfs", "overlayfs", "fuse-overlayfs"]


def load(out, name):
    with open(os.path.join(out, name + ".json")) as f:
        return {r["command"]: r for r in json.load(f)["results"]}


def seconds(r):
    return f"{r['mean']:.3f} s ± {r['stddev'] or 0:.3f}"


def host():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return (f"Linux {platform.release()}, {os.cpu_count()} CPUs ({cpu}), "
            f"{mem_kib / 2**20:.0f} GiB RAM")


def version(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()
    git = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                         text=True).stdout.strip()
    return f"{out} (git {git})" if git else out


def main():
    out, binary = sys.argv[1], sys.argv[2]
    m = {}
    with open(os.path.join(out, "metrics")) as f:
        for line in f:
            k, v = line.split()
            m[k] = float(v)
    runs = len(next(iter(load(out, "mount-warm").values()))["times"])
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"rimgfs benchmark: scripts/bench.sh (RUNS={runs}), {now}",
        f"host:  {host()}",
        f"build: {version(binary)}, release profile",
        f"image: target/bench/image.tar (scripts/make-bench-image.py), "
        f"{os.path.getsize(os.path.join(out, '..', 'image.tar')) / MB:.0f} MB, "
        f"3 uncompressed layers, {int(m['entries'])} entries in the merged tree",
        f"runs:  {runs} per cold measurement, each after dropping the page, dentry and inode "
        "caches (echo 3 > /proc/sys/vm/drop_caches;\n       rimgfs keeps its in-memory tree, as "
        "a mounted daemon does); 10 per warm one, after 2 warmup runs",
        "",
        f"Mount until ready to serve (mean ± stddev of {runs} runs)",
    ]
    mount_rows = [
        ("rimgfs: first mount, empty cache, cold page cache", "mount-first-cold"),
        ("rimgfs: first mount, empty cache, warm page cache", "mount-first-warm"),
        ("rimgfs: warm mount, cache filled", "mount-warm"),
        ("overlayfs: mount the extracted layers", "mount-overlayfs"),
        ("fuse-overlayfs: mount the extracted layers", "mount-fuse-overlayfs"),
    ]
    for label, name in mount_rows:
        (r,) = load(out, name).values()
        lines.append(f"  {label:<60} {seconds(r)}")
    lines.append(f"  {'overlayfs, fuse-overlayfs: extract the layers first (once)':<60} "
                 f"{m['extract_seconds']:.3f} s")

    big, small = m["big_bytes"], m["small_bytes"]
    rows = [
        ("walk: find -printf (lstat every entry)", "walk", None),
        (f"read 4 big files, {big / MB:.0f} MB", "read_big", big),
        (f"read {int(m['small_files'])} small files, {small / MB:.0f} MB", "read_small", small),
    ]
    head = f"  {'':<46}" + "".join(f"{fs:>22}" for fs in FILESYSTEMS)
    head += f"{'vs overlayfs':>14}{'vs fuse-ovl':>13}"
    lines += ["", "Mean time (and throughput) per run; ratio = rimgfs time / other's time "
              "(2.00 = rimgfs takes twice as long)", head]
    for label, name, nbytes in rows:
        for temp in ["cold", "warm"]:
            res = load(out, f"{name}-{temp}")
            cells = ""
            for fs in FILESYSTEMS:
                t = res[fs]["mean"]
                cell = f"{t:.3f} s" + (f" ({nbytes / MB / t:.0f} MB/s)" if nbytes else "")
                cells += f"{cell:>22}"
            r = res["rimgfs"]["mean"]
            cells += f"{r / res['overlayfs']['mean']:>14.2f}"
            cells += f"{r / res['fuse-overlayfs']['mean']:>13.2f}"
            lines.append(f"  {label + ', ' + temp:<46}{cells}")

    (first,) = load(out, "read_big-first").values()
    lines.append("  rimgfs's first read of the 4 big files, cold, which copies them into its cache "
                 f"for passthrough: {first['mean']:.3f} s ({big / MB / first['mean']:.0f} MB/s)")

    lines += ["", "rimgfs -o nopassthrough (no open round trips; big files through the daemon)"]
    for label, name, nbytes in rows[1:]:
        for temp in ["cold", "warm"]:
            (r,) = load(out, f"nopt-{name}-{temp}").values()
            t = r["mean"]
            ref = load(out, f"{name}-{temp}")["overlayfs"]["mean"]
            lines.append(f"  {label + ', ' + temp:<46}{t:>8.3f} s ({nbytes / MB / t:.0f} MB/s)"
                         f"   vs overlayfs {t / ref:.2f}")

    entries = m["entries"]
    lines += ["", "Daemon memory (/proc/PID/status) after mounting, and after all of the above",
              f"  {'':<16}{'VmRSS mounted':>15}{'VmRSS after':>13}{'VmHWM':>11}"
              f"{'bytes/entry':>13}"]
    for fs in ["rimgfs", "fuse-overlayfs"]:
        rss0 = m[f"{fs}_mounted_VmRSS"]
        rss1, hwm = m[f"{fs}_used_VmRSS"], m[f"{fs}_used_VmHWM"]
        lines.append(f"  {fs:<16}{rss0 / 1024:>11.1f} MiB{rss1 / 1024:>9.1f} MiB"
                     f"{hwm / 1024:>7.1f} MiB{rss1 * 1024 / entries:>13.0f}")
    lines.append("  (bytes/entry = VmRSS after / entries; kernel overlayfs has no daemon)")
    anon = (m["rimgfs_walked_RssAnon"] - m["rimgfs_tiny_RssAnon"]) * 1024
    lines.append(f"  rimgfs heap per entry, mounted and walked: (RssAnon "
                 f"{m['rimgfs_walked_RssAnon'] / 1024:.1f} MiB "
                 f"- {m['rimgfs_tiny_RssAnon'] / 1024:.1f} MiB serving a "
                 f"{int(m['tiny_entries'])}-entry image) / entries = "
                 f"{anon / (entries - m['tiny_entries']):.0f} bytes; merged tree data "
                 f"{m['tree_bytes'] / entries:.0f} bytes/entry")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
