"""`kairos-agent state` and `state get KEY`: the node's runtime facts.

Registration stays cheap (argparse only); the state module is imported by the handlers.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.context import Context

STATE_EPILOG = """examples:
  kairos-agent state                  # boot state, partitions, release, as YAML
  kairos-agent state --json           # the same, as JSON (for scripts)
  kairos-agent state get boot         # active_boot, passive_boot, recovery_boot, ...
  kairos-agent state get oem.mount_point
  kairos-agent --root /mnt/node state get kairos.version
"""
GET_EPILOG = """examples:
  kairos-agent state get boot
  kairos-agent state get persistent.mount_point
  kairos-agent state get kairos --json

A key that does not exist is an error (exit code 1).
"""
DESCRIPTION = (
    "Show what this node is running: the boot state (from the /run/cos sentinel immucore "
    "wrote, else the kernel command line), the Kairos partitions found by label "
    "(COS_OEM, COS_STATE, COS_RECOVERY, COS_PERSISTENT, COS_GRUB) with their mounts, "
    "the Kairos release from /etc/kairos-release, and the node's uuid and hostname."
)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `state` and `state get KEY`."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = sub.add_parser(
        "state",
        help="show the node's runtime state (boot state, partitions, version)",
        description=DESCRIPTION,
        epilog=STATE_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.set_defaults(handler=show)
    actions = parser.add_subparsers(dest="state_action", metavar="ACTION")
    get = actions.add_parser(
        "get",
        help="print one value of the state",
        description="Print one value of the runtime state (a key path like oem.mount_point).",
        epilog=GET_EPILOG,
        formatter_class=fmt,
    )
    get.add_argument("key", help="a key path like boot, oem.mount_point or kairos.version")
    # SUPPRESS: a default here would override `state --json get KEY`.
    get.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    get.set_defaults(handler=get_key)


def show(args: argparse.Namespace, ctx: Context) -> int:
    from kairos.agent.state import collect, render

    print(render(collect(ctx), bool(getattr(args, "json", False))), end="")
    return 0


def get_key(args: argparse.Namespace, ctx: Context) -> int:
    import json

    from kairos.agent.state import collect, query

    value = query(collect(ctx), args.key)
    if getattr(args, "json", False):
        print(json.dumps(value, indent=2))
    elif isinstance(value, dict | list):
        import yaml

        print(yaml.safe_dump(value, sort_keys=False, default_flow_style=False), end="")
    elif isinstance(value, bool):
        print("true" if value else "false")
    else:
        print(value)
    return 0
