"""The QEMU runner's pure parts: accelerator choice, artifact sniffing, the exact command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.vm.qemu import (
    Accel,
    ArtifactKind,
    DiskFormat,
    Firmware,
    Machine,
    MachineSpec,
    QemuPlan,
    VMError,
    artifact_kind,
    check_size,
    clean_console,
    detect_accel,
    qemu_argv,
)

VMX_CPU = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr vmx sse2\n"
PLAIN_CPU = "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr sse2 hypervisor\n"


@pytest.fixture
def host(tmp_path: Path) -> tuple[Path, Path, Path]:
    dev = tmp_path / "kvm"
    dev.write_text("")
    mods = tmp_path / "module"
    (mods / "kvm").mkdir(parents=True)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(VMX_CPU)
    return dev, mods, cpuinfo


def test_kvm_when_device_and_vmx_work(host: tuple[Path, Path, Path]) -> None:
    dev, mods, cpuinfo = host
    choice = detect_accel(dev, mods, cpuinfo)
    assert choice.accel is Accel.KVM


def test_kvm_pvm_falls_back_to_tcg_and_says_why(host: tuple[Path, Path, Path]) -> None:
    dev, mods, cpuinfo = host
    (mods / "kvm_pvm").mkdir()
    choice = detect_accel(dev, mods, cpuinfo)
    assert choice.accel is Accel.TCG
    assert "kvm_pvm" in choice.reason


def test_no_vmx_or_svm_flag_means_tcg(host: tuple[Path, Path, Path]) -> None:
    dev, mods, cpuinfo = host
    cpuinfo.write_text(PLAIN_CPU)
    choice = detect_accel(dev, mods, cpuinfo)
    assert choice.accel is Accel.TCG
    assert "vmx/svm" in choice.reason


def test_svm_counts_as_hardware_virtualization(host: tuple[Path, Path, Path]) -> None:
    dev, mods, cpuinfo = host
    cpuinfo.write_text(PLAIN_CPU.replace("sse2", "sse2 svm"))
    assert detect_accel(dev, mods, cpuinfo).accel is Accel.KVM


def test_missing_device_means_tcg(host: tuple[Path, Path, Path]) -> None:
    _, mods, cpuinfo = host
    choice = detect_accel(mods / "nope", mods, cpuinfo)
    assert choice.accel is Accel.TCG
    assert "does not exist" in choice.reason


def test_override_wins_and_bad_override_is_an_error(host: tuple[Path, Path, Path]) -> None:
    dev, mods, cpuinfo = host
    (mods / "kvm_pvm").mkdir()
    assert detect_accel(dev, mods, cpuinfo, override="KVM").accel is Accel.KVM
    with pytest.raises(VMError, match="unknown accelerator"):
        detect_accel(dev, mods, cpuinfo, override="hvf")


def test_artifact_kind_by_magic(tmp_path: Path) -> None:
    iso = tmp_path / "a.img"
    iso.write_bytes(b"\0" * 0x8001 + b"CD001" + b"\0" * 100)
    qcow = tmp_path / "b.iso"  # the name does not matter, the bytes do
    qcow.write_bytes(b"QFI\xfb" + b"\0" * 100)
    raw = tmp_path / "c.qcow2"
    raw.write_bytes(b"\0" * 70000)
    assert artifact_kind(iso) is ArtifactKind.ISO
    assert artifact_kind(qcow) is ArtifactKind.QCOW2
    assert artifact_kind(raw) is ArtifactKind.RAW
    with pytest.raises(VMError, match="cannot read the artifact"):
        artifact_kind(tmp_path / "missing.iso")


@pytest.mark.parametrize("size", ["20G", "512M", "1T", "1048576"])
def test_sizes_qemu_img_takes(size: str) -> None:
    assert check_size(size) == size


@pytest.mark.parametrize("size", ["", "0G", "20 G", "20GB", "-1G", "1.5G", "1G;rm"])
def test_bad_sizes_are_refused(size: str) -> None:
    with pytest.raises(VMError, match="--disk: bad size"):
        check_size(size)


def _plan(**kw: object) -> QemuPlan:
    base: dict[str, object] = {
        "artifact": Path("/a/kairos.iso"),
        "kind": ArtifactKind.ISO,
        "firmware": Firmware.UEFI,
        "accel": Accel.TCG,
        "memory_mib": 2048,
        "cpus": 2,
        "serial_log": Path("/w/serial.log"),
        "qmp_socket": Path("/w/qmp.sock"),
        "ssh_port": 2222,
        "ovmf_code": Path("/fw/CODE.fd"),
        "ovmf_vars": Path("/w/VARS.fd"),
        "snapshot": False,
    }
    base.update(kw)
    return QemuPlan(**base)  # type: ignore[arg-type]


TAIL = [
    "-nic",
    "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:2222-:22",
    "-device",
    "virtio-rng-pci",
    "-serial",
    "file:/w/serial.log",
    "-monitor",
    "none",
    "-qmp",
    "unix:/w/qmp.sock,server=on,wait=off",
]
HEAD = ["qemu-system-x86_64", "-name", "kairos", "-nodefaults", "-display", "none"]


def test_argv_uefi_iso_under_tcg() -> None:
    assert qemu_argv(_plan()) == [
        *HEAD,
        *("-accel", "tcg", "-cpu", "max", "-m", "2048", "-smp", "2"),
        *("-machine", "q35"),
        *("-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd"),
        *("-drive", "if=pflash,format=raw,unit=1,file=/w/VARS.fd"),
        *("-drive", "file=/a/kairos.iso,format=raw,if=none,id=artifact,media=cdrom,readonly=on"),
        *("-device", "ide-cd,drive=artifact,bus=ide.2,bootindex=1"),
        *TAIL,
    ]
    assert "-boot" not in qemu_argv(_plan())  # QEMU: -boot and bootindex do not mix


def test_argv_iso_with_target_disk_boots_the_disk_first_under_both_firmwares() -> None:
    # A blank target has no boot loader, so the firmware falls through to the CD; after an
    # install the reboot comes up from the disk although the ISO is still attached.
    for firmware, bus in ((Firmware.UEFI, "ide.2"), (Firmware.BIOS, "ide.1,unit=0")):
        plan = _plan(firmware=firmware, target_disk=Path("/w/disk.qcow2"))
        argv = qemu_argv(plan)
        i = argv.index("file=/a/kairos.iso,format=raw,if=none,id=artifact,media=cdrom,readonly=on")
        assert argv[i + 1 : i + 7] == [
            "-device",
            f"ide-cd,drive=artifact,bus={bus},bootindex=2",
            "-drive",
            "file=/w/disk.qcow2,format=qcow2,if=none,id=target",
            "-device",
            "virtio-blk-pci,drive=target,bootindex=1",
        ]
        bootindexes = sorted(a.rsplit("bootindex=", 1)[1] for a in argv if "bootindex=" in a)
        assert bootindexes == ["1", "2"]


def test_argv_bios_raw_snapshot_under_kvm_with_no_reboot() -> None:
    plan = _plan(
        artifact=Path("/a/kairos.raw"),
        kind=ArtifactKind.RAW,
        firmware=Firmware.BIOS,
        accel=Accel.KVM,
        memory_mib=4096,
        cpus=4,
        ovmf_code=None,
        ovmf_vars=None,
        snapshot=True,
        no_reboot=True,
    )
    assert qemu_argv(plan) == [
        *HEAD,
        *("-accel", "kvm", "-cpu", "host", "-m", "4096", "-smp", "4"),
        *("-machine", "pc"),
        *("-drive", "file=/a/kairos.raw,format=raw,if=none,id=artifact,snapshot=on"),
        *("-device", "virtio-blk-pci,drive=artifact,bootindex=1"),
        *TAIL,
        "-no-reboot",
    ]


def test_argv_persistent_qcow2_with_target_disk_and_datasource() -> None:
    plan = _plan(
        artifact=Path("/a/k.qcow2"),
        kind=ArtifactKind.QCOW2,
        target_disk=Path("/w/disk.raw"),
        target_format=DiskFormat.RAW,
        datasource=Path("/w/cidata.iso"),
    )
    argv = qemu_argv(plan)
    i = argv.index("file=/a/k.qcow2,format=qcow2,if=none,id=artifact")
    assert argv[i + 1 : i + 11] == [
        "-device",
        "virtio-blk-pci,drive=artifact,bootindex=2",
        "-drive",
        "file=/w/disk.raw,format=raw,if=none,id=target",
        "-device",
        "virtio-blk-pci,drive=target,bootindex=1",
        "-drive",
        "file=/w/cidata.iso,format=raw,if=none,id=datasource,media=cdrom,readonly=on",
        "-device",
        "ide-cd,drive=datasource,bus=ide.3,bootindex=3",
    ]
    assert "-cdrom" not in argv and "-boot" not in argv
    assert not any("snapshot" in a for a in argv)


def test_argv_uefi_without_firmware_files_is_an_error() -> None:
    with pytest.raises(VMError, match="OVMF"):
        qemu_argv(_plan(ovmf_vars=None))


def test_clean_console_drops_escapes_and_carriage_returns() -> None:
    raw = b"\x1b[2J\x1b[0;1mWelcome\x1b[0m\r\nkairos login: \x1b(B\xff"
    assert clean_console(raw) == "Welcome\nkairos login: \ufffd"


def test_prepare_makes_disk_vars_copy_and_datasource(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]]
) -> None:
    iso = tmp_path / "k.iso"
    iso.write_bytes(b"\0" * 0x8001 + b"CD001")
    user_data = tmp_path / "user-data.yaml"
    user_data.write_text("#cloud-config\nhostname: x\n")
    work = tmp_path / "work"
    spec = MachineSpec(
        artifact=iso, disk_size="20G", cloud_config=user_data, ssh_port=2200, accel=Accel.TCG
    )
    plan = Machine(spec, workdir=work).prepare()
    assert plan.kind is ArtifactKind.ISO
    assert plan.ovmf_vars == work / "OVMF_VARS.fd"
    assert plan.ovmf_vars.read_bytes() == Path("/usr/share/OVMF/OVMF_VARS_4M.fd").read_bytes()
    assert plan.target_disk == work / "disk.qcow2"
    assert plan.datasource == work / "cidata.iso"
    assert plan.ssh_port == 2200
    assert plan.snapshot is False  # a CD is read-only anyway
    assert recorded_commands[0] == (
        "qemu-img", "create", "-q", "-f", "qcow2", str(work / "disk.qcow2"), "20G",
    )  # fmt: skip
    assert recorded_commands[1][:3] == ("xorriso", "-as", "mkisofs")
    assert recorded_commands[1][recorded_commands[1].index("-volid") + 1] == "cidata"


def test_raw_artifact_is_snapshotted_unless_persist(
    tmp_path: Path, recorded_commands: list[tuple[str, ...]]
) -> None:
    raw = tmp_path / "k.raw"
    raw.write_bytes(b"\0" * 70000)
    base = MachineSpec(artifact=raw, firmware=Firmware.BIOS, accel=Accel.TCG)
    assert Machine(base, workdir=tmp_path / "a").prepare().snapshot is True
    persist = MachineSpec(artifact=raw, firmware=Firmware.BIOS, accel=Accel.TCG, persist=True)
    plan = Machine(persist, workdir=tmp_path / "b").prepare()
    assert plan.snapshot is False
    assert plan.ovmf_vars is None
    assert plan.ssh_port > 0
    assert recorded_commands == []
