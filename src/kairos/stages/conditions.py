"""Step conditions, checked in yip's order; the first that fails skips the step (no error)."""

from __future__ import annotations

import logging
import re

from kairos.context import Context
from kairos.stages import sysinfo
from kairos.stages.model import Conditions
from kairos.stages.paths import rooted

log = logging.getLogger("kairos.stages")


def _matches(pattern: str, values: tuple[str, ...]) -> bool:
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    return any(rx.search(v) for v in values if v)


def _exists(ctx: Context, path: str) -> bool:
    return rooted(ctx, path).exists() if path.startswith("/") else False


def skip_reason(cond: Conditions, ctx: Context, run_if: bool = True) -> str | None:
    """Why the step must not run, or None. `run_if=False` plans without running `if:`."""
    if cond.node and not _matches(cond.node, (sysinfo.hostname(ctx),)):
        return f"node {sysinfo.hostname(ctx)!r} does not match {cond.node!r}"
    if cond.if_ and run_if:
        from kairos.run import run_shell

        result = run_shell(cond.if_, check=False, chroot=None if ctx.is_host_root else ctx.root)
        if result.returncode != 0:
            return f"if: {cond.if_!r} exited {result.returncode}"
    release = sysinfo.os_release(ctx) if cond.only_os or cond.only_os_version else {}
    if cond.only_os:
        # yip matches sysinfo's OS name (PRETTY_NAME); ID and NAME are accepted as well.
        names = (release.get("ID", ""), release.get("PRETTY_NAME", ""), release.get("NAME", ""))
        if not _matches(cond.only_os, names):
            return f"only_os {cond.only_os!r} does not match {names[0] or 'unknown'!r}"
    if cond.only_os_version and not _matches(
        cond.only_os_version, (release.get("VERSION_ID", ""), release.get("VERSION", ""))
    ):
        return f"only_os_version {cond.only_os_version!r} does not match"
    if cond.only_arch and not _matches(cond.only_arch, sysinfo.arch_names()):
        return f"only_arch {cond.only_arch!r} does not match {sysinfo.arch_names()[0]!r}"
    if cond.only_service_manager:
        manager = sysinfo.service_manager(ctx)
        if cond.only_service_manager.strip().lower() != manager:
            return f"only_service_manager {cond.only_service_manager!r}: this root uses {manager}"
    files = cond.if_files
    if files is not None:
        if files.any and not any(_exists(ctx, p) for p in files.any):
            return "if_files.any: none of the files exist"
        missing = [p for p in files.all if not _exists(ctx, p)]
        if missing:
            return f"if_files.all: {', '.join(missing)} missing"
        present = [p for p in files.none if _exists(ctx, p)]
        if present:
            return f"if_files.none: {', '.join(present)} exist"
    return None
