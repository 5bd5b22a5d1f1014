"""Acceptance: install to a disk, then boot the disk, BIOS and UEFI.

`test_install_and_boot_from_disk[bios]`: the session's ISO (tests/vm/conftest.py) with a blank
12 GiB virtio disk. Over SSH the test checks the dry-run plan, starts `kairos-agent
manual-install` with the config below (install.reboot: true), and waits until the machine
comes back from the disk: the kernel command line names COS_ACTIVE and carries
install.grub_options' extra_cmdline.

`test_install_and_boot_from_disk[uefi]`: the whole story from an ISO whose embedded config
says `install.auto: true` (built here with AUTO_CONFIG, the session's rootfs reused): the live
ISO installs by itself onto `install.device: auto` and reboots from the disk with the ISO
still attached (the runner boots the disk first). Then, logged in with the config's SSH key
only: `/` read-only, `state` active, /oem/90_custom.yaml (0640) holds the config, the hostname
template rendered; files written under /etc, /var/lib/rancher, /home, /root and /usr/local;
`bootentry --select fallback` + reboot boots passive (the /etc file gone, the rest kept),
`--select recovery` + reboot boots recovery, and the next reboot is active again (one-shot).

A disk installed on the host from the ISO's root (`--source dir:`) is booted by
tests/vm/test_upgrade.py, which starts from one.
Serial logs: tests/vm/logs/test_*install*.serial.log.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kairos.vm.qemu import LOGIN_PROMPT, Firmware, Machine
from tests.vm.conftest import TIMINGS, Built

pytestmark = pytest.mark.vm

INSTALL_CONFIG = """#cloud-config
users:
- name: kairos
  passwd: kairos
  groups: [admin]
install:
  device: /dev/vda
  reboot: true
  grub_options:
    extra_cmdline: "kairos.vmtest=installed"
stages:
  # after-install runs on the installing system; COS_OEM is mounted at /run/cos/oem there.
  after-install:
  - files:
    - path: /run/cos/oem/vmtest-after-install
      content: ran
"""
BOOT_TIMEOUT = 600  # as the other VM tests: TCG boots on a loaded 2-core host
# Under TCG on a loaded 2-core host; a zstd live image is repacked to gzip in the guest,
# which is most of this time (a GRUB-readable live image is a plain copy).
INSTALL_TIMEOUT = 1500


def _out(vm: Machine, command: str, timeout: float = 120) -> str:
    result = vm.ssh(command, timeout=timeout)
    assert result.returncode == 0, f"{command!r} failed ({result.returncode}): {result.stderr}"
    return result.stdout.strip()


def _wait_installed_boot(vm: Machine, timeout: float, unit: str = "kairos-vmtest-install") -> str:
    """Poll over SSH until the guest runs from the disk; fail early if the install failed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = vm.ssh(f"cat /proc/cmdline; systemctl is-failed {unit}", timeout=120)
        lines = result.stdout.splitlines()
        if lines and "COS_ACTIVE" in lines[0]:
            return lines[0]
        if len(lines) > 1 and lines[1].strip() == "failed":
            log = vm.ssh(f"journalctl -u {unit} --no-pager | tail -40").stdout
            pytest.fail(f"the install failed in the guest:\n{log}")
        time.sleep(15)
    pytest.fail(f"the guest did not come back from the disk within {timeout:.0f} s")


