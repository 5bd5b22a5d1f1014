"""install_grub for real on a loop-attached GPT disk image created here (never a host disk),
then the result read back with GRUB's own grub-fstest and byte comparisons."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from kairos.bootloader import grubcfg, grubenv
from kairos.bootloader.embed import patch_core_img
from kairos.bootloader.install import Firmware, install_grub, mkimage_argv, write_grub_options
from kairos.run import run, which

pytestmark = pytest.mark.integration

TOOLS = ("losetup", "sfdisk", "mkfs.vfat", "mkfs.ext4", "mksquashfs", "mount", "umount",
         "grub-mkimage", "grub-fstest", "mcopy")  # fmt: skip
GRUB_PC = Path("/usr/lib/grub/i386-pc")
MIB = 1 << 20
LAYOUT = """label: gpt
first-lba: 2048
start=2048, size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="bios"
size=40MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="efi"
size=16MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="oem"
size=60MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="state"
"""


@dataclass(frozen=True)
class Disk:
    image: Path
    device: str
    esp: Path
    esp_device: str
    oem: Path
    state: Path


def _boot_files(tmp: Path) -> Path:
    src = tmp / "sysroot"
    (src / "boot").mkdir(parents=True)
    (src / "boot/vmlinuz").write_bytes(b"dummy kernel " * 4096)
    (src / "boot/initrd").write_bytes(b"dummy initrd " * 4096)
    return src


def _kernel_has(fstype: str) -> bool:
    return any(
        ln.split()[-1] == fstype for ln in Path("/proc/filesystems").read_text().splitlines()
    )


def _sync_esp(disk: Disk) -> None:
    """Put the staged ESP files on the FAT partition (no-op when the ESP is mounted)."""
    if not disk.esp.is_mount():
        for item in disk.esp.iterdir():
            run(["mcopy", "-s", "-o", "-i", disk.esp_device, str(item), "::/"])
    run(["sync"])


def _attach(stack: ExitStack, image: Path, offset: int = 0, size: int = 0) -> str:
    argv = ["losetup", "--find", "--show"]
    if size:
        argv += ["--offset", str(offset), "--sizelimit", str(size)]
    attached = run([*argv, str(image)], check=False)
    if attached.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    stack.callback(run, ["losetup", "--detach", device], check=False)
    return device


def _mount(stack: ExitStack, dev: str, where: Path) -> Path:
    where.mkdir(parents=True)
    run(["mount", dev, str(where)])
    stack.callback(run, ["umount", str(where)], check=False)
    return where


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    missing = [t for t in TOOLS if which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no loop device support")
    image = tmp_path / "disk.img"
    with image.open("wb") as fh:
        fh.truncate(120 * MIB)
    run(["sfdisk", "-q", str(image)], input=LAYOUT)
    table = json.loads(run(["sfdisk", "--json", str(image)]).stdout)["partitiontable"]
    tag = secrets.token_hex(2).upper()
    with ExitStack() as stack:
        # The whole disk, and each partition as its own loop device at its offset: this
        # needs no partition device nodes (there is no udev to make them in containers).
        device = _attach(stack, image)
        parts = [
            _attach(stack, image, p["start"] * 512, p["size"] * 512) for p in table["partitions"]
        ]
        # Labels unique to this run: a stray search by label can never find a host disk.
        run(["mkfs.vfat", "-F", "32", "-n", f"KG{tag}", parts[1]])
        run(["mkfs.ext4", "-q", "-L", f"KO_{tag}", parts[2]])
        run(["mkfs.ext4", "-q", "-L", f"KS_{tag}", parts[3]])
        if _kernel_has("vfat"):
            esp = _mount(stack, parts[1], tmp_path / "mnt/esp")
        else:
            # No vfat driver in this kernel (some CI hosts): install_grub writes into a
            # staging directory, copied onto the FAT file system with mtools afterwards.
            esp = tmp_path / "esp-staging"
            esp.mkdir()
        oem = _mount(stack, parts[2], tmp_path / "mnt/oem")
        state = _mount(stack, parts[3], tmp_path / "mnt/state")
        (state / "cOS").mkdir()
        sysroot = _boot_files(tmp_path)
        for name in ("active.img", "passive.img"):
            run(["mksquashfs", str(sysroot), str(state / "cOS" / name), "-comp", "gzip",
                 "-noappend", "-quiet", "-no-progress"])  # fmt: skip
        yield Disk(image, device, esp, parts[1], oem, state)


def _fstest(image: Path, *args: str) -> str:
    return run(["grub-fstest", str(image), *args]).stdout


def test_install_grub_on_a_loop_disk(disk: Disk, tmp_path: Path) -> None:
    result = install_grub(
        Path(disk.device), disk.esp, disk.state, Path("/"), firmware=Firmware.BOTH
    )
    write_grub_options(disk.oem, {"extra_cmdline": "kairos.test=1", "default_fallback": "2"})
    assert result.bios_partition is not None and result.bios_partition.number == 1
    efi = (disk.esp / "EFI/BOOT/BOOTX64.EFI").read_bytes()
    assert efi[:2] == b"MZ"  # a PE image
    assert b"configfile ($root)/grub2/grub.cfg" in efi  # the early config is embedded
    _sync_esp(disk)

    # Read back through GRUB's own file system drivers, on the image file itself.
    img = disk.image
    # FAT is case-insensitive (mtools may store the 8.3 name in lower case)
    assert "bootx64.efi" in _fstest(img, "ls", "(loop0,gpt2)/EFI/BOOT/").lower()
    assert _fstest(img, "cat", "(loop0,gpt4)/grub2/grub.cfg") == grubcfg.render_menu()
    assert "linux.mod" in _fstest(img, "ls", "(loop0,gpt4)/grub2/i386-pc/")
    env = tmp_path / "grubenv-read-by-grub"
    run(["grub-fstest", str(img), "cp", "(loop0,gpt3)/grubenv", str(env)])
    assert env.stat().st_size == 1024
    assert grubenv.read(env) == {"extra_cmdline": "kairos.test=1", "default_fallback": "2"}
    # and GRUB's squash4 reads the kernel inside the system image
    active = tmp_path / "active.img"
    run(["grub-fstest", str(img), "cp", "(loop0,gpt4)/cOS/active.img", str(active)])
    kernel = tmp_path / "vmlinuz"
    run(["grub-fstest", str(active), "cp", "(loop0)/boot/vmlinuz", str(kernel)])
    assert kernel.read_bytes() == b"dummy kernel " * 4096

    # BIOS: boot.img in the MBR (keeping the partition table), core.img at the BIOS partition
    raw = img.read_bytes()
    boot_img = (GRUB_PC / "boot.img").read_bytes()
    assert raw[0x5A:0x5C] == boot_img[0x5A:0x5C]
    assert raw[0x68:0x1B8] == boot_img[0x68:0x1B8]
    assert int.from_bytes(raw[0x5C:0x64], "little") == 2048
    assert raw[0x1BE + 4] == 0xEE  # protective MBR entry still there
    diskboot = (GRUB_PC / "diskboot.img").read_bytes()
    core_sector = raw[2048 * 512 : 2049 * 512]
    assert core_sector[:0x1F4] == diskboot[:0x1F4]
    assert int.from_bytes(core_sector[0x1F4:0x1FC], "little") == 2049
    length = int.from_bytes(core_sector[0x1FC:0x1FE], "little")
    assert 0 < length < 2048  # core.img fits the 1 MiB partition
    # the very core.img grub-mkimage makes from these inputs (it is deterministic)
    early = tmp_path / "early.cfg"
    early.write_text(grubcfg.render_early())
    run(mkimage_argv("i386-pc", GRUB_PC, early, tmp_path / "core.img"))
    core = patch_core_img((tmp_path / "core.img").read_bytes(), 2048)
    assert length + 1 == -(-len(core) // 512)
    assert raw[2048 * 512 : 2048 * 512 + len(core)] == core


def test_bios_only_leaves_the_esp_empty(disk: Disk) -> None:
    install_grub(Path(disk.device), None, disk.state, Path("/"), firmware=Firmware.BIOS)
    assert list(disk.esp.iterdir()) == []
    assert (disk.state / "grub2/grub.cfg").is_file()
    assert not (disk.state / "grub2/x86_64-efi").exists()
