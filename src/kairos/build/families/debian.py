"""The Debian family (Debian, Ubuntu and derivatives): dpkg status and apt-get."""

from __future__ import annotations

from pathlib import Path

from kairos.build.chroot import chroot_mounts
from kairos.image.debian import DEBIAN_PACKAGES
from kairos.run import run


def installed_packages(status_text: str) -> frozenset[str]:
    """Names of packages dpkg marks `install ok installed` in a dpkg status file."""
    names: set[str] = set()
    for para in status_text.split("\n\n"):
        name = status = ""
        for line in para.splitlines():
            if line.startswith("Package:"):
                name = line.split(":", 1)[1].strip()
            elif line.startswith("Status:"):
                status = line.split(":", 1)[1].strip()
        if name and status == "install ok installed":
            names.add(name)
    return frozenset(names)


class DebianFamily:
    name = "debian"

    def packages(self) -> tuple[str, ...]:
        return DEBIAN_PACKAGES

    def missing_packages(self, root: Path, wanted: tuple[str, ...]) -> tuple[str, ...]:
        status = root / "var/lib/dpkg/status"
        have = installed_packages(status.read_text(errors="replace")) if status.exists() else ()
        return tuple(p for p in wanted if p not in have)

    def install_packages(self, root: Path, packages: tuple[str, ...]) -> None:
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        with chroot_mounts(root):
            run(["chroot", str(root), "apt-get", "update", "-q"], env=env)
            run(
                [
                    "chroot", str(root), "apt-get", "install", "-y", "-q",
                    "--no-install-recommends", *packages,
                ],
                env=env,
            )  # fmt: skip
            run(["chroot", str(root), "apt-get", "clean"], env=env)
