from __future__ import annotations

import pytest

from kairos import run
from kairos.errors import CommandError, ToolMissingError
from tests.conftest import HostCommandBlocked


def test_unit_tests_cannot_reach_the_host() -> None:
    with pytest.raises(HostCommandBlocked):
        run.run(["sgdisk", "-Z", "/dev/sda"])


def test_recorded_argv(recorded_commands: list[tuple[str, ...]]) -> None:
    run.run(["mkfs.ext4", "-L", "COS_OEM", "/dev/loop0p2"])
    assert recorded_commands == [("mkfs.ext4", "-L", "COS_OEM", "/dev/loop0p2")]


def test_failure_raises_with_code_and_stderr(allow_commands: None) -> None:
    with pytest.raises(CommandError) as exc:
        run.run(["sh", "-c", "echo boom >&2; exit 3"])
    assert exc.value.returncode == 3
    assert "boom" in exc.value.message


def test_secrets_redacted_in_errors(allow_commands: None) -> None:
    with pytest.raises(CommandError) as exc:
        run.run(["sh", "-c", "echo s3cret >&2; exit 1", "s3cret"], secrets=["s3cret"])
    assert "s3cret" not in str(exc.value)


def test_environment_rebuilt(allow_commands: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEAKY", "1")
    out = run.run(["env"]).stdout
    assert "LEAKY" not in out
    assert "PATH=/usr/local/sbin" in out


def test_missing_tool(allow_commands: None) -> None:
    with pytest.raises(ToolMissingError):
        run.run(["definitely-not-a-tool-xyz"])
    with pytest.raises(ToolMissingError) as exc:
        run.require_tools(["definitely-not-a-tool-xyz", "sh"])
    assert "definitely-not-a-tool-xyz" in exc.value.message
    assert "sh," not in exc.value.message
