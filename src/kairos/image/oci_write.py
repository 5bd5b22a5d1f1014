"""Write a root filesystem as an OCI image archive (the `oci` format of `kairos build`).

The archive is a tar of an OCI image layout (oci-layout, index.json, blobs/sha256/...) with
one gzip layer, plus a docker-style manifest.json so `docker load` takes it too. The same
tree gives the same bytes: entries are sorted, the gzip header has no time or name, and
file times are clamped to SOURCE_DATE_EPOCH when it is set.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import io
import json
import os
import stat
import tarfile
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from kairos.errors import KairosError

MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BlobRef:
    digest: str
    size: int
    media_type: str

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


class _Tee:
    """A write-only file that hashes and counts what passes through to `out`."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self.out.write(data)
        return len(data)

    def flush(self) -> None:
        self.out.flush()

    @property
    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    return int(value) if value.isdigit() else None


def _walk(top: Path) -> Iterator[Path]:
    """Every path under `top`, depth first, names sorted (so the layer is reproducible)."""
    with os.scandir(top) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        yield Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path))


def _tarinfo(
    path: Path, name: str, clamp: int | None, links: dict[tuple[int, int], str]
) -> tarfile.TarInfo | None:
    st = path.lstat()
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    mtime = int(st.st_mtime)
    info.mtime = min(mtime, clamp) if clamp is not None else mtime
    if stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
        else:
            if st.st_nlink > 1:
                links[key] = name
            info.type, info.size = tarfile.REGTYPE, st.st_size
    elif stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    else:
        # Device nodes and sockets are runtime objects (devtmpfs provides /dev), and the
        # ocifile: reader refuses device nodes by default, so they are left out.
        return None
    return info


class _ParallelGzip:
    """gzip on every core: the stream is cut into fixed chunks, each compressed on its own
    as one gzip member, written in order. Multi-member gzip is valid (RFC 1952) and read by
    docker, containerd, GNU gzip and Python alike; fixed chunks keep the output reproducible.
    """

    CHUNK = 4 << 20

    def __init__(self, out: _Tee, level: int) -> None:
        self.out = out
        self.level = level
        self.workers = max(1, os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max_workers=self.workers)
        self.pending: deque[Future[bytes]] = deque()
        self.buf = bytearray()
        self.members = 0

    def _compress(self, data: bytes) -> bytes:
        return gzip.compress(data, compresslevel=self.level, mtime=0)

    def _submit(self, data: bytes) -> None:
        self.pending.append(self.pool.submit(self._compress, data))
        self.members += 1
        # Bounded read-ahead: memory stays at a few chunks per core.
        while len(self.pending) > 2 * self.workers:
            self.out.write(self.pending.popleft().result())

    def write(self, data: bytes) -> int:
        self.buf += data
        while len(self.buf) >= self.CHUNK:
            self._submit(bytes(self.buf[: self.CHUNK]))
            del self.buf[: self.CHUNK]
        return len(data)

    def close(self) -> None:
        if self.buf or not self.members:
            self._submit(bytes(self.buf))
            self.buf.clear()
        while self.pending:
            self.out.write(self.pending.popleft().result())
        self.pool.shutdown()


def _write_layer(rootfs: Path, out: IO[bytes], level: int) -> tuple[str, BlobRef]:
    """Write the gzip layer of `rootfs` to `out`; return its diff_id and blob reference."""
    clamp = _epoch()
    links: dict[tuple[int, int], str] = {}
    compressed = _Tee(out)
    gz = _ParallelGzip(compressed, level)
    plain = _Tee(cast(IO[bytes], gz))
    try:
        with tarfile.open(
            fileobj=cast(IO[bytes], plain), mode="w|", format=tarfile.PAX_FORMAT
        ) as tar:
            for path in _walk(rootfs):
                name = path.relative_to(rootfs).as_posix()
                info = _tarinfo(path, name, clamp, links)
                if info is None:
                    continue
                if info.isreg():
                    with path.open("rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    finally:
        gz.close()
    return plain.digest, BlobRef(compressed.digest, compressed.size, MT_LAYER_GZIP)


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _ref(data: bytes, media_type: str) -> BlobRef:
    return BlobRef("sha256:" + hashlib.sha256(data).hexdigest(), len(data), media_type)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
    tar.addfile(info)


def write_oci_archive(
    rootfs: Path,
    dest: Path,
    *,
    name: str,
    version: str,
    arch: str = "amd64",
    level: int = 6,
) -> str:
    """Write `rootfs` as an OCI image archive at `dest`; return the manifest digest.

    `level` is the gzip level: 6 is docker's default; 9 costs twice the time for ~1% less,
    1 is five times faster for ~10% more (measured on a minimal Debian root).
    """
    if not rootfs.is_dir():
        raise KairosError(f"{rootfs}: not a directory.", hint="pass the root filesystem tree")
    dest.parent.mkdir(parents=True, exist_ok=True)
    created = _epoch() or 0
    created_text = _rfc3339(created)
    with tempfile.TemporaryDirectory(prefix=".oci-", dir=dest.parent) as tmp:
        layer_path = Path(tmp) / "layer"
        with layer_path.open("wb") as out:
            diff_id, layer = _write_layer(rootfs, out, level)
        labels = {
            "org.opencontainers.image.title": name,
            "org.opencontainers.image.version": version,
        }
        config = _json_bytes(
            {
                "architecture": arch,
                "os": "linux",
                "created": created_text,
                "config": {"Labels": labels},
                "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                "history": [{"created": created_text, "created_by": "kairos build"}],
            }
        )
        config_ref = _ref(config, MT_CONFIG)
        manifest = _json_bytes(
            {
                "schemaVersion": 2,
                "mediaType": MT_MANIFEST,
                "config": config_ref.descriptor(),
                "layers": [layer.descriptor()],
                "annotations": {**labels, "org.opencontainers.image.created": created_text},
            }
        )
        manifest_ref = _ref(manifest, MT_MANIFEST)
        index = _json_bytes(
            {
                "schemaVersion": 2,
                "mediaType": MT_INDEX,
                "manifests": [
                    manifest_ref.descriptor(
                        platform={"architecture": arch, "os": "linux"},
                        annotations={
                            "io.containerd.image.name": f"{name}:{version}",
                            "org.opencontainers.image.ref.name": version,
                        },
                    )
                ],
            }
        )
        docker_manifest = _json_bytes(
            [
                {
                    "Config": _blob_name(config_ref.digest),
                    "RepoTags": [f"{name}:{version}"],
                    "Layers": [_blob_name(layer.digest)],
                }
            ]
        )
        blobs = sorted(
            [(config_ref.digest, config), (manifest_ref.digest, manifest)],
            key=lambda b: b[0],
        )
        partial = Path(tmp) / "archive.tar"
        with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
            _add_dir(tar, "blobs")
            _add_dir(tar, "blobs/sha256")
            entries = [(d, None) for d, _ in blobs] + [(layer.digest, layer_path)]
            small = dict(blobs)
            for digest, path in sorted(entries, key=lambda e: e[0]):
                if path is None:
                    _add_bytes(tar, _blob_name(digest), small[digest])
                else:
                    info = tarfile.TarInfo(_blob_name(digest))
                    info.size, info.mode, info.mtime = layer.size, 0o644, 0
                    with path.open("rb") as f:
                        tar.addfile(info, f)
            _add_bytes(tar, "index.json", index)
            _add_bytes(tar, "manifest.json", docker_manifest)
            _add_bytes(tar, "oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))
        os.replace(partial, dest)
    return manifest_ref.digest


def _blob_name(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
