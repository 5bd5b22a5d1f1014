"""Mounts as context managers, released in reverse order through the caller's ExitStack."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from kairos.run import run

log = logging.getLogger("kairos.disk")


def mount_argv(
    source: str | Path, target: Path, *, fstype: str | None = None, options: Sequence[str] = ()
) -> list[str]:
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", ",".join(options)]
    return [*argv, str(source), str(target)]


@contextmanager
def mounted(
    source: str | Path,
    target: Path,
    *,
    fstype: str | None = None,
    options: Sequence[str] = (),
) -> Iterator[Path]:
    """Mount `source` on `target` (created if missing) and unmount it on the way out."""
    target.mkdir(parents=True, exist_ok=True)
    run(mount_argv(source, target, fstype=fstype, options=options))
    try:
        yield target
    finally:
        unmount(target)


@contextmanager
def bound(source: Path, target: Path, *, read_only: bool = False) -> Iterator[Path]:
    """A bind mount (non-recursive: the caller binds what it needs, and unbinds it all)."""
    target.mkdir(parents=True, exist_ok=True)
    run(["mount", "--bind", str(source), str(target)])
    try:
        if read_only:
            run(["mount", "-o", "remount,bind,ro", str(target)])
        yield target
    finally:
        unmount(target)


def unmount(target: Path) -> None:
    result = run(["umount", str(target)], check=False)
    if result.returncode != 0:
        # Something still has a file open (a daemon a hook started); detach it lazily so the
        # operation can finish, and say so.
        log.warning("%s: busy, unmounting lazily: %s", target, result.stderr.strip())
        run(["umount", "--lazy", str(target)], check=False)


def is_mountpoint(path: Path) -> bool:
    """Whether something is mounted exactly at `path` (from /proc/self/mountinfo)."""
    want = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return False
    return any(line.split()[4].replace("\\040", " ") == want for line in lines)


_FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
_FITHAW = 0xC0045878  # _IOWR('X', 120, int)


def checkpoint(part: Path) -> None:
    """Write the journal of the partition's file system back to its final place.

    GRUB reads ext4 without replaying the journal: after a power cut it would see the
    state before the last committed renames while Linux (which replays it) sees the state
    after, and the kernel GRUB loads could come from another image than the root immucore
    mounts. A freeze checkpoints the journal (jbd2 flush); the thaw follows at once.
    Only on a mount point of its own: never on a directory of some other file system.
    """
    import fcntl

    if not is_mountpoint(part):
        return
    fd = os.open(part, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, _FIFREEZE, 0)
        fcntl.ioctl(fd, _FITHAW, 0)
    except OSError as exc:
        log.warning("%s: cannot checkpoint the journal (%s); GRUB may see older state "
                    "after a power cut until the next clean mount", part, exc)  # fmt: skip
    finally:
        os.close(fd)
