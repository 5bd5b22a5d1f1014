"""The safe layer applier: whiteouts, opaque directories, and every trick to write outside."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from kairos.image.layers import ApplyOptions, LayerApplier, LayerError


@dataclass(frozen=True)
class E:
    """One tar entry for a test layer."""

    name: str
    kind: str = "file"  # file dir sym link chr fifo
    data: bytes = b""
    target: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = 1_700_000_000


def layer_tar(entries: Sequence[E]) -> bytes:
    """An uncompressed layer tar holding `entries` in the given order."""
    buf = io.BytesIO()
    types = {
        "file": tarfile.REGTYPE,
        "dir": tarfile.DIRTYPE,
        "sym": tarfile.SYMTYPE,
        "link": tarfile.LNKTYPE,
        "chr": tarfile.CHRTYPE,
        "fifo": tarfile.FIFOTYPE,
    }
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = types[e.kind]
            info.mode = e.mode if e.kind != "dir" or e.mode != 0o644 else 0o755
            info.uid, info.gid, info.mtime = e.uid, e.gid, e.mtime
            info.linkname = e.target
            if e.kind == "chr":
                info.devmajor, info.devminor = 1, 3
            if e.kind == "file":
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def apply(root: Path, *layers: Sequence[E], options: ApplyOptions | None = None) -> LayerApplier:
    root.mkdir(exist_ok=True)
    applier = LayerApplier(root, options)
    for i, entries in enumerate(layers, 1):
        applier.apply(io.BytesIO(layer_tar(entries)), f"{i}/{len(layers)}")
    return applier


def tree(root: Path) -> dict[str, str]:
    """path -> short description, for whole-tree assertions."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = p.read_bytes().decode()
    return out


@pytest.fixture
def sandbox(tmp_path: Path) -> tuple[Path, Path]:
    """A target root and, beside it, a sentinel directory that must stay untouched."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    return root, outside


def assert_outside_untouched(outside: Path) -> None:
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_text() == "original"
    assert not (outside / "victim").is_symlink()


# --- layer semantics -----------------------------------------------------------------


def test_layers_apply_in_order_with_whiteouts_and_opaque_dirs(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(
        root,
        [
            E("etc", "dir"),
            E("etc/a", data=b"a1"),
            E("etc/b", data=b"b1"),
            E("opt/x/1", data=b"1"),
            E("opt/x/sub/2", data=b"2"),
            E("var/gone/deep/file", data=b"d"),
        ],
        [
            E("etc/.wh.a"),
            E("etc/b", data=b"b2"),
            E("opt/x/.wh..wh..opq"),
            E("opt/x/3", data=b"3"),
            E("var/.wh.gone"),
        ],
    )
    assert tree(root) == {
        "etc": "dir",
        "etc/b": "b2",
        "opt": "dir",
        "opt/x": "dir",
        "opt/x/3": "3",
        "var": "dir",
    }


def test_opaque_marker_keeps_entries_of_its_own_layer(tmp_path: Path) -> None:
    """The marker hides lower layers only, wherever it appears in its own layer's tar."""
    root = tmp_path / "root"
    apply(
        root,
        [E("d/old", data=b"o")],
        [E("d/new", data=b"n"), E("d/.wh..wh..opq")],
    )
    assert tree(root) == {"d": "dir", "d/new": "n"}


def test_late_opaque_marker_hides_lower_content_below_new_entries(tmp_path: Path) -> None:
    """Markers belong first in a layer; a late one still hides only lower-layer content."""
    root = tmp_path / "root"
    apply(
        root,
        [E("opt/x/old", data=b"o"), E("opt/y/old", data=b"o"), E("opt/z", data=b"z")],
        [E("opt/x/new", data=b"n"), E("opt/.wh..wh..opq"), E("opt/.wh.x")],
    )
    assert tree(root) == {"opt": "dir", "opt/x": "dir", "opt/x/new": "n"}


