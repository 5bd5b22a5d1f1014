"""lsblk parsing, device resolution and `auto` disk selection, from lsblk-style fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kairos.context import Context
from kairos.disk import devices as blk

GIB = 1 << 30


def dev(name: str, size: int, type: str = "disk", **kw: Any) -> dict[str, Any]:
    """One lsblk --json -b -O node (the fields we read, in lsblk's spelling)."""
    node: dict[str, Any] = {
        "name": name,
        "kname": name,
        "path": f"/dev/{name}",
        "type": type,
        "size": size,
        "rm": kw.pop("rm", False),
        "ro": kw.pop("ro", False),
        "hotplug": kw.pop("hotplug", False),
        "tran": kw.pop("tran", None),
        "fstype": kw.pop("fstype", None),
        "label": kw.pop("label", None),
        "partlabel": kw.pop("partlabel", None),
        "uuid": kw.pop("uuid", None),
        "mountpoints": kw.pop("mountpoints", [None]),
    }
    children = kw.pop("children", None)
    if children:
        node["children"] = children
    assert not kw, kw
    return node


def lsblk(*nodes: dict[str, Any]) -> str:
    return json.dumps({"blockdevices": list(nodes)})


# A live-ISO node: the ISO on sr0, a USB stick, two fixed disks (one with a mounted part),
# a 16 GiB zram swap and loop devices that are all bigger than the real disks.
LIVE_HOST = lsblk(
    dev("loop0", 900 * GIB, "loop", fstype="squashfs", mountpoints=["/run/rootfsbase"]),
    dev("sr0", 1 * GIB, "rom", fstype="iso9660", label="COS_LIVE",
        mountpoints=["/run/initramfs/live"], rm=True),
    dev("sda", 64 * GIB, tran="usb", rm=True),
    dev("sdb", 200 * GIB, children=[dev("sdb1", 200 * GIB, "part", fstype="ext4")]),
    dev("vda", 100 * GIB),
    dev("nvme0n1", 150 * GIB),
    dev("zram0", 999 * GIB),
)  # fmt: skip


def test_parse_tree_and_types() -> None:
    devices = blk.parse_lsblk(LIVE_HOST)
    names = [d.name for d in devices]
    assert names == ["loop0", "sr0", "sda", "sdb", "vda", "nvme0n1", "zram0"]
    sdb = devices[3]
    assert sdb.type is blk.DeviceType.DISK and sdb.size == 200 * GIB
    assert sdb.children[0].type is blk.DeviceType.PART
    assert sdb.children[0].fstype == "ext4"
    assert devices[1].mountpoints == ("/run/initramfs/live",)
    assert devices[2].removable


def test_old_lsblk_string_flags_and_single_mountpoint() -> None:
    old = {"name": "sdc", "type": "disk", "size": "1000", "rm": "1", "ro": "0",
           "mountpoint": "/mnt"}  # fmt: skip
    (d,) = blk.parse_lsblk(json.dumps({"blockdevices": [old]}))
    assert d.removable and not d.read_only
    assert d.size == 1000 and d.path == "/dev/sdc" and d.mountpoints == ("/mnt",)


def test_unknown_type_is_other() -> None:
    (d,) = blk.parse_lsblk(lsblk({**dev("md0", GIB), "type": "raid1"}))
    assert d.type is blk.DeviceType.OTHER


def test_auto_picks_largest_fixed_disk_not_boot_medium() -> None:
    devices = blk.parse_lsblk(LIVE_HOST)
    best = blk.pick_auto(devices)
    # sdb is larger but vda/nvme are candidates too; sdb is not mounted, so it wins.
    assert best is not None and best.path == "/dev/sdb"


def test_auto_never_picks_the_boot_medium_even_if_largest() -> None:
    text = lsblk(
        dev("sda", 500 * GIB, children=[
            dev("sda1", 1 * GIB, "part", label="COS_LIVE", fstype="iso9660"),
        ]),
        dev("vdb", 20 * GIB),
    )  # fmt: skip
    best = blk.pick_auto(blk.parse_lsblk(text))
    assert best is not None and best.path == "/dev/vdb"


def test_auto_skips_host_root_disk() -> None:
    text = lsblk(
        dev("nvme0n1", 900 * GIB, children=[dev("nvme0n1p2", 899 * GIB, "part",
                                                 mountpoints=["/"])]),
        dev("sdb", 10 * GIB),
    )  # fmt: skip
    best = blk.pick_auto(blk.parse_lsblk(text))
    assert best is not None and best.name == "sdb"


def test_auto_nothing_suitable() -> None:
    text = lsblk(dev("loop1", GIB, "loop"), dev("ram0", GIB), dev("sr0", GIB, "rom"),
                 dev("sdz", 8 * GIB, rm=True), dev("sdy", 8 * GIB, ro=True))  # fmt: skip
    assert blk.pick_auto(blk.parse_lsblk(text)) is None


def test_find_and_parent() -> None:
    devices = blk.parse_lsblk(LIVE_HOST)
    part = blk.find(devices, "/dev/sdb1")
    assert part is not None and part.type is blk.DeviceType.PART
    parent = blk.parent_disk(devices, part)
    assert parent is not None and parent.name == "sdb"
    assert blk.find(devices, "/dev/nope") is None


def test_boot_medium_detection() -> None:
    devices = {d.name: d for d in blk.parse_lsblk(LIVE_HOST)}
    assert blk.is_boot_medium(devices["sr0"])
    assert blk.is_boot_medium(devices["loop0"])
    assert not blk.is_boot_medium(devices["vda"])


def test_resolve_by_id_link_under_root(tmp_path: Path) -> None:
    by_id = tmp_path / "dev/disk/by-id"
    by_id.mkdir(parents=True)
    (tmp_path / "dev/vda").touch()
    (by_id / "virtio-abc").symlink_to("../../vda")
    ctx = Context(root=tmp_path)
    assert blk.resolve_link(ctx, "/dev/disk/by-id/virtio-abc") == "/dev/vda"


def test_swaps_and_holders(tmp_path: Path) -> None:
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/swaps").write_text(
        "Filename\tType\tSize\tUsed\tPriority\n/dev/sdb2  partition  1024  0  -2\n"
    )
    holders = tmp_path / "sys/class/block/sdb1/holders"
    holders.mkdir(parents=True)
    (holders / "dm-0").touch()
    ctx = Context(root=tmp_path)
    assert blk.swap_devices(ctx) == frozenset({"/dev/sdb2"})
    (sdb,) = [d for d in blk.parse_lsblk(LIVE_HOST) if d.name == "sdb"]
    assert blk.holders(ctx, sdb) == ("dm-0",)


def test_list_devices_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []

    def fake(argv: Any, **_: Any) -> tuple[int, bytes, bytes]:
        calls.append(tuple(argv))
        return 0, LIVE_HOST.encode(), b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    assert len(blk.list_devices()) == 7
    assert calls == [("lsblk", "--json", "--bytes", "--output-all")]


def test_invalid_json_is_an_error() -> None:
    from kairos.errors import KairosError

    with pytest.raises(KairosError, match="invalid JSON"):
        blk.parse_lsblk("{nope")
