#!/usr/bin/env python3
"""The measurements of scripts/bench.sh that are not a single command to time.

    bench-probe.py layers ARCHIVE               the layer members, bottom first, with media types
    bench-probe.py extract ARCHIVE DIR          extract the layers to DIR/0, DIR/1, ... in
                                                overlayfs's form; print the lowerdir value
    bench-probe.py randread FILE COUNT          COUNT 4 KiB preads at seeded random offsets,
                                                by fio where installed; print the seconds
                                                spent reading
    bench-probe.py files DIR N create|delete    create (or delete) N empty files in DIR
    bench-probe.py copyup-busy MNT BIG NAMES    copy MNT/BIG up (append a byte) in a child;
                                                meanwhile create files in MNT/busy and stat
                                                the files MNT/NAME listed (one a line) in
                                                NAMES; print "KEY SECONDS" lines
    bench-probe.py free-port                    a free TCP port on 127.0.0.1

ARCHIVE is a docker-archive or oci-archive (layers uncompressed, gzip or zstd). Python 3
standard library only.
"""

import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import time

BLOCK = 4096
SEED = 20240103


def layers(archive):
    """[(member name, media type)] of the archive's image, bottom layer first."""
    with tarfile.open(archive) as t:
        names = set(t.getnames())

        def blob(digest):
            return json.load(t.extractfile("blobs/sha256/" + digest.split(":", 1)[1]))

        if "index.json" in names:
            index = json.load(t.extractfile("index.json"))
            manifest = blob(index["manifests"][0]["digest"])
            while "manifests" in manifest:  # a nested index: its first image
                manifest = blob(manifest["manifests"][0]["digest"])
            return [("blobs/sha256/" + d["digest"].split(":", 1)[1], d["mediaType"])
                    for d in manifest["layers"]]
        manifest = json.load(t.extractfile("manifest.json"))[0]
        return [(name, "application/vnd.oci.image.layer.v1.tar") for name in manifest["Layers"]]


def extract(archive, root):
    """Extracts each layer with tar(1), then turns OCI whiteouts into overlayfs's: .wh.NAME
    becomes a 0/0 character device NAME, .wh..wh..opq the opaque xattr of its directory."""
    dirs = []
    with tarfile.open(archive) as t:
        for i, (member, media) in enumerate(layers(archive)):
            d = os.path.join(root, str(i))
            os.makedirs(d)
            flag = ["-z"] if media.endswith("gzip") else ["--zstd"] if media.endswith("zstd") \
                else []
            tar = subprocess.Popen(["tar", "-x", *flag, "-C", d, "--numeric-owner", "--xattrs",
                                    "--xattrs-include=*"], stdin=subprocess.PIPE)
            src = t.extractfile(member)
            while chunk := src.read(1 << 20):
                tar.stdin.write(chunk)
            tar.stdin.close()
            if tar.wait() != 0:
                sys.exit(f"tar failed on layer {i} of {archive}")
            for parent, subdirs, files in os.walk(d):
                for name in files + subdirs:
                    if not name.startswith(".wh."):
                        continue
                    path = os.path.join(parent, name)
                    os.remove(path)
                    if name == ".wh..wh..opq":
                        os.setxattr(parent, "trusted.overlay.opaque", b"y")
                    else:
                        os.mknod(os.path.join(parent, name[4:]), 0o600 | 0o020000, 0)
            dirs.append(d)
    os.sync()
    print(":".join(reversed(dirs)))


def randread(path, count):
    if shutil.which("fio"):
        run = subprocess.run(
            ["fio", "--name=rr", f"--filename={path}", "--readonly", "--rw=randread", "--bs=4k",
             "--ioengine=psync", f"--io_size={count * BLOCK}", "--randrepeat=1",
             "--invalidate=0", "--output-format=json"], capture_output=True, text=True, check=True)
        read = json.loads(run.stdout)["jobs"][0]["read"]
        print(f"{read['total_ios'] * read['lat_ns']['mean'] / 1e9:.6f}")
        return
    fd = os.open(path, os.O_RDONLY)
    blocks = os.fstat(fd).st_size // BLOCK
    rng = random.Random(SEED)
    start = time.monotonic()
    for _ in range(count):
        os.pread(fd, BLOCK, rng.randrange(blocks) * BLOCK)
    print(f"{time.monotonic() - start:.6f}")
    os.close(fd)


def files(d, n, what):
    names = [os.path.join(d, f"bench{i:05d}") for i in range(n)]
    if what == "create":
        os.makedirs(d, exist_ok=True)
        for name in names:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    else:
        for name in names:
            os.unlink(name)


def copyup_busy(mnt, big, names_file):
    """While a child appends one byte to BIG (a copy-up of all of it), creates a file in
    MNT/busy and stats one not yet looked-up file after another, timing each, until the child
    is done."""
    with open(names_file) as f:
        names = [os.path.join(mnt, n) for n in f.read().split("\n") if n]
    d = os.path.join(mnt, "busy")
    os.mkdir(d)
    big = os.path.join(mnt, big)
    start = time.monotonic()
    child = subprocess.Popen(["sh", "-c", 'printf x >> "$1"', "sh", big])
    creates, stats, i = [], [], 0
    while child.poll() is None and i < len(names):
        t0 = time.monotonic()
        os.close(os.open(os.path.join(d, f"busy{i:05d}"), os.O_WRONLY | os.O_CREAT, 0o644))
        t1 = time.monotonic()
        os.lstat(names[i])
        t2 = time.monotonic()
        creates.append(t1 - t0)
        stats.append(t2 - t1)
        i += 1
    child.wait()
    copyup = time.monotonic() - start
    if child.returncode != 0:
        sys.exit("the copy-up failed")

    print(f"copyup {copyup:.6f}")
    print(f"n {len(creates)}")
    for key, xs in [("create", creates), ("stat", stats)]:
        if xs:
            print(f"{key}-median {statistics.median(xs):.6f}")
            print(f"{key}-max {max(xs):.6f}")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        print(s.getsockname()[1])


def main():
    a = sys.argv[1:]
    cmds = {
        ("layers", 1): lambda: print("\n".join(f"{m} {t}" for m, t in layers(a[1]))),
        ("extract", 2): lambda: extract(a[1], a[2]),
        ("randread", 2): lambda: randread(a[1], int(a[2])),
        ("files", 3): lambda: files(a[1], int(a[2]), a[3]),
        ("copyup-busy", 3): lambda: copyup_busy(a[1], a[2], a[3]),
        ("free-port", 0): free_port,
    }
    cmd = cmds.get((a[0] if a else "", len(a) - 1))
    if cmd is None:
        sys.exit(__doc__)
    cmd()


if __name__ == "__main__":
    main()
