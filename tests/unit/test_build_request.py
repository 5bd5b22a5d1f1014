"""`kairos build` input checks: every problem reported at once, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.build import pipeline
from kairos.build.pipeline import BuildRequest, Format, check, parse_formats
from kairos.cli import main
from kairos.errors import ConfigError, KairosError


def test_parse_formats() -> None:
    assert parse_formats("iso,raw, qcow2,iso") == (Format.ISO, Format.RAW, Format.QCOW2)
    with pytest.raises(KairosError, match="dvd") as err:
        parse_formats("iso,dvd")
    assert err.value.hint and "netboot" in err.value.hint
    with pytest.raises(KairosError):
        parse_formats(",")


def test_all_problems_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kairos.run.which", lambda tool: None if tool == "xorriso" else "/x")
    req = BuildRequest(
        source="floppy:/dev/fd0",
        output=tmp_path / "out",
        cloud_config=tmp_path / "missing.yaml",
        name="bad name!",
    )
    with pytest.raises(ConfigError) as err:
        check(req)
    problems = "\n".join(err.value.problems)
    assert "--source" in problems and "floppy" in problems
    assert "missing.yaml" in problems
    assert "--name" in problems
    assert "xorriso" in problems
    assert len(err.value.problems) == 4
    assert err.value.hint and "apt-get install xorriso" in err.value.hint


def test_invalid_cloud_config_fails_before_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("kairos.run.which", lambda tool: "/x")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("#cloud-config\nusers: [\n")
    src = tmp_path / "root"
    (src / "etc").mkdir(parents=True)
    with pytest.raises(ConfigError) as err:
        check(BuildRequest(source=f"dir:{src}", output=tmp_path / "o", cloud_config=cfg))
    assert any("c.yaml" in p for p in err.value.problems)


def test_valid_request_resolves_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kairos.run.which", lambda tool: "/x")
    src = tmp_path / "root"
    (src / "etc").mkdir(parents=True)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("#cloud-config\nhostname: node1\n")
    plan = check(
        BuildRequest(
            source=f"dir:{src}",
            output=tmp_path / "o",
            formats=(Format.ISO, Format.QCOW2),
            cloud_config=cfg,
        )
    )
    assert "grub-mkrescue" in plan.tools and "qemu-img" in plan.tools and "sfdisk" in plan.tools


def test_no_space_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kairos.run.which", lambda tool: "/x")
    monkeypatch.setattr(pipeline, "_free", lambda path: 1024)
    src = tmp_path / "root"
    (src / "usr").mkdir(parents=True)
    with pytest.raises(ConfigError) as err:
        check(BuildRequest(source=f"dir:{src}", output=tmp_path / "o"))
    text = "\n".join(err.value.problems)
    assert "--output" in text and "GiB free" in text
    assert "kairos-py" in text or "cache" in text.lower() or "KAIROS_CACHE" in str(err.value.hint)


def test_cli_reports_problems_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["build", "--source", "nope:x", "--output", str(tmp_path / "o")])
    assert rc == 1
    err = capsys.readouterr().err
    assert "cannot build" in err and "nope" in err
    assert not (tmp_path / "o").exists()


def test_cli_help_has_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    out = capsys.readouterr().out
    assert "kairos build --source debian:bookworm --output out/" in out
