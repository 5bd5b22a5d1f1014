"""The one way this project runs external tools.

argv lists only (never a shell, except the user's own `commands:` steps, which call
`run_shell`), stdin closed unless input is given, a rebuilt environment, the command logged
as a copy-pasteable line with secrets redacted, and failures raised as CommandError.
Unit tests replace `_spawn` so nothing can reach the host by accident.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from kairos.errors import CommandError, ToolMissingError

log = logging.getLogger("kairos.run")

_BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_KEEP = ("TERM", "LANG", "LC_ALL", "TZ", "HOME", "USER", "KAIROS_AGENT_PROGRESS")


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every command gets: a fixed PATH, a few kept variables, `extra`."""
    env = {k: os.environ[k] for k in _KEEP if k in os.environ}
    env["PATH"] = _BASE_PATH
    env.setdefault("LC_ALL", "C.UTF-8")
    if extra:
        env.update(extra)
    return env


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def which(tool: str) -> str | None:
    return shutil.which(tool, path=_BASE_PATH + ":/usr/lib/grub/i386-pc")


def require_tools(tools: Sequence[str], package_hint: Mapping[str, str] | None = None) -> None:
    """Raise one error naming every missing tool (and the package that has it)."""
    missing = [t for t in tools if which(t) is None]
    if missing:
        hints = package_hint or {}
        pkgs = sorted({hints.get(t, t) for t in missing})
        raise ToolMissingError(
            f"missing host tools: {', '.join(missing)}.",
            hint=f"install them with: apt-get install {' '.join(pkgs)}, or run 'make setup'",
        )


def _spawn(
    argv: Sequence[str],
    *,
    input: bytes | None,
    capture: bool,
    cwd: Path | None,
    env: Mapping[str, str],
    timeout: float | None,
) -> tuple[int, bytes, bytes]:
    proc = subprocess.run(
        list(argv),
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        cwd=cwd,
        env=dict(env),
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout or b"", proc.stderr or b""


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = True,
    input: str | bytes | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    secrets: Sequence[str] = (),
    timeout: float | None = None,
) -> Result:
    """Run one external command. Raises CommandError when it fails and `check` is set."""
    args = tuple(str(a) for a in argv)
    if not args:
        raise ValueError("run() needs a command")
    log.debug("+ %s", redact(shlex.join(args), secrets))
    data = input.encode() if isinstance(input, str) else input
    try:
        code, out, err = _spawn(
            args, input=data, capture=capture, cwd=cwd, env=base_env(env), timeout=timeout
        )
    except FileNotFoundError as exc:
        if cwd is not None and not Path(cwd).is_dir():
            raise CommandError(list(args), 127, f"working directory {cwd} does not exist") from exc
        if "/" in args[0] and Path(args[0]).exists():
            raise CommandError(
                list(args), 127, f"{args[0]} exists but cannot be executed (missing interpreter?)"
            ) from exc
        raise ToolMissingError(
            f"command not found: {args[0]}.", hint="install it, or run 'make setup'"
        ) from exc
    result = Result(args, code, out.decode(errors="replace"), err.decode(errors="replace"))
    if check and code != 0:
        raise CommandError(
            list(redact(a, secrets) for a in args), code, redact(result.stderr, secrets)
        )
    return result


def run_shell(
    script: str,
    *,
    check: bool = True,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    chroot: Path | None = None,
) -> Result:
    """Run a user-supplied shell snippet (a `commands:` step), optionally chrooted."""
    argv: list[str] = ["/bin/sh", "-c", script]
    if chroot is not None and chroot != Path("/"):
        argv = ["chroot", str(chroot), *argv]
    return run(argv, check=check, cwd=cwd, env=env, timeout=timeout)
