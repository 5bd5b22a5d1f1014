"""immucore's executor: exact mount commands, first-use seeding, the failure path."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.immucore import mounts, normal
from kairos.immucore.bootstate import Cmdline
from kairos.immucore.layout import Layout
from kairos.immucore.planner import plan_layout

ACTIVE = "root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img"


@pytest.mark.usefixtures("allow_commands")
def test_seed_copies_the_image_on_first_use_only(tmp_path: Path) -> None:
    image = tmp_path / "image/etc/ssh"
    image.mkdir(parents=True)
    (image / "sshd_config").write_text("from the image\n")
    target = tmp_path / "persistent/.state/etc-ssh.bind"
    assert mounts.seed(str(target), str(image)) is True
    assert (target / "sshd_config").read_text() == "from the image\n"
    # The user edits the persistent copy; a new image ships another file: kept as edited
    # (upstream re-synced the image over it at each boot, kairos#3390).
    (target / "sshd_config").write_text("edited by the user\n")
    (image / "sshd_config").write_text("new image\n")
    assert mounts.seed(str(target), str(image)) is False
    assert (target / "sshd_config").read_text() == "edited by the user\n"


@pytest.mark.usefixtures("allow_commands")
def test_seed_redoes_a_half_made_copy(tmp_path: Path) -> None:
    image = tmp_path / "image/root"
    image.mkdir(parents=True)
    (image / ".bashrc").write_text("rc\n")
    target = tmp_path / "state/root.bind"
    half = tmp_path / "state/root.bind.seeding"
    half.mkdir(parents=True)
    (half / "partial").write_text("")
    assert mounts.seed(str(target), str(image)) is True
    assert sorted(p.name for p in target.iterdir()) == [".bashrc"]
    assert not half.exists()


def test_seed_without_image_content_makes_an_empty_dir(tmp_path: Path) -> None:
    target = tmp_path / "state/etc-k0s.bind"
    assert mounts.seed(str(target), str(tmp_path / "absent")) is True
    assert target.is_dir() and list(target.iterdir()) == []


def test_layout_mount_commands(tmp_path: Path, recorded_commands: list[tuple[str, ...]]) -> None:
    sysroot = tmp_path / "sysroot"
    for d in ("etc", "var", "usr/local/.state", "home"):
        (sysroot / d).mkdir(parents=True)
    layout = Layout.from_env(
        {
            "RW_PATHS": "/etc /var /srv",  # /srv is not in this image: skipped
            "OVERLAY": "tmpfs:30%",
            "PERSISTENT_STATE_PATHS": "/home /var/lib/app",
            "PERSISTENT_STATE_BIND": "true",
        }
    )
    plan = plan_layout(Cmdline.parse(ACTIVE), layout, sysroot=str(sysroot))
    # The overlay base is the initramfs's /run/overlay: keep it under tmp_path here.
    base = tmp_path / "run/overlay"
    moved = [
        m.__class__(**{**m.__dict__, "upper": m.upper.replace("/run/overlay", str(base))})
        if m.upper
        else m
        for m in plan.mounts[1:]
    ]
    # A later boot: the persistent copies exist, so nothing is copied again.
    (sysroot / "usr/local/.state/home.bind").mkdir()
    (sysroot / "usr/local/.state/var-lib-app.bind").mkdir()
    for m in moved:
        mounts.apply(m, str(sysroot))
    s = str(sysroot)
    assert recorded_commands == [
        ("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", f"{s}/tmp"),
        ("mount", "-t", "overlay", "-o",
         f"lowerdir={s}/etc,upperdir={base}/etc/.overlay/upper,workdir={base}/etc/.overlay/work",
         "overlay", f"{s}/etc"),
        ("mount", "-t", "overlay", "-o",
         f"lowerdir={s}/var,upperdir={base}/var/.overlay/upper,workdir={base}/var/.overlay/work",
         "overlay", f"{s}/var"),
        ("mount", "--bind", f"{s}/usr/local/.state/home.bind", f"{s}/home"),
        ("mount", "--bind", f"{s}/usr/local/.state/var-lib-app.bind", f"{s}/var/lib/app"),
    ]  # fmt: skip
    # The mount point under the (writable) /var overlay was made.
    assert (sysroot / "var/lib/app").is_dir()
    assert (base / "etc/.overlay/upper").is_dir() and (base / "etc/.overlay/work").is_dir()


def test_tmpfs_and_device_commands(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]]
) -> None:
    plan = plan_layout(Cmdline.parse(ACTIVE), Layout(), sysroot=str(tmp_path))
    base = plan.mounts[0].__class__(**{**plan.mounts[0].__dict__, "where": str(tmp_path / "ov")})
    mounts.apply(base, str(tmp_path))
    dev = tmp_path / "dev-node"
    dev.write_text("")
    vol = base.__class__(
        kind=normal.Kind.DEVICE, what=str(dev), where=str(tmp_path / "data"), fstype="auto"
    )
    assert mounts.apply(vol, str(tmp_path)) is True
    missing = vol.__class__(**{**vol.__dict__, "what": "LABEL=NOPE-immucore-test",
                               "optional": True, "timeout": 0.0})  # fmt: skip
    assert mounts.apply(missing, str(tmp_path)) is False
    assert recorded_commands == [
        ("mount", "-t", "tmpfs", "-o", "mode=0755,size=20%", "tmpfs", str(tmp_path / "ov")),
        ("mount", str(dev), str(tmp_path / "data")),
    ]


def test_failed_phase_shows_the_banner_and_logs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = normal.BootLog(tmp_path / "immucore.log")
    rc = normal.run_phase("root", Cmdline.parse("root=LABEL=COS_ACTIVE"), log)
    log.close()
    assert rc == 1
    out = capsys.readouterr().out
    assert "# KAIROS BOOT FAILED" in out
    assert "# step:  plan" in out
    assert "cos-img/filename=: missing" in out
    assert f"# log:   {tmp_path / 'immucore.log'}" in out
    text = (tmp_path / "immucore.log").read_text()
    assert "phase root started" in text
    assert "step plan FAILED after" in text
    assert "phase root took" not in text


def test_reboot_on_failure(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    slept: list[float] = []
    monkeypatch.setattr(normal.time, "sleep", slept.append)
    log = normal.BootLog(tmp_path / "immucore.log")
    cmdline = Cmdline.parse("root=LABEL=COS_ACTIVE rd.immucore.rebootonfailure")
    assert normal.run_phase("layout", cmdline, log) == 1
    log.close()
    assert recorded_commands == [("systemctl", "--force", "reboot")]
    assert slept == [10]


def test_failed_trial_boot_keeps_its_reason_then_reboots(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kairos.bootloader import assessment

    state = tmp_path / "cos-state"
    state.mkdir()
    assessment.arm(state, "v3", "v2", tries=2)
    monkeypatch.setattr(normal, "STATE_MOUNT", str(state))
    monkeypatch.setattr(normal.os.path, "ismount", lambda p: str(p) == str(state))
    monkeypatch.setattr(normal.time, "sleep", lambda s: None)
    log = normal.BootLog(tmp_path / "immucore.log")
    cmdline = Cmdline.parse("root=LABEL=COS_ACTIVE kairos.assessment=trying")
    assert normal.run_phase("root", cmdline, log) == 1
    log.close()
    assert recorded_commands == [
        ("mount", "-o", "remount,rw", str(state)),
        ("mount", "-o", "remount,ro", str(state)),
        ("systemctl", "--force", "reboot"),
    ]
    reason = assessment.read(state).reason
    assert reason.startswith("v3 failed to boot: initramfs step 'plan':"), reason
    assert "reason kept" in (tmp_path / "immucore.log").read_text()


def test_log_lines_are_stamped(tmp_path: Path) -> None:
    log = normal.BootLog(tmp_path / "immucore.log")
    with log.step("one"):
        pass
    log.close()
    line = (tmp_path / "immucore.log").read_text().splitlines()[0]
    assert line.startswith("[") and line.endswith("] step one took 0.000 s")
