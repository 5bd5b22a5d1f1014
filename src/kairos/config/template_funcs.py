"""Values and functions of the cloud-config template language (Go text/template + sprig).

Each function behaves as its Go or sprig namesake does on the argument types configs
use; `go_str` prints values the way Go's `%v` does, so rendered text matches upstream.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any


class TemplateFuncError(Exception):
    """A template function refused its arguments."""


class _Missing:
    """A map key that is not there: prints as Go's `<no value>`."""

    def __str__(self) -> str:
        return "<no value>"


MISSING = _Missing()


def _go_float(value: float) -> str:
    if value != value or value in (float("inf"), float("-inf")):
        return {"nan": "NaN", "inf": "+Inf", "-inf": "-Inf"}[repr(value)]
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


def go_str(value: Any) -> str:
    """Print a value as Go's text/template does (`%v`)."""
    if isinstance(value, str):
        return value
    if value is None or value is MISSING:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return _go_float(value)
    if isinstance(value, Mapping):
        inner = " ".join(f"{go_str(k)}:{go_str(value[k])}" for k in sorted(value, key=str))
        return f"map[{inner}]"
    if isinstance(value, list | tuple):
        return "[" + " ".join(go_str(v) for v in value) + "]"
    return str(value)


def _s(value: Any) -> str:
    # Sprig's string arguments: a missing value is the empty string, not "<no value>".
    return "" if value is None or value is MISSING else go_str(value)


def truthy(value: Any) -> bool:
    """Go's notion of true: not false, 0, nil, or an empty string, list or map."""
    if value is None or value is MISSING:
        return False
    if isinstance(value, bool | int | float | str | list | tuple | Mapping):
        return bool(value)
    return True


def _int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    try:
        return int(_s(value).strip() or 0)
    except ValueError:
        return 0  # sprig's toInt64 turns anything unparsable into 0


def _go_quote(text: str) -> str:
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\a\b\f\n\r\t\v":
            out.append("\\" + "abfnrtv"["\a\b\f\n\r\t\v".index(ch)])
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif not ch.isprintable():
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%])")


# No config needs more: a bound keeps `repeat 99999999` or `%99999999d` from eating memory.
MAX_TEXT = 1 << 20


def _size(n: int) -> int:
    if n > MAX_TEXT:
        raise TemplateFuncError(f"result larger than {MAX_TEXT} bytes")
    return n


def _repeat(count: Any, text: Any) -> str:
    s, n = _s(text), max(_int(count), 0)
    _size(n * len(s))
    return s * n


def _printf(fmt: str, *args: Any) -> str:
    queue = list(args)

    def one(m: re.Match[str]) -> str:
        flags, width, prec, verb = m.groups()
        _size(int(width or 0) + int(prec or 0))
        if verb == "%":
            return "%"
        if not queue:
            return f"%!{verb}(MISSING)"
        arg = queue.pop(0)
        spec = flags + (width or "") + (f".{prec}" if prec else "")
        if verb in "dxXob" and isinstance(arg, int | float) and not isinstance(arg, bool):
            return format(int(arg), spec + verb)
        if verb in "feEgG" and isinstance(arg, int | float) and not isinstance(arg, bool):
            return format(float(arg), spec + verb)
        text = _go_quote(_s(arg)) if verb == "q" else go_str(arg)
        if verb == "T":
            text = type(arg).__name__
        return format(text, (">" if "-" not in flags else "<") + (width or ""))

    return _VERB.sub(one, fmt)


def _sprint(*args: Any) -> str:
    # Go's Sprint puts a space between operands when neither side is a string.
    out = ""
    for i, arg in enumerate(args):
        if i and not isinstance(arg, str) and not isinstance(args[i - 1], str):
            out += " "
        out += go_str(arg)
    return out


def _trunc(count: Any, text: Any) -> str:
    s, c = _s(text), _int(count)
    if c < 0 and len(s) + c > 0:
        return s[len(s) + c :]
    if c >= 0 and len(s) > c:
        return s[:c]
    return s


