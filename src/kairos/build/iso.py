"""The hybrid live ISO (BIOS and UEFI, CD and USB) made with grub-mkrescue.

Layout as upstream's live ISO: volume COS_LIVE, /boot/kernel, /boot/initrd,
/rootfs.squashfs, and an optional /config.yaml the live system finds at
/run/initramfs/live/config.yaml.
"""

from __future__ import annotations

from pathlib import Path

from kairos.build.grub import LIVE_LABEL, SQUASHFS_NAME, menu_cfg
from kairos.build.stage import link_or_copy
from kairos.run import run

TOOLS = ("grub-mkrescue", "xorriso", "mformat")
PACKAGES = {"grub-mkrescue": "grub-common", "xorriso": "xorriso", "mformat": "mtools"}


def iso_grub_cfg(extra_cmdline: str = "") -> str:
    return menu_cfg(search=f"--label {LIVE_LABEL}", root_spec=f"CDLABEL={LIVE_LABEL}",
                    extra_cmdline=extra_cmdline)  # fmt: skip


def mkrescue_argv(tree: Path, out: Path) -> list[str]:
    return ["grub-mkrescue", "-o", str(out), str(tree), "--", "-volid", LIVE_LABEL]


def populate_iso_tree(
    tree: Path,
    kernel: Path,
    initrd: Path,
    squashfs: Path,
    cloud_config: Path | None,
    extra_cmdline: str = "",
) -> None:
    """The ISO's file tree, hardlinked where possible (nothing is copied twice)."""
    (tree / "boot/grub").mkdir(parents=True, exist_ok=True)
    link_or_copy(kernel, tree / "boot/kernel")
    link_or_copy(initrd, tree / "boot/initrd")
    link_or_copy(squashfs, tree / SQUASHFS_NAME)
    (tree / "boot/grub/grub.cfg").write_text(iso_grub_cfg(extra_cmdline))
    if cloud_config is not None:
        (tree / "config.yaml").write_text(cloud_config.read_text())


def make_iso(tree: Path, out: Path) -> Path:
    if out.exists():
        out.unlink()
    run(mkrescue_argv(tree, out))
    return out
