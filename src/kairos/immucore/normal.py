"""The installed-system boot, in two phases run by two initramfs units.

`root` (immucore-root.service, before sysroot.mount): sentinel, state partition, image loop
device named by udev, so systemd's own sysroot.mount mounts it. `layout`
(immucore-layout.service, after sysroot.mount, before initrd-fs.target): OEM, rootfs stage,
overlays, volumes, persistent binds, fstab, initramfs stage. Each step is timed into
/run/immucore/immucore.log; a failure shows the banner and fails the unit.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kairos.errors import ConfigError, KairosError
from kairos.immucore import mounts
from kairos.immucore.banner import banner, show
from kairos.immucore.bootstate import Cmdline
from kairos.immucore.layout import CUSTOM_LAYOUT_ENV, LAYOUT_ENV, Layout, parse_env
from kairos.immucore.planner import (
    STATE_MOUNT,
    STATE_TIMEOUT,
    SYSROOT,
    Kind,
    LayoutPlan,
    Mount,
    plan_layout,
    plan_root,
)

LOG_DIR = Path("/run/immucore")
LOG_FILE = LOG_DIR / "immucore.log"


def uptime() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start() -> float:
    """When this python process was exec'd (seconds since boot): start-up counts too."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return uptime()


class StepFailed(Exception):
    def __init__(self, step: str, error: str) -> None:
        super().__init__(f"{step}: {error}")
        self.step = step
        self.error = error


