"""Every upstream example config validates with no errors, and its warnings are real ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.config.validate import validate_text
from tests.conftest import EXAMPLES

FILES = sorted(EXAMPLES.glob("*.yaml"))

# Warnings each example is expected to give. None today: the upstream examples only use keys
# the schema knows, and the ones with blank values (`ssh_authorized_keys:` with every entry
# commented out) are null, which the agent reads as "not set".
EXPECTED_WARNINGS: dict[str, list[str]] = {}


def test_all_twenty_examples_are_present() -> None:
    assert len(FILES) == 20


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    report = validate_text(path.read_text(), path.name)
    assert report.errors == (), "\n".join(map(str, report.errors))
    assert [str(w) for w in report.warnings] == EXPECTED_WARNINGS.get(path.name, [])


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_example_validates_strict(path: Path) -> None:
    report = validate_text(path.read_text(), path.name, strict=True)
    assert report.valid, "\n".join(map(str, report.errors))


def test_example_18_is_strict_and_clean() -> None:
    path = EXAMPLES / "18-kairos-tests-uki-install.yaml"
    text = path.read_text()
    assert "strict: true" in text
    report = validate_text(text, path.name)
    assert report.errors == ()
    assert report.warnings == ()
    # The same file with an unknown key fails: its own `strict: true` turns the warning fatal.
    report = validate_text(text + "\nunknown_block: 1\n", path.name)
    assert [p.path for p in report.errors] == ["unknown_block"]


def test_examples_with_null_values_are_accepted() -> None:
    # 06 has `ssh_authorized_keys:` with only comments under it: null, like the Go decoder sees it.
    path = EXAMPLES / "06-docs-p2p-ha-kubevip.yaml"
    report = validate_text(path.read_text(), path.name)
    assert report.valid and report.warnings == ()
