"""`kairos-agent upgrade`: write a new system into the inactive slot, then switch atomically.

Order of the writes, and what a power cut at each point leaves (the node always boots):

1. the freed slot is removed and the new image written to `/cOS/transition.img`, then
   fsynced: active is untouched and still the default;
2. boot assessment is armed (`COS_STATE:/boot_assessment`, one atomic rename): if the
   switch below never happens, the next boot tries active = the old system, which passes
   and ends the trial;
3. `transition.img` and `active.img` swap names in one `renameat2(RENAME_EXCHANGE)`:
   from here the new system is active, on trial, and falls back on failure;
4. the old active (now `transition.img`) becomes `passive.img` (rename), or is dropped
   when we booted from passive (it is the image that failed). Until then GRUB's own
   fallback chain skips the missing passive and goes to recovery.

`KAIROS_UPGRADE_PAUSE_AT=write|switch|rotate` stops the upgrade at that point and waits to be
killed: power-cut tests use it to cut at exact instants.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from kairos.agent import upgrade_plan as up
from kairos.agent.install_plan import RECOVERY, Power
from kairos.agent.state import detect_boot
from kairos.context import Context
from kairos.disk import mount
from kairos.errors import ConfigError, KairosError
from kairos.log import Progress
from kairos.run import require_tools, run, which

log = logging.getLogger("kairos.agent")

PAUSE_ENV = "KAIROS_UPGRADE_PAUSE_AT"
PAUSE_POINTS = ("write", "switch", "rotate")
COPY_CHUNK = 8 << 20
# gzip level 1: GRUB reads it, and on a node the write is downtime-adjacent work; level 6
# saves a few percent of space for several times the CPU (bench/image_formats.py).
PACK_ARGS = ("-comp", "gzip", "-Xcompression-level", "1", "-b", "1M")
ALWAYS_EXCLUDED = ("proc/*", "sys/*", "dev/*", "run/*", "tmp/*")
STATE_RECORD = "/usr/local/.kairos-state"
LABELS = {up.Target.ACTIVE: "COS_STATE", up.Target.RECOVERY: "COS_RECOVERY"}


def pause_point(name: str) -> None:
    """Stop here when the power-cut test asked for it (never returns then)."""
    wanted = os.environ.get(PAUSE_ENV, "")
    if name in wanted.split(","):
        print(f"kairos-agent upgrade: paused at '{name}' ({PAUSE_ENV}); waiting to be killed",
              file=sys.stderr, flush=True)  # fmt: skip
        while True:
            time.sleep(3600)


# --- partitions ------------------------------------------------------------------------------


def _device_by_label(label: str) -> str | None:
    if not which("blkid"):
        return None
    result = run(["blkid", "-L", label], check=False)
    return result.stdout.strip() or None if result.returncode == 0 else None


def open_partition(ctx: Context, stack: ExitStack, target: up.Target) -> Path:
    """The partition receiving the image, mounted read-only for now (writable later)."""
    label = LABELS[target]
    if target is up.Target.ACTIVE:
        booted = ctx.path(up.STATE_MOUNT)
        if mount.is_mountpoint(booted):
            return booted
    work = ctx.path(f"{up.WORK_DIR}/{label.removeprefix('COS_').lower()}")
    if mount.is_mountpoint(work):
        return work
    if str(ctx.root) != "/":
        # A node tree under --root (tests, chroots): the partition is a plain directory.
        tree = ctx.path(up.STATE_MOUNT) if target is up.Target.ACTIVE else work
        if tree.is_dir():
            return tree
    device = _device_by_label(label)
    if device is None:
        raise KairosError(
            f"{label}: no partition with this label.",
            hint="upgrades run on a node installed with kairos-agent install",
        )
    return stack.enter_context(mount.mounted(device, work, options=("ro",)))


def make_writable(ctx: Context, stack: ExitStack, path: Path) -> None:
    """Remount read-write for the upgrade, and read-only again afterwards."""
    if not mount.is_mountpoint(path):
        return
    run(["mount", "-o", "remount,rw", str(path)])
    stack.callback(lambda: run(["mount", "-o", "remount,ro", str(path)], check=False))


# --- planning --------------------------------------------------------------------------------


def plan_upgrade(
    ctx: Context, options: up.UpgradeOptions, stack: ExitStack, progress: Progress, dry_run: bool
) -> up.UpgradePlan:
    """Every check, before anything is written; raises with all problems at once."""
    target = up.Target.RECOVERY if options.recovery else up.Target.ACTIVE
    boot = detect_boot(ctx)
    problems = up.boot_problems(boot, target) + up.excluded_problems(options.excluded)
    scheme, value, source_problems = up.parse_source(options.source)
    problems += source_problems
    if problems:
        raise _refused(problems)
    source = _inspect_source(ctx, options, scheme, value, stack, progress, dry_run)
    partition = open_partition(ctx, stack, target)
    image, rotate, _freed = up.slot_files(target, boot)
    available, space, warnings, in_place = up.space_problems(
        target, partition, boot, source.size_bytes
    )
    if space:
        raise _refused(space)
    running = up.running_version(ctx)
    no_op = target is up.Target.ACTIVE and bool(source.version) and source.version == running
    return up.UpgradePlan(
        target=target,
        boot=boot,
        source=source,
        running_version=running,
        partition_dir=str(partition),
        image=image,
        rotate_to=rotate,
        free_bytes=available,
        needed_bytes=source.size_bytes,
        options=options,
        no_op=no_op and not options.force,
        warnings=tuple(warnings),
        in_place=in_place,
    )


def _refused(problems: Sequence[str]) -> ConfigError:
    return ConfigError(
        "upgrade refused; nothing was written.",
        hint="fix the problems above and run it again",
        problems=tuple(problems),
    )


def _inspect_source(
    ctx: Context,
    options: up.UpgradeOptions,
    scheme: str,
    value: str,
    stack: ExitStack,
    progress: Progress,
    dry_run: bool,
) -> up.UpgradeSource:
    spec = options.source
    if scheme == "dir":
        problems = up.check_tree(ctx, spec, value)
        if problems:
            raise _refused(problems)
        return up.inspect_tree(ctx, spec, value, up.SourceKind.DIR)
    if scheme == "file":
        problems = up.check_image(ctx, spec, value)
        if problems:
            raise _refused(problems)
        size = ctx.path(value).stat().st_size
        # Room first (a too-big image is refused without being opened), then a look inside
        # (read-only) for the kernel, the initrd and the version.
        target = up.Target.RECOVERY if options.recovery else up.Target.ACTIVE
        partition = open_partition(ctx, stack, target)
        _avail, space, _warn, _in_place = up.space_problems(
            target, partition, detect_boot(ctx), size
        )
        if space:
            raise _refused(space)
        where = ctx.path(f"{up.WORK_DIR}/upgrade-source")
        try:
            root = stack.enter_context(
                mount.mounted(ctx.path(value), where, fstype="squashfs", options=("loop", "ro"))
            )
        except KairosError as exc:
            raise _refused(
                [f"upgrade.source {spec}: cannot be opened as a squashfs ({exc.message})"]
            ) from None
        problems = up._kernel_missing(root, f"upgrade.source {spec}")
        if problems:
            raise _refused(problems)
        return up.UpgradeSource(
            up.SourceKind.IMAGE,
            spec,
            value,
            size,
            up.release_version(root),
            root=f"{up.WORK_DIR}/upgrade-source",
        )
    return _unpack_oci(ctx, scheme, value, spec, stack, progress, dry_run)


def _unpack_oci(
    ctx: Context,
    scheme: str,
    value: str,
    spec: str,
    stack: ExitStack,
    progress: Progress,
    dry_run: bool,
) -> up.UpgradeSource:
    from kairos.image import source as image_source

    parsed = image_source.parse(f"{scheme}:{ctx.path(value)}")
    try:
        image_source.check(parsed)
    except KairosError as exc:
        raise _refused([f"upgrade.source {spec}: {exc.message.rstrip('.')}"]) from None
    if dry_run:
        size = ctx.path(value).stat().st_size if ctx.path(value).is_file() else 0
        return up.UpgradeSource(up.SourceKind.OCI, spec, value, size, "", unpack_from=value)
    scratch = ctx.path(up.SCRATCH)
    if scratch.exists():
        run(["rm", "-rf", "--one-file-system", str(scratch)])
    stack.callback(lambda: run(["rm", "-rf", "--one-file-system", str(scratch)], check=False))
    tree = scratch / "root"
    with progress.step("unpack"):
        image_source.materialize(parsed, tree, progress)
    node_tree = f"{up.SCRATCH}/root"
    problems = up.check_tree(ctx, spec, node_tree)
    if problems:
        raise _refused(problems)
    found = up.inspect_tree(ctx, spec, node_tree, up.SourceKind.OCI)
    return up.UpgradeSource(
        up.SourceKind.OCI,
        spec,
        node_tree,
        found.size_bytes,
        found.version,
        unpack_from=value,
        root=node_tree,
    )


# --- writing ---------------------------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_image(src: Path, dst: Path, progress: Progress) -> None:
    """Byte copy with a progress bar; stops halfway when the `write` pause point is set."""
    total = src.stat().st_size
    done = 0
    half_paused = False
    with src.open("rb") as fin, dst.open("wb") as fout:
        while True:
            try:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), COPY_CHUNK)
            except OSError:
                chunk = fin.read(COPY_CHUNK)
                n = len(chunk)
                fout.write(chunk)
            if n == 0:
                break
            done += n
            progress.bar(dst.name, done, total)
            if not half_paused and done * 2 >= total:
                half_paused = True
                pause_point("write")
        fout.flush()
        os.fsync(fout.fileno())


def pack_tree(src: Path, dst: Path, excluded: Sequence[str]) -> None:
    patterns = [*ALWAYS_EXCLUDED, *(p.strip("/") for p in excluded)]
    run(["mksquashfs", str(src), str(dst), *PACK_ARGS, "-noappend", "-quiet", "-no-progress",
         "-one-file-system", "-wildcards", "-e", *patterns])  # fmt: skip
    pause_point("write")
    fsync_file(dst)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two names in one atomic step (renameat2 RENAME_EXCHANGE, Linux >= 3.15)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    args = (_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if fn is not None:
        rc = fn(*args)
    else:  # glibc < 2.28: the raw system call (x86_64: 316, aarch64: 276)
        nr = {"x86_64": 316, "aarch64": 276}.get(os.uname().machine)
        if nr is None:
            raise KairosError("renameat2 is not available on this system.")
        rc = libc.syscall(nr, *args)
    if rc != 0:
        err = ctypes.get_errno()
        raise KairosError(f"cannot swap {a.name} and {b.name}: {os.strerror(err)}.")


def switch_slots(plan: up.UpgradePlan, part: Path) -> None:
    """Step 3 and 4 of the module doc: one atomic swap, then the old image's new name."""
    transition = part / up.TRANSITION.lstrip("/")
    active = part / plan.image.lstrip("/")
    if active.exists():
        exchange(transition, active)
    else:
        os.rename(transition, active)
    fsync_dir(active.parent)
    mount.checkpoint(part)
    pause_point("rotate")
    if transition.exists():
        if plan.rotate_to:
            os.rename(transition, part / plan.rotate_to.lstrip("/"))
        else:
            transition.unlink()
        fsync_dir(active.parent)
        mount.checkpoint(part)


