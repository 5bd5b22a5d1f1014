"""Install GRUB on a node's disk for UEFI, BIOS or both (node-side: stdlib + `run` only).

The API the installer calls (it partitions, formats and MOUNTS; this module only writes):

    install_grub(disk, esp_dir, state_dir, image_root, *, firmware=Firmware.BOTH,
                 menu=MenuSettings()) -> InstalledGrub

- `disk`: the whole disk (block device or image file) holding a GPT with, for BIOS, a BIOS
  boot partition (type 21686148-...; found by its type GUID, never by index).
- `esp_dir`: the mounted COS_GRUB (vfat) file system, or None when firmware is bios.
  Receives `EFI/BOOT/BOOTX64.EFI`.
- `state_dir`: the mounted COS_STATE file system. Receives `grub2/grub.cfg` (the menu) and
  `grubmenu` when the image ships `/etc/kairos/branding/grubmenu.cfg`.
- `image_root`: the root file system whose GRUB modules are used
  (`<image_root>/usr/lib/grub/{x86_64-efi,i386-pc}`): `/` on a node, the mounted or unpacked
  system image otherwise.
- `firmware`: `efi`, `bios` or `both` (the default: one disk that boots either way).

`write_grub_options(oem_dir, options)` merges `install.grub_options` into
`<oem_dir>/grubenv` (the node's `/oem/grubenv`). Both raise KairosError subclasses before
writing anything when a module directory, tool or partition is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from kairos.bootloader import assessment, grubcfg, grubenv
from kairos.bootloader.embed import BIOS_BOOT_GUID, GptPartition, embed_bios_grub, read_gpt
from kairos.context import Context
from kairos.errors import KairosError
from kairos.run import require_tools, run

log = logging.getLogger("kairos.bootloader")

# Built into both core images, so the menu never needs `insmod` from a module directory.
# squash4 + loopback + the decompressors read the kernel inside the squashfs system images.
GRUB_MODULES = (
    "part_gpt", "part_msdos", "fat", "ext2", "squash4", "loopback", "gzio", "xzio", "lzopio",
    "normal", "linux", "search", "search_label", "search_fs_file", "search_fs_uuid",
    "configfile", "echo", "test", "true", "serial", "terminal", "loadenv", "regexp", "cat",
    "ls", "sleep", "reboot", "halt", "all_video",
)  # fmt: skip
BIOS_EXTRA_MODULES = ("biosdisk",)
EFI_TARGET = "x86_64-efi"
BIOS_TARGET = "i386-pc"
EFI_BOOT_PATH = Path("EFI/BOOT/BOOTX64.EFI")
BRANDING_MENU = Path("etc/kairos/branding/grubmenu.cfg")
_PACKAGES = {EFI_TARGET: "grub-efi-amd64-bin", BIOS_TARGET: "grub-pc-bin"}


class Firmware(StrEnum):
    EFI = "efi"
    BIOS = "bios"
    BOTH = "both"

    @property
    def wants_efi(self) -> bool:
        return self in (Firmware.EFI, Firmware.BOTH)

    @property
    def wants_bios(self) -> bool:
        return self in (Firmware.BIOS, Firmware.BOTH)


@dataclass(frozen=True)
class InstalledGrub:
    """What was written, for logs and tests."""

    efi_image: Path | None
    bios_partition: GptPartition | None
    menu: Path


def module_dir(image_root: Path, target: str) -> Path:
    return image_root / "usr/lib/grub" / target


def mkimage_argv(target: str, modules_dir: Path, early_cfg: Path, out: Path) -> list[str]:
    """grub-mkimage for one platform: modules built in, the early config embedded."""
    modules = [*GRUB_MODULES, *(BIOS_EXTRA_MODULES if target == BIOS_TARGET else ())]
    return [
        "grub-mkimage", "-O", target, "-d", str(modules_dir), "-c", str(early_cfg),
        "-p", grubcfg.GRUB_DIR, "-o", str(out), *modules,
    ]  # fmt: skip


def _targets(firmware: Firmware) -> tuple[tuple[str, bool], ...]:
    return ((EFI_TARGET, firmware.wants_efi), (BIOS_TARGET, firmware.wants_bios))


def check_inputs(
    disk: Path, esp_dir: Path | None, state_dir: Path, image_root: Path, firmware: Firmware
) -> list[str]:
    """Every reason the install cannot go ahead, as `where: what (hint)` lines."""
    problems = []
    targets = [t for t, on in _targets(firmware) if on]
    for target in targets:
        mdir = module_dir(image_root, target)
        if not (mdir / "linux.mod").is_file():
            problems.append(
                f"{mdir}: no GRUB modules for {target} (install {_PACKAGES[target]} in the image)"
            )
    if firmware.wants_bios and not (module_dir(image_root, BIOS_TARGET) / "boot.img").is_file():
        problems.append(f"{module_dir(image_root, BIOS_TARGET)}/boot.img: missing (grub-pc-bin)")
    if firmware.wants_efi and (esp_dir is None or not esp_dir.is_dir()):
        problems.append(f"{esp_dir}: the EFI system partition is not a mounted directory")
    if not state_dir.is_dir():
        problems.append(f"{state_dir}: the COS_STATE partition is not a mounted directory")
    if firmware.wants_bios:
        try:
            if read_gpt(disk).by_type(BIOS_BOOT_GUID) is None:
                problems.append(f"{disk}: no BIOS boot partition (needed for firmware bios/both)")
        except (KairosError, OSError) as exc:
            problems.append(f"{disk}: {exc}")
    return problems


def install_grub(
    disk: Path,
    esp_dir: Path | None,
    state_dir: Path,
    image_root: Path = Path("/"),
    *,
    firmware: Firmware = Firmware.BOTH,
    menu: grubcfg.MenuSettings = grubcfg.DEFAULT_MENU,
) -> InstalledGrub:
    """Make `disk` boot the Kairos menu on COS_STATE under the chosen firmware(s)."""
    problems = check_inputs(disk, esp_dir, state_dir, image_root, firmware)
    if problems:
        raise KairosError(
            "cannot install GRUB: " + "; ".join(problems) + ".",
            hint="the installer must partition and mount the disk first",
        )
    require_tools(["grub-mkimage"], package_hint={"grub-mkimage": "grub-common"})
    with (
        tempfile.TemporaryDirectory(prefix="kairos-grub-") as tmp,
        ThreadPoolExecutor(max_workers=3, thread_name_prefix="grub") as pool,
    ):
        work = Path(tmp)
        early = work / "early.cfg"
        early.write_text(grubcfg.render_early())
        menu_path = write_menu(state_dir, image_root, menu)
        # Three independent jobs, side by side: each writes its own place (COS_STATE's
        # grub2/<platform>/, the ESP's BOOTX64.EFI, the disk's BIOS boot partition and MBR)
        # and only reads the image's module directories. Their time is two grub-mkimage
        # processes (i386-pc LZMA-compresses its core image) and reading some 600 small
        # module files out of the squashfs image, which overlap well on two or more CPUs.
        copied = pool.submit(copy_modules, image_root, state_dir, _wanted(firmware))
        efi = None
        if firmware.wants_efi and esp_dir is not None:
            efi = pool.submit(install_efi, esp_dir, image_root, early, work)
        bios = None
        if firmware.wants_bios:
            bios = pool.submit(install_bios, disk, image_root, early, work)
        # Every job ends before the pool closes; the first failure is the one raised.
        copied.result()
        efi_image = efi.result() if efi is not None else None
        bios_part = bios.result() if bios is not None else None
    return InstalledGrub(efi_image, bios_part, menu_path)


def _wanted(firmware: Firmware) -> list[str]:
    return [t for t, on in _targets(firmware) if on]


def write_menu(state_dir: Path, image_root: Path, menu: grubcfg.MenuSettings) -> Path:
    """`grub2/grub.cfg` on COS_STATE, the image's branding menu as `/grubmenu`, and empty
    `/grub_oem_env`, `/grubcustom`, `/grubmenu`, `/boot_assessment` when absent: the menu
    looks them up with `search --file` at every boot, and GRUB prints an error for each one
    it cannot find."""
    path = state_dir / grubcfg.CFG_PATH.lstrip("/")
    write_atomic(path, grubcfg.render_menu(menu).encode())
    branding = image_root / BRANDING_MENU
    menu_file = state_dir / grubcfg.MENU_FILE.lstrip("/")
    if branding.is_file():
        write_atomic(menu_file, branding.read_bytes())
    elif not menu_file.exists():
        write_atomic(menu_file, b"# Extra Kairos menu entries go here.\n")
    custom = state_dir / grubcfg.CUSTOM_FILE.lstrip("/")
    if not custom.exists():
        write_atomic(custom, b"# Kairos boot hooks (boot assessment) are added here.\n")
    oem_env = state_dir / grubcfg.OEM_ENV_FILE.lstrip("/")
    if not oem_env.exists():
        grubenv.write(oem_env, {})
    # The boot assessment block the menu searches for; empty means no system on trial.
    trial = assessment.path_in(state_dir)
    if not trial.exists():
        grubenv.write(trial, {})
    log.info("wrote the GRUB menu %s", path)
    return path


def install_efi(esp_dir: Path, image_root: Path, early: Path, work: Path) -> Path:
    out = work / "BOOTX64.EFI"
    run(mkimage_argv(EFI_TARGET, module_dir(image_root, EFI_TARGET), early, out))
    dest = esp_dir / EFI_BOOT_PATH
    write_atomic(dest, out.read_bytes())
    log.info("wrote %s", dest)
    return dest


def install_bios(disk: Path, image_root: Path, early: Path, work: Path) -> GptPartition:
    out = work / "core.img"
    mdir = module_dir(image_root, BIOS_TARGET)
    run(mkimage_argv(BIOS_TARGET, mdir, early, out))
    part = embed_bios_grub(disk, (mdir / "boot.img").read_bytes(), out.read_bytes())
    log.info("embedded GRUB's BIOS boot code in %s (partition %d)", disk, part.number)
    return part


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same directory, fsync, rename: never a half-written boot file.

    vfat has no atomic rename-over on every kernel, but a rename there is still one
    directory update, far less exposed than rewriting the file in place.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_grub_options(oem_dir: Path, options: Mapping[str, object]) -> dict[str, str]:
    """Merge `install.grub_options` into `<oem_dir>/grubenv`; returns the whole env.

    Values are written as strings (YAML may hand us numbers or booleans); an empty value
    removes the variable, as with `kairos-agent grubedit`.
    """
    values = {str(k): _as_text(v) for k, v in options.items()}
    problems = [f"grub_options.{k}: {why}" for k in values if (why := grubenv.check_name(k))]
    if problems:
        raise KairosError("invalid grub_options: " + "; ".join(problems) + ".")
    return grubenv.update(oem_dir / grubcfg.ENV_FILE.lstrip("/"), values)


def apply_grub_options(ctx: Context, options: Mapping[str, object]) -> dict[str, str]:
    """Root-level `grub_options` on a running node (or under `--root`): `/oem/grubenv`."""
    return write_grub_options(ctx.path("/oem"), options)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def copy_modules(image_root: Path, state_dir: Path, targets: Sequence[str]) -> None:
    """Copy GRUB's modules (`*.mod` and the `*.lst` indexes, about 2 MB per platform) next
    to the menu, for `insmod` of modules that are not built in (custom menus may want them).
    Only those files: the directories also hold 15 MB of signed monolithic images."""
    for target in targets:
        src = module_dir(image_root, target)
        dest = state_dir / grubcfg.GRUB_DIR.lstrip("/") / target
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for item in sorted(src.iterdir()):
            if item.suffix in (".mod", ".lst") and item.is_file():
                shutil.copyfile(item, dest / item.name)
