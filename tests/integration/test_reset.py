"""Reset a loop disk that `manual-install` laid out, with the real tools.

The node root is a directory in tmp_path (`--root`) with `/run/cos/recovery_mode`, as a
recovery boot leaves it; the partitions are the loop device's, found by label with `--disk`
(other tests may have Kairos loop disks attached at the same time). Refusals must leave
every byte of the disk image unchanged.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import yaml

from kairos.bootloader import assessment
from kairos.cli import main
from kairos.disk import mount
from kairos.run import run
from tests.integration.test_install import disk, labels, node, sha256, skip_reason

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(skip_reason), reason=str(skip_reason)),
]
__all__ = ["disk", "node"]  # fixtures, used by name

CONFIG = """#cloud-config
users:
- name: kairos
  passwd: kairos
  groups: [admin]
stages:
  after-reset-chroot:
  - files:
    - path: /oem/reset-chroot-ran
      content: written inside the redeployed system
"""
NODE_STAGES = """#cloud-config
stages:
  before-reset:
  - files:
    - path: /tmp/before-reset-ran
      content: before
  after-reset:
  - files:
    - path: /tmp/after-reset-ran
      content: after
"""
MIB = 1 << 20


@contextmanager
def mounted_parts(
    device: Path, where: Path, *, read_only: bool = True
) -> Iterator[dict[str, Path]]:
    found = labels(device)
    options = ("ro",) if read_only else ()
    with ExitStack() as stack:
        yield {
            label: stack.enter_context(mount.mounted(found[label], where / label, options=options))
            for label in ("COS_STATE", "COS_RECOVERY", "COS_OEM", "COS_PERSISTENT")
        }


def installed(node: Path, device: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    code = main(["--root", str(node), "manual-install", str(config), "--device", str(device)])
    assert code == 0


def boot_recovery(node: Path) -> None:
    """What a recovery boot leaves for the agent: the sentinel and the node's stage files."""
    (node / "run/cos").mkdir(parents=True, exist_ok=True)
    (node / "run/cos/recovery_mode").touch()
    (node / "oem").mkdir(exist_ok=True)
    (node / "oem/reset-stages.yaml").write_text(NODE_STAGES)


def corrupt(path: Path) -> None:
    with path.open("r+b") as fh:
        fh.write(os.urandom(MIB))
        fh.flush()
        os.fsync(fh.fileno())


def reset(node: Path, device: Path, *extra: str) -> int:
    return main(["--root", str(node), "reset", "--unattended", "--disk", str(device), *extra])


