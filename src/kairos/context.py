"""What every command gets: the root it acts on and the global switches."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Context:
    """`root` is `/` on a node; tests and offline image work point it at a directory."""

    root: Path = Path("/")
    debug: bool = False
    strict: bool = False
    json: bool = False
    # immucore's initramfs stage: `root` is the mounted root of the system now booting, so
    # what a step does to the running kernel (hostname, sysctl, modules, disk layout) is
    # done here too, as when the stage runs chrooted.
    booting: bool = False

    def path(self, p: str | PurePosixPath) -> Path:
        """Map an absolute node path (`/oem/x.yaml`) under the root."""
        rel = str(p).lstrip("/")
        return self.root / rel if rel else self.root

    @cached_property
    def is_host_root(self) -> bool:
        return self.root.resolve() == Path("/")

    @property
    def owns_kernel(self) -> bool:
        """Kernel-side effects of a step (sethostname, /proc/sys, modprobe, partitions) apply."""
        return self.is_host_root or self.booting
