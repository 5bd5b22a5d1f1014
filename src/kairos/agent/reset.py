"""Reset a node from its recovery system: wipe, redeploy the active system, reinstall GRUB.

`make_plan` finds the Kairos partitions by label and checks everything (boot state, the
recovery image, sizes, tools) without writing; `reset` runs a plan that came back without
problems as a flat list of named steps over one ExitStack. Upstream's order is kept:
`before-reset`, format COS_PERSISTENT / COS_OEM, re-make COS_STATE, active from the recovery
image, GRUB, `after-reset-chroot`, passive, `after-reset`, the state record, the power action.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kairos.agent import install
from kairos.agent.install_plan import ACTIVE, KERNEL_FILES, PASSIVE, RECOVERY, Power
from kairos.agent.state import BootState, detect_boot
from kairos.context import Context
from kairos.disk import mount
from kairos.disk.devices import BlockDevice, DeviceType
from kairos.disk.format import mkfs_argv
from kairos.disk.partition import Filesystem
from kairos.errors import CommandError
from kairos.log import Progress
from kairos.run import run, which

log = logging.getLogger("kairos.agent.reset")

STATE, RECOVERY_PART, OEM, PERSISTENT, EFI = (
    "COS_STATE",
    "COS_RECOVERY",
    "COS_OEM",
    "COS_PERSISTENT",
    "COS_GRUB",
)
LABELS = (STATE, RECOVERY_PART, OEM, PERSISTENT, EFI)
RESET_FROM = (BootState.RECOVERY, BootState.AUTORESET)
WORK_DIR = "/run/cos"
TOOLS = ("mkfs.ext4", "mount", "umount", "blkid", "lsblk", "unsquashfs", "grub-mkimage")
TOOL_PACKAGES = {
    "mkfs.ext4": "e2fsprogs",
    "blkid": "util-linux",
    "lsblk": "util-linux",
    "mount": "mount",
    "umount": "mount",
    "unsquashfs": "squashfs-tools",
    "grub-mkimage": "grub-common",
    "mcopy": "mtools",
}
# Room COS_STATE needs besides two copies of the image: GRUB's modules (~5 MiB) and the
# menu files, plus ext4's own metadata (journal, inode tables: a few % of the partition).
STATE_SLACK_BYTES = 64 << 20
EXT4_OVERHEAD = 0.05
# Filesystems a wiped partition may be re-made with (what it had, when we can tell).
KEEP_FS = {fs.value: fs for fs in Filesystem if fs not in (Filesystem.NONE, Filesystem.VFAT)}
STAGES = ("before-reset", "after-reset-chroot", "after-reset")


@dataclass(frozen=True)
class ResetOptions:
    """What to wipe and what to do after; flags override the `reset:` config block."""

    reset_persistent: bool = True
    reset_oem: bool = False
    power: Power = Power.NONE
    unattended: bool = False
    # `reset.system.uri`: upstream can reset from another image; here it is reported, unused.
    system_source: str = ""


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def parse_options(
    merged: Mapping[str, Any],
    *,
    reset_persistent: bool | None = None,
    reset_oem: bool | None = None,
    reboot: bool = False,
    poweroff: bool = False,
    unattended: bool = False,
) -> ResetOptions:
    """`reset.reset-persistent` (default true), `reset.reset-oem`, `reset.reboot|poweroff`."""
    raw = merged.get("reset")
    conf: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}

    def pick(flag: bool | None, key: str, default: bool) -> bool:
        if flag is not None:
            return flag
        value = _flag(conf.get(key))
        return default if value is None else value

    if reboot or poweroff:
        power = Power.REBOOT if reboot else Power.POWEROFF
    elif _flag(conf.get("reboot")):
        power = Power.REBOOT
    elif _flag(conf.get("poweroff")):
        power = Power.POWEROFF
    else:
        power = Power.NONE
    system = conf.get("system")
    source = ""
    if isinstance(system, Mapping):
        source = str(system.get("uri") or system.get("source") or "")
    return ResetOptions(
        reset_persistent=pick(reset_persistent, "reset-persistent", True),
        reset_oem=pick(reset_oem, "reset-oem", False),
        power=power,
        unattended=unattended,
        system_source=source,
    )


@dataclass(frozen=True)
class Part:
    """A Kairos partition found by its filesystem label."""

    label: str
    device: str
    disk: str
    fstype: str
    size: int
    mountpoints: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "device": self.device,
            "fstype": self.fstype,
            "size_bytes": self.size,
            "mountpoints": list(self.mountpoints),
        }


@dataclass(frozen=True)
class RecoveryImage:
    file: str  # RECOVERY.file on COS_RECOVERY
    size: int
    compression: str


@dataclass(frozen=True)
class ResetPlan:
    boot: BootState
    disk: str
    parts: tuple[Part, ...]
    recovery: RecoveryImage
    options: ResetOptions
    warnings: tuple[str, ...] = ()

    def part(self, label: str) -> Part:
        return next(p for p in self.parts if p.label == label)

    @property
    def wiped(self) -> tuple[str, ...]:
        """Labels of the partitions re-made, in the order they are formatted."""
        return (
            *((PERSISTENT,) if self.options.reset_persistent else ()),
            *((OEM,) if self.options.reset_oem else ()),
            STATE,
        )

    def refill_fs(self, label: str) -> Filesystem:
        """COS_STATE is always ext4 (GRUB reads it); the others keep the type they had."""
        if label == STATE:
            return Filesystem.EXT4
        return KEEP_FS.get(self.part(label).fstype, Filesystem.EXT4)

    def steps(self) -> tuple[str, ...]:
        """The progress steps, in order."""
        return (
            "before-reset",
            *(("persistent",) if self.options.reset_persistent else ()),
            *(("oem",) if self.options.reset_oem else ()),
            "state",
            "active",
            "bootloader",
            "after-reset-chroot",
            "passive",
            "boot-assessment",
            "after-reset",
            "done",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "boot": str(self.boot),
            "disk": self.disk,
            "partitions": [p.to_json() for p in self.parts],
            "format": [
                {
                    "label": label,
                    "device": self.part(label).device,
                    "fs": str(self.refill_fs(label)),
                }
                for label in self.wiped
            ],
            "keep": [p.label for p in self.parts if p.label not in self.wiped],
            "images": [
                {
                    "role": "active",
                    "from": f"{RECOVERY_PART}:{self.recovery.file}",
                    "to": f"{ACTIVE.partition}:{ACTIVE.file}",
                },
                {
                    "role": "passive",
                    "from": f"{ACTIVE.partition}:{ACTIVE.file}",
                    "to": f"{PASSIVE.partition}:{PASSIVE.file}",
                },
            ],
            "recovery_image": {
                "file": self.recovery.file,
                "size_bytes": self.recovery.size,
                "compression": self.recovery.compression,
            },
            "steps": list(self.steps()),
            "power": str(self.options.power),
            "unattended": self.options.unattended,
            "warnings": list(self.warnings),
        }

    def describe(self) -> list[str]:
        """The plan as lines for a terminal."""
        mib = self.recovery.size / (1 << 20)
        lines = [f"reset the Kairos system on {self.disk} (booted: {self.boot}):"]
        for p in self.parts:
            if p.label in self.wiped:
                what = f"FORMAT ({self.refill_fs(p.label)}, every file on it is lost)"
            else:
                what = "keep"
            lines.append(f"  {p.label:<15} {p.device:<16} {what}")
        lines.append(
            f"active:  {RECOVERY_PART}:{self.recovery.file} ({mib:.0f} MiB, "
            f"{self.recovery.compression} squashfs) -> {ACTIVE.partition}:{ACTIVE.file}"
        )
        lines.append(f"passive: a copy of the active image -> {PASSIVE.partition}:{PASSIVE.file}")
        lines.append("bootloader: GRUB for BIOS and UEFI (COS_GRUB), menu on COS_STATE")
        lines.append(f"steps: {', '.join(self.steps())}")
        lines.append(f"then: {self.options.power}")
        lines.extend(f"warning: {w}" for w in self.warnings)
        return lines


# --- finding the partitions --------------------------------------------------------------


def probe_label(device: str) -> tuple[str, str]:
    """(label, fstype) read from the device itself: lsblk has neither without udev."""
    result = run(["blkid", "-p", "-o", "export", device], check=False)
    fields = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
    return fields.get("LABEL", ""), fields.get("TYPE", "")


def find_partitions(
    devices: Sequence[BlockDevice],
    disk: str | None = None,
    probe: Callable[[str], tuple[str, str]] = probe_label,
) -> tuple[dict[str, Part], list[str]]:
    """The Kairos partitions by filesystem label (on `disk` only, when given)."""
    problems: list[str] = []
    tops = list(devices)
    if disk:
        tops = [d for d in devices if disk in (d.path, f"/dev/{d.name}")]
        if not tops:
            return {}, [f"--disk {disk}: not a disk lsblk lists (give a whole disk, e.g. /dev/vda)"]
    found: dict[str, list[Part]] = {}
    for top in tops:
        for dev in top.walk():
            if dev.type is not DeviceType.PART:
                continue
            label, fstype = dev.label or "", dev.fstype or ""
            if not label:
                label, probed_fs = probe(dev.path)
                fstype = fstype or probed_fs
            if label in LABELS:
                part = Part(label, dev.path, top.path, fstype, dev.size, dev.mountpoints)
                found.setdefault(label, []).append(part)
    parts: dict[str, Part] = {}
    for label in LABELS:
        matches = found.get(label, [])
        if not matches:
            problems.append(
                f"{label}: no partition has this label (reset needs the disk Kairos was "
                "installed on; `lsblk -f` lists the labels)"
            )
        elif len(matches) > 1:
            where = ", ".join(p.device for p in matches)
            problems.append(
                f"{label}: {len(matches)} partitions carry this label ({where}) (choose the "
                "disk with --disk)"
            )
        else:
            parts[label] = matches[0]
    if STATE in parts and EFI in parts and parts[STATE].disk != parts[EFI].disk:
        problems.append(
            f"{EFI}: on {parts[EFI].disk}, not on the disk holding {STATE} ({parts[STATE].disk}) "
            "(GRUB is reinstalled on one disk; pass --disk)"
        )
    return parts, problems


# --- checks ------------------------------------------------------------------------------


def listed_files(image: Path, wanted: Sequence[str]) -> set[str]:
    """Which of `wanted` (absolute paths) the squashfs holds; reads only its directory table."""
    result = run(
        ["unsquashfs", "-l", "-d", "", str(image), *(w.lstrip("/") for w in wanted)],
        check=False,
    )
    return {line.strip() for line in result.stdout.splitlines()} & set(wanted)


def check_recovery_image(path: Path) -> tuple[RecoveryImage | None, list[str]]:
    """The recovery image must be a squashfs holding the kernel and initrd GRUB boots."""
    from kairos.agent.install_plan import squashfs_compression

    where = f"{RECOVERY_PART}:{RECOVERY.file}"
    if not path.is_file():
        return None, [
            f"{where}: missing (the recovery system is gone; reinstall from the live medium, "
            "or run kairos-agent upgrade --recovery from a working system)"
        ]
    compression = squashfs_compression(path)
    if compression is None:
        return None, [
            f"{where}: not a squashfs image (it may be damaged; reinstall from the live medium)"
        ]
    problems = []
    present = listed_files(path, KERNEL_FILES)
    for name in KERNEL_FILES:
        if name not in present:
            problems.append(f"{where}: {name} is missing in the image (GRUB boots it from there)")
    return RecoveryImage(RECOVERY.file, path.stat().st_size, compression), problems


def check_state_size(state: Part, image_bytes: int) -> list[str]:
    need = int(2 * image_bytes * (1 + EXT4_OVERHEAD)) + STATE_SLACK_BYTES
    if state.size and state.size < need:
        return [
            f"{STATE}: {state.size >> 20} MiB is too small for two copies of the "
            f"{image_bytes >> 20} MiB recovery image (needs {need >> 20} MiB; reinstall with a "
            "bigger install.partitions.state.size)"
        ]
    return []


def missing_tools(esp_needs_mtools: bool) -> list[str]:
    tools = [*TOOLS, *(["mcopy"] if esp_needs_mtools else [])]
    return [
        f"{tool}: not installed (package {TOOL_PACKAGES.get(tool, tool)}; the recovery image "
        "must ship it)"
        for tool in tools
        if which(tool) is None
    ]


def inspect_recovery(
    ctx: Context, part: Part, can_mount: bool, work_dir: str
) -> tuple[RecoveryImage | None, list[str]]:
    """Check the recovery image where it is: on the mount a recovery boot already has, else
    on a read-only mount of our own (released before the plan is returned)."""
    image = RECOVERY.file.lstrip("/")
    if ctx.is_host_root and part.mountpoints:
        return check_recovery_image(Path(part.mountpoints[0]) / image)
    if not can_mount:
        return None, [
            f"{RECOVERY_PART}: the recovery image cannot be checked without root (run as root)"
        ]
    try:
        with mount.mounted(part.device, ctx.path(f"{work_dir}/recovery"), options=("ro",)) as root:
            return check_recovery_image(root / image)
    except CommandError as exc:
        detail = exc.stderr.strip().splitlines()[-1:] or [f"exit code {exc.returncode}"]
        return None, [
            f"{RECOVERY_PART}: {part.device} cannot be mounted read-only: {detail[0]} (the "
            "partition may be damaged; reinstall from the live medium)"
        ]


def make_plan(
    ctx: Context,
    options: ResetOptions,
    devices: Sequence[BlockDevice],
    *,
    disk: str | None = None,
    probe: Callable[[str], tuple[str, str]] = probe_label,
    can_mount: bool = True,
    work_dir: str = WORK_DIR,
) -> tuple[ResetPlan | None, list[str]]:
    """Every check, nothing written: the plan, or all the reasons the reset must not start."""
    problems: list[str] = []
    boot = detect_boot(ctx)
    if boot not in RESET_FROM:
        problems.append(
            f"boot state: {boot} (reset runs only from the recovery system; boot the recovery "
            "entry: kairos-agent bootentry --select recovery, then reboot)"
        )
    parts, found = find_partitions(devices, disk, probe)
    problems.extend(found)
    problems.extend(missing_tools(not install.vfat_mountable(ctx)))
    recovery: RecoveryImage | None = None
    if RECOVERY_PART in parts:
        recovery, bad = inspect_recovery(ctx, parts[RECOVERY_PART], can_mount, work_dir)
        problems.extend(bad)
    if recovery is not None and STATE in parts:
        problems.extend(check_state_size(parts[STATE], recovery.size))
    warnings = []
    if options.system_source:
        warnings.append(
            f"reset.system.uri {options.system_source}: resetting from another image is not "
            "supported; the recovery image is used (upgrade afterwards to change the system)"
        )
    for label in (PERSISTENT, OEM):
        if label in parts and not parts[label].fstype:
            warnings.append(f"{label}: no filesystem found on it; it is made ext4")
    if problems or recovery is None or len(parts) != len(LABELS):
        return None, problems
    plan = ResetPlan(
        boot=boot,
        disk=parts[STATE].disk,
        parts=tuple(parts[label] for label in LABELS),
        recovery=recovery,
        options=options,
        warnings=tuple(warnings),
    )
    return plan, []


# --- the reset ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StageSources:
    """Stage files read once, before anything is wiped: /oem may be formatted on the way."""

    files: tuple[Any, ...] = ()  # kairos.stages.model.StageFile
    extra: tuple[Any, ...] = ()  # config documents outside the stage paths (parsed for chroot)


def load_stage_sources(ctx: Context, extra_docs: Sequence[Any] = ()) -> StageSources:
    from kairos.stages import loader
    from kairos.stages.parse import parse_document

    extra = tuple(parse_document(doc) for doc in extra_docs)
    files = loader.load_sources(ctx, loader.stage_paths())
    return StageSources(files=(*files, *extra), extra=extra)


def run_stage(ctx: Context, stage: str, files: Sequence[Any]) -> None:
    from kairos.stages import runner

    report = runner.run_stage(ctx, stage, files, strict=ctx.strict)
    for error in report.errors:
        log.warning("stage %s: %s", stage, error)


def reset(
    ctx: Context,
    plan: ResetPlan,
    stages: StageSources,
    progress: Progress,
    work_dir: str = WORK_DIR,
) -> None:
    """Run the plan; every step is logged with its duration."""
    with progress.step("before-reset"):
        run_stage(ctx, "before-reset", stages.files)
    m = install.Mounted(Path(plan.disk))
    m.parts = {p.label: Path(p.device) for p in plan.parts}
    with ExitStack() as stack:
        for label in plan.wiped:
            with progress.step(label.removeprefix("COS_").lower()):
                format_partition(plan, label)
        mount_partitions(ctx, stack, m, work_dir)
        with progress.step("active"):
            deploy_active(m, progress)
        with install.mounted_image(ctx, m, work_dir) as image:
            with progress.step("bootloader"):
                install_bootloader(plan, m, image)
            with progress.step("after-reset-chroot"):
                run_chroot_stage(ctx, m, stages, image, work_dir)
        with progress.step("passive"):
            deploy_passive(m, progress)
        with progress.step("boot-assessment"):
            clear_assessment(m.dirs[STATE])
        with progress.step("after-reset"):
            run_stage(ctx, "after-reset", stages.files)
            record_state(m, plan)
        install.sync_all()
    with progress.step("done"):
        pass


def format_partition(plan: ResetPlan, label: str) -> None:
    """Release every mount of the partition, then make its filesystem again, same label."""
    part = plan.part(label)
    for point in current_mounts(part.device):
        # Not mount.unmount: a lazy detach would let mkfs run under a live filesystem.
        run(["umount", point])
    argv = mkfs_argv(part.device, plan.refill_fs(label), label)
    if argv is not None:
        run(argv)


def current_mounts(device: str) -> list[str]:
    """Mount points of `device` right now, deepest first (from /proc/self/mountinfo)."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    want = os.path.realpath(device)
    points = []
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        source = line.split(" - ", 1)[1].split()[1:2]
        if source and os.path.realpath(source[0]) == want:
            points.append(fields[4].replace("\\040", " "))
    return sorted(points, key=len, reverse=True)


