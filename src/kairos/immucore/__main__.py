"""immucore entry point in the initramfs: `python3 -S -m kairos.immucore`.

Live media (rd.cos.disable, live: roots): record the boot state in /run/cos and run the
`initramfs` stage chrooted into the mounted /sysroot, as upstream's live DAG does.
Installed systems: `--phase root` then `--phase layout`, run by the immucore-root and
immucore-layout units (kairos.immucore.normal). `--dry-run` prints the plan of a boot.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kairos.immucore.bootstate import Cmdline, Mode, mode
from kairos.immucore.live import run_live

EXAMPLES = """examples:
  python3 -m kairos.immucore --dry-run \
      --cmdline "root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img"
  python3 -m kairos.immucore --dry-run --cmdline @/proc/cmdline \
      --layout-env /run/cos/cos-layout.env
  python3 -m kairos.immucore --phase root      (initramfs: state partition and image)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="immucore",
        description="Kairos initramfs boot setup (live media and installed systems).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cmdline",
        default=None,
        help="kernel command line file (default /proc/cmdline); with --dry-run the text "
        "itself, or @FILE",
    )
    parser.add_argument("--run", default="/run", help="where /run is (tests)")
    parser.add_argument("--sysroot", default="/sysroot", help="the mounted new root")
    parser.add_argument("--no-stage", action="store_true", help="skip the initramfs stage")
    parser.add_argument(
        "--phase", choices=("root", "layout"), help="installed-system boot phase to run"
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the ordered mount plan, change nothing"
    )
    parser.add_argument(
        "--layout-env", metavar="FILE", help="with --dry-run: a cos-layout.env to plan with"
    )
    parser.add_argument(
        "--custom-layout-env", metavar="FILE", help="with --dry-run: a custom-layout.env"
    )


def dry_run(args: argparse.Namespace) -> int:
    from kairos.immucore.layout import Layout, parse_env
    from kairos.immucore.planner import describe, plan_layout, plan_root

    raw = args.cmdline if args.cmdline is not None else "@/proc/cmdline"
    text = Path(raw[1:]).read_text(errors="replace") if raw.startswith("@") else raw
    cmdline = Cmdline.parse(text)
    if mode(cmdline) is Mode.LIVE:
        print("immucore plan: live boot")
        print("1. write /run/cos/live_mode")
        print("2. wait for dracut to mount /sysroot, run the initramfs stage chrooted in it")
        return 0
    root = plan_root(cmdline)
    if args.layout_env:
        env = parse_env(Path(args.layout_env).read_text(), args.layout_env)
        custom = {}
        if args.custom_layout_env:
            path = args.custom_layout_env
            custom = parse_env(Path(path).read_text(), path)
        layout, source = Layout.from_env(env, custom), args.layout_env
    else:
        layout, source = Layout(from_file=False), "none given: upstream's built-in layout"
    plan = plan_layout(cmdline, layout, root.state, args.sysroot)
    print("\n".join(describe(root, plan, source)))
    print("fstab:")
    print(plan.fstab(), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.dry_run:
        return dry_run(args)
    cmdline = Cmdline.parse(Path(args.cmdline or "/proc/cmdline").read_text(errors="replace"))
    if args.phase is not None:
        from kairos.immucore.normal import BootLog, run_phase

        log = BootLog()
        try:
            return run_phase(args.phase, cmdline, log)
        finally:
            log.close()
    chosen = mode(cmdline)
    print(f"immucore: boot mode {chosen}", flush=True)
    if chosen is Mode.LIVE:
        return run_live(cmdline, Path(args.run), Path(args.sysroot), stage=not args.no_stage)
    # Installed systems are handled by the immucore-root and immucore-layout units.
    print("immucore: nothing to do here for this boot mode", flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # the one exit point of this program
        from kairos.errors import KairosError

        if not isinstance(exc, KairosError):
            raise
        print(f"immucore: error: {exc}", file=sys.stderr)
        for problem in getattr(exc, "problems", ()):
            print(f"  {problem}", file=sys.stderr)
        sys.exit(1)