def clean_slot(plan: up.UpgradePlan, part: Path) -> None:
    """Remove what an interrupted upgrade left, then free the slot the new image takes."""
    transition = part / up.TRANSITION.lstrip("/")
    transition.unlink(missing_ok=True)
    _image, _rotate, freed = up.slot_files(plan.target, plan.boot)
    if freed:
        (part / freed.lstrip("/")).unlink(missing_ok=True)
    elif plan.in_place:
        (part / plan.image.lstrip("/")).unlink(missing_ok=True)
    transition.parent.mkdir(parents=True, exist_ok=True)
    fsync_dir(transition.parent)


def write_new_image(ctx: Context, plan: up.UpgradePlan, part: Path, progress: Progress) -> Path:
    transition = part / up.TRANSITION.lstrip("/")
    src = ctx.path(plan.source.path)
    try:
        if plan.source.kind is up.SourceKind.IMAGE:
            copy_image(src, transition, progress)
        else:
            pack_tree(src, transition, plan.options.excluded)
    except BaseException as exc:
        transition.unlink(missing_ok=True)
        if isinstance(exc, OSError | KairosError):
            raise KairosError(
                f"writing the new image failed: {exc}; the running system is untouched.",
                hint="check the space on the partition (kairos-agent state) and run it again",
            ) from exc
        raise
    fsync_dir(transition.parent)
    return transition