def mount_partitions(ctx: Context, stack: ExitStack, m: install.Mounted, work_dir: str) -> None:
    """As install's, but COS_RECOVERY read-only: the recovery boot runs from it (mounted ro),
    and the kernel refuses a second, read-write mount of the same filesystem."""
    for label, options in ((STATE, ()), (RECOVERY_PART, ("ro",)), (OEM, ()), (PERSISTENT, ())):
        target = ctx.path(f"{work_dir}/{label.removeprefix('COS_').lower()}")
        m.dirs[label] = stack.enter_context(mount.mounted(m.parts[label], target, options=options))
    target = ctx.path(f"{work_dir}/efi")
    if install.vfat_mountable(ctx):
        m.dirs[EFI] = stack.enter_context(mount.mounted(m.parts[EFI], target))
    else:
        # No vfat in the kernel: stage the ESP in a directory, mcopy it in after GRUB.
        target.mkdir(parents=True, exist_ok=True)
        m.dirs[EFI] = target
        m.esp_staged = True


def deploy_active(m: install.Mounted, progress: Progress) -> None:
    """COS_STATE:/cOS/active.img: the recovery image byte for byte (fsync, then rename)."""
    source = install.image_path(m, RECOVERY.partition, RECOVERY.file)
    install.copy_image(source, install.image_path(m, ACTIVE.partition, ACTIVE.file), progress)


