"""System image formats for the same root: size, build time, and whether GRUB 2.06 reads it.

GRUB boots `/boot/vmlinuz` and `/boot/initrd` from INSIDE each system image (loopback), so
an image format is only usable if the bootloader's filesystem module reads it. For each
squashfs compression (and ext2, upstream's format) this prints the image size, the time to
make it, and whether `grub-fstest IMG cmp /boot/initrd ...` reads the files back intact.
The physical limit printed beside: the time to read the tree once (tar to /dev/null) and
its apparent size.

    python3 bench/image_formats.py [ROOT]     # default: the newest cached bootstrap root
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from kairos.run import run

CACHE = Path(os.environ.get("KAIROS_CACHE", "/var/cache/kairos-py"))
SQUASHFS = {
    "gzip-9": ["-comp", "gzip"],  # mksquashfs' gzip default level
    "gzip-6": ["-comp", "gzip", "-Xcompression-level", "6"],
    "lzo": ["-comp", "lzo"],
    "xz": ["-comp", "xz"],
    "zstd-3": ["-comp", "zstd", "-Xcompression-level", "3"],
}
BLOCK = ["-b", "1M"]  # upstream's recovery squashfs block size


def default_root() -> Path:
    roots = [p for p in CACHE.glob("rootfs-*") if p.is_dir() and (p / "usr").is_dir()]
    if not roots:
        sys.exit(f"no cached root under {CACHE}; pass a root directory")
    return max(roots, key=lambda p: p.stat().st_mtime)


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def boot_files(root: Path) -> tuple[str, Path] | None:
    """The biggest kernel or initrd file of the root (node path, host path): read back via GRUB."""
    found = [
        p
        for p in (root / "boot").glob("*")
        if p.is_file() and not p.is_symlink() and p.name.startswith(("initrd", "vmlinuz"))
    ]
    if not found:
        return None
    best = max(found, key=lambda p: p.stat().st_size)
    return "/" + str(best.relative_to(root)), best


def grub_reads(image: Path, probe: tuple[str, Path] | None) -> str:
    if shutil.which("grub-fstest") is None:
        return "grub-fstest missing"
    if probe is None:
        return "no kernel in root"
    result = run(["grub-fstest", str(image), "cmp", probe[0], str(probe[1])], check=False)
    if result.returncode == 0:
        return "yes"
    return "NO: " + (result.stderr.strip().splitlines() or ["?"])[-1].removeprefix("grub-fstest: ")


def cpu_seconds() -> float:
    """CPU time of finished children: unlike wall time, other jobs on the host barely move it."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mib(n: int) -> str:
    return f"{n / (1 << 20):8.1f} MiB"


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else default_root()
    probe = boot_files(root)
    apparent = tree_bytes(root)
    start = time.monotonic()
    run(["tar", "-C", str(root), "-cf", "/dev/null", "."])
    read_secs = time.monotonic() - start
    print(f"root: {root}  apparent size {mib(apparent)}  files probed: {probe and probe[0]}")
    print(f"physical limit: read the tree once {read_secs:6.1f} s (tar > /dev/null); "
          f"the smallest image is the best compressor's", flush=True)  # fmt: skip
    print(f"{'format':<15}{'size':>13}{'ratio':>7}{'wall':>9}{'cpu':>9}  grub 2.06 reads it")
    with tempfile.TemporaryDirectory(prefix="kairos-bench-") as tmp:
        for name, args in SQUASHFS.items():
            out = Path(tmp) / f"{name}.squashfs"
            start, cpu = time.monotonic(), cpu_seconds()
            run(["mksquashfs", str(root), str(out), *args, *BLOCK, "-noappend", "-quiet",
                 "-no-progress", "-one-file-system"])  # fmt: skip
            secs, cpu = time.monotonic() - start, cpu_seconds() - cpu
            size = out.stat().st_size
            print(f"squashfs {name:<7}{mib(size)}{size / apparent:7.2f}{secs:8.1f}s{cpu:8.1f}s  "
                  f"{grub_reads(out, probe)}", flush=True)  # fmt: skip
            out.unlink()
        out = Path(tmp) / "ext2.img"
        size_mib = int(apparent * 1.25 / (1 << 20)) + 64
        start, cpu = time.monotonic(), cpu_seconds()
        run(["truncate", "-s", f"{size_mib}M", str(out)])
        run(["mkfs.ext2", "-q", "-F", "-d", str(root), "-L", "COS_ACTIVE", str(out)])
        secs = time.monotonic() - start
        allocated = out.stat().st_blocks * 512
        print(
            f"ext2 (sparse) {mib(allocated)}{allocated / apparent:8.2f}{secs:9.1f}s  "
            f"{grub_reads(out, probe)}  (file size {size_mib} MiB, copied as that much)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
