"""Install Kairos to a disk: partition, format, deploy the system images, install GRUB.

`install()` is a flat list of named steps over one ExitStack (every mount and loop device
is released in reverse order, on success and on failure). It runs only a plan that
`install_plan.make_plan` produced without problems; all checks happen there, before the
first write.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kairos.agent.install_plan import (
    ACTIVE,
    FAIL_SENTINEL,
    PASSIVE,
    RECOVERY,
    InstallOptions,
    InstallPlan,
    Power,
    SourceKind,
)
from kairos.context import Context
from kairos.disk import format as fmt
from kairos.disk import mount
from kairos.disk.partition import Role, sfdisk_argv, sfdisk_script, wipe_argv
from kairos.errors import KairosError
from kairos.log import Progress
from kairos.run import require_tools, run, which

log = logging.getLogger("kairos.agent")

# Squashfs for repacked images: gzip is what GRUB 2.06, every kernel and upstream's recovery
# image all read. Level 6, not mksquashfs' default 9: a Debian root came out 0.8% bigger for
# a sixth of the CPU time (bench/image_formats.py).
REPACK_ARGS = ("-comp", "gzip", "-Xcompression-level", "6", "-b", "1M")
CUSTOM_CONFIG = "/oem/90_custom.yaml"
MOUNTS_CONFIG = "/oem/10_user_custom_mounts.yaml"
STATE_FILE = ".kairos-state"
COPY_CHUNK = 8 << 20
HOOKS = {
    "kairos-install.pre": "/usr/bin/kairos-agent.install.pre.hook",
    "kairos-install.after": "/usr/bin/kairos-agent.install.after.hook",
}
TOOLS = (
    "sfdisk",
    "wipefs",
    "mkfs.ext4",
    "mkfs.vfat",
    "blkid",
    "losetup",
    "mount",
    "umount",
    "lsblk",
)
TOOL_PACKAGES = {
    "sfdisk": "fdisk",
    "wipefs": "util-linux",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "blkid": "util-linux",
    "losetup": "mount",
    "mksquashfs": "squashfs-tools",
}


@dataclass(frozen=True)
class InstallInputs:
    """What the install needs besides the plan: the config to keep, the stage sources."""

    options: InstallOptions
    config_text: str
    extra_stage_docs: tuple[Any, ...] = ()  # kairos.config.yamlload.Document
    # Where partitions are mounted during the install (upstream: /run/cos/<role>).
    work_dir: str = "/run/cos"


@dataclass
class Mounted:
    """Where each partition is mounted during the install, and the devices behind them."""

    disk: Path
    parts: dict[str, Path] = field(default_factory=dict)  # label -> device
    dirs: dict[str, Path] = field(default_factory=dict)  # label -> host mount dir
    esp_staged: bool = False  # COS_GRUB is a plain directory, copied in with mtools at the end


def install(ctx: Context, plan: InstallPlan, inputs: InstallInputs, progress: Progress) -> None:
    """Lay the system onto `plan.device`; every step is logged with its duration."""
    require_tools(
        [*TOOLS, *(["mksquashfs"] if plan.source.kind is SourceKind.DIRECTORY else [])],
        package_hint=TOOL_PACKAGES,
    )
    run_hook_stage(ctx, inputs, "kairos-install.pre")
    with ExitStack() as stack:
        with progress.step("partition"):
            m = partition_disk(plan)
            mount_partitions(ctx, stack, m, inputs.work_dir)
        with progress.step("before-install"):
            run_stage(ctx, inputs, "before-install")
            if ctx.path(FAIL_SENTINEL).exists():
                raise KairosError(
                    f"install stopped: {FAIL_SENTINEL} exists (a before-install step asked).",
                    hint="see the before-install stage output above",
                )
        with progress.step("active"):
            deploy_active(ctx, plan, m, progress)
            write_custom_config(m, inputs.config_text)
        with progress.step("bootloader"), mounted_image(ctx, m, inputs.work_dir) as image:
            install_bootloader(plan, m, inputs, image)
            # Upstream runs after-install-chroot right after GRUB; the progress contract has
            # no step of its own for it.
            run_chroot_stage(ctx, inputs, m, image)
        active = image_path(m, ACTIVE.partition, ACTIVE.file)
        with progress.step("recovery"):
            copy_image(active, image_path(m, RECOVERY.partition, RECOVERY.file), progress)
        with progress.step("passive"):
            copy_image(active, image_path(m, PASSIVE.partition, PASSIVE.file), progress)
        write_custom_mounts(m, inputs.options)
        with progress.step("after-install"):
            run_stage(ctx, inputs, "after-install")
            record_state(m, plan)
        sync_all()
    run_hook_stage(ctx, inputs, "kairos-install.after")
    with progress.step("done"):
        pass


def image_path(m: Mounted, partition: str, file: str) -> Path:
    return m.dirs[partition] / file.lstrip("/")


# --- steps -----------------------------------------------------------------------------------


def partition_disk(plan: InstallPlan) -> Mounted:
    """Write the GPT, make every filesystem, and find the partitions again by label."""
    disk = plan.device
    table = sfdisk_script(plan.layout)  # before the first write: it can refuse a name
    run(wipe_argv(disk))
    run(sfdisk_argv(disk), input=table)
    reread_partitions(disk)
    parts = list_partitions(disk)
    if len(parts) < len(plan.layout.partitions):
        raise KairosError(
            f"{disk}: the kernel shows {len(parts)} partitions after partitioning, "
            f"expected {len(plan.layout.partitions)}.",
            hint="another program may hold the disk open; check lsblk and retry",
        )
    # Right after partitioning the numbering is ours (sfdisk numbered them in layout order);
    # from here on partitions are found by label only.
    for part, device in zip(plan.layout.partitions, parts, strict=False):
        fmt.make_filesystem(device, part.fs, part.label)
    labels = fmt.probe_labels(parts)
    m = Mounted(Path(disk))
    for part in plan.layout.partitions:
        if part.label and part.role is not Role.EXTRA:
            m.parts[part.label] = fmt.find_by_label(labels, part.label)
    return m


def reread_partitions(disk: str) -> None:
    """Make the kernel and udev see the new table (partx when there, then udevadm settle)."""
    if which("partx"):
        # partx -u fails on a disk whose table the kernel already re-read; -a adds the rest.
        if run(["partx", "-u", disk], check=False).returncode != 0:
            run(["partx", "-a", disk], check=False)
    else:
        run(["blockdev", "--rereadpt", disk], check=False)
    if which("udevadm"):
        run(["udevadm", "settle", "--timeout=30"], check=False)


def list_partitions(disk: str) -> list[str]:
    """The disk's partition device paths, in table order (from lsblk, right now)."""
    from kairos.disk.devices import DeviceType, parse_lsblk

    tree = parse_lsblk(run(["lsblk", "--json", "--bytes", "--output-all", disk]).stdout)
    return [c.path for top in tree for c in top.children if c.type is DeviceType.PART]


