"""The install plan: sizes, order, labels and filesystems; device resolution; refusals."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest

from kairos.agent import install_plan as ip
from kairos.context import Context
from kairos.disk import devices as blk
from kairos.disk.partition import MIB, Filesystem, Role
from tests.unit.test_disk_devices import GIB, dev, lsblk

ADMIN = {"users": [{"name": "kairos", "groups": ["admin"]}]}
IMAGE_BYTES = 700 * MIB


def squashfs_bytes(compression_id: int, size: int = 4096) -> bytes:
    head = b"hsqs" + b"\0" * 16 + struct.pack("<H", compression_id)
    return head + b"\0" * (size - len(head))


def live_root(tmp_path: Path, compression_id: int = 1, size: int = IMAGE_BYTES) -> Context:
    """A node root that booted from our live medium (sparse squashfs of `size` bytes)."""
    live = tmp_path / "run/initramfs/live"
    live.mkdir(parents=True)
    with (live / "rootfs.squashfs").open("wb") as fh:
        fh.write(squashfs_bytes(compression_id))
        fh.truncate(size)
    boot = tmp_path / "run/rootfsbase/boot"
    boot.mkdir(parents=True)
    (boot / "vmlinuz").write_bytes(b"k")
    (boot / "initrd").write_bytes(b"i")
    return Context(root=tmp_path)


DISKS = blk.parse_lsblk(
    lsblk(
        dev("sr0", GIB, "rom", fstype="iso9660", label="COS_LIVE",
            mountpoints=["/run/initramfs/live"]),
        dev("vda", 20 * GIB, children=[dev("vda1", 20 * GIB, "part", fstype="ext4")]),
        dev("vdb", 40 * GIB),
        dev("vdc", 1 * GIB),
        dev("vdd", 30 * GIB, children=[dev("vdd1", 30 * GIB, "part", mountpoints=["/mnt/x"])]),
    )
)  # fmt: skip


def plan_for(
    ctx: Context, config: dict[str, Any], **kw: Any
) -> tuple[ip.InstallPlan | None, list[str]]:
    return ip.make_plan(ctx, ip.parse_options(config), config, DISKS, **kw)


def test_default_layout_order_sizes_labels(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    plan, problems = plan_for(ctx, {**ADMIN, "install": {"device": "/dev/vdb"}})
    assert problems == []
    assert plan is not None
    parts = plan.layout.partitions
    assert [p.name for p in parts] == ["bios", "efi", "oem", "recovery", "state", "persistent"]
    assert [p.label for p in parts] == [
        None, "COS_GRUB", "COS_OEM", "COS_RECOVERY", "COS_STATE", "COS_PERSISTENT",
    ]  # fmt: skip
    assert [p.fs for p in parts] == [Filesystem.NONE, Filesystem.VFAT] + [Filesystem.EXT4] * 4
    assert [p.type_code for p in parts][:3] == ["EF02", "EF00", "8300"]
    img = 700
    assert plan.image_mib == img
    sizes = {p.role: p.size_mib for p in parts}
    assert sizes[Role.BIOS] == 1 and sizes[Role.EFI] == 64 and sizes[Role.OEM] == 64
    # STATE: two images (not three as upstream) plus slack; RECOVERY: one plus slack.
    assert sizes[Role.STATE] == 2 * img + ip.slack_mib(2, img)
    assert 2 * img < sizes[Role.STATE] < 3 * img
    assert sizes[Role.RECOVERY] == img + ip.slack_mib(1, img)
    assert sizes[Role.PERSISTENT] == 0
    placed = plan.layout.place(plan.disk_bytes)
    assert placed[-1].size_mib > 30_000  # persistent takes the rest of the 40 GiB disk
    assert plan.source.kind is ip.SourceKind.SQUASHFS and plan.source.compression == "gzip"


def test_custom_partitions_and_extras(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    config = {
        **ADMIN,
        "install": {
            "device": "/dev/vdb",
            "partitions": {
                "oem": {"size": 128, "fs": "ext2"},
                "state": {"size": 8000},
                "recovery": {"size": 100},  # too small for the image: bumped, with a warning
                "persistent": {"size": 4096, "fs": "xfs"},
            },
            "extra-partitions": [
                {"name": "data", "label": "DATA", "size": 0, "fs": "ext4"},
                {"name": "scratch", "label": "SCRATCH", "size": 512},
            ],
        },
    }
    plan, problems = plan_for(ctx, config)
    assert problems == []
    assert plan is not None
    parts = plan.layout.partitions
    assert [p.name for p in parts] == [
        "bios", "efi", "oem", "recovery", "state", "persistent", "scratch", "data",
    ]  # fmt: skip
    by = {p.name: p for p in parts}
    assert by["oem"].size_mib == 128 and by["oem"].fs is Filesystem.EXT2
    assert by["state"].size_mib == 8000
    assert by["recovery"].size_mib == ip.min_sizes(700)[Role.RECOVERY]
    assert by["persistent"].size_mib == 4096 and by["persistent"].fs is Filesystem.XFS
    assert by["scratch"].fs is Filesystem.EXT2  # upstream's default for extras
    assert by["data"].size_mib == 0 and by["data"].label == "DATA"
    assert any("install.partitions.recovery.size" in w for w in plan.warnings)


def test_layout_problems_all_at_once(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    config = {
        **ADMIN,
        "install": {
            "device": "/dev/vdb",
            "partitions": {"state": {"fs": "vfat"}, "boot": {"size": 5}},
            "extra-partitions": [
                {"name": "a", "size": 0},
                {"name": "b", "label": "COS_OEM", "size": 10, "fs": "zfs"},
            ],
        },
    }
    _, problems = plan_for(ctx, config)
    text = "\n".join(problems)
    assert "install.partitions.state.fs: 'vfat' cannot hold COS_STATE" in text
    assert "install.partitions.boot: not a Kairos partition" in text
    assert "both take the rest of the disk" in text
    assert "install.extra-partitions[1].fs: unknown filesystem 'zfs'" in text
    assert "install.extra-partitions[1].label: COS_OEM belongs to the Kairos layout" in text


def test_plan_json_shape(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    plan, _ = plan_for(ctx, {**ADMIN, "install": {"device": "/dev/vdb", "reboot": True}})
    assert plan is not None
    data = plan.to_json()
    assert data["device"] == "/dev/vdb" and data["partition_table"] == "gpt"
    assert [p["label"] for p in data["partitions"]][1:3] == ["COS_GRUB", "COS_OEM"]
    assert [i["file"] for i in data["images"]] == [
        "/cOS/active.img", "/cOS/recovery.img", "/cOS/passive.img",
    ]  # fmt: skip
    assert {i["label"] for i in data["images"]} == {"COS_ACTIVE", "COS_PASSIVE", "COS_SYSTEM"}
    assert data["bootloader"]["targets"] == ["i386-pc", "x86_64-efi"]
    assert data["power"] == "reboot"
    assert "vdb" in "\n".join(plan.describe())


# --- device resolution -------------------------------------------------------------------


def test_auto_needs_install_auto_or_flag(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    _, problems = plan_for(ctx, {**ADMIN, "install": {"device": "auto"}})
    assert any("no disk named" in p for p in problems)
    plan, problems = plan_for(ctx, {**ADMIN, "install": {"device": "auto", "auto": True}})
    assert problems == [] and plan is not None
    # vdb (40 GiB) is the largest candidate; vda/vdd are bigger than vdc but smaller.
    assert plan.device == "/dev/vdb"
    plan, problems = plan_for(ctx, ADMIN, device_flag="auto")
    assert problems == [] and plan is not None and plan.device == "/dev/vdb"


def test_auto_skips_mounted_and_boot_medium(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    disks = blk.parse_lsblk(
        lsblk(
            dev("sda", 900 * GIB, children=[dev("sda1", GIB, "part", label="COS_LIVE")]),
            dev("sdb", 100 * GIB),
        )
    )
    plan, problems = ip.make_plan(ctx, ip.parse_options(ADMIN), ADMIN, disks, device_flag="auto")
    assert problems == [] and plan is not None and plan.device == "/dev/sdb"


def test_by_id_link(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    link = tmp_path / "dev/disk/by-id"
    link.mkdir(parents=True)
    (tmp_path / "dev/vdb").touch()
    (link / "virtio-serial1").symlink_to("../../vdb")
    plan, problems = plan_for(
        ctx, {**ADMIN, "install": {"device": "/dev/disk/by-id/virtio-serial1"}}
    )
    assert problems == [] and plan is not None and plan.device == "/dev/vdb"
    _, problems = plan_for(ctx, {**ADMIN, "install": {"device": "/dev/disk/by-id/missing"}})
    assert problems == [
        "install.device: /dev/disk/by-id/missing does not exist (see ls -l /dev/disk/by-id)"
    ]


def test_script_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = live_root(tmp_path)
    calls: list[tuple[str, ...]] = []

    def fake(argv: tuple[str, ...], **_: object) -> tuple[int, bytes, bytes]:
        calls.append(tuple(argv))
        return 0, b"/dev/vdb\n", b""

    monkeypatch.setattr("kairos.run._spawn", fake)
    plan, problems = plan_for(ctx, {**ADMIN, "install": {"device": "script://pick-disk --big"}})
    assert problems == [] and plan is not None and plan.device == "/dev/vdb"
    assert calls == [("/bin/sh", "-c", "pick-disk --big")]


def test_script_that_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = live_root(tmp_path)
    monkeypatch.setattr("kairos.run._spawn", lambda argv, **_: (3, b"", b"nope"))
    _, problems = plan_for(ctx, {**ADMIN, "install": {"device": "script://false"}})
    assert len(problems) == 1 and "exited 3 without printing a device" in problems[0]


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        ("/dev/vdz", "install.device: /dev/vdz does not exist"),
        ("/dev/vda1", "install.device: /dev/vda1 is a partition, install needs a whole disk "
                      "(use the whole disk /dev/vda)"),
        ("/dev/vdd", "install.device: /dev/vdd is mounted at /mnt/x"),
        ("/dev/vdc", "install.device: /dev/vdc has 1024 MiB, the plan needs at least"),
        ("/dev/sr0", "install.device: /dev/sr0 is a rom device, not a disk"),
        ("sda", "install.device: 'sda' is not a device path"),
    ],
)  # fmt: skip
def test_refusals(tmp_path: Path, device: str, expected: str) -> None:
    ctx = live_root(tmp_path)
    _, problems = plan_for(ctx, {**ADMIN, "install": {"device": device}})
    assert any(p.startswith(expected) for p in problems), problems


def test_swap_and_holders_refused(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/swaps").write_text("Filename Type Size Used Priority\n/dev/vda1 p 1 0 -2\n")
    held = tmp_path / "sys/class/block/vda1/holders"
    held.mkdir(parents=True)
    (held / "dm-3").touch()
    _, problems = plan_for(ctx, {**ADMIN, "install": {"device": "/dev/vda"}})
    assert any("used as swap (/dev/vda1)" in p for p in problems)
    assert any("in use by dm-3" in p for p in problems)


def test_no_admin_user_refused_unless_nousers(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    plain = {"users": [{"name": "bob", "groups": ["users"]}], "install": {"device": "/dev/vdb"}}
    _, problems = plan_for(ctx, plain)
    assert problems and problems[0].startswith("users: no user in group admin")
    _, problems = plan_for(ctx, {**plain, "install": {"device": "/dev/vdb", "nousers": True}})
    assert problems == []
    (tmp_path / "etc/kairos").mkdir(parents=True)
    (tmp_path / "etc/kairos/.nousers").touch()
    _, problems = plan_for(ctx, plain)
    assert problems == []


@pytest.mark.parametrize(
    "config",
    [
        {"stages": {"initramfs": [{"users": {"k": {"groups": ["wheel", "admin"]}}}]}},
        {"stages": {"boot": [{"users": {"k": {"primary_group": "admin"}}}]}},
        {"users": [{"name": "k", "groups": "sudo, admin"}]},
    ],
)
def test_admin_user_forms(config: dict[str, Any]) -> None:
    assert ip.has_admin_user(config)


def test_several_problems_reported_together(tmp_path: Path) -> None:
    ctx = live_root(tmp_path)
    config = {"install": {"device": "/dev/vda1", "reboot": True, "poweroff": True,
                          "partitions": {"state": {"fs": "ntfs"}}}}  # fmt: skip
    _, problems = plan_for(ctx, config)
    joined = "\n".join(problems)
    assert "users: no user in group admin" in joined
    assert "reboot and poweroff are both set" in joined
    assert "is a partition" in joined
    assert "install.partitions.state.fs" in joined
    assert len(problems) == 4


# --- the source ------------------------------------------------------------------------------


@pytest.mark.parametrize(("comp_id", "name"), [(1, "gzip"), (3, "lzo"), (4, "xz")])
def test_grub_readable_live_squashfs_is_copied(tmp_path: Path, comp_id: int, name: str) -> None:
    ctx = live_root(tmp_path, comp_id)
    plan, problems = plan_for(ctx, {**ADMIN, "install": {"device": "/dev/vdb"}})
    assert problems == [] and plan is not None
    assert plan.source.kind is ip.SourceKind.SQUASHFS and plan.source.compression == name
    assert plan.source.path == ip.LIVE_SQUASHFS


def test_zstd_live_squashfs_is_repacked(tmp_path: Path) -> None:
    ctx = live_root(tmp_path, compression_id=6)
    plan, problems = plan_for(ctx, {**ADMIN, "install": {"device": "/dev/vdb"}})
    assert problems == [] and plan is not None
    assert plan.source.kind is ip.SourceKind.DIRECTORY and plan.source.path == ip.LIVE_ROOT
    assert plan.source.compression == "zstd"


def test_not_live_without_source(tmp_path: Path) -> None:
    _, problems = plan_for(Context(root=tmp_path), {**ADMIN, "install": {"device": "/dev/vdb"}})
    assert any(
        p.startswith("install.source: not running from a Kairos live medium") for p in problems
    )


def test_file_and_dir_sources(tmp_path: Path) -> None:
    ctx = Context(root=tmp_path)
    (tmp_path / "img").write_bytes(squashfs_bytes(4))
    (tmp_path / "zimg").write_bytes(squashfs_bytes(6))
    (tmp_path / "notsq").write_bytes(b"x" * 100)
    (tmp_path / "tree/boot").mkdir(parents=True)
    (tmp_path / "tree/boot/vmlinuz").write_bytes(b"k" * 10)
    src, problems = ip.find_source(ctx, "file:/img")
    assert problems == [] and src is not None and src.compression == "xz"
    _, problems = ip.find_source(ctx, "file:/zimg")
    assert "zstd-compressed, which GRUB cannot read" in problems[0]
    _, problems = ip.find_source(ctx, "file:/notsq")
    assert "is not a squashfs image" in problems[0]
    src, problems = ip.find_source(ctx, "dir:/tree")
    assert src is not None and src.kind is ip.SourceKind.DIRECTORY and src.size_bytes == 10
    assert problems == [
        "install.source: /tree/boot/initrd is missing (GRUB boots the kernel and initrd inside "
        "the image; build it with kairos build)"
    ]
    _, problems = ip.find_source(ctx, "oci:quay.io/kairos/x")
    assert "is not supported by install" in problems[0]


def test_options_parse() -> None:
    opts = ip.parse_options(
        {
            "install": {
                "device": " /dev/sda ",
                "auto": True,
                "poweroff": True,
                "grub_options": {"extra_cmdline": "foo=1", "flag": True},
                "bind_mounts": ["/var/lib/x"],
                "ephemeral_mounts": "/tmp/a /tmp/b",
                "env": ["A=1", "B=x=y"],
            }
        }
    )
    assert opts.device == "/dev/sda" and opts.auto and opts.power is ip.Power.POWEROFF
    assert opts.grub_options == (("extra_cmdline", "foo=1"), ("flag", "true"))
    assert opts.bind_mounts == ("/var/lib/x",)
    assert opts.ephemeral_mounts == ("/tmp/a", "/tmp/b")
    assert opts.env == (("A", "1"), ("B", "x=y"))
