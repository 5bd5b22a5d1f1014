"""Acceptance: A/B upgrades, boot assessment, power cuts, recovery and reset on one node.

One disk, installed on the host from the session ISO's root (as test_install's host install),
with the upgrade sources put on its COS_PERSISTENT by the host before the first boot:

- `v2-root/`: a root tree (version v0.2.0) for a `dir:` upgrade;
- `v3-noinit.squashfs`: a system whose init is gone (systemd and /sbin/init removed);
- `v3-unhealthy.squashfs`: a system that boots but fails the config's health check;
- `v4.tar`: an OCI archive (version v0.4.0) for an `ocifile:` upgrade;
- `v5.squashfs`, `v6.squashfs`: good systems for the power-cut scenarios.

The tests run in file order on the same machine (UEFI, TCG) and each checks one scenario of
the upgrade issue; a failure in one usually makes the later ones fail too. Serial logs:
tests/vm/logs/test_upgrade*.serial.log.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from kairos.vm.qemu import LOGIN_PROMPT, Firmware, Machine
from tests.vm.conftest import TIMINGS, Built, booted

pytestmark = pytest.mark.vm

DISK_GIB = 12
BOOT_TIMEOUT = 600
# Failed boots of a trial (each reboots by itself), then the fallback boot.
FALLBACK_TIMEOUT = 1500
UPGRADE_TIMEOUT = 1500  # a dir:/ocifile: upgrade packs ~700 MB with mksquashfs under TCG
SRC = "/usr/local/upgrade-src"
CONFIG = """#cloud-config
users:
- name: kairos
  passwd: kairos
  groups: [admin]
boot-assessment:
  tries: 2
stages:
  boot-assessment:
  - name: "vmtest health check"
    commands:
    - test ! -e /etc/kairos-vmtest-unhealthy
"""


# --- the disk --------------------------------------------------------------------------------


def _set_version(tree: Path, version: str) -> None:
    path = tree / "etc/kairos-release"
    lines = [
        f'KAIROS_VERSION="{version}"' if line.startswith("KAIROS_VERSION=") else line
        for line in path.read_text().splitlines()
    ]
    path.write_text("\n".join(lines) + "\n")


def _pack(tree: Path, out: Path) -> None:
    from kairos.run import run

    run(["mksquashfs", str(tree), str(out), "-comp", "gzip", "-Xcompression-level", "1",
         "-b", "1M", "-noappend", "-quiet", "-no-progress"])  # fmt: skip


def _make_sources(tree: Path, dest: Path) -> None:
    """Every upgrade source, made from the installed system's own tree."""
    from kairos.image.oci_write import write_oci_archive
    from kairos.run import run

    dest.mkdir(parents=True)
    _set_version(tree, "v0.5.0")
    _pack(tree, dest / "v5.squashfs")
    _set_version(tree, "v0.6.0")
    _pack(tree, dest / "v6.squashfs")
    _set_version(tree, "v0.4.0")
    write_oci_archive(tree, dest / "v4.tar", name="kairos-vmtest", version="v0.4.0", level=1)
    _set_version(tree, "v0.3.1")
    (tree / "etc/kairos-vmtest-unhealthy").write_text("this system fails its health check\n")
    _pack(tree, dest / "v3-unhealthy.squashfs")
    (tree / "etc/kairos-vmtest-unhealthy").unlink()
    _set_version(tree, "v0.3.0")
    moved = []
    for init in ("usr/sbin/init", "usr/lib/systemd/systemd"):
        if (tree / init).exists() or (tree / init).is_symlink():
            (tree / init).rename(tree / f"{init}.gone")
            moved.append(init)
    assert moved, "the tree has no init to remove"
    _pack(tree, dest / "v3-noinit.squashfs")
    for init in moved:
        (tree / f"{init}.gone").rename(tree / init)
    _set_version(tree, "v0.2.0")
    run(["cp", "-a", f"{tree}/.", str(dest / "v2-root")])