def mount_partitions(ctx: Context, stack: ExitStack, m: Mounted, work_dir: str) -> None:
    for label in ("COS_STATE", "COS_RECOVERY", "COS_OEM", "COS_PERSISTENT"):
        target = ctx.path(f"{work_dir}/{label.removeprefix('COS_').lower()}")
        m.dirs[label] = stack.enter_context(mount.mounted(m.parts[label], target))
    target = ctx.path(f"{work_dir}/efi")
    if vfat_mountable(ctx):
        m.dirs["COS_GRUB"] = stack.enter_context(mount.mounted(m.parts["COS_GRUB"], target))
    else:
        # Kernels without vfat (some minimal VMs and containers): fill a directory and copy
        # it into the filesystem with mtools, which needs no kernel support.
        require_tools(["mcopy"], package_hint={"mcopy": "mtools"})
        target.mkdir(parents=True, exist_ok=True)
        m.dirs["COS_GRUB"] = target
        m.esp_staged = True


def vfat_mountable(ctx: Context) -> bool:
    try:
        known = Path("/proc/filesystems").read_text().split()
    except OSError:
        return True
    if "vfat" in known:
        return True
    return run(["modprobe", "vfat"], check=False).returncode == 0 if which("modprobe") else False


def copy_staged_esp(m: Mounted) -> None:
    """Copy the staged ESP tree into COS_GRUB (mcopy -s: recursive, -o: overwrite)."""
    entries = sorted(str(p) for p in m.dirs["COS_GRUB"].iterdir())
    if entries:
        run(["mcopy", "-s", "-o", "-i", str(m.parts["COS_GRUB"]), *entries, "::/"])


