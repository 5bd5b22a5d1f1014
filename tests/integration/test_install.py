"""Install onto loop disks made from image files in tmp_path, with the real tools.

The node root is a directory in tmp_path (`--root`), so stage files and sentinels are the
test's own; the disk is a loop device over a sparse file this test creates and always
detaches. Refusals must leave every byte of the disk image unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from kairos.cli import main
from kairos.disk import loop, mount
from kairos.run import run, which

pytestmark = pytest.mark.integration

TOOLS = ("sgdisk", "losetup", "mksquashfs", "unsquashfs", "mkfs.vfat", "mkfs.ext4", "blkid")
DISK_MIB = 640


def _capable() -> str | None:
    missing = [t for t in TOOLS if which(t) is None]
    if missing:
        return f"missing tools: {missing}"
    if not Path("/dev/loop-control").exists():
        return "no loop device support"
    if not Path("/usr/lib/grub/i386-pc/boot.img").exists():
        return "host GRUB modules (grub-pc-bin) missing: the test image borrows them"
    try:
        if int(Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0], 16) >> 21 & 1:
            return None
    except (OSError, IndexError, ValueError):
        pass
    return "needs CAP_SYS_ADMIN (mount, loop devices)"


skip_reason = _capable()
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(skip_reason), reason=str(skip_reason)),
]


def make_root(path: Path) -> Path:
    """A tiny system root: dummy kernel and initrd, and GRUB modules borrowed from the host."""
    (path / "boot").mkdir(parents=True)
    (path / "boot/vmlinuz").write_bytes(b"kernel" * 1000)
    (path / "boot/initrd").write_bytes(b"initrd" * 1000)
    for target in ("i386-pc", "x86_64-efi"):
        shutil.copytree(f"/usr/lib/grub/{target}", path / "usr/lib/grub" / target)
    (path / "etc").mkdir()
    (path / "etc/os-release").write_text("ID=test\n")
    for d in ("oem", "usr/local", "dev", "proc", "sys", "tmp"):
        (path / d).mkdir(parents=True, exist_ok=True)
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A node root that booted from a live medium: the squashfs plus its mounted tree."""
    root = tmp_path / "node"
    tree = make_root(root / "run/rootfsbase")
    live = root / "run/initramfs/live"
    live.mkdir(parents=True)
    run(["mksquashfs", str(tree), str(live / "rootfs.squashfs"), "-comp", "gzip",
         "-noappend", "-quiet", "-no-progress"])  # fmt: skip
    return root


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(image file, loop device) of a sparse disk this test owns."""
    image = tmp_path / "disk.img"
    with image.open("wb") as fh:
        fh.truncate(DISK_MIB << 20)
    with loop.attached(image, partscan=True) as device:
        yield image, device


CONFIG = """#cloud-config
users:
- name: kairos
  passwd: kairos
  groups: [admin]
install:
  grub_options:
    extra_cmdline: "testmarker=1"
  bind_mounts: [/var/lib/mine]
stages:
  before-install:
  - files:
    - path: /tmp/before-install-ran
      content: yes
  after-install-chroot:
  - files:
    - path: /oem/chroot-ran
      content: written inside the new system
  after-install:
  - files:
    - path: /tmp/after-install-ran
      content: yes
