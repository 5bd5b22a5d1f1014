"""The node's runtime facts for `kairos-agent state` (upstream `sdk/state` Runtime).

Boot state comes from the `/run/cos/*_mode` sentinel immucore wrote (the published answer
for this boot), falling back to the kernel command line; partitions come from `lsblk --json`
matched by filesystem label; the Kairos release from `/etc/kairos-release`. Every file is
read through `ctx.path()`, so `--root` inspects an offline tree.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from kairos.context import Context
from kairos.errors import KairosError

log = logging.getLogger("kairos.agent.state")

EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
EFI_SYSTEMD = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"
LSBLK_COLUMNS = "NAME,PATH,LABEL,PARTLABEL,FSTYPE,MOUNTPOINT,SIZE,RO,UUID,PARTUUID"


class BootState(StrEnum):
    ACTIVE = "active_boot"
    PASSIVE = "passive_boot"
    RECOVERY = "recovery_boot"
    AUTORESET = "autoreset_boot"
    LIVECD = "livecd_boot"
    UNKNOWN = "unknown"


class Label(StrEnum):
    """Filesystem labels of the Kairos partitions, as the state keys name them."""

    OEM = "COS_OEM"
    STATE = "COS_STATE"
    RECOVERY = "COS_RECOVERY"
    PERSISTENT = "COS_PERSISTENT"
    EFI = "COS_GRUB"


# Sentinel file in /run/cos -> boot state (immucore writes exactly one of them).
SENTINELS: Mapping[str, BootState] = {
    "active_mode": BootState.ACTIVE,
    "passive_mode": BootState.PASSIVE,
    "recovery_mode": BootState.RECOVERY,
    "autoreset_mode": BootState.AUTORESET,
    "live_mode": BootState.LIVECD,
    "unknown": BootState.UNKNOWN,
}


@dataclass(frozen=True)
class BlockDevice:
    """One row of `lsblk --json` (children flattened)."""

    name: str
    path: str
    label: str
    partlabel: str
    fstype: str
    mountpoint: str
    size: int
    read_only: bool
    uuid: str
    partuuid: str


@dataclass(frozen=True)
class PartitionState:
    """Field names as upstream's PartitionState, so `state get oem.mount_point` matches."""

    mounted: bool = False
    name: str = ""
    label: str = ""
    filesystemlabel: str = ""
    mount_point: str = ""
    size_bytes: int = 0
    type: str = ""
    read_only: bool = False
    found: bool = False
    uuid: str = ""


@dataclass(frozen=True)
class KairosInfo:
    flavor: str = ""
    flavor_release: str = ""
    version: str = ""
    family: str = ""
    variant: str = ""
    model: str = ""
    arch: str = ""
    init: str = ""
    secureboot: bool = False


@dataclass(frozen=True)
class Runtime:
    uuid: str
    persistent: PartitionState
    recovery: PartitionState
    oem: PartitionState
    state: PartitionState
    efi: PartitionState
    boot: BootState
    in_ram: bool
    upgrade_failure: bool
    fallback_reason: str
    hostname: str
    kairos: KairosInfo = field(default_factory=KairosInfo)
    # The last upgrade's trial (COS_STATE:/boot_assessment): state, versions, failure reason.
    boot_assessment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["boot"] = str(self.boot)
        return data


# --- parsing -------------------------------------------------------------------------


