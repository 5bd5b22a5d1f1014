"""The immutable layout the rootfs stage chose: `/run/cos/cos-layout.env` (+ custom-layout.env).

The files are shell-style `KEY="value"` lines written by the stage runner's
`environment_file` step (or by hand); they are parsed here without a shell, once, into a
frozen `Layout` that the planner reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from kairos.errors import ConfigError

LAYOUT_ENV = "/run/cos/cos-layout.env"
CUSTOM_LAYOUT_ENV = "/run/cos/custom-layout.env"
# Upstream immucore's built-in RW_PATHS when no layout file says otherwise.
DEFAULT_RW_PATHS = ("/etc", "/root", "/home", "/opt", "/srv", "/usr/local", "/var")
DEFAULT_OVERLAY = "tmpfs:20%"
DEFAULT_STATE_TARGET = "/usr/local/.state"

_ESCAPES = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "$": "$", "`": "`"}


def parse_env(text: str, source: str = LAYOUT_ENV) -> dict[str, str]:
    """`KEY=value`, `KEY="v a l"`, `KEY='v'`, `export KEY=...`, `# comments`; last one wins.

    Every malformed line is reported at once (ConfigError with file:line problems).
    """
    out: dict[str, str] = {}
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "a").isalnum() or key[0].isdigit():
            problems.append(f"{source}:{number}: not a KEY=value line: {raw.strip()!r}")
            continue
        try:
            out[key] = _unquote(value.strip())
        except ValueError as exc:
            problems.append(f"{source}:{number}: {key}: {exc}")
    if problems:
        raise ConfigError(
            f"{source}: {len(problems)} bad line(s).",
            hint='write KEY=value or KEY="value" lines',
            problems=tuple(problems),
        )
    return out


def _unquote(value: str) -> str:
    if not value:
        return ""
    quote = value[0]
    if quote == "'":
        if len(value) < 2 or not value.endswith("'"):
            raise ValueError("unterminated single quote")
        return value[1:-1]
    if quote != '"':
        # A trailing comment after an unquoted value, as a shell reads it.
        return value.split(" #", 1)[0].strip()
    out: list[str] = []
    i = 1
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
            continue
        if ch == '"':
            rest = value[i + 1 :].strip()
            if rest and not rest.startswith("#"):
                raise ValueError(f"text after the closing quote: {rest!r}")
            return "".join(out)
        out.append(ch)
        i += 1
    raise ValueError("unterminated double quote")


@dataclass(frozen=True)
class Volume:
    """A `VOLUMES`/`rd.cos.mount` entry: `LABEL=COS_PERSISTENT:/usr/local`."""

    device: str
    mountpoint: str

    @classmethod
    def parse(cls, text: str) -> Volume:
        device, sep, mountpoint = text.rpartition(":")
        if not sep or not device or not mountpoint.startswith("/"):
            raise ValueError(
                f"{text!r} is not DEVICE:/mountpoint (e.g. LABEL=COS_PERSISTENT:/usr/local)"
            )
        return cls(device, _clean(mountpoint))


@dataclass(frozen=True)
class Layout:
    """The parsed layout; `from_env` fills upstream's defaults for unset keys."""

    rw_paths: tuple[str, ...] = DEFAULT_RW_PATHS
    overlay: str = DEFAULT_OVERLAY
    volumes: tuple[Volume, ...] = ()
    persistent_paths: tuple[str, ...] = ()
    persistent_target: str = DEFAULT_STATE_TARGET
    persistent_bind: bool = False
    merge: bool = True
    from_file: bool = False

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str],
        custom: Mapping[str, str] | None = None,
        *,
        from_file: bool = True,
    ) -> Layout:
        problems: list[str] = []
        volumes: list[Volume] = []
        for word in env.get("VOLUMES", "").split():
            try:
                volumes.append(Volume.parse(word))
            except ValueError as exc:
                problems.append(f"VOLUMES: {exc}")
        rw = (
            _paths(env["RW_PATHS"], "RW_PATHS", problems) if "RW_PATHS" in env else DEFAULT_RW_PATHS
        )
        persistent = _paths(
            env.get("PERSISTENT_STATE_PATHS", ""), "PERSISTENT_STATE_PATHS", problems
        )
        target = env.get("PERSISTENT_STATE_TARGET", "").strip() or DEFAULT_STATE_TARGET
        if not target.startswith("/"):
            problems.append(f"PERSISTENT_STATE_TARGET: {target!r} is not an absolute path")
        custom = custom or {}
        # install.bind_mounts / install.ephemeral_mounts, as upstream's rootfs.after merge.
        persistent += _paths(custom.get("CUSTOM_BIND_MOUNTS", ""), "CUSTOM_BIND_MOUNTS", problems)
        rw += _paths(custom.get("CUSTOM_EPHEMERAL_MOUNTS", ""), "CUSTOM_EPHEMERAL_MOUNTS", problems)
        overlay = env.get("OVERLAY", "").strip() or DEFAULT_OVERLAY
        try:
            overlay_size(overlay)
        except ValueError as exc:
            problems.append(f"OVERLAY: {exc}")
        if problems:
            raise ConfigError(
                f"{LAYOUT_ENV}: {len(problems)} problem(s) in the layout.",
                hint="fix the rootfs stage step whose environment_file writes it",
                problems=tuple(problems),
            )
        return cls(
            rw_paths=tuple(dict.fromkeys(rw)),
            overlay=overlay,
            volumes=tuple(volumes),
            persistent_paths=tuple(dict.fromkeys(persistent)),
            persistent_target=_clean(target),
            persistent_bind=_true(env.get("PERSISTENT_STATE_BIND", "")),
            merge=_true(env.get("MERGE", "true")),
            from_file=from_file,
        )


def overlay_size(spec: str) -> str | None:
    """The tmpfs size of `tmpfs:25%` / `tmpfs:2G` (None for a `LABEL=`/`UUID=` block device)."""
    kind, sep, size = spec.partition(":")
    if kind in ("LABEL", "UUID") or spec.startswith(("LABEL=", "UUID=")):
        return None
    if kind != "tmpfs" or not sep:
        raise ValueError(f"{spec!r}: expected tmpfs:SIZE, LABEL=x or UUID=x")
    body = size.removesuffix("%")
    unit_ok = size.endswith("%") or size[-1:].upper() in "KMG" or size.isdigit()
    number = body.rstrip("kKmMgG") if not size.endswith("%") else body
    if not number.isdigit() or int(number) == 0 or not unit_ok:
        raise ValueError(f"{spec!r}: bad size {size!r} (use 25% or 2G)")
    if size.endswith("%") and int(number) > 100:
        raise ValueError(f"{spec!r}: more than 100%")
    return size


def _paths(text: str, key: str, problems: list[str]) -> tuple[str, ...]:
    out = []
    for word in text.split():
        if not word.startswith("/") or word == "/":
            problems.append(f"{key}: {word!r} is not an absolute path below /")
            continue
        out.append(_clean(word))
    return tuple(out)


def _clean(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "."]
    return "/" + "/".join(parts)


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes", "on")
