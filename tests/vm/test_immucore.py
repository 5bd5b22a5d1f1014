"""Acceptance: immucore boots an installed-layout disk immutably (direct kernel boot, TCG).

The disk is made here, without mounts: GPT with COS_OEM (holding this test's cloud-config),
COS_RECOVERY (cOS/recovery.img), COS_STATE (cOS/active.img and cOS/passive.img, all the
build's squashfs) and an empty COS_PERSISTENT, each filesystem filled by `mkfs.ext4 -d` and
copied in with `dd conv=notrunc,sparse`. Three boots of the one disk: active (write files),
passive (what persisted, what did not), recovery (no persistence). The guest answers over
SSH as a test user created by /oem/99_test.yaml, so the stages take effect too.
Serial logs: tests/vm/logs/immucore-<boot>.serial.log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kairos.run import run
from kairos.vm import qemu
from kairos.vm.qemu import LOGIN_PROMPT, Firmware, Machine
from tests.vm.conftest import LOGS, TIMINGS, Built, booted

pytestmark = pytest.mark.vm

BOOT_TIMEOUT = 480
USER, PASSWORD = "immucore", "immucore-test-pw"
COMMON = (
    "rd.cos.oemlabel=COS_OEM rd.cos.oemtimeout=10 panic=5 rd.emergency=reboot rd.shell=0 "
    "systemd.crash_reboot=yes console=tty1 console=ttyS0,115200"
)
CMDLINES = {
    "active": f"root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img {COMMON}",
    "passive": f"root=LABEL=COS_PASSIVE cos-img/filename=/cOS/passive.img {COMMON}",
    "recovery": f"root=LABEL=COS_SYSTEM cos-img/filename=/cOS/recovery.img {COMMON}",
}
MIB = 1 << 20


def oem_config(pubkey: str) -> str:
    return f"""#cloud-config
name: "immucore VM test"
stages:
  initramfs:
    - name: "Test user"
      users:
        {USER}:
          passwd: "{PASSWORD}"
          shell: /bin/bash
          homedir: /home/{USER}
          groups:
            - admin
          ssh_authorized_keys:
            - "{pubkey}"
"""


@dataclass(frozen=True)
class Parts:
    kernel: Path
    initrd: Path
    squashfs: Path


@pytest.fixture(scope="module")
def parts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Parts:
    """Kernel, initrd and squashfs of the session's build (taken out of its ISO).

    KAIROS_IMMUCORE_NETBOOT=DIR uses the files of a `kairos build --format netboot` instead
    (kairos-kernel, kairos-initrd, kairos.squashfs), for re-running this test alone.
    """
    netboot = os.environ.get("KAIROS_IMMUCORE_NETBOOT")
    if netboot:
        d = Path(netboot)
        return Parts(d / "kairos-kernel", d / "kairos-initrd", d / "kairos.squashfs")
    kairos_build: Built = request.getfixturevalue("kairos_build")
    out = tmp_path_factory.mktemp("immucore-parts")
    pairs = {"/boot/kernel": "kernel", "/boot/initrd": "initrd", "/rootfs.squashfs": "root.sqfs"}
    argv = ["xorriso", "-osirrox", "on", "-indev", str(kairos_build.iso)]
    for inside, name in pairs.items():
        argv += ["-extract", inside, str(out / name)]
    run(argv)
    return Parts(out / "kernel", out / "initrd", out / "root.sqfs")


def make_disk(workdir: Path, squashfs: Path, oem_yaml: str) -> Path:
    """The installed layout as one raw disk image, built from files only."""
    trees = {name: workdir / name for name in ("oem", "recovery", "state", "persistent")}
    for tree in trees.values():
        tree.mkdir(parents=True)
    (trees["oem"] / "99_test.yaml").write_text(oem_yaml)
    (trees["state"] / "cOS").mkdir()
    (trees["recovery"] / "cOS").mkdir()
    shutil.copyfile(squashfs, trees["state"] / "cOS/active.img")
    # A hard link: mkfs.ext4 -d keeps it, so passive costs no space.
    os.link(trees["state"] / "cOS/active.img", trees["state"] / "cOS/passive.img")
    os.link(trees["state"] / "cOS/active.img", trees["recovery"] / "cOS/recovery.img")
    image_mib = squashfs.stat().st_size // MIB + 1
    sizes = {"oem": 64, "recovery": image_mib + 48, "state": image_mib + 48, "persistent": 256}
    labels = {
        "oem": "COS_OEM",
        "recovery": "COS_RECOVERY",
        "state": "COS_STATE",
        "persistent": "COS_PERSISTENT",
    }
    disk = workdir / "disk.raw"
    run(["truncate", "-s", f"{sum(sizes.values()) + 4}M", str(disk)])
    table = "label: gpt\nfirst-lba: 2048\n" + "".join(
        f'size={sizes[n]}MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="{labels[n]}"\n'
        for n in sizes
    )
    run(["sfdisk", "-q", str(disk)], input=table)
    starts = [
        int(x) for x in re.findall(r"start=\s*(\d+)", run(["sfdisk", "-d", str(disk)]).stdout)
    ]
    for (name, size), start in zip(sizes.items(), starts, strict=True):
        fs = workdir / f"{name}.ext4"
        run(["mkfs.ext4", "-q", "-F", "-L", labels[name], "-d", str(trees[name]), str(fs),
             f"{size}M"])  # fmt: skip
        run(["dd", f"if={fs}", f"of={disk}", "bs=1M", f"seek={start * 512 // MIB}",
             "conv=notrunc,sparse", "status=none"])  # fmt: skip
        fs.unlink()
    return disk


@contextmanager
def direct_kernel(kernel: Path, initrd: Path, append: str) -> Iterator[None]:
    """QEMU's own -kernel/-initrd/-append on top of the harness's command line."""
    original = qemu.qemu_argv

    def argv(plan: qemu.QemuPlan) -> list[str]:
        return [*original(plan), "-kernel", str(kernel), "-initrd", str(initrd), "-append", append]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(qemu, "qemu_argv", argv)
        yield


@dataclass
class Boot:
    """What one boot showed: command outputs by name, and immucore's log."""

    name: str
    out: dict[str, str] = field(default_factory=dict)
    seconds_to_ssh: float = 0.0