def test_whiteout_of_missing_entry_is_a_no_op(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(root, [E("a", data=b"a")], [E(".wh.never-existed"), E("dir/.wh.x")])
    assert tree(root) == {"a": "a"}


def test_type_changes_between_layers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(
        root,
        [E("x/inner", data=b"i"), E("y", data=b"file"), E("z", "sym", target="x")],
        [E("x", data=b"now a file"), E("y", "dir"), E("y/child", data=b"c"), E("z", "dir")],
    )
    assert tree(root) == {"x": "now a file", "y": "dir", "y/child": "c", "z": "dir"}


def test_modes_times_links_and_hardlinks(tmp_path: Path) -> None:
    root = tmp_path / "root"
    applier = apply(
        root,
        [
            E("usr/bin/tool", data=b"#!", mode=0o4755, mtime=1_600_000_000),
            E("usr/bin/alias", "link", target="usr/bin/tool"),
            E("bin", "sym", target="usr/bin"),
            E("etc/abs", "sym", target="/proc/self/mounts"),
            E("secret", "dir", mode=0o700, mtime=1_500_000_000),
            E("secret/key", data=b"k", mode=0o600),
            E("run/fifo", "fifo", mode=0o600),
        ],
    )
    tool = root / "usr/bin/tool"
    assert stat.S_IMODE(tool.stat().st_mode) == 0o4755
    assert tool.stat().st_mtime == 1_600_000_000
    assert (root / "usr/bin/alias").stat().st_ino == tool.stat().st_ino
    assert os.readlink(root / "bin") == "usr/bin"
    assert os.readlink(root / "etc/abs") == "/proc/self/mounts"
    secret = (root / "secret").stat()
    assert stat.S_IMODE(secret.st_mode) == 0o700
    assert secret.st_mtime == 1_500_000_000  # set after its child was written
    assert stat.S_ISFIFO((root / "run/fifo").lstat().st_mode)
    assert applier.stats.bytes == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="keeping ownership needs CAP_CHOWN")
def test_ownership_is_kept_when_allowed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(
        root,
        [
            E("home/u", "dir", uid=1000, gid=1000),
            E("home/u/f", data=b"x", uid=1000, gid=100, mode=0o2755),
            E("home/u/l", "sym", target="f", uid=1000, gid=1000),
        ],
    )
    assert (root / "home/u").stat().st_uid == 1000
    f = (root / "home/u/f").stat()
    assert (f.st_uid, f.st_gid) == (1000, 100)
    assert stat.S_IMODE(f.st_mode) == 0o2755  # setgid survives the chown
    assert (root / "home/u/l").lstat().st_uid == 1000


