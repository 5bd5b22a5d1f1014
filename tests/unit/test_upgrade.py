"""Upgrade planning rules and the boot assessment state, without touching any disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.agent import upgrade_plan as up
from kairos.agent.install_plan import Power
from kairos.agent.state import BootState
from kairos.bootloader import assessment as ba
from kairos.bootloader import grubcfg, grubenv
from kairos.cli import main

# --- sources and options -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("dir:/x", ""),
        ("file:/x.img", ""),
        ("ocifile:/x.tar", ""),
        ("oci-dir:/x", ""),
        ("", "no source given"),
        ("http://x", "unknown source scheme"),
        ("dir:", "unknown source scheme"),
        ("ftp:/x", "unknown source scheme"),
        ("oci:quay.io/kairos/x:1", "registry not reachable"),
        ("docker:alpine", "registry not reachable"),
    ],
)
def test_parse_source(spec: str, problem: str) -> None:
    _scheme, _value, problems = up.parse_source(spec)
    if problem:
        assert len(problems) == 1 and problem in problems[0]
    else:
        assert problems == []


def test_options_flags_win_over_config() -> None:
    merged = {
        "upgrade": {
            "system": {"uri": "ocifile:/a.tar"},
            "recovery-system": {"uri": "dir:/r"},
            "reboot": True,
            "excluded-paths": ["/var/cache"],
        },
        "boot-assessment": {"tries": 2},
    }
    o = up.options_from(merged, {})
    assert (o.source, o.recovery, o.power, o.tries) == ("ocifile:/a.tar", False, Power.REBOOT, 2)
    assert o.excluded == ("/var/cache",)
    o = up.options_from(merged, {"recovery": True})
    assert o.source == "dir:/r"
    o = up.options_from(merged, {"source": "file:/b", "exclude_path": ["/tmp/x"], "poweroff": True})
    assert (o.source, o.power) == ("file:/b", Power.POWEROFF)
    assert o.excluded == ("/tmp/x", "/var/cache")
    assert up.options_from({}, {}).tries == ba.DEFAULT_TRIES
    assert up.options_from({"boot-assessment": {"tries": True}}, {}).tries == ba.DEFAULT_TRIES


def test_release_version(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/kairos-release").write_text(
        '# comment\nKAIROS_NAME="kairos"\nKAIROS_VERSION="v1.2.3"\n'
    )
    assert up.release_version(tmp_path) == "v1.2.3"
    assert up.release_version(tmp_path / "nothing") == ""


# --- slots, boot states and space ----------------------------------------------------------


def test_slots_by_boot_state() -> None:
    # From active: passive is freed, the old active becomes passive.
    assert up.slot_files(up.Target.ACTIVE, BootState.ACTIVE) == (
        "/cOS/active.img", "/cOS/passive.img", "/cOS/passive.img",
    )  # fmt: skip
    # From passive (after a fallback): the failed active is replaced, passive untouched.
    assert up.slot_files(up.Target.ACTIVE, BootState.PASSIVE) == (
        "/cOS/active.img", "", "/cOS/active.img",
    )  # fmt: skip
    assert up.slot_files(up.Target.RECOVERY, BootState.ACTIVE)[0] == "/cOS/recovery.img"


@pytest.mark.parametrize(
    ("boot", "target", "refused"),
    [
        (BootState.ACTIVE, up.Target.ACTIVE, False),
        (BootState.PASSIVE, up.Target.ACTIVE, False),
        (BootState.RECOVERY, up.Target.ACTIVE, False),
        (BootState.LIVECD, up.Target.ACTIVE, True),
        (BootState.AUTORESET, up.Target.ACTIVE, True),
        (BootState.UNKNOWN, up.Target.ACTIVE, True),
        (BootState.RECOVERY, up.Target.RECOVERY, True),
        (BootState.ACTIVE, up.Target.RECOVERY, False),
    ],
)
def test_boot_problems(boot: BootState, target: up.Target, refused: bool) -> None:
    assert bool(up.boot_problems(boot, target)) is refused


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as fh:
        fh.write(b"\1" * size)  # real blocks: space is counted in allocated bytes


def test_space_counts_the_freed_slot_and_a_stale_transition(tmp_path: Path) -> None:
    _sparse(tmp_path / "cOS/passive.img", 3 << 20)
    _sparse(tmp_path / "cOS/transition.img", 2 << 20)
    free = up.free_bytes(tmp_path)
    avail, problems, _w, in_place = up.space_problems(
        up.Target.ACTIVE, tmp_path, BootState.ACTIVE, free + (4 << 20)
    )
    assert problems == [] and not in_place
    assert avail >= free + (5 << 20)
    avail, problems, _w, _i = up.space_problems(
        up.Target.ACTIVE, tmp_path, BootState.ACTIVE, free + (64 << 20)
    )
    assert len(problems) == 1 and problems[0].startswith("COS_STATE:")


def test_recovery_without_room_for_two_is_replaced_in_place(tmp_path: Path) -> None:
    _sparse(tmp_path / "cOS/recovery.img", 8 << 20)
    need = up.free_bytes(tmp_path) + (4 << 20)
    _avail, problems, warnings, in_place = up.space_problems(
        up.Target.RECOVERY, tmp_path, BootState.ACTIVE, need
    )
    assert problems == [] and in_place and "in place" in warnings[0]


def test_excluded_paths_must_stay_inside() -> None:
    assert up.excluded_problems(["/var/cache", "/opt/x"]) == []
    assert len(up.excluded_problems(["var/cache", "/a/../etc"])) == 2


# --- boot assessment state -----------------------------------------------------------------


def test_arm_replaces_every_earlier_flag(tmp_path: Path) -> None:
    grubenv.write(
        tmp_path / "boot_assessment",
        {"ba_state": "fellback", "ba_tries": "0", "ba_reason": "old", "stale": "x"},
    )
    a = ba.arm(tmp_path, "v2", "v1", tries=2)
    env = grubenv.read(tmp_path / "boot_assessment")
    assert env["ba_state"] == "trying" and env["ba_tries"] == "2" and "stale" not in env
    assert env["ba_reason"] == "" and a.fallback_tries == 2
    assert ba.arm(tmp_path, "v2", "v1", tries=50).tries == ba.MAX_TRIES
    assert ba.arm(tmp_path, "v2", "v1", tries=0).tries == 1


def test_good_trial_ends_it(tmp_path: Path) -> None:
    ba.arm(tmp_path, "v2", "v1")
    a = ba.record_good(tmp_path, "v2")
    assert a.phase is ba.Phase.NONE and "v2 booted and passed" in a.result
    assert ba.read(tmp_path).phase is ba.Phase.NONE


def test_good_boot_of_the_old_system_says_the_switch_never_happened(tmp_path: Path) -> None:
    ba.arm(tmp_path, "v2", "v1")
    a = ba.record_good(tmp_path, "v1")
    assert a.phase is ba.Phase.NONE and "interrupted before the switch" in a.result


def test_failed_health_check_spends_every_try_and_passive_keeps_the_report(
    tmp_path: Path,
) -> None:
    ba.arm(tmp_path, "v3", "v2", tries=3)
    a = ba.record_failure(tmp_path, "health check failed: exit 1")
    assert (a.phase, a.tries, a.fallback_tries) == (ba.Phase.TRYING, 0, 3)
    # GRUB moves on to passive (simulated: what its script writes), which then passes.
    grubenv.update(tmp_path / "boot_assessment", {"ba_state": "failed", "ba_tries": "2"})
    a = ba.record_good(tmp_path, "v2")
    assert a.phase is ba.Phase.FELLBACK and a.version == "v3"
    assert a.reason == "health check failed: exit 1" and a.fell_back


def test_fallback_without_a_report_explains_why(tmp_path: Path) -> None:
    ba.arm(tmp_path, "v3", "v2", tries=2)
    grubenv.update(tmp_path / "boot_assessment", {"ba_state": "failed", "ba_tries": "1"})
    a = ba.record_good(tmp_path, "v2")
    assert "did not reach the health point in 2 tries" in a.reason


def test_initramfs_failure_reason_survives_into_the_fallback_report(tmp_path: Path) -> None:
    ba.arm(tmp_path, "v3", "v2", tries=2)
    grubenv.update(tmp_path / "boot_assessment", {"ba_tries": "1"})  # GRUB spent a try
    a = ba.note_boot_failure(tmp_path, "initramfs step 'init': no executable init")
    assert (a.phase, a.tries) == (ba.Phase.TRYING, 1)
    assert a.reason == "v3 failed to boot: initramfs step 'init': no executable init"
    grubenv.update(tmp_path / "boot_assessment", {"ba_state": "failed", "ba_tries": "1"})
    a = ba.record_good(tmp_path, "v2")
    assert a.phase is ba.Phase.FELLBACK and "no executable init" in a.reason
    # Passive on trial, or nothing on trial: there is no new system to blame, nothing written.
    assert ba.note_boot_failure(tmp_path, "other").reason == a.reason


def test_no_trial_means_nothing_to_record(tmp_path: Path) -> None:
    assert ba.record_good(tmp_path, "v1").phase is ba.Phase.NONE
    assert ba.record_failure(tmp_path, "x").phase is ba.Phase.NONE
    assert not (tmp_path / "boot_assessment").exists()
    ba.clear(tmp_path)
    assert ba.read(tmp_path).to_dict()["state"] == "none"


def test_menu_runs_the_trial_after_the_default_and_before_user_hooks() -> None:
    menu = grubcfg.render_menu()
    assert menu.index('set default="${saved_entry}"') < menu.index("ba_state")
    assert menu.index("ba_state") < menu.index("/grubcustom")
    assert menu.index("/grubcustom") < menu.index("menuentry")
    trial = "\n".join(ba.render_grub())
    assert 'if [ "${boot_once}" != "true" ]' in trial  # an explicit choice is not a try
    # Every countdown step for 1..9, and each transition saved.
    for n in range(1, ba.MAX_TRIES + 1):
        assert f'= "{n}" ]; then set ba_tries={n - 1}' in trial
    assert trial.count("save_env") == 3


def test_grub_accepts_the_menu(tmp_path: Path, allow_commands: None) -> None:
    from kairos.run import run, which

    if which("grub-script-check") is None:
        pytest.skip("grub-script-check not installed")
    cfg = tmp_path / "grub.cfg"
    cfg.write_text(grubcfg.render_menu())
    assert run(["grub-script-check", str(cfg)], check=False).returncode == 0


# --- the command line ----------------------------------------------------------------------


def test_upgrade_refuses_on_live_media_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], recorded_commands: list[tuple[str, ...]]
) -> None:
    (tmp_path / "run/cos").mkdir(parents=True)
    (tmp_path / "run/cos/live_mode").touch()
    code = main(["--root", str(tmp_path), "upgrade", "--source", "nope:x", "--dry-run"])
    err = capsys.readouterr().err
    assert code != 0
    assert "live media" in err and "unknown source scheme" in err  # both, at once
    assert recorded_commands == []


def test_boot_assessment_without_a_trial_does_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("root=LABEL=COS_ACTIVE\n")
    assert main(["--root", str(tmp_path), "boot-assessment"]) == 0
    assert "not on trial" in capsys.readouterr().out


def test_fallback_notice_reaches_state_banner_and_motd(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "run/initramfs/cos-state"
    state.mkdir(parents=True)
    ba.arm(state, "v3", "v2", tries=1)
    grubenv.update(state / "boot_assessment", {"ba_state": "fellback", "ba_reason": "boom"})
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("root=LABEL=COS_PASSIVE kairos.upgrade_failure\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/kairos-release").write_text('KAIROS_VERSION="v2"\n')
    assert main(["--root", str(tmp_path), "boot-assessment", "--notice"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("<4>Upgrade to v3 failed: boom.")
    for f in ("/run/cos/upgrade_failure", "/run/motd.d/50-kairos-upgrade-failure",
              "/etc/issue.d/50-kairos-upgrade-failure.issue"):  # fmt: skip
        text = (tmp_path / f.lstrip("/")).read_text()
        assert "Upgrade to v3 failed: boom." in text and "runs v2" in text
