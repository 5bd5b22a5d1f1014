"""Paths under --root resolve like after `chroot`: nothing a config writes can land on the host."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos.context import Context
from kairos.errors import KairosError
from kairos.stages.paths import rooted, write_atomic


def test_dotdot_stays_inside(tmp_path: Path) -> None:
    ctx = Context(root=tmp_path)
    assert rooted(ctx, "/../../etc/passwd") == tmp_path / "etc/passwd"
    assert rooted(ctx, "/a/./b/../c") == tmp_path / "a/c"


def test_absolute_and_relative_symlinks_resolve_in_root(tmp_path: Path) -> None:
    ctx = Context(root=tmp_path)
    (tmp_path / "real").mkdir()
    os.symlink("/real", tmp_path / "abs")
    os.symlink("../../../../real", tmp_path / "rel")
    os.symlink("/etc", tmp_path / "hostetc")
    assert rooted(ctx, "/abs/f") == tmp_path / "real/f"
    assert rooted(ctx, "/rel/f") == tmp_path / "real/f"
    assert rooted(ctx, "/hostetc/passwd") == tmp_path / "etc/passwd"
    assert rooted(ctx, "/abs", follow_last=False) == tmp_path / "abs"


def test_symlink_loop_and_relative_path(tmp_path: Path) -> None:
    ctx = Context(root=tmp_path)
    os.symlink("/loop", tmp_path / "loop")
    with pytest.raises(KairosError, match="too many levels"):
        rooted(ctx, "/loop/x")
    with pytest.raises(KairosError, match="not an absolute path"):
        rooted(ctx, "etc/x")


def test_write_atomic_through_link_creates_parents(tmp_path: Path) -> None:
    ctx = Context(root=tmp_path)
    os.symlink("/var/data", tmp_path / "data")
    write_atomic(ctx, "/data/sub/file", b"x", 0o600)
    target = tmp_path / "var/data/sub/file"
    assert target.read_bytes() == b"x"
    assert target.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in target.parent.iterdir()] == ["file"]  # no temp file left
