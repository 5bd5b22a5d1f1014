"""`kairos-agent state`: boot-state detection, lsblk parsing, release keys, CLI output."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from kairos import cli
from kairos.agent import state as st
from kairos.context import Context

LSBLK = {
    "blockdevices": [
        {
            "name": "vda",
            "path": "/dev/vda",
            "label": None,
            "fstype": None,
            "mountpoint": None,
            "size": 64424509440,
            "ro": False,
            "children": [
                {"name": "vda1", "label": "COS_GRUB", "fstype": "vfat", "mountpoint": None,
                 "size": 67108864, "ro": False, "partlabel": "efi", "partuuid": "p-1"},
                {"name": "vda2", "path": "/dev/vda2", "label": "COS_OEM", "fstype": "ext4",
                 "mountpoint": "/oem", "size": 67108864, "ro": False, "partlabel": "oem",
                 "partuuid": "p-2", "uuid": "fs-2"},
                {"name": "vda3", "path": "/dev/vda3", "label": "COS_RECOVERY", "fstype": "ext4",
                 "mountpoint": None, "size": "4404019200", "ro": "0", "partlabel": "recovery"},
                {"name": "vda4", "path": "/dev/vda4", "label": "COS_STATE", "fstype": "ext4",
                 "mountpoint": "/run/initramfs/cos-state", "size": 9000000000, "ro": False,
                 "partlabel": "state"},
                {"name": "vda5", "path": "/dev/vda5", "label": "COS_PERSISTENT", "fstype": "ext4",
                 "mountpoint": "/usr/local", "size": 50000000000, "ro": False,
                 "partlabel": "persistent"},
            ],
        },
        {"name": "sr0", "path": "/dev/sr0", "label": "COS_LIVE", "fstype": "iso9660",
         "mountpoint": None, "size": 900000000, "ro": True},
    ]
}  # fmt: skip

MOUNTS = """\
/dev/loop0 / ext2 ro,relatime 0 0
/dev/vda2 /oem ext4 rw,relatime 0 0
/dev/vda4 /run/initramfs/cos-state ext4 ro,relatime 0 0
/dev/vda5 /usr/local ext4 rw,relatime 0 0
"""

RELEASE = """\
KAIROS_NAME="kairos-core-debian-bookworm"
KAIROS_VERSION="v0.3.0"
KAIROS_FLAVOR="debian"
KAIROS_FLAVOR_RELEASE="bookworm"
KAIROS_FAMILY=debian
KAIROS_VARIANT='core'
KAIROS_MODEL=generic
KAIROS_ARCH="amd64"
# a comment
"""


def node(root: Path, files: dict[str, str | bytes]) -> Context:
    for path, content in files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content)
    return Context(root=root)


def installed(tmp_path: Path, sentinel: str = "active_mode") -> Context:
    return node(
        tmp_path,
        {
            f"/run/cos/{sentinel}": "",
            "/proc/cmdline": "BOOT_IMAGE=/boot/vmlinuz root=LABEL=COS_ACTIVE console=ttyS0",
            "/proc/mounts": MOUNTS,
            "/proc/sys/kernel/hostname": "node-1\n",
            "/etc/machine-id": "0123456789abcdef0123456789abcdef\n",
            "/etc/kairos-release": RELEASE,
            "/usr/bin/systemctl": "",
        },
    )


def fake_lsblk(ctx: Context) -> tuple[st.BlockDevice, ...]:
    return st.parse_lsblk(json.dumps(LSBLK))


# --- boot state --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img", "active_boot"),
        ("root=LABEL=COS_PASSIVE cos-img/filename=/cOS/passive.img", "passive_boot"),
        ("root=LABEL=COS_SYSTEM cos-img/filename=/cOS/recovery.img", "recovery_boot"),
        ("root=live:LABEL=COS_RECOVERY rd.live.dir=/ rd.live.squashimg=x", "recovery_boot"),
        ("root=LABEL=COS_SYSTEM vga=795 nomodeset kairos.reset", "autoreset_boot"),
        ("root=live:CDLABEL=COS_LIVE rd.live.dir=/ rd.cos.disable", "livecd_boot"),
        ("initrd=x netboot rd.cos.disable", "livecd_boot"),
        ("root=live:CDLABEL=COS_LIVE kairos.ram", "active_boot"),
        ("root=live:CDLABEL=COS_LIVE kairos.ram.oem=64", "active_boot"),
        ("root=/dev/sda1 quiet", "unknown"),
    ],
)
def test_boot_from_cmdline(cmdline: str, expected: str) -> None:
    assert st.boot_from_cmdline(cmdline) == expected


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("active.conf", "active_boot"),
        ("passive.conf", "passive_boot"),
        ("recovery.conf", "recovery_boot"),
        ("statereset.conf", "autoreset_boot"),
        ("active", "unknown"),
        ("", "unknown"),
        (None, "livecd_boot"),
    ],
)
def test_boot_from_uki_entry(entry: str | None, expected: str) -> None:
    assert st.boot_from_cmdline("rd.immucore.uki console=tty1", entry) == expected


@pytest.mark.parametrize(
    ("sentinel", "expected"),
    [
        ("active_mode", "active_boot"),
        ("passive_mode", "passive_boot"),
        ("recovery_mode", "recovery_boot"),
        ("autoreset_mode", "autoreset_boot"),
        ("live_mode", "livecd_boot"),
    ],
)
def test_sentinel_wins_over_cmdline(tmp_path: Path, sentinel: str, expected: str) -> None:
    ctx = node(tmp_path, {f"/run/cos/{sentinel}": "", "/proc/cmdline": "root=LABEL=COS_ACTIVE"})
    assert st.detect_boot(ctx) == expected


def test_cmdline_is_the_fallback(tmp_path: Path) -> None:
    ctx = node(tmp_path, {"/run/cos/unknown": "", "/proc/cmdline": "root=LABEL=COS_PASSIVE"})
    assert st.detect_boot(ctx) == st.BootState.PASSIVE
    assert st.detect_boot(Context(root=tmp_path / "empty")) == st.BootState.UNKNOWN


def _efivar(text: str) -> bytes:
    return b"\x06\x00\x00\x00" + (text + "\0").encode("utf-16-le")


def test_uki_boot_reads_efivars(tmp_path: Path) -> None:
    efi = "/sys/firmware/efi/efivars"
    ctx = node(
        tmp_path,
        {
            "/proc/cmdline": "rd.immucore.uki",
            f"{efi}/LoaderDevicePartUUID-{st.EFI_SYSTEMD}": _efivar("c0ffee"),
            f"{efi}/LoaderEntrySelected-{st.EFI_SYSTEMD}": _efivar("passive.conf"),
        },
    )
    assert st.detect_boot(ctx) == st.BootState.PASSIVE
    # Booted from removable media: no LoaderDevicePartUUID -> live.
    (tmp_path / efi.lstrip("/") / f"LoaderDevicePartUUID-{st.EFI_SYSTEMD}").unlink()
    assert st.detect_boot(ctx) == st.BootState.LIVECD


# --- parsing -----------------------------------------------------------------------


def test_parse_lsblk_flattens_and_types() -> None:
    devices = st.parse_lsblk(json.dumps(LSBLK))
    assert [d.name for d in devices] == ["vda", "vda1", "vda2", "vda3", "vda4", "vda5", "sr0"]
    vda1 = devices[1]
    assert vda1.path == "/dev/vda1" and vda1.label == "COS_GRUB" and vda1.mountpoint == ""
    vda3 = devices[3]
    assert vda3.size == 4404019200 and vda3.read_only is False  # strings from old lsblk
    assert devices[-1].read_only is True
    assert st.parse_lsblk("") == ()


def test_parse_lsblk_garbage_is_an_error() -> None:
    with pytest.raises(st.KairosError, match="not JSON"):
        st.parse_lsblk("NAME LABEL\nvda1 COS_OEM")


def test_parse_release_handles_quotes_and_comments() -> None:
    release = st.parse_release(RELEASE)
    assert release["KAIROS_VERSION"] == "v0.3.0"
    assert release["KAIROS_VARIANT"] == "core" and release["KAIROS_FAMILY"] == "debian"
    assert "# a comment" not in release


def test_parse_mounts_unescapes_and_last_wins() -> None:
    mounts = st.parse_mounts("a /mnt/my\\040disk ext4 rw 0 0\nb /x ext4 rw 0 0\nc /x ext4 ro 0 0\n")
    assert mounts == {"/mnt/my disk": ("rw",), "/x": ("ro",)}


# --- the whole state -------------------------------------------------------------------


def test_installed_node(tmp_path: Path) -> None:
    runtime = st.collect(installed(tmp_path), devices=fake_lsblk)
    assert runtime.boot == st.BootState.ACTIVE
    assert runtime.oem == st.PartitionState(
        mounted=True,
        name="/dev/vda2",
        label="oem",
        filesystemlabel="COS_OEM",
        mount_point="/oem",
        size_bytes=67108864,
        type="ext4",
        read_only=False,
        found=True,
        uuid="p-2",
    )
    # Read-only comes from the mount options, not the device flag (upstream's findmnt rule).
    assert runtime.state.mount_point == "/run/initramfs/cos-state" and runtime.state.read_only
    assert runtime.persistent.mount_point == "/usr/local" and not runtime.persistent.read_only
    assert runtime.recovery.found and not runtime.recovery.mounted
    assert runtime.efi.type == "vfat"
    assert runtime.kairos.version == "v0.3.0" and runtime.kairos.flavor == "debian"
    assert runtime.kairos.init == "systemd"
    assert runtime.hostname == "node-1"
    assert runtime.uuid == "0123456789abcdef0123456789abcdef-node-1"
    assert not runtime.upgrade_failure and not runtime.in_ram


def test_release_lookup_follows_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """KAIROS_KEY then KEY, in kairos-release then os-release (upstream OSRelease)."""
    ctx = node(
        tmp_path,
        {
            "/etc/kairos-release": "FLAVOR=alpine\n",
            "/etc/os-release": 'KAIROS_VERSION="v9"\nVERSION="12 (bookworm)"\n',
            "/sbin/openrc": "",
        },
    )
    info = st.collect(ctx, devices=lambda _: ()).kairos
    assert (info.flavor, info.version, info.init) == ("alpine", "v9", "openrc")
    monkeypatch.setenv("UUID", "fixed-id")
    assert st.collect(ctx, devices=lambda _: ()).uuid == "fixed-id"


def test_fallback_is_reported_with_its_reason(tmp_path: Path) -> None:
    ctx = installed(tmp_path, sentinel="passive_mode")
    (tmp_path / "run/cos/upgrade_failure").write_text("boot assessment: v2 did not come up\n")
    runtime = st.collect(ctx, devices=fake_lsblk)
    assert runtime.boot == st.BootState.PASSIVE
    assert runtime.upgrade_failure
    assert runtime.fallback_reason == "boot assessment: v2 did not come up"


def test_live_node_has_no_partitions(tmp_path: Path) -> None:
    ctx = node(tmp_path, {"/run/cos/live_mode": "", "/proc/cmdline": "root=live:CDLABEL=COS_LIVE"})
    runtime = st.collect(ctx, devices=lambda _: ())
    assert runtime.boot == st.BootState.LIVECD
    assert runtime.oem == st.PartitionState() and not runtime.oem.found


def test_lsblk_is_not_run_for_an_offline_root(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]]
) -> None:
    assert st.list_block_devices(Context(root=tmp_path)) == ()
    assert recorded_commands == []


def test_lsblk_argv_on_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []

    def fake(argv: Any, **_: Any) -> tuple[int, bytes, bytes]:
        calls.append(tuple(argv))
        return 0, json.dumps(LSBLK).encode(), b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    monkeypatch.setattr("kairos.run.which", lambda tool: f"/usr/bin/{tool}")
    devices = st.list_block_devices(Context(root=Path("/")))
    assert calls == [("lsblk", "--json", "--bytes", "--output", st.LSBLK_COLUMNS)]
    assert len(devices) == 7


BLKID = """\
DEVNAME=/dev/vda2
LABEL=COS_OEM
UUID=fs-2
BLOCK_SIZE=4096
TYPE=ext4
PARTLABEL=oem
PARTUUID=p-2

