"""`kairos build --source ocifile:` on an archive this test makes itself: the cached Debian root
as a first layer, then a layer with a whiteout and an opaque directory. The ISO's squashfs must
show the layers applied in order and the result kairosified."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kairos.build.manifest import ArtifactKind
from kairos.build.pipeline import BuildRequest, Format, build
from kairos.image.debian import DebianRecipe, bootstrap
from kairos.log import Progress
from kairos.run import run, which
from tests.integration.test_oci_source import gnu_tar, oci_layout

pytestmark = pytest.mark.integration

TOOLS = ("mmdebstrap", "mksquashfs", "unsquashfs", "grub-mkrescue", "xorriso", "tar", "chroot")


def _squashfs_listing(iso: Path, work: Path) -> set[str]:
    sq = work / "rootfs.squashfs"
    run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/rootfs.squashfs", sq])
    out = run(["unsquashfs", "-lc", "-d", "", sq]).stdout
    return {line.strip().lstrip("/") for line in out.splitlines() if line.strip()}


def test_build_from_ocifile_with_whiteouts(tmp_path: Path) -> None:
    missing = [t for t in TOOLS if which(t) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and {', '.join(missing) or 'the build tools'}")
    base = bootstrap(DebianRecipe(), Progress(quiet=True))
    assert (base / "etc/motd").exists() and (base / "usr/share/doc").is_dir()

    top = tmp_path / "top"
    (top / "etc").mkdir(parents=True)
    (top / "etc/.wh.motd").write_text("")
    (top / "etc/oci-layer-marker").write_text("from the second layer\n")
    (top / "usr/share/doc").mkdir(parents=True)
    (top / "usr/share/doc/.wh..wh..opq").write_text("")
    (top / "usr/share/doc/README.oci").write_text("only file left here\n")
    # As `docker export`/buildkit layers are: no device nodes, no API filesystem contents.
    run(
        [
            "tar", "--numeric-owner", "--sort=name", "--xattrs", "--exclude=./dev/*",
            "--exclude=./proc/*", "--exclude=./sys/*", "--exclude=./run/*",
            "--exclude=./.kairos-complete", "-C", base, "-cf", tmp_path / "base.tar", ".",
        ]
    )  # fmt: skip
    base_tar = (tmp_path / "base.tar").read_bytes()
    top_tar = gnu_tar(top, tmp_path / "top.tar")
    layout = tmp_path / "layout"
    oci_layout(layout, [(base_tar, base_tar, "none"), (top_tar, top_tar, "none")])
    (tmp_path / "base.tar").unlink()
    archive = tmp_path / "image.tar"
    run(["tar", "-C", layout, "-cf", archive, "."])
    run(["rm", "-rf", "--one-file-system", layout])

    out = tmp_path / "out"
    manifest = build(
        BuildRequest(source=f"ocifile:{archive}", output=out, formats=(Format.ISO,), name="oci"),
        Progress(quiet=True),
    )
    isos = [a for a in manifest.artifacts if a.kind == ArtifactKind.ISO]
    assert len(isos) == 1
    names = _squashfs_listing(out / isos[0].file, tmp_path)
    assert "etc/oci-layer-marker" in names
    assert "etc/motd" not in names  # whited out by the second layer
    docs = {n for n in names if n.startswith("usr/share/doc/")}
    assert docs == {"usr/share/doc/README.oci"}  # opaque: the base layer's docs are hidden
    assert "usr/bin/kairos-agent" in names  # kairosified
    assert "etc/kairos-release" in names
