from __future__ import annotations

import subprocess
import sys

import pytest

from kairos import __version__
from kairos.cli import build_parser, main


def test_version_fast_path(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"kairos-py {__version__}"


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    names = list(sub.choices)  # type: ignore[attr-defined]
    assert "version" in names
    for name in names:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage:" in capsys.readouterr().out


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage:" in capsys.readouterr().out


def test_entry_points_installed(allow_commands: None) -> None:
    for exe in ("kairos", "kairos-agent"):
        out = subprocess.run(
            [sys.prefix + f"/bin/{exe}", "--version"], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == f"kairos-py {__version__}"
