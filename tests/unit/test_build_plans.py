"""Disk plans, squashfs/dd/qcow2 argv, netboot script, initrd archive, manifest round trip."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import pytest

from kairos.build import initrd, raw
from kairos.build.manifest import Artifact, ArtifactKind, Manifest, Step
from kairos.build.netboot import ipxe_script
from kairos.build.squashfs import Compression, mksquashfs_argv
from kairos.errors import KairosError

MIB = 1 << 20


def test_disk_plan_is_aligned_and_fits_payload() -> None:
    plan = raw.plan_disk(boot_bytes=60 * MIB, squashfs_bytes=300 * MIB + 5)
    names = [p.name for p in plan.partitions]
    assert names == ["bios", "efi", "COS_LIVE"]
    for p in plan.partitions:
        assert p.start % 2048 == 0 and p.size % 2048 == 0
    for a, b in zip(plan.partitions, plan.partitions[1:], strict=False):
        assert a.end <= b.start
    assert plan.part("bios").size == 2048
    assert plan.part("efi").size * 512 >= 2 * 60 * MIB
    assert plan.part("COS_LIVE").size * 512 >= 300 * MIB + 5
    assert plan.total_bytes >= (plan.partitions[-1].end + 2048) * 512
    script = plan.sfdisk_script()
    assert script.startswith("label: gpt\n")
    assert 'type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="efi"' in script
    assert 'name="COS_LIVE"' in script


def test_small_payload_still_gets_a_64mib_esp() -> None:
    plan = raw.plan_disk(boot_bytes=1000, squashfs_bytes=1000)
    assert plan.part("efi").size == 64 * 2048


def test_dd_and_qcow2_argv(tmp_path: Path) -> None:
    argv = raw.dd_argv(tmp_path / "esp", tmp_path / "d.raw", 4096)
    assert "conv=notrunc,sparse" in argv and f"seek={4096 * 512}" in argv
    assert "oflag=seek_bytes" in argv
    q = raw.qcow2_argv(tmp_path / "d.raw", tmp_path / "d.qcow2")
    assert q[:2] == ["qemu-img", "convert"] and q[q.index("-O") + 1] == "qcow2"


@pytest.mark.parametrize(
    ("comp", "expect"),
    [
        (Compression.FAST, ["-comp", "gzip", "-Xcompression-level", "1", "-b", "1M"]),
        (Compression.RELEASE, ["-comp", "xz", "-Xbcj", "x86", "-b", "1M"]),
        (Compression.GZIP, ["-comp", "gzip"]),
    ],
)
def test_mksquashfs_argv(tmp_path: Path, comp: Compression, expect: list[str]) -> None:
    argv = mksquashfs_argv(tmp_path / "root", tmp_path / "r.sq", comp)
    joined = " ".join(argv)
    assert " ".join(expect) in joined
    assert "-noappend" in argv
    assert "proc/*" in argv and "sys/*" in argv


def test_ipxe_script_boots_squashfs_over_http() -> None:
    text = ipxe_script("kairos", "http://10.0.2.2:8000/", "x=1")
    assert text.startswith("#!ipxe\n")
    assert "kernel http://10.0.2.2:8000/kairos-kernel " in text
    assert "root=live:http://10.0.2.2:8000/kairos.squashfs" in text
    assert "rd.neednet=1" in text and "rd.cos.disable" in text and text.rstrip().endswith("boot")
    assert "initrd http://10.0.2.2:8000/kairos-initrd" in text


def _read_newc(data: bytes) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    buf = io.BytesIO(data)
    while True:
        head = buf.read(110)
        assert head[:6] == b"070701"
        fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = buf.read(namesize)[:-1].decode()
        buf.read(-(110 + namesize) % 4)
        body = buf.read(size)
        buf.read(-size % 4)
        if name == "TRAILER!!!":
            return out
        out[name] = (mode, body)


def test_newc_archive_round_trip(tmp_path: Path) -> None:
    site = tmp_path / initrd.PY_SITE / "kairos"
    (site / "immucore").mkdir(parents=True)
    (site / "__init__.py").write_text("v = 1\n")
    (site / "immucore" / "__main__.py").write_text("print('hi')\n")
    (site / "__pycache__").mkdir()
    (site / "__pycache__" / "x.pyc").write_bytes(b"junk")
    (site / "stray.pyc").write_bytes(b"old")
    entries = initrd.package_entries(tmp_path, ("kairos", "yaml"))
    archive = initrd.newc_archive(entries)
    assert len(archive) % 4 == 0
    files = _read_newc(archive)
    assert files["usr/lib/python3/dist-packages/kairos/__init__.py"][1] == b"v = 1\n"
    assert files["usr/lib/python3/dist-packages/kairos/immucore/__main__.py"][1]
    assert files["usr"][0] & 0o170000 == 0o040000  # parents come first, as directories
    # The image's own bytecode rides along (the initramfs python never compiles); stray
    # legacy .pyc files beside the sources do not.
    assert files["usr/lib/python3/dist-packages/kairos/__pycache__/x.pyc"][1] == b"junk"
    assert not any(n.endswith("stray.pyc") for n in files)
    assert list(files).index("usr") < list(files).index("usr/lib/python3/dist-packages/kairos")


def test_initrd_appends_archive_on_4_byte_boundary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base.img"
    base.write_bytes(b"D" * 1001)
    monkeypatch.setattr(initrd, "dracut_image", lambda root, kver: base)
    site = tmp_path / "root" / initrd.PY_SITE / "kairos"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("x = 2\n")
    out = initrd.build_initrd(tmp_path / "root", "6.1.0-1-amd64", tmp_path / "initrd")
    data = out.read_bytes()
    assert data[:1001] == b"D" * 1001 and data[1001:1004] == b"\0\0\0"
    files = _read_newc(gzip.decompress(data[1004:]))
    assert files["usr/lib/python3/dist-packages/kairos/__init__.py"][1] == b"x = 2\n"


def test_dracut_key_ignores_kairos_code_but_not_module_files(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text("Package: a\n")
    key = initrd.dracut_key(tmp_path, "6.1.0-1-amd64")
    site = tmp_path / initrd.PY_SITE / "kairos"
    site.mkdir(parents=True)
    (site / "new.py").write_text("changed = True\n")
    assert initrd.dracut_key(tmp_path, "6.1.0-1-amd64") == key
    assert initrd.dracut_key(tmp_path, "6.1.0-2-amd64") != key
    (tmp_path / "var/lib/dpkg/status").write_text("Package: b\n")
    assert initrd.dracut_key(tmp_path, "6.1.0-1-amd64") != key


def test_dracut_argv_adds_live_and_immucore() -> None:
    argv = initrd.dracut_argv("6.1.0-1-amd64", "/var/tmp/x.img")
    assert argv[0] == "dracut" and "--no-hostonly" in argv
    mods = argv[argv.index("--add") + 1].split()
    assert {"dmsquash-live", "livenet", "immucore"} <= set(mods)
    assert argv[-2:] == ["/var/tmp/x.img", "6.1.0-1-amd64"]


def test_manifest_round_trip(tmp_path: Path) -> None:
    (tmp_path / "k.iso").write_bytes(b"abc")
    art = Artifact.of(ArtifactKind.ISO, tmp_path, tmp_path / "k.iso")
    assert art.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    m = Manifest("kairos", "v1", (art,), (Step("squashfs", 3.25),))
    m.write(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    assert data["artifacts"][0] == {"kind": "iso", "file": "k.iso", "size": 3, "sha256": art.sha256}
    assert data["steps"] == [{"name": "squashfs", "seconds": 3.25}]
    assert Manifest.read(tmp_path) == m
    assert Manifest.from_json(m.to_json()) == m


def test_manifest_rejects_garbage(tmp_path: Path) -> None:
    with pytest.raises(KairosError, match="malformed"):
        Manifest.from_json({"name": "x"})
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(KairosError, match="cannot read"):
        Manifest.read(tmp_path)
