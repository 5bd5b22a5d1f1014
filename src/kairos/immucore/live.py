"""The live-media path: sentinel files, then the initramfs stage inside /sysroot."""

from __future__ import annotations

import os
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


def run_live(cmdline: Cmdline, run_dir: Path, sysroot: Path, *, stage: bool = True) -> int:
    for path in write_sentinels(cmdline, run_dir):
        print(f"immucore: wrote {path}", flush=True)
    if stage and os.path.ismount(sysroot):
        try:
            run_initramfs_stage(sysroot)
        except KairosError as exc:
            # A broken stage must not stop live media from booting: report and go on.
            print(f"immucore: initramfs stage failed: {exc}", flush=True)
    return 0
