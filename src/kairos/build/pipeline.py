"""`kairos build`: source -> kairosified root -> initrd + squashfs -> artifacts + manifest.

`build()` is a flat list of named steps; `check()` finds every problem of a request
before any of them runs. Other parts (the VM tests, the bench) import `BuildRequest`,
`build` and `Manifest` from here: keep their shape stable.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from kairos.build.manifest import Artifact, ArtifactKind, Manifest, Step
from kairos.build.squashfs import Compression
from kairos.errors import ConfigError, KairosError
from kairos.log import Progress

GIB = 1 << 30


class Format(StrEnum):
    ISO = "iso"
    RAW = "raw"
    QCOW2 = "qcow2"
    NETBOOT = "netboot"
    OCI = "oci"


DEFAULT_NETBOOT_URL = "http://10.0.2.2:8000"


@dataclass(frozen=True)
class BuildRequest:
    source: str
    output: Path
    formats: tuple[Format, ...] = (Format.ISO,)
    cloud_config: Path | None = None
    name: str = "kairos"
    version: str = "v0.1.0"
    compression: Compression = Compression.FAST
    # Appended to every boot entry's kernel command line (tests: markers, poweroff).
    extra_cmdline: str = ""
    netboot_url: str = DEFAULT_NETBOOT_URL
    # Where the root tree is assembled; must share a filesystem with the cache for hardlinks.
    work_dir: Path | None = None
    keep_work: bool = False


@dataclass(frozen=True)
class Plan:
    """What `check` resolved: the parsed source and the tools the formats need."""

    request: BuildRequest
    source: object
    tools: tuple[str, ...] = field(default=())


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
TOOL_PACKAGES = {
    "mksquashfs": "squashfs-tools",
    "grub-mkrescue": "grub-common",
    "grub-mkimage": "grub-common",
    "xorriso": "xorriso",
    "mformat": "mtools",
    "mmd": "mtools",
    "mcopy": "mtools",
    "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools",
    "qemu-img": "qemu-utils",
    "mmdebstrap": "mmdebstrap",
    "chroot": "coreutils",
    "dd": "coreutils",
}


def parse_formats(text: str) -> tuple[Format, ...]:
    out: list[Format] = []
    bad: list[str] = []
    for word in (w.strip() for w in text.split(",")):
        if not word:
            continue
        try:
            fmt = Format(word)
        except ValueError:
            bad.append(word)
            continue
        if fmt not in out:
            out.append(fmt)
    if bad or not out:
        raise KairosError(
            f"--format: unknown format(s): {', '.join(bad) or '(none given)'}.",
            hint=f"choose from: {', '.join(f.value for f in Format)}",
        )
    return tuple(out)


def _tools(formats: Sequence[Format]) -> tuple[str, ...]:
    tools = ["mksquashfs", "chroot"]
    if Format.ISO in formats:
        tools += ["grub-mkrescue", "xorriso", "mformat"]
    if Format.RAW in formats or Format.QCOW2 in formats:
        tools += ["sfdisk", "mkfs.vfat", "mmd", "mcopy", "grub-mkimage", "dd"]
    if Format.QCOW2 in formats:
        tools.append("qemu-img")
    return tuple(dict.fromkeys(tools))


def _space_needed(formats: Sequence[Format]) -> int:
    """A generous estimate of the output directory's needs (bytes)."""
    per = {Format.ISO: 1, Format.RAW: 1, Format.QCOW2: 1, Format.NETBOOT: 1, Format.OCI: 1}
    return GIB * sum(per[f] for f in formats)


