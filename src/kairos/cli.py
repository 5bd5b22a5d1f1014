"""The command-line front end: the only place that turns errors into exit codes.

Each part of the system registers its commands from a small `cli` module that imports its
heavy code lazily, so `kairos-agent --version` (called at every boot stage) stays fast.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from kairos import __version__

if TYPE_CHECKING:
    import argparse

# Every module here defines `register(subparsers)`; handlers are `fn(args, ctx) -> int`.
COMMAND_MODULES = (
    "kairos.config.cli",
    "kairos.config.validate_cli",
    "kairos.stages.cli",
    "kairos.build.cli",
    "kairos.vm.cli",
    "kairos.agent.cli",
    "kairos.bootloader.cli",
    "kairos.agent.install_cli",
    "kairos.agent.upgrade_cli",
    "kairos.agent.reset_cli",
    "kairos.immucore.cli",
)

EPILOG = """examples:
  kairos build --source debian:bookworm --output out/ --format iso
  kairos vm run out/kairos.iso
  kairos-agent validate my-config.yaml
  kairos-agent config get install.device
  kairos-agent run-stage boot --analyze
"""


def build_parser() -> argparse.ArgumentParser:
    import argparse
    import importlib

    parser = argparse.ArgumentParser(
        prog="kairos",
        description="kairos-py: turn any Linux distribution into an immutable, "
        "A/B-upgradable, Kubernetes-ready OS, and manage the nodes running it.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kairos-py {__version__}")
    parser.add_argument("--debug", action="store_true", help="verbose logging and tracebacks")
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="act on the system under DIR instead of / (offline images, tests)",
    )
    parser.add_argument(
        "--strict-validation",
        dest="strict_validation",
        action="store_true",
        help="treat config warnings as errors (also env STRICT_VALIDATIONS)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(handler=_print_version)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _print_version(args: argparse.Namespace, ctx: object) -> int:
    print(f"kairos-py {__version__}")
    return 0


def _red(text: str) -> str:
    return f"\033[31m{text}\033[0m" if sys.stderr.isatty() else text


def main(argv: Sequence[str] | None = None) -> int:
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in in (["--version"], ["version"]):
        # Fast path: the node calls this at every boot stage; skip argparse and the registry.
        print(f"kairos-py {__version__}")
        return 0

    import os
    from pathlib import Path

    from kairos import log
    from kairos.context import Context
    from kairos.errors import ConfigError, KairosError

    parser = build_parser()
    args = parser.parse_args(args_in)
    debug = bool(args.debug or os.environ.get("KAIROS_AGENT_DEBUG"))
    log.setup(debug)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    ctx = Context(
        root=Path(args.root),
        debug=debug,
        strict=bool(args.strict_validation or os.environ.get("STRICT_VALIDATIONS")),
        json=bool(getattr(args, "json", False)),
    )
    try:
        return int(args.handler(args, ctx))
    except ConfigError as exc:
        print(_red(f"error: {exc.message}"), file=sys.stderr)
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        if debug:
            raise
        return 1
    except KairosError as exc:
        print(_red(f"error: {exc.message}"), file=sys.stderr)
        if exc.hint:
            print(f"  hint: {exc.hint}", file=sys.stderr)
        if debug:
            raise
        return 1
    except KeyboardInterrupt:
        print(_red("error: interrupted."), file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `kairos-agent print-schema | head`: the reader left; not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
