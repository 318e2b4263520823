#!/usr/bin/env python3
"""Write a scale benchmark image: FILES empty files spread over LAYERS uncompressed layers, as a
`docker save` archive (Docker 25+ shape).

    scripts/make-scale-image.py OUTPUT.tar FILES LAYERS

Files sit 100 to a directory (srv/d00000/f00 ...), numbered in order and dealt out to the layers
in equal runs, so a directory whose files span two runs is merged from two layers. Empty files keep the archive at about 512 bytes per entry, so the
figures measure metadata, not data. The same arguments give the same bytes.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imagetar  # noqa: E402

MTIME = 1704067200
PER_DIR = 100


def main():
    if len(sys.argv) != 4 or not sys.argv[2].isdigit() or not sys.argv[3].isdigit():
        sys.exit(f"usage: {sys.argv[0]} OUTPUT.tar FILES LAYERS")
    out, files, nlayers = sys.argv[1], int(sys.argv[2]), max(1, int(sys.argv[3]))
    with tempfile.TemporaryDirectory(prefix="scale-image.", dir=os.path.dirname(
            os.path.abspath(out))) as work:
        layers = [imagetar.Layer(work, f"l{i:03d}", MTIME + i, f"RUN step {i}")
                  for i in range(nlayers)]
        for i, layer in enumerate(layers):
            layer.dir("srv")
            last = None
            for k in range(i * files // nlayers, (i + 1) * files // nlayers):
                d = f"srv/d{k // PER_DIR:05d}"
                if d != last:
                    layer.dir(d)
                    last = d
                layer.file(f"{d}/f{k % PER_DIR:02d}", b"")
        history = [(layer.created_by, False) for layer in layers]
        config = {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"}
        imagetar.write_docker_archive(out, layers, config, history, "bench-scale:latest", MTIME)
    print(f"wrote {out}: {os.path.getsize(out) / 1e6:.0f} MB, {files} files, {nlayers} layers")


if __name__ == "__main__":
    main()