"""


def write_config(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def labels(device: Path) -> dict[str, str]:
    from kairos.agent.install import list_partitions

    found = {}
    for part in list_partitions(str(device)):
        value = run(["blkid", "-p", "-o", "value", "-s", "LABEL", part], check=False)
        if value.stdout.strip():
            found[value.stdout.strip()] = part
    return found


def test_install_onto_loop_disk(
    node: Path,
    disk: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, device = disk
    config = write_config(tmp_path)
    monkeypatch.setenv("KAIROS_AGENT_PROGRESS", "1")
    code = main(["--root", str(node), "manual-install", str(config), "--device", str(device)])
    out = capsys.readouterr()
    assert code == 0, out.err
    steps = [json.loads(line) for line in out.out.splitlines() if line.startswith("{")]
    done = [s["step"] for s in steps if s.get("status") == "done"]
    assert done == ["partition", "before-install", "active", "bootloader", "recovery",
                    "passive", "after-install", "done"]  # fmt: skip

    table = run(["sgdisk", "-p", str(device)]).stdout
    for name in ("bios", "efi", "oem", "recovery", "state", "persistent"):
        assert f" {name}" in table
    assert "EF02" in table and "EF00" in table
    found = labels(device)
    assert set(found) >= {"COS_GRUB", "COS_OEM", "COS_RECOVERY", "COS_STATE", "COS_PERSISTENT"}

    source = node / "run/initramfs/live/rootfs.squashfs"
    with ExitStack() as stack:
        mnt = {
            label: stack.enter_context(
                mount.mounted(found[label], tmp_path / "check" / label, options=("ro",))
            )
            for label in ("COS_STATE", "COS_RECOVERY", "COS_OEM", "COS_PERSISTENT")
        }
        state, recovery, oem = mnt["COS_STATE"], mnt["COS_RECOVERY"], mnt["COS_OEM"]
        for img in (state / "cOS/active.img", state / "cOS/passive.img",
                    recovery / "cOS/recovery.img"):  # fmt: skip
            # A GRUB-readable live squashfs is installed byte for byte.
            assert sha256(img) == sha256(source)
            listing = run(["unsquashfs", "-ls", str(img)]).stdout
            assert "squashfs-root/boot/vmlinuz" in listing
            assert "squashfs-root/boot/initrd" in listing
        custom = oem / "90_custom.yaml"
        assert stat.S_IMODE(custom.stat().st_mode) == 0o640
        saved = yaml.safe_load(custom.read_text())
        assert custom.read_text().startswith("#cloud-config")
        assert saved["users"][0]["name"] == "kairos"
        assert saved["install"]["grub_options"]["extra_cmdline"] == "testmarker=1"
        assert "testmarker=1" in (oem / "grubenv").read_text()
        mounts = yaml.safe_load((oem / "10_user_custom_mounts.yaml").read_text())
        env = mounts["stages"]["rootfs"][0]["environment"]
        assert env == {"CUSTOM_BIND_MOUNTS": "/var/lib/mine"}
        # after-install-chroot ran inside the new system, with COS_OEM bound at /oem.
        assert (oem / "chroot-ran").read_text() == "written inside the new system"
        state_file = yaml.safe_load((mnt["COS_PERSISTENT"] / ".kairos-state").read_text())
        assert state_file["first-install-source"] == "live"
        assert state_file["first-install"].endswith("Z")
        assert (state / "grub2/grub.cfg").is_file()
    # mtools reads the ESP without kernel vfat support (not every test kernel has it).
    esp = run(["mdir", "-b", "-i", found["COS_GRUB"], "::/EFI/BOOT"]).stdout
    assert "BOOTX64.EFI" in esp.upper()
    assert (node / "tmp/before-install-ran").read_text() == "yes"
    assert (node / "tmp/after-install-ran").read_text() == "yes"


def test_install_from_dir_repacks(
    disk: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, device = disk
    root = tmp_path / "node"
    make_root(root / "srv/tree")
    config = write_config(tmp_path, "#cloud-config\ninstall:\n  nousers: true\n")
    code = main(["--root", str(root), "manual-install", str(config), "--device", str(device),
                 "--source", "dir:/srv/tree"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    found = labels(device)
    with mount.mounted(found["COS_STATE"], tmp_path / "state", options=("ro",)) as state:
        head = (state / "cOS/active.img").read_bytes()[:22]
        assert head[:4] == b"hsqs" and head[20] == 1  # gzip: GRUB reads it
        listing = run(["unsquashfs", "-ls", str(state / "cOS/active.img")]).stdout
        assert "squashfs-root/usr/lib/grub/i386-pc/boot.img" in listing


# --- refusals leave the disk untouched -----------------------------------------------------


def refused(args: list[str], image: Path, capsys: pytest.CaptureFixture[str]) -> str:
    before = sha256(image)
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert sha256(image) == before
    return err


def test_refusals_leave_disk_unchanged(
    node: Path, disk: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, device = disk
    base = ["--root", str(node), "manual-install"]
    # No admin user.
    config = write_config(tmp_path, "#cloud-config\nusers:\n- name: bob\n")
    err = refused([*base, str(config), "--device", str(device)], image, capsys)
    assert "users: no user in group admin" in err
    # auto without install.auto: never picked silently.
    ok = write_config(tmp_path, CONFIG)
    err = refused([*base, str(ok)], image, capsys)
    assert "install.device: no disk named" in err
    # A device that does not exist, and several problems at once.
    both = write_config(tmp_path, "#cloud-config\ninstall:\n  device: /dev/nonexistent-kairos\n")
    err = refused([*base, str(both)], image, capsys)
    assert (
        "users: no user in group admin" in err and "/dev/nonexistent-kairos does not exist" in err
    )


def test_partition_and_mounted_disk_refused(
    node: Path, disk: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, device = disk
    run(["sgdisk", "--new=1:0:+100M", "--new=2:0:0", str(device)])
    run(["partx", "-u", str(device)], check=False)
    run(["udevadm", "settle"], check=False)
    part = Path(f"{device}p1")
    run(["mkfs.ext4", "-q", "-F", str(part)])
    config = write_config(tmp_path)
    base = ["--root", str(node), "manual-install", str(config)]
    err = refused([*base, "--device", str(part)], image, capsys)
    assert f"{part} is a partition, install needs a whole disk (use the whole disk {device})" in err
    with mount.mounted(part, tmp_path / "busy"):
        err = refused([*base, "--device", str(device)], image, capsys)
    assert f"{device} is mounted at {tmp_path / 'busy'}" in err


def test_too_small_disk_refused(
    node: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "small.img"
    with image.open("wb") as fh:
        fh.truncate(200 << 20)
    config = write_config(tmp_path)
    with loop.attached(image) as device:
        err = refused(["--root", str(node), "manual-install", str(config), "--device", str(device)],
                      image, capsys)  # fmt: skip
    assert f"{device} has 200 MiB, the plan needs at least" in err


def test_dry_run_writes_nothing(
    node: Path, disk: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image, device = disk
    before = sha256(image)
    config = write_config(tmp_path)
    code = main(["--root", str(node), "manual-install", str(config), "--device", str(device),
                 "--dry-run", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    plan = json.loads(out)["plan"]
    assert plan["device"] == str(device)
    assert plan["disk_bytes"] == DISK_MIB << 20
    assert [p["name"] for p in plan["partitions"]] == [
        "bios", "efi", "oem", "recovery", "state", "persistent",
    ]  # fmt: skip
    assert sha256(image) == before
    assert os.listdir(tmp_path / "node/run") == ["rootfsbase", "initramfs"] or set(
        os.listdir(tmp_path / "node/run")
    ) == {"rootfsbase", "initramfs"}
