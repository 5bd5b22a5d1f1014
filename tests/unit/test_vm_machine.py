"""Machine's console waits and SSH command line, against a console file and a fake process."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest

from kairos.vm.qemu import LOGIN_PROMPT, Accel, Machine, MachineSpec, VMError


class FakeProc:
    """Stands in for the QEMU process: running until `code` is set."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.pid = -1

    def poll(self) -> int | None:
        return self.code


@pytest.fixture
def machine(tmp_path: Path, recorded_commands: list[tuple[str, ...]]) -> Machine:
    raw = tmp_path / "k.raw"
    raw.write_bytes(b"\0" * 70000)
    echo = io.StringIO()
    m = Machine(
        MachineSpec(artifact=raw, accel=Accel.TCG, ssh_port=2201),
        workdir=tmp_path / "w",
        echo=echo,
    )
    m.prepare()
    m._proc = FakeProc()  # type: ignore[assignment]
    return m


def _append(m: Machine, data: bytes) -> None:
    with m.serial_log.open("ab") as f:
        f.write(data)


def test_wait_for_matches_in_order_and_moves_past_each_match(machine: Machine) -> None:
    _append(machine, b"Linux version 6.1\r\nkairos login: ")
    assert machine.wait_for(r"Linux version (\S+)", timeout=1).group(1) == "6.1"
    assert machine.wait_for(r"login: ?$", timeout=1)
    # The same prompt is not found twice: a second wait needs a second prompt.
    with pytest.raises(VMError, match="did not appear on the console within 1 s"):
        machine.wait_for(r"login: ?$", timeout=1)
    _append(machine, b"\r\nkairos login: ")
    assert machine.wait_for(r"login: ?$", timeout=1)


def test_login_prompt_is_found_with_a_kernel_message_on_its_line(machine: Machine) -> None:
    _append(
        machine,
        b"Debian GNU/Linux 12 vm ttyS0\r\n\r\nvm login: [  183.28] EXT4-fs (vda5): re-mounted.\r\n",
    )
    assert machine.wait_for(LOGIN_PROMPT, timeout=1)
    # The "login:" inside a message is no prompt.
    _append(machine, b"[  190.1] systemd-logind: New session, last login: never\r\n")
    with pytest.raises(VMError, match="did not appear"):
        machine.wait_for(LOGIN_PROMPT, timeout=1)


def test_wait_for_sees_text_that_arrives_later(machine: Machine) -> None:
    def later() -> None:
        time.sleep(1)
        _append(machine, b"\x1b[0;32m  OK  \x1b[0m] Reached target multi-user\r\n")

    t = threading.Thread(target=later)
    t.start()
    start = time.monotonic()
    assert machine.wait_for(r"\] Reached target multi-user$", timeout=10)
    t.join()
    assert 0.9 < time.monotonic() - start < 5


def test_timeout_error_shows_the_console_tail(machine: Machine) -> None:
    _append(machine, b"Kernel panic - not syncing: VFS\r\n")
    with pytest.raises(VMError) as err:
        machine.wait_for("login:", timeout=0.5)
    assert err.value.hint is not None
    assert "Kernel panic - not syncing: VFS" in err.value.hint
    assert str(machine.serial_log) in err.value.hint


def test_a_stopped_vm_fails_the_wait_at_once(machine: Machine) -> None:
    machine._proc.code = 1  # type: ignore[union-attr]
    (machine.workdir / "qemu.log").write_text("qemu: could not open disk image\n")
    start = time.monotonic()
    with pytest.raises(VMError, match="stopped before") as err:
        machine.wait_for("login:", timeout=60)
    assert time.monotonic() - start < 5
    assert "could not open disk image" in (err.value.hint or "")


def test_console_is_echoed_once(machine: Machine) -> None:
    _append(machine, b"one\r\n")
    machine.wait_for("one", timeout=1)
    _append(machine, b"two\r\n")
    machine.wait_for("two", timeout=1)
    assert isinstance(machine.echo, io.StringIO)
    assert machine.echo.getvalue() == "one\ntwo\n"