def deploy_passive(m: install.Mounted, progress: Progress) -> None:
    """COS_STATE:/cOS/passive.img: a copy of the new active image (the fallback entry)."""
    active = install.image_path(m, ACTIVE.partition, ACTIVE.file)
    install.copy_image(active, install.image_path(m, PASSIVE.partition, PASSIVE.file), progress)


def install_bootloader(plan: ResetPlan, m: install.Mounted, image: Path) -> None:
    """GRUB from the redeployed image's own modules, on the disk that holds COS_STATE."""
    from kairos.bootloader import install as grub

    grub.install_grub(
        Path(plan.disk), m.dirs[EFI], m.dirs[STATE], image, firmware=grub.Firmware.BOTH
    )
    if m.esp_staged:
        install.copy_staged_esp(m)


def run_chroot_stage(
    ctx: Context, m: install.Mounted, stages: StageSources, image: Path, work_dir: str
) -> None:
    """`after-reset-chroot` inside the redeployed system, /oem and /usr/local bound in."""
    from kairos.stages import loader

    with install.chroot_root(ctx, m, work_dir, image) as root:
        inner = Context(root=root, debug=ctx.debug, strict=ctx.strict, json=ctx.json)
        files = loader.load_sources(inner, loader.stage_paths(), cmdline=False)
        run_stage(inner, "after-reset-chroot", (*files, *stages.extra))


def clear_assessment(state_dir: Path) -> None:
    """A redeployed system starts with nothing pending and no fallback recorded."""
    from kairos.bootloader import assessment

    assessment.clear(state_dir)


def record_state(m: install.Mounted, plan: ResetPlan) -> None:
    """COS_PERSISTENT:/.kairos-state gets the reset time (install's keys kept when it was)."""
    path = m.dirs[PERSISTENT] / install.STATE_FILE
    data: dict[str, Any] = {}
    try:
        loaded = yaml.safe_load(path.read_text())
        if isinstance(loaded, dict):
            data = loaded
    except (OSError, yaml.YAMLError):
        pass
    data["last-reset"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data["last-reset-source"] = f"{RECOVERY_PART}:{plan.recovery.file}"
    data["last-reset-wiped"] = list(plan.wiped)
    from kairos.bootloader.install import write_atomic

    write_atomic(path, yaml.safe_dump(data, sort_keys=False).encode())
    os.chmod(path, 0o600)


def power_action(power: Power) -> None:
    """Reboot or power off (after everything is unmounted)."""
    if power is Power.NONE:
        return
    print(f"reset finished; {power} now.", flush=True)
    tool = which("systemctl")
    run([tool, str(power)] if tool else [str(power)], check=False)
