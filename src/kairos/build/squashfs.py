"""The read-only system image: squashfs of the kairosified root."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path


class Compression(StrEnum):
    FAST = "fast"  # zstd level 3: dev and CI builds (19x faster, ~10% bigger)
    RELEASE = "release"  # zstd level 19: published images
    GZIP = "gzip"  # upstream's default, for old kernels


# xattrs are kept (file capabilities); mksquashfs only warns about ACL ones.
# Never ship these: host bind-mount points' contents and caches regenerated at boot.
EXCLUDES = ("proc/*", "sys/*", "dev/*", "run/*", "tmp/*", "var/tmp/*", "var/cache/apt/*")


def mksquashfs_argv(root: Path, out: Path, compression: Compression) -> list[str]:
    comp = {
        Compression.FAST: ["-comp", "zstd", "-Xcompression-level", "3"],
        Compression.RELEASE: ["-comp", "zstd", "-Xcompression-level", "19"],
        Compression.GZIP: ["-comp", "gzip"],
    }[compression]
    return [
        "mksquashfs", str(root), str(out), *comp, "-noappend", "-quiet", "-no-progress",
        "-wildcards", "-e", *EXCLUDES,
    ]  # fmt: skip
