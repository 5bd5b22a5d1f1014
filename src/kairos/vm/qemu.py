"""Boot Kairos artifacts in QEMU: accelerator detection, the QEMU command line, and `Machine`.

`qemu_argv` is a pure function of a resolved `QemuPlan` so its exact output is unit-tested;
`Machine` owns one running QEMU process (serial console in a file, QMP socket, SSH forwarded
to localhost) and is a context manager that always kills the process on exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TextIO

from kairos.errors import KairosError
from kairos.run import Result, require_tools, run

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
# getty's prompt: "<hostname> login: " at the start of a line. Not anchored at the line's end:
# a kernel message printed right after the prompt lands on the same line.
LOGIN_PROMPT = r"^[\w.-]+ login: "
_PR_SET_PDEATHSIG = 1
# Console lines after which a boot cannot come up on its own.
BOOT_FAILURE = (
    r"Kernel panic - not syncing.*|Entering emergency mode.*|You are in emergency mode.*"
    r"|Press Enter for maintenance.*|Dracut Emergency Shell.*"
)
# Boots under TCG take 45-80 s here; leave room for a slow, busy host.
DEFAULT_BOOT_TIMEOUT = 300.0
_ANSI_RE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|[()][0-9A-Za-z]|[=>78cM])")
_SIZE_RE = re.compile(r"^[1-9][0-9]*[KMGT]?$")
_TOOL_PACKAGES = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "sshpass": "sshpass",
    "ssh": "openssh-client",
    "xorriso": "xorriso",
}


class VMError(KairosError):
    """The virtual machine failed, or did not do what was awaited in time."""


class Accel(StrEnum):
    KVM = "kvm"
    TCG = "tcg"


class Firmware(StrEnum):
    UEFI = "uefi"
    BIOS = "bios"


class ArtifactKind(StrEnum):
    ISO = "iso"
    RAW = "raw"
    QCOW2 = "qcow2"


class DiskFormat(StrEnum):
    QCOW2 = "qcow2"
    RAW = "raw"


@dataclass(frozen=True)
class AccelChoice:
    accel: Accel
    reason: str


def detect_accel(
    dev_kvm: Path = Path("/dev/kvm"),
    sys_module: Path = Path("/sys/module"),
    cpuinfo: Path = Path("/proc/cpuinfo"),
    override: str | None = None,
) -> AccelChoice:
    """KVM when it can run stock kernels and OVMF, TCG otherwise; the reason says why.

    `kvm_pvm` provides a /dev/kvm that only runs PVM-enabled guest kernels: OVMF dies with an
    emulation failure and a stock kernel stalls after its real-mode setup, so it counts as absent.
    """
    if override:
        try:
            accel = Accel(override.lower())
        except ValueError as exc:
            raise VMError(
                f"KAIROS_VM_ACCEL: unknown accelerator '{override}'.", hint="use kvm or tcg"
            ) from exc
        return AccelChoice(accel, "chosen by KAIROS_VM_ACCEL")
    if not dev_kvm.exists():
        return AccelChoice(Accel.TCG, f"{dev_kvm} does not exist")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return AccelChoice(Accel.TCG, f"no read/write permission on {dev_kvm}")
    if (sys_module / "kvm_pvm").exists():
        return AccelChoice(
            Accel.TCG,
            f"{dev_kvm} is kvm_pvm, which cannot run stock kernels or OVMF",
        )
    try:
        flags = cpuinfo.read_text(errors="replace")
    except OSError:
        flags = ""
    if not re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.MULTILINE):
        return AccelChoice(Accel.TCG, "the CPU has no vmx/svm flag (no hardware virtualization)")
    return AccelChoice(Accel.KVM, f"{dev_kvm} works with hardware virtualization")


def artifact_kind(path: Path) -> ArtifactKind:
    """Tell an ISO, a qcow2 and a raw disk image apart by their magic bytes."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
            f.seek(0x8001)
            iso_id = f.read(5)
    except OSError as exc:
        raise VMError(
            f"{path}: cannot read the artifact: {exc.strerror}.",
            hint="build one with 'kairos build --output out --format iso'",
        ) from exc
    if head == b"QFI\xfb":
        return ArtifactKind.QCOW2
    if iso_id == b"CD001":
        return ArtifactKind.ISO
    return ArtifactKind.RAW


