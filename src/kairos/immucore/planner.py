"""The normal (installed system) boot as data: what immucore mounts, where, in which order.

Pure functions of the kernel command line and the layout, so `--dry-run` and the unit
tests see exactly the plan the initramfs executes (`kairos.immucore.normal`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from kairos.errors import ConfigError
from kairos.immucore.bootstate import Cmdline, Mode, mode, sentinels
from kairos.immucore.layout import Layout, Volume, overlay_size

STATE_MOUNT = "/run/initramfs/cos-state"
OVERLAY_BASE = "/run/overlay"
SYSROOT = "/sysroot"
DEFAULT_OEM_LABEL = "COS_OEM"
DEFAULT_OEM_TIMEOUT = 5.0
# Persistent volumes are on the same disk as COS_STATE, so they are already there when the
# root is: a short wait only covers slow udev.
VOLUME_TIMEOUT = 10.0
STATE_TIMEOUT = 120.0


class BootState(StrEnum):
    ACTIVE = "active"
    PASSIVE = "passive"
    RECOVERY = "recovery"
    AUTORESET = "autoreset"
    LIVE = "live"
    UNKNOWN = "unknown"


class Kind(StrEnum):
    TMPFS = "tmpfs"
    OVERLAY = "overlay"
    DEVICE = "device"
    BIND = "bind"


def boot_state(cmdline: Cmdline) -> BootState:
    """The state the `/run/cos/<state>_mode` sentinel names (upstream sdk/state rules)."""
    first = sentinels(cmdline)[0]
    return BootState(first.removesuffix("_mode"))


def device_path(spec: str) -> str:
    """`LABEL=x` -> `/dev/disk/by-label/x` (likewise UUID, PARTLABEL, PARTUUID); paths as is."""
    for key, folder in (
        ("LABEL=", "by-label"),
        ("UUID=", "by-uuid"),
        ("PARTLABEL=", "by-partlabel"),
        ("PARTUUID=", "by-partuuid"),
    ):
        if spec.startswith(key):
            return f"/dev/disk/{folder}/{spec.removeprefix(key)}"
    return spec


def _first(cmdline: Cmdline, *keys: str) -> str | None:
    for key in keys:
        value = cmdline.value(key)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class RootPlan:
    """Phase one: the state partition and the image that becomes the root device."""

    state: BootState
    state_device: str  # LABEL=COS_STATE, or COS_RECOVERY for recovery boots
    image: str  # the path inside the state partition, /cOS/active.img
    root_label: str  # the label udev gives the image's loop device (root=LABEL=...)
    read_write: bool = False
    state_mount: str = STATE_MOUNT

    @property
    def image_path(self) -> str:
        return self.state_mount + self.image

    def describe(self) -> list[str]:
        access = "read-write (debugrw)" if self.read_write else "read-only"
        return [
            f"wait for {self.state_device} (up to {STATE_TIMEOUT:.0f} s), mount it read-only "
            f"at {self.state_mount}",
            f"loop-attach {self.image_path} {access}, udev names it "
            f"/dev/disk/by-label/{self.root_label}",
            f"systemd mounts /dev/disk/by-label/{self.root_label} read-only at {SYSROOT}",
        ]


def plan_root(cmdline: Cmdline) -> RootPlan:
    """The root plan, or a ConfigError naming every problem of the command line."""
    problems: list[str] = []
    chosen = mode(cmdline)
    if chosen is not Mode.NORMAL:
        problems.append(f"boot mode {chosen} is not an installed-system boot")
    state = boot_state(cmdline)
    if state in (BootState.LIVE, BootState.UNKNOWN):
        problems.append(
            "root=: cannot tell the boot state (expected LABEL=COS_ACTIVE, COS_PASSIVE or "
            "COS_SYSTEM, or kairos.reset)"
        )
    image = cmdline.value("cos-img/filename")
    if not image:
        problems.append("cos-img/filename=: missing (the image to boot, e.g. /cOS/active.img)")
    elif not image.startswith("/"):
        problems.append(f"cos-img/filename={image}: not an absolute path in the state partition")
    root = cmdline.value("root") or ""
    if root.startswith("LABEL="):
        label = root.removeprefix("LABEL=")
    else:
        label = {
            BootState.ACTIVE: "COS_ACTIVE",
            BootState.PASSIVE: "COS_PASSIVE",
        }.get(state, "COS_SYSTEM")
    if problems:
        raise ConfigError(
            f"kernel command line: {len(problems)} problem(s) for an installed-system boot.",
            hint="boot entries come from GRUB's grub.cfg on COS_STATE",
            problems=tuple(problems),
        )
    # Recovery and the unattended reset both boot the recovery image, kept on COS_RECOVERY.
    recovery = state in (BootState.RECOVERY, BootState.AUTORESET)
    return RootPlan(
        state=state,
        state_device="LABEL=COS_RECOVERY" if recovery else "LABEL=COS_STATE",
        image=image or "",
        root_label=label,
        read_write=cmdline.has("rd.cos.debugrw") or cmdline.has("rd.immucore.debugrw"),
    )


@dataclass(frozen=True)
class Mount:
    """One mount of the layout phase; paths are as the initramfs sees them (/sysroot/...)."""

    kind: Kind
    what: str
    where: str
    fstype: str
    options: tuple[str, ...] = ()
    optional: bool = False
    timeout: float = 0.0
    seed_from: str | None = None  # binds: copy this on first use only
    upper: str | None = None  # overlays: upper/ and work/ live under here (initramfs path)

    def describe(self) -> str:
        opts = f" ({','.join(self.options)})" if self.options else ""
        if self.kind is Kind.TMPFS:
            return f"mount tmpfs at {self.where}{opts}"
        if self.kind is Kind.OVERLAY:
            return f"overlay {self.where} over the image, upper {self.upper}/upper"
        if self.kind is Kind.BIND:
            seed = f" (seeded from {self.seed_from} on first use only)" if self.seed_from else ""
            return f"bind {self.what} at {self.where}{seed}"
        wait = f", wait {self.timeout:g} s" if self.timeout else ""
        optional = " (optional" + wait + ")" if self.optional else ""
        return f"mount {self.what} at {self.where}{opts}{optional}"

    def fstab_line(self, sysroot: str = SYSROOT) -> str:
        """The entry for the booted system's /etc/fstab (paths seen from the new root)."""
        where = _outside(self.where, sysroot)
        what = _outside(self.what, sysroot)
        options = ["defaults"]
        if self.kind is Kind.DEVICE:
            what = device_path(self.what)
        elif self.kind is Kind.BIND:
            options.append("bind")
        elif self.kind is Kind.OVERLAY and self.upper is not None:
            upper = _outside(self.upper, sysroot)
            options += [f"lowerdir={where}", f"upperdir={upper}/upper", f"workdir={upper}/work"]
        options += [o for o in self.options if o not in ("defaults", "bind")]
        fstype = {Kind.BIND: "none", Kind.DEVICE: "auto"}.get(self.kind, self.fstype)
        return f"{what} {where} {fstype} {','.join(options)} 0 0"


