"""What every command gets: the root it acts on and the global switches."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Context:
    """`root` is `/` on a node; tests and offline image work point it at a directory."""

    root: Path = Path("/")
    debug: bool = False
    strict: bool = False
    json: bool = False

    def path(self, p: str | PurePosixPath) -> Path:
        """Map an absolute node path (`/oem/x.yaml`) under the root."""
        rel = str(p).lstrip("/")
        return self.root / rel if rel else self.root

    @property
    def is_host_root(self) -> bool:
        return self.root.resolve() == Path("/")
