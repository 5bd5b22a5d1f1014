"""Reset: options, partitions by label, every refusal, the plan, and the step order.

Commands go to a fake runner that records argv and answers `lsblk` and `unsquashfs` the way
the real tools do; mounts are recorded only, so "mounted" directories are plain ones in
tmp_path that the test fills in beforehand.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kairos.agent import reset as rs
from kairos.agent.install_plan import Power
from kairos.agent.state import BootState
from kairos.context import Context
from kairos.disk.devices import BlockDevice, parse_lsblk
from kairos.disk.partition import Filesystem
from kairos.log import Progress
from kairos.stages.loader import parse_text

GIB = 1 << 30
MIB = 1 << 20


def lsblk_json(state_bytes: int = 8 * GIB, second_disk: bool = False, oem_fs: str = "ext4") -> str:
    def disk(name: str) -> dict[str, Any]:
        rows = [
            ("1", None, None, MIB),
            ("2", "COS_GRUB", "vfat", 64 * MIB),
            ("3", "COS_OEM", oem_fs, 64 * MIB),
            ("4", "COS_RECOVERY", "ext4", 4 * GIB),
            ("5", "COS_STATE", "ext4", state_bytes),
            ("6", "COS_PERSISTENT", "ext4", 20 * GIB),
        ]
        return {
            "name": name,
            "path": f"/dev/{name}",
            "type": "disk",
            "size": 40 * GIB,
            "children": [
                {
                    "name": f"{name}{n}",
                    "path": f"/dev/{name}{n}",
                    "type": "part",
                    "size": size,
                    "label": label,
                    "fstype": fs,
                    "mountpoints": [None],
                }
                for n, label, fs, size in rows
            ],
        }

    tops = [disk("vda"), *([disk("vdb")] if second_disk else [])]
    return json.dumps({"blockdevices": tops})


def squashfs_bytes(size: int = 4 * MIB) -> bytes:
    """A squashfs superblock head (magic, gzip) padded to `size`."""
    head = bytearray(96)
    head[:4] = b"hsqs"
    struct.pack_into("<H", head, 20, 1)
    return bytes(head) + b"\0" * (size - len(head))


class FakeTools:
    """The runner's `_spawn`: records argv, answers like the real tools."""

    def __init__(self, lsblk: str, listing: str = "/boot/vmlinuz\n/boot/initrd\n") -> None:
        self.calls: list[tuple[str, ...]] = []
        self.lsblk = lsblk
        self.listing = listing
        self.failing: set[str] = set()

    def __call__(self, argv: Any, **_: Any) -> tuple[int, bytes, bytes]:
        argv = tuple(str(a) for a in argv)
        self.calls.append(argv)
        if argv[0] in self.failing:
            return 32, b"", f"{argv[0]}: wrong fs type, bad superblock on {argv[-2]}.\n".encode()
        if argv[0] == "lsblk":
            return 0, self.lsblk.encode(), b""
        if argv[0] == "unsquashfs":
            return 0, f"\n{self.listing}".encode(), b""
        return 0, b"", b""

    def named(self, tool: str) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] == tool]


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    fake = FakeTools(lsblk_json())
    monkeypatch.setattr("kairos.run._spawn", fake)
    monkeypatch.setattr("kairos.agent.reset.which", lambda tool: f"/usr/bin/{tool}")
    monkeypatch.setattr("kairos.agent.install.vfat_mountable", lambda ctx: True)
    return fake


def node(
    tmp_path: Path, sentinel: str | None = "recovery_mode", image: bytes | None = None
) -> Context:
    root = tmp_path / "node"
    (root / "run/cos").mkdir(parents=True)
    if sentinel:
        (root / "run/cos" / sentinel).touch()
    if image is not None:
        (root / "run/cos/recovery/cOS").mkdir(parents=True)
        (root / "run/cos/recovery/cOS/recovery.img").write_bytes(image)
    return Context(root=root)


def devices(**kwargs: Any) -> tuple[BlockDevice, ...]:
    return parse_lsblk(lsblk_json(**kwargs))