@dataclass(frozen=True)
class LayoutPlan:
    state: BootState
    oem: Mount | None
    mounts: tuple[Mount, ...]
    root_label: str = "COS_ACTIVE"
    notes: tuple[str, ...] = field(default=())
    sysroot: str = SYSROOT

    def fstab(self) -> str:
        """`/etc/fstab` of the booted system: the root, OEM, then every layout mount in order."""
        lines = [
            "# Written at boot by immucore: the immutable layout of this boot.",
            f"/dev/disk/by-label/{self.root_label} / auto ro 0 0",
        ]
        if self.oem is not None:
            lines.append(self.oem.fstab_line(self.sysroot))
        lines.extend(m.fstab_line(self.sysroot) for m in self.mounts)
        return "\n".join(lines) + "\n"


def _outside(path: str, sysroot: str) -> str:
    if path == sysroot:
        return "/"
    return path.removeprefix(sysroot) if path.startswith(sysroot + "/") else path


def state_name(path: str) -> str:
    """`/etc/ssh` -> `etc-ssh` (upstream's name of the persistent copy)."""
    return path.strip("/").replace("/", "-")


def plan_oem(cmdline: Cmdline, sysroot: str = SYSROOT) -> Mount:
    label = _first(cmdline, "rd.immucore.oemlabel", "rd.cos.oemlabel") or DEFAULT_OEM_LABEL
    raw = _first(cmdline, "rd.immucore.oemtimeout", "rd.cos.oemtimeout")
    try:
        timeout = float(raw) if raw is not None else DEFAULT_OEM_TIMEOUT
    except ValueError:
        timeout = DEFAULT_OEM_TIMEOUT
    return Mount(
        Kind.DEVICE, f"LABEL={label}", f"{sysroot}/oem", "auto", optional=True, timeout=timeout
    )


