"""Facts about the target system that conditions test: OS, version, arch, init, hostname."""

from __future__ import annotations

import platform
import shlex
import socket

from kairos.context import Context
from kairos.stages.model import ServiceManager
from kairos.stages.paths import read_text, rooted

# yip reports Go's GOARCH names; users write either those or the kernel's.
_GOARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "i386": "386"}


def os_release(ctx: Context) -> dict[str, str]:
    text = read_text(ctx, "/etc/os-release") or read_text(ctx, "/usr/lib/os-release")
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            try:
                parts = shlex.split(value)
            except ValueError:
                parts = [value.strip("\"'")]
            out[key.strip()] = parts[0] if parts else ""
    return out


def arch_names() -> tuple[str, ...]:
    machine = platform.machine()
    return (machine, _GOARCH[machine]) if machine in _GOARCH else (machine,)


def service_manager(ctx: Context) -> ServiceManager:
    """What the root boots with, told by its binaries (a running system is not required)."""
    for node in ("/usr/lib/systemd/systemd", "/lib/systemd/systemd", "/usr/bin/systemctl"):
        if rooted(ctx, node).exists():
            return ServiceManager.SYSTEMD
    for node in ("/sbin/openrc", "/sbin/openrc-run", "/usr/sbin/openrc"):
        if rooted(ctx, node).exists():
            return ServiceManager.OPENRC
    return ServiceManager.UNKNOWN


def hostname(ctx: Context) -> str:
    if ctx.is_host_root:
        return socket.gethostname()
    return read_text(ctx, "/etc/hostname").strip()
