"""install_grub with the runner recorded: exact grub-mkimage argv and what lands where."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from kairos.bootloader import grubcfg, grubenv
from kairos.bootloader.install import (
    GRUB_MODULES,
    Firmware,
    apply_grub_options,
    install_grub,
    mkimage_argv,
    write_grub_options,
)
from kairos.errors import KairosError

MIB = 1 << 20
HOST_BOOT_IMG = Path("/usr/lib/grub/i386-pc/boot.img")
LAYOUT = """label: gpt
first-lba: 2048
start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649, name="bios"
start=4096, size=8192, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="efi"
"""


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    for target in ("i386-pc", "x86_64-efi"):
        d = root / "usr/lib/grub" / target
        d.mkdir(parents=True)
        (d / "linux.mod").write_bytes(b"mod")
        (d / "command.lst").write_bytes(b"linux: linux")
        (d / "monolithic.efi").write_bytes(b"big signed image")
    boot = HOST_BOOT_IMG.read_bytes() if HOST_BOOT_IMG.is_file() else b"\xeb" + b"\0" * 511
    (root / "usr/lib/grub/i386-pc/boot.img").write_bytes(boot)
    return root


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    if shutil.which("sfdisk") is None:
        pytest.skip("sfdisk missing")
    path = tmp_path / "disk.img"
    with open(path, "wb") as fh:
        fh.truncate(8 * MIB)
    # Direct call: the runner is replaced by the recorder in these tests.
    subprocess.run(["sfdisk", "-q", str(path)], input=LAYOUT, text=True, check=True)
    return path


@pytest.fixture
def mkimage(
    recorded_commands: list[tuple[str, ...]], monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, ...]]:
    """The recorder, plus a fake output file where grub-mkimage's -o points."""
    import kairos.run

    recorder = kairos.run._spawn

    def fake(argv: Sequence[str], **kw: Any) -> tuple[int, bytes, bytes]:
        result = recorder(argv, **kw)
        out = Path(argv[list(argv).index("-o") + 1])
        target = argv[list(argv).index("-O") + 1]
        # a core.img needs >= 1 sector; 3 sectors stands for diskboot + kernel
        out.write_bytes(f"{target}-image".encode().ljust(3 * 512, b"\0"))
        return result

    monkeypatch.setattr(kairos.run, "_spawn", fake)
    return recorded_commands


def test_mkimage_argv_is_exact(tmp_path: Path) -> None:
    mods = tmp_path / "x86_64-efi"
    assert mkimage_argv("x86_64-efi", mods, tmp_path / "early.cfg", tmp_path / "B.EFI") == [
        "grub-mkimage", "-O", "x86_64-efi", "-d", str(mods), "-c", str(tmp_path / "early.cfg"),
        "-p", "/grub2", "-o", str(tmp_path / "B.EFI"), *GRUB_MODULES,
    ]  # fmt: skip
    bios = mkimage_argv("i386-pc", mods, tmp_path / "e", tmp_path / "core.img")
    assert bios[-len(GRUB_MODULES) - 1 :] == [*GRUB_MODULES, "biosdisk"]


def test_modules_cover_squashfs_loopback_and_env() -> None:
    for mod in (
        "squash4", "loopback", "gzio", "xzio", "lzopio", "part_gpt", "fat", "ext2", "normal",
        "linux", "search", "search_label", "configfile", "echo", "test", "serial", "terminal",
        "loadenv", "regexp", "cat",
    ):  # fmt: skip
        assert mod in GRUB_MODULES


def test_install_both(
    tmp_path: Path, image_root: Path, disk: Path, mkimage: list[tuple[str, ...]]
) -> None:
    esp, state = tmp_path / "esp", tmp_path / "state"
    esp.mkdir()
    state.mkdir()
    result = install_grub(disk, esp, state, image_root, firmware=Firmware.BOTH)
    # Both images are made side by side: any order.
    calls = sorted(mkimage, key=lambda c: c[2], reverse=True)
    assert [c[:3] for c in calls] == [
        ("grub-mkimage", "-O", "x86_64-efi"),
        ("grub-mkimage", "-O", "i386-pc"),
    ]
    for call, target in zip(calls, ("x86_64-efi", "i386-pc"), strict=True):
        assert call[call.index("-d") + 1] == str(image_root / "usr/lib/grub" / target)
        assert call[call.index("-c") + 1].endswith("/early.cfg")
        assert call[call.index("-p") + 1] == "/grub2"
    efi = esp / "EFI/BOOT/BOOTX64.EFI"
    assert result.efi_image == efi
    assert efi.read_bytes().startswith(b"x86_64-efi-image")
    assert (state / "grub2/grub.cfg").read_text() == grubcfg.render_menu()
    assert result.menu == state / "grub2/grub.cfg"
    # every file the menu looks up with `search --file` exists, so GRUB prints no errors
    assert grubenv.read(state / "grub_oem_env") == {}
    assert (state / "grub_oem_env").stat().st_size == 1024
    assert (state / "grubcustom").read_text().startswith("#")
    assert (state / "grubmenu").read_text().startswith("#")
    assert grubenv.read(state / "boot_assessment") == {}  # no system on trial
    # modules beside the menu, for insmod from custom menus
    assert (state / "grub2/i386-pc/linux.mod").is_file()
    assert sorted(p.name for p in (state / "grub2/x86_64-efi").iterdir()) == [
        "command.lst",
        "linux.mod",
    ]
    # BIOS: core.img at the BIOS boot partition, found by type (it is partition 1 here)
    assert result.bios_partition is not None and result.bios_partition.number == 1
    data = disk.read_bytes()
    assert data[2048 * 512 : 2048 * 512 + 13] == b"i386-pc-image"
    assert data[0x1FE:0x200] == b"\x55\xaa"
    assert list(esp.iterdir()) == [esp / "EFI"]  # no temp files left on the ESP


