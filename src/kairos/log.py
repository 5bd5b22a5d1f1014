"""Logging with secret redaction, and named steps with timings for long operations."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_SECRET_RE = re.compile(
    r"(?i)((?:passw(?:or)?d|token|secret|passphrase|private_key)[\"']?\s*[:=]\s*[\"']?)([^\s\"',}]+)"
)


def scrub(text: str) -> str:
    """Hide values that look like secrets (password: x, token=y) in a log line."""
    return _SECRET_RE.sub(r"\1***", text)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def setup(debug: bool = False) -> None:
    """Configure the root logger once: warnings by default, everything with --debug."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(levelname)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


@dataclass
class Progress:
    """Prints each step as it starts and ends with its duration; records them for reports.

    With KAIROS_AGENT_PROGRESS=1 it prints JSON lines instead (the installer contract).
    """

    quiet: bool = False
    steps: list[tuple[str, float]] = field(default_factory=list)
    json_lines: bool = field(default_factory=lambda: os.environ.get("KAIROS_AGENT_PROGRESS") == "1")

    def _emit(self, text: str, event: dict[str, object]) -> None:
        if self.quiet:
            return
        if self.json_lines:
            print(json.dumps(event), flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._emit(f"==> {name}", {"event": "step", "step": name, "status": "start"})
        start = time.monotonic()
        try:
            yield
        except BaseException as exc:
            secs = time.monotonic() - start
            self._emit(
                f"  x {name} failed after {secs:.1f}s",
                {"event": "error", "step": name, "seconds": round(secs, 3), "message": str(exc)},
            )
            raise
        secs = time.monotonic() - start
        self.steps.append((name, secs))
        self._emit(
            f"  ok {name} ({secs:.1f}s)",
            {"event": "step", "step": name, "status": "done", "seconds": round(secs, 3)},
        )

    def bar(self, label: str, done: int, total: int) -> None:
        """A one-line progress bar for big copies (only on a terminal)."""
        if self.quiet or self.json_lines or not sys.stderr.isatty() or total <= 0:
            return
        width = 30
        filled = int(width * min(done, total) / total)
        pct = 100 * min(done, total) / total
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r    {label} [{'#' * filled}{'.' * (width - filled)}] {pct:5.1f}%{end}")
        sys.stderr.flush()
