"""`install` / `manual-install` front end and the installer's exact commands (runner faked)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kairos.agent import install as inst
from kairos.agent import install_cli
from kairos.agent import install_plan as ip
from kairos.cli import main
from kairos.context import Context
from kairos.disk import devices as blk
from kairos.errors import KairosError
from kairos.log import Progress
from tests.unit.test_disk_devices import GIB, dev, lsblk
from tests.unit.test_install_plan import live_root

DISKS_JSON = lsblk(dev("vdb", 40 * GIB), dev("vdc", GIB))
CONFIG = "#cloud-config\nusers:\n- name: kairos\n  groups: [admin]\ninstall:\n  device: /dev/vdb\n"


class FakeHost:
    """A runner that answers lsblk/blkid like a host with the disks above; records argv."""

    def __init__(self, lsblk_json: str = DISKS_JSON, parts: int = 6) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.inputs: list[bytes | None] = []
        self.lsblk_json = lsblk_json
        self.parts = parts

    def __call__(self, argv: Any, **kw: Any) -> tuple[int, bytes, bytes]:
        argv = tuple(argv)
        self.calls.append(argv)
        self.inputs.append(kw.get("input"))
        if argv[0] == "lsblk" and argv[-1].startswith("/dev/"):
            children = [dev(f"vdb{i}", GIB, "part") for i in range(1, self.parts + 1)]
            return 0, lsblk(dev("vdb", 40 * GIB, children=children)).encode(), b""
        if argv[0] == "lsblk":
            return 0, self.lsblk_json.encode(), b""
        if argv[0] == "blkid":
            labels = {"/dev/vdb2": "COS_GRUB", "/dev/vdb3": "COS_OEM", "/dev/vdb4": "COS_RECOVERY",
                      "/dev/vdb5": "COS_STATE", "/dev/vdb6": "COS_PERSISTENT"}  # fmt: skip
            label = labels.get(argv[-1])
            return 0, (f"LABEL={label}\n" if label else "").encode(), b""
        return 0, b"", b""


@pytest.fixture
def host(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    fake = FakeHost()
    monkeypatch.setattr("kairos.run._spawn", fake)
    return fake


def test_partition_disk_exact_argv(tmp_path: Path, host: FakeHost) -> None:
    ctx = live_root(tmp_path)
    config = yaml.safe_load(CONFIG)
    plan, problems = ip.make_plan(
        ctx, ip.parse_options(config), config, blk.parse_lsblk(DISKS_JSON)
    )
    assert problems == [] and plan is not None
    host.calls.clear()
    m = inst.partition_disk(plan)
    state = plan.layout.partitions[4].size_mib
    recovery = plan.layout.partitions[3].size_mib
    linux = "0FC63DAF-8483-4772-8E79-3D69D8477DE4"
    assert host.inputs[1].decode().splitlines() == [
        "label: gpt",
        'size=1MiB, type=21686148-6449-6E6F-744E-656564454649, name="bios"',
        'size=64MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="efi"',
        f'size=64MiB, type={linux}, name="oem"',
        f'size={recovery}MiB, type={linux}, name="recovery"',
        f'size={state}MiB, type={linux}, name="state"',
        f'type={linux}, name="persistent"',
    ]
    assert host.calls[:2] == [
        ("wipefs", "--all", "--force", "/dev/vdb"),
        ("sfdisk", "--quiet", "--wipe", "always", "/dev/vdb"),
    ]  # fmt: skip
    mkfs = [c for c in host.calls if c[0].startswith("mkfs")]
    assert mkfs == [
        ("mkfs.vfat", "-F", "32", "-I", "-n", "COS_GRUB", "/dev/vdb2"),
        ("mkfs.ext4", "-F", "-q", "-L", "COS_OEM", "/dev/vdb3"),
        ("mkfs.ext4", "-F", "-q", "-L", "COS_RECOVERY", "/dev/vdb4"),
        ("mkfs.ext4", "-F", "-q", "-L", "COS_STATE", "/dev/vdb5"),
        ("mkfs.ext4", "-F", "-q", "-L", "COS_PERSISTENT", "/dev/vdb6"),
    ]
    assert ("udevadm", "settle", "--timeout=30") in host.calls
    assert m.parts["COS_STATE"] == Path("/dev/vdb5")
    assert m.parts["COS_GRUB"] == Path("/dev/vdb2")


def test_partition_disk_missing_partitions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kairos.run._spawn", FakeHost(parts=3))
    ctx = live_root(tmp_path)
    config = yaml.safe_load(CONFIG)
    plan, _ = ip.make_plan(ctx, ip.parse_options(config), config, blk.parse_lsblk(DISKS_JSON))
    assert plan is not None
    with pytest.raises(KairosError, match="shows 3 partitions after partitioning, expected 6"):
        inst.partition_disk(plan)


def _cfg(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_dry_run_json(tmp_path: Path, host: FakeHost, capsys: pytest.CaptureFixture[str]) -> None:
    live_root(tmp_path / "node")
    code = main(["--root", str(tmp_path / "node"), "manual-install", str(_cfg(tmp_path)),
                 "--dry-run", "--json"])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["problems"] == []
    assert out["plan"]["device"] == "/dev/vdb"
    assert [p["label"] for p in out["plan"]["partitions"]][-1] == "COS_PERSISTENT"
    # A dry run lists devices and nothing else.
    assert [c[0] for c in host.calls] == ["lsblk"]


def test_dry_run_text_and_problems(
    tmp_path: Path, host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    live_root(tmp_path / "node")
    cfg = _cfg(tmp_path, "#cloud-config\ninstall:\n  device: /dev/vdc\n")
    code = main(["--root", str(tmp_path / "node"), "manual-install", str(cfg), "--dry-run"])
    captured = capsys.readouterr()
    assert code == 1
    assert "COS_STATE" in captured.out and "/dev/vdc" in captured.out
    assert "problem: users: no user in group admin" in captured.err
    assert "problem: install.device: /dev/vdc has 1024 MiB" in captured.err


def test_refusal_writes_nothing(
    tmp_path: Path, host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    live_root(tmp_path / "node")
    cfg = _cfg(tmp_path, "#cloud-config\nusers: [{name: a}]\ninstall:\n  device: /dev/vdc\n")
    code = main(["--root", str(tmp_path / "node"), "manual-install", str(cfg)])
    err = capsys.readouterr().err
    assert code == 1
    assert "install refused: 2 problem(s); nothing was written." in err
    assert [c[0] for c in host.calls] == ["lsblk"]


def test_schema_errors_are_problems_too(
    tmp_path: Path, host: FakeHost, capsys: pytest.CaptureFixture[str]
) -> None:
    live_root(tmp_path / "node")
    cfg = _cfg(tmp_path, CONFIG + "  reboot: maybe\n")
    code = main(["--root", str(tmp_path / "node"), "manual-install", str(cfg), "--dry-run"])
    assert code == 1
    assert "install.reboot" in capsys.readouterr().err


def test_manual_install_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["manual-install", str(tmp_path / "nope.yaml"), "--dry-run"])
    assert code == 1
    assert "no such config file" in capsys.readouterr().err


def test_manual_install_unusable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--root", str(tmp_path), "manual-install",
                 str(_cfg(tmp_path, "#cloud-config\ninstall: [\n")), "--dry-run"])  # fmt: skip
    assert code == 1
    assert "not used as a cloud-config" in capsys.readouterr().err


def test_require_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000000000\n")
    real = Path.read_text

    def fake_read(self: Path, *a: Any, **kw: Any) -> str:
        return real(status) if str(self) == "/proc/self/status" else real(self, *a, **kw)

    monkeypatch.setattr(Path, "read_text", fake_read)
    with pytest.raises(KairosError, match="needs root"):
        install_cli.require_root(Context())
    status.write_text("CapEff:\t000001ffffffffff\n")
    install_cli.require_root(Context())


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("install", "manual-install"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_stage_documents_skip_stage_paths() -> None:
    from kairos.config.collect import Collected
    from kairos.config.yamlload import Document

    docs = tuple(
        Document({}, source, {})
        for source in ("/run/initramfs/live/config.yaml", "/oem/a.yaml", "cmdline",
                       "/system/oem/x.yaml", "/tmp/manual.yaml")
    )  # fmt: skip
    picked = install_cli.stage_documents(Collected(docs, {}, (), ()))
    assert [d.source for d in picked] == ["/run/initramfs/live/config.yaml", "/tmp/manual.yaml"]


def test_custom_mounts_file(tmp_path: Path) -> None:
    m = inst.Mounted(Path("/dev/x"), dirs={"COS_OEM": tmp_path})
    inst.write_custom_mounts(m, ip.InstallOptions())
    assert not (tmp_path / "10_user_custom_mounts.yaml").exists()
    opts = ip.InstallOptions(bind_mounts=("/var/a", "/b"), ephemeral_mounts=("/tmp/c",))
    inst.write_custom_mounts(m, opts)
    path = tmp_path / "10_user_custom_mounts.yaml"
    assert path.stat().st_mode & 0o777 == 0o640
    data = yaml.safe_load(path.read_text())
    step = data["stages"]["rootfs"][0]
    assert step["environment_file"] == "/run/cos/custom-layout.env"
    assert step["environment"] == {"CUSTOM_BIND_MOUNTS": "/var/a /b",
                                   "CUSTOM_EPHEMERAL_MOUNTS": "/tmp/c"}  # fmt: skip


def test_copy_image_progress(tmp_path: Path) -> None:
    src = tmp_path / "a"
    src.write_bytes(b"x" * (3 * inst.COPY_CHUNK + 5))
    inst.copy_image(src, tmp_path / "sub/b", Progress(quiet=True))
    assert (tmp_path / "sub/b").read_bytes() == src.read_bytes()
    assert not list((tmp_path / "sub").glob(".*"))


@pytest.mark.parametrize("broken", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_copy_image_falls_back_across_filesystems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: tuple[str, ...]
) -> None:
    """copy_file_range fails with EXDEV between filesystems; sendfile, then read/write, copy."""
    import errno
    import os

    used: list[str] = []
    for name in ("copy_file_range", "sendfile"):
        real = getattr(os, name)

        def fake(*args: object, _name: str = name, _real: object = real) -> int:
            used.append(_name)
            if _name in broken:
                raise OSError(errno.EXDEV, "Invalid cross-device link")
            return _real(*args)  # type: ignore[operator,no-any-return]

        monkeypatch.setattr(os, name, fake)
    src = tmp_path / "a"
    src.write_bytes(bytes(range(256)) * (inst.COPY_CHUNK // 128 + 3))
    inst.copy_image(src, tmp_path / "b", Progress(quiet=True))
    assert (tmp_path / "b").read_bytes() == src.read_bytes()
    # Each way is tried once; the first that works copies everything.
    assert used.count("copy_file_range") == 1
    if "sendfile" in broken:
        assert used.count("sendfile") == 1
    else:
        assert used.count("sendfile") == 4  # three chunks and the end


def test_power_action(recorded_commands: list[tuple[str, ...]]) -> None:
    inst.power_action(ip.Power.NONE)
    assert recorded_commands == []
    inst.power_action(ip.Power.POWEROFF)
    assert recorded_commands[-1][-1] == "poweroff"
