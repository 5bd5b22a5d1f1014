"""Image sources: where a root filesystem comes from (`dir:`, `ocifile:`, `oci-dir:`, `debian:`,
`oci:`/`docker:` registry references).

`parse` turns the user's text into a frozen Source; `check` finds every pre-flight problem
at once (before anything is written); `materialize` turns the source into a rootfs tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import ClassVar

from kairos.errors import KairosError
from kairos.log import Progress

DEFAULT_REGISTRY = "docker.io"
_HINT_SCHEMES = "use dir:PATH, ocifile:FILE, oci-dir:DIR, debian:SUITE or oci:REF"
_IMAGE_HINT = (
    "ocifile: takes an OCI image archive (kairos build --format oci, skopeo copy "
    "docker://REF oci-archive:FILE) or a `docker save` output; oci-dir: an OCI layout directory"
)
_SUITE_RE = re.compile(r"^[a-z][a-z0-9.-]*$")
# The docker reference grammar (distribution/reference), simplified to what we report.
_REPO_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPO_RE = re.compile(rf"^{_REPO_COMPONENT}(?:/{_REPO_COMPONENT})*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


class SourceKind(StrEnum):
    DIR = "dir"
    OCIFILE = "ocifile"
    OCI_DIR = "oci-dir"
    OCI = "oci"
    DOCKER = "docker"
    DEBIAN = "debian"


class SourceError(KairosError):
    """An image source that cannot be used; raised before any work is done."""


@dataclass(frozen=True)
class Source:
    """A parsed source; `spec` is the text the user gave (for messages)."""

    kind: ClassVar[SourceKind]
    spec: str


@dataclass(frozen=True)
class DirSource(Source):
    kind: ClassVar[SourceKind] = SourceKind.DIR
    path: Path


@dataclass(frozen=True)
class OciFileSource(Source):
    kind: ClassVar[SourceKind] = SourceKind.OCIFILE
    path: Path


@dataclass(frozen=True)
class OciDirSource(Source):
    kind: ClassVar[SourceKind] = SourceKind.OCI_DIR
    path: Path


@dataclass(frozen=True)
class DebianSource(Source):
    kind: ClassVar[SourceKind] = SourceKind.DEBIAN
    suite: str


@dataclass(frozen=True)
class RegistrySource(Source):
    """`oci:REF` / `docker:REF`: parsed so messages can name the parts; not fetched."""

    kind: ClassVar[SourceKind] = SourceKind.OCI
    registry: str
    repository: str
    tag: str | None
    digest: str | None
    transport: SourceKind = SourceKind.OCI  # oci: or docker:, as the user wrote it

    @property
    def reference(self) -> str:
        ref = f"{self.registry}/{self.repository}"
        if self.tag:
            ref += f":{self.tag}"
        if self.digest:
            ref += f"@{self.digest}"
        return ref


def parse_reference(ref: str, spec: str, transport: SourceKind = SourceKind.OCI) -> RegistrySource:
    """Split `[registry[:port]/]repository[:tag][@digest]` as docker does."""
    ref = ref.removeprefix("//")  # `docker://REF` as skopeo spells it
    name, _, digest = ref.partition("@")
    first, _, rest = name.partition("/")
    # The first component is a registry host when it looks like one (docker's rule).
    if rest and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
    else:
        registry, path = DEFAULT_REGISTRY, name
    repository, tag = path, ""
    if ":" in path.rsplit("/", 1)[-1]:
        repository, _, tag = path.rpartition(":")
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    problems = []
    if not _REPO_RE.match(repository):
        problems.append(f"repository '{repository}' is not a valid name")
    if tag and not _TAG_RE.match(tag):
        problems.append(f"tag '{tag}' is not valid")
    if digest and not _DIGEST_RE.match(digest):
        problems.append(f"digest '{digest}' is not a sha256 digest")
    if problems:
        raise SourceError(
            f"{spec}: {'; '.join(problems)}.",
            hint="write a reference like oci:quay.io/kairos/debian:v3.4.0",
        )
    return RegistrySource(
        spec=spec,
        registry=registry,
        repository=repository,
        tag=tag or (None if digest else "latest"),
        digest=digest or None,
        transport=transport,
    )


def parse(spec: str) -> Source:
    """Parse `SCHEME:VALUE` into a Source; unknown schemes and empty values raise."""
    scheme, sep, value = spec.partition(":")
    if not sep or not value:
        raise SourceError(f"source '{spec}' has no scheme or no value.", hint=_HINT_SCHEMES)
    try:
        kind = SourceKind(scheme)
    except ValueError:
        raise SourceError(
            f"source '{spec}': unknown scheme '{scheme}'.", hint=_HINT_SCHEMES
        ) from None
    if kind == SourceKind.DIR:
        return DirSource(spec=spec, path=Path(value))
    if kind == SourceKind.OCIFILE:
        return OciFileSource(spec=spec, path=Path(value))
    if kind == SourceKind.OCI_DIR:
        return OciDirSource(spec=spec, path=Path(value))
    if kind == SourceKind.DEBIAN:
        if not _SUITE_RE.match(value):
            raise SourceError(
                f"source '{spec}': '{value}' is not a Debian suite name.",
                hint="use a suite or codename such as debian:bookworm or debian:trixie",
            )
        return DebianSource(spec=spec, suite=value)
    return parse_reference(value, spec, kind)


def _dir_problems(path: Path, what: str) -> list[str]:
    if not path.exists():
        return [f"{path}: {what} does not exist"]
    if not path.is_dir():
        return [f"{path}: {what} is not a directory"]
    return []


def check(source: Source) -> None:
    """Raise one SourceError listing every problem that would stop `materialize`."""
    problems: list[str] = []
    hint: str | None = None
    if isinstance(source, DirSource):
        problems = _dir_problems(source.path, "root filesystem directory")
        if not problems and not any((source.path / d).is_dir() for d in ("usr", "etc")):
            problems.append(f"{source.path}: does not look like a root filesystem (no usr/, etc/)")
        if problems:
            hint = "dir: takes the top of an existing root filesystem tree (the one with usr/)"
    elif isinstance(source, OciFileSource | OciDirSource):
        problems, hint = _image_problems(source)
    elif isinstance(source, DebianSource):
        from kairos.image.debian import parse_suite

        try:
            parse_suite(source.suite)
        except KairosError as exc:
            problems.append(exc.message.rstrip("."))
            hint = exc.hint
    elif isinstance(source, RegistrySource):
        problems.append(f"registry {source.registry} not reachable for {source.reference}")
        hint = (
            "this build has no registry client; pull the image first "
            f"(skopeo copy docker://{source.reference} oci-archive:image.tar) "
            "and use ocifile:image.tar or oci-dir:DIR"
        )
    if len(problems) == 1:
        raise SourceError(f"source '{source.spec}': {problems[0]}.", hint=hint)
    if problems:
        raise SourceError(
            f"source '{source.spec}' cannot be used:\n  " + "\n  ".join(problems) + ".", hint=hint
        )


def _image_problems(source: OciFileSource | OciDirSource) -> tuple[list[str], str | None]:
    from kairos.image import oci

    path = source.path
    if isinstance(source, OciDirSource):
        problems = _dir_problems(path, "OCI layout directory")
    elif not path.exists():
        problems = [f"{path}: image archive does not exist"]
    elif not path.is_file():
        problems = [f"{path}: image archive is not a file (for a layout directory use oci-dir:)"]
    else:
        problems = []
    if problems:
        return problems, _IMAGE_HINT
    try:
        store = oci.open_store(path)
        try:
            oci.read_image(store)
        finally:
            store.close()
    except oci.ImageError as exc:
        return list(exc.problems) or [exc.message.rstrip(".")], exc.hint
    except KairosError as exc:
        return [exc.message.rstrip(".")], exc.hint
    return [], None


def materialize(source: Source, dest: Path, progress: Progress) -> None:
    """Turn `source` into a root filesystem tree at `dest` (which must be empty or absent)."""
    check(source)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise SourceError(
            f"{dest}: target for the root filesystem is not an empty directory.",
            hint="remove it or choose another directory",
        )
    if isinstance(source, DirSource):
        _copy_dir(source.path, dest, progress)
    elif isinstance(source, OciFileSource | OciDirSource):
        from kairos.image import oci

        with progress.step(f"unpack {source.spec}"):
            oci.extract(source.path, dest, progress)
    elif isinstance(source, DebianSource):
        from kairos.image.debian import materialize_debian

        materialize_debian(source.suite, dest, progress)
    else:
        raise SourceError(f"source '{source.spec}' cannot be materialized.", hint=_HINT_SCHEMES)


def in_place_root(source: Source) -> Path | None:
    """The tree a `dir:` source names, for callers that only read it (no copy)."""
    return source.path if isinstance(source, DirSource) else None


def _copy_dir(src: Path, dest: Path, progress: Progress) -> None:
    from kairos.run import run

    src_abs, dest_abs = src.resolve(), dest.resolve()
    if dest_abs == src_abs or src_abs in dest_abs.parents:
        raise SourceError(
            f"{dest}: is inside the source tree {src}.", hint="copy to a directory outside it"
        )
    dest.mkdir(parents=True, exist_ok=True)
    with progress.step(f"copy {src}"):
        # cp -a keeps owners, modes, hardlinks, xattrs and device nodes, which Python's
        # copytree does not; reflinks make it nearly free on btrfs/xfs.
        run(["cp", "-a", "--reflink=auto", "--", f"{src_abs}/.", str(dest_abs)])
