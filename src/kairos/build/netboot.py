"""Netboot files: kernel, initrd, squashfs and an iPXE script that boots them over HTTP.

dracut's livenet module (in our initrd) fetches `root=live:<url>` into RAM and boots it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kairos.build.stage import link_or_copy


@dataclass(frozen=True)
class NetbootFiles:
    kernel: Path
    initrd: Path
    squashfs: Path
    ipxe: Path


def ipxe_script(name: str, base_url: str, extra_cmdline: str = "") -> str:
    base = base_url.rstrip("/")
    words = [
        f"root=live:{base}/{name}.squashfs",
        "rd.neednet=1",
        "ip=dhcp",
        "rd.live.overlay.overlayfs=1",
        "netboot",
        "rd.cos.disable",
        "console=tty1",
        "console=ttyS0,115200",
        "net.ifnames=1",
    ]
    if extra_cmdline:
        words.append(extra_cmdline)
    return (
        "#!ipxe\n"
        "dhcp\n"
        f"kernel {base}/{name}-kernel {' '.join(words)}\n"
        f"initrd {base}/{name}-initrd\n"
        "boot\n"
    )


def write_netboot(
    out_dir: Path,
    name: str,
    kernel: Path,
    initrd: Path,
    squashfs: Path,
    base_url: str,
    extra_cmdline: str = "",
) -> NetbootFiles:
    files = NetbootFiles(
        kernel=out_dir / f"{name}-kernel",
        initrd=out_dir / f"{name}-initrd",
        squashfs=out_dir / f"{name}.squashfs",
        ipxe=out_dir / f"{name}.ipxe",
    )
    link_or_copy(kernel, files.kernel)
    link_or_copy(initrd, files.initrd)
    link_or_copy(squashfs, files.squashfs)
    files.ipxe.write_text(ipxe_script(name, base_url, extra_cmdline))
    return files
