"""GRUB as installed by `install_grub` boots a real kernel from inside squashfs system images,
under SeaBIOS and OVMF, honouring /oem/grubenv (one-shot next_entry, extra cmdlines).

The disk is made without loop devices or mounts: sfdisk on a file, install_grub writing into
staging directories (and embedding the BIOS code into the file), file systems built from those
directories (mkfs.ext4 -d, mkfs.vfat + mcopy) and copied into place. The initrd is a dummy: the
test ends when the kernel has printed its command line.

Images: active.img gzip, passive.img xz, recovery.img lzo, so the boots also show which
squashfs compressions GRUB reads (zstd and lz4 it does not: see test_bootloader_squashfs).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kairos.bootloader import assessment, grubenv
from kairos.bootloader.embed import read_gpt
from kairos.bootloader.install import Firmware, install_grub, write_grub_options
from kairos.run import run, which
from kairos.vm.qemu import Firmware as VMFirmware
from kairos.vm.qemu import Machine

from .conftest import TIMINGS

pytestmark = pytest.mark.vm

MIB = 1 << 20
TOOLS = ("sfdisk", "mkfs.vfat", "mcopy", "mkfs.ext4", "mksquashfs", "grub-mkimage", "grub-fstest")
LAYOUT = """label: gpt
first-lba: 2048
start=2048, size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="bios"
size=40MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="efi"
size=16MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="oem"
size=40MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="recovery"
size=60MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="state"
"""
TOTAL_MIB = 160
# GPT partition number -> (label, file system)
PARTS = {2: ("COS_GRUB", "vfat"), 3: ("COS_OEM", "ext4"), 4: ("COS_RECOVERY", "ext4"),
         5: ("COS_STATE", "ext4")}  # fmt: skip
IMAGES = {("state", "active.img"): "gzip", ("state", "passive.img"): "xz",
          ("recovery", "recovery.img"): "lzo"}  # fmt: skip
CMDLINE_RE = r"Command line: (?P<cmdline>.*)$"


def _kernel() -> Path | None:
    """A real distribution kernel: the builder's cached rootfs, else the host's."""
    for pattern in ("/var/cache/kairos-py/rootfs-*/boot/vmlinuz-*", "/boot/vmlinuz-*"):
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return found[-1]
    return None


@dataclass(frozen=True)
class SmokeDisk:
    path: Path
    oem_offset: int  # bytes


def _place(disk: Path, fs_image: Path, start_sector: int) -> None:
    with open(fs_image, "rb") as src, open(disk, "r+b") as dst:
        dst.seek(start_sector * 512)
        shutil.copyfileobj(src, dst, 4 * MIB)


def build_disk(
    work: Path,
    kernel: Path,
    env: dict[str, str],
    missing: frozenset[str] = frozenset(),
    state_files: Callable[[Path], None] | None = None,
) -> SmokeDisk:
    disk = work / "disk.raw"
    with open(disk, "wb") as fh:
        fh.truncate(TOTAL_MIB * MIB)
    run(["sfdisk", "-q", str(disk)], input=LAYOUT)
    table = {p.number: p for p in read_gpt(disk).partitions}
    stage = {name: work / name for name in ("esp", "oem", "state", "recovery", "sysroot")}
    for d in stage.values():
        d.mkdir()
    (stage["sysroot"] / "boot").mkdir()
    shutil.copyfile(kernel, stage["sysroot"] / "boot/vmlinuz")
    (stage["sysroot"] / "boot/initrd").write_bytes(b"not an initramfs\n" * 64)
    for (where, name), comp in IMAGES.items():
        (stage[where] / "cOS").mkdir(exist_ok=True)
        if name in missing:
            continue
        run(["mksquashfs", str(stage["sysroot"]), str(stage[where] / "cOS" / name), "-comp",
             comp, "-noappend", "-quiet", "-no-progress"])  # fmt: skip

    install_grub(disk, stage["esp"], stage["state"], Path("/"), firmware=Firmware.BOTH)
    write_grub_options(stage["oem"], env)
    if state_files is not None:
        state_files(stage["state"])

    for number, (label, fs) in PARTS.items():
        part = table[number]
        img = work / f"p{number}.img"
        if fs == "vfat":
            run(["mkfs.vfat", "-F", "32", "-n", label, "-C", str(img), str(part.sectors // 2)])
            for item in stage["esp"].iterdir():
                run(["mcopy", "-s", "-i", str(img), str(item), "::/"])
        else:
            src = {"COS_OEM": "oem", "COS_RECOVERY": "recovery", "COS_STATE": "state"}[label]
            run(["mkfs.ext4", "-q", "-L", label, "-d", str(stage[src]), str(img),
                 f"{part.sectors // 2}k"])  # fmt: skip
        _place(disk, img, part.first_lba)
        img.unlink()
    return SmokeDisk(disk, table[3].first_lba * 512)


def oem_env(disk: SmokeDisk, work: Path, path: str = "(loop0,gpt3)/grubenv") -> dict[str, str]:
    """/oem/grubenv (or another env file) as GRUB left it on the disk, read with GRUB's own
    ext2 driver."""
    out = work / "grubenv.after"
    out.unlink(missing_ok=True)
    run(["grub-fstest", str(disk.path), "cp", path, str(out)])
    return grubenv.read(out)


@pytest.fixture
def smoke_disk(tmp_path: Path) -> Iterator[Callable[..., SmokeDisk]]:
    missing = [t for t in TOOLS if which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    kernel = _kernel()
    if kernel is None:
        pytest.skip("no kernel in /var/cache/kairos-py/rootfs-*/boot or /boot")

    def make(
        env: dict[str, str],
        missing: frozenset[str] = frozenset(),
        state_files: Callable[[Path], None] | None = None,
    ) -> SmokeDisk:
        return build_disk(tmp_path, kernel, env, missing, state_files)

    yield make


def _boot_cmdline(vm: Machine, what: str) -> list[str]:
    vm.wait_for(r"Kairos \(fallback\)", timeout=240)  # the menu, display_name expanded
    vm.wait_for(r"Linux version", timeout=300)
    TIMINGS.append((f"{what}: firmware + GRUB to 'Linux version'", vm.uptime()))
    words = vm.wait_for(CMDLINE_RE, timeout=60).group("cmdline").split()
    return words


def _expect_entry(words: list[str], root: str, image: str, role_extra: str | None) -> None:
    assert f"root=LABEL={root}" in words
    assert f"cos-img/filename={image}" in words
    assert "console=ttyS0,115200" in words and "rd.cos.oemlabel=COS_OEM" in words
    assert "kairos.grubtest=1" in words  # extra_cmdline from /oem/grubenv
    if role_extra:
        assert words[-1] == role_extra  # extra_<role>_cmdline comes last
        assert words.index("kairos.grubtest=1") < words.index(role_extra)


@pytest.mark.parametrize(
    ("firmware", "once", "root", "image", "extra"),
    [
        (VMFirmware.BIOS, "fallback", "COS_PASSIVE", "/cOS/passive.img", "kairos.passive=1"),
        (VMFirmware.UEFI, "recovery", "COS_SYSTEM", "/cOS/recovery.img", "kairos.recovery=1"),
    ],
)
def test_grub_boots_kernel_from_squashfs_and_next_entry_is_one_shot(
    smoke_disk: Callable[..., SmokeDisk],
    start_vm: Callable[..., Machine],
    tmp_path: Path,
    firmware: VMFirmware,
    once: str,
    root: str,
    image: str,
    extra: str,
) -> None:
    disk = smoke_disk(
        {
            "next_entry": once,
            "extra_cmdline": "kairos.grubtest=1",
            "extra_passive_cmdline": "kairos.passive=1",
            "extra_recovery_cmdline": "kairos.recovery=1",
            "extra_active_cmdline": "kairos.active=1",
        }
    )
    # persist: GRUB's save_env must reach the disk file to clear next_entry.
    vm = start_vm(disk.path, firmware=firmware, memory_mib=512, cpus=1, persist=True)
    words = _boot_cmdline(vm, f"{firmware} {once}")
    _expect_entry(words, root, image, extra)
    assert "error: no such device" not in vm.console()  # every searched file exists
    vm.close()
    after = oem_env(disk, tmp_path)
    assert after["next_entry"] == ""  # consumed by GRUB itself (save_env keeps it, empty)
    assert after["extra_cmdline"] == "kairos.grubtest=1"

    vm = start_vm(disk.path, firmware=firmware, memory_mib=512, cpus=1, persist=True)
    words = _boot_cmdline(vm, f"{firmware} default")
    _expect_entry(words, "COS_ACTIVE", "/cOS/active.img", "kairos.active=1")
    assert re.search(r"BOOT_IMAGE=\(loop0\)/boot/vmlinuz", " ".join(words))


def test_missing_active_image_falls_back_to_passive(
    smoke_disk: Callable[..., SmokeDisk], start_vm: Callable[..., Machine]
) -> None:
    """GRUB's own fallback chain (default_fallback unset: "1 2"): cos cannot load, so the
    passive entry boots without anyone touching the menu."""
    disk = smoke_disk({"extra_cmdline": "kairos.grubtest=1"}, missing=frozenset({"active.img"}))
    vm = start_vm(disk.path, firmware=VMFirmware.BIOS, memory_mib=512, cpus=1)
    vm.wait_for(r"Falling back to", timeout=300)
    words = _boot_cmdline(vm, "bios fallback chain")
    _expect_entry(words, "COS_PASSIVE", "/cOS/passive.img", None)


def test_boot_assessment_counts_down_then_falls_back_to_passive_then_recovery(
    smoke_disk: Callable[..., SmokeDisk], start_vm: Callable[..., Machine], tmp_path: Path
) -> None:
    """The trial an upgrade arms, run by GRUB itself: one try for the new active image (the
    kernel here has no usable initrd, so no boot reaches the health point), then one for
    passive, then recovery; each step saved by GRUB's save_env on COS_STATE."""
    disk = smoke_disk(
        {"extra_cmdline": "kairos.grubtest=1"},
        state_files=lambda state: assessment.arm(state, "v9", "v8", tries=1),
    )
    env_path = "(loop0,gpt5)" + assessment.ENV_FILE
    expected = [
        ("COS_ACTIVE", f"{assessment.TRIAL_WORD}=trying", "trying"),
        ("COS_PASSIVE", f"{assessment.TRIAL_WORD}=fallback", "failed"),
        ("COS_SYSTEM", assessment.FAILURE_WORD, "recovery"),
        ("COS_SYSTEM", assessment.FAILURE_WORD, "recovery"),  # stays there
    ]
    for n, (root, word, state_after) in enumerate(expected):
        vm = start_vm(disk.path, firmware=VMFirmware.BIOS, memory_mib=512, cpus=1, persist=True)
        words = _boot_cmdline(vm, f"boot assessment boot {n + 1}")
        vm.close()
        assert f"root=LABEL={root}" in words, words
        assert word in words, words
        if root == "COS_PASSIVE":
            assert assessment.FAILURE_WORD in words
        env = oem_env(disk, tmp_path, env_path)
        assert env["ba_state"] == state_after, env
        assert env["ba_tries"] == "0"
        assert env["ba_version"] == "v9"  # GRUB rewrote only ba_state and ba_tries


def test_corrupt_active_and_passive_fall_back_to_recovery(
    smoke_disk: Callable[..., SmokeDisk], start_vm: Callable[..., Machine]
) -> None:
    """Images that exist but are garbage: GRUB's loopback succeeds and the kernel cannot be
    read, so the fallback entries run in the same GRUB session (each with its own loop
    device) down to recovery."""

    def corrupt(state: Path) -> None:
        for name in ("active.img", "passive.img"):
            (state / "cOS" / name).write_bytes(b"\xff" * (1 << 20))

    disk = smoke_disk({"extra_cmdline": "kairos.grubtest=1"}, state_files=corrupt)
    vm = start_vm(disk.path, firmware=VMFirmware.BIOS, memory_mib=512, cpus=1)
    vm.wait_for(r"Falling back to .Kairos recovery", timeout=300)
    words = vm.wait_for(CMDLINE_RE, timeout=300).group("cmdline").split()
    TIMINGS.append(("bios corrupt images: firmware + GRUB to recovery kernel", vm.uptime()))
    _expect_entry(words, "COS_SYSTEM", "/cOS/recovery.img", None)
    assert "BOOT_IMAGE=(loop2)/boot/vmlinuz" in words