def deploy_active(ctx: Context, plan: InstallPlan, m: Mounted, progress: Progress) -> None:
    """COS_STATE:/cOS/active.img: the live squashfs copied byte for byte, or a repack."""
    target = m.dirs[ACTIVE.partition] / ACTIVE.file.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    source = ctx.path(plan.source.path)
    if plan.source.kind is SourceKind.SQUASHFS:
        copy_image(source, target, progress)
        return
    run(["mksquashfs", str(source), str(target), *REPACK_ARGS, "-noappend", "-quiet",
         "-no-progress", "-one-file-system", "-wildcards", "-e", "proc/*", "sys/*", "dev/*",
         "run/*", "tmp/*"])  # fmt: skip


def copy_image(src: Path, dst: Path, progress: Progress) -> None:
    """Copy a file with a progress bar; fsync before the rename so a crash leaves no half image."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.part")
    total = src.stat().st_size
    done = 0
    copy = _copy_file_range
    with src.open("rb") as fin, tmp.open("wb") as fout:
        while True:
            try:
                n = copy(fin.fileno(), fout.fileno())
            except OSError:
                if copy is _read_write:
                    raise
                # copy_file_range stops at filesystem borders (EXDEV: live medium to
                # COS_STATE, COS_STATE to COS_RECOVERY): sendfile still copies in the
                # kernel, twice as fast as read/write through Python (bench/install.py).
                copy = _sendfile if copy is _copy_file_range else _read_write
                continue
            if n == 0:
                break
            done += n
            progress.bar(dst.name, done, total)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(tmp, dst)


def _copy_file_range(fin: int, fout: int) -> int:
    # The bytes stay in the kernel, and within one filesystem it may share or offload them.
    return os.copy_file_range(fin, fout, COPY_CHUNK)


def _sendfile(fin: int, fout: int) -> int:
    return os.sendfile(fout, fin, None, COPY_CHUNK)


def _read_write(fin: int, fout: int) -> int:
    chunk = os.read(fin, COPY_CHUNK)
    view = memoryview(chunk)
    while view:
        view = view[os.write(fout, view) :]
    return len(chunk)


def write_custom_config(m: Mounted, text: str) -> None:
    """The merged config the system was installed with, kept as /oem/90_custom.yaml (0640)."""
    path = m.dirs["COS_OEM"] / CUSTOM_CONFIG.removeprefix("/oem/")
    _write(path, text.encode(), 0o640)


def write_custom_mounts(m: Mounted, options: InstallOptions) -> None:
    """`install.bind_mounts`/`ephemeral_mounts` as a rootfs stage, as upstream writes it."""
    if not (options.bind_mounts or options.ephemeral_mounts):
        return
    env: dict[str, str] = {}
    if options.bind_mounts:
        env["CUSTOM_BIND_MOUNTS"] = " ".join(options.bind_mounts)
    if options.ephemeral_mounts:
        env["CUSTOM_EPHEMERAL_MOUNTS"] = " ".join(options.ephemeral_mounts)
    doc = {
        "name": "user_custom_mounts",
        "stages": {
            "rootfs": [
                {
                    "name": "user_custom_mounts",
                    "environment_file": "/run/cos/custom-layout.env",
                    "environment": env,
                }
            ]
        },
    }
    text = "#cloud-config\n" + yaml.safe_dump(doc, sort_keys=False)
    _write(m.dirs["COS_OEM"] / MOUNTS_CONFIG.removeprefix("/oem/"), text.encode(), 0o640)


@contextmanager
def mounted_image(ctx: Context, m: Mounted, work_dir: str) -> Iterator[Path]:
    """The new active image, read-only: GRUB's modules come from it, and it is the lower
    layer of the after-install-chroot root (mounted once for both)."""
    image = image_path(m, ACTIVE.partition, ACTIVE.file)
    target = ctx.path(f"{work_dir}/active")
    with mount.mounted(image, target, fstype="squashfs", options=("loop", "ro")) as root:
        yield root


def install_bootloader(plan: InstallPlan, m: Mounted, inputs: InstallInputs, image: Path) -> None:
    """GRUB for BIOS and UEFI from the new image's own modules; grub_options into /oem/grubenv."""
    from kairos.bootloader import install as grub

    grub.install_grub(
        Path(plan.device),
        m.dirs["COS_GRUB"],
        m.dirs["COS_STATE"],
        image,
        firmware=grub.Firmware.BOTH,
    )
    options = dict(inputs.options.grub_options)
    if inputs.options.grub_entry_name:
        options.setdefault("default_menu_entry", inputs.options.grub_entry_name)
    if options:
        grub.write_grub_options(m.dirs["COS_OEM"], options)
    if m.esp_staged:
        copy_staged_esp(m)


