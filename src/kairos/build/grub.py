"""GRUB for the artifacts: menu text, core images, and the BIOS boot-code embedder.

The BIOS embedder writes GRUB's boot.img and core.img straight into a disk image file,
because grub-bios-setup insists on probing a real device (it cannot work on a file).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kairos.errors import KairosError

LIVE_LABEL = "COS_LIVE"
EFI_LABEL = "COS_GRUB"
SQUASHFS_NAME = "rootfs.squashfs"
# No video modules: serial and text console only (video ones print "no suitable video
# mode found" on UEFI and slow emulated boots).
GRUB_MODULES = (
    "part_gpt", "part_msdos", "fat", "ext2", "iso9660", "normal", "linux", "search",
    "search_label", "search_fs_uuid", "search_fs_file", "configfile", "echo", "test",
    "serial", "terminal", "gzio", "loopback", "squash4", "boot", "cat",
    "true", "sleep", "halt", "reboot",
)  # fmt: skip
BIOS_GRUB_DIR = Path("/usr/lib/grub/i386-pc")


@dataclass(frozen=True)
class MenuEntry:
    title: str
    extra: str = ""


# Upstream's live ISO menu (AuroraBoot grub_live_bios.cfg), all entries with rd.cos.disable.
LIVE_ENTRIES = (
    MenuEntry("Kairos", "install-mode"),
    MenuEntry("Kairos (manual)"),
    MenuEntry("kairos (interactive install)", "install-mode-interactive"),
    MenuEntry("Kairos (remote recovery mode)", "kairos.remote_recovery_mode"),
    MenuEntry("Kairos (boot local node from livecd)", "kairos.boot_live_mode"),
    MenuEntry("Kairos (debug)", "rd.debug rd.immucore.debug"),
    MenuEntry("Boot to RAM", "rd.live.ram=1 kairos.ram"),
)


def live_cmdline(root_spec: str, extra: str = "") -> str:
    words = [
        f"root=live:{root_spec}",
        "rd.live.dir=/",
        f"rd.live.squashimg={SQUASHFS_NAME}",
        # Needed with Debian's dracut 059: without it the overlay root of a plain squashfs
        # is never mounted ("Can't mount root filesystem"); with it boots are reliable.
        "rd.live.overlay.overlayfs=1",
        "console=tty1",
        "console=ttyS0,115200",
        "rd.cos.disable",
        "net.ifnames=1",
    ]
    if extra:
        words.append(extra)
    return " ".join(words)


def menu_cfg(
    *,
    search: str,
    root_spec: str,
    kernel: str = "/boot/kernel",
    initrd: str = "/boot/initrd",
    timeout: int = 3,
    extra_cmdline: str = "",
    entries: Sequence[MenuEntry] = LIVE_ENTRIES,
) -> str:
    """A grub.cfg for live boots, shared by BIOS and EFI, with serial and screen console.

    `search` is the grub `search` arguments that find the partition holding the kernel.
    `extra_cmdline` goes on every entry (tests use it for markers and poweroff switches).
    """
    lines = [
        "# Kairos live media",
        f"search --no-floppy --set=root {search}",
        "serial --unit=0 --speed=115200",
        "terminal_input serial console",
        "terminal_output serial console",
        "set gfxpayload=text",
        "set default=0",
        f"set timeout={timeout}",
        "set timeout_style=menu",
        "",
    ]
    for entry in entries:
        extra = " ".join(x for x in (entry.extra, extra_cmdline) if x)
        lines += [
            f'menuentry "{entry.title}" --class os --unrestricted {{',
            "    echo Loading kernel...",
            f"    linux ($root){kernel} {live_cmdline(root_spec, extra)}",
            "    echo Loading initrd...",
            f"    initrd ($root){initrd}",
            "}",
        ]
    return "\n".join(lines) + "\n"


def mkimage_efi_argv(out: Path) -> list[str]:
    return [
        "grub-mkimage", "-O", "x86_64-efi", "-p", "/boot/grub", "-o", str(out), *GRUB_MODULES,
    ]  # fmt: skip


def mkimage_bios_argv(out: Path, prefix: str) -> list[str]:
    return [
        "grub-mkimage", "-O", "i386-pc", "-p", prefix, "-o", str(out), "biosdisk",
        *GRUB_MODULES,
    ]  # fmt: skip


# boot.img layout (grub-core/boot/i386/pc/boot.S)
_BPB_START, _BPB_END = 0x03, 0x5A
_KERNEL_SECTOR = 0x5C
_BOOT_DRIVE_CHECK = 0x66
_MBR_CODE_END = 0x1B8
# core.img: the first sector is diskboot.img; its blocklist start sits at 0x1f4.
_BLOCKLIST_START = 0x1F4


def embed_bios_grub(disk: Path, boot_img: bytes, core_img: bytes, lba: int) -> None:
    """Install GRUB's BIOS boot code into a GPT disk image file.

    boot.img goes into the MBR code area (keeping the BPB bytes, disk signature and
    protective partition table), pointing at `lba`, the BIOS-boot partition; core.img is
    written there with its blocklist pointing at the sectors right after its first one.
    """
    if len(boot_img) != 512:
        raise KairosError(f"boot.img is {len(boot_img)} bytes, expected 512.")
    if len(core_img) < 512:
        raise KairosError(f"core.img is {len(core_img)} bytes, expected at least 512.")
    with open(disk, "r+b") as fh:
        mbr = bytearray(fh.read(512))
        if len(mbr) != 512:
            raise KairosError(f"{disk}: too small to hold a boot sector.")
        new = bytearray(boot_img[:_MBR_CODE_END]) + mbr[_MBR_CODE_END:]
        new[_BPB_START:_BPB_END] = mbr[_BPB_START:_BPB_END]
        struct.pack_into("<Q", new, _KERNEL_SECTOR, lba)
        # Skip boot.S's "is this a floppy" probe: some BIOSes report the disk oddly.
        new[_BOOT_DRIVE_CHECK : _BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
        core = bytearray(core_img)
        struct.pack_into("<Q", core, _BLOCKLIST_START, lba + 1)
        fh.seek(0)
        fh.write(new)
        fh.seek(lba * 512)
        fh.write(core)
