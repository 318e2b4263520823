#!/usr/bin/env python3
"""Write the image of the write benchmarks: one uncompressed layer holding a 1 GiB file, a
small file beside it and a few directories, as a `docker save` archive (Docker 25+ shape).

    scripts/make-write-bench-image.py OUTPUT.tar

- /data/big.bin: 1 GiB, for copy-up (append one byte) and metadata-only copy-up (chmod);
- /etc/small.conf: 4 KiB, the chmod reference;
- /var/spool/queue: a directory with a few files, where the create and delete run happens.

The big file repeats a 16 MiB pseudo-random block from a fixed seed, so every run writes the
same bytes and generation takes seconds.
"""

import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imagetar  # noqa: E402

SEED = 20240102
MTIME = 1704067200
MIB = 1 << 20
BIG_SIZE = 1024 * MIB
BLOCK = 16 * MIB


class Repeat:
    """A file-like object reading `size` bytes of `block` repeated."""

    def __init__(self, block, size):
        self.block, self.size, self.pos = memoryview(block), size, 0

    def read(self, n=-1):
        left = self.size - self.pos
        if n < 0 or n > left:
            n = left
        start = self.pos % len(self.block)
        n = min(n, len(self.block) - start)
        self.pos += n
        return bytes(self.block[start:start + n])


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(f"usage: {sys.argv[0]} OUTPUT.tar")
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="write-bench-image.", dir=os.path.dirname(
            os.path.abspath(sys.argv[1]))) as work:
        layer = imagetar.Layer(work, "base", MTIME, "ADD base.tar /")
        for d in ["data", "etc", "var", "var/spool", "var/spool/queue"]:
            layer.dir(d)
        layer.stream("data/big.bin", Repeat(rng.randbytes(BLOCK), BIG_SIZE), BIG_SIZE)
        layer.file("etc/small.conf", rng.randbytes(4096))
        for i in range(10):
            layer.file(f"var/spool/queue/job{i}", rng.randbytes(512))
        config = {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}
        imagetar.write_docker_archive(sys.argv[1], [layer], config, [(layer.created_by, False)],
                                      "bench-write:latest", MTIME)
    print(f"wrote {sys.argv[1]}: {os.path.getsize(sys.argv[1]) / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