DEVNAME=/dev/vda3
LABEL=my\\ label
TYPE=ext4
"""


def test_parse_blkid() -> None:
    probed = st.parse_blkid(BLKID)
    assert probed["/dev/vda2"]["LABEL"] == "COS_OEM" and probed["/dev/vda2"]["TYPE"] == "ext4"
    assert probed["/dev/vda3"]["LABEL"] == "my label"


def test_without_udev_labels_come_from_blkid(monkeypatch: pytest.MonkeyPatch) -> None:
    """lsblk reads labels from the udev database; with no udev they are all empty."""
    bare = {"blockdevices": [{"name": "vda2", "path": "/dev/vda2", "mountpoint": "/oem"}]}
    outputs = {"lsblk": json.dumps(bare), "blkid": BLKID}
    calls: list[tuple[str, ...]] = []

    def fake(argv: Any, **_: Any) -> tuple[int, bytes, bytes]:
        calls.append(tuple(argv))
        return 0, outputs[argv[0]].encode(), b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    monkeypatch.setattr("kairos.run.which", lambda tool: f"/usr/bin/{tool}")
    (dev,) = st.list_block_devices(Context(root=Path("/")))
    assert calls[1] == ("blkid", "-c", "/dev/null", "-o", "export")
    assert (dev.label, dev.fstype, dev.partlabel, dev.mountpoint) == (
        "COS_OEM",
        "ext4",
        "oem",
        "/oem",
    )


def test_with_udev_blkid_is_not_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fake(argv: Any, **_: Any) -> tuple[int, bytes, bytes]:
        calls.append(argv[0])
        return 0, json.dumps(LSBLK).encode(), b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    monkeypatch.setattr("kairos.run.which", lambda tool: f"/usr/bin/{tool}")
    st.list_block_devices(Context(root=Path("/")))
    assert calls == ["lsblk"]


def test_lsblk_failure_is_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kairos.run._spawn", lambda argv, **_: (1, b"", b"lsblk: boom"))
    monkeypatch.setattr("kairos.run.which", lambda tool: f"/usr/bin/{tool}")
    assert st.list_block_devices(Context(root=Path("/"))) == ()


def test_lsblk_that_cannot_start_is_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(argv: Any, **_: Any) -> tuple[int, bytes, bytes]:
        raise FileNotFoundError(argv[0])

    monkeypatch.setattr("kairos.run._spawn", missing)
    monkeypatch.setattr("kairos.run.which", lambda tool: f"/usr/bin/{tool}")
    assert st.list_block_devices(Context(root=Path("/"))) == ()


def test_query() -> None:
    runtime = st.Runtime(
        uuid="u",
        persistent=st.PartitionState(),
        recovery=st.PartitionState(),
        oem=st.PartitionState(mount_point="/oem", mounted=True, found=True),
        state=st.PartitionState(),
        efi=st.PartitionState(),
        boot=st.BootState.RECOVERY,
        in_ram=False,
        upgrade_failure=False,
        fallback_reason="",
        hostname="h",
    )
    assert st.query(runtime, "boot") == "recovery_boot"
    assert st.query(runtime, ".oem.mount_point") == "/oem"
    with pytest.raises(st.KairosError, match="no such key in the state"):
        st.query(runtime, "oem.nope")


# --- CLI ---------------------------------------------------------------------------


def test_cli_yaml_json_and_get(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    installed(tmp_path)
    assert cli.main(["--root", str(tmp_path), "state"]) == 0
    data = yaml.safe_load(capsys.readouterr().out)
    assert list(data)[:6] == ["uuid", "persistent", "recovery", "oem", "state", "efi"]
    assert data["boot"] == "active_boot" and data["kairos"]["version"] == "v0.3.0"
    assert cli.main(["--root", str(tmp_path), "state", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kairos"]["flavor"] == "debian"
    assert cli.main(["--root", str(tmp_path), "state", "get", "boot"]) == 0
    assert capsys.readouterr().out == "active_boot\n"
    assert cli.main(["--root", str(tmp_path), "state", "get", "in_ram"]) == 0
    assert capsys.readouterr().out == "false\n"
    assert cli.main(["--root", str(tmp_path), "state", "get", "kairos", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["flavor_release"] == "bookworm"
    assert cli.main(["--root", str(tmp_path), "state", "get", "nope"]) == 1
    assert "no such key in the state" in capsys.readouterr().err


def test_cli_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["state", "--help"], ["state", "get", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        out = capsys.readouterr().out
        assert "examples:" in out and "kairos-agent state" in out


@pytest.mark.integration
def test_real_lsblk_finds_a_labelled_loop_device(tmp_path: Path) -> None:
    """Real lsblk (and blkid where udev is absent) on a throwaway image file."""
    from kairos.run import run, which

    if not all(which(t) for t in ("losetup", "mkfs.ext4", "mount", "umount", "lsblk")):
        pytest.skip("util-linux/e2fsprogs tools missing")
    image, mnt = tmp_path / "oem.img", tmp_path / "mnt"
    image.write_bytes(b"")
    os.truncate(image, 32 << 20)
    mnt.mkdir()
    try:
        loop = run(["losetup", "--find", "--show", image]).stdout.strip()
    except st.KairosError as exc:
        pytest.skip(f"no loop devices here: {exc}")
    try:
        run(["mkfs.ext4", "-q", "-L", "COS_OEM", loop])
        run(["mount", "-o", "ro", loop, mnt])
        try:
            ours = [d for d in st.list_block_devices(Context(root=Path("/"))) if d.path == loop]
            mounts = st.parse_mounts(Path("/proc/mounts").read_text())
        finally:
            run(["umount", mnt])
    finally:
        run(["losetup", "-d", loop])
    assert len(ours) == 1
    oem = st._partition(ours, st.Label.OEM, mounts)
    assert (oem.found, oem.filesystemlabel, oem.type) == (True, "COS_OEM", "ext4")
    assert oem.mounted and oem.mount_point == str(mnt) and oem.read_only
    assert oem.size_bytes == 32 << 20
