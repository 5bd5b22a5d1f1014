"""Read OCI image archives, OCI layout directories and `docker save` archives.

Parsing turns index/manifest/config JSON into frozen dataclasses and checks that every blob
is present; `verify` hashes every blob against its digest before anything is written; and
`extract` applies the layers in order with `kairos.image.layers`, checking each layer's
uncompressed digest against the config's `rootfs.diff_ids` as it streams.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import logging
import os
import platform
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol, cast

from kairos.errors import KairosError
from kairos.image.layers import ApplyOptions, LayerApplier
from kairos.log import Progress
from kairos.run import require_tools, run

log = logging.getLogger("kairos.image.oci")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_CHUNK = 1 << 20
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
_INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
_ARCH_NAMES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "riscv64": "riscv64"}


class ImageError(KairosError):
    """An image archive or layout that cannot be used as it is; `problems` lists each finding."""

    def __init__(self, message: str, hint: str | None = None, problems: Sequence[str] = ()):
        super().__init__(message, hint)
        self.problems = tuple(problems)


class Compression(StrEnum):
    NONE = "none"
    GZIP = "gzip"
    ZSTD = "zstd"


class ImageFormat(StrEnum):
    OCI = "oci"
    DOCKER = "docker"


@dataclass(frozen=True)
class Blob:
    """One file of the image: where it is in the store and what its sha256 must be."""

    path: str
    digest: str | None = None
    size: int | None = None
    media_type: str = ""

    @property
    def compression_hint(self) -> Compression | None:
        if self.media_type.endswith("+zstd"):
            return Compression.ZSTD
        if self.media_type.endswith("gzip"):
            return Compression.GZIP
        return None


@dataclass(frozen=True)
class Layer:
    blob: Blob
    diff_id: str | None


@dataclass(frozen=True)
class Image:
    format: ImageFormat
    os: str
    architecture: str
    layers: tuple[Layer, ...]
    config: Blob
    manifest: Blob | None
    labels: Mapping[str, str] = field(default_factory=dict)


def host_arch() -> str:
    machine = platform.machine()
    return _ARCH_NAMES.get(machine, machine)


class Store(Protocol):
    """Read access to the files of an image archive or layout directory."""

    label: str

    def names(self) -> frozenset[str]: ...

    def size(self, name: str) -> int: ...

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]: ...

    def local_path(self, name: str) -> Path | None: ...

    def close(self) -> None: ...


class DirStore:
    """An OCI image layout directory (`oci-dir:`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = str(root)

    def names(self) -> frozenset[str]:
        out = set()
        for p in self.root.rglob("*"):
            if p.is_file():
                out.add(p.relative_to(self.root).as_posix())
        return frozenset(out)

    def size(self, name: str) -> int:
        return self._path(name).stat().st_size

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return self._path(name).open("rb")

    def local_path(self, name: str) -> Path | None:
        return self._path(name)

    def close(self) -> None:
        pass

    def _path(self, name: str) -> Path:
        return self.root / _safe_rel(name, self.label)


class TarStore:
    """An image archive (`ocifile:`): an OCI layout or a `docker save` output in one tar."""

    def __init__(self, archive: Path) -> None:
        self.label = str(archive)
        try:
            self._tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 (closed by close())
        except (tarfile.TarError, OSError) as exc:
            raise ImageError(
                f"{archive}: not a readable tar archive: {exc}.",
                hint="ocifile: takes an OCI image archive or the output of `docker save`",
            ) from exc
        self._members: dict[str, tarfile.TarInfo] = {}
        for m in self._tar.getmembers():
            name = m.name.removeprefix("./").rstrip("/")
            if m.isfile() or m.issym() or m.islnk():
                self._members[name] = m

    def names(self) -> frozenset[str]:
        return frozenset(self._members)

    def size(self, name: str) -> int:
        member = self._members[name]
        if not member.isfile():
            # docker save links duplicate layers; tarfile resolves the link for us.
            with self.open(name) as f:
                return sum(len(c) for c in iter(lambda: f.read(_CHUNK), b""))
        return member.size

    @contextlib.contextmanager
    def _open(self, name: str) -> Iterator[IO[bytes]]:
        f = self._tar.extractfile(self._members[name])
        if f is None:
            raise ImageError(f"{self.label}: {name} is not a regular file.")
        with f:
            yield f

    def open(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        return self._open(name)

    def local_path(self, name: str) -> Path | None:
        return None

    def close(self) -> None:
        self._tar.close()


def open_store(path: Path) -> Store:
    return DirStore(path) if path.is_dir() else TarStore(path)


def _safe_rel(name: str, label: str) -> str:
    parts = name.split("/")
    if name.startswith("/") or ".." in parts or not name:
        raise ImageError(f"{label}: refers to the unsafe path '{name}'.")
    return name


def _blob_path(digest: str, label: str) -> str:
    if not _DIGEST_RE.match(digest):
        raise ImageError(
            f"{label}: unsupported or malformed digest '{digest}'.",
            hint="only sha256 digests are supported",
        )
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _read_json(store: Store, name: str, problems: list[str]) -> Any:
    try:
        with store.open(name) as f:
            return json.loads(f.read())
    except (KeyError, FileNotFoundError):
        problems.append(f"{store.label}: {name} is missing")
    except (ValueError, UnicodeDecodeError) as exc:
        problems.append(f"{store.label}: {name} is not valid JSON: {exc}")
    return None


def _hash_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _json_blob(store: Store, blob: Blob, problems: list[str]) -> Any:
    """Read a small JSON blob and verify its digest on the way (manifests, configs)."""
    try:
        with store.open(blob.path) as f:
            data = f.read()
    except (KeyError, FileNotFoundError):
        problems.append(f"{store.label}: blob {blob.path} is missing")
        return None
    if blob.digest and _hash_bytes(data) != blob.digest:
        problems.append(f"{store.label}: {blob.path} does not match its digest {blob.digest}")
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        problems.append(f"{store.label}: {blob.path} is not valid JSON: {exc}")
        return None


def _descriptor(raw: Any, label: str) -> Blob:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
        raise ImageError(f"{label}: a descriptor has no digest.")
    size = raw.get("size")
    return Blob(
        path=_blob_path(raw["digest"], label),
        digest=raw["digest"],
        size=size if isinstance(size, int) else None,
        media_type=str(raw.get("mediaType", "")),
    )


def _pick_manifest(store: Store, index: Any, arch: str, problems: list[str]) -> Blob | None:
    """Walk index.json (and nested indexes) down to the one manifest for this platform."""
    seen = 0
    while True:
        manifests = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(manifests, list) or not manifests:
            problems.append(f"{store.label}: the image index lists no manifests")
            return None
        candidates = []
        for raw in manifests:
            p = raw.get("platform") if isinstance(raw, dict) else None
            if isinstance(p, dict) and (p.get("architecture"), p.get("os")) != (arch, "linux"):
                continue
            candidates.append(raw)
        if len(candidates) != 1:
            platforms = sorted(
                f"{(m.get('platform') or {}).get('os', '?')}/"
                f"{(m.get('platform') or {}).get('architecture', '?')}"
                for m in manifests
                if isinstance(m, dict)
            )
            what = "no" if not candidates else "more than one"
            problems.append(
                f"{store.label}: {what} image for linux/{arch} in the index "
                f"(it has: {', '.join(platforms)})"
            )
            return None
        blob = _descriptor(candidates[0], store.label)
        if blob.media_type not in _INDEX_TYPES:
            return blob
        seen += 1
        if seen > 4:
            problems.append(f"{store.label}: image indexes nested too deeply")
            return None
        index = _json_blob(store, blob, problems)
        if index is None:
            return None


def _config_image(
    fmt: ImageFormat,
    config: Blob,
    cfg: Any,
    layers: Sequence[Blob],
    manifest: Blob | None,
    label: str,
    problems: list[str],
) -> Image | None:
    if not isinstance(cfg, dict):
        problems.append(f"{label}: the image config is not a JSON object")
        return None
    rootfs = cfg.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or len(diff_ids) != len(layers):
        problems.append(
            f"{label}: the config lists {len(diff_ids or [])} layer digests "
            f"for {len(layers)} layers"
        )
        return None
    inner = cfg.get("config") or {}
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    return Image(
        format=fmt,
        os=str(cfg.get("os", "")),
        architecture=str(cfg.get("architecture", "")),
        layers=tuple(Layer(b, str(d)) for b, d in zip(layers, diff_ids, strict=True)),
        config=config,
        manifest=manifest,
        labels={str(k): str(v) for k, v in (labels or {}).items()},
    )


def _read_oci(store: Store, arch: str, problems: list[str]) -> Image | None:
    names = store.names()
    if "oci-layout" not in names:
        problems.append(f"{store.label}: oci-layout is missing (not an OCI image layout)")
    index = _read_json(store, "index.json", problems)
    if index is None:
        return None
    try:
        manifest = _pick_manifest(store, index, arch, problems)
        if manifest is None:
            return None
        raw = _json_blob(store, manifest, problems)
        if raw is None:
            return None
        if not isinstance(raw, dict) or not isinstance(raw.get("layers"), list):
            problems.append(f"{store.label}: manifest {manifest.digest} has no layer list")
            return None
        config = _descriptor(raw.get("config"), store.label)
        layers = [_descriptor(d, store.label) for d in raw["layers"]]
    except ImageError as exc:
        problems.append(exc.message.rstrip("."))
        return None
    cfg = _json_blob(store, config, problems)
    if cfg is None:
        return None
    return _config_image(ImageFormat.OCI, config, cfg, layers, manifest, store.label, problems)


def _read_docker(store: Store, problems: list[str]) -> Image | None:
    manifest = _read_json(store, "manifest.json", problems)
    if manifest is None:
        return None
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        count = len(manifest) if isinstance(manifest, list) else 0
        problems.append(
            f"{store.label}: manifest.json must describe exactly one image, found {count}"
        )
        return None
    entry = manifest[0]
    try:
        config_path = _safe_rel(str(entry.get("Config", "")), store.label)
        layer_paths = [_safe_rel(str(p), store.label) for p in entry.get("Layers") or []]
    except ImageError as exc:
        problems.append(exc.message.rstrip("."))
        return None
    # Blob names carry their digest (`<hex>.json`, `blobs/sha256/<hex>`); old `<id>/layer.tar`
    # layers do not, and are checked against the config's diff_ids while they are applied.
    config = Blob(config_path, _digest_from_name(config_path))
    layers = [Blob(p, _digest_from_name(p)) for p in layer_paths]
    cfg = _json_blob(store, config, problems)
    if cfg is None:
        return None
    return _config_image(ImageFormat.DOCKER, config, cfg, layers, None, store.label, problems)


def _digest_from_name(name: str) -> str | None:
    m = re.search(r"(?:^|/)(?:sha256/)?([0-9a-f]{64})(?:\.json)?$", name)
    return f"sha256:{m.group(1)}" if m else None


def read_image(store: Store, arch: str | None = None) -> Image:
    """Parse the image in `store`; raise one ImageError listing every problem found."""
    problems: list[str] = []
    names = store.names()
    image: Image | None = None
    if "index.json" in names:
        image = _read_oci(store, arch or host_arch(), problems)
    elif "manifest.json" in names:
        image = _read_docker(store, problems)
    else:
        problems.append(f"{store.label}: has neither index.json nor manifest.json")
    if image is not None:
        for layer in image.layers:
            if layer.blob.path not in names:
                problems.append(f"{store.label}: layer blob {layer.blob.path} is missing")
        if image.os and image.os != "linux":
            problems.append(f"{store.label}: image is for os '{image.os}', not linux")
    if problems or image is None:
        raise ImageError(
            "not a usable OCI image or docker archive:\n  " + "\n  ".join(problems) + ".",
            problems=problems,
            hint="build one with `kairos build --format oci`, `docker save` or "
            "`skopeo copy docker://REF oci-archive:FILE`",
        )
    if any(layer.blob.compression_hint == Compression.ZSTD for layer in image.layers):
        require_tools(["zstd"], package_hint={"zstd": "zstd"})
    return image


def verify(store: Store, image: Image, progress: Progress | None = None) -> None:
    """Hash every layer blob before anything is written; raise one error listing every mismatch.

    A blob is checked against its manifest digest; an old docker-save `layer.tar` has none,
    but it is an uncompressed tar, so its own hash must be the config's diff_id.
    """
    problems = []
    total = sum(layer.blob.size or 0 for layer in image.layers) or 1
    done = 0
    for layer in image.layers:
        blob = layer.blob
        expected = blob.digest
        if expected is None and layer.diff_id and _sniff(store, blob.path) == Compression.NONE:
            expected = layer.diff_id
        if expected is None:
            continue  # checked against its diff_id while it is applied
        h = hashlib.sha256()
        n = 0
        with store.open(blob.path) as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                n += len(chunk)
                if progress:
                    progress.bar("verify", done + n, total)
        done += n
        if "sha256:" + h.hexdigest() != expected:
            problems.append(f"{blob.path}: content does not match its digest {expected}")
        elif blob.size is not None and blob.size != n:
            problems.append(f"{blob.path}: size {n} differs from the manifest's {blob.size}")
    if problems:
        raise ImageError(
            f"{store.label}: corrupt image:\n  " + "\n  ".join(problems) + ".",
            hint="the archive was damaged in transfer or edited; fetch or build it again",
        )


def _sniff(store: Store, name: str) -> Compression:
    with store.open(name) as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return Compression.GZIP
    if magic == b"\x28\xb5\x2f\xfd":
        return Compression.ZSTD
    return Compression.NONE


class _HashingReader:
    """Hashes exactly what the tar reader consumes (the uncompressed layer = diff_id)."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.sha.update(data)
        return data

    def drain(self) -> str:
        while self.read(_CHUNK):
            pass
        return "sha256:" + self.sha.hexdigest()


@contextlib.contextmanager
def _layer_stream(store: Store, layer: Layer, workdir: Path) -> Iterator[IO[bytes]]:
    kind = _sniff(store, layer.blob.path)
    if kind == Compression.ZSTD:
        # Stdlib has no zstd before 3.14: the zstd tool decompresses to a scratch file.
        src = store.local_path(layer.blob.path)
        if src is None:
            src = workdir / "layer.zst"
            with store.open(layer.blob.path) as f, src.open("wb") as out:
                while chunk := f.read(_CHUNK):
                    out.write(chunk)
        plain = workdir / "layer.tar"
        run(["zstd", "-d", "-q", "-f", "-o", plain, src])
        try:
            with plain.open("rb") as f:
                yield f
        finally:
            plain.unlink(missing_ok=True)
            if src.parent == workdir:
                src.unlink(missing_ok=True)
        return
    with store.open(layer.blob.path) as raw:
        if kind == Compression.GZIP:
            with gzip.GzipFile(fileobj=raw, mode="rb") as gz:
                yield cast(IO[bytes], gz)
        else:
            yield raw


def apply_layers(
    store: Store,
    image: Image,
    dest: Path,
    progress: Progress | None = None,
    options: ApplyOptions | None = None,
) -> LayerApplier:
    """Apply every layer of `image` onto `dest` in order (blobs must be verified first)."""
    applier = LayerApplier(dest, options)
    scratch = Path("/var/tmp") if Path("/var/tmp").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="kairos-layer-", dir=scratch) as tmp:
        for i, layer in enumerate(image.layers, 1):
            name = f"{i}/{len(image.layers)} ({layer.blob.path})"
            if progress:
                progress.bar("layers", i - 1, len(image.layers))
            try:
                with _layer_stream(store, layer, Path(tmp)) as stream:
                    hashing = _HashingReader(stream)
                    applier.apply(cast(IO[bytes], hashing), name)
                    got = hashing.drain()
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
                raise ImageError(
                    f"layer {name}: cannot be read: {exc}.",
                    hint="the image archive is damaged; fetch or build it again",
                ) from exc
            if layer.diff_id and got != layer.diff_id:
                raise ImageError(
                    f"layer {name}: uncompressed content {got} does not match the config's "
                    f"diff_id {layer.diff_id}.",
                    hint="the image archive is damaged or was edited; fetch or build it again",
                )
        if progress:
            progress.bar("layers", len(image.layers), len(image.layers))
    return applier


def extract(
    path: Path,
    dest: Path,
    progress: Progress | None = None,
    *,
    arch: str | None = None,
    options: ApplyOptions | None = None,
) -> Image:
    """Read, verify and unpack an image archive or layout directory into `dest`."""
    store = open_store(path)
    try:
        image = read_image(store, arch)
        verify(store, image, progress)
        options = options or ApplyOptions()
        if not options.keep_owner:
            log.warning("not running as root: unpacked files belong to the current user")
        dest.mkdir(parents=True, exist_ok=True)
        os.chmod(dest, 0o755)
        apply_layers(store, image, dest, progress, options)
        return image
    finally:
        store.close()
