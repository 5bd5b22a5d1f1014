"""immucore's planner: kernel command line + layout -> the ordered mounts of a normal boot."""

from __future__ import annotations

import pytest

from kairos.errors import ConfigError
from kairos.immucore.bootstate import Cmdline
from kairos.immucore.layout import Layout, Volume
from kairos.immucore.planner import (
    BootState,
    Kind,
    boot_state,
    device_path,
    plan_layout,
    plan_root,
    state_name,
)

COMMON = "rd.cos.oemlabel=COS_OEM rd.cos.oemtimeout=10 panic=5 console=ttyS0,115200"
ACTIVE = f"root=LABEL=COS_ACTIVE cos-img/filename=/cOS/active.img {COMMON}"
PASSIVE = f"root=LABEL=COS_PASSIVE cos-img/filename=/cOS/passive.img {COMMON}"
RECOVERY = f"root=LABEL=COS_SYSTEM cos-img/filename=/cOS/recovery.img {COMMON}"
AUTORESET = f"{RECOVERY} kairos.reset"
LIVE = "root=live:CDLABEL=COS_LIVE rd.live.dir=/ rd.cos.disable console=ttyS0"

# Our 00_rootfs.yaml's active/passive layout, shortened.
DEFAULT = Layout.from_env(
    {
        "VOLUMES": "LABEL=COS_PERSISTENT:/usr/local",
        "OVERLAY": "tmpfs:25%",
        "RW_PATHS": "/var /etc /srv",
        "PERSISTENT_STATE_PATHS": "/etc/ssh /var/lib/kairos /home /var/log",
        "PERSISTENT_STATE_BIND": "true",
    }
)


def c(text: str) -> Cmdline:
    return Cmdline.parse(text)


@pytest.mark.parametrize(
    ("text", "state"),
    [
        (ACTIVE, BootState.ACTIVE),
        (PASSIVE, BootState.PASSIVE),
        (RECOVERY, BootState.RECOVERY),
        (AUTORESET, BootState.AUTORESET),
        (LIVE, BootState.LIVE),
        ("root=/dev/sda1", BootState.UNKNOWN),
    ],
)
def test_boot_state(text: str, state: BootState) -> None:
    assert boot_state(c(text)) is state


@pytest.mark.parametrize(
    ("text", "state", "device", "image", "label"),
    [
        (ACTIVE, BootState.ACTIVE, "LABEL=COS_STATE", "/cOS/active.img", "COS_ACTIVE"),
        (PASSIVE, BootState.PASSIVE, "LABEL=COS_STATE", "/cOS/passive.img", "COS_PASSIVE"),
        (RECOVERY, BootState.RECOVERY, "LABEL=COS_RECOVERY", "/cOS/recovery.img", "COS_SYSTEM"),
        (AUTORESET, BootState.AUTORESET, "LABEL=COS_RECOVERY", "/cOS/recovery.img", "COS_SYSTEM"),
    ],
)
def test_root_plan(text: str, state: BootState, device: str, image: str, label: str) -> None:
    root = plan_root(c(text))
    assert (root.state, root.state_device, root.image, root.root_label) == (
        state,
        device,
        image,
        label,
    )
    assert root.image_path == f"/run/initramfs/cos-state{image}"
    assert root.read_write is False


def test_root_plan_debugrw() -> None:
    assert plan_root(c(ACTIVE + " rd.immucore.debugrw")).read_write is True


def test_root_plan_reports_every_problem() -> None:
    with pytest.raises(ConfigError) as err:
        plan_root(c("root=/dev/sda2 console=ttyS0"))
    problems = err.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("root=: cannot tell the boot state")
    assert problems[1].startswith("cos-img/filename=: missing")


def test_root_plan_refuses_live_and_relative_images() -> None:
    with pytest.raises(ConfigError) as err:
        plan_root(c(LIVE))
    assert err.value.problems[0] == "boot mode live is not an installed-system boot"
    with pytest.raises(ConfigError) as err:
        plan_root(c("root=LABEL=COS_ACTIVE cos-img/filename=cOS/active.img"))
    assert err.value.problems == (
        "cos-img/filename=cOS/active.img: not an absolute path in the state partition",
    )


def test_device_path() -> None:
    assert device_path("LABEL=COS_OEM") == "/dev/disk/by-label/COS_OEM"
    assert device_path("UUID=1234-AB") == "/dev/disk/by-uuid/1234-AB"
    assert device_path("PARTLABEL=oem") == "/dev/disk/by-partlabel/oem"
    assert device_path("/dev/vda3") == "/dev/vda3"


