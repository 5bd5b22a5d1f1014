"""GRUB menu text and the BIOS boot-code embedder."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from kairos.build import grub
from kairos.build.iso import iso_grub_cfg, mkrescue_argv
from kairos.build.raw import raw_grub_cfg
from kairos.errors import KairosError


def test_iso_menu_has_upstream_entries_all_live_and_serial() -> None:
    cfg = iso_grub_cfg()
    titles = [ln.split('"')[1] for ln in cfg.splitlines() if ln.startswith("menuentry")]
    assert titles[:2] == ["Kairos", "Kairos (manual)"]
    assert "Kairos (remote recovery mode)" in titles
    linux_lines = [ln.strip() for ln in cfg.splitlines() if ln.strip().startswith("linux ")]
    assert len(linux_lines) == len(titles)
    for line in linux_lines:
        words = line.split()
        assert words[1] == "($root)/boot/kernel"
        for w in (
            "root=live:CDLABEL=COS_LIVE",
            "rd.live.dir=/",
            "rd.live.squashimg=rootfs.squashfs",
            "console=tty1",
            "console=ttyS0,115200",
            "rd.cos.disable",
        ):
            assert w in words
    assert "initrd ($root)/boot/initrd" in cfg
    assert "terminal_output serial console" in cfg
    assert "search --no-floppy --set=root --label COS_LIVE" in cfg
    timeout = next(ln for ln in cfg.splitlines() if ln.startswith("set timeout="))
    assert int(timeout.split("=")[1]) <= 5


def test_extra_cmdline_lands_on_every_entry() -> None:
    cfg = iso_grub_cfg("kairos.test.marker=1")
    linux_lines = [ln for ln in cfg.splitlines() if ln.strip().startswith("linux ")]
    assert all(ln.endswith("kairos.test.marker=1") for ln in linux_lines)


def test_raw_menu_boots_the_squashfs_partition_by_gpt_name() -> None:
    cfg = raw_grub_cfg()
    assert "--label COS_GRUB" in cfg
    assert "root=live:PARTLABEL=COS_LIVE" in cfg


def test_mkrescue_sets_volume_label(tmp_path: Path) -> None:
    argv = mkrescue_argv(tmp_path / "tree", tmp_path / "k.iso")
    assert argv[0] == "grub-mkrescue"
    assert argv[-2:] == ["-volid", "COS_LIVE"]


def test_mkimage_argv_has_needed_modules(tmp_path: Path) -> None:
    efi = grub.mkimage_efi_argv(tmp_path / "x.efi")
    bios = grub.mkimage_bios_argv(tmp_path / "core.img", "(hd0,gpt2)/boot/grub")
    assert efi[efi.index("-O") + 1] == "x86_64-efi"
    assert bios[bios.index("-p") + 1] == "(hd0,gpt2)/boot/grub"
    for mod in ("part_gpt", "fat", "linux", "search_label", "serial", "normal"):
        assert mod in efi and mod in bios
    assert "biosdisk" in bios and "biosdisk" not in efi


def _disk(tmp_path: Path) -> Path:
    disk = tmp_path / "disk.img"
    mbr = bytearray(512)
    mbr[0x03:0x5A] = b"B" * (0x5A - 0x03)  # a BPB area to keep
    mbr[0x1B8:0x1BC] = b"SIGN"
    mbr[0x1BE] = 0x00
    mbr[0x1C2] = 0xEE  # protective GPT entry
    mbr[0x1FE:0x200] = b"\x55\xaa"
    disk.write_bytes(bytes(mbr) + bytes(4 * 1024 * 1024))
    return disk


def test_embed_bios_grub_patches_mbr_and_core(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    boot = bytes(range(256)) * 2
    core = bytearray(b"\xc0" * 2048)
    grub.embed_bios_grub(disk, boot, bytes(core), 2048)
    data = disk.read_bytes()
    mbr = data[:512]
    # boot code copied, BPB kept, table and signature kept
    assert mbr[:3] == boot[:3]
    assert mbr[0x03:0x5A] == b"B" * (0x5A - 0x03)
    assert mbr[0x5A:0x5C] == boot[0x5A:0x5C]
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == 2048
    assert mbr[0x66:0x68] == b"\x90\x90"
    assert mbr[0x1B8:0x1BC] == b"SIGN" and mbr[0x1C2] == 0xEE and mbr[0x1FE:] == b"\x55\xaa"
    written = data[2048 * 512 : 2048 * 512 + 2048]
    assert struct.unpack_from("<Q", written, 0x1F4)[0] == 2049
    assert written[:0x1F4] == bytes(core[:0x1F4])
    assert written[0x1FC:] == bytes(core[0x1FC:])


def test_embed_rejects_bad_boot_img(tmp_path: Path) -> None:
    disk = _disk(tmp_path)
    with pytest.raises(KairosError, match=r"boot\.img"):
        grub.embed_bios_grub(disk, b"x" * 100, b"y" * 1024, 2048)
