"""Every upstream example config plans cleanly with `run-stage --analyze` for each stage it uses."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kairos.context import Context
from kairos.stages import loader, runner
from tests.conftest import EXAMPLES
from tests.unit.stages_helpers import make_root, run_stage

EXAMPLE_FILES = sorted(EXAMPLES.glob("*.yaml"))


def _base(stage: str) -> str:
    for suffix in (".before", ".after"):
        if stage.endswith(suffix):
            return stage.removesuffix(suffix)
    return stage


def test_examples_exist() -> None:
    assert len(EXAMPLE_FILES) == 20


@pytest.mark.parametrize("example", EXAMPLE_FILES, ids=lambda p: p.name)
def test_example_plans_cleanly(
    example: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make_root(tmp_path)
    (root / "oem").mkdir()
    shutil.copy(example, root / "oem" / example.name)
    files = loader.load_sources(Context(root=root), loader.stage_paths(), cmdline=False)
    assert len(files) == 1
    assert files[0].problems == ()
    assert files[0].warnings == ()
    stages = sorted({_base(s) for s in files[0].stages})
    for stage in stages:
        _lines, problems = runner.analyze(Context(root=root), stage, files)
        assert problems == [], (stage, problems)
        assert run_stage(root, stage, "--analyze") == 0
        out = capsys.readouterr().out
        assert f"{stage}:" in out
    if "\nstages:" in example.read_text():
        assert sum(len(v) for v in files[0].stages.values()) > 0