def _substr(start: Any, end: Any, text: Any) -> str:
    s, a, b = _s(text), _int(start), _int(end)
    if a < 0:
        return s[:b]
    if b < 0 or b > len(s):
        return s[a:]
    return s[a:b]


def _indent(spaces: Any, text: Any) -> str:
    pad = " " * _size(_int(spaces))
    return pad + _s(text).replace("\n", "\n" + pad)


def _index(value: Any, *keys: Any) -> Any:
    for key in keys:
        if isinstance(value, Mapping):
            value = value.get(key, MISSING)
        elif isinstance(value, list | tuple | str):
            i = _int(key)
            if not 0 <= i < len(value):
                raise TemplateFuncError(f"index out of range: {i}")
            value = value[i]
        else:
            raise TemplateFuncError(f"can't index item of type {type(value).__name__}")
    return value


def _compare(a: Any, b: Any) -> int:
    if isinstance(a, int | float) and isinstance(b, int | float):
        return (a > b) - (a < b)
    if isinstance(a, str) and isinstance(b, str):
        return (a > b) - (a < b)
    raise TemplateFuncError("incompatible types for comparison")


def _and(first: Any, *rest: Any) -> Any:
    for arg in (first, *rest):
        if not truthy(arg):
            return arg
    return (first, *rest)[-1]


def _or(first: Any, *rest: Any) -> Any:
    for arg in (first, *rest):
        if truthy(arg):
            return arg
    return (first, *rest)[-1]


def _required(message: Any, value: Any) -> Any:
    if value is None or value is MISSING or value == "":
        raise TemplateFuncError(_s(message))
    return value


def _random(n: Any, alphabet: str) -> str:
    return "".join(alphabet[b % len(alphabet)] for b in os.urandom(max(_int(n), 0)))


def _b64dec(text: Any) -> str:
    import base64
    import binascii

    try:
        return base64.b64decode(_s(text), validate=True).decode(errors="replace")
    except (binascii.Error, ValueError) as exc:
        raise TemplateFuncError(str(exc)) from None


def _b64enc(text: Any) -> str:
    import base64

    return base64.b64encode(_s(text).encode()).decode()


def _sha256sum(text: Any) -> str:
    import hashlib

    return hashlib.sha256(_s(text).encode()).hexdigest()


def _to_json(value: Any) -> str:
    import json

    return json.dumps(None if value is MISSING else value, separators=(",", ":"))


def _urlquery(*args: Any) -> str:
    import urllib.parse

    return urllib.parse.quote_plus(_sprint(*args))


def _uuidv4() -> str:
    import uuid

    return str(uuid.uuid4())


def _regex(pattern: Any) -> re.Pattern[str]:
    try:
        return re.compile(_s(pattern))
    except re.error as exc:
        raise TemplateFuncError(f"bad regular expression: {exc}") from None


def _regex_replace_all(pattern: Any, text: Any, repl: Any) -> str:
    # Go writes groups as $1 or ${1}; Python as \g<1>.
    py_repl = re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", _s(repl).replace("\\", "\\\\"))
    return _regex(pattern).sub(py_repl, _s(text))


def _dict(*pairs: Any) -> dict[str, Any]:
    return {
        _s(pairs[i]): (pairs[i + 1] if i + 1 < len(pairs) else "") for i in range(0, len(pairs), 2)
    }


def _nonzero(value: Any) -> int:
    n = _int(value)
    if n == 0:
        raise TemplateFuncError("division by zero")
    return n


_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"

