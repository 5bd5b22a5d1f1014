"""`kairos vm run` argument handling and the cidata datasource ISO."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.cli import build_parser, main
from kairos.errors import KairosError
from kairos.run import run
from kairos.vm.cli import parse_memory
from kairos.vm.datasource import meta_data, write_cidata
from kairos.vm.qemu import VMError


def test_vm_run_flags_parse() -> None:
    args = build_parser().parse_args(
        ["vm", "run", "out/kairos.iso", "--bios", "--disk", "20G", "--memory", "4G",
         "--ssh-port", "2222", "--show-console", "--until-login", "--state", "--shutdown"]
    )  # fmt: skip
    assert args.artifact == "out/kairos.iso"
    assert args.firmware == "bios"
    assert args.disk == "20G"
    assert (args.show_console, args.until_login, args.state, args.shutdown) == (
        True,
        True,
        True,
        True,
    )
    assert args.timeout == 300.0
    assert args.handler.__name__ == "_run"


def test_uefi_is_the_default_and_excludes_bios() -> None:
    assert build_parser().parse_args(["vm", "run", "x.iso"]).firmware == "uefi"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["vm", "run", "x.iso", "--uefi", "--bios"])


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["vm", "run", "--help"])
    assert "kairos vm run out/kairos.iso" in capsys.readouterr().out


def test_missing_artifact_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["vm", "run", str(tmp_path / "nope.iso")]) == 1
    err = capsys.readouterr().err
    assert "no such artifact" in err
    assert "kairos build" in err


def test_bad_disk_size_fails_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    iso = tmp_path / "k.iso"
    iso.write_bytes(b"\0" * 0x8001 + b"CD001")
    assert main(["vm", "run", str(iso), "--disk", "20GB"]) == 1
    assert "--disk: bad size '20GB'" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "mib"), [("2048", 2048), ("2048M", 2048), ("4G", 4096)])
def test_parse_memory(text: str, mib: int) -> None:
    assert parse_memory(text) == mib


@pytest.mark.parametrize("text", ["", "0", "2T", "1.5G", "lots"])
def test_parse_memory_refuses(text: str) -> None:
    with pytest.raises(VMError, match="--memory"):
        parse_memory(text)


def test_meta_data() -> None:
    assert meta_data("i-1", "node1") == "instance-id: i-1\nlocal-hostname: node1\n"


def test_cidata_iso_holds_user_and_meta_data(tmp_path: Path, allow_commands: None) -> None:
    user_data = tmp_path / "config.yaml"
    user_data.write_text("#cloud-config\nusers:\n- name: kairos\n  passwd: kairos\n")
    iso = write_cidata(user_data, tmp_path / "cidata.iso")
    listing = run(["xorriso", "-indev", iso, "-ls", "/"]).stdout
    assert "'user-data'" in listing and "'meta-data'" in listing
    pvd = iso.read_bytes()[0x8000 : 0x8000 + 2048]
    assert pvd[1:6] == b"CD001"
    assert pvd[40:72].decode().strip() == "cidata"
    out = tmp_path / "ud"
    run(["xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/user-data", out])
    assert out.read_text() == user_data.read_text()


def test_unreadable_cloud_config(tmp_path: Path) -> None:
    with pytest.raises(KairosError, match="cannot read the cloud-config"):
        write_cidata(tmp_path / "missing.yaml", tmp_path / "cidata.iso")
