"""`kairos-agent upgrade` on a node tree under `--root`: real squashfs images, real loop
mounts of them, real mksquashfs and OCI unpacking; COS_STATE is a directory of the tree.

Shows the slot moves from active and from passive, the armed boot assessment, refusals that
change no byte, and a kill at each pause point followed by a repeated upgrade.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kairos.bootloader import assessment, grubenv
from kairos.cli import main
from kairos.run import run, which

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        os.geteuid() != 0 or which("mksquashfs") is None or which("unsquashfs") is None,
        reason="needs root (loop mounts) and squashfs-tools",
    ),
]

STATE = "run/initramfs/cos-state"


def _tree(path: Path, version: str, kernel: bool = True) -> Path:
    for d in ("boot", "etc", "usr/bin"):
        (path / d).mkdir(parents=True, exist_ok=True)
    if kernel:
        (path / "boot/vmlinuz").write_text("kernel\n")
        (path / "boot/initrd").write_text("initrd\n")
    (path / "etc/kairos-release").write_text(f'KAIROS_VERSION="{version}"\n')
    (path / "usr/bin/payload").write_bytes(os.urandom(1 << 20))  # something to copy
    return path


def _image(tree: Path, out: Path) -> Path:
    run(["mksquashfs", str(tree), str(out), "-comp", "gzip", "-noappend", "-quiet",
         "-no-progress"])  # fmt: skip
    return out


def _version_of(image: Path) -> str:
    text = run(["unsquashfs", "-cat", str(image), "etc/kairos-release"]).stdout
    return text.strip().split("=", 1)[1].strip('"')


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A node booted from active v1 with passive v0; sources v2 (file, dir, ocifile)."""
    root = tmp_path / "root"
    for d in ("run/cos", f"{STATE}/cOS", "etc", "oem", "usr/local", "proc", "src"):
        (root / d).mkdir(parents=True)
    (root / "run/cos/active_mode").touch()
    (root / "proc/cmdline").write_text("root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img\n")
    (root / "etc/kairos-release").write_text('KAIROS_VERSION="v1"\n')
    _image(_tree(tmp_path / "t0", "v0"), root / STATE / "cOS/passive.img")
    _image(_tree(tmp_path / "t1", "v1"), root / STATE / "cOS/active.img")
    v2 = _tree(tmp_path / "t2", "v2")
    _image(v2, root / "src/v2.squashfs")
    run(["cp", "-a", str(v2), str(root / "src/v2-root")])
    from kairos.image.oci_write import write_oci_archive

    write_oci_archive(v2, root / "src/v2.tar", name="t", version="v2", level=1)
    _image(_tree(tmp_path / "nk", "v9", kernel=False), root / "src/nokernel.squashfs")
    return root


def _cos(root: Path) -> Path:
    return root / STATE / "cOS"


def _upgrade(root: Path, *args: str) -> int:
    return main(["--root", str(root), "upgrade", *args])


@pytest.mark.parametrize("source", ["file:/src/v2.squashfs", "dir:/src/v2-root",
                                    "ocifile:/src/v2.tar"])  # fmt: skip
def test_upgrade_from_active_rotates_and_arms(node: Path, source: str) -> None:
    assert _upgrade(node, "--source", source) == 0
    assert _version_of(_cos(node) / "active.img") == "v2"
    assert _version_of(_cos(node) / "passive.img") == "v1"  # the old active, v0 is gone
    assert not (_cos(node) / "transition.img").exists()
    a = assessment.read(node / STATE)
    assert (a.phase, a.tries, a.version, a.previous) == (assessment.Phase.TRYING, 3, "v2", "v1")
    assert not (node / "usr/local/.kairos-upgrade").exists()  # the OCI scratch is cleaned
    assert "last-upgrade" in (node / "usr/local/.kairos-state").read_text()


def test_upgrade_from_passive_keeps_passive(node: Path) -> None:
    (node / "run/cos/active_mode").unlink()
    (node / "run/cos/passive_mode").touch()
    passive = (_cos(node) / "passive.img").read_bytes()
    assessment.arm(node / STATE, "v1", "v0", tries=1)  # a stale trial: must be replaced
    assert _upgrade(node, "--source", "file:/src/v2.squashfs") == 0
    assert (_cos(node) / "passive.img").read_bytes() == passive
    assert _version_of(_cos(node) / "active.img") == "v2"
    assert sorted(p.name for p in _cos(node).iterdir()) == ["active.img", "passive.img"]
    a = assessment.read(node / STATE)
    assert (a.phase, a.tries, a.version) == (assessment.Phase.TRYING, 3, "v2")