@pytest.mark.parametrize("firmware", [Firmware.BIOS, Firmware.UEFI])
def test_install_and_boot_from_disk(
    request: pytest.FixtureRequest, start_vm: Callable[..., Machine], firmware: Firmware
) -> None:
    if firmware is Firmware.UEFI:
        # UEFI boots faster under TCG: it carries the multi-reboot story (install.auto).
        _auto_install_story(request.getfixturevalue("auto_iso"), start_vm)
        return
    kairos_build: Built = request.getfixturevalue("kairos_build")
    vm = start_vm(kairos_build.iso, firmware=firmware, disk_size="12G")
    vm.wait_for(LOGIN_PROMPT, BOOT_TIMEOUT)
    vm.wait_for_ssh(BOOT_TIMEOUT)
    vm.ssh("cat > /tmp/install.yaml", input=INSTALL_CONFIG, check=True)

    dry = vm.ssh("sudo kairos-agent manual-install /tmp/install.yaml --dry-run --json")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    plan = json.loads(dry.stdout)["plan"]
    assert plan["device"] == "/dev/vda"
    assert [p["name"] for p in plan["partitions"]] == [
        "bios", "efi", "oem", "recovery", "state", "persistent",
    ]  # fmt: skip
    assert plan["source"]["origin"] == "live"

    start = time.monotonic()
    # systemd-run: the install outlives this SSH session (it reboots the machine at the end).
    _out(vm, "sudo systemd-run --unit kairos-vmtest-install --setenv=KAIROS_AGENT_PROGRESS=1 "
             "kairos-agent manual-install /tmp/install.yaml")  # fmt: skip
    cmdline = _wait_installed_boot(vm, INSTALL_TIMEOUT)
    TIMINGS.append((f"install ({firmware}, {plan['source']['kind']}) to disk boot",
                    time.monotonic() - start))  # fmt: skip

    _check_installed(vm, cmdline)


def _check_installed(vm: Machine, cmdline: str) -> None:
    assert "cos-img/filename=/cOS/active.img" in cmdline
    assert "kairos.vmtest=installed" in cmdline  # install.grub_options via /oem/grubenv
    assert _out(vm, "sudo kairos-agent state get boot") == "active_boot"
    assert _out(vm, "findmnt -n -o OPTIONS /").split(",")[0] == "ro"
    labels = _out(vm, "lsblk -n -o LABEL /dev/vda").split()
    assert {"COS_GRUB", "COS_OEM", "COS_RECOVERY", "COS_STATE", "COS_PERSISTENT"} <= set(labels)
    assert _out(vm, "sudo stat -c %a /oem/90_custom.yaml") == "640"
    assert _out(vm, "sudo cat /oem/vmtest-after-install") == "ran"
    assert "first-install" in _out(vm, "sudo cat /usr/local/.kairos-state")


AUTO_CONFIG = """#cloud-config
hostname: node-{{{{ trunc 4 .MachineID }}}}
users:
- name: kairos
  passwd: kairos
  groups: [admin]
  ssh_authorized_keys:
  - {pubkey}
install:
  auto: true
  device: auto
  reboot: true
  grub_options:
    extra_cmdline: "kairos.vmtest=installed"
stages:
  after-install:
  - files:
    - path: /run/cos/oem/vmtest-after-install
      content: ran
"""
# Ephemeral first, then one path of each persistent kind (upstream's PERSISTENT_STATE_PATHS
# bind, a home, root's home, COS_PERSISTENT itself).
MARKERS = (
    "/etc/kairos-vmtest",
    "/var/lib/rancher/kairos-vmtest",
    "/home/kairos/kairos-vmtest",
    "/root/kairos-vmtest",
    "/usr/local/kairos-vmtest",
)
LIST_MARKERS = f"for f in {' '.join(MARKERS)}; do sudo test -e $f && echo $f; done; true"


@dataclass(frozen=True)
class AutoIso:
    iso: Path
    key: Path  # the private half of the config's ssh_authorized_keys entry
    config: str


@pytest.fixture(scope="module")
def auto_iso(kairos_build: Built, tmp_path_factory: pytest.TempPathFactory) -> AutoIso:
    """An ISO of the session's image whose embedded config installs by itself.

    Only the ISO step runs again (the bootstrapped rootfs is cached). With
    KAIROS_VM_BUILD_DIR=DIR it is kept in DIR/auto and reused, key included.
    """
    from kairos.build.manifest import ArtifactKind
    from kairos.build.pipeline import BuildRequest, Format, build
    from kairos.log import Progress
    from kairos.run import run

    keep = os.environ.get("KAIROS_VM_BUILD_DIR")
    work = Path(keep) / "auto" if keep else tmp_path_factory.mktemp("auto-iso")
    work.mkdir(parents=True, exist_ok=True)
    key = work / "id_ed25519"
    if not key.exists():
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "kairos-vmtest", "-f", key])
    config = AUTO_CONFIG.format(pubkey=key.with_suffix(".pub").read_text().strip())
    config_file = work / "auto-config.yaml"
    out = work / "out"
    reusable = keep and (out / "kairos.iso").exists() and config_file.exists()
    if reusable and config_file.read_text() == config:
        return AutoIso(out / "kairos.iso", key, config)
    config_file.write_text(config)
    start = time.monotonic()
    manifest = build(
        BuildRequest(
            source="debian:bookworm", output=out, formats=(Format.ISO,), cloud_config=config_file
        ),
        Progress(),
    )
    TIMINGS.append(("build of the install.auto ISO (rootfs cached)", time.monotonic() - start))
    return AutoIso(out / manifest.artifact(ArtifactKind.ISO).file, key, config)


