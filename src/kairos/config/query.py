"""yq-style lookups in a merged config, for `kairos-agent config get KEY`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from kairos.errors import KairosError

# A key segment, then any number of [index] parts; quotes allow dotted keys: ."a.b".
_PART = re.compile(r'\.?(?:"(?P<quoted>[^"]*)"|(?P<name>[^.\[\]"]+))|\[(?P<index>-?\d+)\]')


def parse_query(query: str) -> tuple[str | int, ...]:
    """`install.device`, `.users[0].name`, `stages.boot[0]` -> a path tuple."""
    text = query.strip()
    if text in ("", "."):
        return ()
    path: list[str | int] = []
    pos = 0
    while pos < len(text):
        m = _PART.match(text, pos)
        if m is None or m.end() == pos:
            raise KairosError(
                f"{query!r}: not a key path (at {text[pos:]!r}).",
                hint="write it like install.device or users[0].name",
            )
        if m.group("index") is not None:
            path.append(int(m.group("index")))
        else:
            path.append(m.group("quoted") if m.group("quoted") is not None else m.group("name"))
        pos = m.end()
    return tuple(path)


def _shown(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "."


def get(data: Any, query: str) -> Any:
    """The value at `query` in `data`. Raises KairosError naming the first missing part."""
    value = data
    path = parse_query(query)
    for i, part in enumerate(path):
        here = _shown(path[: i + 1])
        if isinstance(part, int):
            if not isinstance(value, Sequence) or isinstance(value, str):
                raise KairosError(
                    f"{here}: {_shown(path[:i])} is not a list.", hint="drop the [index]"
                )
            if not -len(value) <= part < len(value):
                raise KairosError(
                    f"{here}: no such item (the list has {len(value)}).",
                    hint="list indices start at 0",
                )
            value = value[part]
        else:
            if not isinstance(value, Mapping):
                raise KairosError(
                    f"{here}: {_shown(path[:i])} is not a map.",
                    hint="check the key path against 'kairos-agent config'",
                )
            if part not in value:
                keys = ", ".join(sorted(str(k) for k in value)[:20])
                raise KairosError(
                    f"{here}: key not set in the merged config.",
                    hint=f"keys here: {keys}" if keys else "this map is empty",
                )
            value = value[part]
    return value
