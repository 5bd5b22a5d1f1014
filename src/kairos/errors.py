"""The one error type of the project and its few subclasses."""

from __future__ import annotations


class KairosError(Exception):
    """An error the user can act on: a message and, where one helps, a hint."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message} ({self.hint})"


class ConfigError(KairosError):
    """A cloud-config problem; `problems` holds every finding as `where: what (hint)` lines."""

    def __init__(
        self, message: str, hint: str | None = None, problems: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, hint)
        self.problems = problems


class CommandError(KairosError):
    """An external command failed."""

    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        shown = " ".join(argv)
        tail = stderr.strip().splitlines()[-5:]
        message = f"command failed with exit code {returncode}: {shown}"
        if tail:
            message += "\n  " + "\n  ".join(tail)
        super().__init__(message)
        self.argv = argv
        self.returncode = returncode
        self.stderr = stderr


class ToolMissingError(KairosError):
    """A host tool the operation needs is not installed."""
