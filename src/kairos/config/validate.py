"""Cloud-config validation in two tiers: the schema, then semantics.

Every problem of every document is collected and reported together as
`file:line: path: message (hint)`. Warnings (unknown keys, doubtful values) become errors in
strict mode: `--strict`, `--strict-validation`, or `strict: true` in any of the configs.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kairos.config import semantics
from kairos.config.jsonschema_lite import Finding, Path_, Severity, check, describe
from kairos.config.schema import json_schema
from kairos.config.yamlload import Document, has_header, load
from kairos.errors import ConfigError


@dataclass(frozen=True)
class Problem:
    """One finding, located in its file."""

    source: str
    line: int | None
    path: str
    message: str
    hint: str | None = None

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line is not None else self.source
        text = f"{where}: {self.path}: {self.message}"
        return f"{text} ({self.hint})" if self.hint else text

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "line": self.line,
            "path": self.path,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class Report:
    """The outcome of validating one or more documents."""

    errors: tuple[Problem, ...] = ()
    warnings: tuple[Problem, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.errors

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
        }


def format_path(path: Path_) -> str:
    """`("stages", "boot", 0, "files")` -> `stages.boot[0].files`."""
    if not path:
        return "(top level)"
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


@functools.cache
def _schema() -> dict[str, Any]:
    return json_schema()


def _schema_findings(doc: Document) -> list[Finding]:
    if doc.data is None:
        return [Finding((), "the config is empty", None, Severity.WARNING)]
    if not isinstance(doc.data, dict):
        return [Finding((), f"a config must be a map of keys, got {describe(doc.data)}", None)]
    return check(doc.data, _schema())


def validate_documents(docs: Sequence[Document], strict: bool = False) -> Report:
    """Validate configs that are merged together; `after:` may refer across them."""
    located: list[tuple[int, Finding]] = []
    for index, doc in enumerate(docs):
        located.extend((index, f) for f in _schema_findings(doc))
    located.extend((item.doc, item.finding) for item in semantics.check_documents(docs))
    strict = strict or any(
        isinstance(doc.data, dict) and doc.data.get("strict") is True for doc in docs
    )
    errors: list[Problem] = []
    warnings: list[Problem] = []
    seen: set[Problem] = set()

    def order(item: tuple[int, Finding]) -> tuple[int, int]:
        return item[0], docs[item[0]].line_of(item[1].path) or 0

    for index, finding in sorted(located, key=order):
        doc = docs[index]
        problem = Problem(
            doc.source,
            doc.line_of(finding.path),
            format_path(finding.path),
            finding.message,
            finding.hint,
        )
        if problem in seen:
            continue
        seen.add(problem)
        if finding.severity is Severity.ERROR or strict:
            errors.append(problem)
        else:
            warnings.append(problem)
    return Report(tuple(errors), tuple(warnings))


_YAML_WHERE = re.compile(r"^(?P<source>.*):(?P<line>\d+):(?P<col>\d+): invalid YAML: (?P<what>.*)$")


def _load_problem(exc: ConfigError, source: str) -> Problem:
    """A loader refusal (bad YAML, alias bomb, too deep) as a Problem."""
    message = exc.message.removesuffix(".")
    match = _YAML_WHERE.match(message)
    if match:
        return Problem(
            source,
            int(match["line"]),
            "(yaml)",
            f"invalid YAML at column {match['col']}: {match['what']}",
            exc.hint,
        )
    return Problem(source, None, "(yaml)", message.removeprefix(f"{source}: "), exc.hint)


def validate_sources(sources: Sequence[tuple[str, str]], strict: bool = False) -> Report:
    """Validate `(text, source)` pairs: parse each, then validate them together."""
    docs: list[Document] = []
    load_errors: list[Problem] = []
    header_warnings: list[Problem] = []
    for text, source in sources:
        try:
            docs.append(load(text, source))
        except ConfigError as exc:
            load_errors.append(_load_problem(exc, source))
            continue
        if not has_header(text):
            header_warnings.append(
                Problem(
                    source,
                    1,
                    "(header)",
                    "no #cloud-config header in the first 10 lines",
                    "the agent skips such files in its config directories",
                )
            )
    report = validate_documents(docs, strict)
    strict = strict or any(isinstance(d.data, dict) and d.data.get("strict") is True for d in docs)
    if strict:
        return Report(tuple(load_errors) + tuple(header_warnings) + report.errors, ())
    return Report(tuple(load_errors) + report.errors, tuple(header_warnings) + report.warnings)


def validate_text(text: str, source: str = "<string>", strict: bool = False) -> Report:
    """Validate one config given as text."""
    return validate_sources([(text, source)], strict)
