"""Bind mounts for running tools inside a root (dracut, apt), always released in reverse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from kairos.errors import KairosError
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


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    base = str(path.resolve())
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        if len(fields) > 4:
            point = fields[4].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def remove_tree(path: Path) -> None:
    """Delete a work tree safely: release anything still mounted inside it first (a bind
    of the host's /dev must never be recursed into), then never cross a filesystem."""
    if not path.exists():
        return
    for point in mounts_under(path):
        run(["umount", "-R", "-l", str(point)], check=False)
    if mounts_under(path):
        raise KairosError(
            f"{path}: still has mounts inside; not deleting it.",
            hint=f"check 'findmnt -R {path}' and unmount them",
        )
    run(["rm", "-rf", "--one-file-system", "--", str(path)])
