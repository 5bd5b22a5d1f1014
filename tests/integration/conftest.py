"""Shared integration fixtures: a minimal Debian root, bootstrapped once and cached.

The root is built with mmdebstrap from a fixed recipe and kept as a tarball under
`/var/cache/kairos-py/minroot-<hash of the recipe>/`, so only the first run pays for the
bootstrap; every test gets its own extracted copy in `tmp_path` and may change it freely.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kairos.run import run, which

CACHE = Path(os.environ.get("KAIROS_CACHE", "/var/cache/kairos-py"))

# The recipe is the cache key: change anything here and a new root is bootstrapped.
MINROOT_RECIPE: dict[str, object] = {
    "tool": "mmdebstrap",
    "variant": "minbase",
    "suite": "bookworm",
    "include": ["systemd", "passwd", "login", "sudo"],
    "sources": "deb http://deb.debian.org/debian bookworm main",
    "format": "tar",
}


def recipe_hash(recipe: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _capable() -> str | None:
    """Why the minimal root cannot be used here, or None. Checks capabilities, not the uid."""
    if which("mmdebstrap") is None:
        return "mmdebstrap is not installed"
    if which("chroot") is None or which("tar") is None:
        return "chroot/tar missing"
    probe = CACHE / ".probe"
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        probe.touch()
        os.chown(probe, 1, 1)  # extracting a root needs to set owners
        probe.unlink()
    except OSError as exc:
        return f"cannot write owned files under {CACHE}: {exc}"
    return None


def minroot_tarball() -> Path:
    """Build (once, under a lock so parallel runs wait) and return the cached root tarball."""
    recipe = MINROOT_RECIPE
    out_dir = CACHE / f"minroot-{recipe_hash(recipe)}"
    tarball = out_dir / "rootfs.tar"
    if tarball.is_file():
        return tarball
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if tarball.is_file():
            return tarball
        partial = out_dir / "rootfs.tar.partial"
        include = ",".join(recipe["include"])  # type: ignore[arg-type]
        run(
            [
                "mmdebstrap",
                f"--variant={recipe['variant']}",
                f"--include={include}",
                "--format=tar",
                str(recipe["suite"]),
                str(partial),
                str(recipe["sources"]),
            ],
            timeout=3600,
        )
        partial.rename(tarball)  # atomic: a half-built tarball is never taken as the cache
        (out_dir / "recipe.json").write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    return tarball


@pytest.fixture(scope="session")
def minroot_tar() -> Path:
    reason = _capable()
    if reason:
        pytest.skip(f"minimal root unavailable: {reason}")
    return minroot_tarball()


@pytest.fixture
def minroot(minroot_tar: Path, tmp_path: Path) -> Iterator[Path]:
    """A fresh, writable copy of the minimal Debian root for one test."""
    root = tmp_path / "root"
    root.mkdir()
    run(["tar", "-x", "--numeric-owner", "-p", "-f", str(minroot_tar), "-C", str(root)])
    yield root
    shutil.rmtree(root, ignore_errors=True)
