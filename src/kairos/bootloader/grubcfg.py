"""The GRUB menu of an installed node (`COS_STATE:/grub2/grub.cfg`) and the small config
embedded in the GRUB core images that finds it.

The menu follows upstream Kairos (kairos-init's bundled grub.cfg): environment files found
with `search --no-floppy --file` (`/grub_oem_env` on COS_STATE, then `/grubenv` on COS_OEM),
a one-shot `next_entry`, `saved_entry` as the default, `default_fallback`, and the kernel and
initrd read from inside each system image through `loopback`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from kairos.bootloader import assessment

STATE_LABEL = "COS_STATE"
RECOVERY_LABEL = "COS_RECOVERY"
OEM_LABEL = "COS_OEM"
EFI_LABEL = "COS_GRUB"
GRUB_DIR = "/grub2"  # on COS_STATE
CFG_PATH = "/grub2/grub.cfg"
# Files located on any partition by `search --file` at every boot.
OEM_ENV_FILE = "/grub_oem_env"  # COS_STATE, written by the agent
ENV_FILE = "/grubenv"  # COS_OEM, i.e. /oem/grubenv, the user's
MENU_FILE = "/grubmenu"  # COS_STATE, extra entries (branding)
CUSTOM_FILE = "/grubcustom"  # COS_STATE, boot assessment hooks

# bootargs.cfg of upstream, in the order the words reach the kernel.
BASE_CMDLINE = (
    "console=tty1",
    "console=ttyS0,115200",
    "net.ifnames=1",
    f"rd.cos.oemlabel={OEM_LABEL}",
    "rd.cos.oemtimeout=10",
    "panic=5",
    "rd.emergency=reboot",
    "rd.shell=0",
    "systemd.crash_reboot=yes",
)


class Role(StrEnum):
    """Which `extra_<role>_cmdline` an entry appends."""

    ACTIVE = "active"
    PASSIVE = "passive"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class Entry:
    """One menu entry booting a system image file through loopback."""

    id: str
    title: str  # may use ${display_name}
    role: Role
    search_label: str  # the partition holding the image
    image: str  # path of the image on that partition
    root_label: str  # root=LABEL= for immucore and boot-state detection
    extra: tuple[str, ...] = ()


ENTRIES = (
    Entry("cos", "${display_name}", Role.ACTIVE, STATE_LABEL, "/cOS/active.img", "COS_ACTIVE"),
    Entry(
        "fallback",
        "${display_name} (fallback)",
        Role.PASSIVE,
        STATE_LABEL,
        "/cOS/passive.img",
        "COS_PASSIVE",
    ),
    Entry(
        "recovery",
        "${display_name} recovery",
        Role.RECOVERY,
        RECOVERY_LABEL,
        "/cOS/recovery.img",
        "COS_SYSTEM",
    ),
    Entry(
        "statereset",
        "${display_name} state reset (auto)",
        Role.RECOVERY,
        RECOVERY_LABEL,
        "/cOS/recovery.img",
        "COS_SYSTEM",
        ("vga=795", "nomodeset", "kairos.reset"),
    ),
)
ENTRY_IDS = tuple(e.id for e in ENTRIES)


@dataclass(frozen=True)
class MenuSettings:
    """What varies between installs; the rest of the menu is fixed."""

    timeout: int = 3
    display_name: str = "Kairos"
    default_fallback: str = "1 2"  # entry numbers: passive, then recovery
    serial_speed: int = 115200
    entries: tuple[Entry, ...] = field(default=ENTRIES)


DEFAULT_MENU = MenuSettings()


def cmdline_words(entry: Entry) -> list[str]:
    """The kernel command line of `entry`, with GRUB variables left for GRUB to expand."""
    return [
        *BASE_CMDLINE,
        f"root=LABEL={entry.root_label}",
        f"cos-img/filename={entry.image}",
        "selinux=0",
        *entry.extra,
        "${extra_cmdline}",
        f"${{extra_{entry.role}_cmdline}}",
    ]


def _entry_block(entry: Entry, n: int = 0) -> list[str]:
    # One loop device name per entry: when an entry fails (a corrupt image), GRUB's fallback
    # runs the next one in the same session, where `loopback loop0` would fail with "device
    # name already exists" and leave loop0 on the broken image.
    var = f"{entry.id}_blk"
    loop = f"loop{n}"
    return [
        f'menuentry "{entry.title}" --id {entry.id} {{',
        f"    search --no-floppy --label --set={var} {entry.search_label}",
        f'    loopback {loop} "(${{{var}}}){entry.image}"',
        f"    set root=({loop})",
        "    echo Loading kernel...",
        f"    linux ({loop})/boot/vmlinuz {' '.join(cmdline_words(entry))}",
        "    echo Loading initrd...",
        f"    initrd ({loop})/boot/initrd",
        "}",
    ]


def _source_if_found(path: str, var: str) -> list[str]:
    return [
        f"search --no-floppy --file --set={var} {path}",
        f'if [ -n "${{{var}}}" ]; then source "(${{{var}}}){path}"; fi',
    ]


def render_menu(settings: MenuSettings = DEFAULT_MENU) -> str:
    """The text of `COS_STATE:/grub2/grub.cfg`."""
    s = settings
    lines = [
        "# Kairos boot menu, written by the installer. Settings go in /oem/grubenv",
        "# (kairos-agent grubedit / bootentry), not here: upgrades rewrite this file.",
        f"serial --unit=0 --speed={s.serial_speed}",
        "terminal_input serial console",
        "terminal_output serial console",
        # EFI has no VGA text mode: keep the firmware's framebuffer so the kernel has a
        # console on the screen (with "text" it boots blind until a DRM driver loads).
        'if [ "${grub_platform}" = "efi" ]; then set gfxpayload=keep; else set gfxpayload=text; fi',
        f"set timeout={s.timeout}",
        "set timeout_style=menu",
        "",
        f"search --no-floppy --file --set=oem_blk {OEM_ENV_FILE}",
        f'if [ -n "${{oem_blk}}" ]; then load_env -f "(${{oem_blk}}){OEM_ENV_FILE}"; fi',
        f"search --no-floppy --file --set=env_blk {ENV_FILE}",
        f'if [ -n "${{env_blk}}" ]; then load_env -f "(${{env_blk}}){ENV_FILE}"; fi',
        "",
        "# next_entry boots once: it is cleared in the env file before the menu shows.",
        'if [ -n "${next_entry}" ]; then',
        '    set default="${next_entry}"',
        "    set next_entry=",
        '    if [ -n "${env_blk}" ]; then save_env -f "(${env_blk})'
        + ENV_FILE
        + '" next_entry; fi',
        "    set boot_once=true",
        "else",
        '    set default="${saved_entry}"',
        "fi",
        'if [ -n "${default_fallback}" ]; then',
        '    set fallback="${default_fallback}"',
        "else",
        f'    set fallback="{s.default_fallback}"',
        "fi",
        'if [ -n "${default_menu_entry}" ]; then',
        '    set display_name="${default_menu_entry}"',
        "else",
        f'    set display_name="{s.display_name}"',
        "fi",
        "",
        *assessment.render_grub(),
        "",
        "# User hooks run after the default is chosen (and after boot assessment) so they can",
        "# override it; boot_once=true tells them the user picked this boot explicitly.",
        *_source_if_found(CUSTOM_FILE, "custom_blk"),
        "",
    ]
    for n, entry in enumerate(s.entries):
        lines += _entry_block(entry, n)
    lines += ["", *_source_if_found(MENU_FILE, "menu_blk")]
    return "\n".join(lines) + "\n"


def render_early(state_label: str = STATE_LABEL) -> str:
    """The config embedded in BOOTX64.EFI and core.img: find the state partition, load its menu.

    It runs before GRUB's normal mode, so only plain commands of built-in modules work here.
    """
    return "\n".join(
        [
            f"search --no-floppy --label --set=root {state_label}",
            f"set prefix=($root){GRUB_DIR}",
            f"configfile ($root){CFG_PATH}",
            "",
        ]
    )


_MENUENTRY_RE = re.compile(r"^\s*menuentry\s+(?P<title>\"[^\"]*\"|'[^']*'|\S+)(?P<rest>.*)$")
_ID_RE = re.compile(r"--id(?:=|\s+)(?P<id>\"[^\"]*\"|'[^']*'|[^\s{]+)")


@dataclass(frozen=True)
class MenuItem:
    id: str
    title: str


def parse_entries(text: str) -> list[MenuItem]:
    """The menu entries in a grub.cfg text (title and --id, the title when no id)."""
    items = []
    for line in text.splitlines():
        m = _MENUENTRY_RE.match(line)
        if not m:
            continue
        title = m.group("title").strip("\"'")
        idm = _ID_RE.search(m.group("rest"))
        items.append(MenuItem(idm.group("id").strip("\"'") if idm else title, title))
    return items


def entry_ids(texts: Sequence[str]) -> list[str]:
    """Every entry id in the given menus, first occurrence first."""
    seen: list[str] = []
    for text in texts:
        for item in parse_entries(text):
            if item.id not in seen:
                seen.append(item.id)
    return seen
