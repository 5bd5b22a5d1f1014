"""`packages`: install, remove, refresh and upgrade through the root's own package manager."""

from __future__ import annotations

from kairos.context import Context
from kairos.errors import KairosError
from kairos.run import run
from kairos.stages.model import Packages, Step
from kairos.stages.paths import rooted

# Per manager: how to refresh, upgrade, install and remove, non-interactively.
MANAGERS: dict[str, dict[str, list[str]]] = {
    "apt-get": {
        "refresh": ["apt-get", "update"],
        "upgrade": ["apt-get", "-y", "upgrade"],
        "install": ["apt-get", "-y", "--no-install-recommends", "install"],
        "remove": ["apt-get", "-y", "remove"],
    },
    "dnf": {
        "refresh": ["dnf", "-y", "makecache"],
        "upgrade": ["dnf", "-y", "upgrade"],
        "install": ["dnf", "-y", "install"],
        "remove": ["dnf", "-y", "remove"],
    },
    "zypper": {
        "refresh": ["zypper", "--non-interactive", "refresh"],
        "upgrade": ["zypper", "--non-interactive", "update"],
        "install": ["zypper", "--non-interactive", "install"],
        "remove": ["zypper", "--non-interactive", "remove"],
    },
    "apk": {
        "refresh": ["apk", "update"],
        "upgrade": ["apk", "upgrade"],
        "install": ["apk", "add"],
        "remove": ["apk", "del"],
    },
    "pacman": {
        "refresh": ["pacman", "-Sy", "--noconfirm"],
        "upgrade": ["pacman", "-Su", "--noconfirm"],
        "install": ["pacman", "-S", "--noconfirm"],
        "remove": ["pacman", "-R", "--noconfirm"],
    },
}
_BIN_DIRS = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")


def detect(ctx: Context) -> str:
    for manager in MANAGERS:
        if any(rooted(ctx, f"{d}/{manager}").exists() for d in _BIN_DIRS):
            return manager
    raise KairosError(
        f"packages: no known package manager in {ctx.root}.",
        hint=f"supported: {', '.join(MANAGERS)}",
    )


def plan(manager: str, pkgs: Packages) -> list[list[str]]:
    """The commands, in order: refresh, upgrade, install, remove."""
    verbs = MANAGERS[manager]
    out = []
    if pkgs.refresh:
        out.append(list(verbs["refresh"]))
    if pkgs.upgrade:
        out.append(list(verbs["upgrade"]))
    if pkgs.install:
        out.append([*verbs["install"], *pkgs.install])
    if pkgs.remove:
        out.append([*verbs["remove"], *pkgs.remove])
    return out


def apply(step: Step, ctx: Context) -> None:
    if step.packages is None:
        return
    manager = detect(ctx)
    env = {"DEBIAN_FRONTEND": "noninteractive"} if manager == "apt-get" else None
    prefix = [] if ctx.is_host_root else ["chroot", str(ctx.root)]
    for argv in plan(manager, step.packages):
        run([*prefix, *argv], env=env, timeout=3600)
