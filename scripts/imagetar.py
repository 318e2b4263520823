"""Write container image archives: the layer and archive writer behind make-sample-image.py,
make-bench-image.py and make-scale-image.py (python3 standard library only).

`Layer` builds one layer tar (PAX format, so extended attributes travel as `SCHILY.xattr.*`
records) in a work directory, optionally gzip-compressed. `write_docker_archive` wraps layers
and an image config into a `docker save` archive of the Docker 25+ shape: an OCI image layout
(`oci-layout`, `index.json`, `blobs/sha256/...`) plus the `manifest.json` that older loaders read.
Every digest, diff_id and size is computed from the bytes written, and every timestamp is fixed,
so the same input gives a byte-identical archive.
"""

import gzip
import hashlib
import io
import json
import os
import tarfile

MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = MT_LAYER + "+gzip"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"

# Whiteout names of the OCI image-spec (layer.md, "Whiteouts").
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

# Copy buffer for hashing and compressing layer files.
CHUNK = 1 << 20


def sha256_file(path):
    """Returns ("sha256:<hex>", size) of a file, read in chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
            size += len(block)
    return "sha256:" + h.hexdigest(), size


def host_architecture():
    """The host's architecture in OCI names (the platform rimgfs picks by default)."""
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64", "i686": "386"}.get(machine, machine)


class Repeat:
    """A file-like object reading `size` bytes of `block` repeated: a big file's contents in
    constant memory and time."""

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


class Layer:
    """One layer tar, written entry by entry in the order the methods are called.

    Paths are relative to the image root ("etc/hostname"). Entries are owned by root unless
    uid/gid are given, and carry the layer's mtime.
    """

    def __init__(self, workdir, name, mtime, created_by, compress=False):
        self.tar_path = os.path.join(workdir, name + ".tar")
        self.mtime = mtime
        self.created_by = created_by
        self.compress = compress
        self._tar = tarfile.open(self.tar_path, "w", format=tarfile.PAX_FORMAT)

    def _info(self, path, kind, mode, uid, gid, xattrs):
        info = tarfile.TarInfo(path)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = self.mtime
        if xattrs:
            info.pax_headers = {"SCHILY.xattr." + k: v for k, v in xattrs.items()}
        return info

    def dir(self, path, mode=0o755, uid=0, gid=0, xattrs=None):
        self._tar.addfile(self._info(path, tarfile.DIRTYPE, mode, uid, gid, xattrs))

    def file(self, path, data, mode=0o644, uid=0, gid=0, xattrs=None):
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid, xattrs)
        info.size = len(data)
        self._tar.addfile(info, io.BytesIO(data))

    def stream(self, path, fileobj, size, mode=0o644, uid=0, gid=0, xattrs=None):
        """A regular file of `size` bytes read from `fileobj`, for files too big to hold."""
        info = self._info(path, tarfile.REGTYPE, mode, uid, gid, xattrs)
        info.size = size
        self._tar.addfile(info, fileobj)

    def symlink(self, path, target):
        info = self._info(path, tarfile.SYMTYPE, 0o777, 0, 0, None)
        info.linkname = target
        self._tar.addfile(info)

    def hardlink(self, path, target):
        """A second name for `target`, an earlier entry of this layer or of a lower one."""
        info = self._info(path, tarfile.LNKTYPE, 0o644, 0, 0, None)
        info.linkname = target
        self._tar.addfile(info)

    def whiteout(self, path):
        """Hides `path` of the layers below."""
        parent, _, name = path.rpartition("/")
        marker = (parent + "/" if parent else "") + WHITEOUT_PREFIX + name
        self.file(marker, b"", mode=0o600)

    def opaque(self, dirpath):
        """Hides every child `dirpath` has in the layers below; this layer's children stay."""
        self.file(dirpath.rstrip("/") + "/" + OPAQUE_MARKER, b"", mode=0o600)

    def close(self):
        """Finishes the tar and returns its descriptor fields:
        (blob_path, media_type, digest, size, diff_id)."""
        self._tar.close()
        diff_id, size = sha256_file(self.tar_path)
        if not self.compress:
            return self.tar_path, MT_LAYER, diff_id, size, diff_id
        gz_path = self.tar_path + ".gz"
        with open(self.tar_path, "rb") as src, open(gz_path, "wb") as raw:
            # mtime=0 and no file name in the gzip header keep the blob digest reproducible.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                while block := src.read(CHUNK):
                    gz.write(block)
        digest, size = sha256_file(gz_path)
        return gz_path, MT_LAYER_GZIP, digest, size, diff_id


def _json_bytes(value):
    return json.dumps(value, separators=(",", ":")).encode()


def _blob_name(digest):
    return "blobs/sha256/" + digest.split(":", 1)[1]


def write_docker_archive(out_path, layers, config, history, repo_tag, mtime):
    """Writes a Docker 25+ `docker save` archive of `layers` (bottom first).

    `config` is the image config's `config` object (Env, Cmd, WorkingDir, Labels, ...).
    `history` lists (created_by, empty_layer) in build order; its non-empty entries must match
    `layers` one to one.
    """
    built = [layer.close() for layer in layers]
    if sum(1 for _, empty in history if not empty) != len(built):
        raise ValueError("history and layers disagree on the number of layers")
    created = "2024-01-01T00:00:00Z"
    image_config = {
        "architecture": host_architecture(),
        "os": "linux",
        "created": created,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [b[4] for b in built]},
        "history": [
            {"created": created, "created_by": by, **({"empty_layer": True} if empty else {})}
            for by, empty in history
        ],
    }
    config_bytes = _json_bytes(image_config)
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    descriptors = [
        {"mediaType": mt, "digest": digest, "size": size} for _, mt, digest, size, _ in built
    ]
    manifest_bytes = _json_bytes({
        "schemaVersion": 2,
        "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": descriptors,
    })
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    tag = repo_tag.rpartition(":")[2]
    index = {
        "schemaVersion": 2,
        "mediaType": MT_INDEX,
        "manifests": [{
            "mediaType": MT_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "annotations": {
                "io.containerd.image.name": "docker.io/library/" + repo_tag,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }
    docker_manifest = [{
        "Config": _blob_name(config_digest),
        "RepoTags": [repo_tag],
        "Layers": [_blob_name(b[2]) for b in built],
        # Docker 25 names each layer's descriptor by diff_id, which gives the media type.
        "LayerSources": {b[4]: d for b, d in zip(built, descriptors)},
    }]

    with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as out:
        def add_dir(path):
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            out.addfile(info)

        def add_bytes(path, data):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            out.addfile(info, io.BytesIO(data))

        add_dir("blobs")
        add_dir("blobs/sha256")
        blobs = {config_digest: config_bytes, manifest_digest: manifest_bytes}
        for path, _, digest, size, _ in built:
            info = tarfile.TarInfo(_blob_name(digest))
            info.size, info.mode, info.mtime = size, 0o644, mtime
            with open(path, "rb") as f:
                out.addfile(info, f)
        for digest, data in blobs.items():
            add_bytes(_blob_name(digest), data)
        add_bytes("index.json", _json_bytes(index))
        add_bytes("manifest.json", _json_bytes(docker_manifest))
        add_bytes("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
    return {"config": config_digest, "manifest": manifest_digest, "layers": built}
