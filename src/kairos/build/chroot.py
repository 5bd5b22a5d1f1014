"""Bind mounts for running tools inside a root (dracut, apt), always released in reverse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from kairos.run import run

_BINDS = ("dev", "proc", "sys")


@contextmanager
def chroot_mounts(root: Path) -> Iterator[Path]:
    """/dev, /proc and /sys bound into `root` for the duration; unmounted even on error
    (a leftover bind would end up inside the squashfs and pin the host's /dev)."""
    with ExitStack() as stack:
        for name in _BINDS:
            target = root / name
            target.mkdir(exist_ok=True)
            run(["mount", "--rbind", f"/{name}", str(target)])
            run(["mount", "--make-rslave", str(target)])
            stack.callback(run, ["umount", "-R", "-l", str(target)])
        yield root
