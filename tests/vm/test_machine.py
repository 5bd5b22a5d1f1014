"""The VM harness itself, on a GRUB-only ISO (seconds to boot): firmware, disks, datasource.

GRUB lists the devices the firmware hands it, so these tests check what QEMU really attached
without needing a Linux guest.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kairos.run import run
from kairos.vm.qemu import Firmware, Machine, VMError

pytestmark = pytest.mark.vm

PROBE_CFG = """\
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
insmod iso9660
echo "PROBE-BEGIN"
ls
echo ""
if search --no-floppy --label cidata --set=ds; then echo "PROBE-CIDATA $ds"; fi
echo "PROBE-END"
echo "probe login: "
sleep {sleep}
halt
"""


def _probe_iso(root: Path, sleep: int) -> Path:
    tree = root / f"tree-{sleep}"
    (tree / "boot/grub").mkdir(parents=True)
    (tree / "boot/grub/grub.cfg").write_text(PROBE_CFG.format(sleep=sleep))
    iso = root / f"probe-{sleep}.iso"
    run(["grub-mkrescue", "-o", iso, tree, "--", "-volid", "PROBE"])
    return iso


@pytest.fixture(scope="module")
def probe_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _probe_iso(tmp_path_factory.mktemp("probe"), sleep=1)


@pytest.fixture(scope="module")
def slow_probe_iso(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _probe_iso(tmp_path_factory.mktemp("probe"), sleep=600)


def test_uefi_sees_the_blank_disk_and_the_cidata_datasource(
    start_vm: Callable[..., Machine], probe_iso: Path, tmp_path: Path
) -> None:
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text("#cloud-config\nhostname: probe\n")
    vm = start_vm(probe_iso, firmware=Firmware.UEFI, disk_size="1G", cloud_config=user_data)
    devices = vm.wait_for(r"(?s)PROBE-BEGIN\n(.*?)PROBE-END", timeout=120).group(1)
    assert "(hd0)" in devices  # the blank virtio target disk
    assert "(cd0)" in devices  # the ISO itself
    assert "PROBE-CIDATA cd1" in devices  # the datasource, found by its label
    vm.wait_for(r"login: ?$", timeout=30)
    assert vm.wait_exit(timeout=60) == 0  # GRUB's halt powers the machine off


def test_bios_boots_the_cd_with_the_disk_attached(
    start_vm: Callable[..., Machine], probe_iso: Path
) -> None:
    vm = start_vm(probe_iso, firmware=Firmware.BIOS, disk_size="1G")
    devices = vm.wait_for(r"(?s)PROBE-BEGIN\n(.*?)PROBE-END", timeout=120).group(1)
    assert "(hd0)" in devices and "(cd)" in devices
    assert "PROBE-CIDATA" not in devices
    assert vm.wait_exit(timeout=60) == 0


def test_no_disk_means_no_hd(start_vm: Callable[..., Machine], probe_iso: Path) -> None:
    vm = start_vm(probe_iso, firmware=Firmware.BIOS)
    devices = vm.wait_for(r"(?s)PROBE-BEGIN\n(.*?)PROBE-END", timeout=120).group(1)
    assert "(hd0)" not in devices


def test_wait_for_times_out_with_the_console_in_the_error(
    start_vm: Callable[..., Machine], slow_probe_iso: Path
) -> None:
    vm = start_vm(slow_probe_iso, firmware=Firmware.BIOS)
    vm.wait_for("PROBE-END", timeout=120)
    with pytest.raises(VMError, match="never-printed") as err:
        vm.wait_for("never-printed", timeout=3)
    assert "probe login:" in (err.value.hint or "")


def test_machine_is_killed_on_exit_and_poweroff_has_a_deadline(slow_probe_iso: Path) -> None:
    from tests.vm.conftest import booted

    with booted("harness-kill", slow_probe_iso, firmware=Firmware.BIOS) as vm:
        vm.wait_for("PROBE-END", timeout=120)
        # GRUB answers neither SSH nor ACPI: poweroff must give up at its deadline and kill.
        start = time.monotonic()
        with pytest.raises(VMError, match="did not power off"):
            vm.poweroff(timeout=6)
        assert time.monotonic() - start < 60
        assert not vm.running()
    log = vm.serial_log
    assert log.exists() and "PROBE-END" in log.read_text()


def test_context_exit_kills_a_running_vm(slow_probe_iso: Path) -> None:
    from tests.vm.conftest import booted

    with booted("harness-exit", slow_probe_iso, firmware=Firmware.BIOS) as vm:
        vm.wait_for("PROBE-END", timeout=120)
        pid = vm._proc.pid if vm._proc else -1
        assert vm.running()
    assert not vm.running()
    assert not Path(f"/proc/{pid}").exists()


def test_a_taken_ssh_port_is_reported_at_start(probe_iso: Path) -> None:
    import socket

    from tests.vm.conftest import booted

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (
            pytest.raises(VMError, match=f"host forwarding rule 'tcp:127.0.0.1:{port}-:22'") as err,
            booted("harness-port", probe_iso, firmware=Firmware.BIOS, ssh_port=port),
        ):
            pass
    assert err.value.hint == "choose another --ssh-port"


def test_vm_run_command_streams_the_console_until_the_vm_exits(
    probe_iso: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from kairos.cli import main

    log = tmp_path / "serial.log"
    argv = ["vm", "run", str(probe_iso), "--bios", "--show-console", "--until-login"]
    assert main([*argv, "--serial-log", str(log), "--timeout", "120"]) == 0
    out, err = capsys.readouterr()
    assert "PROBE-END" in out and "probe login:" in out
    assert re.search(r"\(iso, bios\) on (tcg|kvm): \S", err)
    assert "ok boot to the login prompt" in err
    assert "PROBE-END" in log.read_text()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_killed_vm_run_leaves_no_qemu_behind(
    slow_probe_iso: Path, tmp_path: Path, how: signal.Signals
) -> None:
    log = tmp_path / "serial.log"
    kairos = Path(sys.executable).parent / "kairos"
    argv = [str(kairos), "vm", "run", str(slow_probe_iso), "--bios", "--serial-log", str(log)]
    cli = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workdir: Path | None = None
    try:
        deadline = time.monotonic() + 120
        while "PROBE-END" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline and cli.poll() is None
            time.sleep(0.5)
        qemu = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmd_has(p, str(log))]
        assert len(qemu) == 1
        cmdline = (qemu[0] / "cmdline").read_bytes().decode()
        qmp = re.search(r"unix:(/\S+?)/qmp\.sock", cmdline)
        assert qmp is not None
        workdir = Path(qmp.group(1))
        cli.send_signal(how)
        cli.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _alive(qemu[0]) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _alive(qemu[0]), "QEMU outlived the killed 'kairos vm run'"
        if how is signal.SIGTERM:
            assert cli.returncode == 130
            assert cli.stderr is not None and "interrupted" in cli.stderr.read().decode()
            assert not workdir.exists()  # cleaned up in order
    finally:
        if cli.poll() is None:
            cli.kill()
        # A SIGKILLed CLI cannot remove its temporary workdir; the test does.
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


def _cmd_has(proc: Path, needle: str) -> bool:
    try:
        cmd = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    is_qemu = bool(cmd) and cmd[0].endswith(b"qemu-system-x86_64")
    return is_qemu and needle.encode() in b" ".join(cmd)


def _alive(proc: Path) -> bool:
    """Running, not merely an unreaped zombie (orphans go to a PID 1 that may not reap)."""
    try:
        stat = (proc / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
