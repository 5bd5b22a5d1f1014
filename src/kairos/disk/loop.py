"""Loop devices as context managers: attached on entry, always detached on exit."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kairos.run import run

log = logging.getLogger("kairos.disk")


def attach_argv(image: Path, *, partscan: bool, read_only: bool) -> list[str]:
    argv = ["losetup", "--find", "--show"]
    if partscan:
        argv.append("--partscan")
    if read_only:
        argv.append("--read-only")
    return [*argv, str(image)]


@contextmanager
def attached(image: Path, *, partscan: bool = False, read_only: bool = False) -> Iterator[Path]:
    """A loop device backed by `image` (a disk image or a filesystem image)."""
    device = Path(run(attach_argv(image, partscan=partscan, read_only=read_only)).stdout.strip())
    try:
        yield device
    finally:
        detach(device)


def detach(device: Path) -> None:
    result = run(["losetup", "--detach", str(device)], check=False)
    if result.returncode != 0:
        # Still busy (a mount we do not own); the kernel frees it when the last user goes.
        log.warning("%s: could not detach: %s", device, result.stderr.strip())