def test_rootless_unpack_keeps_callers_ownership(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(root, [E("f", data=b"x", uid=4242)], options=ApplyOptions(keep_owner=False))
    assert (root / "f").stat().st_uid == os.geteuid()


def test_read_only_directory_is_filled_then_locked(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(root, [E("ro", "dir", mode=0o555), E("ro/f", data=b"x")])
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555
    assert (root / "ro/f").read_bytes() == b"x"


# --- hostile layers ----------------------------------------------------------------


def _refused(root: Path, *layers: Sequence[E], options: ApplyOptions | None = None) -> str:
    with pytest.raises(LayerError) as info:
        apply(root, *layers, options=options)
    return str(info.value)


def test_dotdot_entry_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(root, [E("ok", data=b"1"), E("../outside/victim", data=b"pwned")])
    assert "layer 1/1" in msg and "'../outside/victim'" in msg and ".." in msg
    assert_outside_untouched(outside)


def test_absolute_entry_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(root, [E(str(outside / "victim"), data=b"pwned")])
    assert "absolute path" in msg and str(outside / "victim") in msg
    assert_outside_untouched(outside)


def test_write_through_symlink_in_same_layer_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(root, [E("evil", "sym", target=str(outside)), E("evil/victim", data=b"pwned")])
    assert "'evil/victim'" in msg and f"'evil' -> '{outside}'" in msg
    assert_outside_untouched(outside)


def test_write_through_symlink_from_earlier_layer_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(
        root,
        [E("etc", "dir"), E("etc/evil", "sym", target=str(outside))],
        [E("etc/evil/new", data=b"pwned")],
    )
    assert "layer 2/2" in msg and "'etc/evil/new'" in msg and "etc/evil" in msg
    assert_outside_untouched(outside)


def test_dir_entry_through_symlink_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(root, [E("evil", "sym", target=str(outside)), E("evil/sub", "dir")])
    assert "'evil/sub'" in msg
    assert_outside_untouched(outside)


def test_relative_symlink_leaving_the_root_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(root, [E("a/up", "sym", target="../../outside")])
    assert "'a/up'" in msg and "leaves the root" in msg
    assert not (root / "a/up").exists()
    assert_outside_untouched(outside)


def test_relative_symlink_staying_inside_is_fine(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(root, [E("usr/lib/x/link", "sym", target="../../../etc/conf")])
    assert os.readlink(root / "usr/lib/x/link") == "../../../etc/conf"


def test_hardlink_to_outside_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(root, [E("steal", "link", target="../outside/victim")])
    assert "'steal'" in msg and "hardlink target" in msg
    msg = _refused(root, [E("steal", "link", target=str(outside / "victim"))])
    assert "absolute path" in msg
    assert_outside_untouched(outside)
    assert (outside / "victim").stat().st_nlink == 1


def test_hardlink_through_planted_symlink_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(
        root,
        [E("evil", "sym", target=str(outside))],
        [E("steal", "link", target="evil/victim")],
    )
    assert "layer 2/2" in msg and "'steal'" in msg and "symlink" in msg
    assert (outside / "victim").stat().st_nlink == 1
    assert_outside_untouched(outside)


def test_device_nodes_are_refused_unless_allowed(sandbox: tuple[Path, Path]) -> None:
    root, _ = sandbox
    msg = _refused(root, [E("dev/null", "chr", mode=0o666)])
    assert "'dev/null'" in msg and "device nodes are not allowed" in msg and "devtmpfs" in msg
    assert not (root / "dev/null").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs CAP_MKNOD")
def test_device_nodes_when_allowed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    apply(root, [E("dev/null", "chr", mode=0o666)], options=ApplyOptions(allow_devices=True))
    st = (root / "dev/null").lstat()
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


def test_file_over_planted_symlink_replaces_the_link(sandbox: tuple[Path, Path]) -> None:
    """Writing a regular file where a symlink is must replace the link, not follow it."""
    root, outside = sandbox
    apply(
        root,
        [E("evil", "sym", target=str(outside / "victim"))],
        [E("evil", data=b"new content")],
    )
    assert (root / "evil").read_bytes() == b"new content"
    assert not (root / "evil").is_symlink()
    assert_outside_untouched(outside)


def test_whiteout_through_symlink_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(root, [E("evil", "sym", target=str(outside))], [E("evil/.wh.victim")])
    assert "'evil/.wh.victim'" in msg
    assert_outside_untouched(outside)


def test_opaque_through_symlink_is_refused(sandbox: tuple[Path, Path]) -> None:
    root, outside = sandbox
    msg = _refused(root, [E("evil", "sym", target=str(outside))], [E("evil/.wh..wh..opq")])
    assert "'evil/.wh..wh..opq'" in msg
    assert_outside_untouched(outside)


@pytest.mark.parametrize("name", [".wh..", ".wh...", "d/.wh."])
def test_whiteout_of_dot_names_is_refused(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    apply(root, [E("d/keep", data=b"k")])
    msg = _refused(root, [E(name)])
    assert "invalid name" in msg
    assert (root / "d/keep").read_bytes() == b"k"


def test_file_as_parent_is_malformed_not_hostile(tmp_path: Path) -> None:
    msg = _refused(tmp_path / "root", [E("f", data=b"x"), E("f/x", data=b"y")])
    assert "its parent 'f' is not a directory" in msg and "malformed" in msg


def test_garbage_layer_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(LayerError, match="layer broken: not a readable tar stream"):
        LayerApplier(root).apply(io.BytesIO(b"this is not a tar" * 100), "broken")
