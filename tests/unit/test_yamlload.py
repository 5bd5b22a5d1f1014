from __future__ import annotations

import time

import pytest

from kairos.config.yamlload import MAX_NODES, has_header, load
from kairos.errors import ConfigError


def test_lines_recorded_for_every_path() -> None:
    doc = load("#cloud-config\nusers:\n  - name: kairos\n    groups: [admin]\n", "u.yaml")
    assert doc.line_of(("users", 0, "name")) == 3
    assert doc.line_of(("users", 0, "groups", 0)) == 4
    assert doc.line_of(("users", 0, "missing", "deeper")) == 3


def test_yaml12_booleans_and_octal_forms() -> None:
    data = load("a: yes\nb: true\nc: 0o640\nd: 0640\ne: off\n").data
    assert data == {"a": "yes", "b": True, "c": 0o640, "d": 0o640, "e": "off"}


def test_invalid_yaml_has_file_line_column() -> None:
    with pytest.raises(ConfigError) as exc:
        load("a: [1\nb: 2\n", "bad.yaml")
    assert exc.value.message.startswith("bad.yaml:2:")
    assert exc.value.problems


def test_duplicate_keys_refused_with_both_lines() -> None:
    with pytest.raises(ConfigError) as exc:
        load("install:\n  device: /dev/vda\n  device: /dev/vdb\n", "dup.yaml")
    assert "dup.yaml:3:" in exc.value.message
    assert "line 2" in exc.value.message


def test_alias_bomb_refused_fast() -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefghi"):
        prev = "abcdefghi"[i]
        levels.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    start = time.monotonic()
    with pytest.raises(ConfigError) as exc:
        load("\n".join(levels), "bomb.yaml")
    assert time.monotonic() - start < 1.0
    assert str(MAX_NODES) in exc.value.message


def test_deep_nesting_refused() -> None:
    with pytest.raises(ConfigError):
        load("[" * 500 + "]" * 500, "deep.yaml")


def test_header_rule() -> None:
    assert has_header("# comment\n#cloud-config\nfoo: 1\n")
    assert has_header("\n" * 9 + "#node-config\n")
    assert not has_header("\n" * 10 + "#cloud-config\n")
    assert not has_header("#cloud-config-archive\n")
    assert not has_header("  # #cloud-config\n")