def _free(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _cloud_config_problems(path: Path, strict: bool) -> list[str]:
    if not path.is_file():
        return [f"{path}: --cloud-config file does not exist"]
    from kairos.config.validate import validate_text

    report = validate_text(path.read_text(errors="replace"), str(path), strict=strict)
    return [str(p) for p in report.errors]


def check(request: BuildRequest, strict: bool = False) -> Plan:
    """Every problem that would stop the build, found before any work, raised together."""
    from kairos.image import debian as deb
    from kairos.image import source as src
    from kairos.run import which

    problems: list[str] = []
    hints: list[str] = []
    parsed: object = None
    try:
        parsed = src.parse(request.source)
        src.check(parsed)
    except KairosError as exc:
        problems.append(f"--source: {exc.message.rstrip('.')}")
        if exc.hint:
            hints.append(exc.hint)
    if not _NAME_RE.match(request.name):
        problems.append(f"--name: '{request.name}' must be letters, digits, '.', '_' or '-'")
    if not request.version or any(c.isspace() or c in "/\"'" for c in request.version):
        problems.append(f"--version: '{request.version}' is not a version (e.g. v1.2.3)")
    if request.cloud_config is not None:
        problems += _cloud_config_problems(request.cloud_config, strict)
    out = request.output
    if out.exists() and not out.is_dir():
        problems.append(f"--output: {out} exists and is not a directory")
    elif _free(out) < _space_needed(request.formats):
        need = _space_needed(request.formats) / GIB
        problems.append(f"--output: {out}: less than {need:.0f} GiB free")
        hints.append("free some space or choose another --output directory")
    cache_need = 2 * GIB
    if isinstance(parsed, src.DebianSource):
        recipe = deb.DebianRecipe(suite=parsed.suite)
        if not deb.is_cached(recipe):
            cache_need += 2 * GIB
    if _free(deb.CACHE_ROOT) < cache_need:
        problems.append(f"{deb.CACHE_ROOT}: less than {cache_need / GIB:.0f} GiB free")
        hints.append("the build assembles its root there (KAIROS_CACHE moves it)")
    tools = list(_tools(request.formats))
    if isinstance(parsed, src.DebianSource) and not deb.is_cached(
        deb.DebianRecipe(suite=parsed.suite)
    ):
        tools.append("mmdebstrap")
    missing = [t for t in tools if which(t) is None]
    if missing:
        pkgs = sorted({TOOL_PACKAGES.get(t, t) for t in missing})
        problems.append(f"host tools missing: {', '.join(missing)}")
        hints.append(f"apt-get install {' '.join(pkgs)} (or run 'make setup')")
    if problems:
        raise ConfigError(
            f"cannot build: {len(problems)} problem(s) found before starting.",
            hint="; ".join(hints) or None,
            problems=tuple(problems),
        )
    return Plan(request=request, source=parsed, tools=tuple(tools))


@dataclass(frozen=True)
class _Parts:
    root: Path
    kernel: Path
    initrd: Path
    squashfs: Path


def build(
    request: BuildRequest, progress: Progress | None = None, strict: bool = False
) -> Manifest:
    """Run the whole build and return (and write) the manifest."""
    from kairos.build import steps

    progress = progress or Progress()
    plan = check(request, strict)
    request.output.mkdir(parents=True, exist_ok=True)
    work = steps.make_work_dir(request)
    outputs: list[tuple[ArtifactKind, Path]] = []
    artifacts: list[Artifact] = []
    try:
        root = work / "rootfs"
        steps.prepare_root(plan.source, root, progress)
        kver = steps.kairosify_root(root, request, progress)
        initrd = steps.make_initrd(root, kver, work, progress)
        squashfs = steps.make_squashfs(root, work, request, progress)
        parts = _Parts(root, root / "boot" / f"vmlinuz-{kver}", initrd, squashfs)
        for fmt in sorted(request.formats, key=list(Format).index):
            outputs += steps.write_format(fmt, parts.root, parts.kernel, parts.initrd,
                                          parts.squashfs, work, request, progress)  # fmt: skip
        with progress.step("manifest (sha256)"):
            artifacts = digest_all(outputs, request.output)
    finally:
        if not request.keep_work:
            from kairos.build.chroot import remove_tree

            with progress.step("clean up work tree"):
                remove_tree(work)
    manifest = Manifest(
        name=request.name,
        version=request.version,
        artifacts=tuple(artifacts),
        steps=tuple(Step(n, s) for n, s in progress.steps),
    )
    manifest.write(request.output)
    return manifest


def digest_all(outputs: Sequence[tuple[ArtifactKind, Path]], out_dir: Path) -> list[Artifact]:
    """Artifacts with their sha256, hashed in parallel (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        return list(pool.map(lambda item: Artifact.of(item[0], out_dir, item[1]), outputs))
