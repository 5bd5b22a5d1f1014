"""`kairos-agent bootentry` and `grubedit` under --root."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kairos.bootloader import grubcfg, grubenv
from kairos.cli import main


def _run(root: Path, *args: str) -> int:
    return main(["--root", str(root), *args])


@pytest.fixture
def node(tmp_path: Path) -> Path:
    state = tmp_path / "run/initramfs/cos-state"
    (state / "grub2").mkdir(parents=True)
    (state / "grub2/grub.cfg").write_text(grubcfg.render_menu())
    (state / "grubmenu").write_text('menuentry "Remote recovery" --id remoterecovery {\n}\n')
    (tmp_path / "oem").mkdir()
    return tmp_path


def test_bootentry_lists_installed_and_custom_entries(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(node, "bootentry") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["cos  (default)", "fallback", "recovery", "statereset", "remoterecovery"]


def test_bootentry_select_sets_next_entry_once(
    node: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grubenv.write(node / "oem/grubenv", {"saved_entry": "fallback"})
    assert _run(node, "bootentry", "--select", "remoterecovery") == 0
    assert grubenv.read(node / "oem/grubenv") == {
        "saved_entry": "fallback",
        "next_entry": "remoterecovery",
    }
    capsys.readouterr()
    assert _run(node, "bootentry", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["default"] == "fallback"
    assert report["next_entry"] == "remoterecovery"
    assert report["menus"][0] == str(node / "run/initramfs/cos-state/grub2/grub.cfg")


def test_bootentry_refuses_unknown_entry(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(node, "bootentry", "--select", "cos-typo") == 1
    err = capsys.readouterr().err
    assert "'cos-typo' is not a boot entry" in err
    assert "cos, fallback, recovery, statereset, remoterecovery" in err
    assert not (node / "oem/grubenv").exists()


def test_bootentry_without_installed_menu_knows_the_standard_entries(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tmp_path, "bootentry", "--select", "statereset") == 0
    assert grubenv.read(tmp_path / "oem/grubenv") == {"next_entry": "statereset"}


def test_grubedit_set_list_unset(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(node, "grubedit", "set", "extra_cmdline=a=b c", "default_fallback=2") == 0
    assert _run(node, "grubedit") == 0
    assert capsys.readouterr().out.splitlines() == ["extra_cmdline=a=b c", "default_fallback=2"]
    assert _run(node, "grubedit", "set", "extra_cmdline=") == 0
    assert _run(node, "grubedit", "unset", "default_fallback") == 0
    assert grubenv.read(node / "oem/grubenv") == {}
    assert (node / "oem/grubenv").stat().st_size == 1024


def test_grubedit_other_file_and_json(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = "/run/initramfs/cos-state/grub_oem_env"
    assert _run(node, "grubedit", "--grub-file", target, "set", "default_menu_entry=Acme") == 0
    assert grubenv.read(node / target.lstrip("/")) == {"default_menu_entry": "Acme"}
    assert _run(node, "grubedit", "--grub-file", target, "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"default_menu_entry": "Acme"}


def test_grubedit_errors(node: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(node, "grubedit", "set", "novalue") == 1
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert _run(node, "grubedit", "set") == 1
    assert "nothing to set" in capsys.readouterr().err
    (node / "oem/grubenv").write_text("garbage")
    assert _run(node, "grubedit") == 1
    assert "not a GRUB environment block" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["bootentry", "grubedit"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and f"kairos-agent {command}" in out
