"""`kairos-agent install` and `manual-install`: collect, validate, plan, then install.

Registration is argparse only; the handlers import the installer when they run. Every check
(config, users, target disk, sizes, source) runs before the first write, and all problems
are reported together.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kairos.agent.install_plan import InstallPlan
    from kairos.config.collect import Collected
    from kairos.context import Context

INSTALL_EPILOG = """examples:
  kairos-agent install --dry-run                 # print the plan for the config found
  kairos-agent install --device /dev/vda --dry-run --json
  kairos-agent install --device /dev/disk/by-id/nvme-X --reboot
  kairos-agent install --device auto --poweroff  # the largest fixed disk, not the boot medium

Reads the config from /run/initramfs/live, /etc/kairos, /usr/local/cloud-config, /oem and the
kernel command line. The disk comes from --device or install.device (/dev/X,
/dev/disk/by-*/X, script://COMMAND, or auto: only with install.auto: true or --device auto).
Set KAIROS_AGENT_PROGRESS=1 for JSON progress lines.
"""
MANUAL_EPILOG = """examples:
  kairos-agent manual-install config.yaml --device /dev/sda
  kairos-agent manual-install config.yaml --device /dev/sda --dry-run
  kairos-agent manual-install config.yaml --use-default-dirs --reboot

Only CONFIG is read (not the config directories or the kernel command line) unless
--use-default-dirs is given.
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", metavar="DISK", help="target disk (overrides install.device)")
    p.add_argument("--dry-run", dest="dry_run", action="store_true", help="print the plan only")
    p.add_argument("--json", action="store_true", help="print the plan as JSON (with --dry-run)")
    power = p.add_mutually_exclusive_group()
    power.add_argument("--reboot", action="store_true", help="reboot when done")
    power.add_argument("--poweroff", action="store_true", help="power off when done")
    p.add_argument(
        "--source",
        metavar="SRC",
        help="install from file:IMAGE.squashfs or dir:ROOT instead of the live medium",
    )


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `install` and `manual-install`."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "install",
        help="install Kairos to a disk (from the live medium)",
        description="Partition a disk with the Kairos layout, deploy the system images and "
        "GRUB (BIOS and UEFI), using the node's cloud-config.",
        epilog=INSTALL_EPILOG,
        formatter_class=fmt,
    )
    _common(p)
    p.set_defaults(handler=install_cmd)
    m = sub.add_parser(
        "manual-install",
        help="install Kairos to a disk with the given config file",
        description="Install with CONFIG as the only cloud-config.",
        epilog=MANUAL_EPILOG,
        formatter_class=fmt,
    )
    m.add_argument("config", metavar="CONFIG", help="the cloud-config file to install with")
    m.add_argument(
        "--use-default-dirs",
        dest="use_default_dirs",
        action="store_true",
        help="also read the config directories and the kernel command line",
    )
    _common(m)
    m.set_defaults(handler=manual_install_cmd)


def install_cmd(args: argparse.Namespace, ctx: Context) -> int:
    from kairos.config.collect import collect

    if not args.dry_run:
        require_root(ctx)
    return _install(args, ctx, collect(ctx))


def manual_install_cmd(args: argparse.Namespace, ctx: Context) -> int:
    from pathlib import Path

    from kairos.config.collect import collect
    from kairos.errors import KairosError

    config = Path(args.config).resolve()
    if not config.is_file():
        raise KairosError(f"{config}: no such config file.", hint="give the path of a YAML file")
    if not args.dry_run:
        require_root(ctx)
    if args.use_default_dirs:
        collected = collect(ctx, extra_files=[config])
    else:
        collected = collect(ctx, dirs=(), extra_files=[config], use_cmdline=False)
    if not any(d.source.endswith(config.name) for d in collected.documents):
        raise KairosError(
            f"{config}: not used as a cloud-config.",
            hint="the file must be .yaml/.yml with a #cloud-config header in its first 10 lines",
        )
    return _install(args, ctx, collected)


def require_root(ctx: Context) -> None:
    """Installing needs CAP_SYS_ADMIN (mount, loop, partition tables); check it up front."""
    from kairos.errors import KairosError

    cap_sys_admin = 21
    try:
        from pathlib import Path

        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                if int(line.split()[1], 16) >> cap_sys_admin & 1:
                    return
                break
    except (OSError, ValueError):
        import os

        if os.geteuid() == 0:
            return
    raise KairosError(
        "install needs root (CAP_SYS_ADMIN) to partition and mount; nothing was done.",
        hint="run it with sudo, or try --dry-run to see the plan",
    )


def _install(args: argparse.Namespace, ctx: Context, collected: Collected) -> int:
    import json
    import sys

    import yaml

    from kairos.agent import install_plan as ip
    from kairos.config.validate import validate_documents
    from kairos.disk.devices import list_devices
    from kairos.errors import ConfigError

    for warning in collected.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    report = validate_documents(collected.documents, strict=ctx.strict)
    problems = [str(p) for p in report.errors]
    options = ip.parse_options(collected.merged)
    if args.reboot or args.poweroff:
        from dataclasses import replace

        options = replace(options, reboot=args.reboot, poweroff=args.poweroff)
    plan, found = ip.make_plan(
        ctx,
        options,
        collected.merged,
        list_devices(),
        device_flag=args.device,
        source_flag=args.source,
    )
    problems.extend(found)
    if args.dry_run:
        _print_plan(plan, problems, bool(args.json))
        return 1 if problems else 0
    if problems or plan is None:
        raise ConfigError(
            f"install refused: {len(problems)} problem(s); nothing was written.",
            hint="fix them and run again (--dry-run shows the plan)",
            problems=tuple(problems),
        )
    from kairos.agent import install as installer
    from kairos.log import Progress

    text = "#cloud-config\n" + yaml.safe_dump(collected.merged, sort_keys=False)
    inputs = installer.InstallInputs(
        options=options,
        config_text=text,
        extra_stage_docs=stage_documents(collected),
    )
    progress = Progress()
    installer.install(ctx, plan, inputs, progress)
    if progress.json_lines:
        print(json.dumps({"event": "finished", "device": plan.device}), flush=True)
    else:
        print(f"Kairos is installed on {plan.device}.", file=sys.stderr)
    installer.power_action(plan.power)
    return 0


def stage_documents(collected: Collected) -> tuple[Any, ...]:
    """Config sources whose stages the stage loader does not read already (the ISO's config,
    /etc/kairos, a manual-install file): upstream runs their install stages too."""
    from kairos.stages.loader import DEFAULT_PATHS

    return tuple(
        d
        for d in collected.documents
        if d.source != "cmdline"
        and not any(d.source == p or d.source.startswith(p + "/") for p in DEFAULT_PATHS)
    )


def _print_plan(plan: InstallPlan | None, problems: list[str], as_json: bool) -> None:
    import json
    import sys

    if as_json:
        out = {"plan": plan.to_json() if plan else None, "problems": problems}
        print(json.dumps(out, indent=2))
        return
    if plan is not None:
        print("\n".join(plan.describe()))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s): install would refuse.", file=sys.stderr)
