#!/usr/bin/env python3
"""Write the benchmark image: about 224 MB (213 MiB) and 6,900 files in three uncompressed
layers, as a `docker save` archive (Docker 25+ shape).

    scripts/make-bench-image.py OUTPUT.tar

- layer 0: 100 packages of 50 small files each in nested directories under /usr/lib, with
  symlinks and hard links, plus two big files (50 and 40 MiB) under /data;
- layer 1: 28 more packages under /opt, 100 files of layer 0 rewritten, 100 deleted by
  whiteouts, one directory made opaque, and a 30 MiB file;
- layer 2: 10 application trees under /srv (500 files) and a 20 MiB file.

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
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(f"usage: {sys.argv[0]} OUTPUT.tar")
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

        layers = [base.layer, app.layer, srv.layer]
        history = [(layer.created_by, False) for layer in layers]
        config = {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}
        imagetar.write_docker_archive(sys.argv[1], layers, config, history, "bench:latest",
                                      MTIME)
    print(f"wrote {sys.argv[1]}: {os.path.getsize(sys.argv[1]) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