# --- stages ----------------------------------------------------------------------------------


def run_stage(ctx: Context, stage: str) -> None:
    from kairos.stages import loader, runner

    files = loader.load_sources(ctx, loader.stage_paths())
    report = runner.run_stage(ctx, stage, files, strict=ctx.strict)
    for error in report.errors:
        log.warning("stage %s: %s", stage, error)


def mentions_stage(roots: Sequence[Path], stage: str) -> bool:
    """Whether any stage file under these roots names `stage` (a cheap text scan, so that
    an upgrade without such steps skips mounting the new image for nothing)."""
    from kairos.stages import loader

    for root in roots:
        for rel in loader.stage_paths():
            top = root / rel.lstrip("/")
            files = [top] if top.is_file() else sorted(top.glob("*.y*ml")) if top.is_dir() else []
            for f in files:
                try:
                    if stage in f.read_text(errors="replace"):
                        return True
                except OSError:
                    continue
    return False


def run_chroot_stage(ctx: Context, image: Path, stack: ExitStack) -> None:
    """`after-upgrade-chroot` inside the new image (an overlay over it; only /oem and
    /usr/local keep what it writes, as with after-install-chroot)."""
    from kairos.agent.install import Mounted, chroot_root
    from kairos.stages import loader, runner

    lower = stack.enter_context(
        mount.mounted(image, ctx.path(f"{up.WORK_DIR}/transition"), fstype="squashfs",
                      options=("loop", "ro"))
    )  # fmt: skip
    m = Mounted(
        Path(""), dirs={"COS_OEM": ctx.path("/oem"), "COS_PERSISTENT": ctx.path("/usr/local")}
    )
    with chroot_root(ctx, m, up.WORK_DIR, lower) as root:
        inner = Context(root=root, debug=ctx.debug, strict=ctx.strict, json=ctx.json)
        files = loader.load_sources(inner, loader.stage_paths(), cmdline=False)
        report = runner.run_stage(inner, "after-upgrade-chroot", files, strict=ctx.strict)
        for error in report.errors:
            log.warning("stage after-upgrade-chroot: %s", error)


