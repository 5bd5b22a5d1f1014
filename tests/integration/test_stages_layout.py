"""The `layout` step for real: sgdisk, mkfs, sfdisk and resize2fs on a loop device of our own.

Only a sparse image file created here is partitioned; the host's disks are never named.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from kairos.context import Context
from kairos.run import run, which
from kairos.stages.model import Layout, Partition, Step
from kairos.stages.steps import layout as layout_step

pytestmark = pytest.mark.integration

TOOLS = ("losetup", "sgdisk", "sfdisk", "partx", "mkfs.ext4", "e2fsck", "resize2fs", "blkid")


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[str]:
    missing = [t for t in TOOLS if which(t) is None]
    if missing:
        pytest.skip(f"missing tools: {', '.join(missing)}")
    if not Path("/dev/loop-control").exists():
        pytest.skip("no loop device support (/dev/loop-control)")
    image = tmp_path / "disk.img"
    with image.open("wb") as f:
        f.truncate(400 << 20)
    attached = run(["losetup", "--find", "--show", "--partscan", str(image)], check=False)
    if attached.returncode != 0:
        pytest.skip(f"cannot attach a loop device: {attached.stderr.strip()}")
    device = attached.stdout.strip()
    try:
        yield device
    finally:
        run(["losetup", "--detach", device], check=False)


def _table(device: str) -> list[dict[str, object]]:
    parts: list[dict[str, object]] = json.loads(run(["sfdisk", "--json", device]).stdout)[
        "partitiontable"
    ]["partitions"]
    return parts


def _fs(device: str, tag: str) -> str:
    return run(["blkid", "-o", "value", "-s", tag, device], check=False).stdout.strip()


def test_layout_on_loop_device(loop_disk: str) -> None:
    ctx = Context(root=Path("/"))
    # Labels unique to this run, so the label lookup can only find our loop device.
    tag = secrets.token_hex(3).upper()
    oem, state, persistent = f"KT_OEM_{tag}", f"KT_STATE_{tag}", f"KT_PERS_{tag}"
    first = Step(
        root_name="t",
        index=0,
        layout=Layout(
            device_path=loop_disk,
            init_disk=True,
            add_partitions=(
                Partition(fs_label=oem, size_mib=32, p_label="oem", filesystem="ext4"),
                Partition(fs_label=state, size_mib=64, p_label="state", filesystem="ext4"),
            ),
        ),
    )
    layout_step.apply(first, ctx)
    parts = _table(loop_disk)
    assert [p["name"] for p in parts] == ["oem", "state"]
    assert [_mib(p) for p in parts] == [32, 64]
    assert _fs(layout_step.partition_device(loop_disk, 2), "LABEL") == state

    # Second run finds the disk by a filesystem label, appends, then grows the last one.
    second = Step(
        root_name="t",
        index=1,
        layout=Layout(
            device_label=state,
            expand_size_mib=120,
            add_partitions=(
                Partition(
                    fs_label=persistent, size_mib=50, p_label="persistent", filesystem="ext4"
                ),
            ),
        ),
    )
    layout_step.apply(second, ctx)
    parts = _table(loop_disk)
    assert [p["name"] for p in parts] == ["oem", "state", "persistent"]
    p3 = layout_step.partition_device(loop_disk, 3)
    assert _fs(p3, "TYPE") == "ext4" and _fs(p3, "LABEL") == persistent
    assert _mib(parts[2]) == 120
    assert _fs_mib(p3) >= 119  # resize2fs ran: the filesystem fills the partition

    # size 0: all the free space to the end of the 400 MiB disk.
    layout_step.expand(loop_disk, 3, 0)
    grown = _mib(_table(loop_disk)[2])
    assert grown > 290
    assert _fs_mib(p3) >= grown - 1

    # Expansion never shrinks (the filesystem would be cut).
    layout_step.expand(loop_disk, 3, 200)
    assert _mib(_table(loop_disk)[2]) == grown
    assert run(["e2fsck", "-fn", p3], check=False).returncode == 0


def _mib(part: dict[str, object]) -> int:
    return int(str(part["size"])) * 512 >> 20


def _fs_mib(device: str) -> int:
    dump = run(["dumpe2fs", "-h", device]).stdout
    fields = dict(line.split(":", 1) for line in dump.splitlines() if ":" in line)
    return int(fields["Block count"]) * int(fields["Block size"]) >> 20
