"""The raw GPT disk image (BIOS and UEFI bootable) and its qcow2 twin, made without loop
devices or mounts: sfdisk on the file, the ESP built as a file with mtools, `dd` into place,
and GRUB's BIOS code embedded by `grub.embed_bios_grub`.

Layout (until the installer provides the A/B one): p1 BIOS boot (1 MiB), p2 ESP `COS_GRUB`
with GRUB, kernel and initrd, p3 `COS_LIVE` holding the squashfs itself (dracut's
dmsquash-live boots a squashfs partition directly; it is found by its GPT name).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kairos.build.grub import (
    BIOS_GRUB_DIR,
    EFI_LABEL,
    LIVE_LABEL,
    embed_bios_grub,
    menu_cfg,
    mkimage_bios_argv,
    mkimage_efi_argv,
)
from kairos.run import run

SECTOR = 512
MIB = 1 << 20
ALIGN = MIB // SECTOR  # 2048 sectors
TOOLS = ("sfdisk", "mkfs.vfat", "mmd", "mcopy", "grub-mkimage", "dd")
PACKAGES = {
    "sfdisk": "fdisk", "mkfs.vfat": "dosfstools", "mmd": "mtools", "mcopy": "mtools",
    "grub-mkimage": "grub-common", "qemu-img": "qemu-utils",
}  # fmt: skip
BIOS_BOOT = "21686148-6449-6E6F-744E-656564454649"
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
LINUX_DATA = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"


@dataclass(frozen=True)
class Partition:
    name: str
    start: int  # sectors
    size: int  # sectors
    type_guid: str

    @property
    def end(self) -> int:
        return self.start + self.size


@dataclass(frozen=True)
class DiskPlan:
    partitions: tuple[Partition, ...]
    total_bytes: int

    def part(self, name: str) -> Partition:
        return next(p for p in self.partitions if p.name == name)

    def sfdisk_script(self) -> str:
        lines = ["label: gpt", f"first-lba: {ALIGN}"]
        for p in self.partitions:
            lines.append(f'start={p.start}, size={p.size}, type={p.type_guid}, name="{p.name}"')
        return "\n".join(lines) + "\n"


def _mib_ceil(nbytes: int) -> int:
    return -(-nbytes // MIB)


def plan_disk(boot_bytes: int, squashfs_bytes: int) -> DiskPlan:
    """Sizes from the payload: the ESP fits kernel+initrd with room for one more pair
    (upgrades of the boot files), the live partition fits the squashfs exactly."""
    esp_mib = max(64, 2 * _mib_ceil(boot_bytes) + 16)
    live_mib = _mib_ceil(squashfs_bytes) + 1
    parts = []
    start = ALIGN
    for name, mib, guid in (
        ("bios", 1, BIOS_BOOT),
        ("efi", esp_mib, ESP),
        (LIVE_LABEL, live_mib, LINUX_DATA),
    ):
        parts.append(Partition(name, start, mib * ALIGN, guid))
        start += mib * ALIGN
    # One MiB at the end for the backup GPT.
    return DiskPlan(tuple(parts), (start + ALIGN) * SECTOR)


def raw_grub_cfg(extra_cmdline: str = "") -> str:
    return menu_cfg(
        search=f"--label {EFI_LABEL}",
        root_spec=f"PARTLABEL={LIVE_LABEL}",
        extra_cmdline=extra_cmdline,
    )


def build_esp(
    esp: Path, size_sectors: int, work: Path, kernel: Path, initrd: Path, extra_cmdline: str
) -> None:
    if esp.exists():
        esp.unlink()
    run(["mkfs.vfat", "-F", "32", "-n", EFI_LABEL, "-C", str(esp), str(size_sectors // 2)])
    efi = work / "BOOTX64.EFI"
    run(mkimage_efi_argv(efi))
    cfg = work / "grub.cfg"
    cfg.write_text(raw_grub_cfg(extra_cmdline))
    img = ["-i", str(esp)]
    run(["mmd", *img, "::/EFI", "::/EFI/BOOT", "::/boot", "::/boot/grub"])
    run(["mcopy", *img, str(efi), "::/EFI/BOOT/BOOTX64.EFI"])
    run(["mcopy", *img, str(cfg), "::/boot/grub/grub.cfg"])
    run(["mcopy", *img, str(kernel.resolve()), "::/boot/kernel"])
    run(["mcopy", *img, str(initrd.resolve()), "::/boot/initrd"])


def dd_argv(src: Path, disk: Path, start_sector: int) -> list[str]:
    return [
        "dd", f"if={src}", f"of={disk}", "bs=4M", f"seek={start_sector * SECTOR}",
        "oflag=seek_bytes", "conv=notrunc,sparse", "status=none",
    ]  # fmt: skip


def make_raw(
    out: Path,
    work: Path,
    kernel: Path,
    initrd: Path,
    squashfs: Path,
    extra_cmdline: str = "",
) -> DiskPlan:
    boot_bytes = kernel.resolve().stat().st_size + initrd.stat().st_size
    plan = plan_disk(boot_bytes, squashfs.stat().st_size)
    if out.exists():
        out.unlink()
    with open(out, "wb") as fh:
        fh.truncate(plan.total_bytes)
    run(["sfdisk", "-q", str(out)], input=plan.sfdisk_script())
    esp_part = plan.part("efi")
    esp = work / "esp.img"
    build_esp(esp, esp_part.size, work, kernel, initrd, extra_cmdline)
    run(dd_argv(esp, out, esp_part.start))
    run(dd_argv(squashfs, out, plan.part(LIVE_LABEL).start))
    esp.unlink()
    install_bios_grub(out, work, plan)
    return plan


def install_bios_grub(disk: Path, work: Path, plan: DiskPlan) -> None:
    core = work / "core.img"
    esp_index = [p.name for p in plan.partitions].index("efi") + 1
    run(mkimage_bios_argv(core, f"(hd0,gpt{esp_index})/boot/grub"))
    boot_img = (BIOS_GRUB_DIR / "boot.img").read_bytes()
    embed_bios_grub(disk, boot_img, core.read_bytes(), plan.part("bios").start)


def qcow2_argv(raw: Path, out: Path) -> list[str]:
    return ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)]


def make_qcow2(raw: Path, out: Path) -> Path:
    if out.exists():
        out.unlink()
    run(qcow2_argv(raw, out))
    return out


def tools_for(formats: Sequence[str]) -> tuple[str, ...]:
    tools = list(TOOLS)
    if "qcow2" in formats:
        tools.append("qemu-img")
    return tuple(tools)