def no_probe(device: str) -> tuple[str, str]:
    """Only the unlabelled BIOS boot partition is probed when lsblk knows the labels."""
    assert device.endswith("1"), f"{device}: lsblk had the label, no probe expected"
    return "", ""


# --- options ---------------------------------------------------------------------------------


def test_options_default_wipe_persistent_only() -> None:
    assert rs.parse_options({}) == rs.ResetOptions(True, False, Power.NONE, False, "")


def test_options_from_config() -> None:
    merged = {"reset": {"reset-persistent": False, "reset-oem": True, "poweroff": True}}
    assert rs.parse_options(merged) == rs.ResetOptions(False, True, Power.POWEROFF, False)
    assert rs.parse_options({"reset": {"reboot": True, "poweroff": True}}).power is Power.REBOOT


def test_flags_override_config() -> None:
    merged = {"reset": {"reset-persistent": False, "reset-oem": True, "poweroff": True}}
    options = rs.parse_options(
        merged, reset_persistent=True, reset_oem=False, reboot=True, unattended=True
    )
    assert options == rs.ResetOptions(True, False, Power.REBOOT, True)


# --- partitions --------------------------------------------------------------------------------


def test_partitions_found_by_label() -> None:
    parts, problems = rs.find_partitions(devices(), probe=no_probe)
    assert problems == []
    assert {label: p.device for label, p in parts.items()} == {
        "COS_STATE": "/dev/vda5",
        "COS_RECOVERY": "/dev/vda4",
        "COS_OEM": "/dev/vda3",
        "COS_PERSISTENT": "/dev/vda6",
        "COS_GRUB": "/dev/vda2",
    }
    assert {p.disk for p in parts.values()} == {"/dev/vda"}


def test_labels_probed_when_lsblk_has_none() -> None:
    """Without udev lsblk shows no labels: the superblocks are read instead."""
    raw = json.loads(lsblk_json())
    for child in raw["blockdevices"][0]["children"]:
        child["label"] = child["fstype"] = None
    real = {f"/dev/vda{n}": lab for n, lab in enumerate(("", *rs.LABELS[::-1]), start=1)}
    probed: list[str] = []

    def probe(device: str) -> tuple[str, str]:
        probed.append(device)
        return real[device], "ext4"

    parts, problems = rs.find_partitions(parse_lsblk(json.dumps(raw)), probe=probe)
    assert problems == []
    assert len(probed) == 6
    assert parts["COS_STATE"].device == "/dev/vda6" and parts["COS_STATE"].fstype == "ext4"


def test_every_missing_label_reported() -> None:
    raw = json.loads(lsblk_json())
    raw["blockdevices"][0]["children"] = raw["blockdevices"][0]["children"][:3]
    parts, problems = rs.find_partitions(parse_lsblk(json.dumps(raw)), probe=lambda d: ("", ""))
    assert set(parts) == {"COS_GRUB", "COS_OEM"}
    assert [p.split(":")[0] for p in problems] == ["COS_STATE", "COS_RECOVERY", "COS_PERSISTENT"]
    assert all("lsblk -f" in p for p in problems)


def test_two_kairos_disks_need_disk_flag() -> None:
    _, problems = rs.find_partitions(devices(second_disk=True), probe=no_probe)
    assert len(problems) == 5
    assert "COS_STATE: 2 partitions carry this label (/dev/vda5, /dev/vdb5)" in problems[0]
    assert "--disk" in problems[0]
    parts, problems = rs.find_partitions(devices(second_disk=True), "/dev/vdb", no_probe)
    assert problems == [] and parts["COS_STATE"].device == "/dev/vdb5"


def test_unknown_disk_flag() -> None:
    parts, problems = rs.find_partitions(devices(), "/dev/sdz", no_probe)
    assert parts == {} and problems == [
        "--disk /dev/sdz: not a disk lsblk lists (give a whole disk, e.g. /dev/vda)"
    ]


# --- the plan and its refusals -------------------------------------------------------------


def plan_for(ctx: Context, **kwargs: Any) -> tuple[rs.ResetPlan | None, list[str]]:
    options = kwargs.pop("options", rs.ResetOptions())
    return rs.make_plan(ctx, options, kwargs.pop("devs", devices()), probe=no_probe, **kwargs)


