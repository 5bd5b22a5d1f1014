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


def test_live_boot_skips_stage_when_sysroot_never_mounts(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]]
) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(LIVE + " rd.immucore.sysrootwait=0.3\n")
    (tmp_path / "sysroot/usr/bin").mkdir(parents=True)
    (tmp_path / "sysroot/usr/bin/kairos-agent").write_text("#!/bin/sh\n")
    rc = main(["--cmdline", str(cmdline), "--run", str(tmp_path / "run"),
               "--sysroot", str(tmp_path / "sysroot")])  # fmt: skip
    assert rc == 0 and (tmp_path / "run/cos/live_mode").exists()
    assert recorded_commands == []  # no chroot into something that is not a mounted root


def test_initramfs_stage_runs_in_process_on_the_sysroot(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]]
) -> None:
    from kairos.immucore.live import run_initramfs_stage

    sysroot = tmp_path / "sysroot"
    for d in ("dev", "proc", "sys", "run", "etc/systemd/system", "system/oem"):
        (sysroot / d).mkdir(parents=True)
    (sysroot / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (sysroot / "etc/group").write_text("root:x:0:\n")
    (sysroot / "system/oem/10_test.yaml").write_text(
        "stages:\n"
        "  initramfs:\n"
        "    - name: files and a command\n"
        "      files:\n"
        "        - path: /etc/marker\n"
        "          content: in the new root\n"
        "          permissions: 0644\n"
        "      commands: [touch /etc/from-command]\n"
        "  boot:\n"
        "    - files: [{path: /etc/not-now, content: x}]\n"
    )
    lines = run_initramfs_stage(sysroot)
    assert lines == ["initramfs stage: 1 steps run, 0 skipped, 0 errors"]
    # Files land in the sysroot, not in the initramfs's own root; the command runs chrooted.
    assert (sysroot / "etc/marker").read_text() == "in the new root"
    assert not (sysroot / "etc/not-now").exists()
    mounts = [c for c in recorded_commands if c[0] == "mount"]
    chroot = [c for c in recorded_commands if c[0] == "chroot"]
    umounts = [c for c in recorded_commands if c[0] == "umount"]
    assert [m[-1] for m in mounts] == [str(sysroot / d) for d in ("dev", "proc", "sys", "run")]
    assert len(chroot) == 1 and chroot[0][1] == str(sysroot)
    assert "touch /etc/from-command" in chroot[0]
    assert [u[-1] for u in umounts] == [str(sysroot / d) for d in ("run", "sys", "proc", "dev")]
    assert recorded_commands.index(mounts[-1]) < recorded_commands.index(chroot[0])
    assert recorded_commands.index(chroot[0]) < recorded_commands.index(umounts[0])


def test_initramfs_stage_reports_step_errors_and_goes_on(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]]
) -> None:
    from kairos.immucore.live import run_initramfs_stage

    sysroot = tmp_path / "sysroot"
    (sysroot / "system/oem").mkdir(parents=True)
    (sysroot / "system/oem/10_test.yaml").write_text(
        "stages:\n"
        "  initramfs:\n"
        "    - name: bad owner\n"
        "      files: [{path: /etc/x, content: x, owner_string: nosuchuser}]\n"
        "    - name: good\n"
        "      files: [{path: /etc/y, content: y}]\n"
    )
    lines = run_initramfs_stage(sysroot)
    assert lines[0].endswith("1 errors"), lines
    assert "nosuchuser" in lines[1]
    assert (sysroot / "etc/y").read_text() == "y"