def check_size(size: str) -> str:
    """Validate a disk size as qemu-img takes it (`20G`, `512M`)."""
    if not _SIZE_RE.match(size):
        raise VMError(f"--disk: bad size '{size}'.", hint="use a number with K, M, G or T: 20G")
    return size


@dataclass(frozen=True)
class MachineSpec:
    """What the user asks for; `Machine.start` resolves it into a `QemuPlan`."""

    artifact: Path
    firmware: Firmware = Firmware.UEFI
    memory_mib: int = 2048
    cpus: int = 2
    disk_size: str | None = None
    disk_format: DiskFormat = DiskFormat.QCOW2
    cloud_config: Path | None = None
    ssh_port: int = 0
    persist: bool = False
    no_reboot: bool = False
    accel: Accel | None = None
    ssh_user: str = "kairos"
    ssh_password: str = "kairos"
    # A private key: SSH logs in with it alone (no password tried); sudo still uses the password.
    ssh_key: Path | None = None


@dataclass(frozen=True)
class QemuPlan:
    """Every resolved input of one QEMU command line."""

    artifact: Path
    kind: ArtifactKind
    firmware: Firmware
    accel: Accel
    memory_mib: int
    cpus: int
    serial_log: Path
    qmp_socket: Path
    ssh_port: int
    ovmf_code: Path | None = None
    ovmf_vars: Path | None = None
    target_disk: Path | None = None
    target_format: DiskFormat = DiskFormat.QCOW2
    datasource: Path | None = None
    snapshot: bool = True
    no_reboot: bool = False


def _cd_slot(plan: QemuPlan, n: int) -> str:
    """Where CD n goes: the secondary IDE channel on `pc`, AHCI ports 2 and 3 on q35."""
    if plan.firmware is Firmware.UEFI:
        return f"bus=ide.{2 + n}"
    return f"bus=ide.1,unit={n}"


def qemu_argv(plan: QemuPlan) -> list[str]:
    """The QEMU command line for a plan (pure: no files are touched)."""
    argv = ["qemu-system-x86_64", "-name", "kairos", "-nodefaults", "-display", "none"]
    if plan.accel is Accel.KVM:
        argv += ["-accel", "kvm", "-cpu", "host"]
    else:
        argv += ["-accel", "tcg", "-cpu", "max"]
    argv += ["-m", str(plan.memory_mib), "-smp", str(plan.cpus)]
    if plan.firmware is Firmware.UEFI:
        if plan.ovmf_code is None or plan.ovmf_vars is None:
            raise VMError("UEFI boot needs the OVMF code and a per-VM copy of its variables.")
        argv += [
            "-machine",
            "q35",
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={plan.ovmf_code}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={plan.ovmf_vars}",
        ]
    else:
        argv += ["-machine", "pc"]
    snapshot = ",snapshot=on" if plan.snapshot else ""
    # Boot order by bootindex, which SeaBIOS and OVMF both honour (OVMF ignores `-boot once=d`
    # after a reset and keeps booting the DVD): the target disk first, then the artifact. A
    # blank target has no boot loader (no MBR signature, no EFI system partition), so the
    # firmware falls through to the CD; once an install wrote GRUB there, a reboot comes up
    # from the disk with the ISO still attached, as on real hardware.
    disk_first = plan.target_disk is not None
    if plan.kind is ArtifactKind.ISO:
        argv += [
            "-drive",
            f"file={plan.artifact},format=raw,if=none,id=artifact,media=cdrom,readonly=on",
            "-device",
            f"ide-cd,drive=artifact,{_cd_slot(plan, 0)},bootindex={2 if disk_first else 1}",
        ]
    else:
        argv += [
            "-drive",
            f"file={plan.artifact},format={plan.kind},if=none,id=artifact{snapshot}",
            "-device",
            f"virtio-blk-pci,drive=artifact,bootindex={2 if disk_first else 1}",
        ]
    if plan.target_disk is not None:
        argv += [
            "-drive",
            f"file={plan.target_disk},format={plan.target_format},if=none,id=target",
            "-device",
            "virtio-blk-pci,drive=target,bootindex=1",
        ]
    if plan.datasource is not None:
        # Last in the boot order, never booted (no boot image), but listed: OVMF connects only
        # the devices the boot order names, and GRUB or the OS must find it by its label.
        argv += [
            "-drive",
            f"file={plan.datasource},format=raw,if=none,id=datasource,media=cdrom,readonly=on",
            "-device",
            f"ide-cd,drive=datasource,{_cd_slot(plan, 1)},bootindex=3",
        ]
    argv += [
        "-nic",
        f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{plan.ssh_port}-:22",
        # Under TCG sshd and the kernel's RNG start faster with a host entropy source.
        "-device",
        "virtio-rng-pci",
        "-serial",
        f"file:{plan.serial_log}",
        "-monitor",
        "none",
        "-qmp",
        f"unix:{plan.qmp_socket},server=on,wait=off",
    ]
    if plan.no_reboot:
        argv.append("-no-reboot")
    return argv


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_console(data: bytes) -> str:
    """Serial bytes as text for matching and display: no ANSI escapes, no carriage returns."""
    text = data.decode(errors="replace")
    return _ANSI_RE.sub("", text).replace("\r", "")