def test_plan_from_recovery(tmp_path: Path, tools: FakeTools) -> None:
    plan, problems = plan_for(node(tmp_path, image=squashfs_bytes()))
    assert problems == [] and plan is not None
    assert plan.boot is BootState.RECOVERY and plan.disk == "/dev/vda"
    assert plan.wiped == ("COS_PERSISTENT", "COS_STATE")
    assert plan.recovery == rs.RecoveryImage("/cOS/recovery.img", 4 * MIB, "gzip")
    # The recovery image is checked on a read-only mount, released again.
    mounts = tools.named("mount")
    assert mounts == [("mount", "-o", "ro", "/dev/vda4", str(tmp_path / "node/run/cos/recovery"))]
    assert tools.named("umount") == [("umount", str(tmp_path / "node/run/cos/recovery"))]
    (listing,) = tools.named("unsquashfs")
    assert listing[-2:] == ("boot/vmlinuz", "boot/initrd")


def test_autoreset_boot_allowed(tmp_path: Path, tools: FakeTools) -> None:
    plan, problems = plan_for(node(tmp_path, "autoreset_mode", image=squashfs_bytes()))
    assert problems == [] and plan is not None and plan.boot is BootState.AUTORESET


@pytest.mark.parametrize("sentinel", [None, "active_mode", "passive_mode", "live_mode"])
def test_refused_outside_recovery(tmp_path: Path, tools: FakeTools, sentinel: str | None) -> None:
    plan, problems = plan_for(node(tmp_path, sentinel, image=squashfs_bytes()))
    assert plan is None
    (problem,) = problems
    assert problem.startswith("boot state: ")
    assert "kairos-agent bootentry --select recovery" in problem


def test_missing_recovery_image(tmp_path: Path, tools: FakeTools) -> None:
    plan, problems = plan_for(node(tmp_path))
    assert plan is None
    assert problems == [
        "COS_RECOVERY:/cOS/recovery.img: missing (the recovery system is gone; reinstall from "
        "the live medium, or run kairos-agent upgrade --recovery from a working system)"
    ]


def test_recovery_image_not_squashfs(tmp_path: Path, tools: FakeTools) -> None:
    plan, problems = plan_for(node(tmp_path, image=b"\0" * MIB))
    assert plan is None
    assert problems == [
        "COS_RECOVERY:/cOS/recovery.img: not a squashfs image (it may be damaged; reinstall "
        "from the live medium)"
    ]


def test_recovery_image_without_kernel(tmp_path: Path, tools: FakeTools) -> None:
    tools.listing = "/boot/initrd\n"
    plan, problems = plan_for(node(tmp_path, image=squashfs_bytes()))
    assert plan is None
    assert problems == [
        "COS_RECOVERY:/cOS/recovery.img: /boot/vmlinuz is missing in the image (GRUB boots "
        "it from there)"
    ]