# Go's built-in template functions plus the sprig functions real configs use.
FUNCTIONS: dict[str, Callable[..., Any]] = {
    # Go text/template built-ins
    "and": _and,
    "or": _or,
    "not": lambda v: not truthy(v),
    "len": lambda v: len(v) if isinstance(v, str | list | tuple | Mapping) else 0,
    "index": _index,
    "print": _sprint,
    "println": lambda *a: " ".join(go_str(x) for x in a) + "\n",
    "printf": lambda fmt, *a: _printf(_s(fmt), *a),
    "urlquery": _urlquery,
    "eq": lambda a, *bs: any(_compare(a, b) == 0 if type(a) is not type(b) else a == b for b in bs),
    "ne": lambda a, b: a != b,
    "lt": lambda a, b: _compare(a, b) < 0,
    "le": lambda a, b: _compare(a, b) <= 0,
    "gt": lambda a, b: _compare(a, b) > 0,
    "ge": lambda a, b: _compare(a, b) >= 0,
    # sprig strings
    "trunc": _trunc,
    "substr": _substr,
    "lower": lambda s: _s(s).lower(),
    "upper": lambda s: _s(s).upper(),
    "title": lambda s: re.sub(r"(^|\s)(\S)", lambda m: m.group(1) + m.group(2).upper(), _s(s)),
    "replace": lambda old, new, s: _s(s).replace(_s(old), _s(new)),
    "trim": lambda s: _s(s).strip(),
    "trimAll": lambda cut, s: _s(s).strip(_s(cut)),
    "trimPrefix": lambda p, s: _s(s).removeprefix(_s(p)),
    "trimSuffix": lambda p, s: _s(s).removesuffix(_s(p)),
    "nospace": lambda s: re.sub(r"\s+", "", _s(s)),
    "contains": lambda sub, s: _s(sub) in _s(s),
    "hasPrefix": lambda p, s: _s(s).startswith(_s(p)),
    "hasSuffix": lambda p, s: _s(s).endswith(_s(p)),
    "repeat": _repeat,
    "quote": lambda *a: " ".join(_go_quote(go_str(x)) for x in a if x is not None),
    "squote": lambda *a: " ".join(f"'{go_str(x)}'" for x in a if x is not None),
    "cat": lambda *a: " ".join(go_str(x) for x in a if x is not None),
    "indent": _indent,
    "nindent": lambda n, s: "\n" + _indent(n, s),
    "join": lambda sep, v: _s(sep).join(go_str(x) for x in (v if isinstance(v, list) else [v])),
    "splitList": lambda sep, s: _s(s).split(_s(sep)),
    "toString": _s,
    "b64enc": _b64enc,
    "b64dec": _b64dec,
    "sha256sum": _sha256sum,
    "toJson": _to_json,
    "regexMatch": lambda rx, s: _regex(rx).search(_s(s)) is not None,
    "regexReplaceAll": _regex_replace_all,
    # sprig defaults and flow
    "default": lambda d, *given: given[0] if given and truthy(given[0]) else d,
    "empty": lambda v: not truthy(v),
    "coalesce": lambda *a: next((x for x in a if truthy(x)), None),
    "ternary": lambda a, b, cond: a if truthy(cond) else b,
    "required": _required,
    # sprig numbers, lists, maps
    "int": _int,
    "atoi": _int,
    "add": lambda *a: sum(_int(x) for x in a),
    "add1": lambda a: _int(a) + 1,
    "sub": lambda a, b: _int(a) - _int(b),
    "mul": lambda *a: math.prod(_int(x) for x in a),
    "div": lambda a, b: _int(a) // _nonzero(b),
    "mod": lambda a, b: _int(a) % _nonzero(b),
    "max": lambda *a: max(_int(x) for x in a),
    "min": lambda *a: min(_int(x) for x in a),
    "list": lambda *a: list(a),
    "dict": _dict,
    "first": lambda v: v[0] if isinstance(v, list | tuple) and v else None,
    "last": lambda v: v[-1] if isinstance(v, list | tuple) and v else None,
    # sprig random and environment
    "uuidv4": _uuidv4,
    "randAlphaNum": lambda n: _random(n, _LETTERS + "0123456789"),
    "randAlpha": lambda n: _random(n, _LETTERS),
    "randNumeric": lambda n: _random(n, "0123456789"),
    "env": lambda name: os.environ.get(_s(name), ""),
}
