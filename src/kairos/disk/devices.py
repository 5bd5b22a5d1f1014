"""Block devices as the installer sees them: `lsblk --json -b -O` parsed into dataclasses.

Parsing happens once, here; the install plan and its checks only read `BlockDevice`s. Names
a user gives (`/dev/sda`, `/dev/disk/by-id/...`, `auto`, `script://...`) are resolved to
one whole disk, or to the problems that keep us from using it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import PurePosixPath
from typing import Any

from kairos.context import Context
from kairos.errors import KairosError

# Devices that are never an install target for `auto`: loop, RAM disks, zram swap, optical.
VIRTUAL_PREFIXES = ("loop", "ram", "zram", "sr", "fd", "nbd")
# Where the live medium is mounted on our ISO (dracut dmsquash-live) and upstream's.
LIVE_MOUNTS = ("/run/initramfs/live", "/run/initramfs/isoscan", "/run/rootfsbase")
LIVE_LABELS = ("COS_LIVE", "EFI_LIVE")


class DeviceType(StrEnum):
    DISK = "disk"
    PART = "part"
    LOOP = "loop"
    ROM = "rom"
    LVM = "lvm"
    CRYPT = "crypt"
    RAID = "raid"
    OTHER = "other"


@dataclass(frozen=True)
class BlockDevice:
    """One node of lsblk's tree (a disk, a partition, a mapping on top of them)."""

    name: str
    path: str
    type: DeviceType
    size: int
    removable: bool = False
    read_only: bool = False
    fstype: str | None = None
    label: str | None = None
    partlabel: str | None = None
    uuid: str | None = None
    mountpoints: tuple[str, ...] = ()
    transport: str | None = None
    model: str | None = None
    children: tuple[BlockDevice, ...] = ()

    def walk(self) -> Iterator[BlockDevice]:
        """This device and everything below it."""
        yield self
        for child in self.children:
            yield from child.walk()

    @property
    def all_mountpoints(self) -> tuple[str, ...]:
        return tuple(m for d in self.walk() for m in d.mountpoints)

    @property
    def is_virtual(self) -> bool:
        return self.type in (DeviceType.LOOP, DeviceType.ROM) or self.name.startswith(
            VIRTUAL_PREFIXES
        )


def _flag(value: Any) -> bool:
    # lsblk >= 2.33 prints booleans; older ones print "0"/"1" strings.
    return value is True or value in ("1", 1)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _device(raw: Mapping[str, Any]) -> BlockDevice:
    name = str(raw.get("name") or raw.get("kname") or "")
    kind = str(raw.get("type") or "other")
    try:
        dtype = DeviceType(kind)
    except ValueError:
        dtype = DeviceType.OTHER
    points = raw.get("mountpoints")
    if not isinstance(points, list):
        points = [raw.get("mountpoint")]
    size = raw.get("size")
    return BlockDevice(
        name=name,
        path=str(raw.get("path") or f"/dev/{name}"),
        type=dtype,
        size=int(size) if isinstance(size, int | str) and str(size).isdigit() else 0,
        removable=_flag(raw.get("rm")) or (_flag(raw.get("hotplug")) and raw.get("tran") == "usb"),
        read_only=_flag(raw.get("ro")),
        fstype=_text(raw.get("fstype")),
        label=_text(raw.get("label")),
        partlabel=_text(raw.get("partlabel")),
        uuid=_text(raw.get("uuid")),
        mountpoints=tuple(p for p in points if isinstance(p, str) and p),
        transport=_text(raw.get("tran")),
        model=_text(raw.get("model")),
        children=tuple(_device(c) for c in raw.get("children") or () if isinstance(c, dict)),
    )


def parse_lsblk(text: str) -> tuple[BlockDevice, ...]:
    """Parse `lsblk --json -b -O` (sizes in bytes, the whole tree)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KairosError(f"lsblk printed invalid JSON: {exc}.") from exc
    return tuple(_device(d) for d in data.get("blockdevices") or () if isinstance(d, dict))


def list_devices() -> tuple[BlockDevice, ...]:
    """The host's block devices, right now."""
    from kairos.run import run

    return parse_lsblk(run(["lsblk", "--json", "--bytes", "--output-all"]).stdout)


def find(devices: Sequence[BlockDevice], path: str) -> BlockDevice | None:
    """The device whose path (or name) is `path`, anywhere in the tree."""
    name = PurePosixPath(path).name
    for top in devices:
        for dev in top.walk():
            if dev.path == path or (path.startswith("/dev/") and dev.name == name):
                return dev
    return None


def parent_disk(devices: Sequence[BlockDevice], dev: BlockDevice) -> BlockDevice | None:
    """The top-level disk that holds `dev`."""
    for top in devices:
        if any(d is dev for d in top.walk()):
            return top
    return None


def swap_devices(ctx: Context) -> frozenset[str]:
    """Paths of active swap devices (/proc/swaps)."""
    try:
        lines = ctx.path("/proc/swaps").read_text().splitlines()[1:]
    except OSError:
        return frozenset()
    return frozenset(line.split()[0] for line in lines if line.split())


def holders(ctx: Context, dev: BlockDevice) -> tuple[str, ...]:
    """Kernel holders (device-mapper, md, bcache) of the device or any of its partitions."""
    found: list[str] = []
    for d in dev.walk():
        base = ctx.path(f"/sys/class/block/{d.name}/holders")
        try:
            found.extend(sorted(os.listdir(base)))
        except OSError:
            continue
    return tuple(found)


def is_boot_medium(dev: BlockDevice) -> bool:
    """Whether the system we run from lives on this disk (the live medium, or the host's /)."""
    for d in dev.walk():
        if d.label in LIVE_LABELS or d.fstype == "iso9660":
            return True
        for point in d.mountpoints:
            if point == "/" or point.startswith(LIVE_MOUNTS) or point in ("/boot", "/boot/efi"):
                return True
    return False


def auto_candidates(devices: Sequence[BlockDevice]) -> list[BlockDevice]:
    """Disks `auto` may pick: whole, fixed, real, writable, and not what we booted from."""
    return [
        d
        for d in devices
        if d.type is DeviceType.DISK
        and not d.is_virtual
        and not d.removable
        and not d.read_only
        and d.size > 0
        and not is_boot_medium(d)
    ]


def pick_auto(devices: Sequence[BlockDevice]) -> BlockDevice | None:
    """The largest candidate disk; ties go to the first listed, as the kernel names them."""
    best: BlockDevice | None = None
    for d in auto_candidates(devices):
        if best is None or d.size > best.size:
            best = d
    return best


def resolve_link(ctx: Context, path: str) -> str:
    """`/dev/disk/by-*/X` (a udev symlink) to the `/dev/...` node it points at."""
    from kairos.stages.paths import rooted

    host = rooted(ctx, path)
    if ctx.is_host_root:
        return os.path.realpath(host)
    try:
        return "/" + str(host.relative_to(ctx.root))
    except ValueError:
        return str(host)
