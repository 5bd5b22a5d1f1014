"""GPT layouts: which partitions, in which order, how big, and the sfdisk call that writes them.

A `Layout` is pure data (unit-testable, printable by `--dry-run`); `place()` turns it into
offsets on a disk of a given size, and `sfdisk_script()` into the exact table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from kairos.errors import KairosError

MIB = 1 << 20
# sfdisk aligns the first partition at 1 MiB and keeps 33 sectors for the backup GPT at the
# end; one MiB each side covers both for any sector size up to 4 KiB.
GPT_OVERHEAD_MIB = 2
# The partition that takes "the rest of the disk" must get at least this much.
REST_MIN_MIB = 64


class Role(StrEnum):
    """What a partition is for; the GPT name is the role's value, as upstream names them."""

    BIOS = "bios"
    EFI = "efi"
    OEM = "oem"
    RECOVERY = "recovery"
    STATE = "state"
    PERSISTENT = "persistent"
    EXTRA = "extra"


class Filesystem(StrEnum):
    NONE = "none"
    VFAT = "vfat"
    EXT2 = "ext2"
    EXT3 = "ext3"
    EXT4 = "ext4"
    XFS = "xfs"
    BTRFS = "btrfs"


# GPT type codes (sgdisk short codes, as `--dry-run` and gdisk show them): BIOS boot, EFI
# system, Linux filesystem; and the GUIDs they stand for, which sfdisk takes.
TYPE_CODES = {Role.BIOS: "EF02", Role.EFI: "EF00"}
LINUX_TYPE = "8300"
TYPE_GUIDS = {
    "EF02": "21686148-6449-6E6F-744E-656564454649",
    "EF00": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
    LINUX_TYPE: "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
}


@dataclass(frozen=True)
class Partition:
    """One partition of a layout; `size_mib == 0` means the rest of the disk."""

    role: Role
    name: str
    label: str | None
    size_mib: int
    fs: Filesystem

    @property
    def type_code(self) -> str:
        return TYPE_CODES.get(self.role, LINUX_TYPE)

    def to_json(self) -> dict[str, Any]:
        return {
            "role": str(self.role),
            "name": self.name,
            "label": self.label,
            "size_mib": self.size_mib,
            "fs": str(self.fs),
            "type": self.type_code,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Partition:
        return cls(
            role=Role(data["role"]),
            name=str(data["name"]),
            label=data.get("label"),
            size_mib=int(data["size_mib"]),
            fs=Filesystem(data["fs"]),
        )


@dataclass(frozen=True)
class Placed:
    """A partition with its number and where it lands on a given disk."""

    number: int
    partition: Partition
    start_mib: int
    size_mib: int


@dataclass(frozen=True)
class Layout:
    partitions: tuple[Partition, ...]

    @property
    def fixed_mib(self) -> int:
        return sum(p.size_mib for p in self.partitions)

    @property
    def rest(self) -> Partition | None:
        return next((p for p in self.partitions if p.size_mib == 0), None)

    def min_disk_bytes(self) -> int:
        """The smallest disk this layout fits on (the rest-of-disk part gets REST_MIN_MIB)."""
        rest = REST_MIN_MIB if self.rest is not None else 0
        return (self.fixed_mib + rest + GPT_OVERHEAD_MIB) * MIB

    def place(self, disk_bytes: int) -> tuple[Placed, ...]:
        """Numbers and offsets on a disk of `disk_bytes` (sfdisk's 1 MiB alignment)."""
        usable = disk_bytes // MIB - GPT_OVERHEAD_MIB
        rest_size = max(usable - self.fixed_mib, 0)
        out: list[Placed] = []
        start = 1
        for number, part in enumerate(self.partitions, start=1):
            size = part.size_mib or rest_size
            out.append(Placed(number, part, start, size))
            start += size
        return tuple(out)

    def by_role(self, role: Role) -> Partition | None:
        return next((p for p in self.partitions if p.role is role), None)

    def to_json(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.partitions]

    @classmethod
    def from_json(cls, data: Sequence[dict[str, Any]]) -> Layout:
        return cls(tuple(Partition.from_json(p) for p in data))


def mib_for(size_bytes: int) -> int:
    """Bytes rounded up to whole MiB."""
    return max(1, math.ceil(size_bytes / MIB))


def wipe_argv(disk: str) -> list[str]:
    """Erase every signature on the disk (both GPT copies, MBR, filesystem and RAID magic),
    so no stale ISO or LVM label at the disk's start outlives the new table.

    wipefs rather than `sgdisk --zap-all`: sgdisk sleeps a second per call for the kernel to
    re-read the table, and sfdisk writing the new table makes the kernel re-read it anyway."""
    return ["wipefs", "--all", "--force", disk]


def sfdisk_argv(disk: str) -> list[str]:
    """sfdisk reading `sfdisk_script()` on stdin: a fresh GPT and every partition in one write.

    sfdisk rather than sgdisk: sgdisk sleeps a second after each write for the kernel to
    re-read the table (a third of a small install's fixed cost); sfdisk tells the kernel
    itself (BLKRRPART) and returns. It also refuses a disk with a mounted partition."""
    return ["sfdisk", "--quiet", "--wipe", "always", disk]


def sfdisk_script(layout: Layout) -> str:
    """The table for `sfdisk_argv`: sizes in MiB, GPT type GUIDs and names, in layout order.

    A partition without a size takes the rest of the disk (the layout puts it last)."""
    problems = [
        f"partition {p.name!r}: a GPT name cannot hold quotes, backslashes or line breaks"
        for p in layout.partitions
        if any(c in p.name for c in '"\\\n\r')
    ]
    if problems:
        raise KairosError("bad partition names: " + "; ".join(problems) + ".")
    # No first-lba: sfdisk's default puts the first partition at 1 MiB for any sector size.
    lines = ["label: gpt"]
    for part in layout.partitions:
        size = f"size={part.size_mib}MiB, " if part.size_mib else ""
        lines.append(f'{size}type={TYPE_GUIDS[part.type_code]}, name="{part.name}"')
    return "\n".join(lines) + "\n"


def partition_path(disk: str, number: int) -> str:
    """The kernel's name for partition `number` (`/dev/sda1`, `/dev/nvme0n1p1`, `/dev/loop0p1`)."""
    sep = "p" if disk[-1].isdigit() else ""
    return f"{disk}{sep}{number}"
