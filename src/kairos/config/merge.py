"""Deep merge of cloud-configs, with upstream's rules (`sdk/collector` DeepMerge).

Later sources win: maps merge key by key, lists whose first item is a map are
concatenated (so every `stages` definition runs), other lists are unioned in order,
and scalars are replaced. `merge` is pure: it copies what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _copy(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    # Type first: in Python `1 == True == 1.0`, but `1` and `true` are different YAML values.
    return type(a) is type(b) and bool(a == b)


def _union_into(base: list[Any], overlay: list[Any]) -> None:
    # Hashable items (nearly all: strings, numbers) are found through a set, so a long
    # list merged from many files stays linear; the rest are compared one by one.
    seen = {(type(v), v) for v in base if v is None or isinstance(v, str | int | float)}
    for item in overlay:
        if item is None or isinstance(item, str | int | float):
            key = (type(item), item)
            if key in seen:
                continue
            seen.add(key)
        elif any(_same(item, have) for have in base):
            continue
        base.append(item)


def _merge_owned(base: Any, overlay: Any) -> Any:
    """Merge two values this module owns (fresh copies): reuses and mutates them."""
    if base is None:
        return overlay
    if overlay is None:
        return _empty_like(base)
    if isinstance(base, dict) and isinstance(overlay, dict):
        for key, value in overlay.items():
            base[key] = _merge_owned(base[key], value) if key in base else value
        return base
    if isinstance(base, list) and isinstance(overlay, list):
        if not base:
            return overlay
        # Upstream decides by the first item of the earlier list: maps (users, stage
        # steps) are concatenated, anything else is a union that keeps the first order.
        if isinstance(base[0], dict):
            base.extend(overlay)
        else:
            _union_into(base, overlay)
        return base
    return overlay


def _empty_like(value: Any) -> Any:
    # Upstream turns an explicit null into the zero value of what it overrides:
    # `users:` with no value clears the list rather than keeping the earlier one.
    if isinstance(value, dict):
        return {}
    if isinstance(value, list):
        return []
    return None


def merge(base: Any, overlay: Any) -> Any:
    """Merge `overlay` (the later source) onto `base`; neither input is modified.

    Values of different kinds (a map over a list, a list over a string) are replaced by the
    later one; upstream refuses to merge those at all, which would drop the whole source.
    """
    return _merge_owned(_copy(base), _copy(overlay))


def merge_all(configs: Sequence[Any]) -> dict[str, Any]:
    """Merge a sequence of top-level configs in order; non-map documents are ignored."""
    out: dict[str, Any] = {}
    for config in configs:
        if isinstance(config, Mapping):
            out = _merge_owned(out, _copy(config))
    return out
