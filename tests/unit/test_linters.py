"""Linters are tests: ruff, ruff format, mypy --strict, and the node-side import rule."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PKG = REPO / "src" / "kairos"
NODE_PARTS = ("config", "stages", "disk", "bootloader", "agent", "immucore")
NODE_ALLOWED_THIRD_PARTY = {"yaml"}
NODE_SHARED_IMAGE_MODULES = ("kairos.image.source", "kairos.image.oci", "kairos.image.layers")


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, check=False
    )


def test_ruff_check(allow_commands: None) -> None:
    r = _tool("ruff", "check", "src", "tests", "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_ruff_format(allow_commands: None) -> None:
    r = _tool("ruff", "format", "--check", "src", "tests", "bench")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict(allow_commands: None) -> None:
    r = _tool("mypy", "--strict", "src/kairos")
    assert r.returncode == 0, r.stdout + r.stderr


def imported_modules(tree: ast.AST) -> list[str]:
    """Every absolute import of a module tree, as module names."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from kairos.image import oci` names the module kairos.image.oci
            if node.module == "kairos.image":
                names += [f"{node.module}.{a.name}" for a in node.names]
            else:
                names.append(node.module)
    return names


@pytest.mark.parametrize("part", NODE_PARTS)
def test_node_side_imports_only_stdlib_and_yaml(part: str) -> None:
    """Node-side code runs in the image and initramfs: standard library plus PyYAML only."""
    bad = []
    for f in sorted((PKG / part).rglob("*.py")):
        tree = ast.parse(f.read_text(), str(f))
        for name in imported_modules(tree):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in NODE_ALLOWED_THIRD_PARTY:
                continue
            if top == "kairos":
                sub = name.split(".")[1] if "." in name else ""
                # The OCI reader and the safe layer applier are standard library only
                # (checked below): upgrades unpack ocifile: sources on the node.
                if name in NODE_SHARED_IMAGE_MODULES:
                    continue
                if sub in ("build", "image", "vm"):
                    bad.append(f"{f.relative_to(REPO)}: imports build-side {name}")
                continue
            bad.append(f"{f.relative_to(REPO)}: imports {name}")
    assert not bad, "\n".join(bad)


def test_image_modules_used_on_the_node_import_only_node_code() -> None:
    bad = []
    for name in NODE_SHARED_IMAGE_MODULES:
        f = PKG / (name.removeprefix("kairos.").replace(".", "/") + ".py")
        for imported in imported_modules(ast.parse(f.read_text(), str(f))):
            top = imported.split(".")[0]
            if top in sys.stdlib_module_names or imported in NODE_SHARED_IMAGE_MODULES:
                continue
            if imported in ("kairos.errors", "kairos.log", "kairos.run"):
                continue
            if imported == "kairos.image.debian":
                continue  # only for debian: sources, which the node never uses
            bad.append(f"{f.relative_to(REPO)}: imports {imported}")
    assert not bad, "\n".join(bad)
