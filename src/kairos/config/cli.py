"""`kairos-agent config`: show the node's merged cloud-config, one key of it, or its sources.

Registration stays cheap (argparse only); the collector is imported by the handlers.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.config.collect import Collected
    from kairos.context import Context

CONFIG_EPILOG = """examples:
  kairos-agent config                    # the merged config, as YAML
  kairos-agent config --json             # the same, as JSON
  kairos-agent config get install.device
  kairos-agent config get users[0].name
  kairos-agent --root /mnt/image config sources
"""
GET_EPILOG = """examples:
  kairos-agent config get install.device
  kairos-agent config get users[0].name
  kairos-agent config get stages.boot --json

A key that is not set is an error (exit code 1).
"""
SOURCES_EPILOG = """examples:
  kairos-agent config sources
  kairos-agent config sources --json
"""
SOURCES_HELP = (
    "Sources, in merge order (later wins): /run/initramfs/live, /etc/kairos, "
    "/usr/local/cloud-config, /oem (files with a #cloud-config header), then the kernel "
    "command line, each followed by what its config_url points at."
)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `config`, `config get KEY` and `config sources`."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = sub.add_parser(
        "config",
        help="show the merged cloud-config of this node",
        description="Show the node's merged cloud-config. " + SOURCES_HELP,
        epilog=CONFIG_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.add_argument(
        "--no-cmdline",
        dest="use_cmdline",
        action="store_false",
        help="leave the kernel command line out",
    )
    parser.set_defaults(handler=show)
    actions = parser.add_subparsers(dest="config_action", metavar="ACTION")
    get = actions.add_parser(
        "get",
        help="print one key of the merged config",
        description="Print one key of the merged config (yq-style path).",
        epilog=GET_EPILOG,
        formatter_class=fmt,
    )
    get.add_argument("key", help="a key path like install.device or users[0].name")
    # SUPPRESS: a default here would override `config --json get KEY`.
    get.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    get.set_defaults(handler=get_key)
    sources = actions.add_parser(
        "sources",
        help="list the config sources in merge order, and the files skipped",
        description=SOURCES_HELP,
        epilog=SOURCES_EPILOG,
        formatter_class=fmt,
    )
    sources.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON"
    )
    sources.set_defaults(handler=list_sources)


def _collect(args: argparse.Namespace, ctx: Context) -> Collected:
    import logging

    from kairos.config.collect import collect

    result = collect(ctx, use_cmdline=getattr(args, "use_cmdline", True))
    log = logging.getLogger("kairos.config")
    for warning in result.warnings:
        log.warning("%s", warning)
    return result


def _json(value: Any) -> str:
    import json

    # YAML can hold dates; JSON cannot, so they print as their ISO text.
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def _yaml(value: Any) -> str:
    import yaml

    from kairos.config.yamlload import _Loader

    class Dumper(yaml.SafeDumper):
        """Quotes every string that our loader, or a YAML 1.1 reader, would not read back as
        a string (`yes`, `0o17`), so the printed config reloads to the same data anywhere."""

    resolvers = {k: list(v) for k, v in yaml.SafeDumper.yaml_implicit_resolvers.items()}
    for key, extra in _Loader.yaml_implicit_resolvers.items():
        resolvers.setdefault(key, []).extend(r for r in extra if r not in resolvers[key])
    Dumper.yaml_implicit_resolvers = resolvers
    text: str = yaml.dump(
        value, Dumper=Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    return text


def render_config(result: Collected) -> str:
    """The merged config as upstream prints it: header, a comment naming the sources, YAML."""
    lines = ["#cloud-config", ""]
    if result.documents:
        lines.append("# Sources:")
        lines.extend(f"# - {doc.source}" for doc in result.documents)
        lines.append("")
    body = _yaml(result.merged) if result.merged else ""
    return "\n".join(lines) + "\n" + body


def show(args: argparse.Namespace, ctx: Context) -> int:
    result = _collect(args, ctx)
    text = _json(result.merged) + "\n" if args.json else render_config(result)
    print(text, end="")
    return 0


def get_key(args: argparse.Namespace, ctx: Context) -> int:
    from kairos.config.query import get

    value = get(_collect(args, ctx).merged, args.key)
    if getattr(args, "json", False):
        print(_json(value))
    elif isinstance(value, str):
        print(value)
    elif isinstance(value, dict | list):
        print(_yaml(value), end="")
    elif isinstance(value, bool):
        print("true" if value else "false")
    elif value is None:
        print("null")
    else:
        print(value)
    return 0


def list_sources(args: argparse.Namespace, ctx: Context) -> int:
    result = _collect(args, ctx)
    if getattr(args, "json", False):
        print(
            _json(
                {
                    "sources": [doc.source for doc in result.documents],
                    "skipped": [{"path": p, "reason": r} for p, r in result.skipped],
                    "warnings": list(result.warnings),
                }
            )
        )
        return 0
    print("sources (merge order, later wins):")
    if not result.documents:
        print("  (none)")
    for i, doc in enumerate(result.documents, 1):
        print(f"  {i}. {doc.source}")
    if result.skipped:
        print("skipped:")
        for path, reason in result.skipped:
            print(f"  {path}: {reason}")
    return 0
