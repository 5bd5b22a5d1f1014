"""`hostname`, `sysctl`, `modules`, `timesyncd` and `environment`: small system files.

Each writes a persistent file under the root; on the live system (`--root /`) the value
is also applied now, as yip does (sethostname, /proc/sys, modprobe).
"""

from __future__ import annotations

import configparser
import io
import logging
import socket
from pathlib import Path

from kairos.context import Context
from kairos.errors import KairosError
from kairos.run import run
from kairos.stages.model import Step
from kairos.stages.paths import read_text, write_atomic

log = logging.getLogger("kairos.stages")

SYSCTL_FILE = "/etc/sysctl.d/99-kairos.conf"
MODULES_FILE = "/etc/modules-load.d/kairos.conf"
# A drop-in, under upstream's name: the distribution's own timesyncd.conf stays untouched.
TIMESYNCD_FILE = "/etc/systemd/timesyncd.conf.d/10-yip.conf"
ENVIRONMENT_FILE = "/etc/environment"


def apply_hostname(step: Step, ctx: Context) -> None:
    name = step.hostname.strip()
    if not name or len(name) > 64 or any(c.isspace() for c in name):
        raise KairosError(f"{step.where}: invalid hostname {step.hostname!r}.")
    write_atomic(ctx, "/etc/hostname", f"{name}\n".encode())
    # As upstream: the 127.0.0.1 line names localhost and the host. Debian's 127.0.1.1 line
    # would keep resolving the old name, so it goes.
    hosts = []
    for line in read_text(ctx, "/etc/hosts").splitlines():
        first = line.split()[:1]
        if first == ["127.0.1.1"]:
            continue
        hosts.append(f"127.0.0.1\tlocalhost {name}" if first == ["127.0.0.1"] else line)
    if not any(ln.split()[:1] == ["127.0.0.1"] for ln in hosts):
        hosts.insert(0, f"127.0.0.1\tlocalhost {name}")
    write_atomic(ctx, "/etc/hosts", ("\n".join(hosts) + "\n").encode())
    if ctx.owns_kernel:
        socket.sethostname(name)


def _kv_lines(text: str, sep: str = "=") -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, found, value = line.partition(sep)
        if found and key.strip() and not key.lstrip().startswith("#"):
            out[key.strip()] = value.strip()
    return out


def apply_sysctl(step: Step, ctx: Context) -> None:
    values = _kv_lines(read_text(ctx, SYSCTL_FILE))
    values.update(step.sysctl)
    body = "".join(f"{k} = {v}\n" for k, v in values.items())
    write_atomic(ctx, SYSCTL_FILE, body.encode())
    if ctx.owns_kernel:
        for key, value in step.sysctl.items():
            proc = Path("/proc/sys", *key.split("."))
            try:
                proc.write_text(f"{value}\n")
            except OSError as exc:
                raise KairosError(f"{step.where}: sysctl {key}={value}: {exc}.") from None


def apply_modules(step: Step, ctx: Context) -> None:
    current = [ln.strip() for ln in read_text(ctx, MODULES_FILE).splitlines() if ln.strip()]
    wanted = current + [m for m in step.modules if m not in current]
    write_atomic(ctx, MODULES_FILE, ("\n".join(wanted) + "\n").encode())
    if ctx.owns_kernel:
        # While booting, the root's modprobe: its /lib/modules has every module.
        prefix = ["chroot", str(ctx.root)] if ctx.booting and not ctx.is_host_root else []
        for module in step.modules:
            run([*prefix, "modprobe", module])


def apply_timesyncd(step: Step, ctx: Context) -> None:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are CamelCase
    try:
        parser.read_string(read_text(ctx, TIMESYNCD_FILE))
    except configparser.Error as exc:
        raise KairosError(f"{ctx.path(TIMESYNCD_FILE)}: unreadable: {exc}.") from None
    if not parser.has_section("Time"):
        parser.add_section("Time")
    for key, value in step.timesyncd.items():
        parser.set("Time", key, value)
    out = io.StringIO()
    parser.write(out, space_around_delimiters=False)
    write_atomic(ctx, TIMESYNCD_FILE, out.getvalue().encode())


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def apply_environment(step: Step, ctx: Context) -> None:
    target = step.environment_file or ENVIRONMENT_FILE
    lines = read_text(ctx, target).splitlines()
    pending = dict(step.environment)
    out = []
    for line in lines:
        key = line.partition("=")[0].strip().removeprefix("export ").strip()
        if key in pending:
            out.append(f"{key}={_quote(pending.pop(key))}")
        else:
            out.append(line)
    out.extend(f"{k}={_quote(v)}" for k, v in pending.items())
    write_atomic(ctx, target, ("\n".join(out) + "\n").encode())


def apply_firstboot(step: Step, ctx: Context) -> None:
    """`systemd_firstboot: {keymap: us, timezone: UTC, ...}` -> `systemd-firstboot --keymap=us`.

    As yip: a value "true" is a bare flag (`copy_locale: true` -> `--copy-locale`); settings
    already present in the root are kept, as systemd-firstboot does without --force.
    """
    args = []
    for key, value in sorted(step.systemd_firstboot.items()):
        flag = "--" + key.lower().replace("_", "-")
        args.append(flag if value.lower() == "true" else f"{flag}={value}")
    if ctx.is_host_root:
        run(["systemd-firstboot", *args])
    elif ctx.booting:
        # The initramfs has no systemd-firstboot of its own; the root's, with /proc bound in.
        run(["chroot", str(ctx.root), "systemd-firstboot", *args])
    else:
        # --root rather than chroot: the tool reads /proc, which a bare chroot lacks.
        run(["systemd-firstboot", f"--root={ctx.root}", *args])