def record(ctx: Context, plan: up.UpgradePlan) -> None:
    """COS_PERSISTENT:/.kairos-state: the last upgrade, beside the install record."""
    path = ctx.path(STATE_RECORD)
    if not path.parent.is_dir():
        return
    try:
        data: dict[str, Any] = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        data = {}
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    key = "last-recovery-upgrade" if plan.target is up.Target.RECOVERY else "last-upgrade"
    data[key] = {
        "date": now,
        "source": plan.source.spec,
        "from": plan.running_version,
        "to": plan.source.version,
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# --- the whole upgrade -----------------------------------------------------------------------


def execute(ctx: Context, plan: up.UpgradePlan, stack: ExitStack, progress: Progress) -> None:
    from kairos.bootloader import assessment

    tools = ["mount", "umount", "losetup"]
    if plan.source.kind is not up.SourceKind.IMAGE:
        tools.append("mksquashfs")
    require_tools(tools, package_hint={"mksquashfs": "squashfs-tools", "losetup": "mount"})
    part = Path(plan.partition_dir)
    with progress.step("before-upgrade"):
        run_stage(ctx, "before-upgrade")
    with progress.step("prepare"):
        make_writable(ctx, stack, part)
        clean_slot(plan, part)
    with progress.step("write"):
        transition = write_new_image(ctx, plan, part, progress)
    with progress.step("after-upgrade-chroot"), ExitStack() as inner:
        roots = [ctx.path("/")]
        if plan.source.root:
            roots.append(ctx.path(plan.source.root))
        if mentions_stage(roots, "after-upgrade-chroot"):
            run_chroot_stage(ctx, transition, inner)
    with progress.step("switch"):
        if plan.target is up.Target.ACTIVE:
            state_dir = part
            assessment.arm(state_dir, plan.source.version, plan.running_version, plan.options.tries)
            mount.checkpoint(part)
        pause_point("switch")
        if plan.target is up.Target.RECOVERY:
            os.replace(transition, part / RECOVERY.file.lstrip("/"))
            fsync_dir(transition.parent)
            mount.checkpoint(part)
        else:
            switch_slots(plan, part)
    with progress.step("after-upgrade"):
        run_stage(ctx, "after-upgrade")
        record(ctx, plan)
    if plan.target is up.Target.RECOVERY:
        print("recovery upgraded; active and passive are unchanged.", flush=True)
    else:
        print(
            f"upgraded to {plan.source.version or plan.source.spec}: it boots next, on trial "
            f"({plan.options.tries} tries, then back to {plan.running_version or 'passive'}).",
            flush=True,
        )


def power_action(power: Power) -> None:
    from kairos.agent.install import power_action as act

    act(power)
