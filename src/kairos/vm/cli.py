"""`kairos vm run`: boot an ISO, raw or qcow2 artifact in QEMU with a serial console."""

from __future__ import annotations

import argparse
import re
from typing import Any

RUN_EPILOG = """examples:
  kairos vm run out/kairos.iso --show-console
  kairos vm run out/kairos.iso --show-console --until-login --state --shutdown
  kairos vm run out/kairos.raw --bios --memory 4G --serial-log serial.log
  kairos vm run out/kairos.iso --disk 20G --cloud-config install.yaml --show-console

KVM is used when /dev/kvm can run stock guests, TCG otherwise (KAIROS_VM_ACCEL=kvm|tcg
forces one). SSH into the guest with: ssh -p PORT kairos@127.0.0.1
"""


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `kairos vm run`."""
    vm = sub.add_parser(
        "vm",
        help="run artifacts in a local QEMU virtual machine",
        description="Run built artifacts in QEMU (serial console, SSH forwarded to localhost).",
        epilog="example:\n  kairos vm run out/kairos.iso --show-console --until-login",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    vm_sub = vm.add_subparsers(dest="vm_command", metavar="COMMAND")
    p = vm_sub.add_parser(
        "run",
        help="boot an ISO, raw or qcow2 image in QEMU",
        description="Boot an ISO, raw or qcow2 image in QEMU with its serial console.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("artifact", metavar="ARTIFACT", help="the .iso, .raw or .qcow2 to boot")
    fw = p.add_mutually_exclusive_group()
    fw.add_argument(
        "--uefi", dest="firmware", action="store_const", const="uefi", help="boot with OVMF (q35)"
    )
    fw.add_argument(
        "--bios", dest="firmware", action="store_const", const="bios", help="boot with SeaBIOS"
    )
    p.set_defaults(firmware="uefi")
    p.add_argument("--disk", metavar="SIZE", help="attach a new blank target disk (e.g. 20G)")
    p.add_argument(
        "--disk-format", choices=("qcow2", "raw"), default="qcow2", help="format of --disk"
    )
    p.add_argument("--memory", metavar="M", default="2048", help="memory in MiB, or 4G (2048)")
    p.add_argument("--cpus", type=int, default=2, help="virtual CPUs (2)")
    p.add_argument("--serial-log", metavar="FILE", help="keep the serial console in FILE")
    p.add_argument(
        "--ssh-port", type=int, default=0, metavar="N", help="host port for SSH (default: free)"
    )
    p.add_argument(
        "--cloud-config", metavar="FILE", help="attach FILE as user-data on a cidata datasource"
    )
    p.add_argument(
        "--persist", action="store_true", help="write to a raw/qcow2 image (default: snapshot)"
    )
    p.add_argument("--show-console", action="store_true", help="stream the serial console")
    p.add_argument("--until-login", action="store_true", help="wait until the login prompt appears")
    p.add_argument(
        "--state", action="store_true", help="log in over SSH and print 'kairos-agent state'"
    )
    p.add_argument("--shutdown", action="store_true", help="power the VM off at the end")
    p.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        metavar="SECS",
        help="deadline for each wait: login prompt, SSH, shutdown (300)",
    )
    p.set_defaults(handler=_run)
    vm.set_defaults(handler=lambda args, ctx: _usage(vm))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def parse_memory(text: str) -> int:
    """Memory in MiB from `2048`, `2048M` or `4G`."""
    from kairos.vm.qemu import VMError

    m = re.fullmatch(r"([1-9][0-9]*)([MG]?)", text.strip().upper())
    if not m:
        raise VMError(f"--memory: bad size '{text}'.", hint="use MiB (2048) or 4G")
    return int(m.group(1)) * (1024 if m.group(2) == "G" else 1)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run(args: argparse.Namespace, ctx: object) -> int:
    import signal
    import sys
    from pathlib import Path

    from kairos.log import Progress
    from kairos.vm.qemu import (
        LOGIN_PROMPT,
        DiskFormat,
        Firmware,
        Machine,
        MachineSpec,
        VMError,
        check_size,
    )

    artifact = Path(args.artifact)
    if not artifact.is_file():
        raise VMError(
            f"{artifact}: no such artifact.",
            hint="build one first: kairos build --source debian:bookworm --output out",
        )
    spec = MachineSpec(
        artifact=artifact,
        firmware=Firmware(args.firmware),
        memory_mib=parse_memory(args.memory),
        cpus=args.cpus,
        disk_size=check_size(args.disk) if args.disk else None,
        disk_format=DiskFormat(args.disk_format),
        cloud_config=Path(args.cloud_config) if args.cloud_config else None,
        ssh_port=args.ssh_port,
        persist=args.persist,
    )
    # `timeout`, service managers and CI stop us with SIGTERM: shut the VM down in order then
    # too (cli.py reports it as an interruption).
    signal.signal(signal.SIGTERM, _interrupt)
    progress = Progress()
    serial_log = Path(args.serial_log) if args.serial_log else None
    machine = Machine(spec, serial_log=serial_log, echo=sys.stdout if args.show_console else None)
    with machine:
        plan = machine.plan
        assert plan is not None
        print(
            f"==> {artifact} ({plan.kind}, {plan.firmware}) on {plan.accel}: "
            f"{machine.accel_reason}\n"
            f"    ssh -p {plan.ssh_port} {spec.ssh_user}@127.0.0.1   serial log: {plan.serial_log}",
            file=sys.stderr,
            flush=True,
        )
        if args.until_login:
            with progress.step("boot to the login prompt"):
                machine.wait_for(LOGIN_PROMPT, args.timeout)
            # The prompt has no newline after it: end the console line before our output.
            if args.show_console:
                print(flush=True)
        if args.state:
            with progress.step("SSH login"):
                machine.wait_for_ssh(args.timeout)
            result = machine.ssh("kairos-agent state", timeout=args.timeout)
            print(result.stdout, end="" if result.stdout.endswith("\n") else "\n", flush=True)
            if result.returncode != 0:
                raise VMError(
                    f"'kairos-agent state' failed in the guest with exit code "
                    f"{result.returncode}: {result.stderr.strip()}."
                )
        if args.shutdown:
            with progress.step("power off"):
                machine.poweroff(args.timeout)
            return 0
        machine.wait_exit()
    return 0
