"""`kairos-agent run-stage STAGE`: run a stage's steps from the stage paths and the cmdline."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.context import Context

EXAMPLES = """examples:
  kairos-agent run-stage boot
  kairos-agent run-stage boot --analyze
  kairos-agent --root /mnt/image run-stage initramfs --cloud-init-paths /tmp/extra.yaml
  kairos-agent run-stage after-install --strict

Runs STAGE.before, STAGE and STAGE.after from /system/oem, /oem, /usr/local/cloud-config
(plus --cloud-init-paths) and stages written on the kernel command line.
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `run-stage` to the top-level parser."""
    p = sub.add_parser(
        "run-stage",
        help="run a cloud-config stage (yip semantics)",
        description="Run the steps of a stage, with its .before and .after variants.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("stage", metavar="STAGE", help="stage name, e.g. boot, initramfs, network")
    p.add_argument("--strict", action="store_true", help="stop at the first error (exit 1)")
    p.add_argument(
        "--cloud-init-paths",
        dest="cloud_init_paths",
        action="append",
        default=[],
        metavar="P[,P...]",
        help="extra files, directories or URLs to read stages from (repeatable, comma-separated)",
    )
    p.add_argument(
        "--override-cloud-init-paths",
        dest="override_paths",
        action="store_true",
        help="read only --cloud-init-paths, not the default stage paths",
    )
    p.add_argument(
        "-a",
        "--analyze",
        action="store_true",
        help="print the plan (order, conditions, actions) without running anything",
    )
    p.set_defaults(handler=run_stage)


def run_stage(args: argparse.Namespace, ctx: Context) -> int:
    import sys

    from kairos.stages import loader, runner

    # As upstream's string-slice flag: repeated, or comma-separated in one value.
    extra = [p for value in args.cloud_init_paths for p in value.split(",") if p]
    paths = loader.stage_paths(extra, args.override_paths)
    files = loader.load_sources(ctx, paths)
    if args.analyze:
        lines, problems = runner.analyze(ctx, args.stage, files)
        print("\n".join(lines))
        return 1 if problems else 0
    report = runner.run_stage(ctx, args.stage, files, strict=args.strict)
    summary = (
        f"stage {args.stage}: {len(report.ran)} steps run, {len(report.skipped)} skipped, "
        f"{len(report.errors)} errors"
    )
    print(summary, file=sys.stderr)
    for error in report.errors:
        print(f"  error: {error}", file=sys.stderr)
    # Non-strict runs report errors and still succeed, as upstream: boot must go on.
    return 0
