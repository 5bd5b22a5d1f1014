"""The initrd: a dracut image cached by its real inputs, plus the kairos code appended.

dracut takes about a minute, so its output is cached under a key made of the kernel
version, the immucore dracut module and config, and the root's package set. The kairos
Python package changes with every code edit, so it is not inside the dracut image: it
rides in a second cpio archive concatenated after it (the kernel unpacks concatenated
archives in order), which takes milliseconds to make.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path

from kairos.build.chroot import chroot_mounts
from kairos.build.kairosify import PY_SITE, RESOURCES
from kairos.image.debian import CACHE_ROOT
from kairos.run import run

# network-legacy: livenet fetches the squashfs from the "online" initqueue hook, which
# only the dhclient-based handler runs (with systemd-networkd it waits forever).
DRACUT_MODULES = ("dmsquash-live", "livenet", "network-legacy", "immucore")
DRACUT_OMIT = (
    "plymouth", "rescue", "nfs", "iscsi", "nbd", "fcoe", "fcoe-uefi", "multipath", "mdraid",
    "dmraid", "btrfs", "cifs", "nvdimm", "bluetooth", "biosdevname", "memstrack",
)  # fmt: skip
# Packages of the image's python3 site directory the initramfs code may import.
APPENDED_PACKAGES = ("kairos", "yaml")


def dracut_key(root: Path, kver: str) -> str:
    h = hashlib.sha256()
    h.update(kver.encode())
    h.update(" ".join(dracut_argv(kver, "")).encode())
    for path in sorted((RESOURCES / "dracut").rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(RESOURCES)).encode())
            h.update(path.read_bytes())
    # Package upgrades (kernel modules, dracut, python) change the image too.
    status = root / "var/lib/dpkg/status"
    if status.exists():
        h.update(status.read_bytes())
    return h.hexdigest()[:16]


# Kernel modules no Kairos node boots from: cluster/network filesystems, Fibre Channel and
# iSCSI offload HBAs, InfiniBand and Wi-Fi. They are a third of a generic initrd.
DRACUT_OMIT_DRIVERS = (
    "ocfs2", "gfs2", "xfs", "btrfs", "f2fs", "ceph", "afs", "cifs", "smb.*", "nfs.*", "jfs",
    "reiserfs", "nilfs2", "lpfc", "qla2xxx", "qla4xxx", "bfa", "be2iscsi", "bnx2fc", "bnx2i",
    "csiostor", "qedf", "qedi", "fnic", "snic", "mlx4_ib", "mlx5_ib", "ib_.*", "rdma_.*",
    "iw_.*", "cfg80211", "mac80211", "iwl.*", "ath.*", "brcm.*", "rtw.*", "mt76.*",
)  # fmt: skip


def dracut_argv(kver: str, out: str) -> list[str]:
    return [
        "dracut",
        "--no-hostonly",
        "--no-hostonly-cmdline",
        "--add",
        " ".join(DRACUT_MODULES),
        # Boot splash, rescue shell and storage/network stacks Kairos never boots from only
        # make the image bigger (and GRUB's read of it slower).
        "--omit",
        " ".join(DRACUT_OMIT),
        "--omit-drivers",
        " ".join(DRACUT_OMIT_DRIVERS),
        "--force",
        out,
        kver,
    ]


def dracut_image(root: Path, kver: str) -> Path:
    """The cached dracut initrd for this root and kernel, built in a chroot when missing."""
    cached = CACHE_ROOT / f"initrd-{dracut_key(root, kver)}.img"
    if cached.exists():
        return cached
    inside = f"/var/tmp/kairos-initrd-{os.getpid()}.img"
    with chroot_mounts(root):
        run(["chroot", str(root), *dracut_argv(kver, inside)])
    built = root / inside.lstrip("/")
    tmp = cached.with_name(cached.name + f".tmp-{os.getpid()}")
    shutil.move(built, tmp)
    tmp.rename(cached)
    return cached


def _newc_header(name: bytes, mode: int, size: int, ino: int, nlink: int) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc_archive(entries: Iterable[tuple[str, Path | None]]) -> bytes:
    """A newc cpio archive (the format the kernel unpacks) of `(archive path, source)`
    entries; a None source is a directory. Owners root, mtime 0: reproducible bytes."""
    out = io.BytesIO()
    ino = 1
    for arc, src in entries:
        name = arc.lstrip("/").encode()
        if src is None or src.is_dir():
            data, mode, nlink = b"", stat.S_IFDIR | 0o755, 2
        else:
            data = src.read_bytes()
            mode, nlink = stat.S_IFREG | (src.stat().st_mode & 0o777), 1
        head = _newc_header(name, mode, len(data), ino, nlink) + name + b"\0"
        out.write(head + _pad(len(head)) + data + _pad(len(data)))
        ino += 1
    trailer = _newc_header(b"TRAILER!!!", 0, 0, 0, 1) + b"TRAILER!!!\0"
    out.write(trailer + _pad(len(trailer)))
    return out.getvalue()


def package_entries(
    root: Path, packages: Iterable[str] = APPENDED_PACKAGES
) -> list[tuple[str, Path | None]]:
    """Archive entries for the python packages (and their parent directories)."""
    entries: list[tuple[str, Path | None]] = []
    parts = Path(PY_SITE).parts
    for i in range(1, len(parts) + 1):
        entries.append(("/".join(parts[:i]), None))
    for pkg in packages:
        base = root / PY_SITE / pkg
        if not base.is_dir():
            continue
        for path in sorted([base, *base.rglob("*")]):
            # Only the image's own bytecode (made by kairosify for its python3) rides along.
            if path.suffix == ".pyc" and "__pycache__" not in path.parts:
                continue
            entries.append((str(path.relative_to(root)), None if path.is_dir() else path))
    return entries


def build_initrd(root: Path, kver: str, dest: Path) -> Path:
    """`dest` = cached dracut image + gzip'd cpio of the kairos (and yaml) packages."""
    base = dracut_image(root, kver)
    extra = gzip.compress(newc_archive(package_entries(root)), compresslevel=6, mtime=0)
    with open(dest, "wb") as out, open(base, "rb") as src:
        shutil.copyfileobj(src, out, 1 << 20)
        # The kernel looks for the next archive on a 4-byte boundary.
        out.write(_pad(out.tell()))
        out.write(extra)
    return dest
