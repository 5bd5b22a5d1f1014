"""Kairosify: turn a distribution root into a Kairos-ready one (upstream's kairos-init).

The root may be a hardlinked copy of a cached tree, so every file this module changes is
replaced (unlink, then write a new inode), never edited in place: the cache stays pristine.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import kairos
from kairos.build.families import Family, OsRelease
from kairos.errors import KairosError
from kairos.run import run

log = logging.getLogger(__name__)

RESOURCES = Path(kairos.__file__).parent / "resources"
PY_SITE = "usr/lib/python3/dist-packages"

COS_UNITS = (
    "cos-setup-fs.service",
    "cos-setup-boot.service",
    "cos-setup-network.service",
    "cos-setup-reconcile.service",
    "cos-setup-reconcile.timer",
    "kairos-boot-assessment.service",
    "kairos-upgrade-notice.service",
)
# unit -> the target whose .wants/ enables it
ENABLE = {
    "cos-setup-fs.service": "sysinit.target",
    "cos-setup-boot.service": "multi-user.target",
    "cos-setup-network.service": "multi-user.target",
    "cos-setup-reconcile.timer": "timers.target",
    "kairos-boot-assessment.service": "multi-user.target",
    "kairos-upgrade-notice.service": "multi-user.target",
    "systemd-networkd.service": "multi-user.target",
    "systemd-resolved.service": "multi-user.target",
    "ssh.service": "multi-user.target",
}
# Jobs that make boots slow and uneven on an immutable system, and dracut-shutdown, which
# unpacks the initrd back into /run at every shutdown.
MASK = (
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "e2scrub_all.service",
    "apt-daily.timer",
    "apt-daily.service",
    "apt-daily-upgrade.timer",
    "apt-daily-upgrade.service",
    "fstrim.timer",
    "fstrim.service",
    "dpkg-db-backup.timer",
    "dpkg-db-backup.service",
    "dracut-shutdown.service",
)
ADMIN_GID = 900
KAIROS_UID = 1000
AGENT_SCRIPT = """#!/usr/bin/python3
# kairos-py entry point (installed by kairos build).
import sys

from kairos.cli import main

sys.exit(main())
"""


@dataclass(frozen=True)
class ReleaseInfo:
    """What goes into /etc/kairos-release."""

    name: str
    version: str
    arch: str = "amd64"
    variant: str = "core"
    model: str = "generic"


def replace_file(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write `path` as a new inode (breaking any hardlink to the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    os.chmod(path, mode)  # the umask must not decide image permissions


def replace_symlink(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.symlink_to(target)


def ensure_packages(root: Path, family: Family) -> tuple[str, ...]:
    """Install what the node needs and the root lacks; returns what was installed."""
    missing = family.missing_packages(root, family.packages())
    if missing:
        family.install_packages(root, missing)
    return missing


def install_kairos(root: Path) -> None:
    """The kairos Python package for the image's python3, and the two entry scripts."""
    src = Path(kairos.__file__).parent
    dest = root / PY_SITE / "kairos"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    compile_bytecode(root, PY_SITE + "/kairos")
    for name in ("kairos", "kairos-agent"):
        replace_file(root / "usr/bin" / name, AGENT_SCRIPT, 0o755)


