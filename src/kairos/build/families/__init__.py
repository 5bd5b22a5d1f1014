"""Distribution families: how to check and install packages, detected from /etc/os-release.

A family is a small plug-in with one contract (`Family`); kairosify only talks to it, so a
new distribution is a new module here, not a change to the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kairos.errors import KairosError


@dataclass(frozen=True)
class OsRelease:
    id: str
    id_like: tuple[str, ...]
    version_id: str
    pretty_name: str

    @classmethod
    def read(cls, root: Path) -> OsRelease:
        for rel in ("etc/os-release", "usr/lib/os-release"):
            path = root / rel
            if path.exists():
                return cls.parse(path.read_text(errors="replace"))
        raise KairosError(
            f"{root}: no /etc/os-release in the root filesystem.",
            hint="the source must be a complete distribution root",
        )

    @classmethod
    def parse(cls, text: str) -> OsRelease:
        values: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                values[key] = value.strip().strip("\"'")
        return cls(
            id=values.get("ID", "linux"),
            id_like=tuple(values.get("ID_LIKE", "").split()),
            version_id=values.get("VERSION_ID", ""),
            pretty_name=values.get("PRETTY_NAME", values.get("NAME", "Linux")),
        )


class Family(Protocol):
    """What kairosify needs from a distribution."""

    name: str

    def packages(self) -> tuple[str, ...]:
        """The packages a Kairos node needs, in this distribution's names."""
        ...

    def missing_packages(self, root: Path, wanted: tuple[str, ...]) -> tuple[str, ...]:
        """The packages of `wanted` that are not installed in `root` (read without running)."""
        ...

    def install_packages(self, root: Path, packages: tuple[str, ...]) -> None:
        """Install `packages` into `root` with the distribution's own package manager."""
        ...


def detect(root: Path) -> tuple[Family, OsRelease]:
    """The family of the root at `root`, from os-release ID then ID_LIKE."""
    from kairos.build.families.debian import DebianFamily

    osr = OsRelease.read(root)
    families: dict[str, Family] = {"debian": DebianFamily(), "ubuntu": DebianFamily()}
    for ident in (osr.id, *osr.id_like):
        if ident in families:
            return families[ident], osr
    raise KairosError(
        f"{osr.pretty_name} (ID={osr.id}): unsupported distribution family.",
        hint=f"supported families: {', '.join(sorted(families))}",
    )
