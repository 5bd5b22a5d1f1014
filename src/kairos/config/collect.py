"""Collect the node's cloud-config from upstream's sources, in upstream's merge order.

Files in `CONFIG_DIRS` (each walked in lexical order), then explicit files, then the
kernel command line; each source is followed by the configs its `config_url` points at.
Later sources win (see `merge`). A file counts only with a `#cloud-config` (or
`#kairos-config`, `#node-config`) header in its first 10 lines, a `.yaml`/`.yml` name and
a size under 1 MiB (`sdk/collector/collector.go`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kairos.config.merge import merge_all
from kairos.config.yamlload import Document, has_header, load
from kairos.context import Context
from kairos.errors import ConfigError, KairosError

log = logging.getLogger("kairos.config")

# Upstream's order (agent/pkg/constants GetUserConfigDirs); the docs list another order,
# the code is what nodes run.
CONFIG_DIRS: tuple[str, ...] = (
    "/run/initramfs/live",
    "/etc/kairos",
    "/usr/local/cloud-config",
    "/oem",
)
MAX_FILE_BYTES = 1 << 20
MAX_URL_DEPTH = 5
# Upstream tries a config_url three times, a second apart: the network may still be coming up.
URL_ATTEMPTS = 3
URL_RETRY_DELAY = 1.0
CMDLINE_SOURCE = "cmdline"
EXTENSIONS = (".yaml", ".yml")


@dataclass(frozen=True)
class Collected:
    """Every source that counted (merge order), the merged result, and what was left out."""

    documents: tuple[Document, ...]
    merged: dict[str, Any]
    skipped: tuple[tuple[str, str], ...]
    warnings: tuple[str, ...]


class _Collector:
    """The mutable state of one collection run; `collect` freezes it into `Collected`."""

    def __init__(self, ctx: Context, fetch: Callable[[str], str] | None) -> None:
        self.ctx = ctx
        self.fetch = fetch
        self.documents: list[Document] = []
        self.skipped: list[tuple[str, str]] = []
        self.warnings: list[str] = []
        self.problems: list[str] = []
        self._values: dict[str, Any] | None = None

    # -- helpers

    def values(self) -> dict[str, Any]:
        # Gathered once, and only when some source has a template: it reads /proc and /sys.
        if self._values is None:
            from kairos.config.template import node_values

            self._values = node_values(self.ctx)
        return self._values

    def file_values(self) -> dict[str, Any]:
        # A fresh `.Random` per file, as each upstream render gets its own.
        from kairos.config.template import random_string

        return {**self.values(), "Random": random_string()}

    def skip(self, source: str, reason: str) -> None:
        log.debug("skipping %s: %s", source, reason)
        self.skipped.append((source, reason))

    def problem(self, source: str, error: KairosError) -> None:
        found = error.problems if isinstance(error, ConfigError) and error.problems else ()
        lines = found or (str(error).rstrip("."),)
        self.problems.extend(lines)
        self.warnings.extend(f"{line}; source ignored" for line in lines)
        # `config sources` prints the path beside the reason: do not repeat it.
        first = lines[0]
        rest = first.removeprefix(f"{source}:")
        self.skipped.append((source, f"line {rest.strip()}" if rest != first else first))

    def node_name(self, path: Path) -> str:
        """`/oem/x.yaml` for a file under the root, so messages speak of node paths."""
        try:
            rel = path.relative_to(self.ctx.root)
        except ValueError:
            return str(path)
        return "/" + rel.as_posix() if str(rel) != "." else "/"

    # -- sources

    def parse(self, text: str, source: str) -> Document | None:
        """Render templates, then parse; a problem is recorded and the source dropped."""
        try:
            if "{{" in text:
                from kairos.config.template import render

                text = render(text, self.file_values(), source)
            doc = load(text, source)
        except KairosError as exc:
            self.problem(source, exc)
            return None
        if doc.data is None:  # a header and nothing else: valid, contributes nothing
            return Document({}, source, doc.lines)
        if not isinstance(doc.data, Mapping):
            self.problem(
                source,
                ConfigError(
                    f"{source}:1: the top level is a {type(doc.data).__name__}, not a map.",
                    problems=(f"{source}:1: the top level must be a map of keys (key: value)",),
                ),
            )
            return None
        return doc

    def add_file(self, path: Path, *, explicit: bool = False) -> None:
        source = self.node_name(path)
        try:
            size = path.stat().st_size
        except OSError as exc:
            self.skip(source, f"cannot read: {exc.strerror}")
            return
        if size > MAX_FILE_BYTES:
            self.skip(source, f"too big ({size} bytes, limit {MAX_FILE_BYTES})")
            return
        if not explicit and not path.name.endswith(EXTENSIONS):
            self.skip(source, "not a .yaml or .yml file")
            return
        try:
            raw = path.read_bytes()
        except OSError as exc:
            self.skip(source, f"cannot read: {exc.strerror}")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.skip(source, f"not UTF-8 text (byte {exc.start})")
            return
        # Explicit files (install/validate arguments) were chosen by the user: no header needed.
        if not explicit and not has_header(text):
            self.skip(source, "no #cloud-config header in its first 10 lines")
            return
        doc = self.parse(text, source)
        if doc is not None:
            self.add(doc, depth=0, seen=frozenset())

    def add(self, doc: Document, *, depth: int, seen: frozenset[str]) -> None:
        """Record a document, then follow its `config_url` (which then wins over it)."""
        self.documents.append(doc)
        url = doc.data.get("config_url")
        if not isinstance(url, str) or not url.strip():
            return
        url = url.strip()
        if "{{" in url:  # only the command line can still hold one: files are rendered
            url = self.render_url(url, doc.source)
            if url is None:
                return
        where = f"{doc.source}: config_url {url}"
        if url in seen:
            self.warnings.append(f"{where}: already fetched in this chain (a loop); not followed")
            return
        if depth >= MAX_URL_DEPTH:
            self.warnings.append(
                f"{where}: config_url chain deeper than {MAX_URL_DEPTH}; not followed"
            )
            return
        if self.fetch is None:
            from kairos.config.fetch import fetch_text

            self.fetch = fetch_text
        try:
            text = self.fetch_with_retries(url)
        except KairosError as exc:
            # Upstream installs go on when config_url is unreachable: warn, never fail.
            self.warnings.append(f"{where}: {exc}")
            self.skip(url, f"unreachable: {exc.message}")
            return
        if not has_header(text):
            self.skip(url, "no #cloud-config header in its first 10 lines")
            self.warnings.append(f"{where}: the fetched config has no #cloud-config header")
            return
        fetched = self.parse(text, url)
        if fetched is not None:
            self.add(fetched, depth=depth + 1, seen=seen | {url})

    def fetch_with_retries(self, url: str) -> str:
        assert self.fetch is not None
        attempt = 1
        while True:
            try:
                return self.fetch(url)
            except KairosError as exc:
                if attempt >= URL_ATTEMPTS or not getattr(exc, "transient", False):
                    raise
                log.debug("fetching %s failed (%s); trying again", url, exc)
            attempt += 1
            time.sleep(URL_RETRY_DELAY)

    def render_url(self, url: str, source: str) -> str | None:
        from urllib.parse import quote_plus

        from kairos.config.template import render

        # As upstream: every string the URL template can read is query-escaped first.
        def escape(value: Any) -> Any:
            if isinstance(value, str):
                return quote_plus(value)
            if isinstance(value, Mapping):
                return {k: escape(v) for k, v in value.items()}
            if isinstance(value, list):
                return [escape(v) for v in value]
            return value

        try:
            return render(url, escape(self.values()), source)
        except ConfigError as exc:
            self.problem(source, exc)
            return None


def _walk(directory: Path) -> list[Path]:
    """Files under `directory`, depth first in lexical order, as Go's filepath.Walk lists them.

    Symlinked directories are not entered (Walk does not follow them); symlinked files count.
    """
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return []
    out: list[Path] = []
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        if is_dir:
            out.extend(_walk(Path(entry.path)))
        else:
            out.append(Path(entry.path))
    return out


def read_cmdline(ctx: Context) -> str:
    """The node's kernel command line; empty when there is none (containers, offline roots)."""
    try:
        return ctx.path("/proc/cmdline").read_text(errors="replace")
    except OSError:
        return ""


