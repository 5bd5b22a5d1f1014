"""The auto-install resources the builder ships: valid, and wired as the issue describes."""

from __future__ import annotations

from pathlib import Path

import kairos
from kairos.config.validate import validate_text
from kairos.stages.loader import parse_text

RESOURCES = Path(kairos.__file__).parent / "resources"
CONFIG = RESOURCES / "system-oem/52_installer.yaml"
UNIT = RESOURCES / "systemd/kairos-installer.service"


def test_installer_config_validates() -> None:
    report = validate_text(CONFIG.read_text(), str(CONFIG), strict=True)
    assert report.errors == ()


def test_installer_step_starts_the_unit_only_live_with_install_auto() -> None:
    parsed = parse_text(CONFIG.read_text(), str(CONFIG), lambda text, _: text)
    assert parsed.problems == ()
    (step,) = parsed.stages["boot"]
    assert "/run/cos/live_mode" in step.conditions.if_
    assert "kairos-agent config get install.auto" in step.conditions.if_
    assert [f.path for f in step.files] == ["/etc/systemd/system/kairos-installer.service"]
    assert step.files[0].permissions == 0o644
    assert "ExecStart=/usr/bin/kairos-agent install" in step.files[0].content
    assert step.commands == (
        "systemctl daemon-reload",
        "systemctl start --no-block kairos-installer.service",
    )


def test_unit_runs_install_once_on_live_media() -> None:
    unit = UNIT.read_text()
    assert "ExecStart=/usr/bin/kairos-agent install\n" in unit
    assert "ConditionPathExists=/run/cos/live_mode" in unit
    assert "ConditionPathExists=!/run/cos/install-started" in unit
    # The copy the config writes is the same unit (minus comments and the Wants= line).
    body = [line for line in unit.splitlines() if line and not line.startswith(("#", "Wants="))]
    embedded = CONFIG.read_text()
    for line in body:
        assert line in embedded, line
