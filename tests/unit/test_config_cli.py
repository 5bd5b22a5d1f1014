"""`kairos-agent config`, `config get`, `config sources` end to end through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kairos.cli import main
from kairos.config.cli import render_config
from kairos.config.collect import Collected, collect
from kairos.config.yamlload import has_header, load
from kairos.context import Context
from tests.conftest import EXAMPLES

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))
H = "#cloud-config\n"


@pytest.fixture(autouse=True)
def _fixed_random(monkeypatch: pytest.MonkeyPatch) -> None:
    # `.Random` differs per run; fix it so two runs can be compared.
    monkeypatch.setattr("kairos.config.template.random_string", lambda n=32: "R" * n)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def node(tmp_path: Path, files: dict[str, str], cmdline: str = "") -> Path:
    for path, text in files.items():
        target = tmp_path / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    (tmp_path / "proc").mkdir(exist_ok=True)
    (tmp_path / "proc/cmdline").write_text(cmdline)
    (tmp_path / "etc").mkdir(exist_ok=True)
    (tmp_path / "etc/machine-id").write_text("0123456789abcdef\n")
    return tmp_path


def test_examples_are_there() -> None:
    assert len(EXAMPLE_FILES) == 20


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_every_example_prints_and_reloads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], example: Path
) -> None:
    root = node(tmp_path, {f"/oem/{example.name}": example.read_text()})
    code, out, err = run_cli(capsys, "--root", str(root), "config")
    assert code == 0, err
    assert err == ""
    assert has_header(out) and out.startswith("#cloud-config\n")
    assert f"# - /oem/{example.name}" in out
    printed = load(out, "printed").data
    expected = collect(Context(root=root)).merged
    assert printed == expected
    assert printed  # every example has content
    # The JSON form holds the same data.
    code, out_json, _ = run_cli(capsys, "--root", str(root), "config", "--json")
    assert code == 0
    assert json.loads(out_json) == json.loads(json.dumps(expected, default=str))
    # Templates were rendered, not printed raw.
    assert "{{" not in out


def test_all_examples_together_through_the_installed_entry_point(
    tmp_path: Path, allow_commands: None
) -> None:
    oem = tmp_path / "oem"
    oem.mkdir()
    for example in EXAMPLE_FILES:
        shutil.copy(example, oem / example.name)
    agent = Path(sys.executable).parent / "kairos-agent"
    proc = subprocess.run(
        [str(agent), "--root", str(tmp_path), "config"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    data = load(proc.stdout, "printed").data
    assert len(data["stages"]["boot"]) > 5  # every file's stages kept
    sources = subprocess.run(
        [str(agent), "--root", str(tmp_path), "config", "sources"],
        capture_output=True,
        text=True,
    )
    assert sources.returncode == 0
    assert sources.stdout.count("/oem/") == 20


def test_get(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = node(
        tmp_path,
        {
            "/oem/a.yaml": H + "install:\n  device: /dev/vda\n  auto: true\n"
            "users:\n- name: kairos\n  groups: [admin]\n"
        },
        cmdline="install.reboot=true",
    )
    r = str(root)
    assert run_cli(capsys, "--root", r, "config", "get", "install.device") == (0, "/dev/vda\n", "")
    assert run_cli(capsys, "--root", r, "config", "get", "users[0].name") == (0, "kairos\n", "")
    assert run_cli(capsys, "--root", r, "config", "get", "install.auto") == (0, "true\n", "")
    assert run_cli(capsys, "--root", r, "config", "get", "install.reboot")[1] == "true\n"
    code, out, _ = run_cli(capsys, "--root", r, "config", "get", "users[0]")
    assert code == 0 and load(out).data == {"name": "kairos", "groups": ["admin"]}
    code, out, _ = run_cli(capsys, "--root", r, "config", "get", "users", "--json")
    assert json.loads(out) == [{"name": "kairos", "groups": ["admin"]}]
    code, out, _ = run_cli(capsys, "--root", r, "config", "--json", "get", "install.device")
    assert json.loads(out) == "/dev/vda"
    code, out, _ = run_cli(capsys, "--root", r, "config", "get", ".")
    assert code == 0 and load(out).data["install"]["device"] == "/dev/vda"


def test_get_missing_key_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(tmp_path, {"/oem/a.yaml": H + "install:\n  device: /dev/vda\n"})
    code, out, err = run_cli(capsys, "--root", str(root), "config", "get", "install.nope")
    assert code == 1
    assert out == ""
    assert "error: install.nope: key not set in the merged config." in err
    assert "hint: keys here: device" in err


def test_no_cmdline_switch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = node(tmp_path, {"/oem/a.yaml": H + "name: file\n"}, cmdline="kairos.config=name=cmd")
    assert run_cli(capsys, "--root", str(root), "config", "get", "name")[1] == "cmd\n"
    args = ("--root", str(root), "config", "--no-cmdline", "get", "name")
    assert run_cli(capsys, *args)[1] == "file\n"


def test_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = node(
        tmp_path,
        {
            "/etc/kairos/a.yaml": H + "name: a\n",
            "/oem/b.yaml": H + "name: b\n",
            "/oem/readme.txt": "hello\n",
            "/oem/c.yaml": "name: no header\n",
        },
        cmdline="quiet install.auto=true",
    )
    code, out, _ = run_cli(capsys, "--root", str(root), "config", "sources")
    assert code == 0
    assert out == (
        "sources (merge order, later wins):\n"
        "  1. /etc/kairos/a.yaml\n"
        "  2. /oem/b.yaml\n"
        "  3. cmdline\n"
        "skipped:\n"
        "  /oem/c.yaml: no #cloud-config header in its first 10 lines\n"
        "  /oem/readme.txt: not a .yaml or .yml file\n"
    )
    code, out, _ = run_cli(capsys, "--root", str(root), "config", "sources", "--json")
    data: dict[str, Any] = json.loads(out)
    assert data["sources"] == ["/etc/kairos/a.yaml", "/oem/b.yaml", "cmdline"]
    assert {"path": "/oem/readme.txt", "reason": "not a .yaml or .yml file"} in data["skipped"]


def test_empty_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--root", str(tmp_path), "config")
    assert code == 0 and out == "#cloud-config\n\n"
    assert load(out).data is None
    assert run_cli(capsys, "--root", str(tmp_path), "config", "sources")[1].endswith("(none)\n")


def test_broken_file_warns_and_strict_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = node(
        tmp_path,
        {
            "/oem/a.yaml": H + "name: ok\n",
            "/oem/b.yaml": H + "\nhostname: {{ nosuchfunc .MachineID }}\n",
        },
    )
    code, out, err = run_cli(capsys, "--root", str(root), "config", "get", "name")
    assert (code, out) == (0, "ok\n")
    assert '/oem/b.yaml:3: template: function "nosuchfunc" not defined' in err
    code, out, err = run_cli(capsys, "--root", str(root), "--strict-validation", "config")
    assert code == 1 and out == ""
    assert "error: 1 config source(s) cannot be used." in err
    assert '  /oem/b.yaml:3: template: function "nosuchfunc" not defined' in err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["config", "--help"],
        ["config", "get", "--help"],
        ["config", "sources", "--help"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert "examples:" in capsys.readouterr().out


# Strings that a YAML reader might take for something else must come back as strings.
_TRICKY = (
    "0o17",
    "yes",
    "on",
    "No",
    "0x1F",
    "1_000",
    "0755",
    "1e3",
    "~",
    "null",
    "2024-01-01",
    "+1",
    ".inf",
    "0b101",
    "1:20",
    "true",
    "- a",
    "#x",
    "a: b",
    "",
    " lead",
    "x\ny",
)
_tricky = st.sampled_from(_TRICKY)
_text = st.text(
    alphabet=st.characters(blacklist_characters="\x85\u2028\u2029", blacklist_categories=("Cs",))
)
_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text | _tricky
_config = st.dictionaries(
    _text | _tricky,
    st.recursive(
        _scalar,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
        max_leaves=15,
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=300)
@given(_config)
def test_printed_config_reloads_to_the_same_data(data: dict[str, Any]) -> None:
    printed = render_config(Collected(documents=(), merged=data, skipped=(), warnings=()))
    assert has_header(printed)
    assert load(printed, "printed").data == data
