"""`kairos-agent upgrade` and `kairos-agent boot-assessment`.

Registration is argparse only; handlers import the upgrade code when they run.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.context import Context

UPGRADE_EPILOG = """examples:
  kairos-agent upgrade --source ocifile:/usr/local/kairos-v2.tar --dry-run
  kairos-agent upgrade --source dir:/usr/local/v2-root --reboot
  kairos-agent upgrade --source file:/usr/local/v2.squashfs
  kairos-agent upgrade --recovery --source ocifile:/usr/local/kairos-v2.tar

The new system is written into the inactive slot of COS_STATE (two images, never a third),
then becomes active in one atomic step and boots next on trial: boot-assessment.tries boots
(default 3) to reach the health point (multi-user.target plus the cloud-config's
`boot-assessment` stage), else the node falls back to the previous system, then recovery.
Without --source: upgrade.system.uri (upgrade.recovery-system.uri with --recovery).
Set KAIROS_AGENT_PROGRESS=1 for JSON progress lines.
"""
ASSESS_EPILOG = """examples:
  kairos-agent boot-assessment            # run by kairos-boot-assessment.service
  kairos-agent boot-assessment --notice   # report a fallback (login banner, journal)

Runs the `boot-assessment` stage of the cloud-config as the health check of a boot that is
on trial after an upgrade, and records the result in COS_STATE:/boot_assessment.
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "upgrade",
        help="upgrade the system (A/B, with boot assessment and fallback)",
        description="Write a new system image into the inactive slot, switch to it "
        "atomically and boot it on trial. Every check runs before the first write.",
        epilog=UPGRADE_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument(
        "--source",
        metavar="SRC",
        help="dir:ROOT, file:IMAGE.squashfs, ocifile:ARCHIVE.tar or oci-dir:LAYOUT",
    )
    p.add_argument("--recovery", action="store_true", help="upgrade only the recovery system")
    p.add_argument("--force", action="store_true", help="upgrade even to the running version")
    p.add_argument(
        "--exclude-path",
        dest="exclude_path",
        action="append",
        default=[],
        metavar="PATH",
        help="leave PATH out of the new image (repeatable; dir:/oci sources)",
    )
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the plan only")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    power = p.add_mutually_exclusive_group()
    power.add_argument("--reboot", action="store_true", help="reboot when done")
    power.add_argument("--poweroff", action="store_true", help="power off when done")
    p.set_defaults(handler=upgrade_cmd)

    a = sub.add_parser(
        "boot-assessment",
        help="health check of a boot on trial after an upgrade",
        description="Judge a boot on trial (kairos.assessment= on the kernel command line) "
        "and record the result for GRUB; report a fallback.",
        epilog=ASSESS_EPILOG,
        formatter_class=fmt,
    )
    a.add_argument("--notice", action="store_true", help="only report a fallback, if any")
    a.add_argument(
        "--no-reboot", dest="reboot", action="store_false", help="do not reboot on failure"
    )
    a.set_defaults(handler=assess_cmd)


def upgrade_cmd(args: argparse.Namespace, ctx: Context) -> int:
    import json
    from contextlib import ExitStack

    from kairos.agent import upgrade
    from kairos.agent import upgrade_plan as up
    from kairos.agent.install_cli import require_root
    from kairos.config.collect import collect
    from kairos.log import Progress

    collected = collect(ctx)
    options = up.options_from(collected.merged, vars(args))
    if not args.dry_run:
        require_root(ctx)
    progress = Progress()
    with ExitStack() as stack:
        plan = upgrade.plan_upgrade(ctx, options, stack, progress, args.dry_run)
        if args.dry_run or args.json:
            if args.json:
                print(json.dumps({"plan": plan.to_json()}, indent=2))
            else:
                print("\n".join(plan.describe()))
            if args.dry_run:
                return 0
        if plan.no_op:
            print(f"already running {plan.source.version}; nothing to do (--force to upgrade "
                  "anyway).")  # fmt: skip
            return 0
        if not args.json:
            print("\n".join(plan.describe()), flush=True)
        upgrade.execute(ctx, plan, stack, progress)
    upgrade.power_action(options.power)
    return 0


def assess_cmd(args: argparse.Namespace, ctx: Context) -> int:
    from kairos.agent.assess import assess
    from kairos.config.collect import collect

    merged: dict[str, object] = {}
    if not args.notice:
        merged = dict(collect(ctx).merged)
    return assess(ctx, merged, notice_only=args.notice, reboot=args.reboot)
