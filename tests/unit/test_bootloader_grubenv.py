"""GRUB environment blocks: format, escaping, atomic writes and grub-editenv compatibility."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kairos.bootloader import grubenv
from kairos.run import run, which

names = st.text(
    alphabet=st.characters(blacklist_characters="=\n\\\0#", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=20,
)
values = st.text(alphabet=st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
                 max_size=40)  # fmt: skip


def test_block_is_1024_bytes_with_header_and_hash_padding() -> None:
    data = grubenv.render({"next_entry": "recovery", "saved_entry": "cos"})
    assert len(data) == grubenv.SIZE == 1024
    assert data.startswith(b"# GRUB Environment Block\nnext_entry=recovery\nsaved_entry=cos\n")
    tail = data[len(b"# GRUB Environment Block\nnext_entry=recovery\nsaved_entry=cos\n") :]
    assert tail == b"#" * len(tail)


def test_backslash_and_newline_are_escaped_as_grub_does() -> None:
    data = grubenv.render({"k": "a\\b\nc"})
    assert b"k=a\\\\b\\\nc\n#" in data
    assert grubenv.parse(data) == {"k": "a\\b\nc"}


def test_empty_env_and_missing_file(tmp_path: Path) -> None:
    assert grubenv.parse(grubenv.render({})) == {}
    assert grubenv.read(tmp_path / "nope") == {}


def test_value_with_equals_sign_keeps_it() -> None:
    assert grubenv.parse(grubenv.render({"extra_cmdline": "a=b c=d"})) == {
        "extra_cmdline": "a=b c=d"
    }


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, values, max_size=8))
def test_round_trip_property(env: dict[str, str]) -> None:
    data = grubenv.render(env)
    assert len(data) == 1024
    assert grubenv.parse(data) == env
    assert list(grubenv.parse(data)) == list(env)  # order kept


def test_too_big_is_refused_with_a_hint() -> None:
    with pytest.raises(grubenv.GrubEnvError, match="more than the 1024") as err:
        grubenv.render({"extra_cmdline": "x" * 1000})
    assert err.value.hint


def test_bad_names_are_all_reported() -> None:
    with pytest.raises(grubenv.GrubEnvError) as err:
        grubenv.render({"a=b": "1", "": "2", "#c": "3"})
    msg = err.value.message
    assert "'a=b'" in msg and "empty variable name" in msg and "'#c'" in msg


def test_not_a_block_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    path.write_text("next_entry=cos\n")
    with pytest.raises(grubenv.GrubEnvError, match="not a GRUB environment block"):
        grubenv.read(path)


def test_write_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "oem" / "grubenv"
    grubenv.write(path, {"a": "1"})
    inode = path.stat().st_ino
    grubenv.write(path, {"a": "2"})
    assert path.stat().st_ino != inode  # replaced by rename, never rewritten in place
    assert os.listdir(path.parent) == ["grubenv"]
    assert grubenv.read(path) == {"a": "2"}
    assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_failed_render_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    grubenv.write(path, {"saved_entry": "cos"})
    with pytest.raises(grubenv.GrubEnvError):
        grubenv.update(path, {"extra_cmdline": "y" * 2000})
    assert grubenv.read(path) == {"saved_entry": "cos"}
    assert os.listdir(tmp_path) == ["grubenv"]


def test_update_sets_and_empty_value_deletes(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    grubenv.update(path, {"a": "1", "b": "2"})
    assert grubenv.update(path, {"a": "", "c": "3"}, unset=["b"]) == {"c": "3"}


def test_parse_assignment() -> None:
    assert grubenv.parse_assignment("extra_cmdline=a=b") == ("extra_cmdline", "a=b")
    assert grubenv.parse_assignment("x=") == ("x", "")
    with pytest.raises(grubenv.GrubEnvError, match="KEY=VALUE"):
        grubenv.parse_assignment("novalue")


needs_editenv = pytest.mark.skipif(which("grub-editenv") is None, reason="grub-editenv missing")


@needs_editenv
def test_grub_editenv_reads_ours(tmp_path: Path, allow_commands: None) -> None:
    path = tmp_path / "grubenv"
    env = {"next_entry": "recovery", "extra_cmdline": "a b\\c d=e", "saved_entry": "fallback"}
    grubenv.write(path, env)
    out = run(["grub-editenv", str(path), "list"]).stdout
    # grub-editenv prints values unescaped, one name=value per line.
    assert out.splitlines() == [f"{k}={v}" for k, v in env.items()]


@needs_editenv
def test_we_read_grub_editenv_files(tmp_path: Path, allow_commands: None) -> None:
    path = tmp_path / "grubenv"
    run(["grub-editenv", str(path), "create"])
    run(["grub-editenv", str(path), "set", "saved_entry=cos", "extra_cmdline=x\\y z"])
    data = path.read_bytes()
    assert len(data) == 1024
    assert grubenv.parse(data) == {"saved_entry": "cos", "extra_cmdline": "x\\y z"}
    # and after our edit, grub-editenv still understands it and unset works there
    grubenv.update(path, {"next_entry": "statereset"})
    run(["grub-editenv", str(path), "unset", "saved_entry"])
    assert grubenv.read(path) == {"extra_cmdline": "x\\y z", "next_entry": "statereset"}


@needs_editenv
def test_newline_value_matches_grub_editenv_bytes(tmp_path: Path, allow_commands: None) -> None:
    theirs = tmp_path / "theirs"
    run(["grub-editenv", str(theirs), "create"])
    run(["grub-editenv", str(theirs), "set", "k=a\nb\\c"])
    data = theirs.read_bytes()
    assert grubenv.parse(data) == {"k": "a\nb\\c"}
    # Same escaped line (Debian's tool adds a "# WARNING" comment line before it, which
    # GRUB skips like any comment, so we only compare the variable line).
    ours = grubenv.render({"k": "a\nb\\c"})
    line = ours[len(grubenv.HEADER) : ours.index(b"\n#") + 1]
    assert line == b"k=a\\\nb\\\\c\n"
    assert line in data


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=1000))
def test_parse_never_crashes_on_garbage(tail: bytes) -> None:
    env = grubenv.parse(grubenv.HEADER + tail)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())


@needs_editenv
# allow_commands only opts the test in (no per-example state), so sharing it is safe.
@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(env=st.dictionaries(names, values, max_size=6))
def test_grub_editenv_lists_what_we_wrote_property(
    env: dict[str, str], allow_commands: None
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "grubenv"
        grubenv.write(path, env)
        out = run(["grub-editenv", str(path), "list"]).stdout
    assert out == "".join(f"{k}={v}\n" for k, v in env.items())
