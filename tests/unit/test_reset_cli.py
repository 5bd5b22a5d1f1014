"""`kairos-agent reset` from the command line, the countdown, and the statereset resource."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import kairos
from kairos.agent import reset_cli
from kairos.cli import main
from kairos.config.validate import validate_text
from kairos.errors import KairosError
from kairos.stages.loader import parse_text
from tests.unit.test_reset import FakeTools, lsblk_json, squashfs_bytes

RESET_CONFIG = Path(kairos.__file__).parent / "resources/system-oem/51_reset.yaml"


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    fake = FakeTools(lsblk_json())
    monkeypatch.setattr("kairos.run._spawn", fake)
    monkeypatch.setattr("kairos.agent.reset.which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr("kairos.agent.install.vfat_mountable", lambda ctx: True)
    monkeypatch.setattr(reset_cli, "has_cap_sys_admin", lambda: True)
    return fake


def recovery_node(tmp_path: Path, sentinel: str = "recovery_mode", config: str = "") -> Path:
    root = tmp_path / "node"
    (root / "run/cos").mkdir(parents=True)
    (root / "run/cos" / sentinel).touch()
    (root / "run/cos/recovery/cOS").mkdir(parents=True)
    (root / "run/cos/recovery/cOS/recovery.img").write_bytes(squashfs_bytes())
    if config:
        (root / "oem").mkdir()
        (root / "oem/90_custom.yaml").write_text(config)
    return root


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["reset", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "kairos-agent reset --unattended --reboot" in out
    assert "--no-reset-persistent" in out


def test_dry_run_json_uses_config_and_flags(
    tmp_path: Path, tools: FakeTools, capsys: pytest.CaptureFixture[str]
) -> None:
    root = recovery_node(tmp_path, config="#cloud-config\nreset:\n  reset-oem: true\n")
    code = main(["--root", str(root), "reset", "--dry-run", "--json", "--no-reset-persistent"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0, out
    assert out["problems"] == []
    assert [f["label"] for f in out["plan"]["format"]] == ["COS_OEM", "COS_STATE"]
    assert out["plan"]["power"] == "none"
    assert not tools.named("mkfs.ext4")


def test_dry_run_outside_recovery_lists_problems(
    tmp_path: Path, tools: FakeTools, capsys: pytest.CaptureFixture[str]
) -> None:
    root = recovery_node(tmp_path, sentinel="active_mode")
    assert main(["--root", str(root), "reset", "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "problem: boot state: active_boot" in err
    assert "1 problem(s): reset would refuse." in err


def test_refusal_writes_nothing(
    tmp_path: Path, tools: FakeTools, capsys: pytest.CaptureFixture[str]
) -> None:
    root = recovery_node(tmp_path, sentinel="active_mode")
    assert main(["--root", str(root), "reset", "--unattended"]) == 1
    err = capsys.readouterr().err
    assert "reset refused: 1 problem(s); nothing was written." in err
    written = {c[0] for c in tools.calls} - {"lsblk", "blkid", "mount", "umount", "unsquashfs"}
    assert written == set()


def test_needs_root_unless_dry_run(
    tmp_path: Path,
    tools: FakeTools,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(reset_cli, "has_cap_sys_admin", lambda: False)
    root = recovery_node(tmp_path)
    assert main(["--root", str(root), "reset", "--unattended"]) == 1
    assert "reset needs root (CAP_SYS_ADMIN)" in capsys.readouterr().err
    assert tools.calls == []


def test_unattended_reset_reboots(
    tmp_path: Path,
    tools: FakeTools,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("kairos.bootloader.install.install_grub", lambda *a, **kw: None)
    monkeypatch.setattr("kairos.agent.reset.current_mounts", lambda device: [])
    monkeypatch.setattr(
        reset_cli, "countdown", lambda *a: pytest.fail("--unattended must not count down")
    )
    monkeypatch.setenv("KAIROS_AGENT_PROGRESS", "1")
    root = recovery_node(tmp_path)
    assert main(["--root", str(root), "reset", "--unattended", "--reboot"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert lines[-1] == {"event": "finished", "device": "/dev/vda"}
    assert tools.calls[-1] == ("/usr/bin/systemctl", "reboot")
    assert (root / "run/cos/state/cOS/active.img").read_bytes() == squashfs_bytes()


def test_interactive_reset_counts_down_first(
    tmp_path: Path, tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []

    def abort(seconds: int) -> None:
        seen.append((seconds, len(tools.named("mkfs.ext4"))))
        raise KairosError("reset aborted (Ctrl-C); nothing was changed.")

    monkeypatch.setattr(reset_cli, "countdown", abort)
    root = recovery_node(tmp_path)
    assert main(["--root", str(root), "reset"]) == 1
    assert seen == [(60, 0)]
    assert tools.named("mkfs.ext4") == []


def test_countdown_sleeps_then_ctrl_c_aborts(capsys: pytest.CaptureFixture[str]) -> None:
    slept: list[float] = []
    reset_cli.countdown(3, slept.append)
    assert slept == [1, 1, 1]
    assert "reset starts in  1 s" in capsys.readouterr().err

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KairosError, match="nothing was changed"):
        reset_cli.countdown(60, interrupted)


# --- the statereset entry's config -------------------------------------------------------------


def test_statereset_config_validates() -> None:
    report = validate_text(RESET_CONFIG.read_text(), str(RESET_CONFIG), strict=True)
    assert report.errors == ()


def test_statereset_starts_an_unattended_rebooting_reset() -> None:
    parsed = parse_text(RESET_CONFIG.read_text(), str(RESET_CONFIG), lambda text, _: text)
    assert parsed.problems == ()
    (step,) = parsed.stages["boot"]
    assert "grep -qw kairos.reset /proc/cmdline" in step.conditions.if_
    assert "/run/cos/autoreset_mode" in step.conditions.if_
    (unit,) = step.files
    assert unit.path == "/etc/systemd/system/kairos-reset.service"
    assert unit.permissions == 0o644
    assert "ExecStart=/usr/bin/kairos-agent reset --unattended --reboot\n" in unit.content
    assert "ConditionPathExists=!/run/cos/reset-started" in unit.content
    assert step.commands == (
        "systemctl daemon-reload",
        "systemctl start --no-block kairos-reset.service",
    )