def test_same_version_is_a_no_op_unless_forced(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (node / "etc/kairos-release").write_text('KAIROS_VERSION="v2"\n')
    before = (_cos(node) / "active.img").read_bytes()
    assert _upgrade(node, "--source", "file:/src/v2.squashfs") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (_cos(node) / "active.img").read_bytes() == before
    assert _upgrade(node, "--source", "file:/src/v2.squashfs", "--force") == 0
    assert _version_of(_cos(node) / "active.img") == "v2"


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--source", "file:/src/nokernel.squashfs"], "boot/vmlinuz is missing"),
        (["--source", "file:/src/missing.squashfs"], "does not exist"),
        (["--source", "https://example.com/x"], "unknown source scheme"),
        (["--source", "oci:quay.io/kairos/x:1"], "registry not reachable"),
        (["--source", "dir:/src/v2-root", "--exclude-path", "../etc"], "absolute path"),
    ],
)
def test_refusals_change_nothing(
    node: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    before = _digest(node / STATE)
    assert _upgrade(node, *args) != 0
    err = capsys.readouterr().err
    assert expected in err and "nothing was written" in err, err
    assert _digest(node / STATE) == before


def test_no_room_for_the_new_image_is_refused(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    big = node / "src/big.squashfs"
    big.write_bytes((node / "src/v2.squashfs").read_bytes()[:4096])
    os.truncate(big, shutil.disk_usage(big).free + (1 << 30))  # sparse: 1 GiB beyond the room
    before = _digest(node / STATE)
    assert _upgrade(node, "--source", "file:/src/big.squashfs") != 0
    assert "needed for the new image" in capsys.readouterr().err
    assert _digest(node / STATE) == before


def test_live_boot_is_refused(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (node / "run/cos/active_mode").unlink()
    (node / "run/cos/live_mode").touch()
    assert _upgrade(node, "--source", "file:/src/v2.squashfs") != 0
    assert "live media" in capsys.readouterr().err


def _killed_at(root: Path, point: str) -> None:
    """Run the upgrade in a child process, SIGKILL it at the pause point."""
    env = dict(os.environ, KAIROS_UPGRADE_PAUSE_AT=point)
    argv = [sys.executable, "-m", "kairos", "--root", str(root), "upgrade", "--source",
            "file:/src/v2.squashfs"]  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if f"paused at '{point}'" in line:
            break
        assert line or proc.poll() is None, seen
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # The killed process held loop mounts (the source image): release them as a reboot would.
    for mnt in sorted(
        (ln.split()[1] for ln in Path("/proc/mounts").read_text().splitlines()
         if ln.split()[1].startswith(str(root))),
        key=len,
        reverse=True,
    ):  # fmt: skip
        run(["umount", "-l", mnt], check=False)


@pytest.mark.parametrize(
    ("point", "active_after", "phase"),
    [
        ("write", "v1", assessment.Phase.NONE),  # nothing armed yet
        ("switch", "v1", assessment.Phase.TRYING),  # armed; the old active passes its trial
        ("rotate", "v2", assessment.Phase.TRYING),  # switched; old active is transition.img
    ],
)
def test_kill_at_each_point_leaves_a_bootable_slot_and_a_repeat_succeeds(
    node: Path, point: str, active_after: str, phase: assessment.Phase
) -> None:
    _killed_at(node, point)
    cos = _cos(node)
    assert _version_of(cos / "active.img") == active_after  # always a whole image
    assert assessment.read(node / STATE).phase is phase
    assert _upgrade(node, "--source", "file:/src/v2.squashfs", "--force") == 0
    assert _version_of(cos / "active.img") == "v2"
    assert not (cos / "transition.img").exists()


def test_grub_env_block_stays_grub_sized(node: Path) -> None:
    a = assessment.arm(node / STATE, "v" * 60, "w" * 60, tries=9)
    assessment.record_failure(node / STATE, "x" * 1000)
    data = (node / STATE / "boot_assessment").read_bytes()
    assert len(data) == grubenv.SIZE and a.tries == 9
    assert assessment.read(node / STATE).reason == "x" * assessment.REASON_MAX


def test_upgrade_stages_run_in_order_of_the_upgrade(node: Path) -> None:
    steps = "\n".join(
        f"  {stage}:\n  - files:\n    - path: /oem/ran-{stage}\n      content: yes\n"
        for stage in ("before-upgrade", "after-upgrade-chroot", "after-upgrade")
    )
    (node / "oem/50_hooks.yaml").write_text(f"#cloud-config\nstages:\n{steps}")
    assert _upgrade(node, "--source", "file:/src/v2.squashfs") == 0
    for stage in ("before-upgrade", "after-upgrade-chroot", "after-upgrade"):
        assert (node / f"oem/ran-{stage}").read_text() == "yes", stage


def test_recovery_upgrade_replaces_only_recovery(node: Path) -> None:
    recovery = node / "run/cos/recovery/cOS"
    recovery.mkdir(parents=True)
    _image(_tree(node.parent / "tr", "r1"), recovery / "recovery.img")
    active = (_cos(node) / "active.img").read_bytes()
    passive = (_cos(node) / "passive.img").read_bytes()
    assert _upgrade(node, "--recovery", "--source", "file:/src/v2.squashfs") == 0
    assert _version_of(recovery / "recovery.img") == "v2"
    assert sorted(p.name for p in recovery.iterdir()) == ["recovery.img"]
    assert (_cos(node) / "active.img").read_bytes() == active
    assert (_cos(node) / "passive.img").read_bytes() == passive
    assert assessment.read(node / STATE).phase is assessment.Phase.NONE  # no trial for it
