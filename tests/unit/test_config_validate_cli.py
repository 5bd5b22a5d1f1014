"""`kairos-agent validate` and `print-schema` through the real command-line front end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kairos.cli import main
from tests.conftest import EXAMPLES

GOOD = "#cloud-config\ninstall:\n  device: auto\nusers:\n  - name: kairos\n"
WARN = GOOD + "colour: blue\n"
BAD = "#cloud-config\nusers:\n  - name: 007\ninstall:\n  device: sda\n  auto: 1\n"


def write(tmp_path: Path, text: str, name: str = "node.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_valid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", write(tmp_path, GOOD)]) == 0
    assert capsys.readouterr().out.strip() == "valid"


def test_valid_with_warnings_lists_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, WARN)
    assert main(["validate", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith("valid, with 1 warning:")
    assert f"{path}:6: colour: unknown key 'colour'" in out


@pytest.mark.parametrize("flag", [["validate", "--strict"], ["--strict-validation", "validate"]])
def test_strict_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str]) -> None:
    assert main([*flag, write(tmp_path, WARN)]) == 1
    assert "colour: unknown key" in capsys.readouterr().err


def test_strict_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRICT_VALIDATIONS", "1")
    assert main(["validate", write(tmp_path, WARN)]) == 1


def test_invalid_lists_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, BAD)
    assert main(["validate", path]) == 1
    err = capsys.readouterr().err
    assert "3 problems found." in err
    assert f"{path}:3: users[0].name: expected a string, got integer 7" in err
    assert f"{path}:5: install.device: 'sda' does not match" in err
    assert f"{path}:6: install.auto: expected a boolean, got integer 1" in err


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--json", write(tmp_path, BAD)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is False
    assert [e["path"] for e in data["errors"]] == [
        "users[0].name",
        "install.device",
        "install.auto",
    ]
    assert data["errors"][0]["line"] == 3
    assert main(["validate", "--json", write(tmp_path, WARN)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["valid"] is True and data["warnings"][0]["path"] == "colour"


def test_invalid_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "#cloud-config\ninstall:\n  device: 'auto\n")
    assert main(["validate", path]) == 1
    assert f"{path}:4: (yaml): invalid YAML at column" in capsys.readouterr().err


def test_several_files_validate_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = write(tmp_path, "#cloud-config\nname: base\nstages:\n  boot:\n    - name: a\n"
                 "      commands: [x]\n", "a.yaml")  # fmt: skip
    node = write(tmp_path, "#cloud-config\nstages:\n  boot:\n    - after: [{name: base.a}]\n"
                 "      commands: [y]\n", "b.yaml")  # fmt: skip
    assert main(["validate", base, node]) == 0
    assert capsys.readouterr().out.strip() == "valid"


def test_url_goes_through_fetch(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    asked: list[str] = []

    def fake_fetch(url: str, **_: object) -> str:
        asked.append(url)
        return BAD

    monkeypatch.setattr("kairos.config.fetch.fetch_text", fake_fetch)
    assert main(["validate", "https://example.com/node.yaml"]) == 1
    assert asked == ["https://example.com/node.yaml"]
    assert "https://example.com/node.yaml:3: users[0].name" in capsys.readouterr().err


def test_file_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "file://" + write(tmp_path, GOOD)]) == 0


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(tmp_path / "nope.yaml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_too_big_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "#cloud-config\n" + "#" * (1 << 20))
    assert main(["validate", path]) == 1
    assert "larger than" in capsys.readouterr().err


def test_every_example_from_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    for path in sorted(EXAMPLES.glob("*.yaml")):
        assert main(["validate", str(path)]) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.strip() == "valid"


def test_print_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["print-schema"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