def collect(
    ctx: Context,
    *,
    cmdline: str | None = None,
    dirs: Sequence[str] = CONFIG_DIRS,
    extra_files: Sequence[Path] = (),
    use_cmdline: bool = True,
    fetch: Callable[[str], str] | None = None,
) -> Collected:
    """Collect and merge every config source of the node at `ctx.root`.

    Broken sources (bad YAML, template errors) are left out with a warning that names
    `file:line`; with `ctx.strict` they raise one ConfigError listing all of them.
    `fetch` replaces the URL fetcher (tests); unreachable URLs are only warnings.
    """
    c = _Collector(ctx, fetch)
    for directory in dirs:
        for path in _walk(ctx.path(directory)):
            c.add_file(path)
    for path in extra_files:
        c.add_file(Path(path), explicit=True)
    if use_cmdline:
        text = read_cmdline(ctx) if cmdline is None else cmdline
        if text.strip():
            from kairos.config.cmdline import parse

            data = parse(text)
            if data:
                c.add(Document(data, CMDLINE_SOURCE, {}), depth=0, seen=frozenset())
    if c.problems and ctx.strict:
        raise ConfigError(
            f"{len(c.problems)} config source(s) cannot be used.",
            hint="fix them, or run without --strict-validation to skip them with a warning",
            problems=tuple(c.problems),
        )
    return Collected(
        documents=tuple(c.documents),
        merged=merge_all([d.data for d in c.documents]),
        skipped=tuple(c.skipped),
        warnings=tuple(c.warnings),
    )
