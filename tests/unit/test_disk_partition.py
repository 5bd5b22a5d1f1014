"""GPT layouts and the exact sfdisk / mkfs / losetup / mount commands."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.disk import format as fmt
from kairos.disk import loop, mount
from kairos.disk.partition import (
    GPT_OVERHEAD_MIB,
    MIB,
    REST_MIN_MIB,
    Filesystem,
    Layout,
    Partition,
    Role,
    mib_for,
    partition_path,
    sfdisk_argv,
    sfdisk_script,
    wipe_argv,
)
from kairos.errors import KairosError

LAYOUT = Layout(
    (
        Partition(Role.BIOS, "bios", None, 1, Filesystem.NONE),
        Partition(Role.EFI, "efi", "COS_GRUB", 64, Filesystem.VFAT),
        Partition(Role.OEM, "oem", "COS_OEM", 64, Filesystem.EXT4),
        Partition(Role.PERSISTENT, "persistent", "COS_PERSISTENT", 0, Filesystem.EXT4),
    )
)


def test_sfdisk_argv_and_script_exact() -> None:
    assert wipe_argv("/dev/vda") == ["wipefs", "--all", "--force", "/dev/vda"]
    assert sfdisk_argv("/dev/vda") == ["sfdisk", "--quiet", "--wipe", "always", "/dev/vda"]
    assert sfdisk_script(LAYOUT).splitlines() == [
        "label: gpt",
        'size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="bios"',
        'size=64MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="efi"',
        'size=64MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="oem"',
        'type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="persistent"',
    ]


@pytest.mark.parametrize("name", ['my"part', "a\\b", "two\nlines"])
def test_sfdisk_script_refuses_names_it_cannot_quote(name: str) -> None:
    bad = Layout((*LAYOUT.partitions[:3], Partition(Role.EXTRA, name, None, 8, Filesystem.NONE)))
    with pytest.raises(KairosError, match="cannot hold quotes"):
        sfdisk_script(bad)


def test_place_fills_the_disk() -> None:
    disk = 1024 * MIB
    placed = LAYOUT.place(disk)
    assert [p.start_mib for p in placed] == [1, 2, 66, 130]
    assert placed[-1].size_mib == 1024 - GPT_OVERHEAD_MIB - 129
    assert placed[-1].start_mib + placed[-1].size_mib <= disk // MIB - 1


def test_min_disk_bytes() -> None:
    assert LAYOUT.min_disk_bytes() == (129 + REST_MIN_MIB + GPT_OVERHEAD_MIB) * MIB
    fixed = Layout(LAYOUT.partitions[:3])
    assert fixed.min_disk_bytes() == (129 + GPT_OVERHEAD_MIB) * MIB


def test_layout_json_round_trip() -> None:
    assert Layout.from_json(LAYOUT.to_json()) == LAYOUT


@pytest.mark.parametrize(
    ("disk", "n", "expected"),
    [("/dev/sda", 2, "/dev/sda2"), ("/dev/nvme0n1", 1, "/dev/nvme0n1p1"),
     ("/dev/loop7", 3, "/dev/loop7p3"), ("/dev/vdb", 5, "/dev/vdb5")],
)  # fmt: skip
def test_partition_path(disk: str, n: int, expected: str) -> None:
    assert partition_path(disk, n) == expected


def test_mib_for_rounds_up() -> None:
    assert mib_for(1) == 1
    assert mib_for(MIB) == 1
    assert mib_for(MIB + 1) == 2


@pytest.mark.parametrize(
    ("fs", "label", "argv"),
    [
        (Filesystem.VFAT, "COS_GRUB", ["mkfs.vfat", "-F", "32", "-I", "-n", "COS_GRUB", "/dev/x1"]),
        (Filesystem.EXT4, "COS_OEM", ["mkfs.ext4", "-F", "-q", "-L", "COS_OEM", "/dev/x1"]),
        (Filesystem.EXT2, None, ["mkfs.ext2", "-F", "-q", "/dev/x1"]),
        (Filesystem.XFS, "DATA", ["mkfs.xfs", "-f", "-L", "DATA", "/dev/x1"]),
        (Filesystem.BTRFS, "DATA", ["mkfs.btrfs", "-f", "-L", "DATA", "/dev/x1"]),
    ],
)
def test_mkfs_argv(fs: Filesystem, label: str | None, argv: list[str]) -> None:
    assert fmt.mkfs_argv("/dev/x1", fs, label) == argv


def test_none_is_left_unformatted(recorded_commands: list[tuple[str, ...]]) -> None:
    assert fmt.mkfs_argv("/dev/x1", Filesystem.NONE, "X") is None
    fmt.make_filesystem("/dev/x1", Filesystem.NONE, "X")
    assert recorded_commands == []


def test_label_limits() -> None:
    assert fmt.label_problem(Filesystem.VFAT, "COS_GRUB") is None
    problem = fmt.label_problem(Filesystem.VFAT, "A_VERY_LONG_LABEL")
    assert problem is not None and "11" in problem


def test_probe_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    outputs = {"/dev/x1": "DEVNAME=/dev/x1\nLABEL=COS_OEM\nTYPE=ext4\n", "/dev/x2": "TYPE=none\n"}
    calls: list[tuple[str, ...]] = []

    def fake(argv: tuple[str, ...], **_: object) -> tuple[int, bytes, bytes]:
        calls.append(tuple(argv))
        return 0, outputs[argv[-1]].encode(), b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    labels = fmt.probe_labels(["/dev/x1", "/dev/x2"])
    assert dict(labels) == {"COS_OEM": "/dev/x1"}
    assert calls[0] == ("blkid", "-p", "-o", "export", "/dev/x1")
    assert fmt.find_by_label(labels, "COS_OEM") == Path("/dev/x1")
    with pytest.raises(KairosError, match="COS_STATE"):
        fmt.find_by_label(labels, "COS_STATE")


def test_loop_attach_and_detach(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, ...]] = []

    def fake(argv: tuple[str, ...], **_: object) -> tuple[int, bytes, bytes]:
        calls.append(tuple(argv))
        return 0, b"/dev/loop9\n" if argv[0] == "losetup" and "--show" in argv else b"", b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    img = tmp_path / "disk.img"
    with pytest.raises(RuntimeError), loop.attached(img, partscan=True) as dev:
        assert dev == Path("/dev/loop9")
        raise RuntimeError("boom")
    # Detached even though the body failed.
    assert calls == [
        ("losetup", "--find", "--show", "--partscan", str(img)),
        ("losetup", "--detach", "/dev/loop9"),
    ]


def test_mount_unmounts_on_error(recorded_commands: list[tuple[str, ...]], tmp_path: Path) -> None:
    target = tmp_path / "m"
    with (
        pytest.raises(RuntimeError),
        mount.mounted("/dev/x1", target, fstype="squashfs", options=("loop", "ro")),
    ):
        raise RuntimeError("boom")
    assert target.is_dir()
    assert recorded_commands == [
        ("mount", "-t", "squashfs", "-o", "loop,ro", "/dev/x1", str(target)),
        ("umount", str(target)),
    ]


def test_busy_unmount_falls_back_to_lazy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[str, ...]] = []

    def fake(argv: tuple[str, ...], **_: object) -> tuple[int, bytes, bytes]:
        calls.append(tuple(argv))
        busy = argv[0] == "umount" and "--lazy" not in argv
        return (32, b"", b"target is busy") if busy else (0, b"", b"")

    monkeypatch.setattr("kairos.run._spawn", fake)
    mount.unmount(tmp_path)
    assert calls == [("umount", str(tmp_path)), ("umount", "--lazy", str(tmp_path))]
