"""The installed GRUB menu: entries, ids, command lines and the env-file logic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kairos.bootloader import grubcfg
from kairos.run import run, which


def _blocks(cfg: str) -> dict[str, list[str]]:
    """Menu entry id -> the lines of its body."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in cfg.splitlines():
        m = re.match(r'menuentry ".*" --id (\S+) \{$', line)
        if m:
            current = out.setdefault(m.group(1), [])
        elif line == "}":
            current = None
        elif current is not None:
            current.append(line.strip())
    return out


def _linux_words(body: list[str]) -> list[str]:
    return next(ln for ln in body if ln.startswith("linux ")).split()


def test_entries_and_ids_in_upstream_order() -> None:
    cfg = grubcfg.render_menu()
    assert list(_blocks(cfg)) == ["cos", "fallback", "recovery", "statereset"]
    items = grubcfg.parse_entries(cfg)
    assert [i.title for i in items] == [
        "${display_name}",
        "${display_name} (fallback)",
        "${display_name} recovery",
        "${display_name} state reset (auto)",
    ]


@pytest.mark.parametrize(
    ("entry", "label", "image", "root", "role"),
    [
        ("cos", "COS_STATE", "/cOS/active.img", "COS_ACTIVE", "active"),
        ("fallback", "COS_STATE", "/cOS/passive.img", "COS_PASSIVE", "passive"),
        ("recovery", "COS_RECOVERY", "/cOS/recovery.img", "COS_SYSTEM", "recovery"),
        ("statereset", "COS_RECOVERY", "/cOS/recovery.img", "COS_SYSTEM", "recovery"),
    ],
)
def test_entry_loads_kernel_and_initrd_from_inside_its_image(
    entry: str, label: str, image: str, root: str, role: str
) -> None:
    body = _blocks(grubcfg.render_menu())[entry]
    # Each entry its own loop device: a fallback after a failed entry must not find the
    # name taken by the broken image.
    loop = f"loop{grubcfg.ENTRY_IDS.index(entry)}"
    assert f"search --no-floppy --label --set={entry}_blk {label}" in body
    assert f'loopback {loop} "(${{{entry}_blk}}){image}"' in body
    assert f"initrd ({loop})/boot/initrd" in body
    words = _linux_words(body)
    assert words[1] == f"({loop})/boot/vmlinuz"
    expected = [
        "console=tty1", "console=ttyS0,115200", "net.ifnames=1", "rd.cos.oemlabel=COS_OEM",
        "rd.cos.oemtimeout=10", "panic=5", "rd.emergency=reboot", "rd.shell=0",
        "systemd.crash_reboot=yes", f"root=LABEL={root}", f"cos-img/filename={image}",
        "selinux=0",
    ]  # fmt: skip
    assert words[2 : 2 + len(expected)] == expected
    # user extras come last: the general one, then the one of this entry's role
    assert words[-2:] == ["${extra_cmdline}", f"${{extra_{role}_cmdline}}"]
    assert ("kairos.reset" in words) == (entry == "statereset")


def test_env_files_found_by_search_file_in_upstream_order() -> None:
    lines = grubcfg.render_menu().splitlines()
    idx = {ln: i for i, ln in enumerate(lines)}
    oem = idx["search --no-floppy --file --set=oem_blk /grub_oem_env"]
    env = idx["search --no-floppy --file --set=env_blk /grubenv"]
    assert oem < env  # /oem/grubenv (the user's) loads last and wins
    assert (
        lines[oem + 1] == 'if [ -n "${oem_blk}" ]; then load_env -f "(${oem_blk})/grub_oem_env"; fi'
    )
    assert lines[env + 1] == 'if [ -n "${env_blk}" ]; then load_env -f "(${env_blk})/grubenv"; fi'
    custom = idx["search --no-floppy --file --set=custom_blk /grubcustom"]
    menu = idx["search --no-floppy --file --set=menu_blk /grubmenu"]
    first_entry = next(i for i, ln in enumerate(lines) if ln.startswith("menuentry"))
    assert env < custom < first_entry < menu
    assert 'source "(${custom_blk})/grubcustom"' in lines[custom + 1]
    assert 'source "(${menu_blk})/grubmenu"' in lines[menu + 1]


def test_next_entry_is_one_shot_and_saved_entry_is_the_default() -> None:
    cfg = grubcfg.render_menu()
    block = cfg[cfg.index('if [ -n "${next_entry}" ]') :]
    block = block[: block.index("\nfi\n")]
    then, _, otherwise = block.partition("\nelse\n")
    assert 'set default="${next_entry}"' in then
    assert "set next_entry=" in then
    assert 'save_env -f "(${env_blk})/grubenv" next_entry' in then
    assert 'set default="${saved_entry}"' in otherwise
    # the env is loaded before the choice is made
    assert cfg.index('load_env -f "(${env_blk})/grubenv"') < cfg.index(block)


def test_fallback_and_display_name_defaults_and_overrides() -> None:
    cfg = grubcfg.render_menu(grubcfg.MenuSettings(default_fallback="2", display_name="Acme"))
    assert 'set fallback="${default_fallback}"' in cfg
    assert 'set fallback="2"' in cfg
    assert 'set display_name="${default_menu_entry}"' in cfg
    assert 'set display_name="Acme"' in cfg
    assert 'set fallback="1 2"' in grubcfg.render_menu()


def test_serial_and_console_terminal_and_timeout() -> None:
    cfg = grubcfg.render_menu()
    assert "serial --unit=0 --speed=115200" in cfg.splitlines()
    assert "terminal_input serial console" in cfg.splitlines()
    assert "terminal_output serial console" in cfg.splitlines()
    assert "set timeout=3" in cfg.splitlines()
    assert "set timeout=10" in grubcfg.render_menu(grubcfg.MenuSettings(timeout=10)).splitlines()


def test_early_config_finds_state_by_label() -> None:
    assert grubcfg.render_early().splitlines() == [
        "search --no-floppy --label --set=root COS_STATE",
        "set prefix=($root)/grub2",
        "configfile ($root)/grub2/grub.cfg",
    ]


def test_parse_entries_reads_custom_menus() -> None:
    text = """
menuentry "Kairos remote recovery" --id remoterecovery {
  linux x
}
menuentry 'No id here' {
}
  menuentry "Other" --class os --id=other --unrestricted {
"""
    assert [(i.id, i.title) for i in grubcfg.parse_entries(text)] == [
        ("remoterecovery", "Kairos remote recovery"),
        ("No id here", "No id here"),
        ("other", "Other"),
    ]
    assert grubcfg.entry_ids([grubcfg.render_menu(), text, text])[-3:] == [
        "remoterecovery", "No id here", "other",
    ]  # fmt: skip


@pytest.mark.skipif(which("grub-script-check") is None, reason="grub-script-check missing")
def test_grub_parses_the_menu(tmp_path: Path, allow_commands: None) -> None:
    for name, text in (("menu", grubcfg.render_menu()), ("early", grubcfg.render_early())):
        path = tmp_path / f"{name}.cfg"
        path.write_text(text)
        run(["grub-script-check", str(path)])
