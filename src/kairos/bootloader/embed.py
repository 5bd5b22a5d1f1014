"""GRUB's BIOS boot code written into a GPT disk without grub-install or grub-bios-setup.

boot.img goes into the MBR code area and points at the BIOS boot partition, which receives
core.img. Works the same on a block device and on a disk image file: everything is plain
reads and writes at byte offsets, with the GPT parsed here (no sfdisk/blkid needed on a
node whose udev may not have run yet).
"""

from __future__ import annotations

import os
import struct
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

from kairos.errors import KairosError

BIOS_BOOT_GUID = "21686148-6449-6e6f-744e-656564454649"
ESP_GUID = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
_GPT_SIGNATURE = b"EFI PART"

# boot.img layout (grub-core/boot/i386/pc/boot.S)
_BPB_START, _BPB_END = 0x03, 0x5A
_KERNEL_SECTOR = 0x5C
_BOOT_DRIVE_CHECK = 0x66
_MBR_CODE_END = 0x1B8  # disk signature, then the (protective) partition table
# core.img starts with diskboot.img, whose blocklist (start LBA, u64) ends its sector.
_BLOCKLIST_START = 0x1F4


class EmbedError(KairosError):
    """The disk cannot take GRUB's BIOS boot code."""


@dataclass(frozen=True)
class GptPartition:
    number: int  # 1-based, as the kernel names partitions
    type_guid: str  # lower case
    first_lba: int
    last_lba: int  # inclusive
    name: str

    @property
    def sectors(self) -> int:
        return self.last_lba - self.first_lba + 1


@dataclass(frozen=True)
class GptTable:
    sector_size: int
    partitions: tuple[GptPartition, ...]

    def by_type(self, type_guid: str) -> GptPartition | None:
        return next((p for p in self.partitions if p.type_guid == type_guid.lower()), None)


def _read_at(fh: int, offset: int, size: int) -> bytes:
    data = os.pread(fh, size, offset)
    if len(data) != size:
        raise EmbedError(f"short read at byte {offset} (the disk is too small for a GPT).")
    return data


def read_gpt(disk: Path) -> GptTable:
    """The partitions of the primary GPT of `disk` (512- or 4096-byte sectors)."""
    fd = os.open(disk, os.O_RDONLY)
    try:
        for sector in (512, 4096):
            try:
                header = _read_at(fd, sector, 92)
            except EmbedError:
                continue
            if header[:8] == _GPT_SIGNATURE:
                return _parse_gpt(fd, header, sector, disk)
    finally:
        os.close(fd)
    raise EmbedError(
        f"{disk}: no GPT partition table found.",
        hint="partition the disk with a GPT label (the installer does) before installing GRUB",
    )


def _parse_gpt(fd: int, header: bytes, sector: int, disk: Path) -> GptTable:
    hsize = struct.unpack_from("<I", header, 12)[0]
    full = _read_at(fd, sector, hsize)
    crc = struct.unpack_from("<I", full, 16)[0]
    check = bytearray(full)
    check[16:20] = b"\0\0\0\0"
    if zlib.crc32(bytes(check)) != crc:
        raise EmbedError(f"{disk}: the primary GPT header checksum is wrong.")
    entries_lba, count, esize = struct.unpack_from("<QII", full, 72)
    table = _read_at(fd, entries_lba * sector, count * esize)
    parts = []
    for i in range(count):
        raw = table[i * esize : (i + 1) * esize]
        if raw[:16] == b"\0" * 16:
            continue
        first, last = struct.unpack_from("<QQ", raw, 32)
        name = raw[56:128].decode("utf-16-le", "replace").rstrip("\0")
        type_guid = str(uuid.UUID(bytes_le=raw[:16]))
        parts.append(GptPartition(i + 1, type_guid, first, last, name))
    return GptTable(sector, tuple(parts))


def patch_boot_img(mbr: bytes, boot_img: bytes, core_lba: int) -> bytes:
    """The new first sector: boot.img's code, the disk's own BPB area, signature and table."""
    if len(boot_img) != 512:
        raise EmbedError(f"boot.img is {len(boot_img)} bytes, expected 512.")
    new = bytearray(boot_img[:_MBR_CODE_END]) + bytearray(mbr[_MBR_CODE_END:512])
    new[_BPB_START:_BPB_END] = mbr[_BPB_START:_BPB_END]
    struct.pack_into("<Q", new, _KERNEL_SECTOR, core_lba)
    # NOP the "is the boot drive a floppy" probe: some BIOSes report disks with odd numbers.
    new[_BOOT_DRIVE_CHECK : _BOOT_DRIVE_CHECK + 2] = b"\x90\x90"
    return bytes(new)


def patch_core_img(core_img: bytes, core_lba: int) -> bytes:
    """core.img with its blocklist pointing at the sectors after its first one."""
    if len(core_img) < 512:
        raise EmbedError(f"core.img is {len(core_img)} bytes, expected at least 512.")
    core = bytearray(core_img)
    struct.pack_into("<Q", core, _BLOCKLIST_START, core_lba + 1)
    return bytes(core)


def embed_bios_grub(disk: Path, boot_img: bytes, core_img: bytes) -> GptPartition:
    """Write boot.img into the MBR of `disk` and core.img into its BIOS boot partition.

    The BIOS boot partition is found by its GPT type GUID. Returns it.
    """
    table = read_gpt(disk)
    if table.sector_size != 512:
        raise EmbedError(
            f"{disk}: {table.sector_size}-byte sectors; BIOS boot code needs 512-byte sectors.",
            hint="boot this disk with UEFI (firmware: efi)",
        )
    part = table.by_type(BIOS_BOOT_GUID)
    if part is None:
        raise EmbedError(
            f"{disk}: no BIOS boot partition (GPT type {BIOS_BOOT_GUID}).",
            hint="the installer creates one when firmware is bios or both",
        )
    if len(core_img) > part.sectors * 512:
        raise EmbedError(
            f"{disk}: core.img is {len(core_img)} bytes, the BIOS boot partition "
            f"{part.number} only {part.sectors * 512}.",
            hint="make the BIOS boot partition 1 MiB",
        )
    fd = os.open(disk, os.O_RDWR)
    try:
        mbr = _read_at(fd, 0, 512)
        new_mbr = patch_boot_img(mbr, boot_img, part.first_lba)
        core = patch_core_img(core_img, part.first_lba)
        # core.img first: a boot sector pointing at a stale core would hang the BIOS boot.
        os.pwrite(fd, core, part.first_lba * 512)
        os.fsync(fd)
        os.pwrite(fd, new_mbr, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return part
