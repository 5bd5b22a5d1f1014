"""A small, safe renderer for the Go-template subset that real cloud-configs use.

Upstream renders configs with Go's text/template plus sprig, with `.MachineID`, `.Random`
and `.Values` (sysinfo) as data. This is our own interpreter of that subset: actions,
pipelines, literals, variables, `if`/`else`/`end`, `range`, `with`, and the sprig
functions configs actually call (see `FUNCTIONS`). Nothing is ever evaluated as Python.
Rendering happens per file, before YAML parsing, so errors name `file:line`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kairos.config.template_funcs import (
    FUNCTIONS,
    MAX_TEXT,
    MISSING,
    TemplateFuncError,
    go_str,
    truthy,
)
from kairos.errors import ConfigError

if TYPE_CHECKING:
    from kairos.context import Context

# `{{- ` and ` -}}` trim the whitespace around an action; the dash needs a space after
# (or before) it, otherwise `{{-3}}` is the number -3, as in Go.
_ACTION = re.compile(r"\{\{(-[ \t\r\n])?(.*?)([ \t\r\n]-)?\}\}", re.S)
_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<str>"(?:[^"\\\n]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?(?:0[xX][0-9a-fA-F]+|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?))
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<var>\$[A-Za-z0-9_]*)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<decl>:=|=)
  | (?P<punct>[|(),])
    """,
    re.X,
)
_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}
_KEYWORDS = (
    "if",
    "else",
    "end",
    "range",
    "with",
    "define",
    "template",
    "block",
    "break",
    "continue",
)


class _Syntax(Exception):
    """A template problem; turned into a ConfigError naming file and line."""


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str


# ---------------------------------------------------------------- parse tree


@dataclass(frozen=True)
class _Lit:
    value: Any


@dataclass(frozen=True)
class _Field:
    names: tuple[str, ...]  # () is `.`


@dataclass(frozen=True)
class _Var:
    name: str  # "$" or "$x"
    names: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Func:
    name: str


@dataclass(frozen=True)
class _Sub:
    pipe: _Pipe
    names: tuple[str, ...] = ()


_Operand = _Lit | _Field | _Var | _Func | _Sub


@dataclass(frozen=True)
class _Pipe:
    commands: tuple[tuple[_Operand, ...], ...]
    decl: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Action:
    pipe: _Pipe
    line: int


@dataclass
class _Block:
    kind: str  # if, range, with
    pipe: _Pipe
    line: int
    body: list[Any] = field(default_factory=list)
    # `else if` chains are stored as a nested _Block in else_body, as Go does.
    else_body: list[Any] | None = None


# ---------------------------------------------------------------- lexing and parsing


def _unquote(text: str) -> str:
    out: list[str] = []
    i = 1
    while i < len(text) - 1:
        ch = text[i]
        if ch == "\\":
            nxt = text[i + 1]
            if nxt in _ESCAPES:
                out.append(_ESCAPES[nxt])
                i += 2
                continue
            if nxt in "xuU":
                width = {"x": 2, "u": 4, "U": 8}[nxt]
                digits = text[i + 2 : i + 2 + width]
                try:
                    out.append(chr(int(digits, 16)))
                except ValueError:
                    raise _Syntax(f"bad escape \\{nxt}{digits} in string") from None
                i += 2 + width
                continue
            if text[i + 1 : i + 4].isdigit() and all(c in "01234567" for c in text[i + 1 : i + 4]):
                out.append(chr(int(text[i + 1 : i + 4], 8)))  # Go's \NNN octal byte
                i += 4
                continue
            raise _Syntax(f"unknown escape \\{nxt} in string")
        out.append(ch)
        i += 1
    return "".join(out)


def _tokens(body: str) -> list[_Tok]:
    out: list[_Tok] = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None:
            raise _Syntax(f"unexpected {body[pos]!r} in action")
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append(_Tok(kind, m.group()))
        pos = m.end()
    return out


def _number(text: str) -> int | float:
    low = text.lower()
    if low.lstrip("-").startswith("0x"):
        return int(text, 16)
    if any(c in low for c in ".e"):
        return float(text)
    return int(text)


