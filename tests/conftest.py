"""Test tiers and the guard that keeps unit tests off the host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
EXAMPLES = SHARED / "compat" / "kairos-examples"


class HostCommandBlocked(AssertionError):
    pass


@pytest.fixture(autouse=True)
def _block_host_commands(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests cannot run real commands: a missing mock fails the test, never touches a disk."""
    if request.node.get_closest_marker("integration") or request.node.get_closest_marker("vm"):
        return
    if "allow_commands" in request.fixturenames:
        return

    def blocked(argv: Any, **_: Any) -> Any:
        raise HostCommandBlocked(f"unit test tried to run a host command: {list(argv)!r}")

    monkeypatch.setattr("kairos.run._spawn", blocked)


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point.startswith(prefix) or point == prefix[:-1]:
            found.append(point)
    return found


@pytest.fixture(autouse=True)
def _no_mounts_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that leaves a mount in its tmp dir fails, and the mount is released, so that
    pytest's later clean-up of old tmp dirs can never recurse into a bind of the host's /dev."""
    if "tmp_path" not in request.fixturenames:
        yield
        return
    tmp = request.getfixturevalue("tmp_path")  # so tmp_path is torn down after this check
    yield
    left = _mounts_under(tmp)
    if left:
        import subprocess

        for point in sorted(left, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
        pytest.fail(f"test left mounts behind under {tmp}: {left}")


@pytest.fixture
def allow_commands() -> Iterator[None]:
    """Opt a unit test into running real (harmless) commands."""
    yield


@pytest.fixture
def recorded_commands(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Replace the runner: record argv and succeed with empty output."""
    calls: list[tuple[str, ...]] = []

    def fake(argv: Any, **_: Any) -> tuple[int, bytes, bytes]:
        calls.append(tuple(argv))
        return 0, b"", b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    return calls
