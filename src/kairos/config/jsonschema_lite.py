"""A small JSON Schema validator for the subset the cloud-config schema uses.

Keywords: type, properties, additionalProperties, required, items, enum, pattern, anyOf,
oneOf, minimum, maximum, minItems. It differs from a general validator in three ways that
suit cloud-configs: unknown keys (`additionalProperties: false`) are warnings, YAML 1.1
booleans (`yes`, `off`...) where a boolean is expected are warnings, and strings holding Go
templates (`{{ ... }}`) skip `pattern` and `enum`, as they are only known after rendering.
Every finding is collected; nothing stops at the first.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

Path_ = tuple[str | int, ...]

YAML11_BOOLEANS = {
    "yes": True,
    "y": True,
    "on": True,
    "no": False,
    "n": False,
    "off": False,
}


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    """One problem at one path of a document."""

    path: Path_
    message: str
    hint: str | None = None
    severity: Severity = Severity.ERROR


def is_template(value: object) -> bool:
    """A Go template the agent renders at run time."""
    return isinstance(value, str) and "{{" in value and "}}" in value


def describe(value: object) -> str:
    """How a value reads in a message: its kind and, for scalars, the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {shown!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a map"
    return type(value).__name__


_KIND_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "a list",
    "object": "a map",
    "null": "null",
}


def _kinds_text(kinds: Sequence[str]) -> str:
    words = [_KIND_WORDS.get(k, k) for k in kinds if k != "null"]
    if not words:
        return "null"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _type_ok(value: object, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "null":
        return value is None
    return True


def _kinds(schema: Mapping[str, Any]) -> list[str] | None:
    kind = schema.get("type")
    if kind is None:
        return None
    return [kind] if isinstance(kind, str) else list(kind)


def _type_hint(kinds: Sequence[str], value: object) -> str | None:
    if "string" in kinds and isinstance(value, int | float | bool):
        return "quote the value so YAML keeps it as text"
    if "integer" in kinds and isinstance(value, str) and value.strip().isdigit():
        return "remove the quotes"
    if "integer" in kinds and isinstance(value, str) and re.fullmatch(r"0o[0-7]+", value):
        # The agent's YAML reader follows YAML 1.1 here: 0o755 is text, 0755 is octal.
        return f"write it as 0{value[2:]}"
    if "array" in kinds and not isinstance(value, list):
        return "write it as a list, one '- item' per line"
    if "object" in kinds and isinstance(value, list):
        return "write it as 'key: value' lines, without '- '"
    return None


def check(value: object, schema: Mapping[str, Any], path: Path_ = ()) -> list[Finding]:
    """Every finding for `value` against `schema`."""
    kinds = _kinds(schema)
    if kinds is not None and not any(_type_ok(value, k) for k in kinds):
        finding = _type_finding(value, kinds, path)
        if finding.hint is None and schema.get("description"):
            finding = Finding(path, finding.message, schema["description"], finding.severity)
        return [finding]
    out: list[Finding] = []
    if "enum" in schema and value is not None and not is_template(value):
        out.extend(_check_enum(value, schema["enum"], path))
    pattern = schema.get("pattern")
    if isinstance(value, str) and pattern and not _matches(pattern, value):
        out.append(
            Finding(
                path,
                f"{value!r} does not match the expected form {pattern}",
                schema.get("description"),
            )
        )
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            out.append(Finding(path, f"{value} is below the minimum of {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            out.append(Finding(path, f"{value} is above the maximum of {schema['maximum']}"))
    if isinstance(value, dict):
        out.extend(_check_object(value, schema, path))
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            out.append(Finding(path, f"needs at least {schema['minItems']} item(s)"))
        if "items" in schema:
            for index, item in enumerate(value):
                out.extend(check(item, schema["items"], (*path, index)))
    if "anyOf" in schema:
        out.extend(_check_alternatives(value, schema["anyOf"], path, exactly_one=False))
    if "oneOf" in schema:
        out.extend(_check_alternatives(value, schema["oneOf"], path, exactly_one=True))
    return out


def _matches(pattern: str, value: str) -> bool:
    return is_template(value) or re.search(pattern, value) is not None


def _type_finding(value: object, kinds: Sequence[str], path: Path_) -> Finding:
    if "boolean" in kinds and isinstance(value, str) and value.lower() in YAML11_BOOLEANS:
        meant = "true" if YAML11_BOOLEANS[value.lower()] else "false"
        # Upstream's decoder still reads these into boolean fields; YAML 1.2 tools do not.
        return Finding(
            path,
            f"{value!r} is a boolean only in YAML 1.1",
            f"write {meant}",
            Severity.WARNING,
        )
    return Finding(
        path, f"expected {_kinds_text(kinds)}, got {describe(value)}", _type_hint(kinds, value)
    )


def _check_enum(value: object, allowed: Sequence[Any], path: Path_) -> list[Finding]:
    if value in allowed:
        return []
    shown = ", ".join(repr(a) if a == "" else str(a) for a in allowed)
    hint = None
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [str(a) for a in allowed if a], n=1)
        if close:
            hint = f"did you mean {close[0]!r}?"
    return [Finding(path, f"{describe(value)} is not one of: {shown}", hint)]


def _check_object(
    value: Mapping[Any, Any], schema: Mapping[str, Any], path: Path_
) -> list[Finding]:
    out: list[Finding] = []
    props: Mapping[str, Any] = schema.get("properties", {})
    for key in schema.get("required", ()):
        if key not in value:
            out.append(Finding(path, f"missing required key '{key}'"))
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        child = (*path, str(key))
        if not isinstance(key, str):
            out.append(
                Finding(child, f"key {describe(key)} is not text", "quote the key", Severity.ERROR)
            )
        if str(key) in props:
            out.extend(check(item, props[str(key)], child))
        elif extra is False:
            out.append(_unknown_key(str(key), props, child))
        elif isinstance(extra, Mapping):
            out.extend(check(item, extra, child))
    return out


def _unknown_key(key: str, known: Mapping[str, Any], path: Path_) -> Finding:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{close[0]}'?"
    elif 0 < len(known) <= 12:
        hint = "it is ignored; known keys here: " + ", ".join(sorted(known))
    else:
        hint = "it is ignored"
    return Finding(path, f"unknown key '{key}'", hint, Severity.WARNING)


def _check_alternatives(
    value: object, alternatives: Sequence[Mapping[str, Any]], path: Path_, exactly_one: bool
) -> list[Finding]:
    results = [check(value, alt, path) for alt in alternatives]
    passing = [r for r in results if not any(f.severity is Severity.ERROR for f in r)]
    if passing:
        if exactly_one and len(passing) > 1:
            return [Finding(path, "matches more than one of the allowed forms")]
        return passing[0]
    # Report the errors of the one form whose type fits, else one message naming all types.
    fitting = [
        r
        for alt, r in zip(alternatives, results, strict=True)
        if (kinds := _kinds(alt)) is None or any(_type_ok(value, k) for k in kinds)
    ]
    if len(fitting) == 1:
        return fitting[0]
    kinds_all: list[str] = []
    for alt in alternatives:
        for kind in _kinds(alt) or ():
            if kind not in kinds_all:
                kinds_all.append(kind)
    if kinds_all and not fitting:
        return [_type_finding(value, kinds_all, path)]
    return [Finding(path, f"{describe(value)} matches none of the allowed forms")]
