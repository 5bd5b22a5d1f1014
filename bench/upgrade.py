"""Upgrade (write + switch, no reboot) against a plain copy of the image's bytes, and the
COS_STATE space it needs against upstream's three-image formula.

COS_STATE is a real ext4 file system on a loop device, sized as the installer sizes it (two
images plus slack), mounted where immucore mounts it in a node tree given to `--root`;
active.img and passive.img are the image itself. Each round:

- physical limit: remove passive.img and `dd` the image into its place, fsync;
- `kairos-agent upgrade --source file:IMAGE --force`: checks, frees the passive slot, copies,
  fsyncs, arms the boot assessment, swaps the slots (renameat2), fsyncs the directory.

With `--dir`, also a `dir:` upgrade (mksquashfs on the node) against mksquashfs alone with
the same arguments. The node's downtime (reboot into the new version, health point included,
against a plain reboot) is measured by tests/vm/test_upgrade.py and printed in its timings.

    python3 bench/upgrade.py [--image IMG.squashfs | --iso kairos.iso] [--rounds N] [--dir]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from kairos.agent import install_plan as ip
from kairos.agent import upgrade as upg
from kairos.agent.install_plan import mib_for, tree_size
from kairos.cli import main as kairos
from kairos.disk import loop, mount
from kairos.run import run

ISOS = (Path("out/kairos.iso"), Path("/var/tmp/upbuild/out/kairos.iso"))


def image_from(args: argparse.Namespace, work: Path) -> Path:
    if args.image:
        return Path(args.image)
    isos = [Path(args.iso)] if args.iso else [p for p in ISOS if p.exists()]
    if not isos:
        sys.exit("no image: pass --image IMG.squashfs or --iso kairos.iso (make run builds one)")
    out = work / "rootfs.squashfs"
    run(["xorriso", "-osirrox", "on", "-indev", str(isos[0]), "-extract", "/rootfs.squashfs",
         str(out)])  # fmt: skip
    return out


def quiet_upgrade(node: Path, source: str) -> float:
    start = time.monotonic()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = kairos(["--root", str(node), "upgrade", "--source", source, "--force"])
    if code != 0:
        sys.exit(f"upgrade failed ({code}):\n{out.getvalue()}")
    return time.monotonic() - start


def dd(src: Path, dst: Path) -> float:
    dst.unlink(missing_ok=True)
    start = time.monotonic()
    run(["dd", f"if={src}", f"of={dst}", "bs=8M", "conv=fsync", "status=none"])
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image")
    parser.add_argument("--iso")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", action="store_true", help="also a dir: upgrade (slow)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kairos-bench-upgrade-", dir="/var/tmp") as tmp, \
            ExitStack() as stack:  # fmt: skip
        work = Path(tmp)
        image = image_from(args, work)
        img_mib = mib_for(image.stat().st_size)
        state_mib = ip.min_sizes(img_mib)[ip.Role.STATE]
        fs = work / "state.ext4"
        with fs.open("wb") as fh:
            fh.truncate(state_mib << 20)
        run(["mkfs.ext4", "-q", "-L", "COS_STATE", str(fs)])
        device = stack.enter_context(loop.attached(fs))
        node = work / "node"
        for d in ("run/cos", "etc", "proc", "src", "oem", "usr/local"):
            (node / d).mkdir(parents=True)
        state = stack.enter_context(mount.mounted(device, node / "run/initramfs/cos-state"))
        (state / "cOS").mkdir()
        (node / "run/cos/active_mode").touch()
        (node / "proc/cmdline").write_text("root=LABEL=COS_ACTIVE\n")
        (node / "etc/kairos-release").write_text('KAIROS_VERSION="bench-old"\n')
        (node / "src/new.squashfs").symlink_to(image.resolve())
        for slot in ("active.img", "passive.img"):
            dd(image, state / "cOS" / slot)
        run(["cat", str(image)])  # both sides read the source from the page cache
        copies, upgrades = [], []
        for _ in range(args.rounds):
            # The upgrade leaves COS_STATE read-only, as a node keeps it.
            run(["mount", "-o", "remount,rw", str(state)])
            copies.append(dd(image, state / "cOS/passive.img"))
            upgrades.append(quiet_upgrade(node, "file:/src/new.squashfs"))
        dir_line = ""
        # Upstream sizes its ext2 images by the unpacked tree: measure it.
        tree = node / "src/tree"
        run(["unsquashfs", "-q", "-n", "-d", str(tree), str(image)])
        tree_mib = mib_for(tree_size(tree))
        if args.dir:
            start = time.monotonic()
            run(["mksquashfs", str(tree), str(work / "alone.squashfs"), *upg.PACK_ARGS,
                 "-noappend", "-quiet", "-no-progress"])  # fmt: skip
            alone = time.monotonic() - start
            (work / "alone.squashfs").unlink()
            took = quiet_upgrade(node, "dir:/src/tree")
            dir_line = (f"dir: upgrade (mksquashfs on the node):     {took:7.2f} s\n"
                        f"mksquashfs alone, same arguments:          {alone:7.2f} s\n"
                        f"ratio dir: upgrade / mksquashfs: {took / alone:.2f}x")  # fmt: skip
    best_copy, best_up = min(copies), min(upgrades)
    upstream = 3 * tree_mib + 1000  # 2 x active + passive (ext2 of the tree) + 1000 MiB
    print(f"image {image.name}: {img_mib} MiB squashfs, {tree_mib} MiB unpacked; "
          f"best of {args.rounds} rounds")  # fmt: skip
    print(f"plain copy of the image (dd, fsync):        {best_copy:7.2f} s "
          f"({img_mib / best_copy:.0f} MiB/s)")  # fmt: skip
    print(f"kairos upgrade file: (checks .. switch):    {best_up:7.2f} s")
    print(f"ratio upgrade / plain copy: {best_up / best_copy:.2f}x (target < 1.3x)")
    if dir_line:
        print(dir_line)
    print(f"COS_STATE size: ours {state_mib} MiB (2 images + slack) vs upstream's formula "
          f"{upstream} MiB (3 x unpacked + 1000): {state_mib / upstream:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