def _sh(vm: Machine, command: str) -> str:
    result = vm.ssh(command, timeout=120)
    assert result.returncode == 0, f"{command!r} failed ({result.returncode}): {result.stderr}"
    return result.stdout.strip()


QUERIES = {
    "modes": "ls /run/cos | grep _mode$ || true",
    "root": "findmnt -n -o SOURCE,FSTYPE,OPTIONS /",
    "root_backing": "cat /sys/block/$(basename $(findmnt -n -o SOURCE /))/loop/backing_file",
    "usr_write": "sudo -n touch /usr/immucore-test 2>&1 && echo writable || echo read-only",
    "etc_fstype": "findmnt -n -o FSTYPE /etc",
    "usr_local": "findmnt -n -o SOURCE,FSTYPE /usr/local || echo none",
    "fstab": "cat /etc/fstab",
    "state": "sudo -n kairos-agent state",
    "log": "sudo -n cat /run/immucore/immucore.log",
    "machine_id": "cat /etc/machine-id",
    "host_key": "sudo -n ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub",
    "markers": "for f in /etc/m /home/immucore/m /root/m /var/log/m /usr/local/m; do "
    "sudo -n test -e $f && echo $f; done; true",
    "boot_time": "systemd-analyze || true",
    "failed_units": "systemctl --failed --no-legend --plain | cut -d' ' -f1",
    "journal_errors": "sudo -n journalctl -b -p err --no-pager | tail -20",
}
WRITE_MARKERS = (
    "sudo -n sh -c 'for f in /etc/m /home/immucore/m /root/m /var/log/m /usr/local/m; "
    "do echo x > $f; done; sync'"
)


def boot_and_query(name: str, disk: Path, parts: Parts, append: str, write: bool) -> Boot:
    boot = Boot(name)
    with (
        direct_kernel(parts.kernel, parts.initrd, append),
        booted(
            f"immucore-{name}",
            disk,
            firmware=Firmware.BIOS,
            persist=True,
            no_reboot=True,
            ssh_user=USER,
            ssh_password=PASSWORD,
        ) as vm,
    ):
        vm.wait_for(LOGIN_PROMPT, BOOT_TIMEOUT)
        vm.wait_for_ssh(BOOT_TIMEOUT)
        boot.seconds_to_ssh = vm.uptime()
        TIMINGS.append((f"immucore {name}: QEMU start to SSH login", boot.seconds_to_ssh))
        for key, command in QUERIES.items():
            boot.out[key] = _sh(vm, command)
        if write:
            _sh(vm, WRITE_MARKERS)
        vm.poweroff(180)
    return boot


