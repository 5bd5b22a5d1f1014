"""Writing under the target root safely: chroot-style path resolution and atomic writes.

Under `--root DIR` an absolute symlink inside DIR (Debian's /etc/resolv.conf, for one)
must resolve inside DIR, never on the host, so every path a step touches goes through
`rooted()`, which follows links the way the kernel would after `chroot DIR`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath

from kairos.context import Context
from kairos.errors import KairosError

_MAX_LINKS = 40


def rooted(ctx: Context, node_path: str, follow_last: bool = True) -> Path:
    """The host path of `node_path` as seen from inside the root."""
    if not node_path.startswith("/"):
        raise KairosError(f"{node_path}: not an absolute path.", hint="write it as /dir/file")
    if ctx.is_host_root:
        return Path(os.path.normpath(node_path))
    root = ctx.root
    done: list[str] = []
    todo = [p for p in PurePosixPath(node_path).parts[1:]]
    links = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if done:
                done.pop()
            continue
        candidate = root.joinpath(*done, part)
        if candidate.is_symlink() and (todo or follow_last):
            links += 1
            if links > _MAX_LINKS:
                raise KairosError(f"{node_path}: too many levels of symbolic links.")
            target = os.readlink(candidate)
            if target.startswith("/"):
                done = []
            todo = [p for p in PurePosixPath(target).parts if p != "/"] + todo
            continue
        done.append(part)
    return root.joinpath(*done)


def ensure_dir(ctx: Context, node_path: str, mode: int = 0o755) -> Path:
    """mkdir -p inside the root; existing directories keep their mode."""
    path = rooted(ctx, node_path)
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    return path


def write_atomic(
    ctx: Context,
    node_path: str,
    data: bytes,
    mode: int = 0o644,
    uid: int | None = None,
    gid: int | None = None,
) -> Path:
    """Write a whole file: temp file beside it, fsync, chmod/chown, rename over."""
    path = rooted(ctx, node_path)
    parent = path.parent
    if not parent.is_dir():
        ensure_dir(ctx, str(PurePosixPath(node_path).parent))
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        if uid is not None or gid is not None:
            os.chown(tmp, -1 if uid is None else uid, -1 if gid is None else gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_text(ctx: Context, node_path: str) -> str:
    """The file's text, or "" when it does not exist."""
    try:
        return rooted(ctx, node_path).read_text()
    except FileNotFoundError:
        return ""