class _PipeParser:
    def __init__(self, toks: list[_Tok]) -> None:
        self.toks = toks
        self.i = 0

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def pipeline(self, allow_decl: bool, nested: bool = False) -> _Pipe:
        decl: tuple[str, ...] = ()
        if allow_decl:
            decl = self._declaration()
        commands: list[tuple[_Operand, ...]] = []
        while True:
            cmd = self._command()
            if not cmd:
                raise _Syntax("missing value in pipeline")
            commands.append(cmd)
            tok = self.peek()
            if tok is None or (nested and tok.text == ")"):
                break
            if tok.text == "|":
                self.take()
                continue
            raise _Syntax(f"unexpected {tok.text!r} in pipeline")
        return _Pipe(tuple(commands), decl)

    def _declaration(self) -> tuple[str, ...]:
        # `$x := pipeline` or, in range, `$i, $v := pipeline`
        names: list[str] = []
        j = self.i
        while j < len(self.toks) and self.toks[j].kind == "var":
            names.append(self.toks[j].text)
            j += 1
            if j < len(self.toks) and self.toks[j].text == ",":
                j += 1
                continue
            break
        if names and j < len(self.toks) and self.toks[j].kind == "decl":
            self.i = j + 1
            return tuple(names)
        return ()

    def _command(self) -> tuple[_Operand, ...]:
        ops: list[_Operand] = []
        while True:
            tok = self.peek()
            if tok is None or tok.text in ("|", ")"):
                return tuple(ops)
            ops.append(self._operand())

    def _operand(self) -> _Operand:
        tok = self.take()
        if tok.kind == "str":
            return _Lit(_unquote(tok.text))
        if tok.kind == "raw":
            return _Lit(tok.text[1:-1])
        if tok.kind == "num":
            return _Lit(_number(tok.text))
        if tok.kind == "field":
            return _Field(tuple(n for n in tok.text.split(".") if n))
        if tok.kind == "var":
            return _Var(tok.text, self._chain())
        if tok.kind == "ident":
            if tok.text in ("true", "false"):
                return _Lit(tok.text == "true")
            if tok.text == "nil":
                return _Lit(None)
            if tok.text in _KEYWORDS:
                raise _Syntax(f"unexpected {tok.text!r} inside an action")
            if tok.text not in FUNCTIONS:
                # Checked while parsing, as Go does, so a typo in an untaken branch is caught too.
                raise _Syntax(f'function "{tok.text}" not defined')
            return _Func(tok.text)
        if tok.text == "(":
            inner = self.pipeline(allow_decl=False, nested=True)
            close = self.peek()
            if close is None or close.text != ")":
                raise _Syntax("unclosed '(' in action")
            self.take()
            return _Sub(inner, self._chain())
        raise _Syntax(f"unexpected {tok.text!r} in action")

    def _chain(self) -> tuple[str, ...]:
        tok = self.peek()
        if tok is not None and tok.kind == "field" and tok.text != ".":
            self.take()
            return tuple(n for n in tok.text.split(".") if n)
        return ()


def _parse_pipe(body: str, allow_decl: bool) -> _Pipe:
    toks = _tokens(body)
    if not toks:
        raise _Syntax("empty action")
    parser = _PipeParser(toks)
    pipe = parser.pipeline(allow_decl)
    if parser.peek() is not None:
        raise _Syntax(f"unexpected {parser.take().text!r} in action")
    return pipe


def _first_word(text: str) -> tuple[str, str]:
    parts = text.split(None, 1)
    return (parts[0] if parts else "", parts[1] if len(parts) > 1 else "")