@pytest.fixture(scope="module")
def boots(parts: Parts, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Boot]:
    work = Path(tmp_path_factory.mktemp("immucore-disk"))
    key = work / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)])
    disk = make_disk(work, parts.squashfs, oem_config(key.with_suffix(".pub").read_text().strip()))
    out = {}
    out["active"] = boot_and_query("active", disk, parts, CMDLINES["active"], write=True)
    out["passive"] = boot_and_query("passive", disk, parts, CMDLINES["passive"], write=False)
    out["recovery"] = boot_and_query("recovery", disk, parts, CMDLINES["recovery"], write=False)
    # Everything the guests answered, beside the serial logs, for reading after a failure.
    dump = {b.name: {"seconds_to_ssh": b.seconds_to_ssh, **b.out} for b in out.values()}
    (LOGS / "immucore-answers.json").write_text(json.dumps(dump, indent=1) + "\n")
    for boot in out.values():
        share = immucore_seconds(boot.out["log"])
        TIMINGS.append((f"immucore {boot.name}: immucore's own time (log)", share))
    return out


def immucore_seconds(log: str) -> float:
    """Both phases, from python's exec to the end of each (the log's own figures)."""
    return sum(float(s) for s in re.findall(r"phase \w+ took ([0-9.]+) s", log))


def test_boot_state_sentinels(boots: dict[str, Boot]) -> None:
    assert boots["active"].out["modes"].split() == ["active_mode"]
    assert boots["passive"].out["modes"].split() == ["passive_mode"]
    assert boots["recovery"].out["modes"].split() == ["recovery_mode"]
    assert "active_boot" in boots["active"].out["state"]
    assert "passive_boot" in boots["passive"].out["state"]


def test_root_is_the_read_only_squashfs_image(boots: dict[str, Boot]) -> None:
    for name, image in (("active", "active"), ("passive", "passive"), ("recovery", "recovery")):
        out = boots[name].out
        source, fstype, options = out["root"].split()
        assert source.startswith("/dev/loop"), out["root"]
        assert fstype == "squashfs"
        assert "ro" in options.split(",")
        assert out["root_backing"].endswith(f"/cOS/{image}.img"), out["root_backing"]
        assert out["usr_write"].endswith("read-only")
        assert out["etc_fstype"] == "overlay"


def test_persistence_across_reboots(boots: dict[str, Boot]) -> None:
    active, passive = boots["active"].out, boots["passive"].out
    # /usr/local is COS_PERSISTENT itself (vda4 here), not an overlay.
    assert active["usr_local"].split() == ["/dev/vda4", "ext4"], active["usr_local"]
    # Written on the first boot: the ephemeral /etc file is gone, the rest persisted.
    assert passive["markers"].split() == ["/home/immucore/m", "/root/m", "/var/log/m",
                                          "/usr/local/m"]  # fmt: skip
    assert passive["machine_id"] == active["machine_id"] != ""
    assert passive["host_key"] == active["host_key"] != ""


def test_recovery_has_no_persistence(boots: dict[str, Boot]) -> None:
    recovery = boots["recovery"].out
    # Upstream's built-in RW_PATHS (the recovery layout sets none) make it a tmpfs overlay.
    assert recovery["usr_local"].split() == ["overlay", "overlay"], recovery["usr_local"]
    assert recovery["markers"] == ""
    assert "COS_PERSISTENT" not in recovery["fstab"]


def test_fstab_describes_the_layout(boots: dict[str, Boot]) -> None:
    lines = boots["active"].out["fstab"].splitlines()
    assert "/dev/disk/by-label/COS_ACTIVE / auto ro 0 0" in lines
    assert "/dev/disk/by-label/COS_OEM /oem auto defaults 0 0" in lines
    assert "tmpfs /run/overlay tmpfs defaults,size=25% 0 0" in lines
    assert "/dev/disk/by-label/COS_PERSISTENT /usr/local auto defaults 0 0" in lines
    assert "/usr/local/.state/etc-ssh.bind /etc/ssh none defaults,bind 0 0" in lines
    assert "tmpfs /tmp tmpfs defaults,mode=1777 0 0" in lines


def test_no_unit_failed(boots: dict[str, Boot]) -> None:
    # systemd-resolved's PrivateDevices= namespace needs a writable /tmp on a read-only root.
    for boot in boots.values():
        assert boot.out["failed_units"] == "", (boot.name, boot.out["journal_errors"])


def test_immucore_log_and_time(boots: dict[str, Boot]) -> None:
    for boot in boots.values():
        log = boot.out["log"]
        assert "phase root took" in log and "phase layout took" in log, log
        assert "FAILED" not in log, log
        assert 0 < immucore_seconds(log) < boot.seconds_to_ssh
