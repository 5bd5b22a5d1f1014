"""`debian:<suite>` sources: a Debian root bootstrapped with mmdebstrap, cached by recipe.

The recipe (suite, architecture, variant, packages, mirrors) is data; its hash names the
cache directory, so a second build with the same recipe skips the download entirely. The
package list already holds everything the Debian family's kairosify step needs, so a cached
root only gets files written on top of it, never another package manager run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kairos.errors import KairosError
from kairos.log import Progress
from kairos.run import require_tools, run

CACHE_ROOT = Path(os.environ.get("KAIROS_CACHE", "/var/cache/kairos-py"))
SUITES = ("bookworm", "trixie")
DEFAULT_SUITE = "bookworm"
COMPLETE = ".kairos-complete"

# The Debian packages a Kairos node needs (upstream kairos-init's list, kept lean). The
# Debian family plug-in checks the same list, so keep both in one place: here.
DEBIAN_PACKAGES: tuple[str, ...] = (
    "linux-image-amd64",
    "systemd",
    "systemd-sysv",
    "systemd-resolved",
    "udev",
    "dbus",
    "kmod",
    "dracut",
    "dracut-live",
    "dracut-network",  # livenet (netboot) needs its network modules
    "curl",
    "isc-dhcp-client",
    "grub-efi-amd64-bin",
    "grub-pc-bin",
    "grub2-common",
    "python3",
    "python3-yaml",
    "openssh-server",
    "sudo",
    "e2fsprogs",
    "dosfstools",
    "mtools",
    "gdisk",
    "fdisk",
    "parted",
    "rsync",
    "squashfs-tools",
    "cryptsetup-bin",
    "iproute2",
    "procps",
    "less",
)


@dataclass(frozen=True)
class DebianRecipe:
    """Everything that decides the bytes of a bootstrapped root (and so its cache key)."""

    suite: str = DEFAULT_SUITE
    arch: str = "amd64"
    variant: str = "minbase"
    packages: tuple[str, ...] = DEBIAN_PACKAGES
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    components: tuple[str, ...] = field(default=("main",))

    @property
    def sources(self) -> tuple[str, ...]:
        comps = " ".join(self.components)
        return (
            f"deb {self.mirror} {self.suite} {comps}",
            f"deb {self.mirror} {self.suite}-updates {comps}",
            f"deb {self.security_mirror} {self.suite}-security {comps}",
        )

    def key(self) -> str:
        data = {
            "suite": self.suite,
            "arch": self.arch,
            "variant": self.variant,
            "packages": sorted(self.packages),
            "sources": list(self.sources),
            "format": 1,
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def mmdebstrap_argv(self, dest: Path) -> list[str]:
        return [
            "mmdebstrap",
            "--mode=root",
            f"--variant={self.variant}",
            f"--architectures={self.arch}",
            "--include=" + ",".join(self.packages),
            # Host keys made at package install time would be shared by every node.
            '--customize-hook=rm -f "$1"/etc/ssh/ssh_host_*',
            self.suite,
            str(dest),
            *self.sources,
        ]


def parse_suite(spec: str) -> str:
    """`bookworm` (or empty for the default) -> suite name; unknown suites are an error."""
    suite = spec.strip() or DEFAULT_SUITE
    if not re.fullmatch(r"[a-z]+", suite) or suite not in SUITES:
        raise KairosError(
            f"debian:{suite}: unsupported Debian suite.",
            hint=f"use one of: {', '.join('debian:' + s for s in SUITES)}",
        )
    return suite


def cache_dir(recipe: DebianRecipe) -> Path:
    return CACHE_ROOT / f"rootfs-{recipe.key()}"


def is_cached(recipe: DebianRecipe) -> bool:
    return (cache_dir(recipe) / COMPLETE).exists()


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def bootstrap(recipe: DebianRecipe, progress: Progress) -> Path:
    """The cached root for `recipe`, bootstrapping it first when it is not cached yet."""
    tree = cache_dir(recipe)
    with _lock(tree.with_name(tree.name + ".lock")):
        if (tree / COMPLETE).exists():
            return tree
        require_tools(["mmdebstrap"], package_hint={"mmdebstrap": "mmdebstrap"})
        tmp = tree.with_name(f"{tree.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        with progress.step(f"bootstrap debian:{recipe.suite} (mmdebstrap, cached after)"):
            try:
                # INITRD=No: the kernel's postinst would spend a minute on a generic initrd
                # that is never booted (ours is built later, cached by its own inputs).
                run(recipe.mmdebstrap_argv(tmp), capture=True, env={"INITRD": "No"})
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            for initrd in (tmp / "boot").glob("initrd.img-*"):
                initrd.unlink()
            (tmp / COMPLETE).write_text(json.dumps({"suite": recipe.suite, "key": recipe.key()}))
            shutil.rmtree(tree, ignore_errors=True)
            tmp.rename(tree)
    return tree


def link_copy(src: Path, dest: Path) -> None:
    """Copy a tree with hardlinks: instant, and the cache stays untouched as long as the
    copy's files are replaced (never edited in place); `kairos.build` follows that rule."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--link", f"{src}/.", str(dest)])
    stamp = dest / COMPLETE
    if stamp.exists():
        stamp.unlink()


def materialize_debian(
    suite: str, dest: Path, progress: Progress, packages: Sequence[str] = ()
) -> None:
    """Fill `dest` with a Debian `suite` root (from the cache, bootstrapping it if needed)."""
    recipe = DebianRecipe(
        suite=parse_suite(suite), packages=tuple(DEBIAN_PACKAGES) + tuple(packages)
    )
    tree = bootstrap(recipe, progress)
    with progress.step("copy cached root (hardlinks)"):
        link_copy(tree, dest)
