#!/usr/bin/env python3
"""Write a small three-layer image as a `docker save` archive (Docker 25+ shape).

    scripts/make-sample-image.py OUTPUT.tar

Layer 0 (uncompressed) is a tiny base system; layer 1 (gzip) installs an application, deletes
/etc/motd with a whiteout and empties /var/cache/app with an opaque marker; layer 2
(uncompressed) replaces /etc/hostname and the application's config. Along the way: a hard link
(/usr/bin/perl), symlinks (/bin/sh, /usr/local/bin/app), a setuid file (/usr/bin/passwd), a
sticky /tmp, a file owned by a non-root user and an extended attribute carried by a PAX
SCHILY.xattr record (/usr/share/doc/sample/README, user.mime_type). The result is the same
bytes on every run.
"""

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import imagetar  # noqa: E402

# 2024-01-01T00:00:00Z plus one hour per layer, so `ls -l` tells the layers apart.
BASE_TIME = 1704067200
HOUR = 3600
APP_UID = 1000

# A few bytes that `file` would call an ELF executable; enough to look like a binary.
FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + b"\x02\x00\x3e\x00" + bytes(44)


def base_layer(work):
    layer = imagetar.Layer(work, "base", BASE_TIME, "/bin/sh -c #(nop) ADD file:base.tar.xz in / ")
    for d in ["bin", "etc", "home", "usr", "usr/bin", "usr/lib", "usr/share", "usr/share/doc",
              "usr/share/doc/sample", "var", "var/cache", "var/cache/app", "var/log"]:
        layer.dir(d)
    layer.dir("root", mode=0o700)
    layer.dir("tmp", mode=0o1777)
    layer.dir("home/app", mode=0o750, uid=APP_UID, gid=APP_UID)
    layer.file("etc/hostname", b"localhost\n")
    layer.file("etc/hosts", b"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    layer.file("etc/os-release", b'PRETTY_NAME="Sample Linux 1.0"\nNAME="Sample Linux"\n'
               b'VERSION_ID="1.0"\nID=sample\n')
    layer.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
               b"daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n"
               b"app:x:1000:1000:app:/home/app:/bin/sh\n")
    layer.file("etc/group", b"root:x:0:\ndaemon:x:1:\nshadow:x:42:\napp:x:1000:\n")
    layer.file("etc/shadow", b"root:*:19723:0:99999:7:::\napp:!:19723:0:99999:7:::\n",
               mode=0o640, gid=42)
    layer.file("etc/motd", b"Welcome to Sample Linux. Layer 1 deletes this file.\n")
    layer.file("bin/busybox", FAKE_ELF, mode=0o755)
    layer.symlink("bin/sh", "busybox")
    layer.symlink("bin/ls", "busybox")
    layer.file("usr/bin/passwd", FAKE_ELF, mode=0o4755)
    # Debian ships perl as two names of one inode; so does this image.
    layer.file("usr/bin/perl5.36.0", FAKE_ELF, mode=0o755)
    layer.hardlink("usr/bin/perl", "usr/bin/perl5.36.0")
    layer.file("usr/share/doc/sample/README", b"Sample Linux: a demo image for rimgfs.\n",
               xattrs={"user.mime_type": "text/plain"})
    layer.file("var/cache/app/stale-1.cache", b"stale\n")
    layer.file("var/cache/app/stale-2.cache", b"stale\n")
    layer.file("var/log/dpkg.log", b"2024-01-01 00:00:00 startup packages configure\n")
    return layer


def app_layer(work):
    layer = imagetar.Layer(work, "app", BASE_TIME + HOUR,
                           "RUN /bin/sh -c install-app && rm /etc/motd && rm -rf /var/cache/app "
                           "&& mkdir /var/cache/app && app --build-index # buildkit",
                           compress=True)
    # Parents of changed paths are repeated, as `docker build` writes them.
    layer.dir("etc")
    layer.whiteout("etc/motd")
    layer.dir("etc/app")
    layer.file("etc/app/app.conf", b"listen = 0.0.0.0:8080\nworkers = 2\n")
    for d in ["opt", "opt/app", "opt/app/bin", "usr", "usr/local", "usr/local/bin"]:
        layer.dir(d)
    layer.file("opt/app/bin/app", FAKE_ELF + b"app 1.0\n", mode=0o755)
    layer.symlink("usr/local/bin/app", "/opt/app/bin/app")
    layer.dir("var")
    layer.dir("var/cache")
    # `rm -rf dir && mkdir dir` in one step shows up as an opaque directory.
    layer.dir("var/cache/app")
    layer.opaque("var/cache/app")
    layer.file("var/cache/app/index.db", b"fresh index\n")
    return layer


def config_layer(work):
    layer = imagetar.Layer(work, "config", BASE_TIME + 2 * HOUR,
                           "COPY rootfs/ / # buildkit")
    layer.dir("etc")
    layer.file("etc/hostname", b"sample-app\n")
    layer.dir("etc/app")
    layer.file("etc/app/app.conf", b"listen = 0.0.0.0:8080\nworkers = 4\nlog = /var/log/app\n")
    layer.dir("home")
    layer.dir("home/app", mode=0o750, uid=APP_UID, gid=APP_UID)
    layer.file("home/app/.profile", b"export PATH=/opt/app/bin:$PATH\n", uid=APP_UID, gid=APP_UID)
    return layer


def main():
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(f"usage: {sys.argv[0]} OUTPUT.tar")
    out = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="sample-image.") as work:
        layers = [base_layer(work), app_layer(work), config_layer(work)]
        history = [
            (layers[0].created_by, False),
            ('/bin/sh -c #(nop)  CMD ["sh"]', True),
            ("ENV APP_HOME=/opt/app", True),
            (layers[1].created_by, False),
            (layers[2].created_by, False),
            ("WORKDIR /opt/app", True),
            ('LABEL org.opencontainers.image.title=rimgfs-sample', True),
            ('CMD ["/usr/local/bin/app" "--serve"]', True),
        ]
        config = {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "APP_HOME=/opt/app"],
            "Cmd": ["/usr/local/bin/app", "--serve"],
            "WorkingDir": "/opt/app",
            "Labels": {"org.opencontainers.image.title": "rimgfs-sample",
                       "org.opencontainers.image.version": "1.0"},
        }
        info = imagetar.write_docker_archive(out, layers, config, history, "sample:latest",
                                             BASE_TIME + 2 * HOUR)
    print(f"wrote {out}: sample:latest, manifest {info['manifest']}, "
          f"{len(info['layers'])} layers")


if __name__ == "__main__":
    main()