def _state(vm: Machine) -> str:
    return _out(vm, "sudo kairos-agent state get boot")


def _timed_reboot(vm: Machine, what: str) -> None:
    start = time.monotonic()
    vm.reboot(BOOT_TIMEOUT)
    TIMINGS.append((f"installed disk (uefi): reboot to SSH, {what}", time.monotonic() - start))


def _auto_install_story(auto: AutoIso, start_vm: Callable[..., Machine]) -> None:
    vm = start_vm(auto.iso, firmware=Firmware.UEFI, disk_size="12G", ssh_key=auto.key)
    start = time.monotonic()
    # No command from here: the live ISO installs by itself and reboots from the disk.
    vm.wait_for(LOGIN_PROMPT, BOOT_TIMEOUT)
    vm.wait_for_ssh(BOOT_TIMEOUT)
    cmdline = _wait_installed_boot(vm, INSTALL_TIMEOUT, unit="kairos-installer")
    TIMINGS.append(("install.auto (uefi): QEMU start to SSH on the disk", time.monotonic() - start))
    # Every SSH command below logged in with the config's key alone (the Machine offers no
    # password), so the key reached the installed system's user.
    _check_installed(vm, cmdline)
    assert _out(vm, "sudo lsblk -n -o PKNAME $(findmnt -n -o SOURCE /oem)") == "vda"

    saved = _out(vm, "sudo cat /oem/90_custom.yaml")
    assert "auto: true" in saved and "kairos.vmtest=installed" in saved
    assert auto.key.with_suffix(".pub").read_text().split()[1] in saved
    hostname, machine_id = _out(vm, "hostname; cat /etc/machine-id").split()
    assert re.fullmatch(r"node-[0-9a-f]{4}", hostname), hostname
    if "{{" in saved:  # kept as a template: rendered on the node, with its own machine-id
        assert hostname == f"node-{machine_id[:4]}"

    _out(vm, "sudo sh -c 'for f in " + " ".join(MARKERS) + "; do mkdir -p $(dirname $f); "
             "echo kept > $f; done; sync'")  # fmt: skip
    assert _out(vm, LIST_MARKERS).split() == list(MARKERS)

    assert "next boot: fallback" in _out(vm, "sudo kairos-agent bootentry --select fallback")
    _timed_reboot(vm, "fallback")
    assert _state(vm) == "passive_boot"
    assert "cos-img/filename=/cOS/passive.img" in _out(vm, "cat /proc/cmdline")
    assert _out(vm, "findmnt -n -o OPTIONS /").split(",")[0] == "ro"
    # The ephemeral /etc file is gone; everything on COS_PERSISTENT survived the reboot.
    assert _out(vm, LIST_MARKERS).split() == list(MARKERS[1:])
    assert _out(vm, "sudo cat /usr/local/kairos-vmtest") == "kept"
    assert _out(vm, "hostname; cat /etc/machine-id").split() == [hostname, machine_id]

    assert "next boot: recovery" in _out(vm, "sudo kairos-agent bootentry --select recovery")
    _timed_reboot(vm, "recovery")
    assert _state(vm) == "recovery_boot"
    assert "cos-img/filename=/cOS/recovery.img" in _out(vm, "cat /proc/cmdline")

    # next_entry was one-shot: a plain reboot comes back to the active system.
    _timed_reboot(vm, "back to active")
    assert _state(vm) == "active_boot"
    assert "cos-img/filename=/cOS/active.img" in _out(vm, "cat /proc/cmdline")
    assert json.loads(_out(vm, "sudo kairos-agent bootentry --json"))["next_entry"] == ""
    assert _out(vm, LIST_MARKERS).split() == list(MARKERS[1:])
