"""Cloud-config from the kernel command line, as upstream reads it (`sdk/machine/bootcmdline.go`).

Two families of words. Kairos-owned ones always count: `kairos.config=KEY=VALUE`,
`kairos.config_url=URL` and the legacy `cos.setup=` (a URL, or KEY=VALUE when it has
an `=`). Every other `KEY=VALUE` word is read as a dotted path (`install.device=/dev/vda`,
`users[0].name=kairos`) and kept only when its first part is a known top-level key, so
`console=ttyS0` or `rd.cos.disable` never leak into the config. Kairos-owned values win.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from typing import Any

from kairos.config.merge import merge

_BOOT_FLAG_PREFIXES = ("kairos.", "cos.", "rd.")
_SEGMENT = re.compile(r"([^.\[\]]+)((?:\[\d+\])*)")
_INDEX = re.compile(r"\[(\d+)\]")
# Refuse absurd list indices so a typo like users[99999999].name cannot eat memory.
MAX_INDEX = 1024


def split_words(text: str) -> list[str]:
    """Split the command line as upstream does (shell-like quoting: `k="a b"` is one word)."""
    try:
        return shlex.split(text)
    except ValueError:
        # An unbalanced quote: the kernel still boots, so fall back to plain words.
        return text.split()


def parse_key(key: str) -> tuple[str | int, ...] | None:
    """`a.b[0].c` (or upstream's `a.b.0.c`) -> ("a", "b", 0, "c"); None when malformed."""
    if not key or key.startswith(".") or key.endswith(".") or ".." in key:
        return None
    path: list[str | int] = []
    for part in key.split("."):
        m = _SEGMENT.fullmatch(part)
        if m is None:
            return None
        name, indices = m.groups()
        path.append(int(name) if name.isdigit() and path else name)
        path.extend(int(i) for i in _INDEX.findall(indices))
    if any(isinstance(p, int) and p > MAX_INDEX for p in path):
        return None
    return tuple(path)


def _value(raw: str | None) -> Any:
    # A bare word (`install.auto`) means true, as upstream. Upstream keeps kairos.config values
    # as strings, which then fail to decode into booleans; true/false become booleans here.
    if raw is None:
        return True
    value = raw.strip('"')
    return {"true": True, "false": False}.get(value, value)


def _set(node: Any, path: tuple[str | int, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, int):
        items = list(node) if isinstance(node, list) else []
        items.extend([None] * (head + 1 - len(items)))
        items[head] = _set(items[head], rest, value)
        return items
    out = dict(node) if isinstance(node, dict) else {}
    out[head] = _set(out.get(head), rest, value)
    return out


def _apply(root: dict[str, Any], payload: str) -> None:
    key, sep, raw = payload.partition("=")
    path = parse_key(key.strip('"'))
    if path is None:
        return
    updated = _set(root, path, _value(raw if sep else None))
    root.clear()
    root.update(updated)


def known_top_level_keys() -> frozenset[str]:
    # Imported here: the schema is only needed when the command line has generic words.
    from kairos.config.schema import KNOWN_TOP_LEVEL_KEYS

    return KNOWN_TOP_LEVEL_KEYS


def parse(text: str, known: Iterable[str] | None = None) -> dict[str, Any]:
    """The config the command line `text` carries; `{}` when it carries none.

    `known` overrides the known top-level keys (default: the schema's).
    """
    owned: dict[str, Any] = {}
    generic: dict[str, Any] = {}
    known_keys: frozenset[str] | None = frozenset(known) if known is not None else None
    for word in split_words(text):
        if word.startswith("kairos.config_url="):
            url = word.removeprefix("kairos.config_url=").strip('"')
            if url:
                owned["config_url"] = url
        elif word.startswith("kairos.config="):
            payload = word.removeprefix("kairos.config=")
            if payload:
                _apply(owned, payload)
        elif word.startswith("cos.setup="):
            payload = word.removeprefix("cos.setup=")
            if "=" in payload:
                _apply(owned, payload)
            elif payload:
                owned["config_url"] = payload.strip('"')
        elif word.startswith(_BOOT_FLAG_PREFIXES):
            # `kairos.reset`, `kairos.ram`...: boot switches read elsewhere, not config; the
            # legacy `kairos:` config block would otherwise swallow them.
            continue
        else:
            key = word.partition("=")[0].strip('"')
            top = key.split(".", 1)[0].split("[", 1)[0]
            if not top or ("." not in key and "=" not in word and top not in ("debug", "strict")):
                # A bare flag (`quiet`, `splash`) is only taken for boolean top-level keys;
                # anything else would turn every kernel flag into `key: true`.
                continue
            if known_keys is None:
                known_keys = known_top_level_keys()
            if top in known_keys:
                _apply(generic, word)
    if not owned:
        return generic
    return dict(merge(generic, owned))