def _parse(text: str, source: str) -> list[Any]:
    root: list[Any] = []
    # (block, the list to return to at {{end}}, whether it is an `else if` link that
    # shares the outer block's {{end}})
    stack: list[tuple[_Block, list[Any], bool]] = []
    current = root
    pos = 0
    pending_trim = False

    def line_at(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    for m in _ACTION.finditer(text):
        chunk = text[pos : m.start()]
        if pending_trim:
            chunk = chunk.lstrip(" \t\r\n")
        if m.group(1):
            chunk = chunk.rstrip(" \t\r\n")
        if chunk:
            current.append(chunk)
        pos = m.end()
        pending_trim = bool(m.group(3))
        line = line_at(m.start())
        body = m.group(2).strip()
        try:
            if body.startswith("/*"):
                if not body.endswith("*/"):
                    raise _Syntax("unclosed comment")
                continue
            word, rest = _first_word(body)
            if word in ("if", "range", "with"):
                block = _Block(word, _parse_pipe(rest, allow_decl=True), line)
                stack.append((block, current, False))
                current.append(block)
                current = block.body
            elif word == "else":
                if not stack:
                    raise _Syntax("{{else}} without {{if}}, {{range}} or {{with}}")
                block = stack[-1][0]
                if block.else_body is not None:
                    raise _Syntax("second {{else}} in one block")
                block.else_body = []
                kind, cond = _first_word(rest)
                if kind in ("if", "with"):
                    chained = _Block(kind, _parse_pipe(cond, allow_decl=True), line)
                    block.else_body.append(chained)
                    stack.append((chained, block.else_body, True))
                    current = chained.body
                elif rest:
                    raise _Syntax(f"unexpected {rest!r} after else")
                else:
                    current = block.else_body
            elif word == "end":
                if rest:
                    raise _Syntax(f"unexpected {rest!r} after end")
                if not stack:
                    raise _Syntax("{{end}} without a block to close")
                while True:
                    _block, parent, linked = stack.pop()
                    if not linked:
                        current = parent
                        break
            elif word in ("define", "template", "block", "break", "continue"):
                raise _Syntax(f"{{{{{word}}}}} is not supported in cloud-configs")
            else:
                current.append(_Action(_parse_pipe(body, allow_decl=True), line))
        except _Syntax as exc:
            raise _error(source, line, str(exc)) from None
    tail = text[pos:]
    if pending_trim:
        tail = tail.lstrip(" \t\r\n")
    if "{{" in tail:
        line = line_at(pos + tail.index("{{"))
        raise _error(source, line, "unclosed action: '{{' without '}}'")
    if tail:
        current.append(tail)
    if stack:
        block = stack[-1][0]
        raise _error(source, block.line, f"{{{{{block.kind}}}}} without {{{{end}}}}")
    return root


# ---------------------------------------------------------------- evaluation


def _walk(value: Any, names: Sequence[str], shown: str) -> Any:
    for name in names:
        if isinstance(value, Mapping):
            value = value.get(name, MISSING)
        elif value is None or value is MISSING:
            raise _Syntax(f"nil value evaluating {shown}: no field {name!r}")
        else:
            raise _Syntax(f"can't evaluate field {name} in {type(value).__name__} ({shown})")
    return value


# Bounds on one render, so a hostile template cannot loop or grow without end.
MAX_OUTPUT = 4 * MAX_TEXT
MAX_ITERATIONS = 100_000


@dataclass
class _Scope:
    dot: Any
    vars: list[dict[str, Any]]
    size: int = 0
    iterations: int = 0

    def emit(self, out: list[str], text: str) -> None:
        self.size += len(text)
        if self.size > MAX_OUTPUT:
            raise _Syntax(f"output larger than {MAX_OUTPUT} bytes")
        out.append(text)

    def lookup(self, name: str) -> Any:
        for frame in reversed(self.vars):
            if name in frame:
                return frame[name]
        raise _Syntax(f"undefined variable {name}")


def _eval_operand(op: _Operand, scope: _Scope) -> Any:
    if isinstance(op, _Lit):
        return op.value
    if isinstance(op, _Field):
        return _walk(scope.dot, op.names, "." + ".".join(op.names))
    if isinstance(op, _Var):
        return _walk(scope.lookup(op.name), op.names, op.name + "." + ".".join(op.names))
    if isinstance(op, _Sub):
        return _walk(_eval_pipe(op.pipe, scope), op.names, "(...)." + ".".join(op.names))
    return _call(op.name, [], scope)


def _call(name: str, args: list[Any], scope: _Scope) -> Any:
    fn: Callable[..., Any] = FUNCTIONS[name]
    try:
        return fn(*args)
    except TemplateFuncError as exc:
        raise _Syntax(f"{name}: {exc}") from None
    except TypeError:
        raise _Syntax(f"wrong number or type of arguments for {name}") from None
    except (ValueError, IndexError, KeyError, ArithmeticError) as exc:
        # Go reports a bad argument as an execution error; so do we, never a traceback.
        raise _Syntax(f"{name}: bad argument: {exc}") from None


_NO_PIPE = object()


def _short_circuit(name: str, ops: Sequence[_Operand], scope: _Scope, piped: Any) -> Any:
    # Go stops at the first deciding argument, so `and .a .a.b` guards a missing `.a`.
    value: Any = None
    for op in ops:
        value = _eval_operand(op, scope)
        if truthy(value) == (name == "or"):
            return value
    if piped is not _NO_PIPE:
        value = piped
    return value


def _eval_pipe(pipe: _Pipe, scope: _Scope) -> Any:
    value: Any = None
    for idx, cmd in enumerate(pipe.commands):
        head = cmd[0]
        if isinstance(head, _Func) and head.name in ("and", "or") and len(cmd) > 1:
            value = _short_circuit(head.name, cmd[1:], scope, value if idx > 0 else _NO_PIPE)
        elif isinstance(head, _Func):
            args = [_eval_operand(op, scope) for op in cmd[1:]]
            if idx > 0:
                args.append(value)  # Go passes the piped value as the last argument
            value = _call(head.name, args, scope)
        else:
            if len(cmd) > 1 or idx > 0:
                raise _Syntax("can't give argument to non-function")
            value = _eval_operand(head, scope)
    if len(pipe.decl) == 1:
        scope.vars[-1][pipe.decl[0]] = value
    return value


def _items(value: Any) -> list[tuple[Any, Any]]:
    if value is None or value is MISSING:
        return []
    if isinstance(value, Mapping):
        return [(k, value[k]) for k in sorted(value, key=str)]  # Go ranges maps in key order
    if isinstance(value, list | tuple):
        return list(enumerate(value))
    if isinstance(value, int) and not isinstance(value, bool):
        if value > MAX_ITERATIONS:
            raise _Syntax(f"range over {value}: more than {MAX_ITERATIONS} iterations")
        return [(i, i) for i in range(value)]
    raise _Syntax(f"range can't iterate over {go_str(value)}")


def _exec(nodes: Sequence[Any], scope: _Scope, out: list[str], source: str) -> None:
    for node in nodes:
        if isinstance(node, str):
            scope.emit(out, node)
            continue
        try:
            if isinstance(node, _Action):
                value = _eval_pipe(node.pipe, scope)
                if not node.pipe.decl:
                    scope.emit(out, go_str(value))
            elif node.kind == "range":
                _exec_range(node, scope, out, source)
            else:
                scope.vars.append({})
                value = _eval_pipe(node.pipe, scope)
                if truthy(value):
                    saved = scope.dot
                    if node.kind == "with":
                        scope.dot = value
                    _exec(node.body, scope, out, source)
                    scope.dot = saved
                elif node.else_body is not None:
                    _exec(node.else_body, scope, out, source)
                scope.vars.pop()
        except _Syntax as exc:
            raise _error(source, node.line, str(exc)) from None


def _exec_range(node: _Block, scope: _Scope, out: list[str], source: str) -> None:
    decl = node.pipe.decl
    plain = _Pipe(node.pipe.commands)
    items = _items(_eval_pipe(plain, scope))
    if not items:
        if node.else_body is not None:
            _exec(node.else_body, scope, out, source)
        return
    saved = scope.dot
    for key, item in items:
        scope.iterations += 1
        if scope.iterations > MAX_ITERATIONS:
            raise _Syntax(f"more than {MAX_ITERATIONS} range iterations")
        frame: dict[str, Any] = {}
        if len(decl) == 1:
            frame[decl[0]] = item
        elif len(decl) == 2:
            frame[decl[0]], frame[decl[1]] = key, item
        scope.vars.append(frame)
        scope.dot = item
        _exec(node.body, scope, out, source)
        scope.vars.pop()
    scope.dot = saved


def _error(source: str, line: int, what: str) -> ConfigError:
    where = f"{source}:{line}"
    hint = None
    if "not defined" in what:
        hint = "supported functions: " + ", ".join(sorted(FUNCTIONS))
    return ConfigError(
        f"{where}: template: {what}.",
        hint=hint,
        problems=(f"{where}: template: {what}" + (f" ({hint})" if hint else ""),),
    )


def render(text: str, values: Mapping[str, Any], source: str = "<string>") -> str:
    """Render Go-template actions in `text` with `values` as `.`; text without `{{` is returned
    as is. Raises ConfigError naming `source:line` for syntax errors and unknown functions."""
    if "{{" not in text:
        return text
    tree = _parse(text, source)
    out: list[str] = []
    _exec(tree, _Scope(values, [{"$": values}]), out, source)
    return "".join(out)


# ---------------------------------------------------------------- node data


def _read(ctx: Context, path: str) -> str:
    try:
        return ctx.path(path).read_text(errors="replace").strip()
    except OSError:
        return ""


def _os_release(ctx: Context) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in _read(ctx, "/etc/os-release").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip().strip("\"'")
    return out


def _cpu(ctx: Context) -> dict[str, Any]:
    model = vendor = ""
    threads = 0
    cores: set[tuple[str, str]] = set()
    phys = core = ""
    for line in _read(ctx, "/proc/cpuinfo").splitlines():
        key, _, value = (p.strip() for p in line.partition(":"))
        if key == "processor":
            threads += 1
        elif key == "model name" and not model:
            model = value
        elif key == "vendor_id" and not vendor:
            vendor = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
    return {
        "vendor": vendor,
        "model": model,
        "threads": threads,
        "cores": len(cores) or threads,
        "cpus": len({p for p, _ in cores}) or (1 if threads else 0),
    }


def _network(ctx: Context) -> list[dict[str, Any]]:
    base = ctx.path("/sys/class/net")
    try:
        names = sorted(p.name for p in base.iterdir())
    except OSError:
        return []
    out: list[dict[str, Any]] = []
    for name in names:
        if name == "lo" or not (base / name / "device").exists():
            continue  # sysinfo lists physical interfaces only
        mac = _read(ctx, f"/sys/class/net/{name}/address")
        out.append({"name": name, "macaddress": mac})
    return out


def random_string(n: int = 32) -> str:
    """Letters only, 32 of them by default, like yip's `.Random`."""
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(letters[b % len(letters)] for b in os.urandom(n))


def sysinfo(ctx: Context) -> dict[str, Any]:
    """The `.Values` map: the subset of upstream's sysinfo JSON that configs read."""
    dmi = "/sys/class/dmi/id/"
    uname = os.uname()
    rel = _os_release(ctx)
    # Under --root the running kernel's name would be the build host's, not the node's.
    hostname = _read(ctx, "/etc/hostname") or (uname.nodename if ctx.is_host_root else "")
    return {
        "node": {"hostname": hostname, "machineid": _read(ctx, "/etc/machine-id")},
        "os": {
            "name": rel.get("PRETTY_NAME", ""),
            "vendor": rel.get("ID", ""),
            "version": rel.get("VERSION_ID", ""),
            "release": rel.get("VERSION_ID", ""),
            "architecture": uname.machine,
        },
        "kernel": {
            "release": uname.release,
            "version": uname.version,
            "architecture": uname.machine,
        },
        "product": {
            k: _read(ctx, dmi + f)
            for k, f in (
                ("name", "product_name"),
                ("vendor", "sys_vendor"),
                ("version", "product_version"),
                ("serial", "product_serial"),
                ("uuid", "product_uuid"),
                ("sku", "product_sku"),
            )
        },
        "board": {
            k: _read(ctx, dmi + f)
            for k, f in (
                ("name", "board_name"),
                ("vendor", "board_vendor"),
                ("version", "board_version"),
                ("serial", "board_serial"),
                ("assettag", "board_asset_tag"),
            )
        },
        "bios": {
            k: _read(ctx, dmi + f)
            for k, f in (
                ("vendor", "bios_vendor"),
                ("version", "bios_version"),
                ("date", "bios_date"),
            )
        },
        "cpu": _cpu(ctx),
        "network": _network(ctx),
    }


def node_values(ctx: Context) -> dict[str, Any]:
    """The template data upstream gives configs: `.MachineID`, `.Random` and `.Values`."""
    return {
        "MachineID": _read(ctx, "/etc/machine-id"),
        "Random": random_string(),
        "Values": sysinfo(ctx),
    }
