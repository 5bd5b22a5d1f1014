"""`kairos-agent bootentry` and `kairos-agent grubedit`: the node's GRUB choices.

Registration is argparse only; the handlers import the bootloader modules.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.context import Context

DEFAULT_ENV = "/oem/grubenv"
# Where the installed menu is visible on a running node (state is mounted read-only by
# immucore), then the copy the image ships, then our own menu's entries as a last resort.
MENU_FILES = (
    "/run/initramfs/cos-state/grub2/grub.cfg",
    "/run/cos/state/grub2/grub.cfg",
    "/etc/cos/grub.cfg",
)
CUSTOM_MENUS = (
    "/run/initramfs/cos-state/grubmenu",
    "/run/cos/state/grubmenu",
    "/etc/kairos/branding/grubmenu.cfg",
    "/oem/grubmenu",
)
OEM_ENV_FILES = ("/run/initramfs/cos-state/grub_oem_env", "/run/cos/state/grub_oem_env")

BOOTENTRY_EPILOG = """examples:
  kairos-agent bootentry                      # entries, default and one-shot next entry
  kairos-agent bootentry --select recovery    # boot recovery once, at the next reboot
  kairos-agent --root /mnt/node bootentry --select fallback

--select writes next_entry to /oem/grubenv; GRUB clears it when it boots the entry, so
the boot after that uses saved_entry (or the first entry, cos) again.
"""
GRUBEDIT_EPILOG = """examples:
  kairos-agent grubedit                                   # list the variables
  kairos-agent grubedit set extra_cmdline="rd.immucore.debug"
  kairos-agent grubedit set saved_entry=fallback default_fallback="2"
  kairos-agent grubedit set extra_cmdline=                # an empty value deletes it
  kairos-agent grubedit unset next_entry
  kairos-agent grubedit --grub-file /run/initramfs/cos-state/grub_oem_env

Known variables: next_entry saved_entry default_menu_entry extra_cmdline
extra_active_cmdline extra_passive_cmdline extra_recovery_cmdline default_fallback.
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `bootentry` and `grubedit`."""
    fmt = argparse.RawDescriptionHelpFormatter
    boot = sub.add_parser(
        "bootentry",
        help="list the GRUB boot entries or pick the one for the next boot",
        description="List the boot entries of the installed GRUB menu (and custom menus) with "
        "the default and the one-shot next entry, or select the entry the next boot uses.",
        epilog=BOOTENTRY_EPILOG,
        formatter_class=fmt,
    )
    boot.add_argument("--select", metavar="ENTRY", help="boot ENTRY once at the next reboot")
    boot.add_argument(
        "--grub-file", default=DEFAULT_ENV, metavar="FILE", help=f"env file (default {DEFAULT_ENV})"
    )
    boot.add_argument("--json", action="store_true", help="print JSON")
    boot.set_defaults(handler=bootentry)

    edit = sub.add_parser(
        "grubedit",
        help="list or change the GRUB environment (/oem/grubenv)",
        description="Read or change variables of a GRUB environment block, as grub-editenv "
        "does, written atomically so a power cut never leaves a broken block.",
        epilog=GRUBEDIT_EPILOG,
        formatter_class=fmt,
    )
    edit.add_argument("action", nargs="?", choices=("list", "set", "unset"), default="list")
    edit.add_argument("items", nargs="*", metavar="KEY=VALUE|KEY", help="what to set or unset")
    edit.add_argument(
        "--grub-file", default=DEFAULT_ENV, metavar="FILE", help=f"env file (default {DEFAULT_ENV})"
    )
    edit.add_argument("--json", action="store_true", help="print JSON")
    edit.set_defaults(handler=grubedit)


def _env_path(ctx: Context, name: str) -> Path:
    return ctx.path(name) if name.startswith("/") else Path(name)


def grubedit(args: argparse.Namespace, ctx: Context) -> int:
    from kairos.bootloader import grubenv
    from kairos.errors import KairosError

    path = _env_path(ctx, args.grub_file)
    if args.action == "list":
        if args.items:
            raise KairosError("grubedit list takes no arguments.", hint="grubedit set KEY=VALUE")
        env = grubenv.read(path)
    elif not args.items:
        raise KairosError(f"grubedit {args.action}: nothing to {args.action}.")
    elif args.action == "set":
        pairs = [grubenv.parse_assignment(item) for item in args.items]
        env = grubenv.update(path, dict(pairs))
        return 0 if not args.json else _print_env(env, True)
    else:
        problems = [f"{n}: {why}" for n in args.items if (why := grubenv.check_name(n))]
        if problems:
            raise KairosError("grubedit unset: " + "; ".join(problems) + ".")
        grubenv.update(path, {}, unset=args.items)
        return 0
    return _print_env(env, args.json)


def _print_env(env: dict[str, str], as_json: bool) -> int:
    if as_json:
        import json

        print(json.dumps(env, indent=2))
    else:
        for name, value in env.items():
            print(f"{name}={value}")
    return 0


def known_entries(ctx: Context) -> tuple[list[str], list[str]]:
    """(entry ids, the files they came from): the installed menu, then custom menus."""
    from kairos.bootloader import grubcfg

    texts, sources = [], []
    menu = next((ctx.path(p) for p in MENU_FILES if ctx.path(p).is_file()), None)
    if menu is not None:
        texts.append(menu.read_text(errors="replace"))
        sources.append(str(menu))
    else:
        texts.append(grubcfg.render_menu())
        sources.append("(built-in menu)")
    for name in CUSTOM_MENUS:
        path = ctx.path(name)
        if path.is_file():
            texts.append(path.read_text(errors="replace"))
            sources.append(str(path))
    return grubcfg.entry_ids(texts), sources


def bootentry(args: argparse.Namespace, ctx: Context) -> int:
    from kairos.bootloader import grubenv
    from kairos.errors import KairosError

    ids, sources = known_entries(ctx)
    path = _env_path(ctx, args.grub_file)
    if args.select is not None:
        if args.select not in ids:
            raise KairosError(
                f"bootentry: {args.select!r} is not a boot entry.",
                hint=f"choose one of: {', '.join(ids)}",
            )
        grubenv.update(path, {"next_entry": args.select})
        print(f"next boot: {args.select} (once)")
        return 0
    env = grubenv.read(path)
    oem_env: dict[str, str] = {}
    for name in OEM_ENV_FILES:
        oem_env.update(grubenv.read(ctx.path(name)))
    default = env.get("saved_entry") or oem_env.get("saved_entry") or (ids[0] if ids else "")
    report = {
        "entries": ids,
        "default": default,
        "next_entry": env.get("next_entry", ""),
        "menus": sources,
        "env_file": str(path),
    }
    if args.json:
        import json

        print(json.dumps(report, indent=2))
        return 0
    for entry in ids:
        marks = [m for m, on in (("default", entry == default),) if on]
        if entry == report["next_entry"]:
            marks.append("next boot")
        print(f"{entry}{'  (' + ', '.join(marks) + ')' if marks else ''}")
    return 0
