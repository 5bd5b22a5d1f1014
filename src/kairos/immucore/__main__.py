"""immucore entry point in the initramfs: `python3 -S -m kairos.immucore`.

Today it handles live media (rd.cos.disable, live: roots): record the boot state in
/run/cos and run the `initramfs` stage chrooted into the mounted /sysroot, as upstream's
live DAG does. The normal A/B boot path is added by the installer work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kairos.immucore.bootstate import Cmdline, Mode, mode
from kairos.immucore.live import run_live


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="immucore")
    parser.add_argument("--cmdline", default="/proc/cmdline", help="kernel command line file")
    parser.add_argument("--run", default="/run", help="where /run is (tests)")
    parser.add_argument("--sysroot", default="/sysroot", help="the mounted new root")
    parser.add_argument("--no-stage", action="store_true", help="skip the initramfs stage")
    args = parser.parse_args(argv)
    cmdline = Cmdline.parse(Path(args.cmdline).read_text(errors="replace"))
    chosen = mode(cmdline)
    print(f"immucore: boot mode {chosen}", flush=True)
    if chosen is Mode.LIVE:
        return run_live(cmdline, Path(args.run), Path(args.sysroot), stage=not args.no_stage)
    # Installed-system boots are not handled yet: leave the boot to dracut untouched.
    print("immucore: nothing to do for this boot mode yet", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