def test_all_problems_at_once(
    tmp_path: Path, tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        "kairos.agent.reset.which", lambda tool: None if tool == "grub-mkimage" else tool
    )
    tools.listing = ""
    plan, problems = plan_for(
        node(tmp_path, "active_mode", image=squashfs_bytes()), devs=devices(state_bytes=GIB // 2)
    )
    assert plan is None
    assert [p.split(":")[0] for p in problems] == [
        "boot state",
        "grub-mkimage",
        "COS_RECOVERY",
        "COS_RECOVERY",
    ]
    tools.listing = "/boot/vmlinuz\n/boot/initrd\n"
    monkeypatch.setattr("kairos.agent.reset.which", lambda tool: tool)
    plan, problems = plan_for(
        node(tmp_path / "2", image=squashfs_bytes(300 * MIB)), devs=devices(state_bytes=GIB // 2)
    )
    assert plan is None
    (problem,) = problems
    assert problem.startswith("COS_STATE: 512 MiB is too small for two copies of the 300 MiB")


def test_dry_run_without_root_cannot_check_the_image(tmp_path: Path, tools: FakeTools) -> None:
    plan, problems = plan_for(node(tmp_path, image=squashfs_bytes()), can_mount=False)
    assert plan is None
    assert problems == [
        "COS_RECOVERY: the recovery image cannot be checked without root (run as root)"
    ]
    assert tools.named("mount") == []


def test_unmountable_recovery_partition(tmp_path: Path, tools: FakeTools) -> None:
    tools.failing.add("mount")
    plan, problems = plan_for(node(tmp_path))
    assert plan is None
    assert problems == [
        "COS_RECOVERY: /dev/vda4 cannot be mounted read-only: mount: wrong fs type, bad "
        "superblock on /dev/vda4. (the partition may be damaged; reinstall from the live medium)"
    ]


def test_recovery_image_read_where_the_recovery_boot_mounted_it(
    tmp_path: Path, tools: FakeTools
) -> None:
    (tmp_path / "cOS").mkdir()
    (tmp_path / "cOS/recovery.img").write_bytes(squashfs_bytes())
    part = rs.Part("COS_RECOVERY", "/dev/vda4", "/dev/vda", "ext4", GIB, (str(tmp_path),))
    image, problems = rs.inspect_recovery(Context(root=Path("/")), part, False, "/run/cos")
    assert problems == [] and image is not None and image.compression == "gzip"
    assert tools.named("mount") == []


def test_plan_rendering(tmp_path: Path, tools: FakeTools) -> None:
    options = rs.ResetOptions(reset_oem=True, power=Power.REBOOT)
    plan, _ = plan_for(node(tmp_path, image=squashfs_bytes()), options=options)
    assert plan is not None
    text = "\n".join(plan.describe())
    assert "COS_PERSISTENT  /dev/vda6        FORMAT (ext4" in text
    assert "COS_OEM         /dev/vda3        FORMAT (ext4" in text
    assert "COS_RECOVERY    /dev/vda4        keep" in text
    assert "COS_RECOVERY:/cOS/recovery.img (4 MiB, gzip squashfs) -> COS_STATE:/cOS/active.img" in (
        text
    )
    assert text.endswith("then: reboot")
    data = plan.to_json()
    assert json.loads(json.dumps(data)) == data
    assert [f["label"] for f in data["format"]] == ["COS_PERSISTENT", "COS_OEM", "COS_STATE"]
    assert data["keep"] == ["COS_RECOVERY", "COS_GRUB"]
    assert data["steps"] == [
        "before-reset", "persistent", "oem", "state", "active", "bootloader",
        "after-reset-chroot", "passive", "boot-assessment", "after-reset", "done",
    ]  # fmt: skip


def test_reset_system_source_is_reported_not_used(tmp_path: Path, tools: FakeTools) -> None:
    options = rs.parse_options({"reset": {"system": {"uri": "oci:quay.io/x/y:v2"}}})
    assert options.system_source == "oci:quay.io/x/y:v2"
    plan, problems = plan_for(node(tmp_path, image=squashfs_bytes()), options=options)
    assert problems == [] and plan is not None
    (warning,) = plan.warnings
    assert warning.startswith("reset.system.uri oci:quay.io/x/y:v2: resetting from another")
    assert plan.describe()[-1] == f"warning: {warning}"


def test_wiped_partition_keeps_its_filesystem_type(tmp_path: Path, tools: FakeTools) -> None:
    options = rs.ResetOptions(reset_oem=True)
    plan, _ = plan_for(
        node(tmp_path, image=squashfs_bytes()), options=options, devs=devices(oem_fs="xfs")
    )
    assert plan is not None
    assert plan.refill_fs("COS_OEM") is Filesystem.XFS
    assert plan.refill_fs("COS_STATE") is Filesystem.EXT4


# --- the reset itself ----------------------------------------------------------------------------


STAGES = """#cloud-config
stages:
  before-reset:
  - files:
    - path: /tmp/before
      content: "1"
  after-reset:
  - files:
    - path: /tmp/after
      content: "1"
"""


def run_reset(
    tmp_path: Path,
    tools: FakeTools,
    monkeypatch: pytest.MonkeyPatch,
    options: rs.ResetOptions,
    mounted: Callable[[str], list[str]] = lambda device: [],
) -> tuple[Context, Progress, list[tuple[Any, ...]]]:
    ctx = node(tmp_path, image=squashfs_bytes())
    plan, problems = rs.make_plan(ctx, options, devices(), probe=no_probe)
    assert plan is not None, problems
    tools.calls.clear()
    grub: list[tuple[Any, ...]] = []
    monkeypatch.setattr(
        "kairos.bootloader.install.install_grub",
        lambda disk, esp, state, image, **kw: grub.append((disk, esp, state, image)),
    )
    monkeypatch.setattr("kairos.agent.reset.current_mounts", mounted)
    stages = rs.StageSources(files=(parse_text(STAGES, "/oem/s.yaml", lambda t, _: t),))
    progress = Progress(quiet=True)
    rs.reset(ctx, plan, stages, progress)
    return ctx, progress, grub


def test_reset_steps_in_order(
    tmp_path: Path, tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx, progress, grub = run_reset(tmp_path, tools, monkeypatch, rs.ResetOptions())
    assert [name for name, _ in progress.steps] == [
        "before-reset", "persistent", "state", "active", "bootloader", "after-reset-chroot",
        "passive", "boot-assessment", "after-reset", "done",
    ]  # fmt: skip
    work = ctx.path("/run/cos")
    first = [c for c in tools.calls if c[0] in ("mkfs.ext4", "mount")][:6]
    assert first == [
        ("mkfs.ext4", "-F", "-q", "-L", "COS_PERSISTENT", "/dev/vda6"),
        ("mkfs.ext4", "-F", "-q", "-L", "COS_STATE", "/dev/vda5"),
        ("mount", "/dev/vda5", str(work / "state")),
        ("mount", "-o", "ro", "/dev/vda4", str(work / "recovery")),
        ("mount", "/dev/vda3", str(work / "oem")),
        ("mount", "/dev/vda6", str(work / "persistent")),
    ]
    assert not any("COS_OEM" in c for c in tools.named("mkfs.ext4"))
    assert grub == [(Path("/dev/vda"), work / "efi", work / "state", work / "active")]
    recovery = (work / "recovery/cOS/recovery.img").read_bytes()
    assert (work / "state/cOS/active.img").read_bytes() == recovery
    assert (work / "state/cOS/passive.img").read_bytes() == recovery
    assert (work / "state/boot_assessment").is_file()
    assert ctx.path("/tmp/before").read_text() == "1"
    assert ctx.path("/tmp/after").read_text() == "1"
    record = (work / "persistent/.kairos-state").read_text()
    assert "last-reset-wiped:\n- COS_PERSISTENT\n- COS_STATE" in record
    # Everything mounted is released (the recorded runner leaves the directories behind).
    points = [c[-1] for c in tools.named("mount")]
    released = [c[-1] for c in tools.named("umount")]
    assert sorted(points) == sorted(released)


def test_reset_oem_unmounts_before_formatting(
    tmp_path: Path, tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = rs.ResetOptions(reset_persistent=False, reset_oem=True)
    run_reset(
        tmp_path, tools, monkeypatch, options, lambda dev: ["/oem"] if dev.endswith("3") else []
    )
    formats = [(c[0], c[-1]) for c in tools.calls if c[0] in ("umount", "mkfs.ext4")][:3]
    assert formats == [("umount", "/oem"), ("mkfs.ext4", "/dev/vda3"), ("mkfs.ext4", "/dev/vda5")]
    assert not any(c[-1] == "/dev/vda6" for c in tools.named("mkfs.ext4"))


def test_current_mounts_reads_mountinfo(tmp_path: Path) -> None:
    assert rs.current_mounts("/dev/no-such-device-here") == []


def test_power_action(tools: FakeTools, capsys: pytest.CaptureFixture[str]) -> None:
    rs.power_action(Power.NONE)
    assert tools.calls == []
    rs.power_action(Power.REBOOT)
    assert tools.calls == [("/usr/bin/systemctl", "reboot")]
    assert "reset finished; reboot now." in capsys.readouterr().out