def compile_bytecode(root: Path, site_dir: str) -> None:
    """Byte-compile with the image's own python3: the node's `/usr` is read-only, so without
    this every `kairos-agent` call (one per boot stage, and immucore in the initramfs)
    compiles the whole package in memory again, seconds under emulation. unchecked-hash
    pycs stay valid whatever mtimes the squashfs or the initrd's cpio give the sources."""
    if not (root / "usr/bin/python3").exists():
        return
    result = run(
        [
            "chroot", str(root), "/usr/bin/python3", "-m", "compileall", "-q",
            "--invalidation-mode", "unchecked-hash", "/" + site_dir,
        ],
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        log.warning("byte-compiling %s in the image failed: %s", site_dir, result.stderr[-300:])


def install_dracut_module(root: Path) -> None:
    module = root / "usr/lib/dracut/modules.d/28immucore"
    if module.exists():
        shutil.rmtree(module)
    module.mkdir(parents=True)
    for item in (RESOURCES / "dracut/28immucore").iterdir():
        mode = 0o755 if item.suffix == ".sh" else 0o644
        replace_file(module / item.name, item.read_bytes(), mode)
    replace_file(
        root / "etc/dracut.conf.d/99-kairos.conf", (RESOURCES / "dracut/99-kairos.conf").read_text()
    )


# Serial consoles a Kairos cmdline names. systemd gives a device 90 s to show up before it
# gives up on the getty bound to it; a slow or emulated machine busy with its first boot's
# udev coldplug can take longer, and the console then never gets a login prompt.
SERIAL_CONSOLES = ("ttyS0", "ttyS1", "ttyAMA0", "hvc0")
CONSOLE_DEVICE_TIMEOUT = "5min"


def install_units(root: Path) -> None:
    unit_dir = root / "usr/lib/systemd/system"
    for name in COS_UNITS:
        replace_file(unit_dir / name, (RESOURCES / "systemd" / name).read_text())
    etc = root / "etc/systemd/system"
    for unit, target in ENABLE.items():
        if (unit_dir / unit).exists() or (root / "lib/systemd/system" / unit).exists():
            replace_symlink(etc / f"{target}.wants" / unit, f"/usr/lib/systemd/system/{unit}")
    for unit in MASK:
        replace_symlink(etc / unit, "/dev/null")
    for tty in SERIAL_CONSOLES:
        replace_file(
            etc / f"dev-{tty}.device.d/50-kairos-console-timeout.conf",
            f"[Unit]\nJobRunningTimeoutSec={CONSOLE_DEVICE_TIMEOUT}\n",
        )


def install_system_oem(root: Path) -> tuple[str, ...]:
    dest = root / "system/oem"
    dest.mkdir(parents=True, exist_ok=True)
    names = []
    for item in sorted((RESOURCES / "system-oem").glob("*.yaml")):
        replace_file(dest / item.name, item.read_text())
        names.append(item.name)
    return tuple(names)


def release_text(info: ReleaseInfo, osr: OsRelease, family: str) -> str:
    """/etc/kairos-release with upstream kairos-init's keys."""
    values = {
        "KAIROS_ID": "kairos",
        "KAIROS_ID_LIKE": f"kairos-{info.variant}-{osr.id}",
        "KAIROS_NAME": f"kairos-{info.variant}-{osr.id}",
        "KAIROS_VERSION": info.version,
        "KAIROS_RELEASE": info.version,
        "KAIROS_FLAVOR": osr.id,
        "KAIROS_FLAVOR_RELEASE": osr.version_id,
        "KAIROS_FAMILY": family,
        "KAIROS_VARIANT": info.variant,
        "KAIROS_MODEL": info.model,
        "KAIROS_ARCH": info.arch,
        "KAIROS_TARGETARCH": info.arch,
        "KAIROS_TRUSTED_BOOT": "false",
        "KAIROS_FIPS": "false",
        "KAIROS_SOFTWARE_VERSION": "",
        "KAIROS_SOFTWARE_VERSION_PREFIX": "",
        "KAIROS_INIT_VERSION": f"kairos-py-{kairos.__version__}",
        "KAIROS_HOME_URL": "https://github.com/kairos-io/kairos",
        "KAIROS_BUG_REPORT_URL": "https://github.com/kairos-io/kairos/issues",
        "KAIROS_IMAGE_NAME": info.name,
    }
    return "".join(f'{k}="{v}"\n' for k, v in values.items())


def _edit_lines(path: Path, add: Iterable[str], key_of: int = 0) -> None:
    """Append `add` lines to a colon-separated database unless an entry with the same
    name exists; written as a new file (never in place) with the original mode."""
    lines = path.read_text().splitlines() if path.exists() else []
    names = {ln.split(":")[key_of] for ln in lines if ln}
    new = [ln for ln in add if ln.split(":")[key_of] not in names]
    if not new:
        return
    st = path.stat() if path.exists() else None
    mode = st.st_mode & 0o7777 if st else 0o644
    replace_file(path, "\n".join([*lines, *new]) + "\n", mode)
    if st:  # /etc/shadow and /etc/gshadow belong to group shadow
        os.chown(path, st.st_uid, st.st_gid)


def add_accounts(root: Path) -> None:
    """The `admin` group (gid 900), its sudo rule, and the `kairos` user, locked: the live
    media's password is set at boot by /system/oem/10_accounting.yaml."""
    etc = root / "etc"
    _edit_lines(etc / "group", [f"admin:x:{ADMIN_GID}:kairos", f"kairos:x:{KAIROS_UID}:"])
    _edit_lines(etc / "gshadow", ["admin:!::kairos", "kairos:!::"])
    _edit_lines(
        etc / "passwd",
        [f"kairos:x:{KAIROS_UID}:{KAIROS_UID}:Kairos:/home/kairos:/bin/bash"],
    )
    _edit_lines(etc / "shadow", ["kairos:!:19000:0:99999:7:::"])
    home = root / "home/kairos"
    if not home.exists():
        home.mkdir(parents=True, mode=0o750)
        for item in (etc / "skel").glob(".*"):
            if item.is_file():
                shutil.copy2(item, home / item.name)
                os.chown(home / item.name, KAIROS_UID, KAIROS_UID)
        os.chown(home, KAIROS_UID, KAIROS_UID)
    replace_file(etc / "sudoers.d/kairos", "%admin ALL=(ALL) NOPASSWD: ALL\n", 0o440)


def remove_identity(root: Path) -> None:
    """SSH host keys and machine-id are made on first boot, one per node."""
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    # An empty machine-id (not a missing one) tells systemd to make a fresh one at boot.
    replace_file(root / "etc/machine-id", "", 0o444)
    dbus_id = root / "var/lib/dbus/machine-id"
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()


def kernel_version(root: Path) -> str:
    """The newest kernel under /boot (`vmlinuz-<version>`)."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"), key=lambda p: p.stat().st_mtime)
    if not kernels:
        raise KairosError(
            f"{root}/boot: no kernel (vmlinuz-*) in the root filesystem.",
            hint="the distribution's kernel package must be installed",
        )
    return kernels[-1].name.removeprefix("vmlinuz-")


def link_kernel(root: Path, kver: str) -> None:
    """/boot/vmlinuz as upstream names it; /boot/initrd is added once it is built."""
    replace_symlink(root / "boot/vmlinuz", f"vmlinuz-{kver}")


def kairosify(root: Path, family: Family, osr: OsRelease, info: ReleaseInfo) -> Sequence[str]:
    """Everything except the initrd, in order. Returns the /system/oem files installed."""
    ensure_packages(root, family)
    install_kairos(root)
    install_dracut_module(root)
    install_units(root)
    oem = install_system_oem(root)
    (root / "oem").mkdir(mode=0o770, exist_ok=True)  # immucore mounts COS_OEM here (ro root)
    replace_file(root / "etc/kairos-release", release_text(info, osr, family.name))
    add_accounts(root)
    remove_identity(root)
    link_kernel(root, kernel_version(root))
    return oem
