"""`kairos-agent reset`: from the recovery system, wipe and redeploy the node.

Registration is argparse only; the handler imports the reset code when it runs. Every check
(boot state, partitions by label, the recovery image, sizes, tools, the config) runs before
the first write, and all problems are reported together.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.agent.reset import ResetPlan
    from kairos.context import Context

COUNTDOWN_SECONDS = 60

EPILOG = """examples:
  kairos-agent reset --dry-run                   # what would be wiped and redeployed
  kairos-agent reset --dry-run --json
  kairos-agent reset                             # 60 s countdown (Ctrl-C aborts), then reset
  kairos-agent reset --unattended --reboot       # what the `statereset` boot entry runs
  kairos-agent reset --reset-oem --no-reset-persistent

Runs only from the recovery system: boot it with `kairos-agent bootentry --select recovery`
and a reboot. The active and passive systems are redeployed from the recovery image,
COS_PERSISTENT is formatted (unless reset.reset-persistent: false or --no-reset-persistent),
COS_OEM is kept unless --reset-oem (or reset.reset-oem: true). Runs the before-reset,
after-reset-chroot and after-reset stages. Set KAIROS_AGENT_PROGRESS=1 for JSON progress
lines.
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `reset`."""
    p = sub.add_parser(
        "reset",
        help="reset the node from the recovery system (wipe, redeploy, reinstall GRUB)",
        description="Redeploy the active and passive systems from the recovery image, "
        "reinstall GRUB, and wipe COS_PERSISTENT (and COS_OEM when asked).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--reset-oem",
        dest="reset_oem",
        action="store_true",
        default=None,
        help="also format COS_OEM (the node's /oem configuration is lost)",
    )
    p.add_argument(
        "--reset-persistent",
        dest="reset_persistent",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="format COS_PERSISTENT (default: reset.reset-persistent, else yes)",
    )
    p.add_argument(
        "--unattended", action="store_true", help="start at once, without the 60 s countdown"
    )
    power = p.add_mutually_exclusive_group()
    power.add_argument("--reboot", action="store_true", help="reboot when done")
    power.add_argument("--poweroff", action="store_true", help="power off when done")
    p.add_argument(
        "--disk",
        metavar="DISK",
        help="look for the Kairos partitions on DISK only (when several disks carry them)",
    )
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the plan only")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (with --dry-run)")
    p.set_defaults(handler=reset_cmd)


def has_cap_sys_admin() -> bool:
    """Reset mounts and formats: it needs CAP_SYS_ADMIN (checked, not the uid)."""
    import os
    from pathlib import Path

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 21 & 1)
    except (OSError, ValueError, IndexError):
        pass
    return os.geteuid() == 0


def countdown(seconds: int, sleep: Callable[[float], None] | None = None) -> None:
    """Give the operator `seconds` to change their mind; Ctrl-C aborts before any write."""
    import sys
    import time

    from kairos.errors import KairosError

    wait = sleep or time.sleep
    try:
        for left in range(seconds, 0, -1):
            print(
                f"\rreset starts in {left:2d} s; press Ctrl-C to abort. ",
                end="",
                file=sys.stderr,
                flush=True,
            )
            wait(1)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        raise KairosError(
            "reset aborted (Ctrl-C); nothing was changed.",
            hint="run it again, or with --unattended to skip the countdown",
        ) from None
    print(file=sys.stderr)


def reset_cmd(args: argparse.Namespace, ctx: Context) -> int:
    import json
    import os
    import sys

    from kairos.agent import reset as rs
    from kairos.agent.install_cli import stage_documents
    from kairos.config.collect import collect
    from kairos.config.validate import validate_documents
    from kairos.disk.devices import list_devices
    from kairos.errors import ConfigError, KairosError
    from kairos.log import Progress

    root = has_cap_sys_admin()
    if not args.dry_run and not root:
        raise KairosError(
            "reset needs root (CAP_SYS_ADMIN) to mount and format; nothing was done.",
            hint="run it with sudo, or try --dry-run to see the plan",
        )
    collected = collect(ctx)
    for warning in collected.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    report = validate_documents(collected.documents, strict=ctx.strict)
    problems = [str(p) for p in report.errors]
    options = rs.parse_options(
        collected.merged,
        reset_persistent=args.reset_persistent,
        reset_oem=args.reset_oem,
        reboot=args.reboot,
        poweroff=args.poweroff,
        unattended=args.unattended,
    )
    # /dev/disk/by-id/... names the same disk lsblk lists under its /dev/X path.
    disk = os.path.realpath(args.disk) if args.disk else None
    plan, found = rs.make_plan(ctx, options, list_devices(), disk=disk, can_mount=root)
    problems.extend(found)
    if args.dry_run:
        print_plan(plan, problems, bool(args.json))
        return 1 if problems else 0
    if problems or plan is None:
        raise ConfigError(
            f"reset refused: {len(problems)} problem(s); nothing was written.",
            hint="fix them and run again (--dry-run shows the plan)",
            problems=tuple(problems),
        )
    # Read before anything is wiped: --reset-oem formats /oem, where most stages live.
    stages = rs.load_stage_sources(ctx, stage_documents(collected))
    progress = Progress()
    if not options.unattended:
        if not progress.json_lines:
            print("\n".join(plan.describe()), file=sys.stderr)
        countdown(COUNTDOWN_SECONDS)
    else:
        for warning in plan.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    rs.reset(ctx, plan, stages, progress)
    if progress.json_lines:
        print(json.dumps({"event": "finished", "device": plan.disk}), flush=True)
    else:
        print(f"Kairos on {plan.disk} is reset.", file=sys.stderr)
    rs.power_action(options.power)
    return 0


def print_plan(plan: ResetPlan | None, problems: list[str], as_json: bool) -> None:
    import json
    import sys

    if as_json:
        print(
            json.dumps({"plan": plan.to_json() if plan else None, "problems": problems}, indent=2)
        )
        return
    if plan is not None:
        print("\n".join(plan.describe()))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s): reset would refuse.", file=sys.stderr)
