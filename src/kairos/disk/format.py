"""Making filesystems with labels, and finding partitions again by label (never by index)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from kairos.disk.partition import Filesystem
from kairos.errors import KairosError
from kairos.run import run

# The tool per filesystem and the package that ships it on Debian (for the hint).
MKFS_TOOLS = {
    Filesystem.VFAT: ("mkfs.vfat", "dosfstools"),
    Filesystem.EXT2: ("mkfs.ext2", "e2fsprogs"),
    Filesystem.EXT3: ("mkfs.ext3", "e2fsprogs"),
    Filesystem.EXT4: ("mkfs.ext4", "e2fsprogs"),
    Filesystem.XFS: ("mkfs.xfs", "xfsprogs"),
    Filesystem.BTRFS: ("mkfs.btrfs", "btrfs-progs"),
}
# vfat labels are at most 11 characters; ext* 16; xfs 12; btrfs 255.
LABEL_LIMITS = {
    Filesystem.VFAT: 11,
    Filesystem.EXT2: 16,
    Filesystem.EXT3: 16,
    Filesystem.EXT4: 16,
    Filesystem.XFS: 12,
    Filesystem.BTRFS: 255,
}


def mkfs_argv(device: str, fs: Filesystem, label: str | None) -> list[str] | None:
    """The command that formats `device`; None for `none` (left unformatted)."""
    if fs is Filesystem.NONE:
        return None
    tool = MKFS_TOOLS[fs][0]
    if fs is Filesystem.VFAT:
        # FAT32 as the UEFI spec asks for an ESP; -I: the target is a partition, no question.
        argv = [tool, "-F", "32", "-I"]
        return [*argv, *(["-n", label] if label else []), device]
    if fs in (Filesystem.XFS, Filesystem.BTRFS):
        return [tool, "-f", *(["-L", label] if label else []), device]
    # -F: the target is a partition we just created; mke2fs would ask otherwise.
    return [tool, "-F", "-q", *(["-L", label] if label else []), device]


def label_problem(fs: Filesystem, label: str) -> str | None:
    limit = LABEL_LIMITS.get(fs)
    if limit is not None and len(label) > limit:
        return f"label {label!r} is longer than {fs} allows ({limit} characters)"
    return None


def make_filesystem(device: str, fs: Filesystem, label: str | None) -> None:
    argv = mkfs_argv(device, fs, label)
    if argv is not None:
        run(argv)


def probe_labels(devices: list[str]) -> Mapping[str, str]:
    """label -> device for the given partitions, read from the disk itself (blkid -p).

    `-p` probes the superblocks directly, so a stale blkid cache or a slow udev cannot lie.
    """
    found: dict[str, str] = {}
    for dev in devices:
        result = run(["blkid", "-p", "-o", "export", dev], check=False)
        for line in result.stdout.splitlines():
            key, _, value = line.partition("=")
            if key == "LABEL" and value:
                found[value] = dev
    return found


def find_by_label(labels: Mapping[str, str], label: str) -> Path:
    try:
        return Path(labels[label])
    except KeyError:
        raise KairosError(
            f"no partition labelled {label} after formatting.",
            hint="the kernel may not have re-read the partition table; check `lsblk -f`",
        ) from None
