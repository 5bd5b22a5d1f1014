"""GRUB environment blocks (`grubenv`) read and written in pure Python, byte-compatible with
GRUB's own `load_env`/`save_env` and `grub-editenv` (grub-core/lib/envblk.c).

Format: the header line `# GRUB Environment Block`, then `name=value` lines, then `#`
padding to exactly 1024 bytes. In a value, a backslash and a newline are escaped by a
preceding backslash. The size must stay fixed because GRUB's `save_env` rewrites the file's
own disk blocks in place and never allocates new ones.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from kairos.errors import KairosError

HEADER = b"# GRUB Environment Block\n"
SIZE = 1024
# The keys upstream Kairos documents for `install.grub_options` / `grub_options`.
KNOWN_KEYS = (
    "next_entry",
    "saved_entry",
    "default_menu_entry",
    "extra_cmdline",
    "extra_active_cmdline",
    "extra_passive_cmdline",
    "extra_recovery_cmdline",
    "default_fallback",
)


class GrubEnvError(KairosError):
    """A grubenv file that is not one, or a value that cannot go into one."""


def check_name(name: str) -> str | None:
    """Why `name` cannot be a variable name (None when it can)."""
    if not name:
        return "empty variable name"
    if "=" in name or "\n" in name or "\\" in name:
        return f"variable name {name!r} contains '=', a backslash or a newline"
    if name.startswith("#"):
        return f"variable name {name!r} starts with '#' (GRUB would read a comment)"
    if "\0" in name:
        return f"variable name {name!r} contains a NUL byte"
    return None


def _escape(value: str) -> bytes:
    out = bytearray()
    for byte in value.encode("utf-8", "surrogateescape"):
        if byte in (0x5C, 0x0A):  # backslash, newline
            out.append(0x5C)
        out.append(byte)
    return bytes(out)


def _unescape(raw: bytes) -> str:
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 1 < len(raw):
            i += 1
        out.append(raw[i])
        i += 1
    return out.decode("utf-8", "surrogateescape")


def parse(data: bytes, source: str = "grubenv") -> dict[str, str]:
    """The variables of a grubenv block, in file order (the last one of a name wins)."""
    if not data.startswith(HEADER):
        raise GrubEnvError(
            f"{source}: not a GRUB environment block (no '# GRUB Environment Block' header).",
            hint="recreate it: 'kairos-agent grubedit set KEY=VALUE' or 'grub-editenv FILE create'",
        )
    env: dict[str, str] = {}
    pos = len(HEADER)
    end = len(data)
    while pos < end:
        if data[pos] == 0x23:  # '#': a comment or the padding, up to the end of the line
            nl = data.find(b"\n", pos)
            pos = end if nl < 0 else nl + 1
            continue
        if data[pos] == 0x0A:
            pos += 1
            continue
        # The value ends at the first newline not escaped by a backslash, as in envblk.c.
        scan = pos
        while scan < end and data[scan] != 0x0A:
            scan += 2 if data[scan] == 0x5C else 1
        line = data[pos : min(scan, end)]
        pos = scan + 1
        name, sep, value = line.partition(b"=")
        if not sep:
            continue  # GRUB skips lines without '=' too
        env[name.decode("utf-8", "surrogateescape")] = _unescape(value)
    return env


def render(env: Mapping[str, str], source: str = "grubenv") -> bytes:
    """The 1024-byte block holding `env`; raises when a name is invalid or it does not fit."""
    problems = [f"{source}: {why}" for why in map(check_name, env) if why]
    if any("\0" in v for v in env.values()):
        problems.append(f"{source}: a value contains a NUL byte")
    if problems:
        raise GrubEnvError("; ".join(problems) + ".")
    body = bytearray(HEADER)
    for name, value in env.items():
        body += name.encode("utf-8", "surrogateescape") + b"=" + _escape(value) + b"\n"
    if len(body) > SIZE:
        raise GrubEnvError(
            f"{source}: the variables need {len(body)} bytes, more than the {SIZE} of a "
            "GRUB environment block.",
            hint="shorten or remove values (extra_cmdline is usually the long one)",
        )
    return bytes(body) + b"#" * (SIZE - len(body))


def read(path: Path) -> dict[str, str]:
    """The variables in `path`; a missing file is an empty environment."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise GrubEnvError(f"{path}: cannot read: {exc.strerror}.") from exc
    return parse(data, str(path))


def write(path: Path, env: Mapping[str, str]) -> None:
    """Write `env` to `path` atomically: a full temp file, fsync, rename, fsync the dir.

    A power cut leaves either the old block or the new one, never a torn one that GRUB
    would refuse (and with it every saved choice of boot entry).
    """
    data = render(env, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def update(path: Path, values: Mapping[str, str], unset: Iterable[str] = ()) -> dict[str, str]:
    """Set `values` (an empty value deletes the variable, as `grubedit` documents) and drop
    the names in `unset`; returns the resulting environment."""
    env = read(path)
    for name, value in values.items():
        if value == "":
            env.pop(name, None)
        else:
            env[name] = value
    for name in unset:
        env.pop(name, None)
    write(path, env)
    return env


def parse_assignment(text: str) -> tuple[str, str]:
    """`KEY=VALUE` from the command line (the value may itself contain '=')."""
    name, sep, value = text.partition("=")
    if not sep:
        raise GrubEnvError(f"{text!r}: expected KEY=VALUE.", hint="e.g. next_entry=recovery")
    why = check_name(name)
    if why:
        raise GrubEnvError(f"{text!r}: {why}.")
    return name, value
