"""immucore's boot-state rules and the live path's sentinel files."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.immucore.__main__ import main
from kairos.immucore.bootstate import Cmdline, Mode, mode, sentinels

LIVE = (
    "BOOT_IMAGE=/boot/kernel root=live:CDLABEL=COS_LIVE rd.live.dir=/ "
    "rd.live.squashimg=rootfs.squashfs console=ttyS0,115200 rd.cos.disable"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LIVE, Mode.LIVE),
        ("root=live:PARTLABEL=COS_LIVE rd.immucore.disable", Mode.LIVE),
        ("root=live:LABEL=COS_LIVE", Mode.LIVE),
        ("root=live:http://10.0.2.2/x.squashfs netboot", Mode.LIVE),
        ("root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img", Mode.NORMAL),
        ("kairos.ram root=LABEL=COS_ACTIVE", Mode.RAM),
        ("rd.immucore.uki", Mode.UKI),
    ],
)
def test_mode(text: str, expected: Mode) -> None:
    assert mode(Cmdline.parse(text)) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (LIVE, ("live_mode",)),
        ("root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img", ("active_mode",)),
        ("root=LABEL=COS_PASSIVE", ("passive_mode",)),
        ("root=LABEL=COS_SYSTEM", ("recovery_mode",)),
        ("root=LABEL=COS_SYSTEM kairos.reset", ("autoreset_mode",)),
        ("root=/dev/vda1", ("unknown",)),
    ],
)
def test_sentinels(text: str, expected: tuple[str, ...]) -> None:
    assert sentinels(Cmdline.parse(text)) == expected


def test_cmdline_value_last_wins_and_bad_quotes() -> None:
    c = Cmdline.parse('root=a root=b x="unbalanced')
    assert c.value("root") == "b"
    assert c.has("root")


def test_live_boot_writes_live_mode(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(LIVE + "\n")
    rc = main(["--cmdline", str(cmdline), "--run", str(tmp_path / "run"), "--no-stage",
               "--sysroot", str(tmp_path / "sysroot")])  # fmt: skip
    assert rc == 0
    assert (tmp_path / "run/cos/live_mode").exists()


def test_normal_boot_writes_nothing_yet(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=LABEL=COS_ACTIVE\n")
    assert main(["--cmdline", str(cmdline), "--run", str(tmp_path / "run")]) == 0
    assert not (tmp_path / "run/cos").exists()