@contextmanager
def chroot_root(ctx: Context, m: Mounted, work_dir: str, lower: Path) -> Iterator[Path]:
    """The new active image as a writable root: squashfs + tmpfs overlay, with /oem and
    COS_PERSISTENT at /usr/local bound in (as upstream) and the kernel filesystems."""
    base = ctx.path(f"{work_dir}/chroot")
    with ExitStack() as stack:
        rw = stack.enter_context(mount.mounted("tmpfs", base / "rw", fstype="tmpfs"))
        (rw / "upper").mkdir()
        (rw / "work").mkdir()
        root = stack.enter_context(
            mount.mounted("overlay", base / "root", fstype="overlay", options=(
                f"lowerdir={lower}", f"upperdir={rw / 'upper'}", f"workdir={rw / 'work'}"))
        )  # fmt: skip
        stack.enter_context(mount.bound(m.dirs["COS_OEM"], root / "oem"))
        stack.enter_context(mount.bound(m.dirs["COS_PERSISTENT"], root / "usr/local"))
        for name in ("dev", "proc", "sys"):
            stack.enter_context(mount.bound(Path(f"/{name}"), root / name))
        yield root


def run_chroot_stage(ctx: Context, inputs: InstallInputs, m: Mounted, image: Path) -> None:
    """`after-install-chroot`, inside the new system (changes outside /oem and /usr/local
    are discarded: the image is read-only)."""
    from kairos.stages import loader

    with chroot_root(ctx, m, inputs.work_dir, image) as root:
        inner = Context(root=root, debug=ctx.debug, strict=ctx.strict, json=ctx.json)
        files = loader.load_sources(inner, loader.stage_paths(), cmdline=False)
        _run(inner, "after-install-chroot", (*files, *_extra_files(inputs)))


def run_stage(ctx: Context, inputs: InstallInputs, stage: str) -> None:
    from kairos.stages import loader

    files = loader.load_sources(ctx, loader.stage_paths())
    _run(ctx, stage, (*files, *_extra_files(inputs)))


def run_hook_stage(ctx: Context, inputs: InstallInputs, stage: str) -> None:
    """A lifecycle stage plus upstream's hook script, when the image ships one."""
    run_stage(ctx, inputs, stage)
    hook = ctx.path(HOOKS[stage])
    if hook.is_file() and os.access(hook, os.X_OK):
        run([str(hook)], capture=False)


def _extra_files(inputs: InstallInputs) -> tuple[Any, ...]:
    from kairos.stages.parse import parse_document

    return tuple(parse_document(doc) for doc in inputs.extra_stage_docs)


def _run(ctx: Context, stage: str, files: Sequence[Any]) -> None:
    from kairos.stages import runner

    report = runner.run_stage(ctx, stage, files, strict=ctx.strict)
    for error in report.errors:
        log.warning("stage %s: %s", stage, error)


def record_state(m: Mounted, plan: InstallPlan) -> None:
    """COS_PERSISTENT:/.kairos-state: when and from what this node was installed."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = {"first-install": now, "first-install-source": plan.source.origin}
    _write(
        m.dirs["COS_PERSISTENT"] / STATE_FILE,
        yaml.safe_dump(data, sort_keys=False).encode(),
        0o600,
    )


def sync_all() -> None:
    os.sync()


def power_action(power: Power) -> None:
    """Reboot or power off when the config asks (after everything is unmounted)."""
    if power is Power.NONE:
        return
    print(f"installation finished; {power} now.", flush=True)
    tool = which("systemctl")
    run([tool, str(power)] if tool else [str(power)], check=False)


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)
