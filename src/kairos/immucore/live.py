"""The live-media path: sentinel files, then the initramfs stage inside /sysroot."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path

from kairos.errors import KairosError
from kairos.immucore.bootstate import Cmdline, sentinels
from kairos.run import run

_BINDS = ("dev", "proc", "sys", "run")


def write_sentinels(cmdline: Cmdline, run_dir: Path) -> tuple[Path, ...]:
    cos = run_dir / "cos"
    cos.mkdir(parents=True, exist_ok=True)
    written = []
    for name in sentinels(cmdline):
        path = cos / name
        path.write_text("")
        written.append(path)
    return tuple(written)


def run_initramfs_stage(sysroot: Path) -> list[str]:
    """The `initramfs` stage for the new root, in this process: files, users and units are
    written under `sysroot`; `commands` and `if` run chrooted into it, with the API
    filesystems bound in (released after). Same result as `chroot SYSROOT kairos-agent
    run-stage initramfs`, without starting a second Python from the new root (20-40 s
    under emulation). Returns the lines to log: a summary, then each step error (step errors
    do not stop a boot, as upstream)."""
    from kairos.context import Context
    from kairos.stages import loader, runner

    with ExitStack() as stack:
        for name in _BINDS:
            target = sysroot / name
            if not target.is_dir():
                continue
            run(["mount", "--bind", f"/{name}", str(target)])
            stack.callback(run, ["umount", "-l", str(target)], check=False)
        ctx = Context(sysroot, booting=True)
        files = loader.load_sources(ctx, loader.stage_paths())
        report = runner.run_stage(ctx, "initramfs", files)
    summary = (
        f"initramfs stage: {len(report.ran)} steps run, {len(report.skipped)} skipped, "
        f"{len(report.errors)} errors"
    )
    return [summary, *(f"initramfs stage error: {error}" for error in report.errors)]


def wait_for_sysroot(sysroot: Path, seconds: float) -> bool:
    """Upstream's live path waits for dracut to mount the new root (rd.immucore.sysrootwait)."""
    deadline = time.monotonic() + seconds
    while not os.path.ismount(sysroot):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)
    return True


def sysroot_wait(cmdline: Cmdline) -> float:
    raw = cmdline.value("rd.immucore.sysrootwait")
    try:
        return float(raw) if raw is not None else 60.0
    except ValueError:
        return 60.0


def run_live(cmdline: Cmdline, run_dir: Path, sysroot: Path, *, stage: bool = True) -> int:
    for path in write_sentinels(cmdline, run_dir):
        print(f"immucore: wrote {path}", flush=True)
    if not stage:
        return 0
    if not wait_for_sysroot(sysroot, sysroot_wait(cmdline)):
        print(f"immucore: {sysroot} not mounted, initramfs stage skipped", flush=True)
        return 0
    try:
        for line in run_initramfs_stage(sysroot):
            print(f"immucore: {line}", flush=True)
    except KairosError as exc:
        # A broken stage must not stop live media from booting: report and go on.
        print(f"immucore: initramfs stage failed: {exc}", flush=True)
    return 0
