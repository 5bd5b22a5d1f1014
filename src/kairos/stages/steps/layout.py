"""`layout`: add partitions to a disk and grow its last one, with sgdisk, sfdisk and mkfs.

The disk is found by filesystem label, then partition label, then `path` (which may be
`script://CMD ARGS`, whose output names the device). Partitions are appended after the
existing ones; expansion happens last, as upstream documents.
"""

from __future__ import annotations

import json
import logging

from kairos.context import Context
from kairos.errors import KairosError
from kairos.run import run, run_shell
from kairos.stages.model import Layout, Partition, Step

log = logging.getLogger("kairos.stages")

_MKFS = {
    "ext2": ["mkfs.ext2", "-F", "-L"],
    "ext3": ["mkfs.ext3", "-F", "-L"],
    "ext4": ["mkfs.ext4", "-F", "-L"],
    "xfs": ["mkfs.xfs", "-f", "-L"],
    "btrfs": ["mkfs.btrfs", "-f", "-L"],
    "vfat": ["mkfs.vfat", "-n"],
    "fat": ["mkfs.vfat", "-n"],
}
_TYPECODE = {"vfat": "ef00", "fat": "ef00"}


def partition_device(disk: str, number: int) -> str:
    """/dev/sda + 3 -> /dev/sda3; /dev/nvme0n1 + 3 -> /dev/nvme0n1p3 (and loop, mmcblk)."""
    return f"{disk}p{number}" if disk[-1].isdigit() else f"{disk}{number}"


def _disk_of(partition: str) -> str:
    parent = run(["lsblk", "--noheadings", "--nodeps", "-o", "PKNAME", partition]).stdout.strip()
    return f"/dev/{parent}" if parent else partition


def resolve_device(layout: Layout, where: str) -> str:
    if layout.device_label:
        for tag in ("LABEL", "PARTLABEL"):
            found = run(
                ["blkid", "-l", "-o", "device", "-t", f"{tag}={layout.device_label}"], check=False
            ).stdout.strip()
            if found:
                return _disk_of(found)
    path = layout.device_path
    if path.startswith("script://"):
        # The script runs on the live system: it inspects real disks to pick one.
        out = run_shell(path.removeprefix("script://")).stdout.strip()
        if not out.startswith("/dev/"):
            raise KairosError(f"{where}: layout script printed {out!r}, not a /dev path.")
        return out.splitlines()[-1].strip()
    if path:
        return path
    raise KairosError(
        f"{where}: no disk with label {layout.device_label!r} found.",
        hint="check the label with 'blkid', or give device.path",
    )


def partition_sizes(disk: str) -> dict[int, int]:
    """Partition number -> size in bytes, from `sfdisk --json` ({} without a table)."""
    out = run(["sfdisk", "--json", disk], check=False).stdout
    if not out.strip():
        return {}  # no partition table yet
    try:
        table = json.loads(out)["partitiontable"]
        sector = int(table.get("sectorsize", 512))
        sizes = {}
        for part in table.get("partitions", []):
            node = str(part.get("node", ""))
            digits = node[len(node.rstrip("0123456789")) :]
            if digits:
                sizes[int(digits)] = int(part.get("size", 0)) * sector
    except (ValueError, KeyError, TypeError, AttributeError):
        raise KairosError(f"{disk}: could not read its partition table.") from None
    return sizes


def existing_partitions(disk: str) -> list[int]:
    return sorted(partition_sizes(disk))


def _add(disk: str, number: int, part: Partition) -> list[list[str]]:
    end = f"+{part.size_mib}M" if part.size_mib else "0"
    argv = ["sgdisk", f"--new={number}:0:{end}"]
    argv.append(f"--typecode={number}:{_TYPECODE.get(part.filesystem, '8300')}")
    if part.p_label:
        argv.append(f"--change-name={number}:{part.p_label}")
    if part.bootable:
        argv.append(f"--attributes={number}:set:2")
    cmds = [[*argv, disk], ["partx", "-u", disk], ["udevadm", "settle"]]
    mkfs = _MKFS.get(part.filesystem)
    if mkfs is None:
        raise KairosError(
            f"add_partitions: unknown filesystem {part.filesystem!r}.",
            hint=f"use one of {', '.join(_MKFS)}",
        )
    label = part.fs_label or part.p_label
    if label:
        cmds.append([*mkfs, label, partition_device(disk, number)])
    else:
        cmds.append([*mkfs[:-1], partition_device(disk, number)])
    return cmds


def expand(disk: str, number: int, size_mib: int) -> None:
    """Grow partition `number` to `size_mib` (0: all the free space after it), then its ext fs."""
    part = partition_device(disk, number)
    current = partition_sizes(disk).get(number, 0)
    if size_mib and size_mib << 20 <= current:
        # Expansion never shrinks: the filesystem inside would be cut.
        log.warning("%s: already %d MiB, not shrunk to %d MiB.", part, current >> 20, size_mib)
        return
    size = f"{size_mib}M" if size_mib else "+"
    # sfdisk reads "start, size" for partition N: an empty start keeps it where it is.
    run(["sfdisk", "--no-reread", "-N", str(number), disk], input=f", {size}\n")
    run(["partx", "-u", disk])
    run(["udevadm", "settle"])
    fstype = run(["blkid", "-o", "value", "-s", "TYPE", part], check=False).stdout.strip()
    if fstype in ("ext2", "ext3", "ext4"):
        # e2fsck exits 1 when it fixed something; only >= 4 is a failure.
        checked = run(["e2fsck", "-fy", part], check=False)
        if checked.returncode >= 4:
            raise KairosError(f"{part}: e2fsck failed with exit code {checked.returncode}.")
        run(["resize2fs", part])
    elif fstype:
        log.warning("%s: %s is not grown offline; grow it after mounting.", part, fstype)


def apply(step: Step, ctx: Context) -> None:
    layout = step.layout
    if layout is None:
        return
    if not ctx.owns_kernel:
        raise KairosError(
            f"{step.where}: layout changes real disks; refused under --root {ctx.root}.",
            hint="run it on the node itself (or in a VM)",
        )
    disk = resolve_device(layout, step.where)
    if layout.init_disk:
        run(["sgdisk", "--zap-all", disk])
        run(["sgdisk", "--clear", disk])
    numbers = existing_partitions(disk)
    last = numbers[-1] if numbers else 0
    for part in layout.add_partitions:
        last += 1
        for argv in _add(disk, last, part):
            run(argv)
    if layout.expand_size_mib is not None:
        if not last:
            raise KairosError(f"{step.where}: {disk} has no partition to expand.")
        expand(disk, last, layout.expand_size_mib)
