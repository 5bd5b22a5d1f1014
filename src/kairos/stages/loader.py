"""Where stage files come from, and reading them: paths, URLs and the kernel command line.

yip semantics: every `.yaml`/`.yml` file under the stage paths runs, header or not, in
lexical order of the walk; each is rendered as a template, parsed once, and its steps for
the three sub-stages (`X.before`, `X`, `X.after`) are taken from that one parse.
"""

from __future__ import annotations

import logging
import os
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


def stage_paths(extra: Sequence[str] = (), override: bool = False) -> tuple[str, ...]:
    """Upstream's list, with `--cloud-init-paths` appended (or alone with the override flag)."""
    return tuple(extra) if override else (*DEFAULT_PATHS, *extra)


def _renderer(ctx: Context) -> Callable[[str, str], str]:
    """Go-template rendering as yip does before parsing, with a fresh `.Random` per file."""
    from kairos.config import template

    values: dict[str, Any] | None = None

    def render(text: str, source: str) -> str:
        nonlocal values
        if "{{" not in text:
            return text
        if values is None:
            values = template.node_values(ctx)
        return template.render(text, {**values, "Random": template.random_string()}, source)

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


def cmdline_config(text: str) -> tuple[dict[str, Any], list[str]]:
    """The stages written on the kernel command line, and the config URL found there."""
    from kairos.config.cmdline import parse

    config = parse(text)
    stages = config.get("stages")
    url = config.get("config_url")
    return (
        {"stages": stages} if isinstance(stages, dict) and stages else {},
        [url] if isinstance(url, str) and url else [],
    )


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
