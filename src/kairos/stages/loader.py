"""Where stage files come from, and reading them: paths, URLs and the kernel command line.

yip semantics: every `.yaml`/`.yml` file under the stage paths runs, header or not, in
lexical order of the walk; each is rendered as a template, parsed once, and its steps for
the three sub-stages (`X.before`, `X`, `X.after`) are taken from that one parse.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import shlex
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kairos.context import Context
from kairos.errors import ConfigError, KairosError
from kairos.stages.model import StageFile
from kairos.stages.paths import read_text, rooted

log = logging.getLogger("kairos.stages")

DEFAULT_PATHS = ("/system/oem", "/oem", "/usr/local/cloud-config")
MAX_FILE_BYTES = 1 << 20  # upstream skips bigger files too
_SUFFIXES = (".yaml", ".yml")
_INDEX = re.compile(r"^([^\[\]]+)((?:\[\d+\])*)$")


def stage_paths(extra: Sequence[str] = (), override: bool = False) -> tuple[str, ...]:
    """Upstream's list, with `--cloud-init-paths` appended (or alone with the override flag)."""
    return tuple(extra) if override else (*DEFAULT_PATHS, *extra)


def _renderer(ctx: Context) -> Callable[[str, str], str]:
    """Go-template rendering as yip does before parsing; plain text if rendering is absent."""
    try:
        from kairos.config import template  # type: ignore[attr-defined, unused-ignore]
    except ImportError:
        log.debug("kairos.config.template not available; stage files are not rendered")
        return lambda text, source: text
    values: dict[str, Any] | None = None

    def render(text: str, source: str) -> str:
        nonlocal values
        if "{{" not in text:
            return text
        if values is None:
            values = template.node_values(ctx)
        return str(template.render(text, values, source))

    return render


def parse_text(text: str, source: str, render: Callable[[str, str], str]) -> StageFile:
    """Render, load and parse one source; failures become the file's problems."""
    from kairos.config.yamlload import load
    from kairos.stages.parse import parse_document

    try:
        doc = load(render(text, source), source)
    except ConfigError as exc:
        return StageFile(source=source, name=source, problems=exc.problems or (exc.message,))
    except KairosError as exc:
        return StageFile(source=source, name=source, problems=(f"{source}: {exc}",))
    return parse_document(doc, text)


def _walk(root: Path) -> list[Path]:
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        out.extend(Path(dirpath) / f for f in sorted(filenames) if f.endswith(_SUFFIXES))
    return sorted(out, key=lambda p: p.relative_to(root).parts)


def _node_path(ctx: Context, host: Path) -> str:
    return "/" + str(host.relative_to(ctx.root)) if not ctx.is_host_root else str(host)


def _load_file(ctx: Context, host: Path, render: Callable[[str, str], str]) -> StageFile | None:
    source = _node_path(ctx, host)
    try:
        if host.stat().st_size > MAX_FILE_BYTES:
            log.warning("%s: larger than 1 MiB, skipped.", source)
            return None
        text = host.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return StageFile(source=source, name=source, problems=(f"{source}: unreadable: {exc}",))
    return parse_text(text, source, render)


def _load_url(url: str, render: Callable[[str, str], str]) -> StageFile:
    from kairos.config.fetch import fetch_text

    try:
        text = fetch_text(url)
    except KairosError as exc:
        return StageFile(source=url, name=url, problems=(f"{url}: {exc.message}",))
    return parse_text(text, url, render)


def _set_path(tree: dict[str, Any], key: str, value: str) -> None:
    """`stages.boot[0].commands[1]` = value into nested dicts and lists."""
    node: Any = tree
    parts = key.split(".")
    steps: list[str | int] = []
    for part in parts:
        m = _INDEX.match(part)
        if not m:
            raise ValueError(key)
        steps.append(m.group(1))
        steps.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    for here, nxt in itertools.pairwise(steps):
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(here, int):
            while len(node) <= here:
                node.append(None)
            if node[here] is None:
                node[here] = empty
            node = node[here]
        else:
            node = node.setdefault(here, empty)
    last = steps[-1]
    if isinstance(last, int):
        while len(node) <= last:
            node.append(None)
        node[last] = value
    else:
        node[last] = value


def cmdline_config(text: str) -> tuple[dict[str, Any], list[str]]:
    """The stages written on the kernel command line, and any config URLs found there."""
    tree: dict[str, Any] = {}
    urls: list[str] = []
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()
    for word in words:
        key, sep, value = word.partition("=")
        if not sep:
            continue
        if key in ("config_url", "kairos.config_url"):
            urls.append(value)
        elif key.startswith("stages."):
            try:
                _set_path(tree, key, value)
            except (ValueError, TypeError, AttributeError):
                log.warning("kernel command line: cannot read %r, ignored.", word)
    return tree, urls


def _cmdline_file(ctx: Context, render: Callable[[str, str], str]) -> list[StageFile]:
    from kairos.config.yamlload import Document
    from kairos.stages.parse import parse_document

    text = read_text(ctx, "/proc/cmdline")
    if not text.strip():
        return []
    tree, urls = cmdline_config(text)
    out = [parse_document(Document(tree, "cmdline", {}))] if tree else []
    for url in urls:
        if urllib.parse.urlsplit(url).scheme in ("http", "https", "file"):
            out.append(_load_url(url, render))
    return out


def load_sources(ctx: Context, paths: Sequence[str], cmdline: bool = True) -> tuple[StageFile, ...]:
    """Every stage file, in run order: the paths (dirs walked), URLs, then the cmdline."""
    render = _renderer(ctx)
    out: list[StageFile] = []
    for location in paths:
        if urllib.parse.urlsplit(location).scheme in ("http", "https"):
            out.append(_load_url(location, render))
            continue
        host = rooted(ctx, location)
        if host.is_dir():
            for f in _walk(host):
                loaded = _load_file(ctx, f, render)
                if loaded is not None:
                    out.append(loaded)
        elif host.is_file():
            loaded = _load_file(ctx, host, render)
            if loaded is not None:
                out.append(loaded)
        else:
            log.debug("%s: does not exist, skipped", location)
    if cmdline:
        out.extend(_cmdline_file(ctx, render))
    return tuple(out)


def stage_names(files: Sequence[StageFile]) -> list[str]:
    """Every stage some file defines (for `--analyze` of everything, and tests)."""
    names: dict[str, None] = {}
    for f in files:
        for name in f.stages:
            names.setdefault(name, None)
    return list(names)
