"""The pure-Python BIOS embedder and GPT reader, on small image files partitioned by sfdisk."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from kairos.bootloader import embed
from kairos.run import run, which

pytestmark = pytest.mark.skipif(which("sfdisk") is None, reason="sfdisk missing")
BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")
MIB = 1 << 20


def _disk(path: Path, script: str, size_mib: int = 8) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size_mib * MIB)
    run(["sfdisk", "-q", str(path)], input=script)
    return path


GPT_WITH_BIOS = """label: gpt
first-lba: 2048
start=2048, size=2048, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="efi"
start=4096, size=2048, type=21686148-6449-6E6F-744E-656564454649, name="bios"
start=6144, size=8192, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="state"
"""


def _fake_core(sectors: int) -> bytes:
    """A core.img shape: sector 0 is diskboot (blocklist near its end), the rest the kernel."""
    core = bytearray(b"\xcc" * (512 * sectors))
    core[0x1F4:0x1FC] = b"\0" * 8
    for i in range(1, sectors):
        core[i * 512 : i * 512 + 4] = struct.pack("<I", i)
    return bytes(core)


def test_gpt_reader_agrees_with_sfdisk(tmp_path: Path, allow_commands: None) -> None:
    disk = _disk(tmp_path / "d.img", GPT_WITH_BIOS)
    table = embed.read_gpt(disk)
    dump = json.loads(run(["sfdisk", "--json", str(disk)]).stdout)["partitiontable"]
    assert table.sector_size == 512
    assert [(p.first_lba, p.sectors, p.type_guid.upper(), p.name) for p in table.partitions] == [
        (p["start"], p["size"], p["type"], p["name"]) for p in dump["partitions"]
    ]
    assert [p.number for p in table.partitions] == [1, 2, 3]
    bios = table.by_type(embed.BIOS_BOOT_GUID)
    assert bios is not None and bios.number == 2 and bios.first_lba == 4096


@pytest.mark.skipif(not BOOT_IMG.is_file(), reason="grub-pc-bin missing")
def test_embed_finds_bios_partition_by_type_and_patches(
    tmp_path: Path, allow_commands: None
) -> None:
    disk = _disk(tmp_path / "d.img", GPT_WITH_BIOS)
    before = disk.read_bytes()
    boot = BOOT_IMG.read_bytes()
    core = _fake_core(5)
    part = embed.embed_bios_grub(disk, boot, core)
    assert part.number == 2
    after = disk.read_bytes()
    mbr = after[:512]
    # boot.img code, but the disk's BPB area, signature and protective MBR table kept
    assert mbr[:3] == boot[:3]
    assert mbr[0x5A:0x5C] == boot[0x5A:0x5C]
    assert mbr[0x03:0x5A] == before[0x03:0x5A]
    assert mbr[0x1B8:] == before[0x1B8:512]
    assert mbr[0x1FE:] == b"\x55\xaa"
    assert struct.unpack_from("<Q", mbr, 0x5C)[0] == 4096
    assert mbr[0x66:0x68] == b"\x90\x90"
    assert mbr[0x68:0x1B8] == boot[0x68:0x1B8]
    # core.img at the partition start, blocklist pointing at the next sector
    written = after[4096 * 512 : 4096 * 512 + len(core)]
    assert struct.unpack_from("<Q", written, 0x1F4)[0] == 4097
    assert written[512:] == core[512:]
    # the GPT itself and the other partitions are untouched
    assert after[512 : 4096 * 512] == before[512 : 4096 * 512]
    assert after[4096 * 512 + len(core) :] == before[4096 * 512 + len(core) :]
    # still a valid table for sfdisk
    assert (
        len(json.loads(run(["sfdisk", "--json", str(disk)]).stdout)["partitiontable"]["partitions"])
        == 3
    )


def test_no_bios_partition_is_an_error_and_writes_nothing(
    tmp_path: Path, allow_commands: None
) -> None:
    disk = _disk(
        tmp_path / "d.img",
        "label: gpt\nstart=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B\n",
    )
    before = disk.read_bytes()
    with pytest.raises(embed.EmbedError, match="no BIOS boot partition") as err:
        embed.embed_bios_grub(disk, b"\0" * 512, _fake_core(2))
    assert err.value.hint
    assert disk.read_bytes() == before


def test_core_too_big_for_the_partition(tmp_path: Path, allow_commands: None) -> None:
    disk = _disk(
        tmp_path / "d.img",
        "label: gpt\nstart=2048, size=8, type=21686148-6449-6E6F-744E-656564454649\n",
    )
    with pytest.raises(embed.EmbedError, match="only 4096"):
        embed.embed_bios_grub(disk, b"\0" * 512, _fake_core(9))


def test_msdos_label_is_not_a_gpt(tmp_path: Path, allow_commands: None) -> None:
    disk = _disk(tmp_path / "d.img", "label: dos\nstart=2048, size=4096, type=83\n")
    with pytest.raises(embed.EmbedError, match="no GPT"):
        embed.read_gpt(disk)


def test_corrupt_gpt_header_is_detected(tmp_path: Path, allow_commands: None) -> None:
    disk = _disk(tmp_path / "d.img", GPT_WITH_BIOS)
    with open(disk, "r+b") as fh:
        fh.seek(512 + 40)
        fh.write(b"\xff")
    with pytest.raises(embed.EmbedError, match="checksum"):
        embed.read_gpt(disk)


def test_bad_image_sizes() -> None:
    with pytest.raises(embed.EmbedError, match=r"boot\.img is 10 bytes"):
        embed.patch_boot_img(b"\0" * 512, b"\0" * 10, 1)
    with pytest.raises(embed.EmbedError, match=r"core\.img is 10 bytes"):
        embed.patch_core_img(b"\0" * 10, 1)
