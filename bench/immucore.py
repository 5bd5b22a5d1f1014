"""Boot-to-login of one rootfs with and without immucore's immutable layer, and its share.

    .venv/bin/python bench/immucore.py DIR [--runs N]

DIR holds the files of `kairos build --format netboot` (kairos-kernel, kairos-initrd,
kairos.squashfs). Both boots are direct kernel boots of the same kernel, initrd and squashfs:

- immutable: the installed layout (COS_STATE with cOS/active.img, COS_OEM, COS_PERSISTENT),
  `root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img`: immucore's two phases run;
- plain: the squashfs itself as the virtio disk, `root=/dev/vda ro`, immucore masked: the
  same OS read-only, with no overlays, persistence or stages (the physical floor).

The figures are QEMU start -> serial login prompt, and immucore's own time as it prints it on
the console (`phase root took`, `phase layout took`: python exec to the end of each phase).
Under TCG everything is 10-50x slower than on hardware; the ratio is what carries over.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.vm.test_immucore import CMDLINES, direct_kernel, make_disk, oem_config

from kairos.vm.qemu import LOGIN_PROMPT, Firmware, Machine, MachineSpec

PLAIN = "root=/dev/vda rootfstype=squashfs ro systemd.mask=immucore.service console=ttyS0,115200"


def boot(disk: Path, kernel: Path, initrd: Path, append: str, log: Path) -> tuple[float, str]:
    with direct_kernel(kernel, initrd, append):
        spec = MachineSpec(artifact=disk, firmware=Firmware.BIOS, persist=False, no_reboot=True)
        with Machine(spec, serial_log=log) as vm:
            vm.wait_for(LOGIN_PROMPT, 600)
            return vm.uptime(), vm.console()


def immucore_share(console: str) -> tuple[float, float]:
    root = re.search(r"immucore: phase root took ([0-9.]+) s", console)
    layout = re.search(r"immucore: phase layout took ([0-9.]+) s", console)
    return (float(root.group(1)) if root else 0.0, float(layout.group(1)) if layout else 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("netboot", type=Path, help="directory of a netboot build")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args()
    kernel = args.netboot / "kairos-kernel"
    initrd = args.netboot / "kairos-initrd"
    squashfs = args.netboot / "kairos.squashfs"
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        work = Path(tmp)
        start = time.monotonic()
        disk = make_disk(work / "disk", squashfs, oem_config("ssh-ed25519 AAAA bench"))
        print(f"installed-layout disk made in {time.monotonic() - start:.1f} s (no mounts)")
        for run in range(1, args.runs + 1):
            secs, console = boot(
                disk, kernel, initrd, CMDLINES["active"], work / f"immutable-{run}.log"
            )
            root, layout = immucore_share(console)
            print(
                f"run {run}: immutable boot to login {secs:6.1f} s; "
                f"immucore {root + layout:5.1f} s "
                f"(root {root:.1f} s + layout {layout:.1f} s) = {100 * (root + layout) / secs:.0f}%"
            )
            secs, _ = boot(squashfs, kernel, initrd, PLAIN, work / f"plain-{run}.log")
            print(f"run {run}: plain read-only boot to login {secs:6.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