@pytest.fixture(scope="module")
def upgrade_disk(kairos_build: Built, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kairos.cli import main
    from kairos.disk import loop, mount
    from kairos.run import run

    work = tmp_path_factory.mktemp("upgrade")
    live = work / "live.squashfs"
    run(["xorriso", "-osirrox", "on", "-indev", str(kairos_build.iso),
         "-extract", "/rootfs.squashfs", str(live)])  # fmt: skip
    node = work / "node"
    (node / "srv").mkdir(parents=True)
    tree = node / "srv/root"
    run(["unsquashfs", "-q", "-n", "-d", str(tree), str(live)])
    live.unlink()
    config = work / "install.yaml"
    config.write_text(CONFIG)
    disk = work / "disk.raw"
    with disk.open("wb") as fh:
        fh.truncate(DISK_GIB << 30)
    start = time.monotonic()
    with loop.attached(disk, partscan=True) as device:
        code = main(["--root", str(node), "manual-install", str(config),
                     "--device", str(device), "--source", "dir:/srv/root"])  # fmt: skip
        assert code == 0
        TIMINGS.append(("upgrade disk: host install", time.monotonic() - start))
        persistent = [
            p
            for p in sorted(Path("/dev").glob(f"{device.name}p*"))
            if run(["blkid", "-s", "LABEL", "-o", "value", str(p)], check=False).stdout.strip()
            == "COS_PERSISTENT"
        ]
        assert len(persistent) == 1
        start = time.monotonic()
        with ExitStack() as stack:
            target = stack.enter_context(mount.mounted(persistent[0], work / "persistent"))
            _make_sources(tree, target / SRC.removeprefix("/usr/local/"))
        TIMINGS.append(("upgrade disk: sources made", time.monotonic() - start))
    run(["rm", "-rf", "--one-file-system", str(node)])
    return disk


# --- the node --------------------------------------------------------------------------------


class Node:
    """The machine under test; `power_cut` kills QEMU and starts it again on the same disk."""

    def __init__(self, disk: Path) -> None:
        self.disk = disk
        self.stack = ExitStack()
        self.boots = 0
        self.vm = self._start()

    def _start(self) -> Machine:
        self.boots += 1
        return self.stack.enter_context(
            booted(f"test_upgrade-{self.boots}", self.disk, firmware=Firmware.UEFI, persist=True)
        )

    def power_cut(self) -> None:
        self.vm.close()  # SIGKILL: nothing is flushed, as when the power goes
        self.vm = self._start()

    def close(self) -> None:
        self.stack.close()

    def out(self, command: str, timeout: float = 180) -> str:
        result = self.vm.ssh(command, timeout=timeout)
        assert result.returncode == 0, f"{command!r} failed ({result.returncode}):\n" + (
            result.stdout + result.stderr
        )
        return result.stdout.strip()

    def wait_up(self, timeout: float = BOOT_TIMEOUT, what: str = "") -> None:
        start = time.monotonic()
        # Trial boots that fail print panics and emergency messages: they are expected.
        self.vm.wait_for(LOGIN_PROMPT, timeout, fail_on=None)
        self.vm.wait_for_ssh(timeout)
        if what:
            TIMINGS.append((what, time.monotonic() - start))

    def settle(self, timeout: float = BOOT_TIMEOUT, what: str = "") -> None:
        """Up, and past the boot assessment: a boot whose health check fails reboots by
        itself, so wait for the boot that passes (or is not on trial)."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            self.wait_up(max(60.0, deadline - time.monotonic()))
            r = self.vm.ssh("sudo systemctl start kairos-boot-assessment.service", timeout=900)
            if r.returncode == 0:
                break
            assert time.monotonic() < deadline, "no boot passed its assessment in time"
        if what:
            TIMINGS.append((what, time.monotonic() - start))

    def reboot(self, timeout: float = BOOT_TIMEOUT, what: str = "") -> None:
        before = self.vm.boot_id()
        self.vm._cursor = len(self.vm.console())  # only the coming boot's prompt counts
        self.vm.ssh("sudo systemctl --no-block reboot", timeout=60)
        self.settle(timeout, what)
        assert self.vm.boot_id() != before, "the node did not reboot"

    def state(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.out("sudo kairos-agent state --json"))
        return data

    def version(self) -> str:
        return self.out(". /etc/kairos-release && echo $KAIROS_VERSION")

    def image_version(self, image: str) -> str:
        text = self.out(
            f"sudo unsquashfs -cat /run/initramfs/cos-state/cOS/{image} etc/kairos-release"
        )
        for line in text.splitlines():
            if line.startswith("KAIROS_VERSION="):
                return line.split("=", 1)[1].strip('"')
        return ""

    def upgrade(self, source: str, timeout: float = UPGRADE_TIMEOUT) -> str:
        start = time.monotonic()
        out = self.out(f"sudo kairos-agent upgrade --source {source}", timeout=timeout)
        TIMINGS.append((f"upgrade --source {source}", time.monotonic() - start))
        return out

    def state_bytes(self) -> str:
        return self.out("sudo sha256sum /dev/disk/by-label/COS_STATE", timeout=600).split()[0]


@pytest.fixture(scope="module")
def node(upgrade_disk: Path) -> Iterator[Node]:
    n = Node(upgrade_disk)
    try:
        n.settle(what="upgrade node: first boot to SSH")
        yield n
    finally:
        n.close()


def _assert_active(n: Node, version: str) -> dict[str, Any]:
    state = n.state()
    assert state["boot"] == "active_boot", state
    assert n.version() == version
    return state


# --- the scenarios ---------------------------------------------------------------------------


def test_upgrade_from_dir_keeps_persistent_data_and_host_keys(node: Node) -> None:
    n = node
    v1 = n.version()
    n.out("sudo sh -c 'echo kept > /var/lib/rancher/vmtest; echo kept > /home/kairos/vmtest'")
    keys = n.out("sudo sha256sum /etc/ssh/ssh_host_ed25519_key.pub")
    plan = json.loads(
        n.out(f"sudo kairos-agent upgrade --source dir:{SRC}/v2-root --dry-run --json")
    )["plan"]
    assert plan["source"]["version"] == "v0.2.0" and plan["replaced_image_goes_to"] != "dropped"

    n.upgrade(f"dir:{SRC}/v2-root")
    n.reboot(what="reboot into v0.2.0 (on trial)")
    state = _assert_active(n, "v0.2.0")
    assert n.image_version("passive.img") == v1
    assert state["boot_assessment"]["state"] == "none"
    assert "passed its checks" in state["boot_assessment"]["last_result"]
    assert n.out("cat /var/lib/rancher/vmtest /home/kairos/vmtest") == "kept\nkept"
    assert n.out("sudo sha256sum /etc/ssh/ssh_host_ed25519_key.pub") == keys
    # Upgrading to the running version is a no-op.
    assert "nothing to do" in n.upgrade(f"dir:{SRC}/v2-root")


def test_refusals_write_nothing(node: Node) -> None:
    n = node
    before = n.state_bytes()
    n.out(f"sudo mkdir -p {SRC}/nokernel/usr {SRC}/nokernel/etc")
    n.out(f"sudo sh -c 'head -c 4096 {SRC}/v5.squashfs > {SRC}/huge.squashfs && "
          f"truncate -s 40G {SRC}/huge.squashfs'")  # fmt: skip
    cases = {
        f"dir:{SRC}/nokernel": "boot/vmlinuz is missing",
        f"file:{SRC}/huge.squashfs": "needed for the new image",
        "http://example.com/image": "unknown source scheme",
        "oci:quay.io/kairos/debian:latest": "registry not reachable",
    }
    for source, expected in cases.items():
        r = n.vm.ssh(f"sudo kairos-agent upgrade --source {source}", timeout=300)
        assert r.returncode != 0, f"{source}: accepted"
        assert expected in r.stdout + r.stderr, (source, r.stdout + r.stderr)
        assert "nothing was written" in r.stdout + r.stderr
    n.out(f"sudo rm -rf {SRC}/nokernel {SRC}/huge.squashfs")
    assert n.state_bytes() == before


def test_broken_init_falls_back_and_reports(node: Node) -> None:
    n = node
    n.upgrade(f"file:{SRC}/v3-noinit.squashfs")
    mark = len(n.vm.console())
    n.reboot(FALLBACK_TIMEOUT, what="v0.3.0 without init: 2 failed tries, then passive")
    state = n.state()
    assert state["boot"] == "passive_boot", state
    assert n.version() == "v0.2.0"
    ba = state["boot_assessment"]
    assert ba["state"] == "fellback" and ba["version"] == "v0.3.0", ba
    # immucore kept why the trial boots failed (the try itself was spent by GRUB).
    assert "initramfs step 'init'" in ba["reason"] and "no executable init" in ba["reason"], ba
    assert state["upgrade_failure"] is True and "v0.3.0" in state["fallback_reason"]
    motd = n.out("cat /run/motd.d/50-kairos-upgrade-failure")
    assert "Upgrade to v0.3.0 failed" in motd and "no executable init" in motd, motd
    assert "v0.3.0" in n.out("sudo journalctl -b -u kairos-upgrade-notice --no-pager")
    # GRUB tried the new system twice, then passive: three kernels, two with the trial word.
    kernels = re.findall(r"\] Command line: ([^\n]*)", n.vm.console()[mark:])
    assert len(kernels) == 3, kernels
    assert ["kairos.assessment=trying" in k for k in kernels] == [True, True, False]
    assert "kairos.assessment=fallback" in kernels[2]


def test_failing_health_check_falls_back_and_good_ocifile_upgrade_rearms(node: Node) -> None:
    n = node
    # Booted from passive: the failed active slot is replaced, passive (v0.2.0) is kept.
    n.upgrade(f"file:{SRC}/v3-unhealthy.squashfs")
    assert n.image_version("passive.img") == "v0.2.0"
    n.reboot(FALLBACK_TIMEOUT, what="v0.3.1 unhealthy: health check fails, then passive")
    state = n.state()
    assert state["boot"] == "passive_boot" and n.version() == "v0.2.0"
    ba = state["boot_assessment"]
    assert ba["version"] == "v0.3.1" and "health check failed" in ba["reason"], ba

    n.upgrade(f"ocifile:{SRC}/v4.tar")
    n.reboot(what="reboot into v0.4.0 from an ocifile (re-armed)")
    state = _assert_active(n, "v0.4.0")
    assert state["boot_assessment"]["state"] == "none", state["boot_assessment"]
    assert n.image_version("passive.img") == "v0.2.0"
    assert n.out("cat /var/lib/rancher/vmtest /home/kairos/vmtest") == "kept\nkept"


def _upgrade_until_paused(n: Node, source: str, point: str) -> None:
    n.out(
        f"sudo systemd-run --unit kairos-vmtest-upgrade-{point} "
        f"--setenv=KAIROS_UPGRADE_PAUSE_AT={point} kairos-agent upgrade --source {source}"
    )
    deadline = time.monotonic() + UPGRADE_TIMEOUT
    while time.monotonic() < deadline:
        log = n.out(f"sudo journalctl -u kairos-vmtest-upgrade-{point} --no-pager")
        if f"paused at '{point}'" in log:
            return
        assert "upgrade refused" not in log and "failed" not in log.lower(), log
        time.sleep(3)
    pytest.fail(f"the upgrade never reached {point}")


@pytest.mark.parametrize(
    ("point", "expected"),
    # Before the swap the running version stays active; after it, the new one is.
    [("write", ""), ("switch", ""), ("rotate", "v0.5.0")],
)
def test_power_cut_during_upgrade(node: Node, point: str, expected: str) -> None:
    n = node
    expected = expected or n.version()
    _upgrade_until_paused(n, f"file:{SRC}/v5.squashfs", point)
    n.power_cut()
    n.settle(FALLBACK_TIMEOUT, what=f"power cut at '{point}': boot")
    state = _assert_active(n, expected)
    assert state["boot_assessment"]["state"] == "none", state["boot_assessment"]
    if point == "rotate":
        # The good boot finished the interrupted rename: the old system is passive again.
        assert n.image_version("passive.img") != "v0.5.0"
        assert n.out("sudo ls /run/initramfs/cos-state/cOS").split() == [
            "active.img",
            "passive.img",
        ]


def test_power_cut_during_first_boot_of_new_image(node: Node) -> None:
    n = node
    n.upgrade(f"file:{SRC}/v6.squashfs")
    n.vm._cursor = len(n.vm.console())
    n.vm.ssh("sudo systemctl --no-block reboot", timeout=60)
    n.vm.wait_for(r"Command line:.*kairos\.assessment=trying", BOOT_TIMEOUT, fail_on=None)
    time.sleep(10)  # well into the new system's boot
    n.power_cut()
    n.settle(FALLBACK_TIMEOUT, what="power cut in the first boot of v0.6.0: next boot")
    # Two tries: the cut used one, the second boot reaches the health point.
    state = _assert_active(n, "v0.6.0")
    assert state["boot_assessment"]["state"] == "none"


def test_both_images_corrupt_boots_recovery_and_reset_restores(node: Node) -> None:
    n = node
    n.out("sudo mount -o remount,rw /run/initramfs/cos-state")
    for image in ("active.img", "passive.img"):
        # The superblock only: the running system keeps reading its own image's data.
        n.out(f"sudo dd if=/dev/urandom of=/run/initramfs/cos-state/cOS/{image} bs=4096 "
              "count=1 conv=notrunc,fsync status=none")  # fmt: skip
    oem_before = n.out("sudo sha256sum /oem/90_custom.yaml")
    n.reboot(FALLBACK_TIMEOUT, what="active and passive corrupt: to recovery")
    assert n.state()["boot"] == "recovery_boot"

    start = time.monotonic()
    n.out("sudo kairos-agent reset --unattended", timeout=UPGRADE_TIMEOUT)
    TIMINGS.append(("reset from recovery", time.monotonic() - start))
    n.reboot(what="reboot after reset")
    state = n.state()
    assert state["boot"] == "active_boot", state
    assert n.vm.ssh("test -e /var/lib/rancher/vmtest").returncode != 0  # persistent wiped
    assert n.out("sudo sha256sum /oem/90_custom.yaml") == oem_before  # OEM kept


def test_shutdown_cleanly(node: Node) -> None:
    """Last: the node still powers off cleanly (nothing left mounted rw or hanging)."""
    assert node.vm.poweroff() == 0