def qmp_command(sock_path: Path, command: str, timeout: float = 5.0) -> dict[str, object]:
    """Send one QMP command and return QEMU's reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        reader = s.makefile("r")
        json.loads(reader.readline())  # greeting
        reply: dict[str, object] = {}
        for cmd in ("qmp_capabilities", command):
            s.sendall(json.dumps({"execute": cmd}).encode() + b"\n")
            while True:
                line = reader.readline()
                if not line:
                    return reply
                msg = json.loads(line)
                if "event" not in msg:
                    reply = msg
                    break
        return reply


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A pre-exec hook: QEMU gets SIGKILL when we die, even by SIGKILL (no orphaned VMs).

    QEMU runs in its own session so that Ctrl-C reaches us first and we shut it down in
    order; without this, a killed `kairos vm run` or test run would leave it running.
    """

    def hook() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os._exit(1)

    return hook


class Machine:
    """One QEMU virtual machine; `with Machine(spec) as vm:` always kills it on exit."""

    def __init__(
        self,
        spec: MachineSpec,
        *,
        workdir: Path | None = None,
        serial_log: Path | None = None,
        echo: TextIO | None = None,
    ) -> None:
        self.spec = spec
        self.echo = echo
        self._own_workdir = workdir is None
        self._workdir = workdir
        self._serial_log = serial_log
        self._proc: subprocess.Popen[bytes] | None = None
        self._cursor = 0
        self._echoed = 0
        self.plan: QemuPlan | None = None
        self.accel_reason = ""
        self.started_at = 0.0

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> Machine:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise VMError("the machine has not been started.")
        return self._workdir

    @property
    def serial_log(self) -> Path:
        return self._plan().serial_log

    @property
    def ssh_port(self) -> int:
        return self._plan().ssh_port

    def _plan(self) -> QemuPlan:
        if self.plan is None:
            raise VMError("the machine has not been started.")
        return self.plan

    def prepare(self) -> QemuPlan:
        """Resolve the spec: workdir, firmware variables, blank disk, datasource, ports."""
        from kairos.vm.datasource import write_cidata

        spec = self.spec
        require_tools(["qemu-system-x86_64", "qemu-img"], _TOOL_PACKAGES)
        kind = artifact_kind(spec.artifact)
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix="kairos-vm-", dir="/var/tmp"))
        self._workdir.mkdir(parents=True, exist_ok=True)
        if spec.accel is None:
            choice = detect_accel(override=os.environ.get("KAIROS_VM_ACCEL"))
        else:
            choice = AccelChoice(spec.accel, "chosen by the caller")
        self.accel_reason = choice.reason
        serial = self._serial_log or self._workdir / "serial.log"
        serial.parent.mkdir(parents=True, exist_ok=True)
        serial.write_bytes(b"")
        plan = QemuPlan(
            artifact=spec.artifact.resolve(),
            kind=kind,
            firmware=spec.firmware,
            accel=choice.accel,
            memory_mib=spec.memory_mib,
            cpus=spec.cpus,
            serial_log=serial,
            qmp_socket=self._workdir / "qmp.sock",
            ssh_port=spec.ssh_port or free_port(),
            snapshot=kind is not ArtifactKind.ISO and not spec.persist,
            no_reboot=spec.no_reboot,
        )
        if spec.firmware is Firmware.UEFI:
            if not OVMF_CODE.exists() or not OVMF_VARS.exists():
                raise VMError(
                    f"UEFI firmware not found at {OVMF_CODE}.", hint="apt-get install ovmf"
                )
            vars_copy = self._workdir / "OVMF_VARS.fd"
            shutil.copyfile(OVMF_VARS, vars_copy)
            plan = replace(plan, ovmf_code=OVMF_CODE, ovmf_vars=vars_copy)
        if spec.disk_size is not None:
            disk = self._workdir / f"disk.{spec.disk_format}"
            size = check_size(spec.disk_size)
            run(["qemu-img", "create", "-q", "-f", spec.disk_format, disk, size])
            plan = replace(plan, target_disk=disk, target_format=spec.disk_format)
        if spec.cloud_config is not None:
            plan = replace(
                plan, datasource=write_cidata(spec.cloud_config, self._workdir / "cidata.iso")
            )
        self.plan = plan
        return plan

    def start(self) -> None:
        """Start QEMU in the background (its own session, so Ctrl-C reaches us first)."""
        plan = self.plan or self.prepare()
        qemu_log = self.workdir / "qemu.log"
        for attempt in range(3):
            argv = qemu_argv(plan)
            with qemu_log.open("wb") as out:
                self._proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(os.getpid()),
                )
            self.started_at = time.monotonic()
            (self.workdir / "qemu.argv").write_text(" ".join(argv) + "\n")
            # QEMU fails fast on a bad option or a locked image: report that, not a timeout.
            time.sleep(0.5)
            if self._proc.poll() is None:
                return
            said = qemu_log.read_text(errors="replace").strip()
            # A port picked free a moment ago can be taken since; pick another one.
            if "host forwarding" in said and not self.spec.ssh_port and attempt < 2:
                plan = self.plan = replace(plan, ssh_port=free_port())
                continue
            hint = "choose another --ssh-port" if "host forwarding" in said else None
            raise VMError(
                f"QEMU exited at start with code {self._proc.returncode}: {said.rstrip('.')}.",
                hint=hint,
            )

    def uptime(self) -> float:
        """Seconds since QEMU started."""
        return time.monotonic() - self.started_at

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Kill QEMU if it still runs and remove a temporary workdir."""
        proc = self._proc
        if proc is not None and proc.pid > 0 and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self._pump_echo()
        if self._own_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    # -- serial console ----------------------------------------------------------------------

    def console(self) -> str:
        """The serial console so far, cleaned of escape sequences."""
        try:
            return clean_console(self._plan().serial_log.read_bytes())
        except FileNotFoundError:
            return ""

    def console_tail(self, lines: int = 40) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def _pump_echo(self) -> None:
        if self.echo is None or self.plan is None:
            return
        text = self.console()
        if len(text) > self._echoed:
            self.echo.write(text[self._echoed :])
            self.echo.flush()
            self._echoed = len(text)

    def wait_for(
        self,
        pattern: str,
        timeout: float = DEFAULT_BOOT_TIMEOUT,
        fail_on: str | None = BOOT_FAILURE,
    ) -> re.Match[str]:
        """Wait until `pattern` (a multiline regex) appears on the console after the last match.

        Fails at once when `fail_on` appears first (by default: a panic or an emergency shell,
        which no amount of waiting fixes).
        """
        regex = re.compile(pattern, re.MULTILINE)
        failure = re.compile(fail_on, re.MULTILINE) if fail_on else None
        deadline = time.monotonic() + timeout
        while True:
            # Ask before reading: output written just before QEMU exits still counts.
            alive = self.running()
            self._pump_echo()
            text = self.console()
            match = regex.search(text, self._cursor)
            if match:
                self._cursor = match.end()
                return match
            bad = failure.search(text, self._cursor) if failure else None
            if bad:
                raise VMError(
                    f"the boot failed before /{pattern}/ appeared: '{bad.group(0)}' "
                    f"after {self.uptime():.0f} s.",
                    hint=self._where_to_look(),
                )
            if not alive:
                raise VMError(
                    f"the VM stopped before /{pattern}/ appeared on its console "
                    f"(exit code {self._exit_code()}).",
                    hint=self._where_to_look(),
                )
            if time.monotonic() >= deadline:
                raise VMError(
                    f"/{pattern}/ did not appear on the console within {timeout:.0f} s "
                    f"({self.plan.accel if self.plan else '?'}).",
                    hint=self._where_to_look(),
                )
            time.sleep(0.5)

    def wait_exit(self, timeout: float | None = None) -> int:
        """Follow the console until QEMU exits (the guest powered off) and return its code."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running():
            self._pump_echo()
            if deadline is not None and time.monotonic() >= deadline:
                raise VMError(f"the VM did not stop within {timeout:.0f} s.")
            time.sleep(0.5)
        self._pump_echo()
        return self._exit_code()

    def _exit_code(self) -> int:
        code = self._proc.poll() if self._proc is not None else None
        return -1 if code is None else code

    def _where_to_look(self) -> str:
        qemu_log = self.workdir / "qemu.log"
        qemu_out = qemu_log.read_text(errors="replace").strip() if qemu_log.exists() else ""
        extra = f"; QEMU said: {qemu_out}" if qemu_out else ""
        return f"serial log {self._plan().serial_log}{extra}; last lines:\n{self.console_tail()}"

    # -- SSH and power -----------------------------------------------------------------------

    def _ssh_argv(self, command: str, connect_timeout: int) -> list[str]:
        if self.spec.ssh_key is not None:
            prefix = ["ssh"]
            auth = [
                *("-i", str(self.spec.ssh_key), "-o", "IdentitiesOnly=yes"),
                *("-o", "PasswordAuthentication=no", "-o", "KbdInteractiveAuthentication=no"),
                *("-o", "PreferredAuthentications=publickey"),
            ]
        else:
            prefix = ["sshpass", "-e", "ssh"]
            auth = [
                *("-o", "PubkeyAuthentication=no"),
                *("-o", "PreferredAuthentications=password,keyboard-interactive"),
            ]
        return [
            *prefix,
            *("-p", str(self._plan().ssh_port)),
            *("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"),
            *("-o", "LogLevel=ERROR", "-o", f"ConnectTimeout={connect_timeout}"),
            *auth,
            f"{self.spec.ssh_user}@127.0.0.1",
            command,
        ]

    def ssh(
        self, command: str, *, timeout: float = 120, check: bool = False, input: str | None = None
    ) -> Result:
        """Run a shell command in the guest over SSH (key login with `ssh_key`, else password)."""
        require_tools(["ssh"] if self.spec.ssh_key else ["sshpass", "ssh"], _TOOL_PACKAGES)
        return run(
            self._ssh_argv(command, connect_timeout=min(20, int(timeout))),
            check=check,
            timeout=timeout,
            input=input,
            env=None if self.spec.ssh_key else {"SSHPASS": self.spec.ssh_password},
        )

    def wait_for_ssh(self, timeout: float = DEFAULT_BOOT_TIMEOUT) -> None:
        """Wait until an SSH login works (sshd up, user and password in place)."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            self._pump_echo()
            if not self.running():
                raise VMError("the VM stopped while waiting for SSH.", hint=self._where_to_look())
            bad = re.search(BOOT_FAILURE, self.console()[self._cursor :], re.MULTILINE)
            if bad:
                raise VMError(
                    f"the boot failed while waiting for SSH: '{bad.group(0)}'.",
                    hint=self._where_to_look(),
                )
            try:
                result = self.ssh("true", timeout=30)
                if result.returncode == 0:
                    return
                last = (result.stderr or result.stdout).strip() or f"exit {result.returncode}"
            except subprocess.TimeoutExpired:
                last = "ssh timed out"
            if time.monotonic() >= deadline:
                raise VMError(
                    f"SSH login as {self.spec.ssh_user} on port {self.ssh_port} did not work "
                    f"within {timeout:.0f} s: {last}.",
                    hint=self._where_to_look(),
                )
            time.sleep(2)

    def boot_id(self) -> str:
        """The guest kernel's boot id: it changes with every boot."""
        result = self.ssh("cat /proc/sys/kernel/random/boot_id", timeout=60)
        if result.returncode != 0:
            raise VMError(f"cannot read the guest's boot id: {result.stderr.strip()}.")
        return result.stdout.strip()

    def reboot(self, timeout: float = DEFAULT_BOOT_TIMEOUT) -> None:
        """Reboot the guest over SSH and wait until the new boot answers over SSH.

        The old boot's sshd can still answer for a moment after the request, so the wait
        goes by the console's next login prompt and then checks that the boot id changed.
        """
        before = self.boot_id()
        # Only what the console shows from now on counts: the current boot's prompt is old.
        self._cursor = len(self.console())
        script = (
            "if [ $(id -u) = 0 ]; then systemctl --no-block reboot; "
            "else sudo -S -p '' systemctl --no-block reboot; fi"
        )
        result = self.ssh(script, timeout=60, input=self.spec.ssh_password + "\n")
        # 255: SSH lost the connection because the guest went down already, which is fine.
        if result.returncode not in (0, 255):
            raise VMError(f"the guest refused to reboot: {result.stderr.strip()}.")
        deadline = time.monotonic() + timeout
        self.wait_for(LOGIN_PROMPT, timeout)
        self.wait_for_ssh(max(30.0, deadline - time.monotonic()))
        if self.boot_id() == before:
            raise VMError("the guest answered over SSH after a reboot with its old boot id.")

    def qmp(self, command: str) -> dict[str, object]:
        return qmp_command(self._plan().qmp_socket, command)

    def poweroff(self, timeout: float = 180) -> int:
        """Shut the guest down cleanly (SSH, then ACPI), kill it at the deadline; return code."""
        if not self.running():
            return self._exit_code()
        deadline = time.monotonic() + timeout
        # sudo -S reads the password from stdin when the account needs one for sudo.
        script = (
            "if [ $(id -u) = 0 ]; then systemctl --no-block poweroff; "
            "else sudo -S -p '' systemctl --no-block poweroff; fi"
        )
        asked = False
        with contextlib.suppress(KairosError, subprocess.TimeoutExpired):
            result = self.ssh(script, timeout=30, input=self.spec.ssh_password + "\n")
            asked = result.returncode == 0
        # A guest that took the request gets most of the time: live media shut down slowly.
        if asked and self._wait_stopped(deadline - timeout / 4):
            return self._exit_code()
        if self._acpi_powerdown(deadline):
            return self._exit_code()
        self.close()
        raise VMError(f"the VM did not power off within {timeout:.0f} s; it was killed.")

    def _wait_stopped(self, until: float) -> bool:
        while self.running() and time.monotonic() < until:
            self._pump_echo()
            time.sleep(0.5)
        return not self.running()

    def _acpi_powerdown(self, until: float) -> bool:
        try:
            self.qmp("system_powerdown")
        except OSError:
            return not self.running()
        return self._wait_stopped(until)
