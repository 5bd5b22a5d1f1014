"""`kairos-agent validate` and `kairos-agent print-schema`."""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.context import Context

MAX_CONFIG_BYTES = 1 << 20  # the agent skips bigger config files

VALIDATE_EPILOG = """examples:
  kairos-agent validate /oem/90_custom.yaml
  kairos-agent validate --strict --json https://example.com/node.yaml
  kairos-agent validate base.yaml node.yaml     (validated together, as merged on a node)

Exit code 0 when valid (warnings are listed), 1 with every problem as
FILE:LINE: PATH: MESSAGE (HINT). Unknown keys are warnings unless --strict,
--strict-validation or `strict: true` in the config.
"""

SCHEMA_EPILOG = """example:
  kairos-agent print-schema > cloud-config.schema.json
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `validate` and `print-schema`."""
    p = sub.add_parser(
        "validate",
        help="check cloud-configs against the schema and semantic rules",
        description="Validate one or more cloud-configs (files or URLs) and report every "
        "problem at once.",
        epilog=VALIDATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="FILE|URL", help="config file or URL")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(handler=_validate)
    s = sub.add_parser(
        "print-schema",
        help="print the cloud-config JSON Schema (draft 2020-12)",
        description="Print the JSON Schema of the whole cloud-config.",
        epilog=SCHEMA_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.set_defaults(handler=_print_schema)


def _read(source: str) -> str:
    from kairos.errors import KairosError

    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        from kairos.config.fetch import fetch_text

        return fetch_text(source, max_bytes=MAX_CONFIG_BYTES)
    from pathlib import Path

    path = Path(source)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KairosError(f"{source}: cannot read: {exc.strerror}.") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise KairosError(
            f"{source}: larger than {MAX_CONFIG_BYTES} bytes.",
            hint="the agent skips config files over 1 MiB",
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KairosError(
            f"{source}: not UTF-8 text (byte {exc.start}).", hint="a cloud-config is UTF-8 YAML"
        ) from None


def _validate(args: argparse.Namespace, ctx: Context) -> int:
    import json

    from kairos.config.validate import validate_sources
    from kairos.errors import ConfigError

    sources = [(_read(source), source) for source in args.sources]
    report = validate_sources(sources, strict=bool(args.strict or ctx.strict))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0 if report.valid else 1
    if not report.valid:
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        count = len(report.errors)
        raise ConfigError(
            f"{', '.join(args.sources)}: {count} problem{'s' if count != 1 else ''} found.",
            hint="fix every line above; warnings become errors with --strict",
            problems=tuple(str(p) for p in report.errors),
        )
    if report.warnings:
        count = len(report.warnings)
        print(f"valid, with {count} warning{'s' if count != 1 else ''}:")
        for warning in report.warnings:
            print(f"  {warning}")
    else:
        print("valid")
    return 0


def _print_schema(args: argparse.Namespace, ctx: Context) -> int:
    import json

    from kairos.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0
