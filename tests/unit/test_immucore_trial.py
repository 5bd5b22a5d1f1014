"""immucore on a boot on trial: the new root must have an init, and a hang is bounded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos.errors import KairosError
from kairos.immucore import normal
from kairos.immucore.bootstate import Cmdline


def _debian_like(root: Path, with_systemd: bool = True) -> Path:
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    os.symlink("usr/sbin", root / "sbin")
    os.symlink("usr/lib", root / "lib")
    os.symlink("../lib/systemd/systemd", root / "usr/sbin/init")
    if with_systemd:
        (root / "usr/lib/systemd/systemd").write_text("#!/bin/true\n")
        os.chmod(root / "usr/lib/systemd/systemd", 0o755)
    return root


def test_init_through_merged_usr_links_is_found(tmp_path: Path) -> None:
    root = _debian_like(tmp_path)
    assert normal._resolve_in(root, "/sbin/init") == root / "usr/lib/systemd/systemd"
    normal.check_init(root, None)


def test_missing_init_fails_the_boot(tmp_path: Path) -> None:
    root = _debian_like(tmp_path, with_systemd=False)
    with pytest.raises(KairosError, match="no executable init"):
        normal.check_init(root, None)


def test_init_from_the_command_line_and_absolute_links_stay_inside(tmp_path: Path) -> None:
    root = _debian_like(tmp_path)
    os.symlink("/usr/lib/systemd/systemd", root / "usr/sbin/myinit")
    normal.check_init(root, "/sbin/myinit")
    os.symlink("/../../../../bin/sh", root / "usr/sbin/escape")
    assert normal._resolve_in(root, "/sbin/escape") != Path("/bin/sh")
    with pytest.raises(KairosError):
        normal.check_init(root, "/sbin/escape")
    os.symlink("loop", root / "usr/sbin/loop")
    assert normal._resolve_in(root, "/sbin/loop") is None


def test_trial_is_read_from_the_command_line() -> None:
    assert normal.on_trial(Cmdline.parse("root=LABEL=COS_ACTIVE kairos.assessment=trying"))
    assert normal.on_trial(Cmdline.parse("kairos.assessment=fallback quiet"))
    assert not normal.on_trial(Cmdline.parse("root=LABEL=COS_ACTIVE kairos.upgrade_failure"))


def test_trial_boot_timeout_reboots_through_systemd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dropin = tmp_path / "run/systemd/system/multi-user.target.d/x.conf"
    monkeypatch.setattr(normal, "TRIAL_DROPIN", str(dropin))
    normal.write_trial_timeout(tmp_path)
    text = dropin.read_text()
    assert f"JobTimeoutSec={normal.TRIAL_BOOT_TIMEOUT}" in text
    assert "JobTimeoutAction=reboot-force" in text