def test_install_efi_only_leaves_the_disk_alone(
    tmp_path: Path, image_root: Path, disk: Path, mkimage: list[tuple[str, ...]]
) -> None:
    before = disk.read_bytes()
    esp, state = tmp_path / "esp", tmp_path / "state"
    esp.mkdir()
    state.mkdir()
    result = install_grub(disk, esp, state, image_root, firmware=Firmware.EFI)
    assert [c[2] for c in mkimage] == ["x86_64-efi"]
    assert result.bios_partition is None
    assert disk.read_bytes() == before


def test_a_failed_core_image_fails_the_install_after_the_other_jobs_end(
    tmp_path: Path, image_root: Path, disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The jobs run side by side; one failure is raised once the others are done."""
    import kairos.run

    def fake(argv: Sequence[str], **kw: Any) -> tuple[int, bytes, bytes]:
        target = argv[list(argv).index("-O") + 1]
        if target == "i386-pc":
            return 1, b"", b"grub-mkimage: error: cannot compress the kernel image."
        Path(argv[list(argv).index("-o") + 1]).write_bytes(b"x86_64-efi-image")
        return 0, b"", b""

    monkeypatch.setattr(kairos.run, "_spawn", fake)
    before = disk.read_bytes()
    esp, state = tmp_path / "esp", tmp_path / "state"
    esp.mkdir()
    state.mkdir()
    with pytest.raises(KairosError, match="cannot compress the kernel image"):
        install_grub(disk, esp, state, image_root, firmware=Firmware.BOTH)
    assert disk.read_bytes() == before  # no BIOS boot code embedded
    # The other jobs were not cut off half-way.
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == b"x86_64-efi-image"
    assert (state / "grub2/i386-pc/linux.mod").is_file()


def test_branding_menu_is_copied_to_state(
    tmp_path: Path, image_root: Path, disk: Path, mkimage: list[tuple[str, ...]]
) -> None:
    branding = image_root / "etc/kairos/branding/grubmenu.cfg"
    branding.parent.mkdir(parents=True)
    branding.write_text('menuentry "Remote recovery" --id remoterecovery {\n}\n')
    state = tmp_path / "state"
    state.mkdir()
    hooks = "source (${custom_blk})/grub_boot_assessment\n"
    (state / "grubcustom").write_text(hooks)
    grubenv.write(state / "grub_oem_env", {"default_menu_entry": "Acme"})
    install_grub(disk, None, state, image_root, firmware=Firmware.BIOS)
    assert (state / "grubmenu").read_text() == branding.read_text()
    # existing hooks and agent settings are kept
    assert (state / "grubcustom").read_text() == hooks
    assert grubenv.read(state / "grub_oem_env") == {"default_menu_entry": "Acme"}


def test_every_problem_reported_before_anything_runs(
    tmp_path: Path, mkimage: list[tuple[str, ...]]
) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * MIB)
    with pytest.raises(KairosError) as err:
        install_grub(disk, tmp_path / "no-esp", tmp_path / "no-state", tmp_path / "empty-root")
    msg = err.value.message
    for needle in (
        "no GRUB modules for x86_64-efi (install grub-efi-amd64-bin",
        "no GRUB modules for i386-pc (install grub-pc-bin",
        "boot.img: missing",
        "no-esp: the EFI system partition is not a mounted directory",
        "no-state: the COS_STATE partition is not a mounted directory",
        "no GPT partition table",
    ):
        assert needle in msg
    assert mkimage == []


def test_write_grub_options_merges_into_oem_grubenv(tmp_path: Path) -> None:
    oem = tmp_path / "oem"
    grubenv.write(oem / "grubenv", {"saved_entry": "cos", "extra_cmdline": "old"})
    env = write_grub_options(
        oem, {"extra_cmdline": "rd.immucore.debug", "default_fallback": 2, "saved_entry": ""}
    )
    assert env == {"extra_cmdline": "rd.immucore.debug", "default_fallback": "2"}
    assert grubenv.read(oem / "grubenv") == env
    with pytest.raises(KairosError, match=r"grub_options\.a=b"):
        write_grub_options(oem, {"a=b": "x"})


def test_apply_grub_options_under_root(tmp_path: Path) -> None:
    from kairos.context import Context

    env = apply_grub_options(Context(root=tmp_path), {"next_entry": "recovery"})
    assert env == {"next_entry": "recovery"}
    assert grubenv.read(tmp_path / "oem/grubenv") == env