def _flag(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _size(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0  # lsblk without --bytes prints "64M"; we always pass --bytes


def parse_lsblk(text: str) -> tuple[BlockDevice, ...]:
    """Parse `lsblk --json --bytes` output; nested children come out flat, in order."""
    try:
        data = json.loads(text or "{}")
    except ValueError as exc:
        raise KairosError(f"lsblk printed something that is not JSON: {exc}.") from exc
    out: list[BlockDevice] = []

    def walk(rows: Any) -> None:
        for row in rows if isinstance(rows, list) else []:
            if not isinstance(row, dict):
                continue
            name = str(row.get("name") or "")
            out.append(
                BlockDevice(
                    name=name,
                    path=str(row.get("path") or (f"/dev/{name}" if name else "")),
                    label=str(row.get("label") or ""),
                    partlabel=str(row.get("partlabel") or ""),
                    fstype=str(row.get("fstype") or ""),
                    mountpoint=str(row.get("mountpoint") or ""),
                    size=_size(row.get("size")),
                    read_only=_flag(row.get("ro")),
                    uuid=str(row.get("uuid") or ""),
                    partuuid=str(row.get("partuuid") or ""),
                )
            )
            walk(row.get("children"))

    walk(data.get("blockdevices") if isinstance(data, dict) else None)
    return tuple(out)


def parse_blkid(text: str) -> dict[str, dict[str, str]]:
    """`blkid -o export`: blank-line separated KEY=value blocks, keyed by DEVNAME."""
    out: dict[str, dict[str, str]] = {}
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key.strip()] = re.sub(r"\\(.)", r"\1", value)
        if "DEVNAME" in fields:
            out[fields["DEVNAME"]] = fields
    return out


def merge_blkid(
    devices: Sequence[BlockDevice], probed: Mapping[str, Mapping[str, str]]
) -> tuple[BlockDevice, ...]:
    """Fill label, type and uuids that lsblk could not see from a direct probe."""
    out = []
    for dev in devices:
        info = probed.get(dev.path, {})
        out.append(
            replace(
                dev,
                label=dev.label or info.get("LABEL", ""),
                fstype=dev.fstype or info.get("TYPE", ""),
                uuid=dev.uuid or info.get("UUID", ""),
                partuuid=dev.partuuid or info.get("PARTUUID", ""),
                partlabel=dev.partlabel or info.get("PARTLABEL", ""),
            )
        )
    return tuple(out)


def _unescape_mount(text: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash as octal escapes."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        text = text.replace(code, char)
    return text


def parse_mounts(text: str) -> dict[str, tuple[str, ...]]:
    """mount point -> options from /proc/mounts; the last mount on a point is the visible one."""
    out: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            out[_unescape_mount(fields[1])] = tuple(fields[3].split(","))
    return out


def parse_release(text: str) -> dict[str, str]:
    """KEY=value lines with shell quoting (os-release format)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            words = shlex.split(raw)
        except ValueError:
            words = [raw.strip("\"'")]
        out[key.strip()] = " ".join(words)
    return out


def in_ram(cmdline: str) -> bool:
    """`kairos.ram`, `kairos.ram=...` or any `kairos.ram.<child>` word."""
    return any(
        w == "kairos.ram" or w.startswith(("kairos.ram.", "kairos.ram=")) for w in cmdline.split()
    )


def boot_from_cmdline(cmdline: str, uki_entry: str | None = None) -> BootState:
    """Upstream's table: kairos.ram, UKI entry, then the words of a GRUB boot."""
    if in_ram(cmdline):
        return BootState.ACTIVE
    if "rd.immucore.uki" in cmdline:
        if uki_entry is None:
            return BootState.LIVECD
        prefixes = (
            ("active", BootState.ACTIVE),
            ("passive", BootState.PASSIVE),
            ("recovery", BootState.RECOVERY),
            ("statereset", BootState.AUTORESET),
        )
        if uki_entry.endswith(".conf"):
            for prefix, state in prefixes:
                if uki_entry.startswith(prefix):
                    return state
        return BootState.UNKNOWN
    if "kairos.reset" in cmdline:
        return BootState.AUTORESET
    if "COS_ACTIVE" in cmdline:
        return BootState.ACTIVE
    if "COS_PASSIVE" in cmdline:
        return BootState.PASSIVE
    if any(w in cmdline for w in ("COS_RECOVERY", "COS_SYSTEM", "recovery-mode")):
        return BootState.RECOVERY
    if any(w in cmdline for w in ("live:LABEL", "live:CDLABEL", "netboot")):
        return BootState.LIVECD
    return BootState.UNKNOWN


# --- reading the node --------------------------------------------------------------


def _read(ctx: Context, path: str) -> str | None:
    try:
        return ctx.path(path).read_text(errors="replace")
    except OSError:
        return None


def _efivar(ctx: Context, name: str) -> bytes | None:
    """An EFI variable's payload (the first 4 bytes of the file are its attributes)."""
    try:
        data = ctx.path(f"/sys/firmware/efi/efivars/{name}").read_bytes()
    except OSError:
        return None
    return data[4:]


def _uki_entry(ctx: Context) -> str | None:
    """The systemd-boot entry booted, or None when not booted from an installed disk."""
    if not _efivar(ctx, f"LoaderDevicePartUUID-{EFI_SYSTEMD}"):
        return None
    raw = _efivar(ctx, f"LoaderEntrySelected-{EFI_SYSTEMD}")
    if raw is None:
        return ""
    return "".join(c for c in raw.decode("utf-16-le", errors="ignore") if c.isprintable())


def detect_boot(ctx: Context) -> BootState:
    """The sentinel immucore published for this boot wins; else the kernel command line."""
    run_cos = ctx.path("/run/cos")
    for name, state in SENTINELS.items():
        if name != "unknown" and (run_cos / name).exists():
            return state
    cmdline = _read(ctx, "/proc/cmdline")
    if cmdline is None:
        return BootState.UNKNOWN
    uki = _uki_entry(ctx) if "rd.immucore.uki" in cmdline else None
    return boot_from_cmdline(cmdline, uki)


def _partition(
    devices: Sequence[BlockDevice], label: Label, mounts: Mapping[str, tuple[str, ...]]
) -> PartitionState:
    matches = [d for d in devices if d.label == label]
    if not matches:
        return PartitionState()
    # A live medium and an installed disk can both carry a label: the mounted one is in use.
    dev = next((d for d in matches if d.mountpoint), matches[0])
    options = mounts.get(dev.mountpoint) if dev.mountpoint else None
    read_only = ("ro" in options) if options is not None else dev.read_only
    return PartitionState(
        mounted=bool(dev.mountpoint),
        name=dev.path,
        label=dev.partlabel,
        filesystemlabel=dev.label,
        mount_point=dev.mountpoint,
        size_bytes=dev.size,
        type=dev.fstype,
        read_only=read_only,
        found=True,
        uuid=dev.partuuid,
    )


def list_block_devices(ctx: Context) -> tuple[BlockDevice, ...]:
    """Host block devices via lsblk; none when --root points at an offline tree."""
    if not ctx.is_host_root:
        return ()
    from kairos.run import run, which

    if which("lsblk") is None:
        log.warning("lsblk is not installed: partitions cannot be listed")
        return ()
    # The state is read-only reporting: a broken probe leaves partitions unknown, never fails.
    try:
        result = run(["lsblk", "--json", "--bytes", "--output", LSBLK_COLUMNS], check=False)
        if result.returncode != 0:
            log.warning("lsblk failed: %s", result.stderr.strip())
            return ()
        devices = parse_lsblk(result.stdout)
        if devices and not any(d.fstype for d in devices) and which("blkid") is not None:
            # lsblk takes labels from the udev database; without udev (containers, early
            # boot) every label is empty, so probe the devices directly.
            probe = run(["blkid", "-c", "/dev/null", "-o", "export"], check=False, timeout=30)
            devices = merge_blkid(devices, parse_blkid(probe.stdout))
    except KairosError as exc:
        log.warning("cannot list block devices: %s", exc)
        return ()
    return devices


def _hostname(ctx: Context) -> str:
    for path in ("/proc/sys/kernel/hostname", "/etc/hostname"):
        text = _read(ctx, path)
        if text and text.strip():
            return text.strip()
    return ""


_SYSTEMD_MARKERS = (
    "/run/systemd/system",
    "/sbin/systemctl",
    "/usr/bin/systemctl",
    "/usr/sbin/systemctl",
)
_OPENRC_MARKERS = ("/sbin/openrc", "/usr/sbin/openrc", "/bin/openrc", "/usr/bin/openrc")


def _init_system(ctx: Context) -> str:
    """Upstream's GetInit: the first marker found names the init system."""
    if any(ctx.path(p).exists() for p in _SYSTEMD_MARKERS):
        return "systemd"
    if any(ctx.path(p).exists() for p in _OPENRC_MARKERS):
        return "openrc"
    return "unknown"


def _release_value(
    kairos_release: Mapping[str, str], os_release: Mapping[str, str], key: str
) -> str:
    """Upstream's OSRelease lookup: KAIROS_KEY, then KEY, in kairos-release then os-release."""
    for release in (kairos_release, os_release):
        for name in (f"KAIROS_{key}", key):
            if name in release:
                return release[name]
    return ""


def _kairos(ctx: Context) -> KairosInfo:
    kairos_release = parse_release(_read(ctx, "/etc/kairos-release") or "")
    os_release = parse_release(_read(ctx, "/etc/os-release") or "")
    secure = _efivar(ctx, f"SecureBoot-{EFI_GLOBAL}")

    def kairos_only(key: str) -> str:
        return kairos_release.get(f"KAIROS_{key}") or os_release.get(f"KAIROS_{key}", "")

    return KairosInfo(
        flavor=_release_value(kairos_release, os_release, "FLAVOR"),
        flavor_release=kairos_only("FLAVOR_RELEASE"),
        version=_release_value(kairos_release, os_release, "VERSION"),
        family=kairos_only("FAMILY"),
        variant=kairos_only("VARIANT"),
        model=kairos_only("MODEL"),
        arch=kairos_only("ARCH"),
        init=_init_system(ctx),
        secureboot=secure is not None and secure[-1:] == b"\x01",
    )


def _node_uuid(ctx: Context, hostname: str) -> str:
    """Upstream's form: `$UUID` if set, else `<machine-id>-<hostname>`."""
    if os.environ.get("UUID"):
        return os.environ["UUID"]
    machine_id = ""
    for path in ("/var/lib/dbus/machine-id", "/etc/machine-id"):
        machine_id = (_read(ctx, path) or "").strip()
        if machine_id:
            break
    return f"{machine_id}-{hostname}"


def collect(
    ctx: Context, devices: Callable[[Context], Sequence[BlockDevice]] = list_block_devices
) -> Runtime:
    """Gather the runtime facts of the node at `ctx.root`."""
    block = devices(ctx)
    mounts = parse_mounts(_read(ctx, "/proc/mounts") or "")
    cmdline = _read(ctx, "/proc/cmdline") or ""
    hostname = _hostname(ctx)
    failure = ctx.path("/run/cos/upgrade_failure")
    reason = ""
    if failure.is_file():
        reason = failure.read_text(errors="replace").strip() or "the upgraded system did not boot"
    return Runtime(
        uuid=_node_uuid(ctx, hostname),
        persistent=_partition(block, Label.PERSISTENT, mounts),
        recovery=_partition(block, Label.RECOVERY, mounts),
        oem=_partition(block, Label.OEM, mounts),
        state=_partition(block, Label.STATE, mounts),
        efi=_partition(block, Label.EFI, mounts),
        boot=detect_boot(ctx),
        in_ram=in_ram(cmdline) or ctx.path("/run/cos/in_ram_mode").exists(),
        upgrade_failure=failure.exists(),
        fallback_reason=reason,
        hostname=hostname,
        kairos=_kairos(ctx),
        boot_assessment=_assessment(ctx),
    )


def _assessment(ctx: Context) -> dict[str, Any]:
    from kairos.bootloader import assessment

    try:
        return assessment.read(ctx.path("/run/initramfs/cos-state")).to_dict()
    except KairosError:
        return {}


def render(runtime: Runtime, as_json: bool) -> str:
    import yaml

    data = runtime.to_dict()
    if as_json:
        return json.dumps(data, indent=2) + "\n"
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def query(runtime: Runtime, key: str) -> Any:
    """`boot`, `oem.mount_point`, `.kairos.version`: a value of the state, or an error."""
    from kairos.config.query import get

    try:
        return get(runtime.to_dict(), key)
    except KairosError as exc:
        # The lookup is shared with `config get`; say which document was searched.
        message = exc.message.replace(
            "key not set in the merged config", "no such key in the state"
        )
        hint = (exc.hint or "").replace("'kairos-agent config'", "'kairos-agent state'")
        raise KairosError(message, hint or None) from None
