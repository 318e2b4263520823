#!/usr/bin/env python3
"""Format the results of scripts/bench.sh as a table.

    scripts/bench-report.py OUT_DIR RIMGFS_BINARY

OUT_DIR holds hyperfine's JSON exports (one per measurement) and `metrics`, lines of
"name value" written by bench.sh.

The "Writes" section checks rimgfs against these targets: copy-up within 1.2x of kernel
overlayfs; chmod of a big lower file in constant time (metadata-only copy-up); sequential writes
at 80% or more of kernel overlayfs's throughput; creating and deleting 10,000 files at least as
fast as fuse-overlayfs.
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
    lines += writes(out, m)
    if "bench_seconds" in m:
        lines += ["", f"total benchmark time: {m['bench_seconds'] / 60:.1f} min"]
    print("\n".join(lines))


def writes(out, m):
    """The "Writes" section: medians, each run on a fresh upper directory."""
    big, seq, files, limit = m["wbig_bytes"], m["wseq_bytes"], int(m["wfiles"]), m["wlimit"]
    names = ["w-copyup", "w-chmod-big", "w-chmod-small", "w-seq", "w-seq-fsync",
             "w-create-delete", "w-create-delete-lower"]
    res = {name: load(out, name) for name in names}

    def timed_out(r):
        return any(c != 0 for c in r.get("exit_codes", []))

    def t(name, fs):
        return res[name][fs]["median"]

    runs = len(res["w-copyup"]["rimgfs"]["times"])
    rows = [
        (f"copy-up: append 1 byte to a {big / 2**30:.0f} GiB lower file", "w-copyup", big),
        (f"chmod of the {big / 2**30:.0f} GiB lower file", "w-chmod-big", None),
        ("chmod of a 4 KiB lower file", "w-chmod-small", None),
        (f"write a new {seq / 2**20:.0f} MiB file (dd bs=1M)", "w-seq", seq),
        (f"write a new {seq / 2**20:.0f} MiB file, conv=fsync", "w-seq-fsync", seq),
        (f"create {files:,} files, delete them: new dir", "w-create-delete", None),
        (f"create {files:,} files, delete them: lower dir", "w-create-delete-lower", None),
    ]
    lines = ["", f"Writes: median of {runs} runs (10 for chmod, 3 in a lower directory), each on "
             "a fresh upper directory (unmount, wipe upper and work, sync, mount)",
             "  overlayfs: kernel overlayfs with redirect_dir=on,metacopy=on; all three with an "
             "upper and a work directory on the same ext4 as the layers",
             f"  {'':<46}" + "".join(f"{fs:>22}" for fs in FILESYSTEMS)
             + f"{'vs overlayfs':>14}{'vs fuse-ovl':>13}"]
    for label, name, nbytes in rows:
        cells = ""
        for fs in FILESYSTEMS:
            v = t(name, fs)
            if timed_out(res[name][fs]):
                cell = f"> {limit:.0f} s (cut)"
            else:
                cell = f"{v * 1e3:.1f} ms" if v < 0.1 else f"{v:.3f} s"
                cell += f" ({nbytes / MB / v:.0f} MB/s)" if nbytes else ""
            cells += f"{cell:>22}"
        v = t(name, "rimgfs")
        cells += f"{v / t(name, 'overlayfs'):>14.2f}{v / t(name, 'fuse-overlayfs'):>13.2f}"
        lines.append(f"  {label:<46}{cells}")
    if "overlayfs-volatile" in res["w-copyup"]:
        vol = t("w-copyup", "overlayfs-volatile")
        lines.append(f"  overlayfs and rimgfs fsync each copied-up file, fuse-overlayfs does not; "
                     f"overlayfs -o volatile does not either:\n    copy-up {vol:.3f} s "
                     f"({big / MB / vol:.0f} MB/s), rimgfs / overlayfs-volatile = "
                     f"{t('w-copyup', 'rimgfs') / vol:.2f}")
    if "busy_create_ms_rimgfs" in m:
        def busy(fs):
            note = "" if m[f"busy_during_{fs}"] else " (copy-up over first)"
            return (f"create {m[f'busy_create_ms_{fs}']:.1f} ms, stat "
                    f"{m[f'busy_stat_ms_{fs}']:.1f} ms{note}")
        lines.append("  during the copy-up, slowest create of a new file / stat of an unlooked-up "
                     "lower file elsewhere:")
        for fs in FILESYSTEMS:
            if f"busy_create_ms_{fs}" in m:
                lines.append(f"    {fs:<16}{busy(fs)}")
    if any(timed_out(r) for r in res["w-create-delete-lower"].values()):
        lines.append(f"  (cut): runs were stopped after {limit:.0f} s (timeout(1)); the ratios "
                     "are lower bounds")

    def ratio(name, other):
        return t(name, "rimgfs") / t(name, other)

    def verdict(ok):
        return "met" if ok else "NOT met"

    copyup = ratio("w-copyup", "overlayfs")
    busy_ok = (m.get("busy_create_ms_rimgfs", 1e9) <= 10
               and m.get("busy_stat_ms_rimgfs", 1e9) <= 5)
    chmod = t("w-chmod-big", "rimgfs") / t("w-chmod-small", "rimgfs")
    share, share_sync = 1 / ratio("w-seq", "overlayfs"), 1 / ratio("w-seq-fsync", "overlayfs")
    create = ratio("w-create-delete", "fuse-overlayfs")
    create_lower = ratio("w-create-delete-lower", "fuse-overlayfs")
    lines += [
        "  targets:",
        f"    copy-up within 1.2x of overlayfs's time: {copyup:.2f}x, {verdict(copyup <= 1.2)}",
        f"    chmod in constant time: the 1 GiB file's takes {chmod:.2f}x the 4 KiB file's "
        f"(1.5x at most), {verdict(chmod <= 1.5)}",
        f"    sequential writes at 80% or more of overlayfs's throughput: {share:.0%}, "
        f"{verdict(share >= 0.8)}; with fsync {share_sync:.0%}, {verdict(share_sync >= 0.8)}",
        f"    during a copy-up, creating a file elsewhere within 10 ms and a stat within 5 ms: "
        f"{verdict(busy_ok)}",
        f"    create and delete {files:,} files at least as fast as fuse-overlayfs: new dir "
        f"{create:.2f}x its time, {verdict(create <= 1.0)}; lower dir "
        f"{'over ' if timed_out(res['w-create-delete-lower']['rimgfs']) else ''}"
        f"{create_lower:.2f}x, {verdict(create_lower <= 1.0)}",
    ]
    return lines


if __name__ == "__main__":
    main()
