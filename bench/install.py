"""Install onto a loop disk against a plain copy of the same bytes to the same disk.

An install writes the system image three times (active, passive, recovery) plus a few MiB
of GRUB and filesystem metadata; the physical limit is `dd` of those three images onto the
same loop device, flushed. Prints both, the install's steps, the fixed cost (the install's
time beyond the plain copy: partitioning, filesystems, GRUB, stages) and the ratio (target
< 1.3x). The loop device's backing file sits in the host's page cache, so the plain copy runs
at memory speed and the fixed cost weighs more here than on a real disk.

    python3 bench/install.py [--image IMG.squashfs | --root DIR] [--pad-mib N] [--disk-mib N]

`--pad-mib N` appends N MiB of incompressible data to the image (a real node image carries
k3s, firmware and tools: 1-2 GiB), to see how the fixed cost weighs at that size.

Without arguments the image is a gzip squashfs of the newest cached bootstrap root, made
once and kept under /var/cache/kairos-py/bench-install-<hash>/.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from kairos.agent import install as inst
from kairos.agent import install_plan as ip
from kairos.context import Context
from kairos.disk import devices as blk
from kairos.disk import loop
from kairos.log import Progress
from kairos.run import run

CACHE = Path(os.environ.get("KAIROS_CACHE", "/var/cache/kairos-py"))
CONFIG = {"install": {"nousers": True}}


def default_root() -> Path:
    roots = [p for p in CACHE.glob("rootfs-*") if (p / "usr/lib/grub/i386-pc").is_dir()]
    if not roots:
        sys.exit(f"no cached root with GRUB modules under {CACHE}; pass --image or --root")
    return max(roots, key=lambda p: p.stat().st_mtime)


def cached_image(root: Path) -> Path:
    key = hashlib.sha256(f"{root}:{root.stat().st_mtime_ns}:gzip-1M".encode()).hexdigest()[:16]
    out = CACHE / f"bench-install-{key}" / "rootfs.squashfs"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".part")
        print(f"making {out} from {root} (once)...", file=sys.stderr)
        run(["mksquashfs", str(root), str(tmp), *inst.REPACK_ARGS, "-noappend", "-quiet",
             "-no-progress", "-one-file-system"])  # fmt: skip
        tmp.rename(out)
    return out


def padded_image(image: Path, pad_mib: int) -> Path:
    """`image` with a /var/lib/bench-pad file of `pad_mib` random MiB appended (cached)."""
    out = image.with_name(f"{image.stem}-pad{pad_mib}.squashfs")
    if out.exists():
        return out
    print(f"making {out} (once)...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kairos-bench-pad-", dir=out.parent) as tmp:
        pad = Path(tmp) / "pad"
        pad.mkdir()
        run(["dd", "if=/dev/urandom", f"of={pad / 'bench-pad'}", "bs=1M", f"count={pad_mib}",
             "status=none"])  # fmt: skip
        part = out.with_suffix(".part")
        run(["cp", "--sparse=never", str(image), str(part)])
        # Appending (no -noappend) adds the directory's contents to the image's root.
        run(["mksquashfs", str(pad), str(part), "-quiet", "-no-progress"])
        part.rename(out)
    return out


def plain_copy(image: Path, device: Path) -> float:
    """dd the image three times onto the disk (where the three copies would go), flushed."""
    size_mib = image.stat().st_size // (1 << 20) + 1
    start = time.monotonic()
    for i in range(3):
        run(["dd", f"if={image}", f"of={device}", "bs=1M", f"seek={i * size_mib}",
             "conv=fsync,notrunc", "status=none"])  # fmt: skip
    return time.monotonic() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path)
    parser.add_argument("--root", type=Path)
    parser.add_argument("--pad-mib", type=int, default=0)
    parser.add_argument("--disk-mib", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    image = args.image or cached_image(args.root or default_root())
    if args.pad_mib:
        image = padded_image(image, args.pad_mib)
    img_mib = image.stat().st_size / (1 << 20)
    with tempfile.TemporaryDirectory(prefix="kairos-bench-install-") as tmp, ExitStack() as stack:
        node = Path(tmp) / "node"
        node.mkdir()
        ctx = Context(root=node)
        # The node root is a scratch directory (no host stage files run); the image is
        # linked into it as the install source.
        (node / "source.squashfs").symlink_to(image.resolve())
        options = ip.parse_options(CONFIG)
        source, problems = ip.find_source(ctx, "file:/source.squashfs")
        assert source is not None, problems
        layout, _, _ = ip.build_layout(options, ip.image_mib_for(source))
        disk_mib = args.disk_mib or layout.min_disk_bytes() // (1 << 20) + 256
        disk = Path(tmp) / "disk.img"
        with disk.open("wb") as fh:
            fh.truncate(disk_mib << 20)
        device = stack.enter_context(loop.attached(disk, partscan=True))
        # Both sides read the source from the page cache; rounds alternate, best of each
        # counts (the host is shared with other jobs).
        run(["cat", str(image)], capture=True)
        baselines: list[float] = []
        installs: list[tuple[float, list[tuple[str, float]]]] = []
        for _ in range(args.rounds):
            baselines.append(plain_copy(image, device))
            plan, problems = ip.make_plan(
                ctx, options, CONFIG, blk.list_devices(), device_flag=str(device),
                source_flag="file:/source.squashfs",
            )  # fmt: skip
            if plan is None or problems:
                sys.exit("\n".join(problems))
            progress = Progress(quiet=True)
            start = time.monotonic()
            inst.install(ctx, plan, inst.InstallInputs(options, "#cloud-config\n{}\n"), progress)
            installs.append((time.monotonic() - start, progress.steps))
        baseline = min(baselines)
        total, steps = min(installs)
    written = 3 * img_mib
    print(f"image {image} ({img_mib:.1f} MiB), disk {disk_mib} MiB (loop device)")
    print(f"best of {args.rounds} rounds each")
    print(f"plain copy of the same bytes (3 x dd, fsync): {baseline:7.2f} s "
          f"({written / baseline:.0f} MiB/s)")  # fmt: skip
    print(f"kairos install (partition .. done):          {total:7.2f} s")
    for name, secs in steps:
        print(f"    {name:<16}{secs:7.2f} s")
    print(f"fixed cost (install - plain copy):           {total - baseline:7.2f} s")
    print(f"ratio install / plain copy: {total / baseline:.2f}x (target < 1.3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
