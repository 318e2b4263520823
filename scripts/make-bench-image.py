#!/usr/bin/env python3
"""Write the benchmark image: about 1.3 GB and 8,000 entries in six uncompressed layers, as a
`docker save` archive (Docker 25+ shape).

    scripts/make-bench-image.py OUTPUT.tar [--big-mib N]

- layer 0: 100 packages of 50 small files each in nested directories under /usr/lib, with
  symlinks and hard links, plus two big files (50 and 40 MiB) under /data;
- layer 1: 28 more packages under /opt, 100 files of layer 0 rewritten, 100 deleted by
  whiteouts, one directory made opaque, and a 30 MiB file;
- layer 2: 10 application trees under /srv (500 files) and a 20 MiB file;
- layer 3: a 1,000-file tree under /var/lib/bulk (20 directories of 50 files), for `rm -rf`;
- layer 4: /data/big.bin, 1 GiB (--big-mib N: N MiB), a 16 MiB pseudo-random block repeated,
  and /etc/small.conf (4 KiB);
- layer 5: deletions: 50 files of layer 0 and one whole package directory.

Small files are 0.5 KiB to 512 KiB, most under 16 KiB, as in a distribution's /usr. Contents
are pseudo-random from a fixed seed, so every run writes the same bytes.
"""

import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imagetar  # noqa: E402

SEED = 20240101
MTIME = 1704067200
MB = 1 << 20  # file sizes below are in MiB
FILES_PER_PACKAGE = 50
# Directories inside each package; files are dealt out over them round-robin.
PACKAGE_DIRS = ["", "bin", "lib/x86_64", "lib/x86_64/plugins", "share/doc",
                "share/locale/de/LC_MESSAGES", "share/man/man1"]
# (share of files, smallest, largest size in bytes) of the small-file size mix.
SIZE_MIX = [(0.60, 512, 4096), (0.30, 4096, 16384), (0.09, 16384, 65536), (0.01, 65536, 524288)]


class Writer:
    """A layer plus the directories it already holds, so parents are written once, first."""

    def __init__(self, layer, rng):
        self.layer = layer
        self.rng = rng
        self.dirs = set()

    def parents(self, path):
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self.layer.dir(d)

    def small_file(self, path):
        r = self.rng.random()
        for share, lo, hi in SIZE_MIX:
            if r < share:
                break
            r -= share
        self.parents(path)
        self.layer.file(path, self.rng.randbytes(self.rng.randint(lo, hi)))

    def big_file(self, path, size):
        self.parents(path)
        self.layer.file(path, self.rng.randbytes(size))

    def symlink(self, path, target):
        self.parents(path)
        self.layer.symlink(path, target)

    def whiteout(self, path):
        self.parents(path)
        self.layer.whiteout(path)


def package_files(root, count=FILES_PER_PACKAGE):
    return [f"{root}/{PACKAGE_DIRS[i % len(PACKAGE_DIRS)]}/file{i:03d}.dat".replace("//", "/")
            for i in range(count)]


def main():
    args = sys.argv[1:]
    big_mib = 1024
    if len(args) == 3 and args[1] == "--big-mib" and args[2].isdigit():
        big_mib = int(args.pop(2))
        args.pop(1)
    if len(args) != 1 or args[0].startswith("-"):
        sys.exit(f"usage: {sys.argv[0]} OUTPUT.tar [--big-mib N]")
    sys.argv[1:] = args
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="bench-image.", dir=os.path.dirname(
            os.path.abspath(sys.argv[1]))) as work:
        base = Writer(imagetar.Layer(work, "base", MTIME, "ADD base.tar /"), rng)
        for p in range(100):
            root = f"usr/lib/pkg{p:03d}"
            for path in package_files(root):
                base.small_file(path)
            base.symlink(f"{root}/lib/libpkg.so", "x86_64/file002.dat")
            if p % 5 == 0:
                base.layer.hardlink(f"{root}/bin/alias", f"{root}/bin/file001.dat")
        base.big_file("data/model-a.bin", 50 * MB)
        base.big_file("data/model-b.bin", 40 * MB)

        app = Writer(imagetar.Layer(work, "app", MTIME + 3600, "RUN install-apps"), rng)
        for p in range(28):
            for path in package_files(f"opt/pkg{p:03d}"):
                app.small_file(path)
        for p in range(10):
            for path in package_files(f"usr/lib/pkg{p:03d}")[:10]:
                app.small_file(path)  # rewritten
            for path in package_files(f"usr/lib/pkg{10 + p:03d}")[10:20]:
                app.whiteout(path)
        app.parents("usr/lib/pkg050/share/doc/x")
        app.layer.opaque("usr/lib/pkg050/share/doc")
        for i in range(5):
            app.small_file(f"usr/lib/pkg050/share/doc/new{i}.txt")
        app.big_file("data/model-c.bin", 30 * MB)

        srv = Writer(imagetar.Layer(work, "srv", MTIME + 7200, "COPY srv/ /srv/"), rng)
        for a in range(10):
            for path in package_files(f"srv/app{a}"):
                srv.small_file(path)
        srv.big_file("data/model-d.bin", 20 * MB)

        bulk = Writer(imagetar.Layer(work, "bulk", MTIME + 10800, "RUN fill-bulk"), rng)
        for d in range(20):
            for f in range(50):
                bulk.small_file(f"var/lib/bulk/d{d:02d}/f{f:02d}.dat")

        big = Writer(imagetar.Layer(work, "big", MTIME + 14400, "COPY big.bin /data/"), rng)
        big.parents("data/big.bin")
        size = big_mib * MB
        big.layer.stream("data/big.bin", imagetar.Repeat(rng.randbytes(16 * MB), size), size)
        big.parents("etc/small.conf")
        big.layer.file("etc/small.conf", rng.randbytes(4096))

        gone = Writer(imagetar.Layer(work, "gone", MTIME + 18000, "RUN cleanup"), rng)
        for p in range(20, 25):
            for path in package_files(f"usr/lib/pkg{p:03d}")[:10]:
                gone.whiteout(path)
        gone.whiteout("usr/lib/pkg099")

        layers = [base.layer, app.layer, srv.layer, bulk.layer, big.layer, gone.layer]
        history = [(layer.created_by, False) for layer in layers]
        config = {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}
        imagetar.write_docker_archive(sys.argv[1], layers, config, history, "bench:latest",
                                      MTIME)
    print(f"wrote {sys.argv[1]}: {os.path.getsize(sys.argv[1]) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
