"""Safe YAML loading for cloud-configs: bounded work, and a line for every path.

Hostile input (alias bombs, very deep nesting) is refused before anything expands it,
and every key and list item keeps the line it came from so validation can say
`file:line: path: message`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from kairos.errors import ConfigError

MAX_NODES = 100_000
MAX_DEPTH = 200
HEADERS = ("#cloud-config", "#kairos-config", "#node-config")

Path_ = tuple[str | int, ...]


# libyaml's parser when PyYAML has it (Debian's python3-yaml does): the pure-Python scanner
# is ~10x slower and dominates collecting a node's configs. Same nodes, marks and resolvers.
try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]


class _Loader(_BaseLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false, as the Go decoder upstream uses."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
# YAML 1.2 octal (`0o755`) as Go's decoder reads it; `0755` stays octal as in YAML 1.1 and Go.
_OCTAL_TAG = "tag:kairos-py,2026:octal"
_Loader.add_implicit_resolver(_OCTAL_TAG, re.compile(r"^[-+]?0o[0-7_]+$"), list("-+0"))


def _construct_octal(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    assert isinstance(node, yaml.ScalarNode)
    return int(str(loader.construct_scalar(node)).replace("_", ""), 0)


_Loader.add_constructor(_OCTAL_TAG, _construct_octal)


@dataclass(frozen=True)
class Document:
    """One parsed config: plain data plus where each path was written."""

    data: Any
    source: str
    lines: Mapping[Path_, int] = field(default_factory=dict)

    def line_of(self, path: Path_) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        p = tuple(path)
        while True:
            if p in self.lines:
                return self.lines[p]
            if not p:
                return None
            p = p[:-1]


def has_header(text: str) -> bool:
    """Upstream's rule: one of the first 10 lines is exactly a known header."""
    return any(line.rstrip() in HEADERS for line in text.splitlines()[:10])


def _expanded_size(root: yaml.Node, source: str) -> int:
    """Count nodes as a consumer would see them, aliases expanded, without expanding them."""
    memo: dict[int, int] = {}
    on_stack: set[int] = set()

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in memo:
            return memo[key]
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"{source}: document nested deeper than {MAX_DEPTH} levels.",
                hint="cloud-configs are shallow; this looks like hostile input",
            )
        if key in on_stack:
            raise ConfigError(f"{source}: recursive YAML alias.", hint="remove the self-reference")
        on_stack.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                total += size(k, depth + 1) + size(v, depth + 1)
                if total > MAX_NODES:
                    break
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                total += size(item, depth + 1)
                if total > MAX_NODES:
                    break
        on_stack.discard(key)
        memo[key] = total
        if total > MAX_NODES:
            raise ConfigError(
                f"{source}: document expands to more than {MAX_NODES} nodes.",
                hint="YAML aliases that multiply (an 'alias bomb') are refused",
            )
        return total

    return size(root, 0)


class _DuplicateKey(Exception):
    """A mapping repeats a key: Go's decoder upstream refuses it, so do we."""


def _record_lines(node: yaml.Node, path: Path_, out: dict[Path_, int], seen: set[int]) -> None:
    if id(node) in seen:  # an alias: its lines belong to the anchor
        return
    if isinstance(node, yaml.MappingNode):
        seen.add(id(node))
        first: dict[str, int] = {}
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                line = k.start_mark.line + 1
                if k.value in first and k.tag != "tag:yaml.org,2002:merge":
                    where = ".".join(str(x) for x in (*path, k.value))
                    raise _DuplicateKey(
                        f"{line}:{k.start_mark.column + 1}: key {where!r} is already defined "
                        f"on line {first[k.value]}"
                    )
                first[k.value] = line
                child = (*path, str(k.value))
                out.setdefault(child, line)
                _record_lines(v, child, out, seen)
    elif isinstance(node, yaml.SequenceNode):
        seen.add(id(node))
        for i, item in enumerate(node.value):
            child = (*path, i)
            out.setdefault(child, item.start_mark.line + 1)
            _record_lines(item, child, out, seen)


def load(text: str, source: str = "<string>") -> Document:
    """Parse one YAML document safely. Raises ConfigError with file:line:column on bad YAML."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return Document(None, source, {})
        _expanded_size(node, source)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(
            f"{where}: invalid YAML: {what}.",
            hint="check indentation and quoting around that line",
            problems=(f"{where}: {what}",),
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML: {exc}.") from None
    except RecursionError:
        raise ConfigError(f"{source}: document nested too deeply.") from None
    finally:
        loader.dispose()
    lines: dict[Path_, int] = {(): node.start_mark.line + 1}
    try:
        _record_lines(node, (), lines, set())
    except _DuplicateKey as exc:
        detail = str(exc)
        raise ConfigError(
            f"{source}:{detail}.",
            hint="remove or merge the repeated key",
            problems=(f"{source}:{detail}",),
        ) from None
    return Document(data, source, lines)
