"""Which squashfs compressions GRUB's squash4 module reads, measured with grub-fstest.

System images must use one of these, or GRUB cannot load the kernel from inside them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos.run import run, which

pytestmark = pytest.mark.skipif(
    which("grub-fstest") is None or which("mksquashfs") is None,
    reason="grub-fstest or mksquashfs missing",
)
READABLE = ("gzip", "xz", "lzo")
UNREADABLE = ("zstd", "lz4")  # GRUB 2.06: "unknown filesystem"


def _image(tmp_path: Path, comp: str) -> tuple[Path, bytes]:
    src = tmp_path / "src"
    (src / "boot").mkdir(parents=True, exist_ok=True)
    payload = bytes(range(256)) * 2048 + b"kairos kernel"
    (src / "boot/vmlinuz").write_bytes(payload)
    img = tmp_path / f"{comp}.img"
    run(["mksquashfs", str(src), str(img), "-comp", comp, "-noappend", "-quiet", "-no-progress"])
    return img, payload


@pytest.mark.parametrize("comp", READABLE)
def test_grub_reads(comp: str, tmp_path: Path, allow_commands: None) -> None:
    img, payload = _image(tmp_path, comp)
    out = tmp_path / "out"
    run(["grub-fstest", str(img), "cp", "(loop0)/boot/vmlinuz", str(out)])
    assert out.read_bytes() == payload


@pytest.mark.parametrize("comp", UNREADABLE)
def test_grub_does_not_read(comp: str, tmp_path: Path, allow_commands: None) -> None:
    img, _ = _image(tmp_path, comp)
    out = tmp_path / "out"
    result = run(["grub-fstest", str(img), "cp", "(loop0)/boot/vmlinuz", str(out)], check=False)
    assert result.returncode != 0
    assert "unknown filesystem" in result.stderr
    assert not out.exists() or out.stat().st_size == 0