def test_ssh_uses_sshpass_from_the_environment_not_argv(
    machine: Machine, recorded_commands: list[tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen_env: list[dict[str, str]] = []

    def fake(argv: tuple[str, ...], **kw: object) -> tuple[int, bytes, bytes]:
        recorded_commands.append(tuple(argv))
        seen_env.append(dict(kw["env"]))  # type: ignore[call-overload]
        return 0, b"ok\n", b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    result = machine.ssh("cat /proc/cmdline")
    assert result.stdout == "ok\n"
    argv = recorded_commands[-1]
    assert argv[:5] == ("sshpass", "-e", "ssh", "-p", "2201")
    assert argv[-2:] == ("kairos@127.0.0.1", "cat /proc/cmdline")
    assert "kairos" not in argv[:-2]  # the password never shows in argv
    assert seen_env[-1]["SSHPASS"] == "kairos"


def test_poweroff_asks_the_guest_over_ssh_with_sudo_reading_stdin(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[tuple[str, ...], bytes | None]] = []

    def fake(argv: tuple[str, ...], **kw: object) -> tuple[int, bytes, bytes]:
        seen.append((tuple(argv), kw["input"]))  # type: ignore[arg-type]
        machine._proc.code = 0  # type: ignore[union-attr]  # the guest goes down
        return 0, b"", b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    assert machine.poweroff(timeout=20) == 0
    (argv, stdin) = seen[0]
    assert "sudo -S -p '' systemctl --no-block poweroff" in argv[-1]
    assert stdin == b"kairos\n"


def test_poweroff_gives_up_at_the_deadline_when_nothing_answers(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kairos.run._spawn", lambda argv, **kw: (255, b"", b"refused"))
    start = time.monotonic()
    with pytest.raises(VMError, match="did not power off within 4 s"):
        machine.poweroff(timeout=4)
    assert time.monotonic() - start < 10


def test_an_emergency_shell_fails_the_boot_wait_at_once(machine: Machine) -> None:
    _append(machine, b"[FAILED] Failed to mount sysroot.mount\r\nEntering emergency mode. Exit\r\n")
    start = time.monotonic()
    with pytest.raises(VMError, match=r"boot failed before .* 'Entering emergency mode\. Exit'"):
        machine.wait_for("login:", timeout=60)
    assert time.monotonic() - start < 5
    # A caller waiting for something else can turn the check off.
    with pytest.raises(VMError, match="did not appear"):
        machine.wait_for("login:", timeout=0.5, fail_on=None)


def test_a_panic_fails_the_ssh_wait_at_once(machine: Machine) -> None:
    _append(machine, b"Kernel panic - not syncing: Attempted to kill init!\r\n")
    with pytest.raises(VMError, match="failed while waiting for SSH: 'Kernel panic"):
        machine.wait_for_ssh(timeout=60)


def test_ssh_with_a_key_logs_in_with_the_key_alone(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "k.raw"
    raw.write_bytes(b"\0" * 70000)
    key = tmp_path / "id_ed25519"
    spec = MachineSpec(artifact=raw, accel=Accel.TCG, ssh_port=2202, ssh_key=key)
    m = Machine(spec, workdir=tmp_path / "w")
    m.prepare()
    seen_env: list[object] = []

    def fake(argv: tuple[str, ...], **kw: object) -> tuple[int, bytes, bytes]:
        recorded_commands.append(tuple(argv))
        seen_env.append(kw["env"])
        return 0, b"", b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    m.ssh("true")
    argv = recorded_commands[-1]
    assert argv[0] == "ssh" and "sshpass" not in argv
    assert argv[argv.index("-i") + 1] == str(key)
    # Only the key is offered: a login that works proves the key was authorized.
    assert "PasswordAuthentication=no" in argv and "PreferredAuthentications=publickey" in argv
    assert argv[-2:] == ("kairos@127.0.0.1", "true")
    assert not isinstance(seen_env[-1], dict) or "SSHPASS" not in seen_env[-1]


def test_reboot_waits_for_a_new_login_prompt_and_a_new_boot_id(
    machine: Machine, monkeypatch: pytest.MonkeyPatch
) -> None:
    _append(machine, b"kairos login: ")  # the current boot's prompt must not count
    boot_ids = iter([b"old\n", b"new\n"])
    scripts: list[str] = []

    def fake(argv: tuple[str, ...], **kw: object) -> tuple[int, bytes, bytes]:
        command = argv[-1]
        scripts.append(command)
        if "boot_id" in command:
            return 0, next(boot_ids), b""
        if "reboot" in command:
            _append(
                machine, b"\r\nreboot: Restarting system\r\nLinux version 6.1\r\nkairos login: "
            )
            return 255, b"", b"Connection closed"
        return 0, b"", b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    machine.reboot(timeout=20)
    assert any("sudo -S -p '' systemctl --no-block reboot" in s for s in scripts)

    # An SSH answer from the old boot is not taken for the new one.
    boot_ids = iter([b"same\n", b"same\n"])
    with pytest.raises(VMError, match="old boot id"):
        machine.reboot(timeout=20)
