"""The build's named steps, each a `verb_noun(...)` with its guard clauses first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from kairos.build.manifest import ArtifactKind
from kairos.build.stage import link_or_copy
from kairos.errors import KairosError
from kairos.log import Progress
from kairos.run import run

if TYPE_CHECKING:
    from kairos.build.pipeline import BuildRequest, Format


def make_work_dir(request: BuildRequest) -> Path:
    from kairos.image.debian import CACHE_ROOT

    base = request.work_dir or CACHE_ROOT
    work = base / f"work-{request.name}-{os.getpid()}"
    if work.exists():
        from kairos.build.chroot import remove_tree

        remove_tree(work)
    work.mkdir(parents=True)
    return work


def prepare_root(source: object, root: Path, progress: Progress) -> None:
    from kairos.image import source as src

    if not isinstance(source, src.Source):
        raise KairosError("internal: build plan has no parsed source.")
    # materialize() names its own steps (bootstrap, copy, unpack).
    src.materialize(source, root, progress)


def kairosify_root(root: Path, request: BuildRequest, progress: Progress) -> str:
    from kairos.build.families import detect
    from kairos.build.kairosify import ReleaseInfo, kairosify, kernel_version

    with progress.step("kairosify (packages, agent, units, configs, accounts)"):
        family, osr = detect(root)
        kairosify(root, family, osr, ReleaseInfo(name=request.name, version=request.version))
        return kernel_version(root)


def make_initrd(root: Path, kver: str, work: Path, progress: Progress) -> Path:
    from kairos.build.initrd import build_initrd, dracut_image

    with progress.step(f"initrd for {kver} (dracut cached by its inputs, kairos appended)"):
        dracut_image(root, kver)
        initrd = build_initrd(root, kver, work / "initrd")
        # Upstream layout: /boot/initrd inside the image is what installed systems boot.
        link_or_copy(initrd, root / "boot/initrd")
    return initrd


def make_squashfs(root: Path, work: Path, request: BuildRequest, progress: Progress) -> Path:
    from kairos.build.squashfs import mksquashfs_argv

    out = work / "rootfs.squashfs"
    with progress.step(f"squashfs ({request.compression})"):
        run(mksquashfs_argv(root, out, request.compression))
    return out


def write_format(
    fmt: Format,
    root: Path,
    kernel: Path,
    initrd: Path,
    squashfs: Path,
    work: Path,
    request: BuildRequest,
    progress: Progress,
) -> list[tuple[ArtifactKind, Path]]:
    from kairos.build.pipeline import Format

    out = request.output
    name = request.name
    if fmt is Format.ISO:
        from kairos.build import iso

        with progress.step("iso (grub-mkrescue)"):
            tree = work / "iso"
            iso.populate_iso_tree(
                tree, kernel, initrd, squashfs, request.cloud_config, request.extra_cmdline
            )
            return [(ArtifactKind.ISO, iso.make_iso(tree, out / f"{name}.iso"))]
    if fmt is Format.RAW or fmt is Format.QCOW2:
        from kairos.build import raw

        disk = out / f"{name}.raw"
        results: list[tuple[ArtifactKind, Path]] = []
        # build() orders raw before qcow2, so a requested raw disk exists already here.
        if fmt is Format.RAW or Format.RAW not in request.formats:
            with progress.step("raw disk (sfdisk, mtools, grub)"):
                raw.make_raw(disk, work, kernel, initrd, squashfs, request.extra_cmdline)
        if fmt is Format.RAW:
            results.append((ArtifactKind.RAW, disk))
        else:
            with progress.step("qcow2 (qemu-img convert)"):
                results.append((ArtifactKind.QCOW2, raw.make_qcow2(disk, out / f"{name}.qcow2")))
            if Format.RAW not in request.formats:
                disk.unlink()
        return results
    if fmt is Format.NETBOOT:
        from kairos.build.netboot import write_netboot

        with progress.step("netboot files"):
            files = write_netboot(
                out, name, kernel, initrd, squashfs, request.netboot_url, request.extra_cmdline
            )
        return [
            (ArtifactKind.NETBOOT_KERNEL, files.kernel),
            (ArtifactKind.NETBOOT_INITRD, files.initrd),
            (ArtifactKind.NETBOOT_SQUASHFS, files.squashfs),
            (ArtifactKind.NETBOOT_IPXE, files.ipxe),
        ]
    if fmt is Format.OCI:
        from kairos.image.oci_write import write_oci_archive

        dest = out / f"{name}.oci.tar"
        with progress.step("oci archive"):
            write_oci_archive(root, dest, name=name, version=request.version)
        return [(ArtifactKind.OCI, dest)]
    raise KairosError(f"internal: no writer for format {fmt}.")
