"""What an upgrade will do, decided and checked before anything is written.

`make_plan` reads the boot state, the source (unpacking `ocifile:`/`oci-dir:` into a scratch
directory on COS_PERSISTENT, as upstream uses it for temporary space), the versions, the slot
sizes and the free space of the partition that receives the image; every problem is
reported together, and a plan exists only when there is none.

Slots: COS_STATE holds two images, never a third. Booted from active (or recovery), the
passive slot is freed first and the new image written beside active, then the two swap names
atomically (renameat2 RENAME_EXCHANGE) and the old active becomes passive. Booted from
passive (after a fallback), the active slot, the one that failed, is the one replaced: the
system known to work is never touched.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from kairos.agent.install_plan import (
    GRUB_READABLE,
    KERNEL_FILES,
    PASSIVE,
    RECOVERY,
    Power,
    squashfs_compression,
    tree_size,
)
from kairos.agent.state import BootState
from kairos.context import Context

MIB = 1 << 20
STATE_MOUNT = "/run/initramfs/cos-state"  # immucore mounts COS_STATE here, read-only
WORK_DIR = "/run/cos"
SCRATCH = "/usr/local/.kairos-upgrade"  # on COS_PERSISTENT
TRANSITION = "/cOS/transition.img"
RELEASE = "/etc/kairos-release"
# A squashfs made from a tree is this fraction of the tree's apparent size at most, for the
# roots we build (gzip: 0.31 measured on a Debian root, bench/image_formats.py); the rest is
# margin. A source that still does not fit fails cleanly (ENOSPC) with the slot left empty.
SQUASH_RATIO = 0.5
MARGIN_BYTES = 32 * MIB
SCHEMES = ("dir", "file", "ocifile", "oci-dir", "oci", "docker")
SCHEME_HINT = "use dir:PATH, file:IMAGE.squashfs, ocifile:ARCHIVE.tar or oci-dir:LAYOUT"


class Target(StrEnum):
    ACTIVE = "active"
    RECOVERY = "recovery"


class SourceKind(StrEnum):
    DIR = "dir"  # a root tree: packed with mksquashfs
    IMAGE = "file"  # a GRUB-readable squashfs image: copied byte for byte
    OCI = "oci"  # an image archive or layout: unpacked, then packed


@dataclass(frozen=True)
class UpgradeOptions:
    source: str = ""
    recovery: bool = False
    force: bool = False
    excluded: tuple[str, ...] = ()
    power: Power = Power.NONE
    tries: int = 0  # boot assessment tries (0: the default)
    health_timeout: int = 0


@dataclass(frozen=True)
class UpgradeSource:
    kind: SourceKind
    spec: str
    path: str  # node path: the tree (dir/oci, once unpacked) or the image file
    size_bytes: int  # image bytes (file) or the estimate of the packed tree
    version: str
    unpack_from: str = ""  # the archive or layout an OCI source is unpacked from
    root: str = ""  # node path of the new system's tree, readable during the upgrade

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "spec": self.spec,
            "path": self.path,
            "size_bytes": self.size_bytes,
            "version": self.version,
        }


@dataclass(frozen=True)
class UpgradePlan:
    target: Target
    boot: BootState
    source: UpgradeSource
    running_version: str
    partition_dir: str  # node path where the receiving partition is (or will be) mounted
    image: str  # the slot the new image ends in (/cOS/active.img or recovery.img)
    rotate_to: str  # where the replaced image goes ("" = it is dropped)
    free_bytes: int
    needed_bytes: int
    options: UpgradeOptions
    no_op: bool = False
    in_place: bool = False  # recovery only: no room for a second image
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": str(self.target),
            "boot": str(self.boot),
            "source": self.source.to_json(),
            "running_version": self.running_version,
            "image": self.image,
            "replaced_image_goes_to": self.rotate_to or "dropped",
            "free_bytes": self.free_bytes,
            "needed_bytes": self.needed_bytes,
            "no_op": self.no_op,
            "boot_assessment_tries": self.options.tries,
            "warnings": list(self.warnings),
        }

    def describe(self) -> list[str]:
        s = self.source
        lines = [
            f"upgrade {self.target} from {s.spec} ({s.kind}, version {s.version or 'unknown'})",
            f"  running: {self.running_version or 'unknown'} ({self.boot})",
            f"  new image: {self.image} ({_mib(s.size_bytes)}"
            f"{' estimated' if s.kind is not SourceKind.IMAGE else ''})",
            f"  replaced image: {self.rotate_to or 'dropped'}",
            f"  space: {_mib(self.needed_bytes)} needed, {_mib(self.free_bytes)} available",
        ]
        if self.target is Target.ACTIVE:
            lines.append(f"  boot assessment: {self.options.tries} tries, then fallback")
        if self.no_op:
            lines.append(f"  nothing to do: {s.version} is already running (--force to redo)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return lines


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"


def parse_release(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            out[key.strip()] = value.strip().strip("\"'")
    return out


def release_version(root: Path) -> str:
    """KAIROS_VERSION of the system rooted at `root` (empty when it has none)."""
    try:
        data = parse_release((root / RELEASE.lstrip("/")).read_text(errors="replace"))
    except OSError:
        return ""
    return data.get("KAIROS_VERSION") or data.get("KAIROS_RELEASE", "")


def options_from(merged: Mapping[str, Any], cli: Mapping[str, Any]) -> UpgradeOptions:
    """Command-line flags first, then the `upgrade:` config (upstream's fallbacks)."""
    from kairos.bootloader.assessment import DEFAULT_TRIES

    up = merged.get("upgrade") if isinstance(merged.get("upgrade"), Mapping) else {}
    assert isinstance(up, Mapping)
    recovery = bool(cli.get("recovery")) or up.get("recovery") is True
    source = str(cli.get("source") or "")
    if not source:
        key = "recovery-system" if recovery else "system"
        image = up.get(key) if isinstance(up.get(key), Mapping) else {}
        assert isinstance(image, Mapping)
        source = str(image.get("uri") or image.get("source") or "")
    excluded = tuple(str(p) for p in (cli.get("exclude_path") or ()))
    excluded += tuple(str(p) for p in up.get("excluded-paths") or () if isinstance(p, str))
    power = Power.NONE
    if cli.get("reboot") or up.get("reboot") is True:
        power = Power.REBOOT
    if cli.get("poweroff") or up.get("poweroff") is True:
        power = Power.POWEROFF
    ba = merged.get("boot-assessment") if isinstance(merged.get("boot-assessment"), Mapping) else {}
    assert isinstance(ba, Mapping)
    tries = ba.get("tries", DEFAULT_TRIES)
    timeout = ba.get("timeout", 300)
    return UpgradeOptions(
        source=source,
        recovery=recovery,
        force=bool(cli.get("force")),
        excluded=excluded,
        power=power,
        tries=tries if isinstance(tries, int) and not isinstance(tries, bool) else DEFAULT_TRIES,
        health_timeout=timeout if isinstance(timeout, int) else 300,
    )


# --- the source ------------------------------------------------------------------------------


def _kernel_missing(root: Path, where: str) -> list[str]:
    return [
        f"{where}: {f} is missing (GRUB boots the kernel and initrd inside the image: "
        "build the source with kairos build)"
        for f in KERNEL_FILES
        if not os.path.lexists(root / f.lstrip("/"))
    ]


def parse_source(spec: str) -> tuple[str, str, list[str]]:
    """(scheme, value, problems) of an upgrade source."""
    scheme, sep, value = spec.partition(":")
    if not spec:
        return "", "", ["upgrade.source: no source given (--source, or upgrade.system.uri)"]
    if not sep or not value or scheme not in SCHEMES:
        return scheme, value, [f"upgrade.source: {spec!r}: unknown source scheme ({SCHEME_HINT})"]
    if scheme in ("oci", "docker"):
        return (
            scheme,
            value,
            [
                f"upgrade.source: {spec!r}: registry not reachable from this node (no registry "
                "client; copy the image as an archive and use ocifile:ARCHIVE.tar or oci-dir:DIR)"
            ],
        )
    return scheme, value, []


def inspect_tree(ctx: Context, spec: str, node_path: str, kind: SourceKind) -> UpgradeSource:
    root = ctx.path(node_path)
    size = int(tree_size(root) * SQUASH_RATIO) + MARGIN_BYTES
    return UpgradeSource(kind, spec, node_path, size, release_version(root), root=node_path)


def check_tree(ctx: Context, spec: str, node_path: str) -> list[str]:
    root = ctx.path(node_path)
    where = f"upgrade.source {spec}"
    if not root.is_dir():
        return [f"{where}: {node_path} is not a directory"]
    if not any((root / d).is_dir() for d in ("usr", "etc")):
        return [f"{where}: {node_path} does not look like a root filesystem (no usr/, etc/)"]
    return _kernel_missing(root, where)


def check_image(ctx: Context, spec: str, node_path: str) -> list[str]:
    host = ctx.path(node_path)
    where = f"upgrade.source {spec}"
    if not host.is_file():
        return [f"{where}: {node_path} does not exist (give a squashfs image file)"]
    comp = squashfs_compression(host)
    if comp is None:
        return [f"{where}: {node_path} is not a squashfs image (make one with mksquashfs)"]
    if comp not in GRUB_READABLE:
        return [f"{where}: {node_path} is {comp}-compressed, which GRUB cannot read "
                "(repack it with -comp gzip, or use dir:)"]  # fmt: skip
    return []


# --- space -----------------------------------------------------------------------------------


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def file_size(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def slot_files(target: Target, boot: BootState) -> tuple[str, str, str]:
    """(image, replaced goes to, slot freed before writing) for this upgrade."""
    if target is Target.RECOVERY:
        return RECOVERY.file, "", ""
    if boot is BootState.PASSIVE:
        # The active slot holds what failed; passive is what works: keep it.
        return "/cOS/active.img", "", "/cOS/active.img"
    return "/cOS/active.img", PASSIVE.file, PASSIVE.file


def space_problems(
    target: Target, partition: Path, boot: BootState, needed: int
) -> tuple[int, list[str], list[str], bool]:
    """(available bytes, problems, warnings, replace in place): the receiving partition once
    the freed slot and any half-written transition image of an interrupted upgrade are gone."""
    image, _rotate, freed = slot_files(target, boot)
    available = free_bytes(partition) + file_size(partition / TRANSITION.lstrip("/"))
    if freed:
        available += file_size(partition / freed.lstrip("/"))
    warnings: list[str] = []
    if target is Target.RECOVERY and available < needed:
        # COS_RECOVERY holds one image: replace it in place when no room for a second.
        with_old = available + file_size(partition / image.lstrip("/"))
        if with_old >= needed:
            warnings.append(
                "COS_RECOVERY has no room for a second image: the recovery image is replaced "
                "in place (recovery cannot boot until the write ends; active and passive can)"
            )
            return with_old, [], warnings, True
    if available < needed:
        label = "COS_RECOVERY" if target is Target.RECOVERY else "COS_STATE"
        return (
            available,
            [
                f"{label}: {_mib(needed)} needed for the new image, {_mib(available)} available "
                f"(two images must fit; install with a bigger install.partitions.state.size, or "
                "use a smaller image)"
            ],
            warnings,
            False,
        )
    return available, [], warnings, False


def running_version(ctx: Context) -> str:
    return release_version(ctx.path("/"))


def boot_problems(boot: BootState, target: Target) -> list[str]:
    if boot is BootState.LIVECD:
        return ["boot: running from live media; upgrades run on an installed system "
                "(install first with kairos-agent install)"]  # fmt: skip
    if boot in (BootState.AUTORESET, BootState.UNKNOWN):
        return [f"boot: {boot}: not an installed system booted from active, passive or recovery"]
    if target is Target.RECOVERY and boot is BootState.RECOVERY:
        return ["boot: running from recovery; boot active (or passive) to upgrade recovery"]
    return []


def excluded_problems(excluded: Sequence[str]) -> list[str]:
    return [
        f"upgrade.excluded-paths: {p!r} must be an absolute path inside the image"
        for p in excluded
        if not p.startswith("/") or ".." in p.split("/")
    ]
