"""`kairos-agent immucore --dry-run`: print the initramfs mount plan of a boot."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.context import Context

EXAMPLES = """examples:
  kairos-agent immucore --dry-run
  kairos-agent immucore --dry-run --cmdline "root=LABEL=COS_PASSIVE cos-img/filename=/p.img"
  kairos-agent immucore --dry-run --cmdline @/proc/cmdline --layout-env /run/cos/cos-layout.env

Without --cmdline the running kernel's command line (/proc/cmdline) is planned; without
--layout-env upstream's built-in layout is used (the rootfs stage writes the real one at boot).
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `immucore` to the top-level parser."""
    p = sub.add_parser(
        "immucore",
        help="print the initramfs boot plan (immucore --dry-run)",
        description="Print the ordered mount plan immucore follows for a kernel command line.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--dry-run", action="store_true", required=True, help="plan only (required)")
    p.add_argument("--cmdline", help="kernel command line text, or @FILE (default /proc/cmdline)")
    p.add_argument("--layout-env", metavar="FILE", help="a cos-layout.env to plan with")
    p.add_argument("--custom-layout-env", metavar="FILE", help="a custom-layout.env")
    p.add_argument("--sysroot", default="/sysroot", help=argparse.SUPPRESS)
    p.set_defaults(handler=immucore)


def immucore(args: argparse.Namespace, ctx: Context) -> int:
    from kairos.immucore.__main__ import dry_run

    return dry_run(args)
