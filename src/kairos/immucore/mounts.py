"""The mount actions of the normal boot, one function per kind of step of the plan.

Every external tool goes through `kairos.run.run`; paths are the initramfs's own.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from kairos.errors import KairosError
from kairos.immucore.planner import Kind, Mount, RootPlan, device_path
from kairos.run import run

UDEV_RULE = Path("/run/udev/rules.d/61-immucore.rules")
# systemd's marker of an initramfs. Only there are tmpfs, overlay and bind mounts made with
# the mount(2) system call: a fork and exec of mount(8) per path costs 0.3-1 s on emulated
# CPUs and a layout has some 40 of them. Everywhere else (tests, the host) mount(8) runs
# through kairos.run, where it is logged and can be recorded.
IN_INITRAMFS = os.path.exists("/etc/initrd-release")
MS_BIND = 4096


def _mount(source: str, target: str, fstype: str, options: str = "", flags: int = 0) -> None:
    """`mount -t fstype -o options source target` (`--bind` when flags has MS_BIND)."""
    if IN_INITRAMFS:
        _syscall_mount(source, target, fstype, options, flags)
        return
    if flags & MS_BIND:
        run(["mount", "--bind", source, target])
    else:
        run(["mount", "-t", fstype, "-o", options, source, target])


def _syscall_mount(source: str, target: str, fstype: str, options: str, flags: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    args = (source.encode(), target.encode(), fstype.encode(), flags, options.encode() or None)
    if libc.mount(*args) != 0:
        err = ctypes.get_errno()
        raise KairosError(
            f"mount {source} on {target} ({fstype or 'bind'}, {options}): {os.strerror(err)}."
        )


def wait_for(path: str, timeout: float) -> bool:
    """Poll for a device node (udev creates by-label links as disks are probed)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def wait_state(plan: RootPlan, timeout: float) -> None:
    """Wait for the disk (any boot waits for its root disk: logged apart from our own work)."""
    if not wait_for(device_path(plan.state_device), timeout):
        raise KairosError(
            f"{plan.state_device}: the state partition did not appear within {timeout:.0f} s.",
            hint="check the disk is attached and was installed by kairos-agent install",
        )


def mount_state(plan: RootPlan, timeout: float) -> None:
    wait_state(plan, timeout)
    device = device_path(plan.state_device)
    os.makedirs(plan.state_mount, exist_ok=True)
    if not os.path.ismount(plan.state_mount):
        run(["mount", "-o", "ro", device, plan.state_mount])


def attach_image(plan: RootPlan) -> str:
    """Loop-attach the image and have udev link it as /dev/disk/by-label/<root label>.

    Squashfs has no label, so the link root= waits for would never appear by itself; a udev
    rule (in /run, so the booted system's udev keeps the link too) names the loop device.
    """
    image = plan.image_path
    if not os.path.isfile(image):
        raise KairosError(
            f"cos-img/filename={plan.image}: no such file on {plan.state_device}.",
            hint="boot the fallback or recovery entry, then upgrade or reset this slot",
        )
    argv = ["losetup", "--find", "--show"]
    if not plan.read_write:
        argv.append("--read-only")
    loop = run([*argv, image]).stdout.strip()
    if not loop.startswith("/dev/loop"):
        raise KairosError(f"losetup: unexpected answer {loop!r} for {image}.")
    name = os.path.basename(loop)
    UDEV_RULE.parent.mkdir(parents=True, exist_ok=True)
    UDEV_RULE.write_text(
        "# immucore: the loop device holding the booted OS image.\n"
        f'SUBSYSTEM=="block", KERNEL=="{name}", SYMLINK+="disk/by-label/{plan.root_label}"\n'
    )
    run(["udevadm", "control", "--reload"])
    run(["udevadm", "trigger", "--action=change", "--settle", f"/sys/class/block/{name}"])
    link = f"/dev/disk/by-label/{plan.root_label}"
    if not wait_for(link, 30):
        raise KairosError(f"udev did not create {link} for {loop}.", hint=f"see {UDEV_RULE}")
    return loop


def mount_device(m: Mount) -> bool:
    """Mount a block device; False when an optional one is absent."""
    device = device_path(m.what)
    if not wait_for(device, m.timeout):
        if m.optional:
            return False
        raise KairosError(f"{m.what}: device not found within {m.timeout:g} s.")
    try:
        os.makedirs(m.where, exist_ok=True)
    except OSError as exc:
        raise KairosError(
            f"{m.where}: no mount point for {m.what}: {exc.strerror}.",
            hint="the image must have this directory (the root is read-only)",
        ) from exc
    argv = ["mount"]
    if m.options:
        argv += ["-o", ",".join(m.options)]
    run([*argv, device, m.where])
    return True


def mount_tmpfs(m: Mount) -> None:
    os.makedirs(m.where, exist_ok=True)
    mode = () if any(o.startswith("mode=") for o in m.options) else ("mode=0755",)
    _mount("tmpfs", m.where, "tmpfs", ",".join((*mode, *m.options)))


def mount_overlay(m: Mount, sysroot: str) -> bool:
    """An overlay over the image's directory; False when the image has no such directory
    (the root is read-only, so no mount point can be made for it)."""
    if m.upper is None:
        raise KairosError(f"{m.where}: overlay without an upper directory.")
    if not os.path.isdir(m.where):
        return False
    upper = m.upper
    os.makedirs(f"{upper}/upper", exist_ok=True)
    os.makedirs(f"{upper}/work", exist_ok=True)
    options = f"lowerdir={m.where},upperdir={upper}/upper,workdir={upper}/work"
    _mount("overlay", m.where, "overlay", options)
    return True


def seed(target: str, source: str | None) -> bool:
    """Create a persistent copy on first use only, from the image's content.

    Never again afterwards: re-syncing the image over the user's copy at each boot loses
    their edits (upstream kairos#3390). The copy is made beside and renamed into place, so
    a power cut halfway leaves no half-seeded directory that would count as done.
    """
    if os.path.isdir(target):
        return False
    tmp = target + ".seeding"
    if os.path.lexists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    if source is not None and os.path.isdir(source):
        run(["cp", "-a", source, tmp])
    else:
        os.mkdir(tmp, 0o755)
    os.rename(tmp, target)
    return True


def bind(m: Mount) -> bool:
    """Bind the persistent copy over the path; False when there is no mount point."""
    seed(m.what, m.seed_from)
    if not os.path.isdir(m.where):
        try:
            os.makedirs(m.where)
        except OSError:
            return False  # outside the writable overlays and absent from the image
    _mount(m.what, m.where, "", flags=MS_BIND)
    return True


def apply(m: Mount, sysroot: str) -> bool:
    """Carry out one layout mount; False when it was skipped (optional, no mount point)."""
    if m.kind is Kind.TMPFS:
        mount_tmpfs(m)
        return True
    if m.kind is Kind.OVERLAY:
        return mount_overlay(m, sysroot)
    if m.kind is Kind.BIND:
        return bind(m)
    return mount_device(m)


def write_file(path: str, text: str) -> None:
    """Atomically: temp file, fsync, rename."""
    tmp = f"{path}.immucore-tmp"
    with open(tmp, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.rename(tmp, path)