def test_state_name_is_upstreams() -> None:
    assert state_name("/etc/ssh") == "etc-ssh"
    assert state_name("/var/lib/kairos") == "var-lib-kairos"


def _where(plan_mounts: tuple[object, ...]) -> list[tuple[str, str]]:
    return [(m.kind.value, m.where) for m in plan_mounts]  # type: ignore[attr-defined]


def test_active_plan_order() -> None:
    plan = plan_layout(c(ACTIVE), DEFAULT)
    assert plan.oem is not None
    assert (plan.oem.what, plan.oem.where, plan.oem.timeout, plan.oem.optional) == (
        "LABEL=COS_OEM",
        "/sysroot/oem",
        10.0,
        True,
    )
    assert _where(plan.mounts) == [
        ("tmpfs", "/run/overlay"),
        ("tmpfs", "/sysroot/tmp"),
        ("overlay", "/sysroot/var"),
        ("overlay", "/sysroot/etc"),
        ("overlay", "/sysroot/srv"),
        ("device", "/sysroot/usr/local"),
        # Shallow paths first: /home before /etc/ssh, /var/log before /var/lib/kairos.
        ("bind", "/sysroot/home"),
        ("bind", "/sysroot/etc/ssh"),
        ("bind", "/sysroot/var/log"),
        ("bind", "/sysroot/var/lib/kairos"),
    ]
    assert plan.mounts[0].options == ("size=25%",)
    assert plan.mounts[1].options == ("mode=1777",)
    assert plan.mounts[3].upper == "/run/overlay/etc/.overlay"
    ssh = plan.mounts[7]
    assert ssh.what == "/sysroot/usr/local/.state/etc-ssh.bind"
    assert ssh.seed_from == "/sysroot/etc/ssh"
    assert plan.notes == ()


def test_passive_plan_is_the_same_layout() -> None:
    assert _where(plan_layout(c(PASSIVE), DEFAULT).mounts) == _where(
        plan_layout(c(ACTIVE), DEFAULT).mounts
    )


@pytest.mark.parametrize("text", [RECOVERY, AUTORESET])
def test_recovery_and_autoreset_get_overlays_but_no_persistence(text: str) -> None:
    plan = plan_layout(c(text), DEFAULT)
    kinds = {m.kind for m in plan.mounts}
    assert kinds == {Kind.TMPFS, Kind.OVERLAY}
    assert plan.notes == (
        f"{boot_state(c(text))} boot: persistent volumes and paths of the layout are not used",
    )


def test_recovery_layout_from_its_env_uses_upstream_rw_paths() -> None:
    layout = Layout.from_env({"OVERLAY": "tmpfs:25%"})
    plan = plan_layout(c(RECOVERY), layout)
    assert _where(plan.mounts) == [
        ("tmpfs", "/run/overlay"),
        ("tmpfs", "/sysroot/tmp"),
        ("overlay", "/sysroot/etc"),
        ("overlay", "/sysroot/root"),
        ("overlay", "/sysroot/home"),
        ("overlay", "/sysroot/opt"),
        ("overlay", "/sysroot/srv"),
        ("overlay", "/sysroot/usr/local"),
        ("overlay", "/sysroot/var"),
    ]
    assert plan.notes == ()


def test_no_layout_file_is_upstreams_builtin_default() -> None:
    plan = plan_layout(c(ACTIVE), Layout(from_file=False))
    assert plan.mounts[0].options == ("size=20%",)
    assert len(plan.mounts) == 9


@pytest.mark.parametrize(
    ("extra", "size"),
    [
        ("", "size=25%"),
        (" rd.immucore.overlay=tmpfs:1G", "size=1G"),
        (" rd.cos.overlay=tmpfs:40%", "size=40%"),
        (" rd.cos.overlay=tmpfs:40% rd.immucore.overlay=tmpfs:512M", "size=512M"),
    ],
)
def test_overlay_size_from_cmdline_wins(extra: str, size: str) -> None:
    assert plan_layout(c(ACTIVE + extra), DEFAULT).mounts[0].options == (size,)


def test_bad_overlay_on_cmdline_is_a_note_and_the_layout_wins() -> None:
    plan = plan_layout(c(ACTIVE + " rd.immucore.overlay=ramdisk"), DEFAULT)
    assert plan.mounts[0].options == ("size=25%",)
    assert plan.notes == (
        "overlay: 'ramdisk': expected tmpfs:SIZE, LABEL=x or UUID=x; using tmpfs:25%",
    )