def cmdline_volumes(cmdline: Cmdline) -> tuple[tuple[Volume, ...], tuple[str, ...]]:
    """`rd.cos.mount=` / `rd.immucore.mount=` (repeatable), and the bad ones as notes."""
    volumes: list[Volume] = []
    notes: list[str] = []
    for word in cmdline.words:
        key, sep, value = word.partition("=")
        if sep and key in ("rd.cos.mount", "rd.immucore.mount"):
            try:
                volumes.append(Volume.parse(value))
            except ValueError as exc:
                notes.append(f"{key}: ignored: {exc}")
    return tuple(volumes), tuple(notes)


def plan_layout(
    cmdline: Cmdline, layout: Layout, state: BootState | None = None, sysroot: str = SYSROOT
) -> LayoutPlan:
    """OEM, overlay base, RW overlays, volumes, then persistent binds, in mount order."""
    state = state or boot_state(cmdline)
    notes: list[str] = []
    mounts: list[Mount] = []
    overlay = _first(cmdline, "rd.immucore.overlay", "rd.cos.overlay") or layout.overlay
    try:
        size = overlay_size(overlay)
    except ValueError as exc:
        notes.append(f"overlay: {exc}; using {layout.overlay}")
        overlay, size = layout.overlay, overlay_size(layout.overlay)
    if size is None:
        mounts.append(Mount(Kind.DEVICE, overlay, OVERLAY_BASE, "auto"))
    else:
        mounts.append(Mount(Kind.TMPFS, "tmpfs", OVERLAY_BASE, "tmpfs", (f"size={size}",)))
    # A tmpfs /tmp, as upstream's DAG mounts: the root is read-only, and systemd (< 255)
    # builds PrivateDevices= namespaces in /tmp (resolved, hostnamed fail without it).
    mounts.append(Mount(Kind.TMPFS, "tmpfs", f"{sysroot}/tmp", "tmpfs", ("mode=1777",)))
    for path in layout.rw_paths:
        upper = f"{OVERLAY_BASE}{path}/.overlay"
        where = sysroot + path
        mounts.append(Mount(Kind.OVERLAY, "overlay", where, "overlay", upper=upper))
    extra, bad = cmdline_volumes(cmdline)
    notes.extend(bad)
    volumes = (*layout.volumes, *extra) if layout.merge or not extra else extra
    persistent_paths: tuple[str, ...] = layout.persistent_paths
    persistent = state in (BootState.ACTIVE, BootState.PASSIVE)
    if not persistent and (layout.volumes or layout.persistent_paths):
        notes.append(f"{state} boot: persistent volumes and paths of the layout are not used")
        volumes, persistent_paths = extra, ()
    for vol in volumes:
        mounts.append(
            Mount(
                Kind.DEVICE,
                vol.device,
                sysroot + vol.mountpoint,
                "auto",
                optional=True,
                timeout=VOLUME_TIMEOUT,
            )
        )
    # Parents before children, so a bind of /var/lib/x is not hidden by one of /var/lib.
    for path in sorted(persistent_paths, key=lambda p: p.count("/")):
        target = f"{sysroot}{layout.persistent_target}/{state_name(path)}"
        if layout.persistent_bind:
            mounts.append(Mount(Kind.BIND, target + ".bind", sysroot + path, "none",
                                seed_from=sysroot + path))  # fmt: skip
        else:
            upper = f"{sysroot}{layout.persistent_target}/{state_name(path)}.overlay"
            mounts.append(Mount(Kind.OVERLAY, "overlay", sysroot + path, "overlay", upper=upper))
    return LayoutPlan(
        state=state,
        oem=plan_oem(cmdline, sysroot),
        mounts=tuple(mounts),
        notes=tuple(notes),
        sysroot=sysroot,
    )


def describe(root: RootPlan, plan: LayoutPlan, layout_source: str) -> list[str]:
    """The numbered plan `--dry-run` prints."""
    sysroot = plan.sysroot
    steps = [f"write /run/cos/{root.state}_mode", *root.describe()]
    if plan.oem is not None:
        steps.append(plan.oem.describe())
    paths = " ".join(f"{sysroot}{p}" for p in ("/system/oem", "/oem", "/usr/local/cloud-config"))
    steps.append(f"run the rootfs stage in the initramfs ({paths})")
    steps.append(f"read the layout ({layout_source})")
    steps.extend(m.describe() for m in plan.mounts)
    steps.append(f"write {sysroot}/etc/fstab")
    steps.append(f"run the initramfs stage chrooted in {sysroot}")
    steps.append("hand over to switch-root")
    lines = [f"immucore plan: {root.state} boot"]
    width = len(str(len(steps)))
    lines.extend(f"{i:>{width}}. {text}" for i, text in enumerate(steps, start=1))
    lines.extend(f"note: {n}" for n in plan.notes)
    return lines