class BootLog:
    """Timestamped lines (seconds since boot) to the log file and to our output."""

    def __init__(self, path: Path = LOG_FILE) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._out = path.open("a", buffering=1)

    def line(self, text: str, *, echo: bool = True) -> None:
        """Log a line; `echo=False` keeps it out of the console (a serial console is slow,
        and 40 mount lines per boot add up)."""
        stamped = f"[{uptime():9.3f}] {text}"
        self._out.write(stamped + "\n")
        if echo:
            print(f"immucore: {text}", flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = uptime()
        try:
            yield
        except (KairosError, OSError) as exc:
            message = exc.message if isinstance(exc, KairosError) else str(exc)
            hint = f" ({exc.hint})" if isinstance(exc, KairosError) and exc.hint else ""
            if isinstance(exc, ConfigError) and exc.problems:
                hint += ": " + "; ".join(exc.problems)
            self.line(f"step {name} FAILED after {uptime() - start:.3f} s: {message}{hint}")
            raise StepFailed(name, message + hint) from exc
        self.line(f"step {name} took {uptime() - start:.3f} s")

    def close(self) -> None:
        self._out.close()


def run_phase(phase: str, cmdline: Cmdline, log: BootLog) -> int:
    """Run one phase; on failure show the banner and reboot when asked. Returns the code."""
    started = process_start()
    log.line(f"phase {phase} started (python exec at {started:.3f} s)")
    try:
        if phase == "root":
            phase_root(cmdline, log)
        else:
            phase_layout(cmdline, log)
    except StepFailed as failed:
        # A boot on trial after an upgrade must never sit at a banner: rebooting lets GRUB
        # count the try and fall back.
        reboot = cmdline.has("rd.immucore.rebootonfailure") or on_trial(cmdline)
        show(banner(failed.step, failed.error, str(log.path), reboot=reboot))
        if cmdline.value(TRIAL_WORD) == "trying":
            note_trial_failure(f"initramfs step '{failed.step}': {failed.error}", log)
        if reboot:
            # Time for a person at the console to read the banner.
            time.sleep(10)
            from kairos.run import run

            run(["systemctl", "--force", "reboot"], check=False)
        return 1
    log.line(f"phase {phase} took {uptime() - started:.3f} s")
    return 0


def phase_root(cmdline: Cmdline, log: BootLog) -> None:
    with log.step("plan"):
        root = plan_root(cmdline)
    with log.step("sentinel"):
        cos = Path("/run/cos")
        cos.mkdir(parents=True, exist_ok=True)
        (cos / f"{root.state}_mode").write_text("")
    with log.step(f"wait for {root.state_device}"):
        mounts.wait_state(root, STATE_TIMEOUT)
    with log.step(f"mount state {root.state_device}"):
        mounts.mount_state(root, STATE_TIMEOUT)
    with log.step(f"loop {root.image}"):
        loop = mounts.attach_image(root)
        log.line(f"{root.image_path} is {loop} = /dev/disk/by-label/{root.root_label}")


def read_layout(log: BootLog) -> Layout:
    path, custom_path = Path(LAYOUT_ENV), Path(CUSTOM_LAYOUT_ENV)
    if not path.exists():
        log.line(f"{LAYOUT_ENV} missing: upstream's built-in layout")
        return Layout(from_file=False)
    env = parse_env(path.read_text(), LAYOUT_ENV)
    custom = parse_env(custom_path.read_text(), CUSTOM_LAYOUT_ENV) if custom_path.exists() else {}
    return Layout.from_env(env, custom)


def phase_layout(cmdline: Cmdline, log: BootLog, sysroot: str = SYSROOT) -> None:
    with log.step("plan"):
        root = plan_root(cmdline)
        oem = plan_layout(cmdline, Layout(), root.state, sysroot).oem
    if oem is not None:
        with log.step(f"mount OEM {oem.what}"):
            if not mounts.mount_device(oem):
                log.line(f"{oem.what} not found within {oem.timeout:g} s: no OEM partition")
    with log.step("rootfs stage"):
        run_rootfs_stage(sysroot, log)
    with log.step("read layout"):
        layout = read_layout(log)
        plan = plan_layout(cmdline, layout, root.state, sysroot)
        for note in plan.notes:
            log.line(f"note: {note}")
    with log.step("mounts"):
        done = apply_mounts(plan, log)
    with log.step("fstab"):
        oem_done = oem if oem is not None and os.path.ismount(oem.where) else None
        mounted = LayoutPlan(plan.state, oem_done, done, root.root_label, sysroot=sysroot)
        mounts.write_file(f"{sysroot}/etc/fstab", mounted.fstab())
    with log.step("initramfs stage"):
        from kairos.immucore.live import run_initramfs_stage

        for line in run_initramfs_stage(Path(sysroot)):
            log.line(line)
    with log.step("init"):
        check_init(Path(sysroot), cmdline.value("init"))
    if on_trial(cmdline):
        with log.step("trial boot timeout"):
            write_trial_timeout(Path(sysroot))


TRIAL_WORD = "kairos.assessment"
# A trial boot that has not reached multi-user.target by then is a failed boot (a hang):
# systemd reboots and GRUB counts the try. Generous: emulated machines take minutes.
TRIAL_BOOT_TIMEOUT = 900
TRIAL_DROPIN = "/run/systemd/system/multi-user.target.d/50-kairos-boot-assessment.conf"


def note_trial_failure(what: str, log: BootLog) -> None:
    """Keep why the system on trial failed in COS_STATE:/boot_assessment, so the report after
    the fallback names it. Best effort: nothing here may stop the reboot that follows."""
    from kairos.bootloader import assessment
    from kairos.disk.mount import checkpoint
    from kairos.run import run

    state = Path(STATE_MOUNT)
    if not os.path.ismount(state):
        return
    try:
        run(["mount", "-o", "remount,rw", str(state)])
        try:
            assessment.note_boot_failure(state, what)
            os.sync()
            checkpoint(state)  # GRUB reads the block without replaying the journal
        finally:
            run(["mount", "-o", "remount,ro", str(state)], check=False)
        log.line(f"boot assessment: reason kept in {state}{assessment.ENV_FILE}")
    except (OSError, KairosError) as exc:
        log.line(f"boot assessment: reason not kept: {exc}")


def on_trial(cmdline: Cmdline) -> bool:
    return cmdline.value(TRIAL_WORD) is not None or cmdline.has(TRIAL_WORD)


def _resolve_in(root: Path, path: str) -> Path | None:
    """`path` inside `root`, each component's symlinks followed within `root` (as the
    kernel would after the switch-root); None when it does not exist."""
    parts = deque(Path(path).parts[1:])
    cur = "/"
    hops = 0
    while parts:
        name = parts.popleft()
        if name in ("", "."):
            continue
        if name == "..":
            cur = os.path.dirname(cur.rstrip("/")) or "/"
            continue
        cand = os.path.join(cur, name)
        host = root / cand.lstrip("/")
        if host.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                cur = "/"
                parts = deque(Path(target).parts[1:]) + parts
            else:
                parts = deque(Path(target).parts) + parts
        else:
            cur = cand
    found = root / cur.lstrip("/")
    return found if found.exists() else None


def check_init(sysroot: Path, init: str | None) -> None:
    """The new root must have the init the switch-root will run; systemd would otherwise
    fall back to a shell as PID 1 and the boot would hang there, never failing."""
    wanted = init or "/sbin/init"
    found = _resolve_in(sysroot, wanted)
    if found is None or not found.is_file() or not os.access(found, os.X_OK):
        raise KairosError(
            f"{wanted}: no executable init in the new root.",
            hint="the system image is broken; boot fallback or recovery",
        )


def write_trial_timeout(sysroot: Path) -> None:
    del sysroot  # /run moves with the switch-root; the unit dir is the runtime one
    path = Path(TRIAL_DROPIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by immucore for a boot on trial after an upgrade.\n"
        f"[Unit]\nJobTimeoutSec={TRIAL_BOOT_TIMEOUT}\nJobTimeoutAction=reboot-force\n"
    )


def apply_mounts(plan: LayoutPlan, log: BootLog) -> tuple[Mount, ...]:
    """Every mount of the plan in order; the ones that happened (for fstab)."""
    done = []
    for m in plan.mounts:
        try:
            applied = mounts.apply(m, plan.sysroot)
        except OSError as exc:
            if m.kind is not Kind.BIND:
                raise
            # No writable persistent volume (e.g. COS_PERSISTENT missing): stay ephemeral.
            log.line(f"skipped: {m.describe()}: {exc}")
            continue
        if applied:
            done.append(m)
            log.line(m.describe(), echo=False)
        else:
            log.line(f"skipped (nothing to mount on): {m.describe()}", echo=False)
    log.line(f"{len(done)} of {len(plan.mounts)} layout mounts made (list in {log.path})")
    return tuple(done)


def run_rootfs_stage(sysroot: str, log: BootLog) -> None:
    """The rootfs stage in-process, in the initramfs root (not chrooted): its
    environment_file writes land in this /run, which survives the switch-root."""
    from kairos.context import Context
    from kairos.stages import loader, runner

    ctx = Context(Path("/"))
    paths = [sysroot + p for p in loader.DEFAULT_PATHS]
    files = loader.load_sources(ctx, paths)
    report = runner.run_stage(ctx, "rootfs", files)
    log.line(
        f"rootfs stage: {len(report.ran)} steps run, {len(report.skipped)} skipped, "
        f"{len(report.errors)} errors"
    )
    for error in report.errors:
        log.line(f"rootfs stage error: {error}")