def test_overlay_on_a_block_device() -> None:
    plan = plan_layout(c(ACTIVE + " rd.immucore.overlay=LABEL=SCRATCH"), DEFAULT)
    first = plan.mounts[0]
    assert (first.kind, first.what, first.where) == (Kind.DEVICE, "LABEL=SCRATCH", "/run/overlay")


def test_custom_mounts_from_cmdline_are_merged() -> None:
    text = ACTIVE + " rd.cos.mount=LABEL=DATA:/var/data rd.immucore.mount=UUID=abc:/srv/x"
    devices = [
        (m.what, m.where) for m in plan_layout(c(text), DEFAULT).mounts if m.kind is Kind.DEVICE
    ]
    assert devices == [
        ("LABEL=COS_PERSISTENT", "/sysroot/usr/local"),
        ("LABEL=DATA", "/sysroot/var/data"),
        ("UUID=abc", "/sysroot/srv/x"),
    ]


def test_merge_false_lets_cmdline_mounts_replace_volumes() -> None:
    layout = Layout.from_env({"VOLUMES": "LABEL=COS_PERSISTENT:/usr/local", "MERGE": "false"})
    plan = plan_layout(c(ACTIVE + " rd.cos.mount=LABEL=DATA:/usr/local"), layout)
    devices = [m.what for m in plan.mounts if m.kind is Kind.DEVICE]
    assert devices == ["LABEL=DATA"]
    # Without cmdline mounts the layout's volumes stay.
    plan = plan_layout(c(ACTIVE), layout)
    assert [m.what for m in plan.mounts if m.kind is Kind.DEVICE] == ["LABEL=COS_PERSISTENT"]


def test_bad_cmdline_mount_is_a_note() -> None:
    plan = plan_layout(c(ACTIVE + " rd.cos.mount=nocolon"), DEFAULT)
    assert plan.notes == (
        "rd.cos.mount: ignored: 'nocolon' is not DEVICE:/mountpoint "
        "(e.g. LABEL=COS_PERSISTENT:/usr/local)",
    )


def test_recovery_keeps_explicit_cmdline_mounts() -> None:
    plan = plan_layout(c(RECOVERY + " rd.cos.mount=LABEL=DATA:/mnt/data"), DEFAULT)
    assert [m.what for m in plan.mounts if m.kind is Kind.DEVICE] == ["LABEL=DATA"]


def test_persistent_overlay_when_not_bind() -> None:
    layout = Layout.from_env(
        {"PERSISTENT_STATE_PATHS": "/etc/ssh", "PERSISTENT_STATE_TARGET": "/usr/local/state"}
    )
    plan = plan_layout(c(ACTIVE), layout)
    assert plan.fstab().splitlines()[-1] == (
        "overlay /etc/ssh overlay defaults,lowerdir=/etc/ssh,"
        "upperdir=/usr/local/state/etc-ssh.overlay/upper,"
        "workdir=/usr/local/state/etc-ssh.overlay/work 0 0"
    )
    last = plan.mounts[-1]
    assert (last.kind, last.where, last.upper) == (
        Kind.OVERLAY,
        "/sysroot/etc/ssh",
        "/sysroot/usr/local/state/etc-ssh.overlay",
    )


def test_oem_label_and_timeout_from_immucore_keys() -> None:
    text = ACTIVE + " rd.immucore.oemlabel=MY_OEM rd.immucore.oemtimeout=3"
    oem = plan_layout(c(text), DEFAULT).oem
    assert oem is not None
    assert (oem.what, oem.timeout) == ("LABEL=MY_OEM", 3.0)
    oem = plan_layout(c("root=LABEL=COS_ACTIVE cos-img/filename=/a.img"), DEFAULT).oem
    assert oem is not None
    assert (oem.what, oem.timeout) == ("LABEL=COS_OEM", 5.0)


def test_custom_sysroot() -> None:
    plan = plan_layout(c(ACTIVE), DEFAULT, sysroot="/mnt/new")
    assert plan.mounts[1].where == "/mnt/new/tmp"
    assert plan.mounts[2].where == "/mnt/new/var"
    assert plan.mounts[-1].what == "/mnt/new/usr/local/.state/var-lib-kairos.bind"


def test_volume_parse() -> None:
    assert Volume.parse("LABEL=COS_PERSISTENT:/usr/local/") == Volume(
        "LABEL=COS_PERSISTENT", "/usr/local"
    )
    with pytest.raises(ValueError):
        Volume.parse("LABEL=X:relative")
