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


def run_initramfs_stage(sysroot: Path) -> None:
    """`kairos-agent run-stage initramfs` chrooted into the new root, with the API
    filesystems bound in (users, ssh-keygen and systemctl need them) and released after."""
    agent = sysroot / "usr/bin/kairos-agent"
    if not agent.exists():
        print(f"immucore: {agent} missing, initramfs stage skipped", flush=True)
        return
    with ExitStack() as stack:
        for name in _BINDS:
            target = sysroot / name
            if not target.is_dir():
                continue
            run(["mount", "--bind", f"/{name}", str(target)])
            stack.callback(run, ["umount", "-l", str(target)], check=False)
        run(
            ["chroot", str(sysroot), "/usr/bin/kairos-agent", "run-stage", "initramfs"],
            capture=False,
            env={"KAIROS_IMMUCORE": "1"},
        )


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
        run_initramfs_stage(sysroot)
    except KairosError as exc:
        # A broken stage must not stop live media from booting: report and go on.
        print(f"immucore: initramfs stage failed: {exc}", flush=True)
    return 0
