"""The read-only system image: squashfs of the kairosified root."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path


class Compression(StrEnum):
    """Every choice is one GRUB 2.06's squash4 reads (gzip, xz): the installer copies the
    live medium's squashfs byte for byte into the system slots, and GRUB loads the kernel
    and initrd from inside them. zstd and lz4 would be faster but GRUB cannot read them."""

    FAST = "fast"  # gzip level 1, 1 MiB blocks: dev and CI builds (~1.5x zstd-3's time)
    RELEASE = "release"  # xz with the x86 filter: published images, smallest
    GZIP = "gzip"  # gzip level 9: upstream's default


# xattrs are kept (file capabilities); mksquashfs only warns about ACL ones.
# Never ship these: host bind-mount points' contents and caches regenerated at boot.
EXCLUDES = ("proc/*", "sys/*", "dev/*", "run/*", "tmp/*", "var/tmp/*", "var/cache/apt/*")


def mksquashfs_argv(root: Path, out: Path, compression: Compression) -> list[str]:
    comp = {
        Compression.FAST: ["-comp", "gzip", "-Xcompression-level", "1", "-b", "1M"],
        Compression.RELEASE: ["-comp", "xz", "-Xbcj", "x86", "-b", "1M"],
        Compression.GZIP: ["-comp", "gzip"],
    }[compression]
    return [
        "mksquashfs", str(root), str(out), *comp, "-noappend", "-quiet", "-no-progress",
        "-wildcards", "-e", *EXCLUDES,
    ]  # fmt: skip