def test_reset_redeploys_wipes_persistent_keeps_oem(
    node: Path,
    disk: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, device = disk
    installed(node, device, tmp_path)
    with mounted_parts(device, tmp_path / "before", read_only=False) as mnt:
        (mnt["COS_PERSISTENT"] / "user-data").write_text("accumulated by use")
        custom = (mnt["COS_OEM"] / "90_custom.yaml").read_bytes()
        recovery_sum = sha256(mnt["COS_RECOVERY"] / "cOS/recovery.img")
        for name in ("active.img", "passive.img"):
            corrupt(mnt["COS_STATE"] / "cOS" / name)
            assert sha256(mnt["COS_STATE"] / "cOS" / name) != recovery_sum
    boot_recovery(node)
    capsys.readouterr()

    assert reset(node, device, "--dry-run", "--json") == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["problems"] == []
    assert [f["label"] for f in plan["plan"]["format"]] == ["COS_PERSISTENT", "COS_STATE"]
    assert plan["plan"]["boot"] == "recovery_boot"

    monkeypatch.setenv("KAIROS_AGENT_PROGRESS", "1")
    code = reset(node, device)
    out = capsys.readouterr()
    assert code == 0, out.err
    events = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    done = [e["step"] for e in events if e.get("status") == "done"]
    assert done == ["before-reset", "persistent", "state", "active", "bootloader",
                    "after-reset-chroot", "passive", "boot-assessment", "after-reset",
                    "done"]  # fmt: skip
    assert all(e["seconds"] >= 0 for e in events if e.get("status") == "done")
    assert (node / "tmp/before-reset-ran").read_text() == "before"
    assert (node / "tmp/after-reset-ran").read_text() == "after"

    with mounted_parts(device, tmp_path / "after") as mnt:
        state = mnt["COS_STATE"]
        assert not (mnt["COS_PERSISTENT"] / "user-data").exists()
        assert (mnt["COS_OEM"] / "90_custom.yaml").read_bytes() == custom
        assert sha256(state / "cOS/active.img") == recovery_sum
        assert sha256(state / "cOS/passive.img") == recovery_sum
        assert (state / "grub2/grub.cfg").is_file()
        assert (state / "grub2/i386-pc/linux.mod").is_file()
        cleared = assessment.read(state)
        assert cleared.phase is assessment.Phase.NONE and not cleared.fell_back
        assert cleared.result.startswith("cleared")
        # after-reset-chroot came from the config install kept in COS_OEM, and ran inside
        # the redeployed system with COS_OEM bound at /oem.
        chroot = mnt["COS_OEM"] / "reset-chroot-ran"
        assert chroot.read_text() == "written inside the redeployed system"
        record = yaml.safe_load((mnt["COS_PERSISTENT"] / ".kairos-state").read_text())
        assert record["last-reset"].endswith("Z")
        assert record["last-reset-wiped"] == ["COS_PERSISTENT", "COS_STATE"]
        assert "first-install" not in record  # the persistent partition was wiped
    found = labels(device)
    esp = run(["mdir", "-b", "-i", found["COS_GRUB"], "::/EFI/BOOT"]).stdout
    assert "BOOTX64.EFI" in esp.upper()


def test_reset_oem_and_keep_persistent(
    node: Path, disk: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, device = disk
    installed(node, device, tmp_path)
    with mounted_parts(device, tmp_path / "before", read_only=False) as mnt:
        (mnt["COS_PERSISTENT"] / "user-data").write_text("kept")
        (mnt["COS_OEM"] / "99_extra.yaml").write_text("#cloud-config\n")
    boot_recovery(node)
    code = reset(node, device, "--reset-oem", "--no-reset-persistent")
    assert code == 0, capsys.readouterr().err
    with mounted_parts(device, tmp_path / "after") as mnt:
        assert not (mnt["COS_OEM"] / "90_custom.yaml").exists()
        assert not (mnt["COS_OEM"] / "99_extra.yaml").exists()
        assert (mnt["COS_PERSISTENT"] / "user-data").read_text() == "kept"
        record = yaml.safe_load((mnt["COS_PERSISTENT"] / ".kairos-state").read_text())
        assert record["first-install"].endswith("Z")  # install's record kept, reset added
        assert record["last-reset-wiped"] == ["COS_OEM", "COS_STATE"]
        assert (mnt["COS_STATE"] / "cOS/active.img").is_file()
    assert "COS_OEM" in labels(device)


def test_refusals_leave_the_disk_unchanged(
    node: Path, disk: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, device = disk
    installed(node, device, tmp_path)
    capsys.readouterr()

    # 1. Not booted from recovery (no sentinel, no /proc/cmdline in the node root: unknown).
    before = sha256(image)
    assert reset(node, device) == 1
    err = capsys.readouterr().err
    assert "reset refused" in err and "boot state" in err
    assert "kairos-agent bootentry --select recovery" in err
    assert sha256(image) == before

    # 2. Recovery boot, but the recovery image is damaged: refused, all problems at once.
    with mounted_parts(device, tmp_path / "damage", read_only=False) as mnt:
        corrupt(mnt["COS_RECOVERY"] / "cOS/recovery.img")
    boot_recovery(node)
    before = sha256(image)
    assert reset(node, device, "--reset-oem") == 1
    err = capsys.readouterr().err
    assert "COS_RECOVERY:/cOS/recovery.img: not a squashfs image" in err
    assert sha256(image) == before

    # 3. A disk without the Kairos partitions: every missing label reported.
    assert reset(node, Path("/dev/does-not-exist")) == 1
    assert "--disk /dev/does-not-exist" in capsys.readouterr().err
    assert sha256(image) == before
