"""The install plan: what `kairos-agent install` will write, decided and checked up front.

`parse_options` reads the `install:` block once into a frozen `InstallOptions`; `make_plan`
turns options, the host's block devices and the install source into an `InstallPlan`, and
collects every reason not to go ahead (bad device, too small, no admin user, ...) as
`where: what (hint)` lines. Nothing here writes anything; `--dry-run` prints the plan.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from kairos.context import Context
from kairos.disk import devices as blk
from kairos.disk.format import label_problem
from kairos.disk.partition import MIB, Filesystem, Layout, Partition, Role, mib_for

LIVE_SQUASHFS = "/run/initramfs/live/rootfs.squashfs"
LIVE_ROOT = "/run/rootfsbase"
NOUSERS_SENTINEL = "/etc/kairos/.nousers"
FAIL_SENTINEL = "/run/cos/fail_installation"
# Upstream's fallback when the source size cannot be measured (ImgSize).
DEFAULT_IMAGE_MIB = 3072
# Fixed sizes (MiB) as upstream.
BIOS_MIB = 1
EFI_MIB = 64
OEM_MIB = 64
EFI_MIN_MIB = 33  # FAT32 needs 65525 clusters of 512 bytes
# Room beside the images: GRUB's modules and menu, env blocks, ext4's journal and inode tables.
SLACK_BASE_MIB = 128
SLACK_PER_IMAGE = 0.06
# squashfs compression ids (squashfs_fs.h) and which of them GRUB 2.06's squash4 module reads
# (checked with grub-fstest, see bench/image_formats.py: zstd and lz4 are "unknown filesystem").
SQUASHFS_COMPRESSIONS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}
GRUB_READABLE = frozenset({"gzip", "lzo", "xz"})
SOURCE_SCHEMES = ("file", "dir", "oci", "ocifile", "docker")
KERNEL_FILES = ("/boot/vmlinuz", "/boot/initrd")

# The partitions the Kairos layout owns: role -> (filesystem label, default fs).
FIXED_LABELS = {
    Role.EFI: "COS_GRUB",
    Role.OEM: "COS_OEM",
    Role.RECOVERY: "COS_RECOVERY",
    Role.STATE: "COS_STATE",
    Role.PERSISTENT: "COS_PERSISTENT",
}
CONFIGURABLE_FS = (
    Filesystem.EXT2,
    Filesystem.EXT3,
    Filesystem.EXT4,
    Filesystem.XFS,
    Filesystem.BTRFS,
)


class Firmware(StrEnum):
    EFI = "efi"
    BIOS = "bios"


class SourceKind(StrEnum):
    SQUASHFS = "squashfs"  # a GRUB-readable squashfs file, copied byte for byte
    DIRECTORY = "directory"  # a root tree (or an unreadable squashfs' mounted root), repacked


class Power(StrEnum):
    NONE = "none"
    REBOOT = "reboot"
    POWEROFF = "poweroff"


@dataclass(frozen=True)
class SystemImage:
    """One system image file on disk, with the label immucore and GRUB know it by."""

    role: str
    file: str
    label: str
    partition: str


ACTIVE = SystemImage("active", "/cOS/active.img", "COS_ACTIVE", "COS_STATE")
PASSIVE = SystemImage("passive", "/cOS/passive.img", "COS_PASSIVE", "COS_STATE")
RECOVERY = SystemImage("recovery", "/cOS/recovery.img", "COS_SYSTEM", "COS_RECOVERY")
IMAGES = (ACTIVE, RECOVERY, PASSIVE)


@dataclass(frozen=True)
class PartOverride:
    """One `install.partitions.X` or `install.extra-partitions[i]` entry."""

    name: str | None = None
    label: str | None = None
    size: int | None = None
    fs: str | None = None


@dataclass(frozen=True)
class InstallOptions:
    """The `install:` block, parsed once."""

    device: str = ""
    auto: bool = False
    reboot: bool = False
    poweroff: bool = False
    nousers: bool = False
    source: str = ""
    partitions: Mapping[str, PartOverride] = field(default_factory=dict)
    extra_partitions: tuple[PartOverride, ...] = ()
    grub_options: tuple[tuple[str, str], ...] = ()
    grub_entry_name: str = ""
    bind_mounts: tuple[str, ...] = ()
    ephemeral_mounts: tuple[str, ...] = ()
    extra_dirs_rootfs: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()

    @property
    def power(self) -> Power:
        if self.reboot:
            return Power.REBOOT
        return Power.POWEROFF if self.poweroff else Power.NONE


@dataclass(frozen=True)
class Source:
    """Where the active image comes from."""

    kind: SourceKind
    path: str  # node path of the squashfs file or the root directory
    size_bytes: int
    origin: str  # what the user named, for the plan and .kairos-state
    compression: str | None = None  # the squashfs file's, when kind is squashfs

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "path": self.path,
            "size_bytes": self.size_bytes,
            "origin": self.origin,
            "compression": self.compression,
        }


@dataclass(frozen=True)
class InstallPlan:
    device: str
    disk_bytes: int
    firmware: Firmware
    layout: Layout
    source: Source
    image_mib: int
    power: Power
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        placed = self.layout.place(self.disk_bytes)
        return {
            "device": self.device,
            "disk_bytes": self.disk_bytes,
            "firmware": str(self.firmware),
            "partition_table": "gpt",
            "partitions": [
                {
                    **p.partition.to_json(),
                    "number": p.number,
                    "start_mib": p.start_mib,
                    "size_mib": p.size_mib,
                    "requested_mib": p.partition.size_mib,
                }
                for p in placed
            ],
            "images": [
                {
                    "role": i.role,
                    "file": i.file,
                    "label": i.label,
                    "partition": i.partition,
                    "size_mib": self.image_mib,
                    "format": "squashfs",
                }
                for i in IMAGES
            ],
            "source": self.source.to_json(),
            "bootloader": {
                "type": "grub",
                "targets": ["i386-pc", "x86_64-efi"],
                "booted_with": str(self.firmware),
            },
            "power": str(self.power),
            "warnings": list(self.warnings),
        }

    def describe(self) -> list[str]:
        """The plan as lines for a terminal."""
        gib = self.disk_bytes / (1 << 30)
        lines = [f"disk {self.device} ({gib:.1f} GiB), GPT, booted with {self.firmware}:"]
        for p in self.layout.place(self.disk_bytes):
            part = p.partition
            size = f"{p.size_mib} MiB" + (" (rest of disk)" if part.size_mib == 0 else "")
            lines.append(
                f"  {p.number}  {part.name:<11} {part.label or '-':<15} {part.fs!s:<6} {size}"
            )
        how = (
            f"copy {self.source.path} ({self.source.compression} squashfs, byte for byte)"
            if self.source.kind is SourceKind.SQUASHFS
            else f"pack {self.source.path} into a squashfs"
        )
        lines.append(f"images ({self.image_mib} MiB each): {how}")
        for image in IMAGES:
            lines.append(f"  {image.partition}:{image.file}  {image.label}")
        lines.append(
            "bootloader: GRUB for BIOS (bios partition) and UEFI (COS_GRUB), menu on COS_STATE"
        )
        lines.append(f"then: {self.power}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines


# --- parsing -------------------------------------------------------------------------------


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("true", "yes", "1"))


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v for v in value.split() if v)
    if isinstance(value, list):
        return tuple(str(v) for v in value if v not in (None, ""))
    return ()


def _override(value: Any) -> PartOverride:
    if not isinstance(value, Mapping):
        return PartOverride()
    size = value.get("size")
    return PartOverride(
        name=str(value["name"]) if value.get("name") else None,
        label=str(value["label"]) if value.get("label") else None,
        size=int(size) if isinstance(size, int) and not isinstance(size, bool) else None,
        fs=str(value["fs"]).lower() if value.get("fs") else None,
    )


def _env(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        return tuple((str(k), str(v)) for k, v in value.items())
    out = []
    for item in value if isinstance(value, list) else ():
        key, sep, val = str(item).partition("=")
        if sep:
            out.append((key, val))
    return tuple(out)


def parse_options(merged: Mapping[str, Any]) -> InstallOptions:
    """The `install:` block of the merged config (schema-validated before, so types hold)."""
    raw = merged.get("install")
    install: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    parts = install.get("partitions")
    grub = install.get("grub_options")
    return InstallOptions(
        device=str(install.get("device") or "").strip(),
        auto=_truthy(install.get("auto")),
        reboot=_truthy(install.get("reboot")),
        poweroff=_truthy(install.get("poweroff")),
        nousers=_truthy(install.get("nousers")),
        source=str(install.get("source") or install.get("image") or "").strip(),
        partitions={
            str(k): _override(v) for k, v in (parts.items() if isinstance(parts, Mapping) else ())
        },
        extra_partitions=tuple(_override(p) for p in install.get("extra-partitions") or ()),
        grub_options=tuple(
            (str(k), "" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in (grub.items() if isinstance(grub, Mapping) else ())
        ),
        grub_entry_name=str(install.get("grub-entry-name") or ""),
        bind_mounts=_strings(install.get("bind_mounts")),
        ephemeral_mounts=_strings(install.get("ephemeral_mounts")),
        extra_dirs_rootfs=_strings(install.get("extra-dirs-rootfs")),
        env=_env(install.get("env")),
    )


# --- users -----------------------------------------------------------------------------------


def _is_admin(user: Any) -> bool:
    if not isinstance(user, Mapping):
        return False
    groups = user.get("groups")
    names = groups.replace(",", " ").split() if isinstance(groups, str) else groups or []
    return "admin" in [str(g).strip() for g in names] or user.get("primary_group") == "admin"


def has_admin_user(merged: Mapping[str, Any]) -> bool:
    """Whether any stage (or the cloud-init `users:` list) makes a user in group admin."""
    stages = merged.get("stages")
    for steps in stages.values() if isinstance(stages, Mapping) else ():
        for step in steps if isinstance(steps, list) else ():
            users = step.get("users") if isinstance(step, Mapping) else None
            if isinstance(users, Mapping) and any(_is_admin(u) for u in users.values()):
                return True
    top = merged.get("users")
    return isinstance(top, list) and any(_is_admin(u) for u in top)


# --- sizes and layout ----------------------------------------------------------------------


def slack_mib(images: int, image_mib: int) -> int:
    return SLACK_BASE_MIB + math.ceil(images * image_mib * SLACK_PER_IMAGE)


def min_sizes(image_mib: int) -> dict[Role, int]:
    """Our defaults: STATE holds two images (active, passive), RECOVERY one, plus slack."""
    return {
        Role.RECOVERY: image_mib + slack_mib(1, image_mib),
        Role.STATE: 2 * image_mib + slack_mib(2, image_mib),
    }


def build_layout(options: InstallOptions, image_mib: int) -> tuple[Layout, list[str], list[str]]:
    """The GPT for these options: (layout, problems, warnings)."""
    problems: list[str] = []
    warnings: list[str] = []
    minimum = min_sizes(image_mib)
    defaults = {
        Role.EFI: EFI_MIB,
        Role.OEM: OEM_MIB,
        Role.RECOVERY: minimum[Role.RECOVERY],
        Role.STATE: minimum[Role.STATE],
        Role.PERSISTENT: 0,
    }
    known = {str(r) for r in defaults}
    for name in options.partitions:
        if name not in known:
            problems.append(
                f"install.partitions.{name}: not a Kairos partition "
                f"(use one of {', '.join(sorted(known))}, or install.extra-partitions)"
            )
    parts = [Partition(Role.BIOS, "bios", None, BIOS_MIB, Filesystem.NONE)]
    for role, default in defaults.items():
        o = options.partitions.get(str(role), PartOverride())
        where = f"install.partitions.{role}"
        size = default if o.size is None else o.size
        if role in minimum and o.size is not None and size < minimum[role]:
            warnings.append(
                f"{where}.size: {size} MiB cannot hold the system image(s); "
                f"using {minimum[role]} MiB"
            )
            size = minimum[role]
        if role is Role.EFI and size < EFI_MIN_MIB:
            warnings.append(f"{where}.size: {size} MiB is too small for FAT32; using {EFI_MIN_MIB}")
            size = EFI_MIN_MIB
        if role in (Role.RECOVERY, Role.STATE) and o.size == 0:
            problems.append(f"{where}.size: 0 (rest of disk) only suits persistent or one extra")
        fs = Filesystem.VFAT if role is Role.EFI else Filesystem.EXT4
        if o.fs and role is Role.EFI and o.fs != "vfat":
            warnings.append(f"{where}.fs: the EFI partition is always vfat; {o.fs!r} ignored")
        elif o.fs:
            try:
                fs = Filesystem(o.fs)
                if fs not in CONFIGURABLE_FS:
                    raise ValueError(o.fs)
            except ValueError:
                problems.append(
                    f"{where}.fs: {o.fs!r} cannot hold {FIXED_LABELS[role]} "
                    f"(use {', '.join(CONFIGURABLE_FS)})"
                )
        label = FIXED_LABELS[role]
        if o.label and o.label != label:
            warnings.append(f"{where}.label: the {role} partition is always {label}; ignored")
        parts.append(Partition(role, str(role), label, size, fs))
    extras: list[Partition] = []
    for i, o in enumerate(options.extra_partitions):
        where = f"install.extra-partitions[{i}]"
        name = o.name or o.label or f"extra{i}"
        try:
            fs = Filesystem(o.fs or "ext2")
        except ValueError:
            problems.append(f"{where}.fs: unknown filesystem {o.fs!r} (use ext2, ext4, xfs, ...)")
            fs = Filesystem.EXT2
        if o.label and (why := label_problem(fs, o.label)):
            problems.append(f"{where}.label: {why}")
        if o.label in FIXED_LABELS.values():
            problems.append(f"{where}.label: {o.label} belongs to the Kairos layout")
        if o.size is not None and o.size < 0:
            problems.append(f"{where}.size: must be 0 (rest of disk) or a size in MiB")
        extras.append(Partition(Role.EXTRA, name, o.label, max(o.size or 0, 0), fs))
    # The rest-of-disk partition goes last, as upstream; only one may take the rest.
    rest = [p for p in (*parts, *extras) if p.size_mib == 0]
    if len(rest) > 1:
        problems.append(
            "install.partitions.persistent.size: persistent and extra partition "
            f"{rest[1].name!r} both take the rest of the disk (give one of them a size in MiB)"
        )
    extras.sort(key=lambda p: p.size_mib == 0)
    return Layout((*parts, *extras)), problems, warnings


# --- the source ------------------------------------------------------------------------------


def squashfs_compression(path: Path) -> str | None:
    """The compression named in a squashfs superblock, or None when it is not a squashfs."""
    try:
        with path.open("rb") as fh:
            head = fh.read(22)
    except OSError:
        return None
    if len(head) < 22 or head[:4] != b"hsqs":
        return None
    (comp,) = struct.unpack_from("<H", head, 20)
    return SQUASHFS_COMPRESSIONS.get(comp, f"unknown({comp})")


def tree_size(root: Path) -> int:
    """Apparent size of a tree (no following links, no crossing into other mounts)."""
    total = 0
    dev = root.stat().st_dev
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.lstat(os.path.join(dirpath, d)).st_dev == dev]
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
    return total


def _kernel_problems(ctx: Context, root: str, where: str) -> list[str]:
    return [
        f"{where}: {root.rstrip('/')}{f} is missing (GRUB boots the kernel and initrd inside "
        "the image; build it with kairos build)"
        for f in KERNEL_FILES
        if not os.path.lexists(ctx.path(root.rstrip("/") + f))
    ]


def find_source(ctx: Context, spec: str) -> tuple[Source | None, list[str]]:
    """The image source: `spec` (`file:`/`dir:`), else the live medium we booted from."""
    if spec:
        scheme, _, rest = spec.partition(":")
        where = "install.source"
        if scheme == "file" and rest:
            host = ctx.path(rest)
            comp = squashfs_compression(host)
            if not host.is_file():
                return None, [f"{where}: {rest} does not exist (give an existing squashfs file)"]
            if comp is None:
                return None, [f"{where}: {rest} is not a squashfs image (make one with mksquashfs)"]
            if comp not in GRUB_READABLE:
                return None, [
                    f"{where}: {rest} is {comp}-compressed, which GRUB cannot read "
                    f"(repack it with -comp gzip, or use dir:)"
                ]
            return Source(SourceKind.SQUASHFS, rest, host.stat().st_size, spec, comp), []
        if scheme == "dir" and rest:
            host = ctx.path(rest)
            if not host.is_dir():
                return None, [f"{where}: {rest} is not a directory"]
            problems = _kernel_problems(ctx, rest, where)
            return Source(SourceKind.DIRECTORY, rest, tree_size(host), spec), problems
        return None, [
            f"{where}: {spec!r} is not supported by install "
            "(use file:/path/to/image.squashfs or dir:/path/to/root)"
        ]
    live = ctx.path(LIVE_SQUASHFS)
    comp = squashfs_compression(live) if live.is_file() else None
    root_ok = ctx.path(LIVE_ROOT).is_dir()
    if comp in GRUB_READABLE:
        problems = _kernel_problems(ctx, LIVE_ROOT, "live medium") if root_ok else []
        return Source(
            SourceKind.SQUASHFS, LIVE_SQUASHFS, live.stat().st_size, "live", comp
        ), problems
    if root_ok:
        # The live squashfs is one GRUB cannot read (zstd): repack the mounted live root.
        size = live.stat().st_size if comp else tree_size(ctx.path(LIVE_ROOT))
        problems = _kernel_problems(ctx, LIVE_ROOT, "live medium")
        return Source(SourceKind.DIRECTORY, LIVE_ROOT, size, "live", comp), problems
    return None, [
        "install.source: not running from a Kairos live medium (no "
        f"{LIVE_SQUASHFS}) (pass --source dir:/path or file:/path/to/image.squashfs)"
    ]


def image_mib_for(source: Source) -> int:
    """The image size the layout must hold: the file's, or the tree's (an upper bound of the
    squashfs made from it: compression only shrinks it)."""
    if source.size_bytes <= 0:
        return DEFAULT_IMAGE_MIB
    return mib_for(source.size_bytes)


# --- the target disk ------------------------------------------------------------------------


def _named(ctx: Context, spec: str) -> tuple[str | None, list[str]]:
    """The /dev path the user named (links resolved, scripts run), or the problem."""
    where = "install.device"
    if spec.startswith("script://"):
        from kairos.errors import KairosError
        from kairos.run import run_shell

        script = spec.removeprefix("script://")
        try:
            result = run_shell(script, check=False, timeout=60)
        except KairosError as exc:
            return None, [f"{where}: {spec}: {exc}"]
        out = result.stdout.strip().splitlines()
        if result.returncode != 0 or not out:
            return None, [
                f"{where}: {spec} exited {result.returncode} without printing a device "
                "(the script must print the disk's path on stdout)"
            ]
        spec = out[-1].strip()
    if not spec.startswith("/dev/"):
        return None, [f"{where}: {spec!r} is not a device path (use /dev/..., auto, script://)"]
    if spec.startswith("/dev/disk/"):
        if not os.path.lexists(ctx.path(spec)):
            return None, [f"{where}: {spec} does not exist (see ls -l {os.path.dirname(spec)})"]
        return blk.resolve_link(ctx, spec), []
    return spec, []


def check_disk(
    ctx: Context,
    devices: Sequence[blk.BlockDevice],
    path: str,
    need_bytes: int,
    named: str,
) -> tuple[blk.BlockDevice | None, list[str]]:
    """Every reason `path` cannot be the install target (the caller already resolved it)."""
    where = "install.device"
    label = path if path == named else f"{named} ({path})"
    dev = blk.find(devices, path)
    if dev is None:
        return None, [f"{where}: {label} does not exist (see lsblk for the disks)"]
    problems: list[str] = []
    if dev.type is blk.DeviceType.PART:
        disk = blk.parent_disk(devices, dev)
        hint = f"use the whole disk {disk.path}" if disk else "name a whole disk"
        problems.append(f"{where}: {label} is a partition, install needs a whole disk ({hint})")
    elif dev.type not in (blk.DeviceType.DISK, blk.DeviceType.LOOP):
        problems.append(f"{where}: {label} is a {dev.type} device, not a disk (name a disk)")
    if dev.read_only:
        problems.append(f"{where}: {label} is read-only (check the write-protect switch)")
    mounts = dev.all_mountpoints
    if mounts:
        problems.append(
            f"{where}: {label} is mounted at {', '.join(mounts)} (unmount it first; "
            "installing erases the whole disk)"
        )
    swaps = blk.swap_devices(ctx)
    on_swap = [d.path for d in dev.walk() if d.path in swaps]
    if on_swap:
        problems.append(f"{where}: {label} is used as swap ({', '.join(on_swap)}) (swapoff first)")
    held = blk.holders(ctx, dev)
    if held:
        problems.append(
            f"{where}: {label} is in use by {', '.join(held)} (LVM, RAID or an open LUKS "
            "volume; deactivate it, e.g. vgchange -an / mdadm --stop / cryptsetup close)"
        )
    if 0 < dev.size < need_bytes:
        problems.append(
            f"{where}: {label} has {dev.size // MIB} MiB, the plan needs at least "
            f"{math.ceil(need_bytes / MIB)} MiB (use a bigger disk, or smaller install.partitions)"
        )
    return dev, problems


def resolve_device(
    ctx: Context,
    devices: Sequence[blk.BlockDevice],
    spec: str,
    *,
    auto_allowed: bool,
) -> tuple[str | None, str, list[str]]:
    """(device path, what the user named, problems) for `install.device` / `--device`."""
    where = "install.device"
    if spec in ("", "auto"):
        if not auto_allowed:
            return (
                None,
                spec,
                [
                    f"{where}: no disk named (set install.device to a disk, or to auto together "
                    "with install.auto: true, or pass --device)"
                ],
            )
        best = blk.pick_auto(devices)
        if best is None:
            return (
                None,
                "auto",
                [
                    f"{where}: auto found no disk (fixed, not removable, not the boot medium, "
                    "not loop/ram/zram/cd-rom) (name one with --device)"
                ],
            )
        return best.path, "auto", []
    path, problems = _named(ctx, spec)
    return path, spec, problems


def firmware_of(ctx: Context) -> Firmware:
    return Firmware.EFI if ctx.path("/sys/firmware/efi").exists() else Firmware.BIOS


def make_plan(
    ctx: Context,
    options: InstallOptions,
    merged: Mapping[str, Any],
    devices: Sequence[blk.BlockDevice],
    *,
    device_flag: str | None = None,
    source_flag: str | None = None,
) -> tuple[InstallPlan | None, list[str]]:
    """The plan and every problem with it; a plan is None only when nothing can be sized."""
    problems: list[str] = []
    warnings: list[str] = []
    if not (options.nousers or has_admin_user(merged) or ctx.path(NOUSERS_SENTINEL).exists()):
        problems.append(
            "users: no user in group admin would exist after install (add a user with "
            "groups: [admin], or set install.nousers: true)"
        )
    if options.reboot and options.poweroff:
        problems.append("install.poweroff: reboot and poweroff are both set (choose one)")
    source, found = find_source(ctx, source_flag or options.source)
    problems.extend(found)
    image_mib = image_mib_for(source) if source else DEFAULT_IMAGE_MIB
    layout, layout_problems, layout_warnings = build_layout(options, image_mib)
    problems.extend(layout_problems)
    warnings.extend(layout_warnings)
    spec = device_flag if device_flag is not None else options.device
    auto_allowed = device_flag == "auto" or options.auto
    path, named, found = resolve_device(ctx, devices, spec, auto_allowed=auto_allowed)
    problems.extend(found)
    disk_bytes = 0
    if path is not None:
        dev, found = check_disk(ctx, devices, path, layout.min_disk_bytes(), named)
        problems.extend(found)
        disk_bytes = dev.size if dev else 0
    if source is None:
        return None, problems
    plan = InstallPlan(
        device=path or named or "(none)",
        disk_bytes=max(disk_bytes, layout.min_disk_bytes()) if disk_bytes == 0 else disk_bytes,
        firmware=firmware_of(ctx),
        layout=layout,
        source=source,
        image_mib=image_mib,
        power=options.power,
        warnings=tuple(warnings),
    )
    return plan, problems
